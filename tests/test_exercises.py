"""Tests of course_lib.exercises: each check accepts a right answer and names each typical mistake.

Every check is run on learner-style functions: the correct solution (written out here, as a
learner would) must pass with "✅ Correct", and every typical mistake must fail with
"❌ Not yet" and the hint that names it. A check never raises and never prints a traceback.
"""

import pytest
import torch

from course_lib import exercises
from course_lib.exercises.grading import NOT_DONE

from _exercise_harness import assert_correct, run


def per_item(values):
    return values.view(-1, 1, 1, 1)


# ============================================================================ correct solutions
def q_sample_ok(x0, t, noise, alpha_bar):
    a = alpha_bar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def alpha_bar_ok(betas):
    return torch.cumprod(1 - betas, dim=0)


def alpha_bar_loop(betas):  # a learner's loop in Python, also right
    out, running = [], 1.0
    for beta in betas.tolist():
        running *= 1 - beta
        out.append(running)
    return torch.tensor(out)


def pred_x0_ok(x_t, eps, alpha_bar_t):
    return (x_t - (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()


def ddim_ok(x_t, eps, alpha_bar_t, alpha_bar_prev):
    pred_x0 = (x_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t ** 0.5
    return alpha_bar_prev ** 0.5 * pred_x0 + (1 - alpha_bar_prev) ** 0.5 * eps


def cg_eps_ok(eps, grad, alpha_bar_t, scale):
    return eps - torch.sqrt(1 - alpha_bar_t) * scale * grad


def bayes_ok(score, grad, scale):
    return score + scale * grad


def cfg_ok(eps_uncond, eps_cond, guidance_scale):
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def cfg_ok_other_form(eps_uncond, eps_cond, guidance_scale):  # (1 - s) u + s c: the same thing
    return (1 - guidance_scale) * eps_uncond + guidance_scale * eps_cond


def batch_of_two_ok(model, x, t, labels, null_label):
    x_in = torch.cat([x, x])
    t_in = torch.cat([t, t])
    labels_in = torch.cat([torch.full_like(labels, null_label), labels])
    eps_uncond, eps_cond = model(x_in, t_in, class_labels=labels_in).chunk(2)
    return eps_uncond, eps_cond


CORRECT = [
    (exercises.check_q_sample, q_sample_ok),
    (exercises.check_alpha_bar, alpha_bar_ok),
    (exercises.check_alpha_bar, alpha_bar_loop),
    (exercises.check_pred_x0, pred_x0_ok),
    (exercises.check_ddim_step, ddim_ok),
    (exercises.check_classifier_guided_eps, cg_eps_ok),
    (exercises.check_bayes_score, bayes_ok),
    (exercises.check_cfg, cfg_ok),
    (exercises.check_cfg, cfg_ok_other_form),
    (exercises.check_batch_of_two, batch_of_two_ok),
]


@pytest.mark.parametrize("check, fn", CORRECT, ids=lambda v: getattr(v, "__name__", ""))
def test_correct_solution_passes(check, fn, capsys):
    assert_correct(check, fn, capsys)


# ============================================================================ typical mistakes
def _a(alpha_bar, t):
    return alpha_bar[t].view(-1, 1, 1, 1)


MISTAKES = [
    # ---- lesson 01: q_sample
    (exercises.check_q_sample, "t - 1",
     lambda x0, t, n, ab: _a(ab, t - 1).sqrt() * x0 + (1 - _a(ab, t - 1)).sqrt() * n),
    (exercises.check_q_sample, "t + 1",
     lambda x0, t, n, ab: _a(ab, t + 1).sqrt() * x0 + (1 - _a(ab, t + 1)).sqrt() * n),
    (exercises.check_q_sample, "check the sign",
     lambda x0, t, n, ab: _a(ab, t).sqrt() * x0 - (1 - _a(ab, t)).sqrt() * n),
    (exercises.check_q_sample, "forgot the square roots",
     lambda x0, t, n, ab: _a(ab, t) * x0 + (1 - _a(ab, t)) * n),
    (exercises.check_q_sample, "square root on the noise term",
     lambda x0, t, n, ab: _a(ab, t).sqrt() * x0 + (1 - _a(ab, t)) * n),
    (exercises.check_q_sample, "swapped",
     lambda x0, t, n, ab: (1 - _a(ab, t)).sqrt() * x0 + _a(ab, t).sqrt() * n),
    (exercises.check_q_sample, "first t",
     lambda x0, t, n, ab: ab[t[0]].sqrt() * x0 + (1 - ab[t[0]]).sqrt() * n),
    # ---- lesson 01: alpha_bar
    (exercises.check_alpha_bar, "α_t = 1 - β_t, one step only", lambda betas: 1 - betas),
    (exercises.check_alpha_bar, "multiplied the betas", lambda betas: torch.cumprod(betas, 0)),
    (exercises.check_alpha_bar, "sum of the betas", lambda betas: 1 - torch.cumsum(betas, 0)),
    (exercises.check_alpha_bar, "index 0 already",
     lambda betas: torch.cat([torch.ones(1), torch.cumprod(1 - betas, 0)[:-1]])),
    (exercises.check_alpha_bar, "returned sqrt(ᾱ_t)", lambda betas: torch.cumprod(1 - betas, 0).sqrt()),
    (exercises.check_alpha_bar, "torch.prod gives a single number", lambda betas: (1 - betas).prod()),
    # ---- lesson 02: pred_x0
    (exercises.check_pred_x0, "check the sign", lambda x, e, a: (x + (1 - a).sqrt() * e) / a.sqrt()),
    (exercises.check_pred_x0, "forgot the square roots", lambda x, e, a: (x - (1 - a) * e) / a),
    (exercises.check_pred_x0, "square root in the division", lambda x, e, a: (x - (1 - a).sqrt() * e) / a),
    (exercises.check_pred_x0, "do not multiply", lambda x, e, a: (x - (1 - a).sqrt() * e) * a.sqrt()),
    (exercises.check_pred_x0, "swapped", lambda x, e, a: (x - a.sqrt() * e) / (1 - a).sqrt()),
    # ---- lesson 02: DDIM step
    (exercises.check_ddim_step, "are swapped", lambda x, e, a, p: ddim_ok(x, e, p, a)),
    (exercises.check_ddim_step, "not sqrt(1 - ᾱ_t)·ε",
     lambda x, e, a, p: p.sqrt() * pred_x0_ok(x, e, a) + (1 - a).sqrt() * e),
    (exercises.check_ddim_step, "forgot the square roots",
     lambda x, e, a, p: p * pred_x0_ok(x, e, a) + (1 - p) * e),
    (exercises.check_ddim_step, "forgot the square roots (in x̂0 and in the step)",
     lambda x, e, a, p: p * (x - (1 - a) * e) / a + (1 - p) * e),
    (exercises.check_ddim_step, "check the sign",
     lambda x, e, a, p: p.sqrt() * pred_x0_ok(x, e, a) - (1 - p).sqrt() * e),
    (exercises.check_ddim_step, "dropped the 'direction pointing to x_t'",
     lambda x, e, a, p: p.sqrt() * pred_x0_ok(x, e, a)),
    (exercises.check_ddim_step, "DDIM uses ᾱ (alpha_bar) only",  # alpha instead of alpha_bar: DDPM's mean
     lambda x, e, a, p: (x - (1 - a / p) / (1 - a).sqrt() * e) / (a / p).sqrt()),
    # ---- lesson 04: classifier guidance in eps form
    (exercises.check_classifier_guided_eps, "check the sign", lambda e, g, a, s: e + (1 - a).sqrt() * s * g),
    (exercises.check_classifier_guided_eps, "forgot the square root", lambda e, g, a, s: e - (1 - a) * s * g),
    (exercises.check_classifier_guided_eps, "not sqrt(ᾱ_t)", lambda e, g, a, s: e - a.sqrt() * s * g),
    (exercises.check_classifier_guided_eps, "into ε units", lambda e, g, a, s: e - s * g),
    (exercises.check_classifier_guided_eps, "guidance scale λ", lambda e, g, a, s: e - (1 - a).sqrt() * g),
    # ---- lesson 04: Bayes' rule for the score
    (exercises.check_bayes_score, "check the sign", lambda sc, g, s: sc - s * g),
    (exercises.check_bayes_score, "forgot the weight λ", lambda sc, g, s: sc + g),
    (exercises.check_bayes_score, "not the unconditional score", lambda sc, g, s: s * (sc + g)),
    (exercises.check_bayes_score, "classifier-free guidance (eq. 8)", lambda sc, g, s: (1 - s) * sc + s * g),
    # ---- lesson 05: cfg
    (exercises.check_cfg, "swapped eps_uncond and eps_cond", lambda u, c, s: cfg_ok(c, u, s)),
    (exercises.check_cfg, "Ho & Salimans' w", lambda u, c, s: c + s * (c - u)),
    (exercises.check_cfg, "off by one in the scale", lambda u, c, s: u + (s - 1) * (c - u)),
    (exercises.check_cfg, "check the sign", lambda u, c, s: u - s * (c - u)),
    (exercises.check_cfg, "only the guidance term", lambda u, c, s: s * (c - u)),
]


@pytest.mark.parametrize("check, hint, fn", MISTAKES, ids=[f"{c.__name__}:{h}" for c, h, _ in MISTAKES])
def test_typical_mistake_is_named(check, hint, fn, capsys):
    verdict, out = run(check, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet: "), out
    assert hint in out, out
    assert 2 <= len(out.strip().splitlines()) <= 4, out
    assert "expected" in out


def test_wrong_value_shows_first_differing_element(capsys):
    _, out = run(exercises.check_q_sample, lambda x0, t, n, ab: q_sample_ok(x0, t, n, ab) + 0.1, capsys)
    assert "At index (0, 0, 0, 0): expected" in out and ", got " in out
    assert "Hint: x_t = sqrt(ᾱ_t)·x0" in out  # no typical mistake matched: the formula


# ============================================================================ batch of two
def batch_of_two_two_passes(model, x, t, labels, null_label):
    eps_uncond = model(x, t, class_labels=torch.full_like(labels, null_label))
    eps_cond = model(x, t, class_labels=labels)
    return eps_uncond, eps_cond


def batch_of_two_swapped(model, x, t, labels, null_label):
    labels_in = torch.cat([labels, torch.full_like(labels, null_label)])  # real labels first
    return model(torch.cat([x, x]), torch.cat([t, t]), class_labels=labels_in).chunk(2)


def batch_of_two_t_not_repeated(model, x, t, labels, null_label):
    labels_in = torch.cat([torch.full_like(labels, null_label), labels])
    return model(torch.cat([x, x]), t, class_labels=labels_in).chunk(2)


def batch_of_two_whole_batch(model, x, t, labels, null_label):
    labels_in = torch.cat([torch.full_like(labels, null_label), labels])
    return model(torch.cat([x, x]), torch.cat([t, t]), class_labels=labels_in)


def batch_of_two_positional_labels(model, x, t, labels, null_label):
    labels_in = torch.cat([torch.full_like(labels, null_label), labels])
    return model(torch.cat([x, x]), torch.cat([t, t]), labels_in).chunk(2)


@pytest.mark.parametrize("fn, hint", [
    (batch_of_two_two_passes, "called the model 2 times"),
    (batch_of_two_swapped, "halves are swapped"),
    (batch_of_two_whole_batch, "split it with .chunk(2)"),
])
def test_batch_of_two_mistakes(fn, hint, capsys):
    verdict, out = run(exercises.check_batch_of_two, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet: ") and hint in out, out


@pytest.mark.parametrize("fn, hint", [
    (batch_of_two_t_not_repeated, "t_in = torch.cat([t, t])"),
    (batch_of_two_positional_labels, "class_labels=labels_in"),
])
def test_batch_of_two_model_errors_are_explained(fn, hint, capsys):
    verdict, out = run(exercises.check_batch_of_two, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Your function raised ValueError: ") and hint in out, out
    assert "Traceback" not in out


# ============================================================================ unfinished and broken functions
ALL_CHECKS = [
    (exercises.check_q_sample, 4),
    (exercises.check_alpha_bar, 1),
    (exercises.check_schedule_prediction, 1),
    (exercises.check_pred_x0, 3),
    (exercises.check_ddim_step, 4),
    (exercises.check_sampler_prediction, 1),
    (exercises.check_noised_component, 3),  # lesson 03
    (exercises.check_tweedie, 3),
    (exercises.check_guidance_prediction, 1),
    (exercises.check_classifier_guided_eps, 4),
    (exercises.check_bayes_score, 3),
    (exercises.check_eps_form_mean_shift, 4),
    (exercises.check_cfg, 3),
    (exercises.check_batch_of_two, 5),
    (exercises.check_guidance_comparison, 1),
    (exercises.check_kl_diagonal_gaussian, 2),  # lesson 06
    (exercises.check_reparameterise, 3),
    (exercises.check_kl_weight_prediction, 1),
    (exercises.check_cross_attention, 3),  # lesson 07
    (exercises.check_clip_contrastive_loss, 3),
    (exercises.check_token_state_prediction, 1),
    (exercises.check_guided_noise, 6),  # lesson 08
    (exercises.check_decode_latents, 2),
    (exercises.check_cyan_scale, 1),
    (exercises.check_euler_step, 4),  # lesson 09
    (exercises.check_img2img_timesteps, 2),
    (exercises.check_img2img_prediction, 1),
    (exercises.check_lora_weight, 4),  # lesson 11
    (exercises.check_ddim_inverse_step, 4),
]


def _stub(num_args, body):
    names = ", ".join(f"a{i}" for i in range(num_args))
    scope = {"body": body}
    exec(f"def learner({names}):\n    return body()", scope)
    return scope["learner"]


def _not_implemented():
    raise NotImplementedError()


def _value_error():
    raise ValueError("boom")


@pytest.mark.parametrize("check, num_args", ALL_CHECKS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_not_implemented_says_not_done(check, num_args, capsys):
    verdict, out = run(check, _stub(num_args, _not_implemented), capsys)
    assert verdict is False
    assert out.strip() == NOT_DONE
    assert out.startswith("⏳ Not done yet: replace `raise NotImplementedError()` with your code")


@pytest.mark.parametrize("check, num_args", ALL_CHECKS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_exception_is_reported_without_traceback(check, num_args, capsys):
    verdict, out = run(check, _stub(num_args, _value_error), capsys)
    assert verdict is False
    assert out.startswith("❌ Your function raised ValueError: boom\n   Hint: ")
    assert "Traceback" not in out and 'File "' not in out
    assert len(out.strip().splitlines()) == 2


@pytest.mark.parametrize("check, num_args", ALL_CHECKS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_returning_none_asks_for_return(check, num_args, capsys):
    verdict, out = run(check, _stub(num_args, lambda: None), capsys)
    assert verdict is False
    assert "returned None" in out


@pytest.mark.parametrize("check, num_args", ALL_CHECKS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_not_a_function_is_explained(check, num_args, capsys):
    verdict, out = run(check, torch.zeros(3), capsys)
    assert verdict is False
    assert "needs your function itself" in out and "no parentheses" in out


@pytest.mark.parametrize("check, num_args", ALL_CHECKS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_wrong_number_of_arguments_is_explained(check, num_args, capsys):
    verdict, out = run(check, _stub(num_args - 1, lambda: None), capsys)
    assert verdict is False
    assert "TypeError" in out or "must take exactly these arguments" in out
    assert "Traceback" not in out


def test_every_check_is_exported_and_tested_here():
    checks = {name for name in exercises.__all__ if name.startswith("check_")}
    assert checks == {check.__name__ for check, _ in ALL_CHECKS}


def test_missing_reshape_is_explained(capsys):
    """alpha_bar[t] of shape (B,) against (B, C, H, W): a broadcasting error, explained."""
    verdict, out = run(exercises.check_q_sample,
                       lambda x0, t, n, ab: ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * n, capsys)
    assert verdict is False
    assert out.startswith("❌ Your function raised RuntimeError") and ".view(-1, 1, 1, 1)" in out


def test_wrong_arguments_are_explained(capsys):
    verdict, out = run(exercises.check_q_sample, lambda x0, t, noise: x0, capsys)
    assert verdict is False
    assert "TypeError" in out and "(x0, t, noise, alpha_bar)" in out


def test_wrong_shape_is_explained(capsys):
    verdict, out = run(exercises.check_pred_x0, lambda x, e, a: x.flatten(1), capsys)
    assert verdict is False
    assert "has shape" in out and "expected (1, 1, 16, 16)" in out


def test_numpy_result_is_explained(capsys):
    verdict, out = run(exercises.check_cfg, lambda u, c, s: cfg_ok(u, c, s).numpy(), capsys)
    assert verdict is False
    assert "returned a ndarray" in out and "torch.from_numpy" in out


def test_nan_result_is_explained(capsys):
    verdict, out = run(exercises.check_pred_x0, lambda x, e, a: pred_x0_ok(x, e, a - 1), capsys)
    assert verdict is False
    assert "NaN or inf" in out


def test_checks_do_not_change_inputs_or_leak_between_runs(capsys):
    """In-place operations on the inputs do not break the next case (inputs are cloned)."""
    def in_place(x0, t, noise, alpha_bar):
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return x0.mul_(a.sqrt()).add_((1 - a).sqrt() * noise)

    assert run(exercises.check_q_sample, in_place, capsys)[0] is True
    assert run(exercises.check_q_sample, q_sample_ok, capsys)[0] is True


def test_output_is_deterministic(capsys):
    """nbval compares outputs: the same function gives the same text every time."""
    wrong = lambda u, c, s: cfg_ok(c, u, s)  # noqa: E731
    assert run(exercises.check_cfg, wrong, capsys)[1] == run(exercises.check_cfg, wrong, capsys)[1]
