"""Tests of lesson 08's exercise checks: the guided noise of the batch of two, and decoding the latents.

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
