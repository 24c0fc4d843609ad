"""Tests of lesson 06's exercise checks: the KL of a diagonal Gaussian and the reparameterisation.

As in test_exercises.py: a right answer (written as a learner would, in several forms) passes with
"✅ Correct", every typical mistake fails with "❌ Not yet" and the hint that names it, and a check
never raises or prints a traceback.
"""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from course_lib import exercises
from course_lib.exercises import lesson06

from _exercise_harness import assert_correct, run




# ============================================================================ correct solutions
def kl_ok(mean, logvar):
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=[1, 2, 3])


def kl_torch_distributions(mean, logvar):  # the closed form that torch.distributions knows
    q = Normal(mean, (0.5 * logvar).exp())
    return kl_divergence(q, Normal(torch.zeros_like(mean), torch.ones_like(mean))).flatten(1).sum(1)


def kl_flatten(mean, logvar):  # another way to sum over C, H, W
    return (0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar)).flatten(start_dim=1).sum(dim=1)


def reparameterise_ok(mean, logvar, eps):
    return mean + torch.exp(0.5 * logvar) * eps


def reparameterise_sqrt(mean, logvar, eps):  # sigma = sqrt(sigma^2)
    return mean + logvar.exp().sqrt() * eps


CORRECT = [
    (exercises.check_kl_diagonal_gaussian, kl_ok),
    (exercises.check_kl_diagonal_gaussian, kl_torch_distributions),
    (exercises.check_kl_diagonal_gaussian, kl_flatten),
    (exercises.check_reparameterise, reparameterise_ok),
    (exercises.check_reparameterise, reparameterise_sqrt),
]


@pytest.mark.parametrize("check, fn", CORRECT, ids=lambda v: getattr(v, "__name__", ""))
def test_correct_solution_passes(check, fn, capsys):
    assert_correct(check, fn, capsys)


# ============================================================================ typical mistakes
DIMS = [1, 2, 3]


def _terms(m, lv):
    return m**2 + lv.exp() - 1 - lv


