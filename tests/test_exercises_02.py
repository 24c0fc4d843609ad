"""Lesson 02's predict-then-run exercise: the measurement, right predictions, wrong ones and their hints.

(The lesson's other two checks, check_pred_x0 and check_ddim_step, are tested in tests/test_exercises.py.)
"""

import pytest

from _exercise_harness import assert_correct, run
from course_lib import exercises
from course_lib.exercises import lesson02

RIGHT = {"ddim": {"same_with_another_generator": True, "same_with_fewer_steps": True},
         "ddpm": {"same_with_another_generator": False, "same_with_fewer_steps": False}}


def right_prediction(sampler):
    # η = 0: no fresh noise, one deterministic path from x_T; DDPM: fresh noise at every step
    return {"same_with_another_generator": sampler == "ddim", "same_with_fewer_steps": sampler == "ddim"}


@pytest.mark.slow
def test_the_measurement_is_what_the_lesson_teaches():
    facts = lesson02.sampler_facts()
    assert {name: {key: facts[name][key] for key in lesson02.SAMPLER_PREDICTION_KEYS} for name in facts} == RIGHT
    assert facts["ddim"]["another_generator_ratio"] == 0.0          # η = 0 never uses the generator
    assert facts["ddim"]["fewer_steps_ratio"] < 0.3                  # close to the 20-step pictures
    assert facts["ddpm"]["another_generator_ratio"] > 0.8 and facts["ddpm"]["fewer_steps_ratio"] > 0.8


@pytest.mark.slow
def test_the_right_prediction_passes(capsys):
    assert_correct(exercises.check_sampler_prediction, right_prediction, capsys)


@pytest.fixture
def measured(monkeypatch):
    """The grading without the sampling: the measurement replaced by fixed values of the same form."""
    facts = {"ddim": {**RIGHT["ddim"], "another_generator_ratio": 0.0, "fewer_steps_ratio": 0.14},
             "ddpm": {**RIGHT["ddpm"], "another_generator_ratio": 1.05, "fewer_steps_ratio": 0.98}}
    monkeypatch.setattr(lesson02, "sampler_facts", lambda: facts)


@pytest.mark.parametrize("sampler, key, hint", [
    ("ddim", "same_with_another_generator", "never uses the generator"),
    ("ddim", "same_with_fewer_steps", "the same path more coarsely"),
    ("ddpm", "same_with_another_generator", "fresh noise σ_t·z at every step"),
    ("ddpm", "same_with_fewer_steps", "5 noises instead of 20"),
])
def test_each_wrong_prediction_gets_its_hint(sampler, key, hint, measured, capsys):
    def prediction(name):
        guess = dict(RIGHT[name])
        if name == sampler:
            guess[key] = not guess[key]
        return guess

    verdict, out = run(exercises.check_sampler_prediction, prediction, capsys)
    assert verdict is False and out.startswith(f"❌ Not yet: for {sampler} you predicted {key}"), out
    assert hint in out and "of the distance between unrelated samples" in out, out


def test_the_verdict_names_the_measured_distances(measured, capsys):
    verdict, out = run(exercises.check_sampler_prediction, right_prediction, capsys)
    assert verdict is True and "(distance 0.00)" in out and "(0.14)" in out and "(1.1 and 1.0)" in out, out


@pytest.mark.parametrize("returned", [(True, True), {"same_with_another_generator": True},
                                      {"same_with_another_generator": 1, "same_with_fewer_steps": 0}])
def test_a_prediction_of_the_wrong_form_is_explained(returned, measured, capsys):
    verdict, out = run(exercises.check_sampler_prediction, lambda sampler: returned, capsys)
    assert verdict is False and "exactly the keys" in out, out
