"""The exercises of lesson 11, LoRA and DDIM inversion: the adapted weight W + (α/r) B A, and the DDIM
step run backwards."""

from __future__ import annotations

from typing import Callable

import torch

from ..i18n import tr
from ..inversion import ddim_inverse_step
from ..lora import lora_delta
from ..samplers import DDIMSampler
from ..schedules import make_schedule
from .grading import Case, grade, hint_for_exception, per_item, seeded, timesteps_text

__all__ = ["check_lora_weight", "check_ddim_inverse_step"]

SD_SCHEDULE = make_schedule("scaled_linear", 1000, 0.00085, 0.012)  # SD's and the mini-SD's

# (d_out, d_in, r, alpha): square and rectangular layers, alpha = r and alpha != r (so alpha / r matters)
_LORA_CASES = [(8, 8, 2, 2.0), (6, 10, 4, 8.0), (12, 5, 1, 4.0), (64, 64, 4, 4.0 * 3)]


def check_lora_weight(fn: Callable) -> bool:
    """Check ``fn(weight, lora_A, lora_B, alpha) -> W'``, the weight of a LoRA-adapted linear layer (lesson 11).

    W' = W + (α / r) B A, with r the rank (lora_A's number of rows).

    :param fn: the learner's function; ``weight`` W is (d_out, d_in), ``lora_A`` A is (r, d_in),
        ``lora_B`` B is (d_out, r), ``alpha`` α a float
    :return: True if fn agrees with ``weight + course_lib.lora.lora_delta(A, B, alpha)`` on every case
    """
    cases = []
    for seed, (d_out, d_in, rank, alpha) in enumerate(_LORA_CASES):
        weight, lora_A, lora_B = seeded(110 + seed, d_out, d_in), seeded(120 + seed, rank, d_in), seeded(130 + seed, d_out, rank)

        def mistakes(weight=weight, lora_A=lora_A, lora_B=lora_B, alpha=alpha, rank=rank):
            product = lora_B @ lora_A
            return [
                (tr("the update is scaled by α / r, not by α: divide by the rank r = lora_A.shape[0]."),
                 lambda: weight + alpha * product),
                (tr("you forgot the scale α / r: the update is (α / r)·B·A."), lambda: weight + product),
                (tr("the scale is α / r (alpha divided by the rank), not r / α."),
                 lambda: weight + rank / alpha * product),
                (tr("the scale is α / r, not α·r."), lambda: weight + alpha * rank * product),
                (tr("you returned the update (α / r)·B·A alone; the layer's weight is W plus it."),
                 lambda: alpha / rank * product),
                (tr("check the sign: LoRA adds its update, W' = W + (α / r)·B·A."),
                 lambda: weight - alpha / rank * product),
            ]

        cases.append(Case(
            args=(weight, lora_A, lora_B, alpha),
            expected=weight + lora_delta(lora_A, lora_B, alpha),
            where=tr("for W of shape {shape}, rank r = {rank}, α = {alpha}", shape=(d_out, d_in), rank=rank,
                     alpha=alpha),
            mistakes=mistakes(),
        ))

    def exception_hint(error):
        if isinstance(error, RuntimeError):  # a product or a sum of tensors that do not fit
            return tr("B is (d_out, r) and A is (r, d_in): their product B @ A is (d_out, d_in), the shape of W "
                      "(A @ B does not fit).")
        return hint_for_exception("(weight, lora_A, lora_B, alpha)", "W + (α / r)·B·A")(error)

    return grade(
        fn, cases, check_name="check_lora_weight", result_name="W'",
        success=tr("W' = W + (α / r)·B·A matches course_lib.lora.lora_delta for 4 layers, ranks 1 to 4, "
                   "α = r and α ≠ r."),
        generic_hint=tr("W' = W + (alpha / r) * (lora_B @ lora_A), with r = lora_A.shape[0]."),
        shape_hint=tr("W' has the shape of W, (d_out, d_in): B (d_out, r) @ A (r, d_in)."),
        exception_hint=exception_hint,
    )


# (latent shape, sampling steps, indices into the grid of the steps to undo): the last index of a
# grid is the first inverse step, from the picture's latent (ᾱ_prev = the sampler's final ᾱ)
_INVERSE_CASES = [((1, 4, 8, 8), 50, [49]), ((3, 4, 8, 8), 50, [0, 25, 48]), ((2, 4, 4, 4), 10, [3, 9])]