MISTAKES = [
    # ---- KL(q(z|x) || N(0, I))
    (exercises.check_kl_diagonal_gaussian, "forgot the 1/2", lambda m, lv: _terms(m, lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "took the mean over C, H, W",
     lambda m, lv: 0.5 * _terms(m, lv).mean(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "one number for the whole batch", lambda m, lv: 0.5 * _terms(m, lv).sum()),
    (exercises.check_kl_diagonal_gaussian, "one number for the whole batch",
     lambda m, lv: 0.5 * _terms(m, lv).sum(DIMS).mean()),
    (exercises.check_kl_diagonal_gaussian, "without keepdim=True",
     lambda m, lv: 0.5 * _terms(m, lv).sum(DIMS, keepdim=True)),
    (exercises.check_kl_diagonal_gaussian, "used σ where σ² belongs",
     lambda m, lv: 0.5 * (m**2 + (0.5 * lv).exp() - 1 - lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "you used log σ = logvar / 2",
     lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - 0.5 * lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "logvar is log σ² (the log-variance), not log σ",
     lambda m, lv: 0.5 * (m**2 + (2 * lv).exp() - 1 - 2 * lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "never negative", lambda m, lv: -0.5 * _terms(m, lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "sign of the log term",
     lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 + lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "forgot the - 1", lambda m, lv: 0.5 * (m**2 + lv.exp() - lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "forgot μ²", lambda m, lv: 0.5 * (lv.exp() - 1 - lv).sum(DIMS)),
    (exercises.check_kl_diagonal_gaussian, "the other way round",
     lambda m, lv: 0.5 * ((1 + m**2) / lv.exp() - 1 + lv).sum(DIMS)),
    # ---- z = mu + sigma * eps
    (exercises.check_reparameterise, "logvar is log σ², not σ", lambda m, lv, e: m + lv * e),
    (exercises.check_reparameterise, "exp(logvar) is the variance σ²", lambda m, lv, e: m + lv.exp() * e),
    (exercises.check_reparameterise, "check the sign", lambda m, lv, e: m - (0.5 * lv).exp() * e),
    (exercises.check_reparameterise, "you returned μ, the mode", lambda m, lv, e: m.clone()),
    (exercises.check_reparameterise, "forgot the mean", lambda m, lv, e: (0.5 * lv).exp() * e),
    (exercises.check_reparameterise, "μ and σ are swapped", lambda m, lv, e: (0.5 * lv).exp() + m * e),
    (exercises.check_reparameterise, "without scaling it by σ", lambda m, lv, e: m + e),
]


@pytest.mark.parametrize("check, hint, fn", MISTAKES, ids=[f"{c.__name__}:{h}" for c, h, _ in MISTAKES])
def test_typical_mistake_is_named(check, hint, fn, capsys):
    verdict, out = run(check, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet: "), out
    assert hint in out, out
    assert 2 <= len(out.strip().splitlines()) <= 4, out
    assert "expected" in out


def test_kl_wrong_value_shows_expected_and_received(capsys):
    _, out = run(exercises.check_kl_diagonal_gaussian, lambda m, lv: kl_ok(m, lv) + 1.0, capsys)
    assert "At index (0,): expected" in out and ", got " in out
    assert "Hint: σ² = exp(logvar)" in out  # no typical mistake matched: the formula


def test_kl_shape_mistake_names_shapes(capsys):
    _, out = run(exercises.check_kl_diagonal_gaussian, lambda m, lv: 0.5 * _terms(m, lv).sum(), capsys)
    assert "has shape () for mean and logvar of shape (2, 4, 8, 8), expected (2,)" in out


def test_log_of_logvar_gives_nan_hint(capsys):
    """Treating logvar as the variance takes the log of negative numbers: NaN, explained."""
    verdict, out = run(exercises.check_kl_diagonal_gaussian,
                       lambda m, lv: 0.5 * (m**2 + lv - 1 - lv.log()).sum(DIMS), capsys)
    assert verdict is False
    assert "NaN or inf" in out and "logvar may be negative" in out


def test_fresh_noise_is_rejected(capsys):
    """Drawing new noise instead of using eps gives another sample: rejected, told to use eps."""
    verdict, out = run(exercises.check_reparameterise,
                       lambda m, lv, e: m + (0.5 * lv).exp() * torch.randn_like(e), capsys)
    assert verdict is False
    assert "with the eps you are given" in out


def test_reparameterise_expected_is_the_library_sample():
    """The check's ε is the noise DiagonalGaussianDistribution.sample draws from the same seed."""
    from course_lib.nn.vae import DiagonalGaussianDistribution

    mean, logvar = lesson06._posterior_inputs((2, 4, 8, 8), 0)
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(posterior.sample(torch.Generator().manual_seed(5)), reparameterise_ok(mean, logvar, eps))


# ============================================================================ unfinished and broken functions
# not done yet, exceptions, None, not a function: tests/test_exercises.py (ALL_CHECKS)


def test_wrong_arguments_are_explained(capsys):
    verdict, out = run(exercises.check_reparameterise, lambda mean, logvar: mean, capsys)
    assert verdict is False and "TypeError" in out and "(mean, logvar, eps)" in out


def test_checks_do_not_change_inputs(capsys):
    """In-place operations on the inputs do not break the next case (inputs are cloned)."""
    def in_place(mean, logvar, eps):
        return mean.add_(logvar.mul_(0.5).exp_().mul_(eps))

    assert run(exercises.check_reparameterise, in_place, capsys)[0] is True
    assert run(exercises.check_reparameterise, reparameterise_ok, capsys)[0] is True


def test_output_is_deterministic(capsys):
    """nbval compares outputs: the same function gives the same text every time."""
    wrong = lambda m, lv: 0.5 * _terms(m, lv).mean(DIMS)  # noqa: E731
    assert run(exercises.check_kl_diagonal_gaussian, wrong, capsys)[1] == \
        run(exercises.check_kl_diagonal_gaussian, wrong, capsys)[1]


# ============================================================================ predict, then run: a stronger KL weight
RIGHT_KL = {"spread of mu": "smaller", "sigma": "larger", "sampled round-trip PSNR": "smaller"}
# the fine-tunes as measured when the lesson was written: {kl_weight: {quantity: value}}
MEASURED_KL = {1e-6: {"spread of mu": 1.14, "sigma": 0.31, "sampled round-trip PSNR": 28.5},
               1e-2: {"spread of mu": 0.85, "sigma": 0.91, "sampled round-trip PSNR": 21.4}}


@pytest.fixture
def measured_kl(monkeypatch):
    """The check reads these numbers instead of running its two fine-tunes."""
    monkeypatch.setattr(lesson06, "kl_weight_experiment", lambda: MEASURED_KL)


def test_kl_weight_prediction_right_answer(measured_kl, capsys):
    assert_correct(exercises.check_kl_weight_prediction, RIGHT_KL.get, capsys)


@pytest.mark.parametrize("quantity, hint", [
    ("spread of mu", "its μ² term pulls every picture's mean toward 0"),
    ("sigma", "smallest at σ = 1"),
    ("sampled round-trip PSNR", "z = μ + σ·ε"),
])
def test_kl_weight_wrong_direction_shows_the_measurement_and_the_hint(measured_kl, quantity, hint, capsys):
    flipped = {**RIGHT_KL, quantity: "larger" if RIGHT_KL[quantity] == "smaller" else "smaller"}
    verdict, out = run(exercises.check_kl_weight_prediction, flipped.get, capsys)
    assert verdict is False
    assert out.startswith(f"❌ Not yet: you predicted that the {quantity} comes out {flipped[quantity]}"), out
    assert f"{MEASURED_KL[1e-2][quantity]:.2f} against {MEASURED_KL[1e-6][quantity]:.2f}" in out
    assert hint in out


@pytest.mark.parametrize("answer", ["bigger", "Larger", True, 1.0])
def test_kl_weight_answers_outside_the_two_words_are_refused(measured_kl, answer, capsys):
    verdict, out = run(exercises.check_kl_weight_prediction, lambda quantity: answer, capsys)
    assert verdict is False and 'exactly one of the strings "larger" or "smaller"' in out


def test_kl_weight_every_quantity_is_asked(measured_kl, capsys):
    asked = []
    run(exercises.check_kl_weight_prediction, lambda q: asked.append(q) or RIGHT_KL[q], capsys)
    assert tuple(asked) == lesson06.KL_QUANTITIES


@pytest.mark.slow
def test_kl_weight_experiment_measures_what_the_lesson_teaches():
    """The two real fine-tunes (a few seconds): the strong weight draws the means together, pushes σ
    toward 1 and blurs a sampled round trip; the control stays near the shipped autoencoder."""
    recipe, strong = lesson06.kl_weight_experiment().values()
    assert strong["spread of mu"] < 0.9 * recipe["spread of mu"]
    assert recipe["sigma"] < 0.5 < strong["sigma"] < 1.2
    assert strong["sampled round-trip PSNR"] < recipe["sampled round-trip PSNR"] - 3
    assert 0.9 < recipe["spread of mu"] < 1.4 and recipe["sampled round-trip PSNR"] > 25  # shipped: 1.12, 31 dB
