"""Measure the shipped mini Stable Diffusion: the numbers in data/checkpoints/README.md and lesson 07.

    .venv/bin/python benchmarks/minisd_quality.py [--steps 50] [--seeds 2] [--out results.json]

Every full prompt of the shapes world ("a small red circle in the top left") is sampled with 50
DDIM steps at guidance scales 1 and 7.5 from the same starting noise, and the shapes judge (a CNN
trained on pictures, sharing no code or weights with the mini-SD) reads each picture's shape,
colour, size and position:

- seen pairs: the 160 prompts whose colour-shape pair was in the training captions;
- held-out pairs: the 20 prompts of green triangles and blue circles, never seen together.

The tiny CLIP's score (cosine of image and prompt embeddings) is reported next to the judge.
"""

import argparse
import json
import time

import torch

from course_lib.metrics import shapes_judge_report, shapes_prompt_grid
from course_lib.nn.text import clip_score, tokenize_prompts
from course_lib.pipeline import StableDiffusion
from course_lib.pretrained import load_course_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt (different starting noise)")
    parser.add_argument("--scales", default="1,7.5")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_course_model("shapes-judge")
    clip, _ = load_course_model("shapes-clip")
    results = {"steps": args.steps, "sampler": "ddim", "images_per_prompt": args.seeds}
    for split, heldout in (("seen", False), ("heldout", True)):
        grid = shapes_prompt_grid(heldout) * args.seeds
        prompts = [w["prompt"] for w in grid]
        tokens = tokenize_prompts(pipe.tokenizer, prompts)
        for scale in [float(s) for s in args.scales.split(",")]:
            start = time.perf_counter()
            images = []
            for i in range(0, len(prompts), 80):  # batches of 80 prompts (160 UNet inputs with guidance)
                generator = torch.Generator().manual_seed(i)
                images.append(torch.from_numpy(pipe(prompts[i:i + 80], num_inference_steps=args.steps,
                                                    guidance_scale=scale, generator=generator,
                                                    output_type="np")).permute(0, 3, 1, 2) * 2 - 1)
            images = torch.cat(images)
            seconds = time.perf_counter() - start
            report = shapes_judge_report(judge, images, grid)
            with torch.no_grad():
                report["clip_score"] = round(clip_score(clip, images, **tokens).mean().item(), 4)
            report["images"] = len(prompts)
            report["seconds_per_image"] = round(seconds / len(prompts), 4)
            results[f"{split}@{scale:g}"] = report
            print(f"{split:8s} guidance {scale:4g}: {report}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
