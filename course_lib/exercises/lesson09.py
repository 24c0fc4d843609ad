"""The exercises of lesson 09, samplers and img2img: one Euler step in σ and the timesteps img2img runs."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..samplers import EulerSampler, make_sampler
from .lesson02 import SD_SCHEDULE
from .grading import Case, grade, hint_for_exception, per_item, seeded

__all__ = ["check_euler_step", "check_img2img_timesteps"]


# (shape, sampling steps n, timestep spacing, grid positions i of the steps checked); the last
# position of each grid is the final step, down to σ_next = 0
_EULER_CASES = [((1, 4, 8, 8), 50, "leading", [10]), ((3, 4, 8, 8), 20, "linspace", [0, 9, 19]),
                ((2, 3, 8, 8), 10, "leading", [4, 9])]


def check_euler_step(fn: Callable) -> bool:
    """Check one Euler step on the probability-flow ODE in σ, ``fn(x, eps, sigma, sigma_next) -> x_next`` (lesson 09).

    In the variable x = x_t / sqrt(ᾱ_t) = x_0 + σ ε the ODE is dx/dσ = ε_θ, so Euler's method steps
    x_next = x + (σ_next - σ) ε (Karras et al. 2022, Algorithm 1 without its second-order correction).

    :param fn: the learner's function; ``x`` and ``eps`` are (B, C, H, W), ``sigma`` and
        ``sigma_next`` are σ and the next σ of the grid per image, shape (B, 1, 1, 1)
    :return: True if fn agrees with ``EulerSampler(schedule).step`` on every case
    """

    cases = []
    for seed, (shape, steps, spacing, positions) in enumerate(_EULER_CASES):
        sampler = EulerSampler(SD_SCHEDULE, timestep_spacing=spacing)
        sampler.set_timesteps(steps)
        sigma = per_item(sampler.sigmas[positions])
        sigma_next = per_item(sampler.sigmas[[i + 1 for i in positions]])
        x = seeded(240 + seed, *shape).clamp(-1, 1) + sigma * seeded(250 + seed, *shape)  # x = x_0 + σ ε
        eps = 0.8 * (x - seeded(240 + seed, *shape).clamp(-1, 1)) / sigma + 0.3 * seeded(260 + seed, *shape)
        timesteps = sampler.timesteps[positions]
        expected = torch.cat([sampler.step(eps[b:b + 1], t, x[b:b + 1]) for b, t in enumerate(timesteps)])

        def mistakes(x=x, eps=eps, s=sigma, n=sigma_next):
            return [
                ("check the sign: σ decreases along the sampling, so the step σ_next - σ is negative; "
                 "x_next = x + (σ_next - σ)·ε, not x + (σ - σ_next)·ε.", lambda: x + (s - n) * eps),
                ("you used σ_next alone; Euler's step multiplies the derivative ε by the change in σ, "
                 "σ_next - σ.", lambda: x + n * eps),
                ("you used σ_next alone; Euler's step multiplies the derivative ε by the change in σ, "
                 "σ_next - σ.", lambda: x - n * eps),
                ("you returned x̂0 = x - σ·ε, a jump all the way to σ = 0; step only to σ_next: "
                 "x + (σ_next - σ)·ε.", lambda: x - s * eps),
                ("the derivative dx/dσ is ε itself (x = x0 + σ·ε); you divided it by σ once more.",
                 lambda: x + (n - s) * eps / s),
                ("σ is a standard deviation and the ODE is in σ itself: use σ_next - σ, not σ_next² - σ².",
                 lambda: x + (n ** 2 - s ** 2) * eps),
                ("you scaled x by 1 / sqrt(σ² + 1): that is what the UNet is given (scale_model_input); "
                 "the step itself works on x = x0 + σ·ε: x + (σ_next - σ)·ε.",
                 lambda: x / (s ** 2 + 1) ** 0.5 + (n - s) * eps),
                ("every image used the first σ; each image has its own σ and σ_next, already shaped "
                 "(B, 1, 1, 1): x + (sigma_next - sigma) * eps.", lambda: x + (n[0] - s[0]) * eps),
            ]

        cases.append(Case(
            args=(x, eps, sigma, sigma_next),
            expected=expected,
            where=(f"for x of shape {shape}, σ = {[round(v, 4) for v in sigma.flatten().tolist()]} -> "
                   f"σ_next = {[round(v, 4) for v in sigma_next.flatten().tolist()]} ({steps} {spacing} steps)"),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_euler_step", result_name="x_next",
        success="x_next = x + (σ_next - σ)·ε matches EulerSampler.step on 3 grids, the last step (σ_next = 0) "
                "included.",
        generic_hint="x = x0 + σ·ε, so dx/dσ = ε and Euler's step is x_next = x + (σ_next - σ)·ε.",
        shape_hint="x_next has the shape of x; sigma and sigma_next are already (B, 1, 1, 1).",
        exception_hint=hint_for_exception("(x, eps, sigma, sigma_next)", "x + (σ_next - σ)·ε"),
    )


# (sampler, timestep spacing, n, strength): n·strength 30 (whole), 3.3 (round() keeps 3, rounding up
# gives 4), 37.5 (round() gives 38), 3.5 on a fractional Euler grid, and the ends 1 and 0
_IMG2IMG_CASES = [("ddim", "leading", 50, 0.6), ("dpmsolver", "linspace", 10, 0.33), ("ddim", "leading", 50, 0.75),
                  ("euler", "linspace", 7, 0.5), ("ddim", "leading", 10, 1.0), ("ddim", "leading", 10, 0.0)]


def check_img2img_timesteps(fn: Callable) -> bool:
    """Check ``fn(timesteps, strength) -> the timesteps img2img runs`` (lesson 09).

    As diffusers' ``StableDiffusionImg2ImgPipeline`` (and ``StableDiffusion.img2img``): of the n
    timesteps, the last k = int(n · strength) are run, from position n - k on; the image is noised
    to the first of them.

    :param fn: the learner's function; ``timesteps`` is a sampler's grid of n timesteps, high to
        low (a tensor (n,)), ``strength`` a float in [0, 1]
    :return: True if fn returns ``timesteps[n - int(n * strength):]`` on every case
    """

    cases = []
    for name, spacing, n, strength in _IMG2IMG_CASES:
        sampler = make_sampler(name, SD_SCHEDULE, timestep_spacing=spacing)
        sampler.set_timesteps(n)
        timesteps = sampler.timesteps
        k = min(int(n * strength), n)  # as StableDiffusion.img2img and diffusers' get_timesteps

        def mistakes(ts=timesteps, n=n, s=strength, k=k):
            return [
                ("you rounded n·strength; diffusers truncates it: k = int(n·strength), then timesteps[n - k:].",
                 lambda: ts[n - min(round(n * s), n):]),
                ("you rounded n·strength up (a start at int(n·(1 - strength)) does the same); diffusers first "
                 "truncates the number of steps, k = int(n·strength), then starts at n - k.",
                 lambda: ts[n - min(math.ceil(n * s), n):]),
                ("off by one: you run one step too many (k + 1). Run exactly k = int(n·strength) steps: "
                 "timesteps[n - k:].", lambda: ts[max(n - k - 1, 0):]),
                ("off by one: you run one step too few (k - 1). Run exactly k = int(n·strength) steps: "
                 "timesteps[n - k:].", lambda: ts[n - k + 1:]),
                ("for strength 0, k = 0 and timesteps[-0:] is the whole grid (-0 is 0); slice from n - k: "
                 "timesteps[len(timesteps) - k:].", lambda: ts[-k:]),
                ("those are the first k timesteps, the noisiest ones, where sampling from noise starts. img2img "
                 "runs the END of the loop: the last k, timesteps[n - k:].", lambda: ts[:k]),
                ("you started at position k; start at n - k, so that k = int(n·strength) steps are run.",
                 lambda: ts[k:]),
                ("the timesteps must stay high to low, as the sampler runs them: timesteps[n - k:], not flipped.",
                 lambda: ts[n - k:].flip(0)),
            ]

        cases.append(Case(
            args=(timesteps, strength),
            expected=timesteps[n - k:],
            where=f"for {name}'s {n} {spacing} timesteps and strength = {strength}",
            mistakes=mistakes(),
        ))

    def exception_hint(error: BaseException) -> str:
        message = str(error)
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return "your function must take exactly these arguments, in this order: (timesteps, strength)."
        if isinstance(error, TypeError) and ("slice" in message or "integer" in message or "index" in message):
            return "slice positions must be whole numbers: k = int(n * strength)."
        return "k = int(len(timesteps) * strength), then return timesteps[len(timesteps) - k:]."

    return grade(
        fn, cases, check_name="check_img2img_timesteps", result_name="the timesteps run",
        success="the last k = int(n·strength) timesteps, timesteps[n - k:], match StableDiffusion.img2img "
                "for 6 grids and strengths, strength 0 and 1 included.",
        generic_hint="k = int(n * strength) steps are run, the last k of the grid: timesteps[n - k:].",
        shape_hint="return k = int(n * strength) timesteps, the last k of the grid: timesteps[n - k:].",
        exception_hint=exception_hint,
    )
