"""Lesson 01's predict-then-run exercise: hand estimates pass, the usual wrong predictions get their hint.

(The lesson's other two checks, check_alpha_bar and check_q_sample, are tested in tests/test_exercises.py.)
"""

import math

import pytest

from _exercise_harness import assert_correct, run
from course_lib import exercises
from course_lib.exercises.lesson01 import schedule_facts


def hand_estimate(kind):
    """A learner's prediction by hand, as the hint suggests: 1 - β ≈ exp(-β), so ᾱ_t ≈ exp(-Σβ)."""
    if kind == "linear":   # Σ_{s<t} β_s = 1e-4 t + 1e-5 t² (a ramp from 1e-4 to 0.02 over 1000 steps) = ln 2
        t = (-1e-4 + math.sqrt(1e-8 + 4e-5 * math.log(2))) / 2e-5
        return {"snr_crosses_1_at": round(t), "signal_left": math.exp(-1000 * (1e-4 + 0.02) / 2 / 2)}
    if kind == "scaled_linear":   # β = (a + (b - a) u)², u = t/T: the sum is T ((a + (b - a) u)³ - a³) / (3 (b - a))
        a, b = 0.00085 ** 0.5, 0.012 ** 0.5
        u = ((a ** 3 + 3 * (b - a) * math.log(2) / 1000) ** (1 / 3) - a) / (b - a)
        return {"snr_crosses_1_at": round(1000 * u), "signal_left": math.exp(-1000 * (a * a + a * b + b * b) / 6)}
    # cosine: f(t)/f(0) = 1/2 where (t/T + s)/(1 + s) = 1/2, and f(T) = 0
    return {"snr_crosses_1_at": round(1000 * (0.5 * 1.008 - 0.008)), "signal_left": 0.0}


def test_the_measured_facts():
    """The numbers the lesson teaches: where the SNR crosses 1, and SD's 0.068 of signal at t = T-1."""
    assert [schedule_facts(k)["snr_crosses_1_at"] for k in ("linear", "scaled_linear", "cosine")] == [259, 354, 496]
    assert round(schedule_facts("scaled_linear")["signal_left"], 3) == 0.068
    assert round(schedule_facts("linear")["signal_left"], 4) == 0.0064
    assert schedule_facts("cosine")["signal_left"] < 1e-4


def test_hand_estimates_pass(capsys):
    assert_correct(exercises.check_schedule_prediction, hand_estimate, capsys)
    _, out = run(exercises.check_schedule_prediction, hand_estimate, capsys)
    assert "259 (linear), 354 (scaled_linear), 496 (cosine)" in out and "0.068" in out


def _with(kind_changed, **changes):
    def prediction(kind):
        guess = hand_estimate(kind)
        if kind == kind_changed:
            guess.update({key: value(kind) if callable(value) else value for key, value in changes.items()})
        return guess
    return prediction


@pytest.mark.parametrize("prediction, expected", [
    (_with("linear", snr_crosses_1_at=500), "does not fall evenly in t"),
    (_with("linear", snr_crosses_1_at=lambda k: schedule_facts(k)["alpha_bar_quarter_at"]), "sqrt(ᾱ_t) = 1/2"),
    (_with("cosine", snr_crosses_1_at=300), "the angle is π/4"),
    (_with("scaled_linear", snr_crosses_1_at=600), "ln 2 ≈ 0.69"),
    (_with("scaled_linear", signal_left=0.0), "does not reach zero signal"),
    (_with("linear", signal_left=0.0), "little, but not nothing"),
    (_with("scaled_linear", signal_left=lambda k: schedule_facts(k)["alpha_bar_end"]), "that is ᾱ_(T-1)"),
    (_with("cosine", signal_left=0.05), "cos²(π/2) = 0"),
    (_with("linear", signal_left=0.05), "exp(-Σβ / 2)"),
])
def test_wrong_predictions_get_their_hint(prediction, expected, capsys):
    verdict, out = run(exercises.check_schedule_prediction, prediction, capsys)
    assert verdict is False and out.startswith("❌ Not yet: for ") and expected in out, out
    assert "the schedule measures" in out


def test_a_prediction_close_enough_passes_and_a_far_one_does_not(capsys):
    assert run(exercises.check_schedule_prediction, _with("linear", snr_crosses_1_at=259 + 25), capsys)[0] is True
    assert run(exercises.check_schedule_prediction, _with("linear", snr_crosses_1_at=259 + 26), capsys)[0] is False
    assert run(exercises.check_schedule_prediction, _with("scaled_linear", signal_left=0.068 * 1.19), capsys)[0] is True
    assert run(exercises.check_schedule_prediction, _with("scaled_linear", signal_left=0.068 * 1.25), capsys)[0] is False


@pytest.mark.parametrize("returned", [(259, 0.006), {"snr_crosses_1_at": 259}, {"snr_crosses_1_at": True, "signal_left": 0.1},
                                      {"snr_crosses_1_at": 259, "signal_left": "0.006"},
                                      {"snr_crosses_1_at": 259, "signal_left": float("nan")}])
def test_a_prediction_of_the_wrong_form_is_explained(returned, capsys):
    verdict, out = run(exercises.check_schedule_prediction, lambda kind: returned, capsys)
    assert verdict is False and "exactly the keys" in out, out
