"""Lesson 04's exercise on the two forms of classifier guidance in a DDPM step: the derivation passes,
the usual slips (Algorithm 1's shift among them) get their hint.

(The lesson's other two checks, check_bayes_score and check_classifier_guided_eps, are tested in
tests/test_exercises.py.)
"""

import pytest
import torch

from _exercise_harness import assert_correct, run
from course_lib import exercises
from course_lib.guidance import classifier_guided_mean
from course_lib.samplers import DDPMSampler
from course_lib.schedules import make_schedule


def eps_form_shift(grad, scale, alpha_bar_t, alpha_bar_prev):
    # μ = (x_t - β_t / sqrt(1 - ᾱ_t)·ε) / sqrt(α_t) and ε̂ - ε = -sqrt(1 - ᾱ_t)·λ·grad
    alpha = alpha_bar_t / alpha_bar_prev
    return (1 - alpha) / alpha.sqrt() * scale * grad


def eps_form_shift_through_x0(grad, scale, alpha_bar_t, alpha_bar_prev):
    """The same, as a learner may derive it: through x̂_0 and DDPM eq. 7's coefficient of x̂_0."""
    beta = 1 - alpha_bar_t / alpha_bar_prev
    change_of_x0 = (1 - alpha_bar_t).sqrt() * scale * grad / alpha_bar_t.sqrt()     # x̂_0(ε̂) - x̂_0(ε)
    return alpha_bar_prev.sqrt() * beta / (1 - alpha_bar_t) * change_of_x0 * (1 - alpha_bar_t).sqrt()


@pytest.mark.parametrize("fn", [eps_form_shift, eps_form_shift_through_x0])
def test_the_derivation_passes(fn, capsys):
    assert_correct(exercises.check_eps_form_mean_shift, fn, capsys)


def _posterior_variance(a, p):
    return (1 - p) / (1 - a) * (1 - a / p)


@pytest.mark.parametrize("fn, hint", [
    (lambda g, s, a, p: s * _posterior_variance(a, p) * g, "that is Algorithm 1's shift"),
    (lambda g, s, a, p: s * (1 - a / p) * g, "also divides by sqrt(α_t)"),
    (lambda g, s, a, p: s * (1 - a) / a.sqrt() * g, "the one-step values"),
    (lambda g, s, a, p: -eps_form_shift(g, s, a, p), "check the sign"),
    (lambda g, s, a, p: -(1 - a).sqrt() * s * g, "how much ε changes"),
    (lambda g, s, a, p: eps_form_shift(g, 1.0, a, p), "guidance scale λ"),
])
def test_typical_slips_get_their_hint(fn, hint, capsys):
    verdict, out = run(exercises.check_eps_form_mean_shift, fn, capsys)
    assert verdict is False and out.startswith("❌ Not yet: ") and hint in out, out
    assert "expected" in out


@pytest.mark.parametrize("steps", [1000, 50])
def test_the_eps_form_moves_the_mean_further_than_algorithm_1(steps):
    """What the lesson plots after the exercise: the ε-form's shift (DDPM's step with ε̂ minus with ε)
    over Algorithm 1's λ Σ grad (classifier_guided_mean with Σ = DDPMSampler.variance) is
    (1 - ᾱ_t) / (sqrt(α_t)(1 - ᾱ_prev)): above 1 everywhere, near 1 only where the steps are small."""
    schedule = make_schedule("linear", 1000, 1e-4, 0.02)
    sampler = DDPMSampler(schedule, steps_offset=0 if steps == 1000 else 1)
    sampler.set_timesteps(steps)
    grad, x_t, eps = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    grid, alpha_bar = sampler.timesteps.tolist(), schedule.alphas_cumprod.double()
    ratios = {}
    for i, t in enumerate(grid[:-1]):                    # after the last step Algorithm 1's Σ is 0
        a, p = alpha_bar[t], alpha_bar[grid[i + 1]]
        shifted = sampler.step(eps - (1 - a).sqrt().float() * 2.0 * grad, t, x_t, generator=torch.Generator().manual_seed(0))
        plain = sampler.step(eps, t, x_t, generator=torch.Generator().manual_seed(0))
        algorithm_1 = classifier_guided_mean(torch.zeros_like(grad), sampler.variance(t), grad, 2.0)
        ratios[t] = ((shifted - plain) / algorithm_1).mean().item()
        assert ratios[t] == pytest.approx(((1 - a) / ((a / p).sqrt() * (1 - p))).item(), rel=1e-3), t
    assert min(ratios.values()) > 1                        # the ε-form always moves the mean further
    if steps == 1000:
        assert max(r for t, r in ratios.items() if t >= 100) < 1.02    # by 1-2 % where the steps are small
        assert ratios[1] > 2                                            # twice as far at the last steps
    else:
        assert min(ratios.values()) > 1.1                               # 50 big steps: everywhere
