"""Tests of course_lib.nn.vae.

Equivalence with diffusers' AutoencoderKL (weights loaded both ways, encode / decode / forward and
the posterior compared in float32), SD v1.5's VAE layout on the meta device, the posterior's
formulas (KL against torch.distributions' closed form, the reparameterised sample), and every
input error.
"""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from course_lib.nn.attention import Attention
from course_lib.nn.vae import AutoencoderKL, DiagonalGaussianDistribution, SpatialSelfAttention, VAEConfig
from course_lib.profiling import count_parameters

from _tiny_vae import CONFIGS, tiny_vae

# Stable Diffusion v1.5's vae/config.json, as published
SD15_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}

TOL = 1e-5


def images(config: VAEConfig, size, batch_size=2, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, config.in_channels, *size, generator=g) * 2 - 1  # in [-1, 1]


def max_diff(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------
# Equivalence with diffusers


def compare_with_diffusers(ours, theirs, x):
    """encode (mean, logvar, std, var, kl, seeded sample), decode and forward agree in float32."""
    with torch.no_grad():
        posterior, expected = ours.encode(x), theirs.encode(x).latent_dist
        for name in ("mean", "logvar", "std", "var"):
            assert max_diff(getattr(posterior, name), getattr(expected, name)) < TOL, name
        assert max_diff(posterior.mode(), expected.mode()) < TOL
        assert torch.allclose(posterior.kl(), expected.kl(), rtol=1e-5, atol=1e-4)
        z = posterior.sample(torch.Generator().manual_seed(7))
        assert max_diff(z, expected.sample(torch.Generator().manual_seed(7))) < TOL

        assert max_diff(ours.decode(z), theirs.decode(z).sample) < TOL
        assert max_diff(ours(x), theirs(x).sample) < TOL
        got = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(3))
        want = theirs(x, sample_posterior=True, generator=torch.Generator().manual_seed(3)).sample
        assert max_diff(got, want) < TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers_both_ways(name):
    diffusers = pytest.importorskip("diffusers")
    kwargs, size = CONFIGS[name]
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(**kwargs).eval()
    config = VAEConfig.from_dict(theirs.config)
    assert config == VAEConfig(**kwargs)
    ours = AutoencoderKL(config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # diffusers -> ours
    x = images(config, size)
    compare_with_diffusers(ours, theirs, x)

    # ours -> diffusers: fresh random weights on our side, loaded strictly into a fresh diffusers model
    ours = tiny_vae(name, seed=1)
    theirs = diffusers.AutoencoderKL(**kwargs).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    compare_with_diffusers(ours, theirs, x)


def test_shapes_follow_the_downsampling_factor():
    vae = tiny_vae("sd15_structure")
    assert vae.config.downsample_factor == 8 and vae.config.num_downsamples == 3
    x = images(vae.config, (24, 16), batch_size=3)
    with torch.no_grad():
        posterior = vae.encode(x)
        assert posterior.mean.shape == (3, 4, 3, 2)  # (B, C_z, H/8, W/8)
        assert vae.decode(posterior.mode()).shape == x.shape
        assert vae(x).shape == x.shape


def test_sd15_vae_config_builds_diffusers_layout_on_meta_device():
    """SD v1.5's full VAE, built without memory: diffusers' state_dict keys and shapes exactly."""
    diffusers = pytest.importorskip("diffusers")
    config = VAEConfig.from_dict(SD15_VAE_CONFIG)
    assert config.scaling_factor == 0.18215 and config.downsample_factor == 8
    with torch.device("meta"):
        ours = AutoencoderKL(config)
        theirs = diffusers.AutoencoderKL.from_config(SD15_VAE_CONFIG)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert count_parameters(ours) == count_parameters(theirs) == 83_653_863
    assert ours_shapes["encoder.down_blocks.1.downsamplers.0.conv.weight"] == (256, 256, 3, 3)
    assert ours_shapes["encoder.mid_block.attentions.0.to_q.bias"] == (512,)
    assert ours_shapes["quant_conv.weight"] == (8, 8, 1, 1)
    assert ours_shapes["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"] == (128, 256, 1, 1)


def test_legacy_attention_key_names_load():
    """Old diffusers checkpoints name the mid-block projections query/key/value/proj_attn."""
    diffusers = pytest.importorskip("diffusers")
    kwargs, size = CONFIGS["tiny"]
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(**kwargs).eval()
    legacy = {}
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    for key, value in theirs.state_dict().items():
        for new, old in renames.items():
            if ".attentions." in key:
                key = key.replace(new, old)
        legacy[key] = value
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    ours = AutoencoderKL(VAEConfig(**kwargs)).eval()
    ours.load_state_dict(legacy, strict=True)
    x = images(ours.config, size)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x).sample) < TOL


