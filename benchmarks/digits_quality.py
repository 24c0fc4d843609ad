"""Measure the shipped digits checkpoints: the numbers in data/checkpoints/README.md.

    .venv/bin/python benchmarks/digits_quality.py          # about a minute on a laptop CPU

Unconditional samples of digits-ddpm (50 DDIM steps) are read by the judge: how many of each
digit, how sure the judge is, and the Fréchet distance in the judge's feature space to the test
digits, next to the same distance for real training digits (what a perfect model would reach at
this sample size). Then the guidance sweeps of lessons 04-05 at 10 samples per digit.
"""

import json
import time

import torch

from course_lib.datasets import digits_tensors
from course_lib.experiments import guidance_sweep
from course_lib.metrics import frechet_distance, judge_features
from course_lib.pretrained import load_course_model
from course_lib.samplers import DDIMSampler, sample_loop
from course_lib.schedules import make_schedule


def main():
    torch.set_num_threads(1)
    judge, _ = load_course_model("digits-judge")
    test_images, _ = digits_tensors("test")
    unet, config = load_course_model("digits-ddpm")
    sampler = DDIMSampler(make_schedule(**config["schedule"]))
    sampler.set_timesteps(50)
    start = time.perf_counter()
    samples = sample_loop(lambda x, t: unet(x, t), sampler,
                          torch.randn((200, 1, 16, 16), generator=torch.Generator().manual_seed(0)), progress=False)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        probabilities = judge(samples.clamp(-1, 1)).softmax(1)
    reference = judge_features(judge, test_images)
    results = {
        "digits-ddpm": {
            "samples": 200,
            "ddim_steps": 50,
            "judge_class_counts": torch.bincount(probabilities.argmax(1), minlength=10).tolist(),
            "judge_confident_share": round((probabilities.max(1).values > 0.9).float().mean().item(), 3),
            "frechet_to_test_digits": round(frechet_distance(judge_features(judge, samples.clamp(-1, 1)), reference), 2),
            "sampling_seconds_for_200": round(seconds, 2),
        }
    }
    for method, strengths in (("cfg", [1.0, 3.0, 5.0]), ("classifier", [0.0, 5.0])):
        sweep = guidance_sweep(method, strengths, per_class=10, steps=50, progress=False, use_cache=False)
        results[method] = {f"{s:g}": {"accuracy": r["accuracy"], "worst_class": min(r["per_class_accuracy"]),
                                      "diversity_pixels": round(r["diversity_pixels"], 2)}
                           for s, r in zip(strengths, sweep.reports)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
