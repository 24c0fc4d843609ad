"""The exercises of lesson 09, samplers and img2img: one Euler step in σ, the timesteps img2img runs, and a
prediction of the strength at which img2img changes a picture's shape, colour or size."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..experiments import img2img_sweep
from ..i18n import tr
from ..samplers import EulerSampler, make_sampler
from .lesson02 import SD_SCHEDULE
from .grading import Case, call_learner, correct, grade, hint_for_exception, is_function, not_yet, per_item, seeded

__all__ = ["check_euler_step", "check_img2img_timesteps", "check_img2img_prediction"]


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
                (tr("check the sign: σ decreases along the sampling, so the step σ_next - σ is negative; "
                    "x_next = x + (σ_next - σ)·ε, not x + (σ - σ_next)·ε."), lambda: x + (s - n) * eps),
                (tr("you used σ_next alone; Euler's step multiplies the derivative ε by the change in σ, "
                    "σ_next - σ."), lambda: x + n * eps),
                (tr("you used σ_next alone; Euler's step multiplies the derivative ε by the change in σ, "
                    "σ_next - σ."), lambda: x - n * eps),
                (tr("you returned x̂0 = x - σ·ε, a jump all the way to σ = 0; step only to σ_next: "
                    "x + (σ_next - σ)·ε."), lambda: x - s * eps),
                (tr("the derivative dx/dσ is ε itself (x = x0 + σ·ε); you divided it by σ once more."),
                 lambda: x + (n - s) * eps / s),
                (tr("σ is a standard deviation and the ODE is in σ itself: use σ_next - σ, not σ_next² - σ²."),
                 lambda: x + (n ** 2 - s ** 2) * eps),
                (tr("you scaled x by 1 / sqrt(σ² + 1): that is what the UNet is given (scale_model_input); "
                    "the step itself works on x = x0 + σ·ε: x + (σ_next - σ)·ε."),
                 lambda: x / (s ** 2 + 1) ** 0.5 + (n - s) * eps),
                (tr("every image used the first σ; each image has its own σ and σ_next, already shaped "
                    "(B, 1, 1, 1): x + (sigma_next - sigma) * eps."), lambda: x + (n[0] - s[0]) * eps),
            ]

        cases.append(Case(
            args=(x, eps, sigma, sigma_next),
            expected=expected,
            where=tr("for x of shape {shape}, σ = {sigma} -> σ_next = {sigma_next} ({steps} {spacing} steps)",
                     shape=shape, sigma=[round(v, 4) for v in sigma.flatten().tolist()],
                     sigma_next=[round(v, 4) for v in sigma_next.flatten().tolist()], steps=steps, spacing=spacing),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_euler_step", result_name="x_next",
        success=tr("x_next = x + (σ_next - σ)·ε matches EulerSampler.step on 3 grids, the last step (σ_next = 0) "
                   "included."),
        generic_hint=tr("x = x0 + σ·ε, so dx/dσ = ε and Euler's step is x_next = x + (σ_next - σ)·ε."),
        shape_hint=tr("x_next has the shape of x; sigma and sigma_next are already (B, 1, 1, 1)."),
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
                (tr("you rounded n·strength; diffusers truncates it: k = int(n·strength), then timesteps[n - k:]."),
                 lambda: ts[n - min(round(n * s), n):]),
                (tr("you rounded n·strength up (a start at int(n·(1 - strength)) does the same); diffusers first "
                    "truncates the number of steps, k = int(n·strength), then starts at n - k."),
                 lambda: ts[n - min(math.ceil(n * s), n):]),
                (tr("off by one: you run one step too many (k + 1). Run exactly k = int(n·strength) steps: "
                    "timesteps[n - k:]."), lambda: ts[max(n - k - 1, 0):]),
                (tr("off by one: you run one step too few (k - 1). Run exactly k = int(n·strength) steps: "
                    "timesteps[n - k:]."), lambda: ts[n - k + 1:]),
                (tr("for strength 0, k = 0 and timesteps[-0:] is the whole grid (-0 is 0); slice from n - k: "
                    "timesteps[len(timesteps) - k:]."), lambda: ts[-k:]),
                (tr("those are the first k timesteps, the noisiest ones, where sampling from noise starts. img2img "
                    "runs the END of the loop: the last k, timesteps[n - k:]."), lambda: ts[:k]),
                (tr("you started at position k; start at n - k, so that k = int(n·strength) steps are run."),
                 lambda: ts[k:]),
                (tr("the timesteps must stay high to low, as the sampler runs them: timesteps[n - k:], not flipped."),
                 lambda: ts[n - k:].flip(0)),
            ]

        cases.append(Case(
            args=(timesteps, strength),
            expected=timesteps[n - k:],
            where=tr("for {sampler}'s {n} {spacing} timesteps and strength = {strength}", sampler=name, n=n,
                     spacing=spacing, strength=strength),
            mistakes=mistakes(),
        ))

    def exception_hint(error: BaseException) -> str:
        message = str(error)
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return tr("your function must take exactly these arguments, in this order: {signature}.",
                      signature="(timesteps, strength)")
        if isinstance(error, TypeError) and ("slice" in message or "integer" in message or "index" in message):
            return tr("slice positions must be whole numbers: k = int(n * strength).")
        return tr("k = int(len(timesteps) * strength), then return timesteps[len(timesteps) - k:].")

    return grade(
        fn, cases, check_name="check_img2img_timesteps", result_name=tr("the timesteps run"),
        success=tr("the last k = int(n·strength) timesteps, timesteps[n - k:], match StableDiffusion.img2img "
                   "for 6 grids and strengths, strength 0 and 1 included."),
        generic_hint=tr("k = int(n * strength) steps are run, the last k of the grid: timesteps[n - k:]."),
        shape_hint=tr("return k = int(n * strength) timesteps, the last k of the grid: timesteps[n - k:]."),
        exception_hint=exception_hint,
    )


# exercise 9.3: lesson 09's img2img of a large red circle in the top left (img2img_sweep's defaults: 8 pictures,
# 20 DDIM steps, guidance 7.5); each edit: the new prompt, the attribute it changes, its new value
IMG2IMG_EDITS = {"shape": ("a large red square", "shape", "square"),
                 "color": ("a large blue circle", "color", "blue"),
                 "size": ("a small red circle", "size", "small")}
IMG2IMG_STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
IMG2IMG_MOST = 6  # "most of the 8 pictures"
_IMG2IMG_STEPS = 20


def _first_step_run(strength: float) -> str:
    """Where img2img with 20 DDIM steps starts at this strength, in words: the timestep and the input kept."""
    sampler = make_sampler("ddim", SD_SCHEDULE, steps_offset=1, set_alpha_to_one=False)  # SD's DDIM settings
    sampler.set_timesteps(_IMG2IMG_STEPS)
    k = int(_IMG2IMG_STEPS * strength)
    t = int(sampler.timesteps[_IMG2IMG_STEPS - k])
    return tr("t = {t}, where z_t keeps sqrt(ᾱ) = {kept:.2f} of the input's latent", t=t,
              kept=float(SD_SCHEDULE.alphas_cumprod[t].sqrt()))


def check_img2img_prediction(fn: Callable) -> bool:
    """Check a prediction ``fn(edit) -> strength`` about img2img (lesson 09): predict, then run.

    Lesson 09's input is a large red circle in the top left. For three new prompts that each change one
    attribute (``IMG2IMG_EDITS``: "shape" to a square, "color" to blue, "size" to small) the learner
    predicts the smallest strength among 0.2, 0.4, 0.6, 0.8 and 1.0 at which the shapes judge reads the
    new value in at least 6 of the 8 pictures. The check runs img2img at the predicted strength and at
    the one below (:func:`course_lib.experiments.img2img_sweep`, cached per strength) and compares.

    :param fn: the learner's function of one edit name, returning a strength
    :return: True if every prediction agrees with the measurement
    """
    if not is_function(fn, "check_img2img_prediction"):
        return False
    exception_hint = hint_for_exception("(edit)", tr('a strength for each edit, e.g. {"shape": 0.6, "color": 0.4, '
                                                     '"size": 0.6}[edit]'), broadcast=False)
    predictions = {}
    for edit in IMG2IMG_EDITS:
        ok, got = call_learner(fn, (edit,), exception_hint)
        if not ok:
            return False
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)) \
                or not any(math.isclose(got, s, abs_tol=1e-6) for s in IMG2IMG_STRENGTHS):
            return not_yet(tr("for {name} = {value!r} your function returned {got!r}.", name="edit", value=edit, got=got),
                           tr("return one of the strengths {strengths}.",
                              strengths=", ".join(f"{s:g}" for s in IMG2IMG_STRENGTHS)))
        predictions[edit] = next(s for s in IMG2IMG_STRENGTHS if math.isclose(got, s, abs_tol=1e-6))
    for edit, strength in predictions.items():
        prompt, attribute, value = IMG2IMG_EDITS[edit]
        index = IMG2IMG_STRENGTHS.index(strength)
        strengths = IMG2IMG_STRENGTHS[max(index - 1, 0):index + 1]
        counts = img2img_sweep(prompt, strengths=strengths).tally(attribute, value)
        total = 8
        if counts[-1] < IMG2IMG_MOST:
            return not_yet(
                tr("{edit}: at strength {strength:g} the judge reads {value!r} in only {read} of the {total} pictures "
                   "of \"{prompt}\" (at least {most} are needed).", edit=edit, strength=strength, value=value,
                   read=counts[-1], total=total, prompt=prompt, most=IMG2IMG_MOST),
                tr("strength {strength:g} starts the loop at {start}: too much of the red circle is still there for "
                   "the prompt to change this. Predict a larger strength.", strength=strength,
                   start=_first_step_run(strength)))
        if len(counts) == 2 and counts[0] >= IMG2IMG_MOST:
            below = IMG2IMG_STRENGTHS[index - 1]
            return not_yet(
                tr("{edit}: already at strength {below:g} the judge reads {value!r} in {read} of the {total} pictures "
                   "of \"{prompt}\".", edit=edit, below=below, value=value, read=counts[0], total=total,
                   prompt=prompt),
                tr("strength {below:g} starts at {start}, and that is enough noise for this edit. Which differences "
                   "does noise hide first: those carried by a few cells of the 8 x 8 latent, or those spread over "
                   "many?", below=below, start=_first_step_run(below)))
    return correct(tr("at each strength you predicted most of the 8 pictures show the new shape, colour or size, and "
                      "at the strength below they do not."))
