"""Tests of lesson 07's exercise checks: cross-attention, CLIP's contrastive loss, and the prediction
about edits of a prompt's token states.

As in test_exercises.py: a right answer (written as a learner would, in several forms) passes with
"✅ Correct", every typical mistake fails with "❌ Not yet" and the hint that names it, and a check
never raises or prints a traceback.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import exercises
from course_lib.exercises import lesson07

from _exercise_harness import assert_correct, run




# ============================================================================ correct solutions
def attention_ok(q, k, v):
    d = q.shape[-1]
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)  # (B, h, N, L)
    return weights @ v


def attention_einsum(q, k, v):  # the same with einsum and a scale folded into q
    scores = torch.einsum("bhnd,bhld->bhnl", q * q.shape[-1] ** -0.5, k)
    return torch.einsum("bhnl,bhld->bhnd", scores.softmax(dim=3), v)


def attention_sdpa(q, k, v):  # torch's own: allowed, it is the reference
    return F.scaled_dot_product_attention(q, k, v)


def contrastive_ok(image_embeds, text_embeds, logit_scale):
    logits = logit_scale.exp() * image_embeds @ text_embeds.T  # (B images, B captions)
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def contrastive_log_softmax(image_embeds, text_embeds, logit_scale):  # the diagonal of two log-softmaxes
    logits = torch.exp(logit_scale) * (image_embeds @ text_embeds.t())
    rows = -logits.log_softmax(dim=1).diag().mean()
    columns = -logits.log_softmax(dim=0).diag().mean()
    return 0.5 * (rows + columns)


def contrastive_renormalised(image_embeds, text_embeds, logit_scale):  # normalising unit vectors again is harmless
    v, t = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    return contrastive_ok(v, t, logit_scale)


CORRECT = [
    (exercises.check_cross_attention, attention_ok),
    (exercises.check_cross_attention, attention_einsum),
    (exercises.check_cross_attention, attention_sdpa),
    (exercises.check_clip_contrastive_loss, contrastive_ok),
    (exercises.check_clip_contrastive_loss, contrastive_log_softmax),
    (exercises.check_clip_contrastive_loss, contrastive_renormalised),
]


@pytest.mark.parametrize("check, fn", CORRECT, ids=lambda v: getattr(v, "__name__", ""))
def test_correct_solution_passes(check, fn, capsys):
    assert_correct(check, fn, capsys)


# ============================================================================ typical mistakes
def _scores(q, k):
    return q @ k.transpose(-2, -1)


ATTENTION_MISTAKES = [
    ("no_scaling", lambda q, k, v: _scores(q, k).softmax(-1) @ v, "forgot the scaling"),
    ("divided_by_d", lambda q, k, v: (_scores(q, k) / q.shape[-1]).softmax(-1) @ v, "you divided by d"),
    ("times_sqrt_d", lambda q, k, v: (_scores(q, k) * q.shape[-1] ** 0.5).softmax(-1) @ v, "you multiplied by √d"),
    ("sqrt_L", lambda q, k, v: (_scores(q, k) / k.shape[-2] ** 0.5).softmax(-1) @ v, "divided by √L"),
    ("softmax_over_queries", lambda q, k, v: (_scores(q, k) / q.shape[-1] ** 0.5).softmax(-2) @ v, "wrong axis"),
    ("k_not_transposed", lambda q, k, v: (q @ k / q.shape[-1] ** 0.5).softmax(-1) @ v, "K is not transposed"),
    ("weights_only", lambda q, k, v: (_scores(q, k) / q.shape[-1] ** 0.5).softmax(-1), "multiply them by V"),
    ("k_v_swapped", lambda q, k, v: (_scores(q, v) / q.shape[-1] ** 0.5).softmax(-1) @ k, "K and V are swapped"),
    ("softmax_after_v", lambda q, k, v: (_scores(q, k) / q.shape[-1] ** 0.5 @ v).softmax(-1), "after the softmax"),
]


@pytest.mark.parametrize("name, fn, hint", ATTENTION_MISTAKES, ids=[m[0] for m in ATTENTION_MISTAKES])
def test_cross_attention_mistakes_are_named(name, fn, hint, capsys):
    verdict, out = run(exercises.check_cross_attention, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


CONTRASTIVE_MISTAKES = [
    ("image_to_text_only",
     lambda v, t, s: F.cross_entropy(s.exp() * v @ t.T, torch.arange(len(v))), "each image choosing its caption"),
    ("text_to_image_only",
     lambda v, t, s: F.cross_entropy(s.exp() * t @ v.T, torch.arange(len(v))), "each caption choosing its image"),
    ("sum_of_directions",
     lambda v, t, s: sum(F.cross_entropy(m, torch.arange(len(v))) for m in (s.exp() * v @ t.T, s.exp() * t @ v.T)),
     "CLIP averages them"),
    ("no_temperature",
     lambda v, t, s: (F.cross_entropy(v @ t.T, torch.arange(len(v)))
                      + F.cross_entropy(t @ v.T, torch.arange(len(v)))) / 2,
     "the temperature is missing"),
    ("logit_scale_without_exp",
     lambda v, t, s: (F.cross_entropy(s * v @ t.T, torch.arange(len(v)))
                      + F.cross_entropy(s * t @ v.T, torch.arange(len(v)))) / 2,
     "not by logit_scale itself"),
    ("divided_by_exp",
     lambda v, t, s: (F.cross_entropy(v @ t.T / s.exp(), torch.arange(len(v)))
                      + F.cross_entropy(t @ v.T / s.exp(), torch.arange(len(v)))) / 2,
     "you divided by exp(logit_scale)"),
    ("summed_over_batch",
     lambda v, t, s: (F.cross_entropy(s.exp() * v @ t.T, torch.arange(len(v)), reduction="sum")
                      + F.cross_entropy(s.exp() * t @ v.T, torch.arange(len(v)), reduction="sum")) / 2,
     "a mean over the B pairs"),
]


@pytest.mark.parametrize("name, fn, hint", CONTRASTIVE_MISTAKES, ids=[m[0] for m in CONTRASTIVE_MISTAKES])
def test_contrastive_mistakes_are_named(name, fn, hint, capsys):
    verdict, out = run(exercises.check_clip_contrastive_loss, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


# ============================================================================ shapes, types, errors, not done
def test_attention_with_a_wrong_transpose_gets_the_transpose_hint(capsys):
    # k.transpose(1, 2) swaps heads and tokens: the product fails on the first case's shapes
    verdict, out = run(exercises.check_cross_attention,
                       lambda q, k, v: (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(-1) @ v, capsys)
    assert verdict is False
    assert "transpose only the last two axes of K" in out or "K is not transposed" in out, out
    assert "Traceback" not in out


def test_attention_that_merges_the_heads_gets_the_shape_hint(capsys):
    def merged(q, k, v):
        out = attention_ok(q, k, v)  # (B, h, N, d) -> (B, N, h*d)
        return out.transpose(1, 2).flatten(2)

    verdict, out = run(exercises.check_cross_attention, merged, capsys)
    assert verdict is False
    assert "has shape (2, 16, 32)" in out and "expected (2, 4, 16, 8)" in out and "(B, h, N, d)" in out


def test_contrastive_with_math_exp_gets_a_tensor_hint(capsys):
    def with_math(v, t, s):
        logits = math.exp(s) * v @ t.T
        return F.cross_entropy(logits, torch.arange(len(v)))

    # math.exp accepts a 0-dim tensor, so this runs; the one-direction hint is what it needs
    verdict, out = run(exercises.check_clip_contrastive_loss, with_math, capsys)
    assert verdict is False and "only one direction" in out


def test_contrastive_returning_a_float_or_a_batch(capsys):
    verdict, out = run(exercises.check_clip_contrastive_loss, lambda v, t, s: contrastive_ok(v, t, s).item(), capsys)
    assert verdict is False and "returned a float, expected a torch.Tensor of shape ()" in out

    def per_pair(v, t, s):
        logits = s.exp() * v @ t.T
        target = torch.arange(len(v))
        return (F.cross_entropy(logits, target, reduction="none")
                + F.cross_entropy(logits.T, target, reduction="none")) / 2

    verdict, out = run(exercises.check_clip_contrastive_loss, per_pair, capsys)
    assert verdict is False and "has shape (4,)" in out and "one number" in out


def test_exports():
    assert "check_cross_attention" in exercises.__all__
    assert "check_clip_contrastive_loss" in exercises.__all__
    assert "check_token_state_prediction" in exercises.__all__


# ============================================================================ predict, then run: token states
RIGHT_EDITS = {"swap the states of red and circle": "the same picture",
               "swap the words red and circle": "a different picture, not blue",
               "blue's state in red's place": "a different picture, not blue",
               "blue's states from the colour on": "a blue picture"}


def _measured(max_difference, reads):
    return {"max_difference": max_difference, "reads": reads, "blue": sum(r.startswith("blue ") for r in reads)}


# what the mini SD drew when the lesson was written (3 pictures, 20 DDIM steps, guidance 7.5, seed 0)
MEASURED_EDITS = {
    "unedited": _measured(0.0, ["red circle"] * 3),
    "swap the states of red and circle": _measured(2e-5, ["red circle"] * 3),
    "swap the words red and circle": _measured(0.96, ["red circle"] * 3),
    "blue's state in red's place": _measured(1.9, ["red circle", "red circle", "yellow circle"]),
    "blue's states from the colour on": _measured(2.0, ["blue circle"] * 3),
}


@pytest.fixture
def measured_edits(monkeypatch):
    """The check reads these instead of sampling the mini SD."""
    monkeypatch.setattr(lesson07, "token_state_experiment", lambda: MEASURED_EDITS)


def test_token_state_outcome_rule():
    assert lesson07.token_state_outcome(_measured(9e-4, ["blue circle"] * 3)) == "the same picture"
    assert lesson07.token_state_outcome(_measured(2e-3, ["red circle"] * 3)) == "a different picture, not blue"
    assert lesson07.token_state_outcome(_measured(1.0, ["blue circle", "blue square", "red circle"])) == "a blue picture"
    assert lesson07.token_state_outcome(_measured(1.0, ["blue circle", "cyan circle", "red circle"])) == \
        "a different picture, not blue"  # a majority is needed
    assert lesson07.token_state_outcome(_measured(1.0, ["blue circle", "cyan circle"])) == "a different picture, not blue"


def test_token_state_prediction_right_answer(measured_edits, capsys):
    assert_correct(exercises.check_token_state_prediction, RIGHT_EDITS.get, capsys)


@pytest.mark.parametrize("edit, wrong, hint", [
    ("swap the states of red and circle", "a different picture, not blue", "a weighted average over a set"),
    ("swap the words red and circle", "the same picture", "every state from the swapped words on"),
    ("blue's state in red's place", "a blue picture", "attends causally"),
    ("blue's states from the colour on", "a different picture, not blue", "are the same in both prompts"),
])
def test_token_state_wrong_prediction_shows_what_was_drawn(measured_edits, edit, wrong, hint, capsys):
    verdict, out = run(exercises.check_token_state_prediction, {**RIGHT_EDITS, edit: wrong}.get, capsys)
    assert verdict is False
    assert out.startswith(f"❌ Not yet: for {edit!r} you predicted {wrong!r}; the mini SD drew {RIGHT_EDITS[edit]!r}"), out
    assert ", ".join(MEASURED_EDITS[edit]["reads"]) in out
    assert hint in out


@pytest.mark.parametrize("answer", ["same", "a blue circle", True, None])
def test_token_state_replies_outside_the_three_are_refused(measured_edits, answer, capsys):
    verdict, out = run(exercises.check_token_state_prediction, lambda edit: answer, capsys)
    assert verdict is False
    assert ("returned None" if answer is None else "exactly one of the strings") in out


@pytest.mark.slow
def test_token_state_experiment_draws_what_the_lesson_teaches():
    """The mini SD itself (a few seconds): the states' order does not matter, the words' order changes the
    picture but not its colour, one transplanted state does not make it blue, all the later ones do."""
    measured = lesson07.token_state_experiment()
    assert {edit: lesson07.token_state_outcome(measured[edit]) for edit in lesson07.TOKEN_EDITS} == RIGHT_EDITS
    assert measured["swap the states of red and circle"]["max_difference"] < 1e-3 < \
        measured["swap the words red and circle"]["max_difference"]
    assert all(read == "red circle" for read in measured["swap the words red and circle"]["reads"])