def test_mid_block_attention_is_one_head_with_biases_and_a_residual():
    attention = tiny_vae().encoder.mid_block.attentions[0]
    assert isinstance(attention, SpatialSelfAttention) and attention.heads == 1
    assert attention.to_q.bias is not None and attention.to_k.bias is not None
    assert Attention(8).to_q.bias is None  # the UNet's attention keeps no q/k/v bias
    # with a zero output projection the block is the identity (the residual alone)
    torch.nn.init.zeros_(attention.to_out[0].weight)
    torch.nn.init.zeros_(attention.to_out[0].bias)
    x = torch.randn(2, 16, 3, 5)
    assert torch.equal(attention(x), x)


# ----------------------------------------------------------------------------------------------
# The posterior's formulas


def random_parameters(seed=0, shape=(3, 4, 5, 6)) -> torch.Tensor:
    """(B, 2 C_z, h, w): mu ~ N(0, 1), log sigma^2 ~ U(-3, 2)."""
    g = torch.Generator().manual_seed(seed)
    B, C, h, w = shape
    mean = torch.randn(B, C // 2, h, w, generator=g)
    logvar = torch.rand(B, C // 2, h, w, generator=g) * 5 - 3
    return torch.cat([mean, logvar], dim=1)


def test_kl_is_the_closed_form_kl_to_the_standard_normal():
    parameters = random_parameters().double()
    posterior = DiagonalGaussianDistribution(parameters)
    mean, logvar = parameters.chunk(2, dim=1)
    # independently: KL(N(mu, sigma^2) || N(0, 1)) per coordinate from torch.distributions, summed over C, H, W
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros_like(mean), 1.0))
    expected = expected.sum(dim=(1, 2, 3))
    assert posterior.kl().shape == (3,)
    assert torch.allclose(posterior.kl(), expected, rtol=1e-12, atol=1e-12)
    # the KL is zero exactly at q = N(0, I) and positive elsewhere
    assert torch.equal(DiagonalGaussianDistribution(torch.zeros(2, 8, 3, 3)).kl(), torch.zeros(2))
    assert (posterior.kl() > 0).all()


def test_mean_logvar_std_var_and_clamping():
    parameters = random_parameters()
    posterior = DiagonalGaussianDistribution(parameters)
    mean, logvar = parameters.chunk(2, dim=1)
    assert torch.equal(posterior.mean, mean) and torch.equal(posterior.mode(), mean)
    assert torch.allclose(posterior.std, torch.sqrt(logvar.exp()), rtol=1e-6)  # sigma = sqrt(exp(log sigma^2))
    assert torch.allclose(posterior.var, posterior.std**2, rtol=1e-6)
    # log sigma^2 is clamped to [-30, 20]
    extreme = torch.cat([torch.zeros(1, 2, 1, 1), torch.tensor([50.0, -50.0]).view(1, 2, 1, 1)], dim=1)
    clamped = DiagonalGaussianDistribution(extreme)
    assert clamped.logvar.flatten().tolist() == [20.0, -30.0]
    assert torch.isfinite(clamped.var).all() and (clamped.var > 0).all()


def test_sample_is_mean_plus_std_times_seeded_noise():
    parameters = random_parameters()
    posterior = DiagonalGaussianDistribution(parameters)
    z = posterior.sample(torch.Generator().manual_seed(5))
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(z, posterior.mean + posterior.std * eps, atol=1e-6)  # z = mu + sigma eps
    assert torch.equal(z, posterior.sample(torch.Generator().manual_seed(5)))
    # the draws have mean mu and variance sigma^2 (20,000 draws of one coordinate pair)
    one = DiagonalGaussianDistribution(torch.tensor([1.5, -2.0, 0.4, -1.0]).view(1, 4, 1, 1).expand(20000, 4, 1, 1))
    draws = one.sample(torch.Generator().manual_seed(0))  # (20000, 2, 1, 1)
    assert torch.allclose(draws.mean(0).flatten(), torch.tensor([1.5, -2.0]), atol=0.03)
    assert torch.allclose(draws.var(0).flatten(), torch.tensor([0.4, -1.0]).exp(), rtol=0.05)


# ----------------------------------------------------------------------------------------------
# Configuration


