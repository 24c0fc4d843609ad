"""The measured experiments of lessons 03-04: guidance sweeps on the digits, cached on disk.

A sweep samples 10 * per_class digits (per_class of each class) at every guidance strength, all
strengths in ONE batched sampling run (the guidance scale may differ per image), and scores each
strength with the judge (``metrics.sample_report``). Lesson 03 sweeps classifier guidance, lesson 04
classifier-free guidance and compares the two; ``tests/test_guidance_targets.py`` checks the
targets with the same function.

Sampling a sweep takes tens of seconds on a laptop CPU, so results are cached in
``artifacts/cache/`` (or $COURSE_CACHE_DIR). The cache key is every argument plus a hash of the
checkpoint files, so a retrained model or another setting is never served stale numbers. Delete
the folder to recompute everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checks import check_choice, check_int_range, check_number
from .datasets import digits_tensors
from .guidance import cfg_denoiser, classifier_guided_denoiser
from .metrics import sample_report
from .pretrained import checkpoint_dir, load_course_model
from .samplers import DDIMSampler, sample_loop
from .schedules import make_schedule

__all__ = ["SweepResult", "guidance_sweep", "cache_dir", "METHODS"]

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "cache"
# method -> (the checkpoints it samples with); the judge scores every method
METHODS = {
    "cfg": ("digits-cfg",),
    "classifier": ("digits-ddpm", "digits-noisy-classifier"),
}


def cache_dir() -> Path:
    """Where sweeps are cached: $COURSE_CACHE_DIR if set, else artifacts/cache of the repository."""
    return Path(os.environ.get("COURSE_CACHE_DIR") or DEFAULT_CACHE_DIR)


@dataclass
class SweepResult:
    """Samples and scores of one guidance sweep.

    ``samples[i * n:(i + 1) * n]`` with ``n = 10 * per_class`` are the samples at ``strengths[i]``,
    ordered 0 ... 0 1 ... 1 ... 9 (``per_class`` of each); ``reports[i]`` their scores.
    """

    method: str
    strengths: list[float]
    per_class: int
    steps: int
    seed: int
    samples: torch.Tensor  # (len(strengths) * 10 * per_class, 1, 16, 16)
    labels: torch.Tensor  # (len(strengths) * 10 * per_class,)
    reports: list[dict]  # metrics.sample_report of each strength
    seconds_per_sample: float  # sampling wall time when it was computed
    from_cache: bool = False

    def at(self, index: int) -> torch.Tensor:
        """The samples at ``strengths[index]``, (10 * per_class, 1, 16, 16)."""
        n = 10 * self.per_class
        return self.samples[index * n:(index + 1) * n]


def _key(method: str, strengths: list[float], per_class: int, steps: int, seed: int) -> str:
    digest = hashlib.sha256(json.dumps([method, strengths, per_class, steps, seed]).encode())
    for name in METHODS[method] + ("digits-judge",):
        digest.update((checkpoint_dir() / f"{name}.safetensors").read_bytes())
    return f"sweep-{method}-{digest.hexdigest()[:16]}"


def guidance_sweep(method: str, strengths, per_class: int = 5, steps: int = 50, seed: int = 0,
                   progress: bool = True, use_cache: bool = True) -> SweepResult:
    """Sample and score the digits at several guidance strengths, with 50 DDIM steps by default.

    :param method: "cfg" (``digits-cfg``, guidance scale: 1 = none) or "classifier"
        (``digits-ddpm`` + ``digits-noisy-classifier``, lambda: 0 = none)
    :param strengths: the guidance scales / lambdas to compare
    :param per_class: samples of each digit per strength
    :param steps: DDIM steps
    :param seed: seed of the starting noise (the same noise at every strength)
    :param progress: show a progress bar while sampling
    :param use_cache: read and write the cache (see the module's docstring)
    """
    check_choice(method, list(METHODS), "guidance method")
    strengths = [check_number(s, "strength", minimum=0.0) for s in strengths]
    if not strengths:
        raise ValueError("strengths is empty: give at least one guidance scale, e.g. [1, 3, 5].")
    check_int_range(per_class, "per_class", 2, hint="Diversity needs at least two samples of each class.")
    check_int_range(steps, "steps", 1, 1000)
    key = _key(method, strengths, per_class, steps, seed)
    files = cache_dir() / f"{key}.safetensors", cache_dir() / f"{key}.json"
    if use_cache and files[0].is_file() and files[1].is_file():
        tensors, info = load_file(files[0]), json.loads(files[1].read_text())
        return SweepResult(method, strengths, per_class, steps, seed, tensors["samples"], tensors["labels"],
                           info["reports"], info["seconds_per_sample"], from_cache=True)

    judge, _ = load_course_model("digits-judge")
    unet, config = load_course_model(METHODS[method][0])
    sampler = DDIMSampler(make_schedule(**config["schedule"]))
    sampler.set_timesteps(steps)
    n = 10 * per_class
    labels = torch.arange(10).repeat_interleave(per_class).repeat(len(strengths))   # (S * n,)
    scales = torch.tensor(strengths).repeat_interleave(n)                            # (S * n,)
    noise = torch.randn((n, 1, 16, 16), generator=torch.Generator().manual_seed(seed)).repeat(len(strengths), 1, 1, 1)
    if method == "cfg":
        null_class = config["network_config"]["num_class_embeds"] - 1
        denoise = cfg_denoiser(unet, labels, scales, null_label=null_class)
    else:
        classifier, _ = load_course_model("digits-noisy-classifier")
        denoise = classifier_guided_denoiser(unet, classifier, labels, scales, sampler)
    start = time.perf_counter()
    samples = sample_loop(denoise, sampler, noise, progress=progress).clamp(-1, 1)
    seconds_per_sample = (time.perf_counter() - start) / len(samples)

    reference = digits_tensors("test")[0]
    reports = [sample_report(judge, samples[i * n:(i + 1) * n], labels[i * n:(i + 1) * n], reference)
               for i in range(len(strengths))]
    result = SweepResult(method, strengths, per_class, steps, seed, samples, labels, reports, seconds_per_sample)
    if use_cache:
        cache_dir().mkdir(parents=True, exist_ok=True)
        for path, write in ((files[0], lambda p: save_file({"samples": samples.contiguous(), "labels": labels}, p)),
                            (files[1], lambda p: p.write_text(json.dumps(
                                {"reports": reports, "seconds_per_sample": seconds_per_sample}, indent=1)))):
            temporary = path.with_name(path.name + ".tmp")
            write(temporary)
            os.replace(temporary, path)                       # atomic: never a half-written cache file
    return result
