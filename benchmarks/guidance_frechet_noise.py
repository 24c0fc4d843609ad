"""How noisy are lesson 04's numbers at 50 samples per guidance scale? The same sweep at 400.

    .venv/bin/python benchmarks/guidance_frechet_noise.py      # about 10 minutes on a 2-core CPU, one thread

Lesson 04 measures classifier guidance on 50 samples per λ (5 of each digit, the cached sweep of
``course_lib.experiments.guidance_sweep``). A Fréchet distance in the judge's 64 features from 50
samples is a noisy number, biased upwards, and a plain bootstrap cannot say how noisy: resampling
with replacement repeats samples, which shrinks the covariance and reads higher than the estimate.
So this script samples the same sweep again with 40 of each digit (400 per λ, another seed), and
reports per λ:

- the Fréchet distance of all 400 samples to the test digits;
- the spread of the Fréchet distance of 50 samples (5 of each digit) drawn from the 400: the median
  and the 5th and 95th percentiles of 200 draws, the chance range of the lesson's number;
- the judge's accuracy with its 90 % Wilson interval, and the diversity (judge features);
- the samples rougher than every training digit (``metrics.roughness``), and how many of them the
  judge reads as the asked digit;

and the same 50-sample spread for real training digits (what a perfect model would show).
Results: benchmarks/results/guidance_frechet_noise-2core-<date>.json (the lesson reads the newest).
"""

import datetime
import json
import time
from pathlib import Path

import torch

from course_lib.datasets import digits_tensors
from course_lib.experiments import guidance_sweep
from course_lib.metrics import frechet_distance, judge_features, roughness
from course_lib.pretrained import load_course_model
from course_lib.sample_stats import proportion_interval

STRENGTHS = [0.0, 1.0, 2.0, 5.0, 10.0]
PER_CLASS = 40
DRAWS = 200  # random sets of 50 (5 of each digit) per λ


def fifty_sample_spread(features: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, seed: int) -> dict:
    """The Fréchet distance of DRAWS random sets of 5 samples of each digit: median, 5th and 95th percentile."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(DRAWS):
        chosen = torch.cat([(labels == k).nonzero().flatten()[torch.randperm(int((labels == k).sum()), generator=generator)[:5]]
                            for k in range(10)])
        values.append(frechet_distance(features[chosen], reference))
    values = torch.tensor(values, dtype=torch.float64)
    return {"median": round(values.median().item(), 1), "q05": round(values.quantile(0.05).item(), 1),
            "q95": round(values.quantile(0.95).item(), 1)}


def main():
    torch.set_num_threads(1)
    judge, _ = load_course_model("digits-judge")
    train_images, train_labels = digits_tensors("train")
    reference = judge_features(judge, digits_tensors("test")[0])
    start = time.perf_counter()
    sweep = guidance_sweep("classifier", STRENGTHS, per_class=PER_CLASS, steps=50, seed=1, progress=False,
                           use_cache=False)
    seconds = time.perf_counter() - start
    threshold = roughness(train_images).max().item()
    n = 10 * PER_CLASS
    results = {
        "what": "classifier guidance on the digits, DDIM 50 steps, 40 samples of each digit per lambda (seed 1)",
        "sampling_seconds": round(seconds, 1),
        "threads": 1,
        "real_training_digits": {"fifty_sample_frechet": fifty_sample_spread(judge_features(judge, train_images),
                                                                            train_labels, reference, seed=0)},
        "roughness_threshold": round(threshold, 3),
        "strengths": {},
    }
    for i, strength in enumerate(STRENGTHS):
        samples, labels, report = sweep.at(i), sweep.labels[i * n:(i + 1) * n], sweep.reports[i]
        features = judge_features(judge, samples)
        with torch.no_grad():
            probabilities = judge(samples).softmax(1)
        correct = int((probabilities.argmax(1) == labels).sum())
        rough = roughness(samples) > threshold
        results["strengths"][f"{strength:g}"] = {
            "frechet_all_400": round(report["frechet_distance"], 1),
            "fifty_sample_frechet": fifty_sample_spread(features, labels, reference, seed=i + 1),
            "accuracy": round(correct / n, 3),
            "accuracy_90": [round(v, 3) for v in proportion_interval(correct, n)],
            "diversity_features": round(report["diversity_features"], 2),
            "rough_samples": int(rough.sum()),
            "rough_read_as_asked": int((probabilities.argmax(1) == labels)[rough].sum()),
        }
        print(f"lambda {strength:4g}: {json.dumps(results['strengths'][f'{strength:g}'])}", flush=True)
    out = Path(__file__).parent / "results" / f"guidance_frechet_noise-2core-{datetime.date.today()}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {out.relative_to(Path(__file__).parents[1])}")


if __name__ == "__main__":
    main()
