"""The exercises of lesson 03: right answers pass, the usual mistakes get their hint, predictions meet measurements."""

import pytest
import torch

from _exercise_harness import assert_correct, run
from course_lib import exercises
from course_lib.exercises.lesson03 import _guidance_experiment


def _noised(mean, covariance, alpha_bar):
    return alpha_bar.sqrt() * mean, alpha_bar * covariance + (1 - alpha_bar) * torch.eye(len(mean), dtype=covariance.dtype)


def test_noised_component_right_answer(capsys):
    assert_correct(exercises.check_noised_component, _noised, capsys)


def test_noised_component_mistakes_get_their_hint(capsys):
    cases = [
        (lambda m, c, a: (a * m, _noised(m, c, a)[1]), "scaled by sqrt(ᾱ_t), not ᾱ_t"),
        (lambda m, c, a: (a.sqrt() * m, a * c), "the noise adds (1 - ᾱ_t)·I"),
        (lambda m, c, a: (a.sqrt() * m, a * c + (1 - a)), "not a matrix of ones"),
        (lambda m, c, a: (a.sqrt() * m, a.sqrt() * c + (1 - a) * torch.eye(len(m), dtype=c.dtype)), "the square"),
        (lambda m, c, a: (a.sqrt() * m, (1 - a) * c + a * torch.eye(len(m), dtype=c.dtype)), "swapped"),
    ]
    for fn, hint in cases:
        verdict, out = run(exercises.check_noised_component, fn, capsys)
        assert verdict is False and out.startswith("❌ Not yet:") and hint in out, out
    verdict, out = run(exercises.check_noised_component, lambda m, c, a: a.sqrt() * m, capsys)
    assert verdict is False and "expected the pair (mean_t, covariance_t)" in out


def test_tweedie_right_answer_and_mistakes(capsys):
    assert_correct(exercises.check_tweedie, lambda x, s, a: (x + (1 - a) * s) / a.sqrt(), capsys)
    for fn, hint in [
        (lambda x, s, a: (x - (1 - a) * s) / a.sqrt(), "check the sign"),
        (lambda x, s, a: (x + (1 - a).sqrt() * s) / a.sqrt(), "not by its square root"),
        (lambda x, s, a: x + (1 - a) * s, "divide by sqrt(ᾱ_t)"),
        (lambda x, s, a: (x + s) / a.sqrt(), "needs the factor 1 - ᾱ_t"),
    ]:
        verdict, out = run(exercises.check_tweedie, fn, capsys)
        assert verdict is False and hint in out, out


@pytest.mark.slow
def test_the_guidance_experiment_measures_what_the_lesson_teaches():
    measured = _guidance_experiment()
    assert all(m["classifier_guidance_equals_cfg"] for m in measured.values())
    assert [measured[s]["samples_follow_p_lambda"] for s in (0.0, 1.0, 3.0, 10.0)] == [True, True, False, False]


@pytest.mark.slow
def test_guidance_prediction_verdicts(capsys):
    right = lambda s: {"classifier_guidance_equals_cfg": True, "samples_follow_p_lambda": s in (0.0, 1.0)}  # noqa: E731
    assert_correct(exercises.check_guidance_prediction, right, capsys)
    always = lambda s: {"classifier_guidance_equals_cfg": True, "samples_follow_p_lambda": True}  # noqa: E731
    verdict, out = run(exercises.check_guidance_prediction, always, capsys)
    assert verdict is False and "at λ = 3 you predicted samples_follow_p_lambda = True" in out
    different = lambda s: {"classifier_guidance_equals_cfg": False, "samples_follow_p_lambda": s < 2}  # noqa: E731
    verdict, out = run(exercises.check_guidance_prediction, different, capsys)
    assert verdict is False and "classifier_guidance_equals_cfg = False" in out and "eq. 5" in out
    verdict, out = run(exercises.check_guidance_prediction, lambda s: {"cfg": True}, capsys)
    assert verdict is False and "exactly the keys" in out
    verdict, out = run(exercises.check_guidance_prediction, lambda s: (True, False), capsys)
    assert verdict is False and "returned (True, False)" in out
