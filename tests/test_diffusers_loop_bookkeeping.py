"""What lesson 08 says about the bookkeeping of diffusers' StableDiffusionPipeline.__call__, checked on diffusers.

``num_warmup_steps = len(timesteps) - num_inference_steps * scheduler.order``; the progress bar and the
older ``callback`` count num_inference_steps updates whatever the scheduler, while
``callback_on_step_end`` runs after every entry of ``timesteps`` (every UNet call). With SD v1.5's
scheduler config and 20 steps: PNDM (SD v1.5's own scheduler) has 21 timesteps, one of them a warm-up;
Heun (order 2) has 39; DDIM, DDPM, Euler and DPM-Solver++ (multistep) have 20. The lesson's table
quotes these numbers. A tiny UNet with random weights runs the real pipeline (text states given
directly, so no tokenizer or text encoder is needed).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

# SD v1.5's scheduler_config.json (PNDMScheduler), the settings every scheduler here reads what it knows of
SD15_SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                             steps_offset=1, skip_prk_steps=True, set_alpha_to_one=False, clip_sample=False)
STEPS = 20
# scheduler -> (order, len(timesteps), num_warmup_steps) for 20 steps: the lesson's table
EXPECTED = {
    "PNDMScheduler": (1, 21, 1),
    "HeunDiscreteScheduler": (2, 39, -1),
    "DDIMScheduler": (1, 20, 0),
    "DDPMScheduler": (1, 20, 0),
    "EulerDiscreteScheduler": (1, 20, 0),
    "DPMSolverMultistepScheduler": (1, 20, 0),
}


def scheduler(name):
    return getattr(diffusers, name).from_config(SD15_SCHEDULER_CONFIG)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_order_timesteps_and_warmup_steps(name):
    s = scheduler(name)
    s.set_timesteps(STEPS)
    order, length, warmup = EXPECTED[name]
    assert (s.order, len(s.timesteps), len(s.timesteps) - STEPS * s.order) == (order, length, warmup)


def test_pndm_warmup_repeats_its_second_timestep_and_heun_lists_all_but_its_first_twice():
    pndm = scheduler("PNDMScheduler")
    pndm.set_timesteps(STEPS)
    assert pndm.timesteps[1] == pndm.timesteps[2]  # the warm-up: the second timestep once more
    assert len(set(pndm.timesteps.tolist())) == STEPS
    heun = scheduler("HeunDiscreteScheduler")
    heun.set_timesteps(STEPS)
    assert len(set(heun.timesteps.tolist())) == STEPS  # 1 + 2 (n - 1) = 2n - 1 entries: two stages a step


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=8, attention_head_dim=2).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4,
                                  sample_size=8).eval()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, unet=unet, text_encoder=None, tokenizer=None, scheduler=scheduler("DDIMScheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class CountingBar:
    def __init__(self, counts):
        self.counts = counts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self):
        self.counts["bar"] += 1


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.slow
@pytest.mark.parametrize("name", ["PNDMScheduler", "HeunDiscreteScheduler", "DDIMScheduler"])
def test_callbacks_and_progress_bar_in_the_pipeline(pipe, name, monkeypatch):
    pipe.scheduler = scheduler(name)
    counts = {"bar": 0, "unet": 0, "on_step_end": 0, "callback": 0}
    monkeypatch.setattr(pipe, "progress_bar", lambda total: CountingBar(counts))
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: counts.__setitem__("unet", counts["unet"] + 1))

    def on_step_end(pipeline, i, t, callback_kwargs):
        assert pipeline is pipe and set(callback_kwargs) == {"latents"}
        counts["on_step_end"] += 1
        return callback_kwargs

    def callback(step, t, latents):
        counts["callback"] += 1

    states = torch.randn(1, 4, 8)
    try:
        for kwargs in (dict(callback_on_step_end=on_step_end), dict(callback=callback, callback_steps=1)):
            pipe(prompt_embeds=states, negative_prompt_embeds=torch.zeros_like(states), num_inference_steps=STEPS,
                 guidance_scale=7.5, height=8, width=8, output_type="latent", **kwargs)
    finally:
        hook.remove()
    _, length, _ = EXPECTED[name]
    # per call: one UNet pass (on the batch of two) per timestep; the bar and the old callback count the n steps
    assert counts == {"bar": 2 * STEPS, "unet": 2 * length, "on_step_end": length, "callback": STEPS}


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_callback_on_step_end_can_replace_the_latents(pipe):
    pipe.scheduler = scheduler("DDIMScheduler")
    states = torch.randn(1, 4, 8)
    kwargs = dict(prompt_embeds=states, negative_prompt_embeds=torch.zeros_like(states), num_inference_steps=3,
                  guidance_scale=7.5, height=8, width=8, output_type="latent")
    zeroed = pipe(generator=torch.Generator().manual_seed(0),
                  callback_on_step_end=lambda p, i, t, kw: {"latents": torch.zeros_like(kw["latents"])}, **kwargs)
    assert torch.equal(zeroed.images, torch.zeros_like(zeroed.images))
    plain = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    assert not torch.equal(plain.images, zeroed.images)
