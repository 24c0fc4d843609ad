"""Measure the four samplers on the shipped mini Stable Diffusion: the numbers quoted in lesson 09.

    .venv/bin/python benchmarks/minisd_samplers.py [--prompts 160] [--steps 5,10,20,50] [--out results.json]

Lesson 09 reads benchmarks/results/minisd_samplers-*.json (the newest) for its table of 160 pictures.

``course_lib.experiments.sampler_sweep`` with every full prompt of seen colour-shape pairs (160
pictures per run; the lesson samples 16): DDPM, DDIM, Euler and DPM-Solver++(2M) at 5, 10, 20 and
50 steps, guidance scale 7.5, the same starting noise for every run. Each picture is read by the
shapes judge (share with all four attributes right), scored by the tiny CLIP (CLIP score), and
the runs' pictures are compared with the 1,000 real test pictures by the Fréchet distance in the
tiny CLIP's image features. Real pictures of the same prompts give the best each number can be.
On one CPU thread it takes about ten times as long as the lesson's sweep.
"""

import argparse
import datetime
import json
import os
import time

import torch

from course_lib.experiments import sampler_sweep

SCORES = ("all", "color_and_shape", "clip_score", "frechet_distance", "seconds_per_image")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=160, help="pictures per run (at most 160)")
    parser.add_argument("--steps", default="5,10,20,50")
    parser.add_argument("--samplers", default="ddpm,ddim,euler,dpmsolver")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    result = sampler_sweep(samplers=args.samplers.split(","), steps=[int(n) for n in args.steps.split(",")],
                           num_prompts=args.prompts, guidance_scale=args.guidance_scale, seed=args.seed,
                           use_cache=False)
    print(f"{'sampler':10s} {'steps':>5s} " + " ".join(f"{name:>17s}" for name in SCORES))
    print(f"{'real':10s} {'':>5s} " + " ".join(f"{result.real.get(name, float('nan')):17.4f}" for name in SCORES))
    for sampler in result.samplers:
        for n in result.steps:
            report = result.reports[sampler][n]
            print(f"{sampler:10s} {n:5d} " + " ".join(f"{report[name]:17.4f}" for name in SCORES))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"benchmark": "benchmarks/minisd_samplers.py", "date": str(datetime.date.today()),
                       "torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                       "total_s": round(time.perf_counter() - start), "prompts": args.prompts,
                       "guidance_scale": args.guidance_scale, "seed": args.seed, "real": result.real,
                       "reports": result.reports}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
