"""DDIM inversion (course_lib.inversion): the inverse step as a formula, the loop, the shipped mini-SD's target."""

import sys
from pathlib import Path

import pytest
import torch

from course_lib.inversion import DRAWN_SHAPES, ddim_inverse_step, ddim_invert, drawn_pictures
from course_lib.samplers import DDIMSampler, DDPMSampler
from course_lib.schedules import make_schedule

sys.path.insert(0, str(Path(__file__).parent))

SD_SCHEDULE = make_schedule("scaled_linear", 1000, 0.00085, 0.012)


def ddim(steps: int = 50, **kwargs) -> DDIMSampler:
    sampler = DDIMSampler(SD_SCHEDULE, set_alpha_to_one=False, steps_offset=1, **kwargs)
    sampler.set_timesteps(steps)
    return sampler


@pytest.mark.parametrize("index", [0, 1, 25, 48, 49])  # 49: t = 1, whose DDIM step ends at ᾱ_0
def test_inverse_step_is_the_algebraic_inverse_of_the_ddim_step(index):
    sampler = ddim()
    t = sampler.timesteps[index]
    generator = torch.Generator().manual_seed(index)
    z_t, eps = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    z_prev = sampler.step(eps, t, z_t)
    # undo the step with the same eps: back to z_t; and the step after the inverse: back to z_prev
    # (to float32 rounding: the schedule's ᾱ are float32)
    torch.testing.assert_close(ddim_inverse_step(eps, t, z_prev, sampler), z_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sampler.step(eps, t, ddim_inverse_step(eps, t, z_prev, sampler)), z_prev,
                               rtol=1e-5, atol=1e-5)
    # and not the identity: the step moved z
    assert (z_prev - z_t).abs().max() > 1e-3


def test_inverse_step_equals_diffusers_ddim_inverse_scheduler():
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDIMInverseScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    theirs.set_timesteps(50)
    sampler = ddim()
    assert theirs.timesteps.tolist() == sampler.timesteps.flip(0).tolist()  # the same grid, low to high
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=generator)
    for t in theirs.timesteps:
        eps = torch.randn(z.shape, generator=generator)
        expected = theirs.step(eps, t, z).prev_sample
        z_ours = ddim_inverse_step(eps, t, z, sampler)
        torch.testing.assert_close(z_ours, expected, rtol=1e-5, atol=1e-5)
        z = expected


def test_inversion_is_exact_when_eps_does_not_depend_on_z():
    """With ε_θ a function of t alone, ε_θ(z_t', t) = ε_θ(z_t, t): inversion then sampling gives z_0 back."""
    sampler = ddim(20)
    noise_of = {int(t): torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(int(t)), dtype=torch.float64)
                for t in sampler.timesteps}
    calls = []

    def unet(z, t, encoder_hidden_states):
        calls.append(int(t))
        return noise_of[int(t)].expand_as(z)

    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states = torch.zeros(3, 16, 8, dtype=torch.float64)
    zT = ddim_invert(unet, z0, states, sampler)
    assert calls == sampler.timesteps.flip(0).tolist()  # low to high, once each
    z = zT
    for t in sampler.timesteps:
        z = sampler.step(unet(z, t, states), t, z)
    torch.testing.assert_close(z, z0, rtol=1e-5, atol=1e-5)
    assert (zT - z0).abs().max() > 1.0  # it did move towards the noise


def test_guided_inversion_combines_the_two_predictions():
    sampler = ddim(5)
    seen = []

    def unet(z, t, encoder_hidden_states):
        seen.append(z.shape[0])
        return encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None].expand_as(z).clone()

    z0 = torch.zeros(2, 4, 8, 8)
    cond, uncond = torch.ones(2, 3, 5), torch.zeros(2, 3, 5)
    guided = ddim_invert(unet, z0, cond, sampler, guidance_scale=3.0, negative_prompt_embeds=uncond)
    assert seen == [4] * 5  # one batch of two halves per step
    # ε̃ = ε_u + 3 (ε_c - ε_u) = 3 at every step: the same as inverting with ε = 3 directly
    expected = ddim_invert(lambda z, t, encoder_hidden_states: torch.full_like(z, 3.0), z0, cond, sampler)
    torch.testing.assert_close(guided, expected)


