"""Tests of lesson 11's exercise checks: the LoRA-adapted weight W + (α/r)·B·A, and DDIM's step run backwards.

A right answer (written as a learner would, in several forms) passes with "✅ Correct", every typical
mistake fails with "❌ Not yet" and the hint that names it. The generic behaviours (not done yet, an
exception, None) are tested for every check in tests/test_exercises.py.
"""

import pytest
import torch

from course_lib import exercises
from course_lib.inversion import ddim_inverse_step
from course_lib.samplers import DDIMSampler
from course_lib.schedules import make_schedule

from _exercise_harness import assert_correct, run


# ============================================================================ correct solutions
def lora_ok(weight, lora_A, lora_B, alpha):
    rank = lora_A.shape[0]
    return weight + (alpha / rank) * (lora_B @ lora_A)


def lora_as_a_layer(weight, lora_A, lora_B, alpha):  # what the adapted layer computes on the identity
    identity = torch.eye(weight.shape[1])
    return (identity @ weight.T + alpha / lora_A.shape[0] * (identity @ lora_A.T) @ lora_B.T).T


def lora_with_einsum(weight, lora_A, lora_B, alpha):
    return weight + alpha / len(lora_A) * torch.einsum("or,ri->oi", lora_B, lora_A)


def inverse_ok(z_prev, eps, alpha_bar_t, alpha_bar_prev):
    pred_x0 = (z_prev - (1 - alpha_bar_prev).sqrt() * eps) / alpha_bar_prev.sqrt()
    return alpha_bar_t.sqrt() * pred_x0 + (1 - alpha_bar_t).sqrt() * eps


def inverse_rearranged(z_prev, eps, alpha_bar_t, alpha_bar_prev):  # z_t = k z_prev + (...) ε in one line
    ratio = (alpha_bar_t / alpha_bar_prev).sqrt()
    return ratio * z_prev + ((1 - alpha_bar_t).sqrt() - ratio * (1 - alpha_bar_prev).sqrt()) * eps


@pytest.mark.parametrize("check, fn", [
    (exercises.check_lora_weight, lora_ok),
    (exercises.check_lora_weight, lora_as_a_layer),
    (exercises.check_lora_weight, lora_with_einsum),
    (exercises.check_ddim_inverse_step, inverse_ok),
    (exercises.check_ddim_inverse_step, inverse_rearranged),
], ids=lambda v: getattr(v, "__name__", ""))
def test_correct_solution_passes(check, fn, capsys):
    assert_correct(check, fn, capsys)


def test_the_inverse_step_answer_undoes_ddims_step():
    """The check's reference is the inverse of DDIM's own step: what the lesson derives."""
    sampler = DDIMSampler(make_schedule("scaled_linear", 1000, 0.00085, 0.012), set_alpha_to_one=False, steps_offset=1)
    sampler.set_timesteps(50)
    z_t, eps = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = sampler.timesteps[10]
    torch.testing.assert_close(ddim_inverse_step(eps, t, sampler.step(eps, t, z_t), sampler), z_t)


# ============================================================================ typical mistakes
def _pred_x0(z, e, p):
    return (z - (1 - p).sqrt() * e) / p.sqrt()


@pytest.mark.parametrize("check, expected, fn", [
    (exercises.check_lora_weight, "scaled by α / r, not by α", lambda w, a, b, alpha: w + alpha * (b @ a)),
    (exercises.check_lora_weight, "forgot the scale α / r", lambda w, a, b, alpha: w + b @ a),
    (exercises.check_lora_weight, "not r / α", lambda w, a, b, alpha: w + a.shape[0] / alpha * (b @ a)),
    (exercises.check_lora_weight, "not α·r", lambda w, a, b, alpha: w + alpha * a.shape[0] * (b @ a)),
    (exercises.check_lora_weight, "the update (α / r)·B·A alone", lambda w, a, b, alpha: alpha / a.shape[0] * (b @ a)),
    (exercises.check_lora_weight, "check the sign", lambda w, a, b, alpha: w - alpha / a.shape[0] * (b @ a)),
    (exercises.check_lora_weight, "A @ B does not fit", lambda w, a, b, alpha: w + alpha / a.shape[0] * (a @ b)),
    (exercises.check_ddim_inverse_step, "DDIM's own step",
     lambda z, e, a, p: p.sqrt() * _pred_x0(z, e, a) + (1 - p).sqrt() * e),
    (exercises.check_ddim_inverse_step, "remove the noise of that level",
     lambda z, e, a, p: a.sqrt() * _pred_x0(z, e, a) + (1 - a).sqrt() * e),
    (exercises.check_ddim_inverse_step, "not sqrt(1 - ᾱ_prev)·ε",
     lambda z, e, a, p: a.sqrt() * _pred_x0(z, e, p) + (1 - p).sqrt() * e),
    (exercises.check_ddim_inverse_step, "forgot the square roots",
     lambda z, e, a, p: a * (z - (1 - p) * e) / p + (1 - a) * e),
    (exercises.check_ddim_inverse_step, "you returned x̂0", lambda z, e, a, p: _pred_x0(z, e, p)),
    (exercises.check_ddim_inverse_step, "the forward process", lambda z, e, a, p: a.sqrt() * z + (1 - a).sqrt() * e),
])
def test_typical_mistake_gets_its_hint(check, expected, fn, capsys):
    verdict, out = run(check, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ ") and expected in out, out  # "❌ Not yet", or "❌ Your function raised" (A @ B)
    assert "Traceback" not in out


def test_an_unnamed_mistake_gets_the_formula(capsys):
    verdict, out = run(exercises.check_ddim_inverse_step, lambda z, e, a, p: 1.01 * inverse_ok(z, e, a, p), capsys)
    assert verdict is False and "DDIM's step with t and t' swapped" in out
    verdict, out = run(exercises.check_lora_weight, lambda w, a, b, alpha: lora_ok(w, a, b, alpha) + 0.01, capsys)
    assert verdict is False and "lora_B @ lora_A" in out
