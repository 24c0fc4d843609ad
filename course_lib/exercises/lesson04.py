"""The exercises of lesson 04, classifier guidance: the guided noise, the score by Bayes' rule, and how far the
ε-form of guidance moves the mean of DDPM's step (against Algorithm 1's mean shift)."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import score_from_eps
from ..guidance import classifier_guided_eps, classifier_log_prob_grad
from ..i18n import tr
from ..samplers import DDPMSampler
from .lesson02 import SD_SCHEDULE
from .grading import Case, grade, hint_for_exception, per_item, seeded, timesteps_text

__all__ = ["check_classifier_guided_eps", "check_bayes_score", "check_eps_form_mean_shift"]


# (shape, timesteps, scale λ, target labels y); t mid-range, where ᾱ_t is far from 0 and 1
_GUIDANCE_CASES = [
    ((1, 1, 8, 8), [300], 2.0, [3]),
    ((3, 1, 16, 16), [100, 450, 700], 3.5, [0, 7, 3]),
    ((2, 3, 8, 8), [250, 600], 0.5, [9, 1]),
]


def _toy_classifier(seed: int, shape: tuple, num_classes: int = 10):
    """A seeded noise-aware classifier p(y | x_t, t): classifier(x, t) -> logits (B, K)."""
    features = shape[1] * shape[2] * shape[3]
    weight = 0.5 * seeded(seed, features, num_classes)
    time_weight = seeded(seed + 1, 1, num_classes)

    def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).reshape(-1, 1)  # (B, 1)
        return torch.tanh(x.flatten(1)) @ weight + (t / 1000) @ time_weight  # (B, K)

    return classifier


def _guidance_inputs(seed: int, shape, timesteps, labels):
    """x_t, eps, t, y, the classifier and its gradient ∇_{x_t} log p(y | x_t) for one case."""
    t, y = torch.tensor(timesteps), torch.tensor(labels)
    x_t = seeded(80 + seed, *shape)
    eps = seeded(90 + seed, *shape)
    classifier = _toy_classifier(100 + 10 * seed, shape)
    grad = classifier_log_prob_grad(classifier, x_t, t, y)
    return x_t, eps, t, y, classifier, grad


def check_classifier_guided_eps(fn: Callable) -> bool:
    """Check ``fn(eps, grad_log_prob, alpha_bar_t, scale) -> eps_hat`` (lesson 04).

    ε̂ = ε - sqrt(1 - ᾱ_t)·λ·∇_{x_t} log p(y | x_t) (Dhariwal & Nichol 2021, Algorithm 2).

    :param fn: the learner's function; ``eps`` and ``grad_log_prob`` are (B, C, H, W),
        ``alpha_bar_t`` is (B, 1, 1, 1), ``scale`` a number λ
    :return: True if fn agrees with :func:`course_lib.guidance.classifier_guided_eps` on every case
    """
    cases = []
    for seed, (shape, timesteps, scale, labels) in enumerate(_GUIDANCE_CASES):
        x_t, eps, t, y, classifier, grad = _guidance_inputs(seed, shape, timesteps, labels)
        alpha_bar = SD_SCHEDULE.alphas_cumprod[t]
        a = per_item(alpha_bar)

        def mistakes(eps=eps, grad=grad, a=a, s=scale):
            return [
                (tr("check the sign: the score is -ε / sqrt(1 - ᾱ_t), so adding λ·∇log p(y|x_t) to the score "
                    "subtracts sqrt(1 - ᾱ_t)·λ·∇log p(y|x_t) from ε."), lambda: eps + (1 - a).sqrt() * s * grad),
                (tr("you forgot the square root: the factor is sqrt(1 - ᾱ_t), the noise level of x_t."),
                 lambda: eps - (1 - a) * s * grad),
                (tr("the factor is sqrt(1 - ᾱ_t), not sqrt(ᾱ_t): it converts a score into ε "
                    "(ε = -sqrt(1 - ᾱ_t)·score)."), lambda: eps - a.sqrt() * s * grad),
                (tr("multiply the gradient by sqrt(1 - ᾱ_t) to turn it from a score into ε units."),
                 lambda: eps - s * grad),
                (tr("multiply by sqrt(1 - ᾱ_t), do not divide: ε = -sqrt(1 - ᾱ_t)·score."),
                 lambda: eps - s * grad / (1 - a).sqrt()),
                (tr("you forgot the guidance scale λ (scale) on the classifier term."),
                 lambda: eps - (1 - a).sqrt() * grad),
            ]

        cases.append(Case(
            args=(eps, grad, a, scale),
            expected=classifier_guided_eps(eps, x_t, t, y, classifier, scale, alpha_bar),
            where=tr("for eps of shape {shape}, {timesteps}, scale = {scale}", shape=shape,
                     timesteps=timesteps_text(t), scale=scale),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_classifier_guided_eps", result_name="eps_hat",
        success=tr("ε̂ = ε - sqrt(1 - ᾱ_t)·λ·∇log p(y|x_t) matches course_lib.guidance.classifier_guided_eps "
                   "on 3 batches, scales 0.5 to 3.5."),
        generic_hint=tr("ε̂ = ε - sqrt(1 - ᾱ_t)·scale·grad_log_prob (the score is -ε / sqrt(1 - ᾱ_t))."),
        shape_hint=tr("eps_hat has the shape of eps; alpha_bar_t is already (B, 1, 1, 1)."),
        exception_hint=hint_for_exception("(eps, grad_log_prob, alpha_bar_t, scale)",
                                           "ε - sqrt(1 - ᾱ_t)·scale·grad_log_prob"),
    )


def check_bayes_score(fn: Callable) -> bool:
    """Check ``fn(score_uncond, grad_log_p_y_given_x, scale) -> conditional score`` (lesson 04).

    Bayes' rule with a weight λ on the classifier (notes, eq. 3-5):
    ∇log p(x_t | y) = ∇log p(x_t) + λ·∇log p(y | x_t).

    :param fn: the learner's function; the two gradients are (B, C, H, W), ``scale`` a number λ
    :return: True if fn agrees with course_lib on every case
    """
    cases = []
    for seed, (shape, timesteps, scale, labels) in enumerate(_GUIDANCE_CASES):
        x_t, eps, t, y, classifier, grad = _guidance_inputs(seed, shape, timesteps, labels)
        score = score_from_eps(eps, t, SD_SCHEDULE)
        # course_lib implements eq. 5 in ε form (guidance.classifier_guided_eps); the score of the
        # guided ε̂ is the conditional score, ∇log p(x_t) + λ ∇log p(y | x_t)
        eps_hat = classifier_guided_eps(eps, x_t, t, y, classifier, scale, SD_SCHEDULE.alphas_cumprod[t])
        expected = score_from_eps(eps_hat, t, SD_SCHEDULE)

        def mistakes(score=score, grad=grad, s=scale):
            return [
                (tr("check the sign: Bayes' rule adds the log-probabilities, log p(x_t|y) = log p(x_t) + "
                    "log p(y|x_t) - log p(y), so the gradients add."), lambda: score - s * grad),
                (tr("you forgot the weight λ (scale) on the classifier gradient."), lambda: score + grad),
                (tr("λ weighs only the classifier gradient, not the unconditional score: "
                    "score_uncond + scale·grad."), lambda: s * (score + grad)),
                (tr("λ multiplies the classifier gradient, not the unconditional score."),
                 lambda: s * score + grad),
                (tr("that is the mix of classifier-free guidance (eq. 8). Here λ only weighs the classifier "
                    "gradient (eq. 5): score_uncond + scale·grad."), lambda: (1 - s) * score + s * grad),
            ]

        cases.append(Case(
            args=(score, grad, scale),
            expected=expected,
            where=tr("for scores of shape {shape}, scale = {scale}", shape=shape, scale=scale),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_bayes_score", result_name=tr("the conditional score"),
        success=tr("∇log p(x_t|y) = ∇log p(x_t) + λ·∇log p(y|x_t) (notes, eq. 5) matches course_lib's "
                   "classifier guidance on 3 batches, scales 0.5 to 3.5."),
        generic_hint=tr("by Bayes' rule the gradients add, with the weight λ on the classifier term: "
                        "score_uncond + scale·grad_log_p_y_given_x."),
        shape_hint=tr("the conditional score has the shape of score_uncond."),
        exception_hint=hint_for_exception("(score_uncond, grad_log_p_y_given_x, scale)",
                                           "score_uncond + scale·grad_log_p_y_given_x"),
    )


# (shape, DDPM steps n, timesteps on the grid of n steps, scale λ, labels); t = 1 is the last step,
# after which DDPM's ᾱ is 1
_MEAN_SHIFT_CASES = [
    ((1, 1, 8, 8), 50, [981], 2.0, [3]),
    ((3, 1, 16, 16), 50, [501, 41, 1], 5.0, [0, 7, 3]),
    ((2, 3, 8, 8), 10, [601, 101], 0.5, [9, 1]),
]


def check_eps_form_mean_shift(fn: Callable) -> bool:
    """Check ``fn(grad_log_prob, scale, alpha_bar_t, alpha_bar_prev) -> shift`` (lesson 04).

    How far the ε-form of classifier guidance, ε̂ = ε - sqrt(1 - ᾱ_t)·λ·∇log p(y | x_t), moves the mean
    of DDPM's ancestral step from ᾱ_t to ᾱ_prev: μ(ε̂) - μ(ε) = β_t / sqrt(α_t) · λ · ∇log p(y | x_t), with
    the one-step α_t = ᾱ_t / ᾱ_prev and β_t = 1 - α_t. The expected answer is computed without the
    formula: ``DDPMSampler.step`` with ε̂ minus the same step (same noise) with ε.

    :param fn: the learner's function; ``grad_log_prob`` is (B, C, H, W), ``scale`` a number λ,
        ``alpha_bar_t`` and ``alpha_bar_prev`` are (B, 1, 1, 1) (ᾱ_prev = 1 after the last step)
    :return: True if fn agrees with the sampler on every case
    """
    cases = []
    for seed, (shape, steps, timesteps, scale, labels) in enumerate(_MEAN_SHIFT_CASES):
        x_t, eps, t, y, classifier, grad = _guidance_inputs(seed + 5, shape, timesteps, labels)
        eps_hat = classifier_guided_eps(eps.double(), x_t, t, y, classifier, scale, SD_SCHEDULE.alphas_cumprod[t])
        x_t, eps, grad = x_t.double(), eps.double(), grad.double()
        sampler = DDPMSampler(SD_SCHEDULE)
        sampler.set_timesteps(steps)
        grid = sampler.timesteps.tolist()
        alpha_bar = SD_SCHEDULE.alphas_cumprod.double()
        prev = [alpha_bar[grid[grid.index(s) + 1]] if grid.index(s) + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
                for s in timesteps]
        a, p = per_item(alpha_bar[t]), per_item(torch.stack(prev))
        expected = torch.cat([
            sampler.step(eps_hat[i:i + 1], s, x_t[i:i + 1], generator=torch.Generator().manual_seed(i))
            - sampler.step(eps[i:i + 1], s, x_t[i:i + 1], generator=torch.Generator().manual_seed(i))
            for i, s in enumerate(timesteps)])

        def mistakes(grad=grad, a=a, p=p, s=scale):
            alpha = a / p           # the one-step α_t between the two timesteps of the grid
            beta = 1 - alpha
            posterior_variance = (1 - p) / (1 - a) * beta  # β̃_t, the variance Σ of DDPM's step
            return [
                (tr("that is Algorithm 1's shift λ·Σ·∇log p(y|x_t) with Σ = β̃_t, the variance of DDPM's step. The "
                    "ε-form moves the mean by another amount: put ε̂ into μ = (x_t - β_t / sqrt(1 - ᾱ_t)·ε) / sqrt(α_t) "
                    "and subtract μ."), lambda: s * posterior_variance * grad),
                (tr("that is λ·β_t·∇log p(y|x_t): DDPM's mean also divides by sqrt(α_t), "
                    "μ = (x_t - β_t / sqrt(1 - ᾱ_t)·ε) / sqrt(α_t)."), lambda: s * beta * grad),
                (tr("β_t and α_t here are the one-step values between the two timesteps of the grid, "
                    "α_t = ᾱ_t / ᾱ_prev and β_t = 1 - α_t, not ᾱ_t and 1 - ᾱ_t."),
                 lambda: s * (1 - a) / a.sqrt() * grad),
                (tr("check the sign: ε̂ subtracts the gradient and μ subtracts ε, so the mean moves along "
                    "+∇log p(y|x_t), toward the class."), lambda: -s * beta / alpha.sqrt() * grad),
                (tr("that is how much ε changes, ε̂ - ε. The mean changes by -β_t / (sqrt(α_t)·sqrt(1 - ᾱ_t)) "
                    "times that."), lambda: -(1 - a).sqrt() * s * grad),
                (tr("you forgot the guidance scale λ (scale)."), lambda: beta / alpha.sqrt() * grad),
            ]

        cases.append(Case(
            args=(grad.float(), scale, a.float(), p.float()),
            expected=expected,
            where=tr("for a gradient of shape {shape}, {timesteps} ({steps} DDPM steps), scale = {scale}",
                     shape=shape, timesteps=timesteps_text(t), steps=steps, scale=scale),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_eps_form_mean_shift", result_name=tr("the shift of the mean"),
        success=tr("μ(ε̂) - μ(ε) = β_t / sqrt(α_t)·λ·∇log p(y|x_t) matches DDPMSampler.step at 6 timesteps, the last "
                   "step included: the ε-form shifts DDPM's mean by β_t / sqrt(α_t), Algorithm 1 by β̃_t."),
        generic_hint=tr("DDPM's mean is μ = (x_t - β_t / sqrt(1 - ᾱ_t)·ε) / sqrt(α_t) with α_t = ᾱ_t / ᾱ_prev and "
                        "β_t = 1 - α_t; replace ε by ε̂ = ε - sqrt(1 - ᾱ_t)·λ·grad and subtract."),
        shape_hint=tr("the shift has the shape of grad_log_prob; alpha_bar_t and alpha_bar_prev are (B, 1, 1, 1)."),
        exception_hint=hint_for_exception("(grad_log_prob, scale, alpha_bar_t, alpha_bar_prev)",
                                          "β_t / sqrt(α_t)·scale·grad_log_prob"),
    )