def test_config_round_trip_and_frozen():
    config = VAEConfig.from_dict(SD15_VAE_CONFIG)
    assert VAEConfig.from_dict(config.to_dict()) == config
    assert config.block_out_channels == (128, 256, 512, 512)  # lists become tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.latent_channels = 8
    # diffusers' neutral values of options we do not implement are accepted
    assert VAEConfig.from_dict(dict(SD15_VAE_CONFIG, shift_factor=None, latents_mean=None)) == config


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(shift_factor=0.0609), r"shift_factor=0.0609 is not supported.*set shift_factor to None"),
        (dict(latents_mean=[0.1, 0.2, 0.3, 0.4]), r"latents_mean=\[0.1, .*only latents_mean=None"),
        (dict(norm_type="spatial"), r"Unknown VAE config key\(s\) \['norm_type'\]"),
        (dict(down_block_types=["AttnDownEncoderBlock2D"] * 4),
         r"Unknown VAE down block type 'AttnDownEncoderBlock2D'"),
        (dict(up_block_types=["UpBlock2D"] * 4), r"Unknown VAE up block type 'UpBlock2D'"),
        (dict(up_block_types=["UpDecoderBlock2D"] * 3),
         r"one down and one up block type per entry.*got 4 down_block_types and 3"),
        (dict(norm_num_groups=24), r"norm_num_groups=24 must divide.*128 is not divisible"),
        (dict(layers_per_block=0), r"layers_per_block must be a positive integer, got 0"),
        (dict(latent_channels=2.5), r"latent_channels must be a positive integer, got 2.5"),
        (dict(act_fn="tanh"), r"Unknown act_fn 'tanh'.*'silu'"),
        (dict(scaling_factor=0), r"scaling_factor must be a positive number, got 0"),
        (dict(block_out_channels=[]), r"block_out_channels must be a positive integer or a non-empty tuple"),
        (dict(block_out_channels=[32768] * 4), r"block_out_channels=\(32768, .*above the cap of 16384 \(MAX_WIDTH"),
        (dict(layers_per_block=17), r"layers_per_block=17 is above the cap of 16 \(MAX_LAYERS"),
    ],
)
def test_bad_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig.from_dict(dict(SD15_VAE_CONFIG, **overrides))


def test_model_needs_a_config_object():
    with pytest.raises(TypeError, match=r"config must be a VAEConfig, got dict.*VAEConfig.from_dict"):
        AutoencoderKL(SD15_VAE_CONFIG)


# ----------------------------------------------------------------------------------------------
# Input errors


def test_encode_input_errors():
    vae = tiny_vae("sd15_structure")
    with pytest.raises(ValueError, match=r"x has shape \(2, 1, 16, 16\), expected \(B, 3, H, W\).*in_channels=3"):
        vae.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"x has shape \(3, 16, 16\).*x\[None\]"):
        vae.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"x is 12x16.*halves height and width 3 times.*divisible by 8.*16x16"):
        vae.encode(torch.zeros(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r"x is 16x20.*16x24"):
        vae(torch.zeros(1, 3, 16, 20))  # forward checks through encode
    bad = torch.zeros(1, 3, 16, 16)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"x contains 1 non-finite values"):
        vae.encode(bad)
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor, got dtype torch.uint8.*x.float\(\)"):
        vae.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        vae.encode([[0.0]])
    # with check_values off the value check is skipped (the shape checks stay)
    vae.check_values = False
    with torch.no_grad():
        assert vae.encode(bad).mean.shape == (1, 4, 2, 2)


def test_decode_input_errors():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"z has shape \(1, 3, 2, 2\), expected \(B, 4, H, W\).*latent_channels=4"):
        vae.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"z contains 4 non-finite values"):
        vae.decode(torch.full((1, 4, 1, 1), float("inf")))
    with pytest.raises(ValueError, match=r"z must be a floating-point tensor"):
        vae.decode(torch.zeros(1, 4, 2, 2, dtype=torch.long))


def test_posterior_parameter_errors():
    with pytest.raises(ValueError, match=r"parameters has shape \(1, 7, 2, 2\), expected \(B, 2 \* C_z, h, w\).*even"):
        DiagonalGaussianDistribution(torch.zeros(1, 7, 2, 2))
    with pytest.raises(ValueError, match=r"parameters has shape \(8, 2\)"):
        DiagonalGaussianDistribution(torch.zeros(8, 2))
    with pytest.raises(ValueError, match=r"parameters must be a floating-point tensor"):
        DiagonalGaussianDistribution(torch.zeros(1, 8, 2, 2, dtype=torch.int64))
