"""Tests of lesson 05's prediction exercise: classifier guidance and CFG on one λ axis.

The formula and batch-of-two checks of lesson 05 are tested in test_exercises.py. Here: the
comparison rule (Wilson intervals), the verdicts on measured counts given to the check, and (slow)
the measurement itself on the digits' guidance sweeps.
"""

import pytest

from course_lib import exercises
from course_lib.exercises import lesson05
from course_lib.exercises.lesson05 import COMPARED_SCALES, compare_accuracies
from course_lib.sample_stats import proportion_interval

from _exercise_harness import assert_correct, run

# what the sweeps of lessons 04 and 05 measured when the lesson was written: (read as asked, samples)
MEASURED = {"classifier": {0.0: (5, 50), 1.0: (27, 50), 10.0: (49, 50)},
            "cfg": {0.0: (5, 50), 1.0: (46, 50), 10.0: (50, 50)}}
RIGHT = {0.0: "same", 1.0: "cfg", 10.0: "same"}


@pytest.fixture
def measured(monkeypatch):
    """The check reads these counts instead of the (slow, cached) sweeps."""
    counts = {method: dict(values) for method, values in MEASURED.items()}
    monkeypatch.setattr(lesson05, "_accuracy_counts", lambda: counts)
    return counts


def test_compare_accuracies_follows_the_intervals():
    assert compare_accuracies((27, 50), (46, 50)) == "cfg"
    assert compare_accuracies((46, 50), (27, 50)) == "classifier"
    assert compare_accuracies((5, 50), (5, 50)) == "same"
    assert compare_accuracies((49, 50), (50, 50)) == "same"
    # the rule is the Wilson intervals': just overlapping is "same", just apart is not
    low, _ = proportion_interval(40, 50)
    k = max(k for k in range(51) if proportion_interval(k, 50)[1] < low)
    assert compare_accuracies((k, 50), (40, 50)) == "cfg"
    assert compare_accuracies((k + 1, 50), (40, 50)) == "same"


def test_right_prediction_passes(measured, capsys):
    assert_correct(exercises.check_guidance_comparison, lambda scale: RIGHT[scale], capsys)


@pytest.mark.parametrize("scale, wrong, hint", [
    (0.0, "cfg", "neither method looks at the label"),
    (1.0, "same", "cfg(u, c, 1) = eps_cond"),
    (1.0, "classifier", "which its training never asked to be right"),
    (10.0, "cfg", "90 % intervals"),
])
def test_each_wrong_prediction_gets_the_measurement_and_its_hint(measured, scale, wrong, hint, capsys):
    verdict, out = run(exercises.check_guidance_comparison,
                       lambda s: wrong if s == scale else RIGHT[s], capsys)
    assert verdict is False
    assert out.startswith(f"❌ Not yet: at λ = {scale:g} you predicted {wrong!r}"), out
    (k_c, n), (k_f, _) = MEASURED["classifier"][scale], MEASURED["cfg"][scale]
    assert f"{k_c}/{n} of classifier guidance's samples and {k_f}/{n} of CFG's" in out
    assert hint in out


def test_w_for_guidance_scale_is_caught(measured, capsys):
    """Reading λ as Ho & Salimans' w (w = 0 is the conditional model) predicts CFG ahead at λ = 0."""
    verdict, out = run(exercises.check_guidance_comparison, lambda s: "cfg" if s < 2 else "same", capsys)
    assert verdict is False and "at λ = 0 you predicted 'cfg'" in out


@pytest.mark.parametrize("answer", ["CFG", "classifier guidance", True, 1.0, ("same",)])
def test_answers_outside_the_three_words_are_refused(measured, answer, capsys):
    verdict, out = run(exercises.check_guidance_comparison, lambda s: answer, capsys)
    assert verdict is False and "exactly one of the strings" in out


def test_the_learner_is_asked_about_every_compared_scale(measured, capsys):
    asked = []
    run(exercises.check_guidance_comparison, lambda s: asked.append(s) or RIGHT[s], capsys)
    assert tuple(asked) == COMPARED_SCALES


def test_a_missing_answer_is_refused_before_measuring(monkeypatch, capsys):
    def no_measurement():
        raise AssertionError("the check measured although the learner's function failed")

    monkeypatch.setattr(lesson05, "_accuracy_counts", no_measurement)
    verdict, out = run(exercises.check_guidance_comparison, {0.0: "same"}.get, capsys)
    assert verdict is False and "returned None for scale = 1.0" in out


@pytest.mark.slow
def test_the_sweeps_measure_what_the_lesson_teaches():
    """On the shipped digits models (the sweeps are cached after their first run): same, cfg, same."""
    counts = lesson05._accuracy_counts()
    verdicts = {s: compare_accuracies(counts["classifier"][s], counts["cfg"][s]) for s in COMPARED_SCALES}
    assert verdicts == RIGHT
