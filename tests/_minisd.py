"""A tiny, randomly initialised mini Stable Diffusion in a checkpoint folder, for the tests.

The same four things as the real one (``StableDiffusion.from_course("mini-sd")``), made the way
the recipes of course_lib.recipes make them, only small: a caption tokenizer folder, a CLIPModel
(text width 32), an AutoencoderKL of factor 2 and a UNet on 8x8 latents. Shared by
tests/test_pipeline.py and tests/test_cli.py.
"""

from pathlib import Path

import torch

from course_lib.nn.text import build_caption_tokenizer, save_caption_tokenizer, tiny_clip_config
from course_lib.nn.unet import UNetConfig
from course_lib.nn.vae import VAEConfig
from course_lib.checkpoints import save_checkpoint
from course_lib.networks import build_network
from course_lib.recipes import SHAPES_LDM_SCHEDULE

TEXT_WIDTH = 32
VAE_CONFIG = VAEConfig(
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=16,
    scaling_factor=0.5,
).to_dict()
UNET_CONFIG = UNetConfig(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=2,
).to_dict()
IMAGE_SIZE = 16  # 8x8 latents times the VAE's factor 2


def make_mini_sd(folder, seed: int = 0, tokenizer_folder: bool = True) -> Path:
    """Write shapes-tokenizer/, shapes-clip, shapes-vae and shapes-ldm (random weights) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_caption_tokenizer()
    if tokenizer_folder:
        save_caption_tokenizer(tokenizer, folder / "shapes-tokenizer")
    clip_config = tiny_clip_config(tokenizer, text_hidden_size=TEXT_WIDTH, text_layers=1, vision_hidden_size=32,
                                   vision_layers=1, num_heads=2, patch_size=32, projection_dim=16).to_dict()
    parts = {
        "shapes-clip": ("CLIPModel", clip_config, None),
        "shapes-vae": ("AutoencoderKL", VAE_CONFIG, None),
        "shapes-ldm": ("UNet2DConditionModel", UNET_CONFIG, SHAPES_LDM_SCHEDULE),
    }
    for index, (name, (network, config, schedule)) in enumerate(parts.items()):
        torch.manual_seed(seed + index)
        model = build_network(network, config)
        save_checkpoint(folder / name, model, {"network": network, "network_config": config, "schedule": schedule,
                                                "recipe": name, "step": 0})
    return folder
