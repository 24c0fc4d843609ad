"""A tiny training recipe for the tests of the loop, the command line and the faults (tiny-ddpm: an 8x8 UNet,
40 random pictures, a few milliseconds per step), and a check that two sets of weights are bit-identical."""

import torch

from course_lib.losses import eps_prediction_loss
from course_lib.nn.unet import UNetConfig
from course_lib.recipes import Recipe

TINY_UNET = UNetConfig(
    sample_size=8, in_channels=1, out_channels=1,
    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2D", block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
).to_dict()


def _tiny_data():
    generator = torch.Generator().manual_seed(0)
    return {"images": torch.rand(40, 1, 8, 8, generator=generator) * 2 - 1, "labels": torch.arange(40) % 10}


TINY = Recipe(
    name="tiny-ddpm", description="a tiny test recipe", network="UNet2DConditionModel", network_config=TINY_UNET,
    data=_tiny_data, loss=eps_prediction_loss,
    schedule={"kind": "linear", "num_train_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02},
    steps=6, batch_size=4, lr=1e-3, warmup_steps=2, seed=7, checkpoint_every=2,
)


def assert_same_weights(a: dict, b: dict) -> None:
    """Two state dicts hold the same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
