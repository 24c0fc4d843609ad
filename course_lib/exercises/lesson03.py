"""The exercises of lesson 03, exact scores in 2-D: a noised Gaussian, Tweedie's formula, and a prediction about guidance."""

from __future__ import annotations

from typing import Callable

import torch

from .. import mixture
from ..i18n import tr
from ..guidance import cfg_denoiser, classifier_guided_denoiser
from ..sample_stats import Grid2D, total_variation, total_variation_noise_floor
from ..samplers import DDIMSampler, sample_loop
from ..schedules import make_schedule
from .grading import (Case, call_learner, collect_predictions, correct, grade, hint_for_exception, is_function,
                      not_yet, wrong_value)

__all__ = ["check_noised_component", "check_tweedie", "check_guidance_prediction"]

SCHEDULE = make_schedule("linear", 1000, 1e-4, 0.02)  # lessons 01-03's schedule
DATA = mixture.three_spokes()


def _one_component(mean: torch.Tensor, covariance: torch.Tensor) -> mixture.GaussianMixture:
    return mixture.GaussianMixture(mean[None], covariance[None], torch.ones(1, dtype=torch.float64), torch.tensor([0]))


def _noised_component_cases() -> list[tuple[torch.Tensor, torch.Tensor, int, str]]:
    """(μ, Σ, t, where): two components of lesson 03's mixture and a 3-D one."""
    generator = torch.Generator().manual_seed(300)
    square = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    return [
        (DATA.means[1], DATA.covariances[1], 100, tr("for the outer component of class 0 at t = 100")),
        (DATA.means[2], DATA.covariances[2], 600, tr("for the inner component of class 1 at t = 600")),
        (torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), square @ square.T + 0.1 * torch.eye(3, dtype=torch.float64),
         900, tr("for a 3-D Gaussian at t = 900")),
    ]


def check_noised_component(fn: Callable) -> bool:
    """Check ``fn(mean, covariance, alpha_bar) -> (mean_t, covariance_t)``, one Gaussian after the forward process (lesson 03).

    x_0 ~ N(μ, Σ) and x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε give x_t ~ N(√ᾱ_t μ, ᾱ_t Σ + (1 - ᾱ_t) I).

    :param fn: the learner's function; ``mean`` is (D,), ``covariance`` (D, D), ``alpha_bar`` a 0-d tensor
    :return: True if both parts agree with :func:`course_lib.mixture.noised_components` on every case
    """
    if not is_function(fn, "check_noised_component"):
        return False
    exception_hint = hint_for_exception("(mean, covariance, alpha_bar)",
                                        tr("(sqrt(ᾱ)·mean, ᾱ·covariance + (1 - ᾱ)·I) with torch.eye(D)"), broadcast=False)
    for mean, covariance, t, where in _noised_component_cases():
        a = SCHEDULE.alphas_cumprod[t].double()
        means, covariances = mixture.noised_components(_one_component(mean, covariance), a)
        expected = (means[0, 0], covariances[0, 0])
        ok, got = call_learner(fn, (mean, covariance, a), exception_hint)
        if not ok:
            return False
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            received = "None" if got is None else tr("a {type_name}", type_name=type(got).__name__)
            return not_yet(tr("your function returned {received}, expected the pair {pair}.", received=received,
                              pair="(mean_t, covariance_t)"),
                           tr("end with `return mean_t, covariance_t`."))
        identity = torch.eye(len(mean), dtype=torch.float64)
        mean_mistakes = [
            (tr("the mean is scaled by sqrt(ᾱ_t), not ᾱ_t: x_t = sqrt(ᾱ_t)·x_0 + ..."), lambda: a * mean),
            (tr("the mean is scaled: E[x_t] = sqrt(ᾱ_t)·E[x_0] (the noise has mean 0)."), lambda: mean),
        ]
        covariance_mistakes = [
            (tr("the noise adds (1 - ᾱ_t)·I: the noise is independent of x_0, so the covariances add."),
             lambda: a * covariance),
            (tr("scaling x_0 by sqrt(ᾱ_t) scales its covariance by ᾱ_t (the square), not sqrt(ᾱ_t)."),
             lambda: a.sqrt() * covariance + (1 - a) * identity),
            (tr("the noise covariance is (1 - ᾱ_t)·I, the identity matrix, not a matrix of ones: use torch.eye(D)."),
             lambda: a * covariance + (1 - a)),
            (tr("ᾱ_t and 1 - ᾱ_t are swapped: the data keeps ᾱ_t·Σ, the noise adds (1 - ᾱ_t)·I."),
             lambda: (1 - a) * covariance + a * identity),
            (tr("the noise's standard deviation is sqrt(1 - ᾱ_t), its covariance (1 - ᾱ_t)·I."),
             lambda: a * covariance + (1 - a).sqrt() * identity),
        ]
        for name, received, wanted, mistakes, formula in (
                ("mean_t", got[0], expected[0], mean_mistakes, "mean_t = sqrt(ᾱ_t)·mean"),
                ("covariance_t", got[1], expected[1], covariance_mistakes,
                 "covariance_t = ᾱ_t·covariance + (1 - ᾱ_t)·I")):
            lines = wrong_value(received, Case((), wanted, where, mistakes), name, formula,
                                tr("{name} has the shape of the input's {input_name}: {shape}.", name=name,
                                   input_name=name[:-2], shape=tuple(wanted.shape)))
            if lines:
                print("\n".join(lines))
                return False
    return correct(tr("N(sqrt(ᾱ_t)·μ, ᾱ_t·Σ + (1 - ᾱ_t)·I) matches course_lib.mixture.noised_components "
                      "for 3 Gaussians (2-D and 3-D), t = 100, 600, 900."))


