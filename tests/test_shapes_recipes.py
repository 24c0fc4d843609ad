"""Tests of the shapes recipes (course_lib.recipes) and their losses (course_lib.losses): the judge, the
autoencoder, the tiny CLIP, the latent UNet.

Their losses are checked as formulas; each recipe trains a step or two with tiny networks.
"""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from course_lib import losses, recipes
from course_lib.captions import ATTRIBUTES
from course_lib.checkpoints import load_checkpoint, save_checkpoint
from course_lib.datasets import load_shapes, shapes_attributes
from course_lib.losses import latent_diffusion_loss, shapes_judge_loss, vae_loss
from course_lib.networks import build_network
from course_lib.nn.classifier import split_attribute_logits
from course_lib.nn.unet import UNetConfig
from course_lib.nn.vae import AutoencoderKL, VAEConfig
from course_lib.recipes import RECIPES, encode_latents, latent_scaling_factor
from course_lib.schedules import make_schedule
from course_lib.train import train

TINY_VAE = VAEConfig(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                     block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                     sample_size=64).to_dict()


def test_shapes_attributes_are_the_ids_of_the_dataset_values():
    ds = load_shapes("test", num_images=20)
    ids = shapes_attributes("test", num_images=20)
    for name, values in ATTRIBUTES.items():
        assert [values[i] for i in ids[name].tolist()] == ds[name]


def test_split_attribute_logits_and_the_judge_loss_formula():
    logits = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    heads = split_attribute_logits(logits)
    assert {k: v.shape[1] for k, v in heads.items()} == {"shape": 3, "color": 6, "size": 2, "position": 5}
    assert torch.equal(torch.cat(list(heads.values()), dim=1), logits)
    with pytest.raises(ValueError, match=r"expected \(B, 16\)"):
        split_attribute_logits(torch.zeros(5, 15))

    truth = {"shape": torch.tensor([0, 1, 2, 0, 1]), "color": torch.tensor([5, 4, 3, 2, 1]),
             "size": torch.tensor([0, 1, 0, 1, 0]), "position": torch.tensor([4, 3, 2, 1, 0])}

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    loss = shapes_judge_loss(Fixed(), {"images": torch.zeros(5, 3, 64, 64), **truth}, None, None)
    # L = sum_a -log p_a(y_a | x), each head's softmax over its own values only
    expected = 0.0
    for name, head in heads.items():
        expected += -torch.log_softmax(head, dim=1)[torch.arange(5), truth[name]].mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_vae_loss_is_reconstruction_plus_weighted_kl():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig.from_dict(TINY_VAE))
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    loss = vae_loss(vae, {"images": x}, None, torch.Generator().manual_seed(1), kl_weight=0.5)
    posterior = vae.encode(x)
    z = posterior.sample(torch.Generator().manual_seed(1))  # the same reparameterised draw
    # L = ||x - D(z)||^2 / (C H W) + kl_weight * KL(q(z | x) || N(0, I))
    expected = F.mse_loss(vae.decode(z), x) + 0.5 * posterior.kl().mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    no_kl = vae_loss(vae, {"images": x}, None, torch.Generator().manual_seed(1), kl_weight=0.0)
    assert torch.allclose(no_kl, F.mse_loss(vae.decode(z), x), atol=1e-6)


def test_latent_scaling_factor_gives_unit_variance():
    z = 5.0 * torch.randn(4000, 4, 2, 2, generator=torch.Generator().manual_seed(0)) + 3.0
    s = latent_scaling_factor(z)
    assert abs(s - 0.2) < 0.01
    assert abs((s * z).std().item() - 1.0) < 1e-5


def test_encode_latents_matches_the_posterior_in_batches():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig.from_dict(TINY_VAE)).eval()
    x = torch.rand(7, 3, 64, 64) * 2 - 1
    mean, std = encode_latents(vae, x, batch_size=3)
    posterior = vae.encode(x)
    assert torch.allclose(mean, posterior.mean, atol=1e-6) and torch.allclose(std, posterior.std, atol=1e-6)


class _RecordingUNet(torch.nn.Module):
    """Returns zeros and remembers what it was called with."""

    def forward(self, x_t, t, encoder_hidden_states=None):
        self.states = encoder_hidden_states
        return torch.zeros_like(x_t)


@pytest.mark.parametrize("dropout", [0.0, 0.3, 1.0])
def test_latent_diffusion_loss_caption_dropout(dropout):
    null = torch.full((1, 4, 8), -7.0)
    B = 2000
    batch = {"latent_mean": torch.zeros(B, 4, 2, 2), "latent_std": torch.zeros(B, 4, 2, 2),
             "text_states": torch.ones(B, 4, 8), "null_text_states": null.expand(B, -1, -1)}
    model = _RecordingUNet()
    schedule = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    loss = latent_diffusion_loss(model, batch, schedule, torch.Generator().manual_seed(0), caption_dropout=dropout)
    dropped = (model.states == -7.0).all(dim=(1, 2)).float()
    kept = (model.states == 1.0).all(dim=(1, 2)).float()
    assert torch.equal(dropped + kept, torch.ones(B))  # each example gets its caption or "" whole
    assert abs(dropped.mean().item() - dropout) < 0.04
    # the model predicted 0, so the loss is E[eps^2] = 1
    assert abs(loss.item() - 1.0) < 0.05


