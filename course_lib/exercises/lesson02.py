"""The exercises of lesson 02, the reverse process: x̂_0 from the predicted noise and one DDIM step."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import pred_x0_from_eps, q_sample
from ..samplers import DDIMSampler
from ..schedules import make_schedule
from .lesson01 import Q_CASES
from .grading import Case, grade, hint_for_exception, per_item, seeded, timesteps_text

__all__ = ["check_pred_x0", "check_ddim_step"]

SD_SCHEDULE = make_schedule("scaled_linear", 1000, 0.00085, 0.012)  # Stable Diffusion's schedule


def check_pred_x0(fn: Callable) -> bool:
    """Check ``fn(x_t, eps, alpha_bar_t) -> pred_x0``, x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t) (lesson 02).

    :param fn: the learner's function; ``x_t`` and ``eps`` are (B, C, H, W), ``alpha_bar_t`` is
        $\\bar\\alpha_t$ per image, shape (B, 1, 1, 1)
    :return: True if fn agrees with :func:`course_lib.diffusion.pred_x0_from_eps` on every case
    """
    cases = []
    for seed, (shape, timesteps) in enumerate(Q_CASES):
        t = torch.tensor(timesteps)
        noise = seeded(30 + seed, *shape)
        x_t = q_sample(seeded(40 + seed, *shape).clamp(-1, 1), t, noise, SD_SCHEDULE)
        eps = noise + 0.3 * seeded(50 + seed, *shape)  # an imperfect prediction of the noise
        a = per_item(SD_SCHEDULE.alphas_cumprod[t])

        def mistakes(x_t=x_t, eps=eps, a=a):
            return [
                ("check the sign: solve x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε for x0, which subtracts "
                 "the noise term: x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t).",
                 lambda: (x_t + (1 - a).sqrt() * eps) / a.sqrt()),
                ("you forgot the square roots: the coefficients are sqrt(1 - ᾱ_t) and sqrt(ᾱ_t).",
                 lambda: (x_t - (1 - a) * eps) / a),
                ("you forgot the square root on the noise term: sqrt(1 - ᾱ_t)·ε.",
                 lambda: (x_t - (1 - a) * eps) / a.sqrt()),
                ("you forgot the square root in the division: divide by sqrt(ᾱ_t).",
                 lambda: (x_t - (1 - a).sqrt() * eps) / a),
                ("divide by sqrt(ᾱ_t), do not multiply: x_t = sqrt(ᾱ_t)·x0 + ..., so x0 = (...) / sqrt(ᾱ_t).",
                 lambda: (x_t - (1 - a).sqrt() * eps) * a.sqrt()),
                ("you subtracted the noise but did not divide by sqrt(ᾱ_t).",
                 lambda: x_t - (1 - a).sqrt() * eps),
                ("ᾱ_t and 1 - ᾱ_t are swapped: the noise term is sqrt(1 - ᾱ_t)·ε and you divide by "
                 "sqrt(ᾱ_t).",
                 lambda: (x_t - a.sqrt() * eps) / (1 - a).sqrt()),
            ]

        cases.append(Case(
            args=(x_t, eps, a),
            expected=pred_x0_from_eps(x_t, eps, t, SD_SCHEDULE),
            where=f"for x_t of shape {shape}, {timesteps_text(t)}",
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_pred_x0", result_name="pred_x0",
        success="x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t) matches course_lib.diffusion.pred_x0_from_eps "
                "on 3 batches, with a different t per image.",
        generic_hint="solve x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε for x0: "
                     "x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t).",
        shape_hint="pred_x0 has the shape of x_t; alpha_bar_t is already shaped (B, 1, 1, 1) to broadcast.",
        exception_hint=hint_for_exception("(x_t, eps, alpha_bar_t)", "(x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t)"),
    )


# (shape, number of sampling steps n, timesteps on the grid of n steps); t = 1 is the last step
_DDIM_CASES = [((1, 4, 8, 8), 50, [981]), ((3, 1, 16, 16), 50, [501, 41, 1]), ((2, 3, 8, 8), 10, [601, 101])]


def check_ddim_step(fn: Callable) -> bool:
    """Check one deterministic DDIM step ``fn(x_t, eps, alpha_bar_t, alpha_bar_prev) -> x_prev`` (lesson 02).

    DDIM eq. 12 with σ_t = 0 (η = 0): x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1}) ε.

    :param fn: the learner's function; ``x_t`` and ``eps`` are (B, C, H, W), ``alpha_bar_t`` and
        ``alpha_bar_prev`` are $\\bar\\alpha_t$ and $\\bar\\alpha_{t-1}$ per image, shape (B, 1, 1, 1)
    :return: True if fn agrees with ``DDIMSampler(schedule, eta=0).step`` on every case
    """
    cases = []
    for seed, (shape, steps, timesteps) in enumerate(_DDIM_CASES):
        sampler = DDIMSampler(SD_SCHEDULE, eta=0.0)
        sampler.set_timesteps(steps)
        grid = sampler.timesteps.tolist()
        x_t = seeded(60 + seed, *shape)
        eps = 0.8 * x_t + 0.6 * seeded(70 + seed, *shape)
        # ᾱ_{t-1}: at the next timestep of the sampling grid, or the sampler's final ᾱ after the last step
        prev = [SD_SCHEDULE.alphas_cumprod[grid[grid.index(t) + 1]] if grid.index(t) + 1 < len(grid)
                else sampler.final_alpha_bar for t in timesteps]
        a = per_item(SD_SCHEDULE.alphas_cumprod[torch.tensor(timesteps)])
        p = per_item(torch.stack(prev))
        expected = torch.cat([sampler.step(eps[i:i + 1], t, x_t[i:i + 1]) for i, t in enumerate(timesteps)])

        def mistakes(x_t=x_t, eps=eps, a=a, p=p):
            pred_x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
            alpha_t = a / p  # the one-step α_t between the two timesteps
            return [
                ("alpha_bar_t and alpha_bar_prev are swapped: x̂0 uses ᾱ_t (the level x_t is at), the step "
                 "then moves to ᾱ_prev.",
                 lambda: a.sqrt() * (x_t - (1 - p).sqrt() * eps) / p.sqrt() + (1 - a).sqrt() * eps),
                ("the 'direction pointing to x_t' goes to the new noise level: sqrt(1 - ᾱ_prev)·ε, "
                 "not sqrt(1 - ᾱ_t)·ε.", lambda: p.sqrt() * pred_x0 + (1 - a).sqrt() * eps),
                ("x̂0 is rescaled to the new noise level: sqrt(ᾱ_prev)·x̂0, not sqrt(ᾱ_t)·x̂0.",
                 lambda: a.sqrt() * pred_x0 + (1 - p).sqrt() * eps),
                ("you forgot the square roots: x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε.",
                 lambda: p * pred_x0 + (1 - p) * eps),
                ("you forgot the square roots (in x̂0 and in the step): every coefficient is a square root.",
                 lambda: p * (x_t - (1 - a) * eps) / a + (1 - p) * eps),
                ("check the sign: x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε (plus).",
                 lambda: p.sqrt() * pred_x0 - (1 - p).sqrt() * eps),
                ("check the sign in x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t) (minus).",
                 lambda: p.sqrt() * (x_t + (1 - a).sqrt() * eps) / a.sqrt() + (1 - p).sqrt() * eps),
                ("you dropped the 'direction pointing to x_t', sqrt(1 - ᾱ_prev)·ε: with η = 0 DDIM puts "
                 "the predicted noise back at the new level.", lambda: p.sqrt() * pred_x0),
                ("you returned x̂0; the step goes on to the next noise level: "
                 "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε.",
                 lambda: pred_x0),
                ("that is DDPM's mean, with the one-step α_t = ᾱ_t / ᾱ_prev. DDIM uses ᾱ (alpha_bar) only: "
                 "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε.",
                 lambda: (x_t - (1 - alpha_t) / (1 - a).sqrt() * eps) / alpha_t.sqrt()),
            ]

        cases.append(Case(
            args=(x_t, eps, a, p),
            expected=expected,
            where=f"for x_t of shape {shape}, {timesteps_text(torch.tensor(timesteps))} ({steps} sampling steps)",
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_ddim_step", result_name="x_prev",
        success="x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε matches DDIMSampler(eta=0).step at 6 "
                "timesteps, the last step included.",
        generic_hint="x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t), then x_prev = sqrt(ᾱ_prev)·x̂0 + "
                     "sqrt(1 - ᾱ_prev)·ε (DDIM eq. 12 with σ_t = 0).",
        shape_hint="x_prev has the shape of x_t; alpha_bar_t and alpha_bar_prev are already (B, 1, 1, 1).",
        exception_hint=hint_for_exception("(x_t, eps, alpha_bar_t, alpha_bar_prev)",
                                           "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε"),
    )