def check_tweedie(fn: Callable) -> bool:
    """Check ``fn(x_t, score, alpha_bar) -> E[x_0 | x_t]``, Tweedie's formula (lesson 03, eq. C).

    E[x_0 | x_t] = (x_t + (1 - ᾱ_t) ∇ log p_t(x_t)) / √ᾱ_t, compared with the posterior mean that
    :func:`course_lib.mixture.posterior_mean` computes by conditioning every Gaussian component
    (no score involved).

    :param fn: the learner's function; ``x_t`` and ``score`` are (B, D), ``alpha_bar`` is (B, 1)
    :return: True if fn agrees on every case
    """
    cases = []
    for seed, (count, timesteps) in enumerate([(1, [300]), (4, [20, 200, 500, 800]), (3, [999, 50, 650])]):
        x0, _ = DATA.sample(count, torch.Generator().manual_seed(310 + seed))
        t = torch.tensor(timesteps)
        a = SCHEDULE.alphas_cumprod[t].double()[:, None]  # (B, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=torch.Generator().manual_seed(320 + seed),
                                                         dtype=torch.float64)
        score = mixture.score(DATA, x_t, a)

        def mistakes(x_t=x_t, s=score, a=a):
            return [
                (tr("check the sign: the score points toward the data, so x_t + (1 - ᾱ_t)·score."),
                 lambda: (x_t - (1 - a) * s) / a.sqrt()),
                (tr("the score is multiplied by the variance 1 - ᾱ_t, not by its square root."),
                 lambda: (x_t + (1 - a).sqrt() * s) / a.sqrt()),
                (tr("divide by sqrt(ᾱ_t): x_t is sqrt(ᾱ_t)·x_0 + noise."), lambda: x_t + (1 - a) * s),
                (tr("divide by sqrt(ᾱ_t), not by ᾱ_t."), lambda: (x_t + (1 - a) * s) / a),
                (tr("the score needs the factor 1 - ᾱ_t (the variance of the noise)."), lambda: (x_t + s) / a.sqrt()),
            ]

        cases.append(Case(args=(x_t, score, a), expected=mixture.posterior_mean(DATA, x_t, a),
                          where=tr("for {count} point(s) at t = {timesteps}", count=count, timesteps=timesteps),
                          mistakes=mistakes()))
    return grade(
        fn, cases, check_name="check_tweedie", result_name=tr("the posterior mean"),
        success=tr("(x_t + (1 - ᾱ_t)·score) / sqrt(ᾱ_t) equals E[x_0 | x_t] computed by conditioning each "
                   "Gaussian component (course_lib.mixture.posterior_mean) on 3 batches, t from 20 to 999."),
        generic_hint=tr("E[x_0 | x_t] = (x_t + (1 - ᾱ_t)·score) / sqrt(ᾱ_t)."),
        shape_hint=tr("the posterior mean has the shape of x_t, (B, D); alpha_bar is (B, 1) and broadcasts."),
        exception_hint=hint_for_exception("(x_t, score, alpha_bar)", "(x_t + (1 - ᾱ_t)·score) / sqrt(ᾱ_t)",
                                          broadcast=False),
    )


