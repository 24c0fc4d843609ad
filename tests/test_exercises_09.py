"""Tests of lesson 09's exercise checks: one Euler step in sigma, the timesteps img2img runs, and the
prediction of the strength at which img2img changes a shape, a colour or a size (graded by measuring).

As in test_exercises.py: a right answer (written as a learner would, in several forms) passes with
"✅ Correct", every typical mistake fails with "❌ Not yet" and the hint that names it, and a check
never raises or prints a traceback. The img2img check is also held to what StableDiffusion.img2img
really runs.
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from course_lib import exercises

from _exercise_harness import assert_correct, run




# ============================================================================ correct solutions
def euler_ok(x, eps, sigma, sigma_next):
    return x + (sigma_next - sigma) * eps


def euler_with_derivative(x, eps, sigma, sigma_next):  # Karras et al.'s form: d = (x - x̂0) / σ
    pred_x0 = x - sigma * eps
    derivative = (x - pred_x0) / sigma
    return x + (sigma_next - sigma) * derivative


def euler_as_ddim(x, eps, sigma, sigma_next):  # x̂0 put back at the next noise level
    return (x - sigma * eps) + sigma_next * eps


def img2img_ok(timesteps, strength):
    n = len(timesteps)
    k = int(n * strength)
    return timesteps[n - k:]


def img2img_with_min(timesteps, strength):  # diffusers' get_timesteps, word for word
    num_inference_steps = len(timesteps)
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    return timesteps[t_start:]


def img2img_index_select(timesteps, strength):
    n = timesteps.shape[0]
    start = n - int(n * strength)
    return timesteps[torch.arange(start, n)]


CORRECT = [
    (exercises.check_euler_step, euler_ok),
    (exercises.check_euler_step, euler_with_derivative),
    (exercises.check_euler_step, euler_as_ddim),
    (exercises.check_img2img_timesteps, img2img_ok),
    (exercises.check_img2img_timesteps, img2img_with_min),
    (exercises.check_img2img_timesteps, img2img_index_select),
]


@pytest.mark.parametrize("check, fn", CORRECT, ids=lambda v: getattr(v, "__name__", ""))
def test_correct_solution_passes(check, fn, capsys):
    assert_correct(check, fn, capsys)


# ============================================================================ typical mistakes
EULER_MISTAKES = [
    ("sign", lambda x, e, s, n: x + (s - n) * e, "check the sign"),
    ("sigma_next_alone", lambda x, e, s, n: x + n * e, "you used σ_next alone"),
    ("minus_sigma_next_alone", lambda x, e, s, n: x - n * e, "you used σ_next alone"),
    ("pred_x0", lambda x, e, s, n: x - s * e, "you returned x̂0"),
    ("divided_by_sigma", lambda x, e, s, n: x + (n - s) * e / s, "divided it by σ once more"),
    ("variances", lambda x, e, s, n: x + (n ** 2 - s ** 2) * e, "not σ_next² - σ²"),
    ("scaled_input", lambda x, e, s, n: x / (s ** 2 + 1) ** 0.5 + (n - s) * e, "scale_model_input"),
    ("first_sigma_for_all", lambda x, e, s, n: x + (n.flatten()[0] - s.flatten()[0]) * e, "every image used the first σ"),
]


@pytest.mark.parametrize("name, fn, hint", EULER_MISTAKES, ids=[m[0] for m in EULER_MISTAKES])
def test_euler_step_mistakes_are_named(name, fn, hint, capsys):
    verdict, out = run(exercises.check_euler_step, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


def _k(timesteps, strength):
    return int(len(timesteps) * strength)


IMG2IMG_MISTAKES = [
    ("round", lambda ts, s: ts[len(ts) - round(len(ts) * s):], "you rounded n·strength;"),
    ("ceil", lambda ts, s: ts[len(ts) - math.ceil(len(ts) * s):], "you rounded n·strength up"),
    ("start_from_one_minus_strength", lambda ts, s: ts[int(len(ts) * (1 - s)):], "you rounded n·strength up"),
    ("one_too_many", lambda ts, s: ts[len(ts) - _k(ts, s) - 1:], "one step too many"),
    ("one_too_few", lambda ts, s: ts[len(ts) - _k(ts, s) + 1:], "one step too few"),
    ("negative_slice", lambda ts, s: ts[-_k(ts, s):], "timesteps[-0:] is the whole grid"),
    ("first_k", lambda ts, s: ts[:_k(ts, s)], "the first k timesteps"),
    ("start_at_k", lambda ts, s: ts[_k(ts, s):], "you started at position k"),
    ("flipped", lambda ts, s: ts[len(ts) - _k(ts, s):].flip(0), "not flipped"),
]


@pytest.mark.parametrize("name, fn, hint", IMG2IMG_MISTAKES, ids=[m[0] for m in IMG2IMG_MISTAKES])
def test_img2img_timesteps_mistakes_are_named(name, fn, hint, capsys):
    verdict, out = run(exercises.check_img2img_timesteps, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


# ============================================================================ robustness
def test_fractional_slice_position_gets_a_hint(capsys):
    verdict, out = run(exercises.check_img2img_timesteps, lambda ts, s: ts[len(ts) - len(ts) * s:], capsys)
    assert verdict is False
    assert "whole numbers: k = int(n * strength)" in out


def test_wrong_arguments_get_the_signature(capsys):
    verdict, out = run(exercises.check_euler_step, lambda x, eps, sigma: x, capsys)
    assert verdict is False
    assert "(x, eps, sigma, sigma_next)" in out
    verdict, out = run(exercises.check_img2img_timesteps, lambda timesteps: timesteps, capsys)
    assert verdict is False
    assert "(timesteps, strength)" in out


# ============================================================================ the check is the pipeline's rule
@pytest.mark.parametrize("sampler, steps, strength", [("ddim", 10, 0.6), ("dpmsolver", 10, 0.33),
                                                      ("euler", 7, 0.5), ("ddpm", 4, 1.0)])
@pytest.mark.slow
def test_img2img_check_expects_what_the_pipeline_runs(sampler, steps, strength, tmp_path, capsys):
    """The timesteps StableDiffusion.img2img gives its UNet are the ones the check expects."""
    pytest.importorskip("transformers")
    from _minisd import IMAGE_SIZE, make_mini_sd

    from course_lib.pipeline import StableDiffusion

    pipe = StableDiffusion.from_course("mini-sd", directory=make_mini_sd(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(float(args[1].reshape(-1)[0])))
    image = torch.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE))
    pipe.img2img(image, "a red circle", strength=strength, num_inference_steps=steps, sampler=sampler,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
    grid = pipe.make_sampler(sampler)
    grid.set_timesteps(steps)
    assert seen == img2img_ok(grid.timesteps, strength).float().tolist()
    verdict, _ = run(exercises.check_img2img_timesteps, lambda ts, s: torch.tensor(seen), capsys)
    assert verdict is False  # a constant answer cannot pass: the check tries several grids


# ============================================================================ exercise 9.3: predict, then run
# a made-up model: how many of 8 pictures show the new attribute, per edit and strength 0.2 ... 1.0
MADE_UP = {"a large red square": [7, 8, 8, 8, 8], "a large blue circle": [0, 8, 8, 7, 6],
           "a small red circle": [1, 2, 6, 8, 8]}
MADE_UP_ANSWER = {"shape": 0.2, "color": 0.4, "size": 0.6}


class FakeImg2Img:
    def __init__(self, prompt, strengths):
        from course_lib.exercises.lesson09 import IMG2IMG_EDITS, IMG2IMG_STRENGTHS

        _, attribute, value = next(edit for edit in IMG2IMG_EDITS.values() if edit[0] == prompt)
        self.attribute, self.value = attribute, value
        self.counts = [MADE_UP[prompt][IMG2IMG_STRENGTHS.index(s)] for s in strengths]

    def tally(self, attribute, value):
        assert (attribute, value) == (self.attribute, self.value)
        return self.counts


@pytest.fixture()
def made_up_img2img(monkeypatch):
    from course_lib.exercises import lesson09

    measured = []

    def sweep(prompt, strengths):
        measured.append((prompt, tuple(strengths)))
        return FakeImg2Img(prompt, strengths)

    monkeypatch.setattr(lesson09, "img2img_sweep", sweep)
    return measured


@pytest.mark.parametrize("fn", [lambda edit: MADE_UP_ANSWER[edit],
                                lambda edit: {"shape": 0.2, "color": 0.4, "size": torch.tensor(0.6)}[edit],
                                lambda edit: {"shape": 0.20000001, "color": 0.4, "size": 0.6}[edit]],
                         ids=["dict", "tensor", "float_rounding"])
def test_img2img_prediction_right_answers_pass(fn, made_up_img2img, capsys):
    assert_correct(exercises.check_img2img_prediction, fn, capsys)
    # measured at each prediction and the strength below it, nothing more
    assert made_up_img2img == [("a large red square", (0.2,)), ("a large blue circle", (0.2, 0.4)),
                               ("a small red circle", (0.4, 0.6))]


@pytest.mark.parametrize("answer, hint", [
    ({"shape": 0.4, "color": 0.4, "size": 0.6}, "shape: already at strength 0.2 the judge reads 'square' in 7"),
    ({"shape": 0.2, "color": 0.2, "size": 0.6}, "color: at strength 0.2 the judge reads 'blue' in only 0 of the 8"),
    ({"shape": 0.2, "color": 0.4, "size": 0.4}, "size: at strength 0.4 the judge reads 'small' in only 2"),
    ({"shape": 0.2, "color": 0.4, "size": 1.0}, "size: already at strength 0.8"),
    ({"shape": 0.3, "color": 0.4, "size": 0.6}, "return one of the strengths 0.2, 0.4, 0.6, 0.8, 1."),
    ({"shape": "0.2", "color": 0.4, "size": 0.6}, "your function returned '0.2'"),
    ({"shape": True, "color": 0.4, "size": 0.6}, "your function returned True"),
])
def test_img2img_prediction_mistakes_get_their_hint(answer, hint, made_up_img2img, capsys):
    verdict, out = run(exercises.check_img2img_prediction, lambda edit: answer[edit], capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


def test_img2img_prediction_hints_say_where_the_loop_starts(made_up_img2img, capsys):
    verdict, out = run(exercises.check_img2img_prediction, lambda edit: {**MADE_UP_ANSWER, "color": 0.2}[edit], capsys)
    assert verdict is False and "starts the loop at t = 151, where z_t keeps sqrt(ᾱ) = 0.91" in out
    verdict, out = run(exercises.check_img2img_prediction, lambda edit: {**MADE_UP_ANSWER, "shape": 0.4}[edit], capsys)
    assert verdict is False and "strength 0.2 starts at t = 151" in out and "8 x 8 latent" in out


def test_img2img_prediction_is_graded_by_measuring(made_up_img2img, monkeypatch, capsys):
    monkeypatch.setitem(MADE_UP, "a small red circle", [1, 7, 8, 8, 8])  # another model: size at 0.4
    verdict, _ = run(exercises.check_img2img_prediction, lambda edit: MADE_UP_ANSWER[edit], capsys)
    assert verdict is False
    assert_correct(exercises.check_img2img_prediction, lambda edit: {**MADE_UP_ANSWER, "size": 0.4}[edit], capsys)


@pytest.mark.slow
def test_img2img_prediction_check_agrees_with_the_shipped_mini_sd(tmp_path, monkeypatch, capsys):
    """On the shipped mini SD (fresh cache): the first strength where most pictures change passes; its neighbours fail."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    from course_lib.experiments import img2img_sweep
    from course_lib.exercises.lesson09 import IMG2IMG_EDITS, IMG2IMG_MOST, IMG2IMG_STRENGTHS

    first = {}
    for edit, (prompt, attribute, value) in IMG2IMG_EDITS.items():
        counts = img2img_sweep(prompt, strengths=IMG2IMG_STRENGTHS[:3]).tally(attribute, value)
        first[edit] = IMG2IMG_STRENGTHS[next(i for i, n in enumerate(counts) if n >= IMG2IMG_MOST)]
    assert_correct(exercises.check_img2img_prediction, lambda edit: first[edit], capsys)
    later = {**first, "shape": IMG2IMG_STRENGTHS[IMG2IMG_STRENGTHS.index(first["shape"]) + 1]}
    assert run(exercises.check_img2img_prediction, lambda edit: later[edit], capsys)[0] is False
