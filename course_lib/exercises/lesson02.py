"""The exercises of lesson 02, the reverse process: x̂_0 from the predicted noise, one DDIM step, and a
prediction about the samplers (which runs from the same x_T give the same pictures)."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import pred_x0_from_eps, q_sample
from ..i18n import tr, translatable
from ..pretrained import load_course_model
from ..samplers import DDIMSampler, DDPMSampler, sample_loop
from ..schedules import make_schedule
from .lesson01 import Q_CASES
from .grading import Case, collect_predictions, correct, grade, hint_for_exception, not_yet, per_item, seeded, timesteps_text

__all__ = ["check_pred_x0", "check_ddim_step", "check_sampler_prediction", "sampler_facts"]

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
                (tr("check the sign: solve x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε for x0, which subtracts "
                    "the noise term: x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t)."),
                 lambda: (x_t + (1 - a).sqrt() * eps) / a.sqrt()),
                (tr("you forgot the square roots: the coefficients are sqrt(1 - ᾱ_t) and sqrt(ᾱ_t)."),
                 lambda: (x_t - (1 - a) * eps) / a),
                (tr("you forgot the square root on the noise term: sqrt(1 - ᾱ_t)·ε."),
                 lambda: (x_t - (1 - a) * eps) / a.sqrt()),
                (tr("you forgot the square root in the division: divide by sqrt(ᾱ_t)."),
                 lambda: (x_t - (1 - a).sqrt() * eps) / a),
                (tr("divide by sqrt(ᾱ_t), do not multiply: x_t = sqrt(ᾱ_t)·x0 + ..., so x0 = (...) / sqrt(ᾱ_t)."),
                 lambda: (x_t - (1 - a).sqrt() * eps) * a.sqrt()),
                (tr("you subtracted the noise but did not divide by sqrt(ᾱ_t)."),
                 lambda: x_t - (1 - a).sqrt() * eps),
                (tr("ᾱ_t and 1 - ᾱ_t are swapped: the noise term is sqrt(1 - ᾱ_t)·ε and you divide by "
                    "sqrt(ᾱ_t)."),
                 lambda: (x_t - a.sqrt() * eps) / (1 - a).sqrt()),
            ]

        cases.append(Case(
            args=(x_t, eps, a),
            expected=pred_x0_from_eps(x_t, eps, t, SD_SCHEDULE),
            where=tr("for x_t of shape {shape}, {timesteps}", shape=shape, timesteps=timesteps_text(t)),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_pred_x0", result_name="pred_x0",
        success=tr("x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t) matches course_lib.diffusion.pred_x0_from_eps "
                   "on 3 batches, with a different t per image."),
        generic_hint=tr("solve x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε for x0: "
                        "x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t)."),
        shape_hint=tr("pred_x0 has the shape of x_t; alpha_bar_t is already shaped (B, 1, 1, 1) to broadcast."),
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
                (tr("alpha_bar_t and alpha_bar_prev are swapped: x̂0 uses ᾱ_t (the level x_t is at), the step "
                    "then moves to ᾱ_prev."),
                 lambda: a.sqrt() * (x_t - (1 - p).sqrt() * eps) / p.sqrt() + (1 - a).sqrt() * eps),
                (tr("the 'direction pointing to x_t' goes to the new noise level: sqrt(1 - ᾱ_prev)·ε, "
                    "not sqrt(1 - ᾱ_t)·ε."), lambda: p.sqrt() * pred_x0 + (1 - a).sqrt() * eps),
                (tr("x̂0 is rescaled to the new noise level: sqrt(ᾱ_prev)·x̂0, not sqrt(ᾱ_t)·x̂0."),
                 lambda: a.sqrt() * pred_x0 + (1 - p).sqrt() * eps),
                (tr("you forgot the square roots: x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε."),
                 lambda: p * pred_x0 + (1 - p) * eps),
                (tr("you forgot the square roots (in x̂0 and in the step): every coefficient is a square root."),
                 lambda: p * (x_t - (1 - a) * eps) / a + (1 - p) * eps),
                (tr("check the sign: x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε (plus)."),
                 lambda: p.sqrt() * pred_x0 - (1 - p).sqrt() * eps),
                (tr("check the sign in x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t) (minus)."),
                 lambda: p.sqrt() * (x_t + (1 - a).sqrt() * eps) / a.sqrt() + (1 - p).sqrt() * eps),
                (tr("you dropped the 'direction pointing to x_t', sqrt(1 - ᾱ_prev)·ε: with η = 0 DDIM puts "
                    "the predicted noise back at the new level."), lambda: p.sqrt() * pred_x0),
                (tr("you returned x̂0; the step goes on to the next noise level: "
                    "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε."),
                 lambda: pred_x0),
                (tr("that is DDPM's mean, with the one-step α_t = ᾱ_t / ᾱ_prev. DDIM uses ᾱ (alpha_bar) only: "
                    "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε."),
                 lambda: (x_t - (1 - alpha_t) / (1 - a).sqrt() * eps) / alpha_t.sqrt()),
            ]

        cases.append(Case(
            args=(x_t, eps, a, p),
            expected=expected,
            where=tr("for x_t of shape {shape}, {timesteps} ({steps} sampling steps)", shape=shape,
                     timesteps=timesteps_text(torch.tensor(timesteps)), steps=steps),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_ddim_step", result_name="x_prev",
        success=tr("x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε matches DDIMSampler(eta=0).step at 6 "
                   "timesteps, the last step included."),
        generic_hint=tr("x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t), then x_prev = sqrt(ᾱ_prev)·x̂0 + "
                        "sqrt(1 - ᾱ_prev)·ε (DDIM eq. 12 with σ_t = 0)."),
        shape_hint=tr("x_prev has the shape of x_t; alpha_bar_t and alpha_bar_prev are already (B, 1, 1, 1)."),
        exception_hint=hint_for_exception("(x_t, eps, alpha_bar_t, alpha_bar_prev)",
                                           "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε"),
    )


# ---------------------------------------------------------------------------------- predict, then run
SAMPLER_PREDICTION_KEYS = ("same_with_another_generator", "same_with_fewer_steps")
# "the same picture": on average closer to the reference run than half the distance between two
# unrelated samples of that run (measured: DDIM's 5-step pictures sit at about 0.15 of it, DDPM's at 1)
SAME_PICTURE = 0.5
_SAMPLER_RUNS = {"noises": 8, "steps": 20, "fewer_steps": 5, "seed": 200}

_WRONG_PREDICTION_HINTS = {
    ("ddim", "same_with_another_generator"): translatable(
        "with η = 0, DDIM's σ_t is 0: the step adds no fresh noise and never uses the generator, so the "
        "picture is a function of x_T alone."),
    ("ddim", "same_with_fewer_steps"): translatable(
        "with η = 0, DDIM follows one deterministic path from x_T (the discretisation of an ODE); fewer "
        "steps follow the same path more coarsely and land close to the same picture."),
    ("ddpm", "same_with_another_generator"): translatable(
        "DDPM adds fresh noise σ_t·z at every step: another generator draws other z's, and the path, "
        "and the picture, change."),
    ("ddpm", "same_with_fewer_steps"): translatable(
        "with 5 steps DDPM draws 5 noises instead of 20 and takes other steps: the paths part at the "
        "first step, and the fresh noise decides much of the picture."),
}


def sampler_facts() -> dict:
    """Measure what exercise 2.3 predicts, on the shipped ``digits-ddpm`` model (a few seconds).

    From the same 8 starting noises x_T, each sampler runs 20 steps with the generator seeded 1,
    again with the generator seeded 2, and 5 steps with the generator seeded 1. A run gives "the
    same picture" as the first when the mean distance between them is below ``SAME_PICTURE``
    times the mean distance between two unrelated samples of the first run (sample i and i + 1).

    :return: {"ddim": {...}, "ddpm": {...}}, each with the two booleans of
        ``SAMPLER_PREDICTION_KEYS`` and the two measured ratios, "another_generator_ratio" and
        "fewer_steps_ratio"
    """
    unet, config = load_course_model("digits-ddpm")
    schedule = make_schedule(**config["schedule"])
    x_T = seeded(_SAMPLER_RUNS["seed"], _SAMPLER_RUNS["noises"], 1, 16, 16)
    makers = {"ddim": lambda: DDIMSampler(schedule, eta=0.0), "ddpm": lambda: DDPMSampler(schedule)}

    def run(name: str, steps: int, seed: int) -> torch.Tensor:
        sampler = makers[name]()
        sampler.set_timesteps(steps)
        with torch.no_grad():
            return sample_loop(lambda x, t: unet(x, t), sampler, x_T, generator=torch.Generator().manual_seed(seed),
                               progress=False).clamp(-1, 1)

    def mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).flatten(1).norm(dim=1).mean())

    facts = {}
    for name in makers:
        reference = run(name, _SAMPLER_RUNS["steps"], 1)
        unrelated = mean_distance(reference, reference.roll(1, dims=0))
        ratios = {"another_generator_ratio": mean_distance(run(name, _SAMPLER_RUNS["steps"], 2), reference) / unrelated,
                  "fewer_steps_ratio": mean_distance(run(name, _SAMPLER_RUNS["fewer_steps"], 1), reference) / unrelated}
        facts[name] = {"same_with_another_generator": ratios["another_generator_ratio"] < SAME_PICTURE,
                       "same_with_fewer_steps": ratios["fewer_steps_ratio"] < SAME_PICTURE, **ratios}
    return facts


def check_sampler_prediction(fn: Callable) -> bool:
    """Check a prediction ``fn(sampler) -> {"same_with_another_generator": bool, "same_with_fewer_steps": bool}`` (lesson 02).

    For ``sampler`` "ddim" (η = 0) and "ddpm", the learner predicts whether, from the same starting
    noise x_T, a second run with another random generator, and a run with 5 steps instead of 20,
    give the same pictures. Then the check samples the shipped digits model and compares
    (:func:`sampler_facts`).

    :param fn: the learner's function of one sampler name
    :return: True if every prediction agrees with the measurement
    """
    predictions = collect_predictions(fn, "check_sampler_prediction", "sampler", ("ddim", "ddpm"),
                                      SAMPLER_PREDICTION_KEYS, lambda value: isinstance(value, bool), tr("True or False"))
    if predictions is None:
        return False
    measured = sampler_facts()
    for name, got in predictions.items():
        for key in SAMPLER_PREDICTION_KEYS:
            if got[key] != measured[name][key]:
                ratio = measured[name]["another_generator_ratio" if "generator" in key else "fewer_steps_ratio"]
                return not_yet(tr("for {name} you predicted {key} = {predicted}; the run measures {measured} "
                                  "(distance to the first run: {ratio:.2f} of the distance between unrelated samples).",
                                  name=name, key=key, predicted=got[key], measured=measured[name][key], ratio=ratio),
                               tr(_WRONG_PREDICTION_HINTS[name, key]))
    return correct(tr("DDIM with η = 0 gives the same pictures with another generator (distance {ddim_generator:.2f}) "
                      "and nearly the same with 5 steps instead of 20 ({ddim_steps:.2f}); DDPM gives other pictures "
                      "either way ({ddpm_generator:.1f} and {ddpm_steps:.1f}), in units of the distance between two "
                      "unrelated samples.", ddim_generator=measured["ddim"]["another_generator_ratio"],
                      ddim_steps=measured["ddim"]["fewer_steps_ratio"],
                      ddpm_generator=measured["ddpm"]["another_generator_ratio"],
                      ddpm_steps=measured["ddpm"]["fewer_steps_ratio"]))
