"""Tiny AutoencoderKL configurations for the tests (tests/test_vae.py, tests/test_fast_mode.py)."""

import torch

from course_lib.nn.vae import AutoencoderKL, VAEConfig

# Tiny configurations as diffusers AutoencoderKL keyword arguments, with an input size (H, W).
CONFIGS = {
    "tiny": (
        dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, latent_channels=4),
        (8, 12),
    ),
    # SD v1.x's block structure (4 levels, f = 8, 2 resnets per block) at reduced width
    "sd15_structure": (
        dict(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=4, latent_channels=4),
        (24, 16),
    ),
    # one-channel images, no mid-block attention, no quant convs
    "no_attention_no_quant_convs": (
        dict(in_channels=1, out_channels=1, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=2, norm_num_groups=4, latent_channels=2,
             mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False),
        (8, 8),
    ),
}


def tiny_vae(name="tiny", seed=0) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL of CONFIGS[name], seeded, in eval mode."""
    torch.manual_seed(seed)
    return AutoencoderKL(VAEConfig(**CONFIGS[name][0])).eval()
