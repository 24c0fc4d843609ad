"""Tests of lesson 08's exercise checks: the guided noise of the batch of two, decoding the latents, and the
guidance scale at which the negative prompt "red" turns every circle cyan (graded by measuring).

As in test_exercises.py: a right answer (written as a learner would, in several forms) passes with
"✅ Correct", every typical mistake fails with "❌ Not yet" and the hint that names it, and a check
never raises or prints a traceback.
"""

import pytest
import torch

from course_lib import exercises

from _exercise_harness import assert_correct, run
from course_lib.guidance import cfg




# ============================================================================ correct solutions
def guided_ok(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale):
    latent_model_input = torch.cat([latents] * 2)                        # (2B, C, h, w)
    states = torch.cat([negative_prompt_embeds, prompt_embeds])          # (2B, L, D): negative first
    noise_pred = unet(latent_model_input, t, encoder_hidden_states=states)
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


def guided_prompt_first(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale):
    # the other order in the batch is fine as long as the halves are read in the same order
    noise_pred_text, noise_pred_uncond = unet(torch.cat([latents, latents]), t,
                                              torch.cat([prompt_embeds, negative_prompt_embeds])).chunk(2)
    return cfg(noise_pred_uncond, noise_pred_text, guidance_scale)


def guided_eq8(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale):
    u, c = unet(latents.repeat(2, 1, 1, 1), t, encoder_hidden_states=torch.cat([negative_prompt_embeds,
                                                                                 prompt_embeds])).chunk(2)
    return guidance_scale * c + (1 - guidance_scale) * u  # eq. 8


def decode_ok(vae, latents):
    images = vae.decode(latents / vae.config.scaling_factor)
    return (images / 2 + 0.5).clamp(0, 1)


def decode_other_forms(vae, latents):
    s = vae.config.scaling_factor
    images = vae.decode(1 / s * latents)
    return torch.clamp((images + 1) / 2, min=0.0, max=1.0)


CORRECT = [
    (exercises.check_guided_noise, guided_ok),
    (exercises.check_guided_noise, guided_prompt_first),
    (exercises.check_guided_noise, guided_eq8),
    (exercises.check_decode_latents, decode_ok),
    (exercises.check_decode_latents, decode_other_forms),
]


@pytest.mark.parametrize("check, fn", CORRECT, ids=lambda v: getattr(v, "__name__", ""))
def test_correct_solution_passes(check, fn, capsys):
    assert_correct(check, fn, capsys)


# ============================================================================ typical mistakes
def _halves(unet, latents, t, prompt_embeds, negative_prompt_embeds):
    return unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([negative_prompt_embeds,
                                                                              prompt_embeds])).chunk(2)


