"""The exercises of lesson 01, forward diffusion: the closed form of q(x_t | x_0) and the cumulative product ᾱ_t."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import q_sample
from ..i18n import tr
from ..schedules import make_schedule
from .grading import Case, grade, hint_for_exception, per_item, seeded, timesteps_text

__all__ = ["check_q_sample", "check_alpha_bar"]

DDPM_SCHEDULE = make_schedule("linear", 1000, 1e-4, 0.02)  # the DDPM schedule of lesson 01

# (shape of x0, timesteps) for the forward-process checks: t away from 0 and T-1, so that the
# off-by-one mistakes alpha_bar[t - 1] and alpha_bar[t + 1] give a (wrong) value, not an error
Q_CASES = [((1, 1, 16, 16), [37]), ((3, 1, 16, 16), [150, 610, 930]), ((4, 3, 8, 8), [5, 480, 777, 998])]


def check_q_sample(fn: Callable) -> bool:
    """Check ``fn(x0, t, noise, alpha_bar) -> x_t``, the closed form of q(x_t | x_0) (lesson 01).

    :param fn: the learner's function; ``x0`` and ``noise`` are (B, C, H, W), ``t`` a LongTensor
        (B,) of timesteps in 0..T-1, ``alpha_bar`` the (T,) tensor of $\\bar\\alpha$
    :return: True if fn agrees with :func:`course_lib.diffusion.q_sample` on every case
    """
    alpha_bar = DDPM_SCHEDULE.alphas_cumprod
    cases = []
    for seed, (shape, timesteps) in enumerate(Q_CASES):
        x0 = seeded(10 + seed, *shape).clamp(-1, 1)
        noise = seeded(20 + seed, *shape)
        t = torch.tensor(timesteps)
        a = per_item(alpha_bar[t])

        def mistakes(x0=x0, noise=noise, t=t, a=a):
            shifted = lambda s: per_item(alpha_bar[t + s])  # noqa: E731
            return [
                (tr("off by one in t: you used alpha_bar[t - 1]. Timesteps count from 0 (as in diffusers), "
                    "so ᾱ_t is alpha_bar[t] itself."),
                 lambda: shifted(-1).sqrt() * x0 + (1 - shifted(-1)).sqrt() * noise),
                (tr("off by one in t: you used alpha_bar[t + 1]. Timesteps count from 0 (as in diffusers), "
                    "so ᾱ_t is alpha_bar[t] itself."),
                 lambda: shifted(1).sqrt() * x0 + (1 - shifted(1)).sqrt() * noise),
                (tr("check the sign: the noise is added, x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε."),
                 lambda: a.sqrt() * x0 - (1 - a).sqrt() * noise),
                (tr("you forgot the square roots: ᾱ_t and 1 - ᾱ_t are variances, the coefficients are "
                    "sqrt(ᾱ_t) and sqrt(1 - ᾱ_t)."), lambda: a * x0 + (1 - a) * noise),
                (tr("you forgot the square root on the noise term: it is sqrt(1 - ᾱ_t)·ε (variance 1 - ᾱ_t)."),
                 lambda: a.sqrt() * x0 + (1 - a) * noise),
                (tr("you forgot the square root on the signal term: it is sqrt(ᾱ_t)·x0."),
                 lambda: a * x0 + (1 - a).sqrt() * noise),
                (tr("the noise coefficient is sqrt(1 - ᾱ_t), not 1 - sqrt(ᾱ_t)."),
                 lambda: a.sqrt() * x0 + (1 - a.sqrt()) * noise),
                (tr("the two coefficients are swapped: x0 keeps sqrt(ᾱ_t) (ᾱ_t near 1 at small t), the noise "
                    "gets sqrt(1 - ᾱ_t)."), lambda: (1 - a).sqrt() * x0 + a.sqrt() * noise),
                (tr("every image used the first t. Each image has its own timestep: alpha_bar[t] with the "
                    "whole tensor t, reshaped with .view(-1, 1, 1, 1)."),
                 lambda: alpha_bar[t[0]].sqrt() * x0 + (1 - alpha_bar[t[0]]).sqrt() * noise),
            ]

        cases.append(Case(
            args=(x0, t, noise, alpha_bar),
            expected=q_sample(x0, t, noise, DDPM_SCHEDULE),
            where=tr("for x0 of shape {shape}, {timesteps}", shape=shape, timesteps=timesteps_text(t)),
            mistakes=mistakes(),
        ))

    def exception_hint(error):
        if isinstance(error, IndexError):
            return tr("t holds timesteps 0..T-1 and alpha_bar has T entries: index it with t itself, "
                      "alpha_bar[t] (alpha_bar[t + 1] runs past the end).")
        return hint_for_exception("(x0, t, noise, alpha_bar)", "sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε")(error)

    return grade(
        fn, cases, check_name="check_q_sample", result_name="x_t",
        success=tr("x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε matches course_lib.diffusion.q_sample on 3 batches, "
                   "with a different t per image."),
        generic_hint=tr("x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε with ᾱ_t = alpha_bar[t].view(-1, 1, 1, 1)."),
        shape_hint=tr("x_t has the shape of x0. Reshape alpha_bar[t], shape (B,), to (B, 1, 1, 1) before "
                      "multiplying: alpha_bar[t].view(-1, 1, 1, 1)."),
        exception_hint=exception_hint,
    )


def check_alpha_bar(fn: Callable) -> bool:
    """Check ``fn(betas) -> alphas_cumprod``: ᾱ_t = ∏_{s<=t} (1 - β_s) (lesson 01).

    :param fn: the learner's function; ``betas`` is a float32 tensor (T,)
    :return: True if fn agrees with ``make_schedule(...).alphas_cumprod`` for three schedules
    """
    schedules = [
        make_schedule("linear", 1000, 1e-4, 0.02),
        make_schedule("scaled_linear", 1000, 0.00085, 0.012),
        make_schedule("cosine", 50),
    ]
    cases = []
    for sched in schedules:
        betas = sched.betas

        def mistakes(betas=betas):
            alphas = 1 - betas
            return [
                (tr("this is α_t = 1 - β_t, one step only. ᾱ_t multiplies all the steps so far: "
                    "torch.cumprod(1 - betas, dim=0)."), lambda: alphas),
                (tr("you multiplied the betas; ᾱ_t is the product of α_s = 1 - β_s."),
                 lambda: torch.cumprod(betas, dim=0)),
                (tr("you subtracted the sum of the betas (1 - Σβ is only a first-order approximation); "
                    "multiply the α's: torch.cumprod(1 - betas, dim=0)."),
                 lambda: 1 - torch.cumsum(betas, dim=0)),
                (tr("off by one: ᾱ_0 = α_0 = 1 - β_0, the product runs over s ≤ t, so index 0 already "
                    "includes the first step (it is not 1)."),
                 lambda: torch.cat([torch.ones(1), torch.cumprod(alphas, dim=0)[:-1]])),
                (tr("off by one: ᾱ_t = α_0·α_1·…·α_t starts at ᾱ_0 = α_0; yours skips the first step."),
                 lambda: torch.cumprod(alphas, dim=0) / alphas[0]),
                (tr("you returned 1 - ᾱ_t (the noise variance); return ᾱ_t itself."),
                 lambda: 1 - torch.cumprod(alphas, dim=0)),
                (tr("you returned sqrt(ᾱ_t); return ᾱ_t itself (no square root here)."),
                 lambda: torch.cumprod(alphas, dim=0).sqrt()),
                (tr("torch.prod gives a single number; you need the running product, one per t: "
                    "torch.cumprod(1 - betas, dim=0)."), lambda: alphas.prod()),
            ]

        cases.append(Case(
            args=(betas,),
            expected=sched.alphas_cumprod,
            where=tr("for the {kind} schedule with T = {steps}", kind=sched.kind, steps=sched.num_train_timesteps),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_alpha_bar", result_name="alphas_cumprod",
        success=tr("ᾱ_t = ∏_{s≤t} (1 - β_s) matches make_schedule(...).alphas_cumprod for the linear, "
                   "scaled_linear and cosine schedules."),
        generic_hint=tr("α_t = 1 - β_t, then ᾱ_t = α_0·α_1·…·α_t: torch.cumprod(1 - betas, dim=0)."),
        shape_hint=tr("return one ᾱ_t per timestep, a tensor of the shape of betas (T,)."),
        exception_hint=hint_for_exception("(betas)", "torch.cumprod(1 - betas, dim=0)", broadcast=False),
    )