def test_latent_diffusion_loss_samples_the_scaled_posterior(monkeypatch):
    seen = {}

    def fake_training_loss(model, z0, schedule, generator=None, **kwargs):
        seen["z0"] = z0
        return z0.sum()

    monkeypatch.setattr(losses, "diffusion_training_loss", fake_training_loss)
    mean = torch.full((5000, 1, 1, 1), 2.0)
    std = torch.full((5000, 1, 1, 1), 0.5)
    latent_diffusion_loss(None, {"latent_mean": mean, "latent_std": std, "text_states": torch.ones(5000, 4, 8),
                                 "null_text_states": torch.zeros(1, 4, 8)}, None, torch.Generator().manual_seed(0))
    # z_0 = s mu + s sigma eps_z: mean 2, std 0.5
    assert abs(seen["z0"].mean().item() - 2.0) < 0.03 and abs(seen["z0"].std().item() - 0.5) < 0.02


@pytest.fixture
def few_shapes(monkeypatch):
    """The recipes' data and evaluations on 64 pictures per split instead of thousands (speed)."""
    real = recipes.shapes_tensors
    monkeypatch.setattr(recipes, "shapes_tensors", lambda split="train", num_images=None: real(split, 64))


@pytest.mark.slow
def test_shapes_vae_recipe_measures_and_stores_the_scaling_factor(tmp_path, few_shapes):
    recipe = replace(RECIPES["shapes-vae"], network_config=TINY_VAE, steps=2, batch_size=2, warmup_steps=1)
    result = train(recipe, out=tmp_path / "vae", progress=False)
    _, config = load_checkpoint(tmp_path / "vae")
    metrics = config["metrics"]
    assert config["network_config"]["scaling_factor"] == metrics["scaling_factor"]
    assert math.isclose(metrics["scaling_factor"] * metrics["latent_std"], 1.0, rel_tol=1e-3)
    assert result.model.config.scaling_factor == metrics["scaling_factor"]
    assert 0 < metrics["psnr_test_db"] < 60 and 0 < metrics["psnr_heldout_db"] < 60


def _tiny_components(folder):
    """Tiny random shapes-vae and shapes-clip checkpoints in ``folder`` (what shapes-ldm builds on)."""
    from course_lib.nn.text import build_caption_tokenizer, tiny_clip_config

    torch.manual_seed(0)
    save_checkpoint(folder / "shapes-vae", build_network("AutoencoderKL", TINY_VAE),
                    {"network": "AutoencoderKL", "network_config": TINY_VAE})
    clip_config = tiny_clip_config(build_caption_tokenizer(), text_hidden_size=8, text_layers=1,
                                   vision_hidden_size=8, vision_layers=1, num_heads=2, projection_dim=8).to_dict()
    save_checkpoint(folder / "shapes-clip", build_network("CLIPModel", clip_config),
                    {"network": "CLIPModel", "network_config": clip_config})


@pytest.mark.slow
def test_shapes_ldm_recipe_trains_on_its_frozen_components(tmp_path, monkeypatch, few_shapes):
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    unet = UNetConfig(sample_size=32, in_channels=4, out_channels=4,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16),
                      layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2).to_dict()
    recipe = replace(RECIPES["shapes-ldm"], network_config=unet, steps=2, batch_size=4, warmup_steps=1)
    with pytest.raises(ValueError, match="train shapes-vae"):
        train(recipe, out=tmp_path / "ldm", progress=False)
    _tiny_components(tmp_path)
    result = train(recipe, out=tmp_path / "ldm", progress=False)
    assert result.step == 2 and all(math.isfinite(v) for v in result.losses)
    _, config = load_checkpoint(tmp_path / "ldm")
    assert config["schedule"]["kind"] == "scaled_linear" and config["loss_args"] == {"caption_dropout": 0.1}
    data = recipe.data()
    vae_config = load_checkpoint(tmp_path / "shapes-vae")[1]["network_config"]
    assert data["latent_mean"].shape == (64, 4, 32, 32) and data["text_states"].shape == (64, 16, 8)
    # the empty caption's states are what the pipeline will use as the unconditional input
    assert recipes.null_text_states().shape == (1, 16, 8)
    assert torch.equal(data["null_text_states"], recipes.null_text_states().expand(64, -1, -1))
    assert vae_config["scaling_factor"] == 0.18215  # not measured: a tiny checkpoint saved by hand


def test_shapes_recipes_are_registered_with_their_networks():
    assert RECIPES["shapes-vae"].network == "AutoencoderKL"
    vae = VAEConfig.from_dict(RECIPES["shapes-vae"].network_config_dict())
    assert vae.downsample_factor == 8 and vae.latent_channels == 4  # 64x64x3 -> 8x8x4, as SD's f = 8
    assert RECIPES["shapes-clip"].network == "CLIPModel"
    clip = RECIPES["shapes-clip"].network_config_dict()
    ldm = UNetConfig.from_dict(RECIPES["shapes-ldm"].network_config_dict())
    assert ldm.cross_attention_dim == clip["text_config"]["hidden_size"]
    assert ldm.in_channels == vae.latent_channels and ldm.sample_size == 64 // vae.downsample_factor
    assert RECIPES["shapes-judge"].network_config["num_classes"] == 16


def test_shapes_clip_recipe_writes_its_tokenizer_beside_the_checkpoint(tmp_path, few_shapes):
    from course_lib.nn.text import build_caption_tokenizer, load_caption_tokenizer, tiny_clip_config

    tiny = tiny_clip_config(build_caption_tokenizer(), text_hidden_size=8, text_layers=1, vision_hidden_size=8,
                            vision_layers=1, num_heads=2, projection_dim=8).to_dict()
    recipe = replace(RECIPES["shapes-clip"], network_config=tiny, steps=1, batch_size=4, warmup_steps=1,
                     evaluate=None)
    train(recipe, out=tmp_path / "shapes-clip", progress=False)
    tokenizer = load_caption_tokenizer(tmp_path / "shapes-tokenizer")
    prompt = "a small red circle in the top left"
    assert tokenizer(prompt)["input_ids"] == build_caption_tokenizer()(prompt)["input_ids"]