_KEYS = ("classifier_guidance_equals_cfg", "samples_follow_p_lambda")
_SCALES = (0.0, 1.0, 3.0, 10.0)


def _guidance_experiment(per_class: int = 100) -> dict[float, dict[str, bool]]:
    """Measure both facts at every λ: exact-score classifier guidance against CFG, and the samples against p_λ."""
    labels = torch.arange(3).repeat_interleave(per_class).repeat(len(_SCALES))
    scales = torch.tensor(_SCALES, dtype=torch.float64).repeat_interleave(3 * per_class)
    x_T = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(330), dtype=torch.float64)
    eps_model, classifier = mixture.exact_eps_model(DATA, SCHEDULE), mixture.exact_classifier(DATA, SCHEDULE)
    sampler = DDIMSampler(SCHEDULE)
    sampler.set_timesteps(50)
    guided = sample_loop(classifier_guided_denoiser(eps_model, classifier, labels, scales, sampler), sampler, x_T,
                         progress=False)
    free = sample_loop(cfg_denoiser(eps_model, labels, scales, null_label=DATA.num_classes), sampler, x_T,
                       progress=False)
    grid = Grid2D(extent=4.5, bins=9)
    points = grid.centres(8)
    measured = {}
    for scale in _SCALES:
        follows = True
        for y in range(3):
            tilted = grid.probabilities(mixture.tilted_log_density(DATA, points, torch.full((len(points),), y), scale), 8)
            floor = total_variation_noise_floor(tilted, per_class, repeats=50, generator=torch.Generator().manual_seed(y))
            chosen = (scales == scale) & (labels == y)
            follows &= total_variation(tilted, *grid.histogram(free[chosen])) <= float(floor.max())
        measured[scale] = {_KEYS[0]: bool((guided[scales == scale] - free[scales == scale]).abs().max() < 1e-4),
                           _KEYS[1]: follows}
    return measured


def check_guidance_prediction(fn: Callable) -> bool:
    """Check a prediction ``fn(scale) -> {"classifier_guidance_equals_cfg": bool, "samples_follow_p_lambda": bool}`` (lesson 03).

    For λ = 0, 1, 3, 10 the learner predicts whether, with exact scores, classifier guidance and
    CFG give the same samples, and whether the guided samples follow p_λ(x | y) ∝ p_0(x) p_0(y | x)^λ.
    Then the check runs both samplers (DDIM, 50 steps, 100 samples per class) and compares the
    predictions with what it measures.

    :param fn: the learner's function of one number λ
    :return: True if every prediction agrees with the measurement
    """
    predictions = collect_predictions(fn, "check_guidance_prediction", "scale", _SCALES, _KEYS,
                                      lambda value: isinstance(value, bool), tr("True or False"))
    if predictions is None:
        return False
    measured = _guidance_experiment()
    for scale in _SCALES:
        if predictions[scale][_KEYS[0]] != measured[scale][_KEYS[0]]:
            return not_yet(
                tr("at λ = {scale:g} you predicted classifier_guidance_equals_cfg = {predicted}; the exact samplers "
                   "measure {measured}.", scale=scale, predicted=predictions[scale][_KEYS[0]],
                   measured=measured[scale][_KEYS[0]]),
                tr("write both guided scores: s(x) + λ·(s(x | y) - s(x)) and λ·s(x | y) + (1 - λ)·s(x) (notes, eq. 5 "
                   "and 8). With exact scores, is ∇log p(y | x) anything other than s(x | y) - s(x)?"))
        if predictions[scale][_KEYS[1]] != measured[scale][_KEYS[1]]:
            return not_yet(
                tr("at λ = {scale:g} you predicted samples_follow_p_lambda = {predicted}; the measurement says "
                   "{measured} (total variation to p_λ against the noise floor).", scale=scale,
                   predicted=predictions[scale][_KEYS[1]], measured=measured[scale][_KEYS[1]]),
                tr("at λ = 0 and 1, p_λ is p(x) or p(x | y), and the forward process noises them into p_t(x) and "
                   "p_t(x | y): the guided score is an exact score. For other λ, is p_t(x)·p_t(y | x)^λ the noised "
                   "p_0(x)·p_0(y | x)^λ?"))
    return correct(tr("with exact scores, classifier guidance and CFG are one sampler at every λ (eq. 5 = eq. 8), "
                      "and the guided samples follow p_λ at λ = 0 and 1 only."))