def check_ddim_inverse_step(fn: Callable) -> bool:
    """Check ``fn(z_prev, eps, alpha_bar_t, alpha_bar_prev) -> z_t``, DDIM's step (η = 0) run backwards (lesson 11).

    From z_{t'} (t' the level DDIM steps to from t) back up to z_t with the same ε:
    x̂_0 = (z_{t'} - sqrt(1 - ᾱ_{t'}) ε) / sqrt(ᾱ_{t'}),  z_t = sqrt(ᾱ_t) x̂_0 + sqrt(1 - ᾱ_t) ε.

    :param fn: the learner's function; ``z_prev`` and ``eps`` are (B, C, H, W), ``alpha_bar_t`` and
        ``alpha_bar_prev`` are ᾱ_t and ᾱ_{t'} per latent, shape (B, 1, 1, 1)
    :return: True if fn agrees with :func:`course_lib.inversion.ddim_inverse_step` on every case
    """
    cases = []
    for seed, (shape, steps, indices) in enumerate(_INVERSE_CASES):
        sampler = DDIMSampler(SD_SCHEDULE, set_alpha_to_one=False, steps_offset=1, eta=0.0)
        sampler.set_timesteps(steps)
        grid = sampler.timesteps.tolist()
        timesteps = [grid[i] for i in indices]
        z_prev = seeded(140 + seed, *shape)
        eps = 0.8 * z_prev + 0.6 * seeded(150 + seed, *shape)
        a = per_item(SD_SCHEDULE.alphas_cumprod[torch.tensor(timesteps)])
        # ᾱ_{t'}: the next timestep of the sampling grid, or the sampler's final ᾱ after the last one
        p = per_item(torch.stack([SD_SCHEDULE.alphas_cumprod[grid[i + 1]] if i + 1 < len(grid)
                                  else sampler.final_alpha_bar for i in indices]))
        expected = torch.cat([ddim_inverse_step(eps[i:i + 1], t, z_prev[i:i + 1], sampler)
                              for i, t in enumerate(timesteps)])

        def mistakes(z_prev=z_prev, eps=eps, a=a, p=p):
            return [
                (tr("that is DDIM's own step, down from z_t: here the roles swap. x̂0 comes from the point you have, "
                    "z_prev at ᾱ_prev, and goes up to ᾱ_t."),
                 lambda: p.sqrt() * (z_prev - (1 - a).sqrt() * eps) / a.sqrt() + (1 - p).sqrt() * eps),
                (tr("x̂0 = (z_prev - sqrt(1 - ᾱ_prev)·ε) / sqrt(ᾱ_prev): z_prev sits at the level ᾱ_prev, so "
                    "remove the noise of that level."),
                 lambda: a.sqrt() * (z_prev - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a).sqrt() * eps),
                (tr("the noise goes back in at the new level: sqrt(1 - ᾱ_t)·ε, not sqrt(1 - ᾱ_prev)·ε."),
                 lambda: a.sqrt() * (z_prev - (1 - p).sqrt() * eps) / p.sqrt() + (1 - p).sqrt() * eps),
                (tr("you forgot the square roots: every coefficient is a square root of ᾱ or 1 - ᾱ."),
                 lambda: a * (z_prev - (1 - p) * eps) / p + (1 - a) * eps),
                (tr("you returned x̂0; the step goes on to the noisier level: sqrt(ᾱ_t)·x̂0 + sqrt(1 - ᾱ_t)·ε."),
                 lambda: (z_prev - (1 - p).sqrt() * eps) / p.sqrt()),
                (tr("that adds fresh noise as the forward process q(z_t | x̂0) would; inversion puts the same ε "
                    "back: sqrt(ᾱ_t)·x̂0 + sqrt(1 - ᾱ_t)·ε."),
                 lambda: a.sqrt() * z_prev + (1 - a).sqrt() * eps),
            ]

        cases.append(Case(
            args=(z_prev, eps, a, p),
            expected=expected,
            where=tr("for z of shape {shape}, {timesteps} ({steps} sampling steps)", shape=shape,
                     timesteps=timesteps_text(torch.tensor(timesteps)), steps=steps),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_ddim_inverse_step", result_name="z_t",
        success=tr("z_t = sqrt(ᾱ_t)·x̂0 + sqrt(1 - ᾱ_t)·ε with x̂0 from z_prev matches "
                   "course_lib.inversion.ddim_inverse_step at 6 timesteps, the first inverse step included."),
        generic_hint=tr("x̂0 = (z_prev - sqrt(1 - ᾱ_prev)·ε) / sqrt(ᾱ_prev), then z_t = sqrt(ᾱ_t)·x̂0 + "
                        "sqrt(1 - ᾱ_t)·ε: DDIM's step with t and t' swapped."),
        shape_hint=tr("z_t has the shape of z_prev; alpha_bar_t and alpha_bar_prev are already (B, 1, 1, 1)."),
        exception_hint=hint_for_exception("(z_prev, eps, alpha_bar_t, alpha_bar_prev)",
                                           "sqrt(ᾱ_t)·x̂0 + sqrt(1 - ᾱ_t)·ε"),
    )