def guided_with(combine):
    def fn(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
        u, c = _halves(unet, latents, t, prompt_embeds, negative_prompt_embeds)
        return combine(u, c, s)
    return fn


def swapped_chunk(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
    noise_pred_text, noise_pred_uncond = _halves(unet, latents, t, prompt_embeds, negative_prompt_embeds)
    return noise_pred_uncond + s * (noise_pred_text - noise_pred_uncond)


def prompt_in_both_halves(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
    u, c = _halves(unet, latents, t, prompt_embeds, prompt_embeds)
    return u + s * (c - u)


GUIDED_MISTAKES = [
    ("swapped_chunk", swapped_chunk, "the halves are swapped"),
    ("ho_salimans_w", guided_with(lambda u, c, s: c + s * (c - u)), "Ho & Salimans' w"),
    ("off_by_one", guided_with(lambda u, c, s: u + (s - 1) * (c - u)), "off by one"),
    ("wrong_sign", guided_with(lambda u, c, s: u - s * (c - u)), "check the sign"),
    ("scale_on_uncond", guided_with(lambda u, c, s: s * u + (c - u)), "the scale multiplies the difference"),
    ("no_parentheses", guided_with(lambda u, c, s: u + s * c - u), "the parentheses are missing"),
    ("guidance_term_only", guided_with(lambda u, c, s: s * (c - u)), "the guidance term alone"),
    ("prompt_in_both_halves", prompt_in_both_halves, "did both halves see prompt_embeds"),
    ("uncond_only", guided_with(lambda u, c, s: u), "the negative prompt alone"),
]


@pytest.mark.parametrize("name, fn, hint", GUIDED_MISTAKES, ids=[m[0] for m in GUIDED_MISTAKES])
def test_guided_noise_mistakes_are_named(name, fn, hint, capsys):
    verdict, out = run(exercises.check_guided_noise, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


def test_guided_noise_two_passes_are_refused(capsys):
    def two_passes(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
        u = unet(latents, t, encoder_hidden_states=negative_prompt_embeds)
        c = unet(latents, t, encoder_hidden_states=prompt_embeds)
        return u + s * (c - u)

    verdict, out = run(exercises.check_guided_noise, two_passes, capsys)
    assert verdict is False
    assert "the values are right, but your function called the UNet 2 times" in out and "ONE UNet pass" in out


def test_guided_noise_batch_mismatches_get_their_hint(capsys):
    def latents_not_doubled(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
        u, c = unet(latents, t, encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds])).chunk(2)
        return u + s * (c - u)

    def states_not_doubled(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
        u, c = unet(torch.cat([latents] * 2), t, encoder_hidden_states=prompt_embeds).chunk(2)
        return u + s * (c - u)

    verdict, out = run(exercises.check_guided_noise, latents_not_doubled, capsys)
    assert verdict is False and "the latents must be a batch of two as well" in out and "Traceback" not in out
    verdict, out = run(exercises.check_guided_noise, states_not_doubled, capsys)
    assert verdict is False and "the text states must be a batch of two as well" in out


def test_guided_noise_returning_the_batch_or_the_halves(capsys):
    def whole_batch(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
        return unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([negative_prompt_embeds,
                                                                                  prompt_embeds]))

    verdict, out = run(exercises.check_guided_noise, whole_batch, capsys)
    assert verdict is False and "has shape (2, 4, 8, 8)" in out and "expected (1, 4, 8, 8)" in out
    assert ".chunk(2)" in out
    verdict, out = run(exercises.check_guided_noise,
                       lambda unet, x, t, p, n, s: _halves(unet, x, t, p, n), capsys)
    assert verdict is False and "returned a tuple of 2 items" in out and "not the two halves" in out


def test_guided_noise_wrong_timesteps_get_their_hint(capsys):
    def two_timesteps(unet, latents, t, prompt_embeds, negative_prompt_embeds, s):
        return guided_ok(unet, latents, torch.tensor([t, t]), prompt_embeds, negative_prompt_embeds, s)

    verdict, out = run(exercises.check_guided_noise, two_timesteps, capsys)
    assert verdict is False and "one timestep for every image" in out


def test_guided_noise_missing_states_are_explained(capsys):
    verdict, out = run(exercises.check_guided_noise,
                       lambda unet, x, t, p, n, s: unet(torch.cat([x, x]), t).chunk(2)[0], capsys)
    assert verdict is False and "encoder_hidden_states=states" in out


def decode_with(fn):
    return lambda vae, latents: fn(vae, latents, vae.config.scaling_factor)


DECODE_MISTAKES = [
    ("no_division", decode_with(lambda vae, z, s: (vae.decode(z) / 2 + 0.5).clamp(0, 1)),
     "you forgot to divide by the scaling factor"),
    ("multiplied", decode_with(lambda vae, z, s: (vae.decode(z * s) / 2 + 0.5).clamp(0, 1)),
     "you multiplied by the scaling factor"),
    ("sd_constant", decode_with(lambda vae, z, s: (vae.decode(z / 0.18215) / 2 + 0.5).clamp(0, 1)),
     "this VAE's own vae.config.scaling_factor"),
    ("still_in_minus_one_one", decode_with(lambda vae, z, s: vae.decode(z / s)), "map them to [0, 1]"),
    ("no_clamp", decode_with(lambda vae, z, s: vae.decode(z / s) / 2 + 0.5), "clip after mapping"),
    ("uint8_range", decode_with(lambda vae, z, s: (vae.decode(z / s) / 2 + 0.5).clamp(0, 1) * 255),
     "return floats in [0, 1]"),
    ("clamp_before_mapping", decode_with(lambda vae, z, s: vae.decode(z / s).clamp(0, 1) / 2 + 0.5),
     "clamp after mapping"),
]


@pytest.mark.parametrize("name, fn, hint", DECODE_MISTAKES, ids=[m[0] for m in DECODE_MISTAKES])
def test_decode_mistakes_are_named(name, fn, hint, capsys):
    verdict, out = run(exercises.check_decode_latents, fn, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


def test_decode_channels_last_gets_the_layout_hint(capsys):
    verdict, out = run(exercises.check_decode_latents, lambda vae, z: decode_ok(vae, z).permute(0, 2, 3, 1), capsys)
    assert verdict is False and "has shape (1, 8, 8, 3)" in out and "(B, 3, H, W)" in out


def test_decode_errors_are_explained(capsys):
    verdict, out = run(exercises.check_decode_latents, lambda vae, z: vae.scaling_factor, capsys)
    assert verdict is False and "vae.config.scaling_factor" in out and "Traceback" not in out
    verdict, out = run(exercises.check_decode_latents, lambda vae, z: vae.decode(z[:, :3]), capsys)
    assert verdict is False and "give vae.decode the latents themselves" in out


def test_exports():
    assert "check_guided_noise" in exercises.__all__
    assert "check_decode_latents" in exercises.__all__


# ============================================================================ exercise 8.3: the cyan scale
class FakeSweep:
    """What negative_prompt_sweep returns, for a made-up model whose circles all turn cyan from ``threshold`` on."""

    def __init__(self, scales, threshold, num_images):
        self.colors = [["cyan"] * num_images if scale >= threshold else ["cyan"] * (num_images - 3) + ["blue"] * 3
                       for scale in scales]

    def tally(self, attribute, value):
        assert attribute == "color"
        return [row.count(value) for row in self.colors]


@pytest.fixture()
def fake_model(monkeypatch):
    """Replace the measurement with a made-up model (threshold 3.7 unless changed); record the scales measured."""
    from course_lib.exercises import lesson08

    state = {"threshold": 3.7, "measured": []}

    def sweep(scales, num_images, **experiment):
        assert experiment == {k: v for k, v in lesson08.CYAN_EXPERIMENT.items() if k != "num_images"}
        state["measured"].extend(scales)
        return FakeSweep(scales, state["threshold"], num_images)

    monkeypatch.setattr(lesson08, "negative_prompt_sweep", sweep)
    return state


def cyan_grid_search(count_cyan):
    for scale in (3.0, 3.5, 4.0, 4.5):
        if count_cyan(scale) == 16:
            return scale


def cyan_bisection(count_cyan):
    low, high = 2.5, 5.0  # some not cyan at 2.5, all cyan at 5 (lesson 08's strip)
    while high - low > 0.5:
        middle = (low + high) / 2
        low, high = (low, middle) if count_cyan(middle) == 16 else (middle, high)
    return high


@pytest.mark.parametrize("fn", [cyan_grid_search, cyan_bisection, lambda count_cyan: 4.0,
                                lambda count_cyan: torch.tensor(3.9)], ids=["grid", "bisection", "constant", "tensor"])
def test_cyan_scale_right_answers_pass(fn, fake_model, capsys):
    assert_correct(exercises.check_cyan_scale, fn, capsys)
    below, answer = fake_model["measured"][-2:]  # the check measured the answer and 0.5 below it
    assert answer - below == pytest.approx(0.5) and 3.7 <= answer < 4.2


def test_cyan_scale_is_graded_by_measuring_not_by_a_stored_answer(fake_model, capsys):
    fake_model["threshold"] = 6.2
    verdict, out = run(exercises.check_cyan_scale, lambda count_cyan: 4.0, capsys)
    assert verdict is False and "reads 13 of the 16 pictures as cyan (the others: 3 blue)" in out
    assert "try a larger scale" in out
    assert_correct(exercises.check_cyan_scale, lambda count_cyan: 6.5, capsys)


@pytest.mark.parametrize("answer, hint", [
    (3.5, "try a larger scale"),
    (5.0, "already at 4.5 as well"),
    (1.0, "there is no guidance"),
    (0.5, "skips the batch of two when guidance_scale <= 1"),
    (100.0, "far outside the scales"),
    ("4", "expected one guidance scale (a number)"),
    (float("nan"), "expected one guidance scale"),
    (True, "expected one guidance scale"),
])
def test_cyan_scale_mistakes_get_their_hint(answer, hint, fake_model, capsys):
    verdict, out = run(exercises.check_cyan_scale, lambda count_cyan: answer, capsys)
    assert verdict is False
    assert out.startswith("❌ Not yet")
    assert hint in out, out


@pytest.mark.slow
def test_cyan_scale_check_agrees_with_the_shipped_mini_sd(tmp_path, monkeypatch, capsys):
    """On the shipped mini SD (fresh cache): the smallest all-cyan scale of the 0.5 grid passes, its neighbours fail."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    from course_lib.exercises.lesson08 import count_cyan

    grid = [2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    counts = [count_cyan(scale) for scale in grid]
    assert counts[0] < 16 and counts[-1] == 16  # the strip's bracket (2.5, 5] holds on the shipped model
    first = grid[next(i for i, n in enumerate(counts) if n == 16)]
    assert_correct(exercises.check_cyan_scale, cyan_grid_search if first <= 4.5 else (lambda c: first), capsys)
    assert_correct(exercises.check_cyan_scale, lambda count_cyan: first, capsys)
    assert run(exercises.check_cyan_scale, lambda count_cyan: first - 0.5, capsys)[0] is False
    if counts[grid.index(first) + 1:] == [16] * (len(grid) - grid.index(first) - 1) and first + 0.5 in grid:
        assert run(exercises.check_cyan_scale, lambda count_cyan: first + 0.5, capsys)[0] is False