def test_bad_inputs_are_refused():
    z = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="eta = 0"):
        ddim_inverse_step(z, ddim(eta=1.0).timesteps[0], z, ddim(eta=1.0))
    ddpm = DDPMSampler(SD_SCHEDULE)
    ddpm.set_timesteps(10)
    with pytest.raises(TypeError, match="DDIMSampler"):
        ddim_inverse_step(z, ddpm.timesteps[0], z, ddpm)
    with pytest.raises(ValueError, match="not one of this sampler's timesteps"):
        ddim_inverse_step(z, 500, z, ddim())
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        ddim_invert(lambda *a, **k: z, z, torch.zeros(1, 3, 5), ddim(5), guidance_scale=2.0)
    with pytest.raises(ValueError, match="one prompt per picture"):
        ddim_invert(lambda *a, **k: z, z, torch.zeros(2, 3, 5), ddim(5))


def test_drawn_pictures_are_off_the_data_sets_grid_and_repeatable():
    images, attributes = drawn_pictures(40, seed=3)
    again, _ = drawn_pictures(40, seed=3)
    assert images.shape == (40, 3, 64, 64) and torch.equal(images, again)
    assert images.min() >= -1 and images.max() <= 1
    assert {a["shape"] for a in attributes} == set(DRAWN_SHAPES)
    painted = (images > -1).any(dim=1).sum(dim=(1, 2))  # pixels of each shape
    assert (painted > 20).all()
    with pytest.raises(ValueError, match="drawn shape"):
        drawn_pictures(2, shapes=("hexagon",))


@pytest.mark.slow
def test_reconstruction_on_a_tiny_random_mini_sd(tmp_path):
    from _minisd import IMAGE_SIZE, make_mini_sd

    from course_lib.metrics import psnr
    from course_lib.pipeline import StableDiffusion

    pipe = StableDiffusion.from_course("mini-sd", directory=make_mini_sd(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    images = torch.nn.functional.interpolate(drawn_pictures(2, seed=0)[0], size=IMAGE_SIZE, mode="area")
    with torch.no_grad():
        z0 = pipe.vae.encode(images).mean * pipe.vae.config.scaling_factor
    sampler = pipe.make_sampler("ddim")
    sampler.set_timesteps(10)
    embeds, _ = pipe.encode_prompt(["a red circle", "a square"], do_cfg=False)
    zT = ddim_invert(pipe.unet, z0, embeds, sampler)
    back = pipe(["a red circle", "a square"], latents=zT, num_inference_steps=10, guidance_scale=1.0,
                output_type="latent")
    assert zT.shape == z0.shape and torch.isfinite(zT).all()
    assert torch.isfinite(torch.tensor(psnr(z0, back)))


@pytest.mark.slow
def test_shipped_mini_sd_reconstructs_drawn_pictures():
    """Issue 16's target: DDIM (eta = 0) at guidance 1 from the inverted z_T gives the picture back at >= 25 dB."""
    from course_lib.captions import shape_caption
    from course_lib.metrics import psnr
    from course_lib.pipeline import StableDiffusion
    from course_lib.pretrained import available_checkpoints

    if not {"shapes-vae", "shapes-clip", "shapes-ldm"} <= set(available_checkpoints()):
        pytest.skip("needs the mini-SD checkpoints")
    torch.set_num_threads(1)
    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    images, attributes = drawn_pictures(8, seed=0)
    prompts = ["" if a["shape"] in ("ring", "plus") else
               shape_caption(a["shape"], a["color"], a["size"], a["position"]) for a in attributes]
    with torch.no_grad():
        z0 = pipe.vae.encode(images).mean * pipe.vae.config.scaling_factor
    sampler = pipe.make_sampler("ddim")
    sampler.set_timesteps(50)
    embeds, _ = pipe.encode_prompt(prompts, do_cfg=False)
    zT = ddim_invert(pipe.unet, z0, embeds, sampler)
    rebuilt = torch.from_numpy(pipe(prompts, latents=zT, num_inference_steps=50, guidance_scale=1.0,
                                    output_type="np")).permute(0, 3, 1, 2) * 2 - 1
    values = psnr(images, rebuilt, reduction="none")
    with torch.no_grad():
        round_trip = psnr(images, pipe.decode_latents(z0).clamp(-1, 1), reduction="none")  # the VAE's own limit
    # measured (50 steps, one thread): mean 26.8 dB; the inversion loses 1.0 dB on average to the round trip
    assert values.mean() >= 25, values
    assert (round_trip - values).mean() <= 1.5, (round_trip, values)
