"""Tests of course_lib.limits: the memory formula, the caps and their refusals."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from course_lib import limits
from course_lib.limits import (
    LATENT_POSITIONS_VARIABLE,
    MEMORY_CAP_VARIABLE,
    ResourceLimitError,
    check_sampling_request,
    estimate_sampling_memory,
    latent_positions_cap,
    memory_cap,
)
from course_lib.nn.unet import UNetConfig
from course_lib.nn.vae import VAEConfig

GIB = 2**30
# Stable Diffusion v1.5's UNet and VAE (their published config.json files)
SD15_UNET = UNetConfig(cross_attention_dim=768, sample_size=64)
SD15_VAE = VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CHECKPOINTS = Path(__file__).resolve().parent.parent / "data" / "checkpoints"


@pytest.fixture(autouse=True)
def no_cap_variables(monkeypatch):
    monkeypatch.delenv(MEMORY_CAP_VARIABLE, raising=False)
    monkeypatch.delenv(LATENT_POSITIONS_VARIABLE, raising=False)


def mini_sd_configs():
    return tuple(json.loads((CHECKPOINTS / f"{name}.json").read_text())["network_config"]
                 for name in ("shapes-ldm", "shapes-vae"))


def test_sd15_estimate_is_the_formula_worked_by_hand():
    # 512 x 512 pixels -> 64 x 64 latents: P_0 = 4096 positions, P_1 = 1024, P_2 = 256, P_3 = 64
    estimate = estimate_sampling_memory(SD15_UNET, SD15_VAE, height=512, width=512, batch_size=3)
    P = [4096, 1024, 256, 64]
    C = [320, 640, 1280, 1280]
    # conv_in's output, two resnet outputs per level, the downsampled outputs of the first three levels
    skips = C[0] * P[0] + sum(2 * C[i] * P[i] for i in range(4)) + sum(C[i] * P[i + 1] for i in range(3))
    widest = 2 * 4 * C[0] * P[0]  # GEGLU at level 0: (P_0, 2 * 4 * 320)
    assert estimate.unet == 2 * 3 * 4 * (skips + 6 * widest)  # the batch of two, 3 images, float32
    # the decoder's widest: the last upsampler, 256 channels at 512 x 512
    assert estimate.vae_decode == 3 * 4 * 10 * 256 * 512 * 512
    assert estimate.vae_encode == 0 and estimate.latent_positions == 4096 and estimate.batch_size == 3
    assert estimate.latents == 8 * 3 * 4 * 4096 * 4 and estimate.images == 3 * 3 * 3 * 512 * 512 * 4
    assert estimate.peak == limits.OVERHEAD_BYTES + estimate.latents + estimate.images + estimate.vae_decode
    # img2img also encodes: the encoder's widest is its first level, 128 channels at 512 x 512
    encoding = estimate_sampling_memory(SD15_UNET, SD15_VAE, height=512, width=512, batch_size=3, encode=True)
    assert encoding.vae_encode == 3 * 4 * 10 * 128 * 512 * 512


def test_estimate_scales_with_batch_guidance_dtype_and_size():
    unet, vae = mini_sd_configs()
    base = estimate_sampling_memory(unet, vae, height=256, width=256, batch_size=1)
    double = estimate_sampling_memory(unet, vae, height=256, width=256, batch_size=2)
    assert (double.unet, double.vae_decode, double.latents) == (2 * base.unet, 2 * base.vae_decode, 2 * base.latents)
    no_guidance = estimate_sampling_memory(unet, vae, height=256, width=256, batch_size=1, guidance=False)
    assert 2 * no_guidance.unet == base.unet and no_guidance.vae_decode == base.vae_decode
    half = estimate_sampling_memory(unet, vae, height=256, width=256, batch_size=1, dtype=torch.float16,
                                    vae_dtype=torch.float32)
    assert 2 * half.unet == base.unet and half.vae_decode == base.vae_decode
    # activations grow with the pixels: 4 times the pixels, 4 times the decoder's memory
    larger = estimate_sampling_memory(unet, vae, height=512, width=512, batch_size=1)
    assert larger.vae_decode == 4 * base.vae_decode and larger.latent_positions == 4 * base.latent_positions
    # a model in pixel space (the digits UNet): no VAE, the UNet at the image size
    digits = json.loads((CHECKPOINTS / "digits-ddpm.json").read_text())["network_config"]
    pixels = estimate_sampling_memory(digits, None, height=16, width=16, batch_size=10, guidance=False)
    assert pixels.vae_decode == 0 and pixels.latent_positions == 256


def test_caps_and_their_variables(monkeypatch):
    assert latent_positions_cap() == 128 * 128
    assert memory_cap("cpu") == limits._total_memory(torch.device("cpu")) // 2 > 0
    monkeypatch.setenv(MEMORY_CAP_VARIABLE, "2.5")
    monkeypatch.setenv(LATENT_POSITIONS_VARIABLE, "100000")
    assert memory_cap() == int(2.5 * GIB) and latent_positions_cap() == 100000
    for bad in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv(MEMORY_CAP_VARIABLE, bad)
        with pytest.raises(ValueError, match=rf"{MEMORY_CAP_VARIABLE} is '{bad}'; it must be a number of at least"):
            memory_cap()


def test_huge_requests_are_refused_at_once_without_allocating(monkeypatch):
    unet, vae = mini_sd_configs()
    start = time.perf_counter()
    for side in (4096, 32768):
        with pytest.raises(ResourceLimitError, match=rf"{side}x{side} pixels are {(side // 8) ** 2} latent positions "
                                                     rf"per image, over the cap of 16384 \(about 1024x1024 pixels\).*"
                                                     rf"memory: about .* GiB.*{LATENT_POSITIONS_VARIABLE}=N"):
            check_sampling_request(unet, vae, height=side, width=side, batch_size=1)
    assert time.perf_counter() - start < 0.5
    # the memory cap: the estimate, the cap, how many images fit, how to raise it
    monkeypatch.setenv(MEMORY_CAP_VARIABLE, "1")
    with pytest.raises(ResourceLimitError, match=r"Sampling 64 image\(s\) of 512x512 pixels needs about \d+\.\d\d GiB "
                                                 r"\(UNet activations .*over the cap of 1.00 GiB "
                                                 rf"\(\${MEMORY_CAP_VARIABLE}\)\. At this size at most \d+ image\(s\) "
                                                 rf"fit in one pass.*set {MEMORY_CAP_VARIABLE}=<GiB>"):
        check_sampling_request(unet, vae, height=512, width=512, batch_size=64)
    assert isinstance(ResourceLimitError("x"), ValueError)  # the CLI's and the widgets' handlers catch it
    # under the caps: the estimate comes back
    assert check_sampling_request(unet, vae, height=64, width=64, batch_size=4).peak < 1 * GIB


@pytest.mark.slow
def test_estimate_is_not_below_the_measured_peak_memory():
    """The mini-SD at 512 px: the UNet call on the batch of two and the decoder, each measured as the
    peak resident memory of a fresh process (benchmarks/sampling_memory.py). The estimate may be high
    (the fixed overhead is most of it at this size), never low; its size-dependent part is within 3 times."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "sampling_memory.py"
    result = subprocess.run([sys.executable, str(script), "--sizes", "512", "--parts", "unet", "vae", "--json"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    for row in json.loads(result.stdout):
        assert row["measured_bytes"] <= row["estimated_bytes"], row  # never low
        assert row["estimated_bytes"] - limits.OVERHEAD_BYTES <= 3 * row["measured_bytes"], row  # not vacuous
