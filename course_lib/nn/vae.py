"""The KL autoencoder of latent diffusion (lesson 06): images x <-> latents z.

Stable Diffusion does not denoise pixels. An autoencoder, trained once and then frozen, maps an
image x (B, 3, H, W) to a latent z (B, 4, H/8, W/8) and back; the UNet works on z, which holds
48x fewer numbers than x (8 * 8 * 3 / 4). The encoder E does not output one z but a diagonal
Gaussian q(z | x) = N(mu, diag(sigma^2)), and training adds a small KL term that keeps q(z | x)
close to N(0, I), hence "KL autoencoder" (Rombach et al. 2022, sec. 3 and appendix G).

Notation (code name -> symbol):

    x                  the image, (B, in_channels, H, W), values in [-1, 1]
    mean, logvar       mu and log sigma^2 of q(z | x), (B, latent_channels, H/f, W/f)
    f                  downsampling factor 2 ** (len(block_out_channels) - 1)  (8 in SD)
    z                  a latent: mu (mode) or mu + sigma * eps (sample)
    scaling_factor     s; the UNet sees s * z so that its latents have about unit variance
                       (SD v1.x: s = 0.18215). encode/decode do NOT apply s, as in diffusers.

Layout (C = block_out_channels, n = len(C)):

    encoder:  conv_in (3 -> C[0]) -> down_blocks[i] (resnets, then a stride-2 conv except the last)
              -> mid_block (resnet, self-attention, resnet) -> GroupNorm, SiLU, conv_out (-> 2 * latent)
    quant_conv       1x1 conv on [mu, log sigma^2]
    post_quant_conv  1x1 conv on z
    decoder:  conv_in (latent -> C[-1]) -> mid_block -> up_blocks[i] (resnets, then 2x upsampling
              except the last) -> GroupNorm, SiLU, conv_out (-> out_channels)

Module names are diffusers' ``AutoencoderKL`` (encoder.down_blocks.0.resnets.0.conv1, ...,
encoder.mid_block.attentions.0.to_q, quant_conv, ...), so a diffusers model's ``state_dict()``
loads into ours with ``strict=True`` and back, and SD v1.x's VAE weights load by key. The blocks
are the UNet's (course_lib.nn.unet): ResnetBlock2D without a time input, Downsample2D with
padding 0, Upsample2D; the attention is course_lib.nn.attention.Attention with one head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..checks import check_choice, check_finite, check_floating
from ..samplers import randn_tensor
from .attention import Attention
from .config import NetworkConfig
from .unet import ACTIVATIONS, Downsample2D, ResnetBlock2D, Upsample2D

__all__ = [
    "DiagonalGaussianDistribution",
    "SpatialSelfAttention",
    "DownEncoderBlock2D",
    "UpDecoderBlock2D",
    "VAEMidBlock2D",
    "Encoder",
    "Decoder",
    "VAEConfig",
    "AutoencoderKL",
]

# GroupNorm epsilon everywhere in diffusers' Encoder and Decoder (not a config option there).
NORM_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# The posterior q(z | x)


class DiagonalGaussianDistribution:
    """q(z | x) = N(mu, diag(sigma^2)), read from the encoder's output, as diffusers does.

    :param parameters: [mu, log sigma^2] stacked along channels, (B, 2 * C_z, h, w)

    Attributes: ``mean`` mu and ``logvar`` log sigma^2 (clamped to [-30, 20] as in diffusers, so
    that sigma^2 neither underflows to 0 nor overflows), ``std`` sigma, ``var`` sigma^2; each
    (B, C_z, h, w).
    """

    def __init__(self, parameters: torch.Tensor):
        check_floating(parameters, "parameters")
        if parameters.ndim != 4 or parameters.shape[1] % 2:
            raise ValueError(
                f"parameters has shape {tuple(parameters.shape)}, expected (B, 2 * C_z, h, w): the mean "
                f"and the log-variance stacked along dimension 1, so an even number of channels. Pass "
                f"the output of the encoder (after quant_conv), e.g. torch.cat([mean, logvar], dim=1)."
            )
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, C_z, h, w) each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        # sigma = exp(log sigma^2 / 2),  sigma^2 = exp(log sigma^2)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ q(z | x) by reparameterisation; the noise is drawn exactly as diffusers draws it.

        :param generator: a torch.Generator for eps (a CPU generator also works for GPU tensors)
        :return: z, (B, C_z, h, w)
        """
        eps = randn_tensor(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        # z = mu + sigma * eps,  eps ~ N(0, I)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely z, mu (what SD's img2img and the reconstruction use). (B, C_z, h, w)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z | x) || N(0, I)) per image, summed over C_z, h, w; shape (B,).

        For one coordinate, KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2).
        """
        # KL = 1/2 sum_{c,h,w} (mu^2 + sigma^2 - 1 - log sigma^2)
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])

    def __repr__(self) -> str:
        return f"DiagonalGaussianDistribution(mean shape {tuple(self.mean.shape)})"


# ----------------------------------------------------------------------------------------------
# Blocks


class SpatialSelfAttention(Attention):
    """Single-head self-attention over the H*W positions of a feature map, with a residual:

        out = x + to_out(Attention(GroupNorm(x)))        tokens: (B, C, H, W) -> (B, H*W, C)

    diffusers builds this as ``Attention(..., norm_num_groups, residual_connection=True,
    bias=True)`` in the VAE's mid block; the names group_norm, to_q, to_k, to_v, to_out.0 are its.
    Checkpoints saved by older diffusers versions (SD v1.x's 2022 uploads among them) call them query,
    key, value, proj_attn: those keys are renamed when loading, as diffusers does.

    :param channels: channels C of the feature map (the token width)
    :param groups: GroupNorm groups
    :param eps: GroupNorm epsilon
    :param heads: attention heads (1 in the VAE: diffusers' attention_head_dim = C)
    """

    _LEGACY_NAMES = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}

    def __init__(self, channels: int, groups: int = 32, eps: float = NORM_EPS, heads: int = 1):
        super().__init__(channels, None, heads=heads, dim_head=channels // heads, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.group_norm(x)
        h = h.reshape(B, C, H * W).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        h = super().forward(h)  # (B, H*W, C)
        h = h.transpose(1, 2).reshape(B, C, H, W)  # (B, H*W, C) -> (B, C, H, W)
        return x + h

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._LEGACY_NAMES.items():
            for name in ("weight", "bias"):
                if prefix + old + name in state_dict:
                    state_dict[prefix + new + name] = state_dict.pop(prefix + old + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DownEncoderBlock2D(nn.Module):
    """``num_layers`` ResnetBlock2D (no time input), then an optional stride-2 Downsample2D.

    :param in_channels: input channels
    :param out_channels: output channels of every resnet
    :param num_layers: resnets (layers_per_block)
    :param add_downsample: halve H and W at the end (every block but the last)
    :param groups: GroupNorm groups
    :param act_fn: activation of the resnets
    """

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool,
                 groups: int = 32, act_fn: str = "silu"):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, NORM_EPS, act_fn=act_fn)
            for i in range(num_layers)
        )
        # padding 0 plus one row and column of zeros at the bottom and right, as diffusers' VAE
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/2, W/2), or (B, C_out, H, W) without downsampling."""
        for resnet in self.resnets:
            x = resnet(x)  # (B, C_out, H, W)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)  # (B, C_out, H/2, W/2)
        return x


class UpDecoderBlock2D(nn.Module):
    """``num_layers`` ResnetBlock2D (no time input, no skip connections), then optional 2x upsampling.

    :param in_channels: input channels
    :param out_channels: output channels of every resnet
    :param num_layers: resnets (layers_per_block + 1 in the decoder)
    :param add_upsample: double H and W at the end (every block but the last)
    :param groups: GroupNorm groups
    :param act_fn: activation of the resnets
    """

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_upsample: bool,
                 groups: int = 32, act_fn: str = "silu"):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, NORM_EPS, act_fn=act_fn)
            for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, 2h, 2w), or (B, C_out, h, w) without upsampling."""
        for resnet in self.resnets:
            x = resnet(x)  # (B, C_out, h, w)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)  # (B, C_out, 2h, 2w)
        return x


class VAEMidBlock2D(nn.Module):
    """The bottleneck of encoder and decoder: resnet, self-attention, resnet (diffusers'
    ``UNetMidBlock2D`` as the VAE builds it; without attention: two resnets).

    :param channels: channels in and out
    :param add_attention: put a :class:`SpatialSelfAttention` between the resnets
    :param groups: GroupNorm groups
    :param act_fn: activation of the resnets
    """

    def __init__(self, channels: int, add_attention: bool = True, groups: int = 32, act_fn: str = "silu"):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(channels, channels, None, groups, NORM_EPS, act_fn=act_fn) for _ in range(2)
        )
        attentions = [SpatialSelfAttention(channels, groups, NORM_EPS)] if add_attention else []
        self.attentions = nn.ModuleList(attentions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """E: image x (B, in_channels, H, W) -> [mu, log sigma^2] (B, 2 * latent_channels, H/f, W/f).

    :param config: the autoencoder's :class:`VAEConfig`
    """

    def __init__(self, config: "VAEConfig"):
        super().__init__()
        c = config
        channels = c.block_out_channels
        n = len(channels)
        self.conv_in = nn.Conv2d(c.in_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(channels[max(i - 1, 0)], channels[i], c.layers_per_block,
                               add_downsample=i < n - 1, groups=c.norm_num_groups, act_fn=c.act_fn)
            for i in range(n)
        )
        self.mid_block = VAEMidBlock2D(channels[-1], c.mid_block_add_attention, c.norm_num_groups, c.act_fn)
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, channels[-1], eps=NORM_EPS)
        self.conv_act = nn.SiLU()  # SiLU whatever act_fn is, as in diffusers
        self.conv_out = nn.Conv2d(channels[-1], 2 * c.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, C[0], H, W)
        for block in self.down_blocks:
            h = block(h)  # halves H and W in all but the last block -> (B, C[-1], H/f, W/f)
        h = self.mid_block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))  # (B, 2 * latent_channels, H/f, W/f)


class Decoder(nn.Module):
    """D: latent z (B, latent_channels, h, w) -> image (B, out_channels, h * f, w * f).

    :param config: the autoencoder's :class:`VAEConfig`
    """

    def __init__(self, config: "VAEConfig"):
        super().__init__()
        c = config
        channels = tuple(reversed(c.block_out_channels))  # deepest level first
        n = len(channels)
        self.conv_in = nn.Conv2d(c.latent_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = VAEMidBlock2D(channels[0], c.mid_block_add_attention, c.norm_num_groups, c.act_fn)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(channels[max(i - 1, 0)], channels[i], c.layers_per_block + 1,
                             add_upsample=i < n - 1, groups=c.norm_num_groups, act_fn=c.act_fn)
            for i in range(n)
        )
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, channels[-1], eps=NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[-1], c.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, C[-1], h, w)
        h = self.mid_block(h)
        for block in self.up_blocks:
            h = block(h)  # doubles H and W in all but the last block -> (B, C[0], h * f, w * f)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))  # (B, out_channels, h * f, w * f)


# ----------------------------------------------------------------------------------------------
# Configuration

# diffusers config keys we do not implement -> the value under which they change nothing.
_FIXED_KEYS = {"shift_factor": None, "latents_mean": None, "latents_std": None}


@dataclass(frozen=True)
class VAEConfig(NetworkConfig):
    """Hyperparameters of :class:`AutoencoderKL`; names and defaults are diffusers'.

    diffusers' defaults describe a one-level toy; SD v1.x's VAE is
    ``VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)``.
    """

    in_channels: int = 3  # channels of the image x
    out_channels: int = 3  # channels of the reconstruction
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)  # one per level
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)  # one per level
    block_out_channels: tuple[int, ...] = (64,)  # channels per level, finest first
    layers_per_block: int = 1  # resnets per encoder block (decoder blocks have one more)
    act_fn: str = "silu"  # activation inside the resnets
    latent_channels: int = 4  # channels C_z of the latent z
    norm_num_groups: int = 32  # GroupNorm groups everywhere
    sample_size: int | tuple[int, int] = 32  # image size it was trained at; informative only
    scaling_factor: float = 0.18215  # s: the UNet sees s * z (SD v1.x: 0.18215)
    force_upcast: bool = True  # diffusers' config key (read by its SDXL pipelines only); informative here
    mid_block_add_attention: bool = True  # self-attention in the mid blocks
    use_quant_conv: bool = True  # 1x1 conv after the encoder
    use_post_quant_conv: bool = True  # 1x1 conv before the decoder

    config_name: ClassVar[str] = "VAE"
    size_keys: ClassVar[dict[str, str]] = {
        "in_channels": "width", "out_channels": "width", "block_out_channels": "width", "latent_channels": "width",
        "norm_num_groups": "width", "layers_per_block": "layers",
    }
    main_size_keys: ClassVar[tuple[str, ...]] = ("block_out_channels", "layers_per_block")

    @property
    def num_downsamples(self) -> int:
        """How often H and W are halved: len(block_out_channels) - 1."""
        return len(self.block_out_channels) - 1

    @property
    def downsample_factor(self) -> int:
        """f = 2 ** num_downsamples (8 in SD): a latent is (H/f, W/f)."""
        return 2 ** self.num_downsamples

    @classmethod
    def _translate(cls, config: dict) -> dict:
        """shift_factor, latents_mean and latents_std (options of later VAEs such as SD 3's): only None."""
        config = dict(config)
        for key, neutral in _FIXED_KEYS.items():
            value = config.pop(key, neutral)
            if value is not neutral:
                raise ValueError(
                    f"VAE config {key}={value!r} is not supported by course_lib's AutoencoderKL (it "
                    f"implements only {key}={neutral!r}, as in Stable Diffusion v1.x/v2.x VAEs). Use such a "
                    f"config, or set {key} to {neutral!r}."
                )
        return config

    def build(self) -> "AutoencoderKL":
        return AutoencoderKL(self)

    def _validate(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"VAE config needs one down and one up block type per entry of block_out_channels ({n}), "
                f"got {len(self.down_block_types)} down_block_types and {len(self.up_block_types)} "
                f"up_block_types. Make the three tuples the same length."
            )
        for block_type in self.down_block_types:
            check_choice(block_type, ("DownEncoderBlock2D",), "VAE down block type")
        for block_type in self.up_block_types:
            check_choice(block_type, ("UpDecoderBlock2D",), "VAE up block type")
        check_choice(self.act_fn, list(ACTIVATIONS), "act_fn")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"VAE config norm_num_groups={self.norm_num_groups} must divide every entry of "
                    f"block_out_channels={self.block_out_channels}; {channels} is not divisible. "
                    f"Pick widths that are multiples of norm_num_groups."
                )
        s = self.scaling_factor
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"VAE config scaling_factor must be a positive number, got {s!r}.")


# ----------------------------------------------------------------------------------------------
# The model


class AutoencoderKL(nn.Module):
    """The KL autoencoder: ``encode(x)`` gives q(z | x), ``decode(z)`` gives an image back.

    :param config: a :class:`VAEConfig` (``VAEConfig.from_dict(d)`` for diffusers' vae/config.json)

    Attribute ``check_values`` (default True): also check inputs for NaN/inf. The check makes the
    CPU wait for the GPU once per call; set it to False when timing on a GPU. It is skipped under
    ``torch.compile``.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(
                f"config must be a VAEConfig, got {type(config).__name__}. "
                f"For a dict (e.g. diffusers' vae/config.json) use VAEConfig.from_dict(d)."
            )
        self.config = config
        self.check_values = True
        c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1) if c.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """q(z | x) for a batch of images.

        :param x: images, (B, in_channels, H, W) in [-1, 1], H and W divisible by f = 2 ** num_downsamples
        :return: the posterior; ``.mode()`` or ``.sample(generator)`` give z, (B, latent_channels, H/f, W/f)
        """
        c = self.config
        self._check(x, "x", c.in_channels, "images", "in_channels")
        H, W = x.shape[-2:]
        f = c.downsample_factor
        if H % f or W % f:
            raise ValueError(
                f"x is {H}x{W}, but this autoencoder halves height and width {c.num_downsamples} times, so "
                f"both must be divisible by {f}. Resize, crop or pad the images to a multiple of {f}, e.g. "
                f"{math.ceil(H / f) * f}x{math.ceil(W / f) * f}."
            )
        h = self.encoder(x)  # (B, 2 * C_z, H/f, W/f)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return DiagonalGaussianDistribution(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from latents (unscaled: divide the UNet's latents by scaling_factor first).

        :param z: latents, (B, latent_channels, h, w)
        :return: images, (B, out_channels, h * f, w * f), roughly in [-1, 1]
        """
        self._check(z, "z", self.config.latent_channels, "latents", "latent_channels")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reconstruction D(z) with z = mu (default) or z ~ q(z | x).

        :param x: images, (B, in_channels, H, W)
        :param sample_posterior: draw z ~ q(z | x) instead of taking its mode mu
        :param generator: the torch.Generator for that draw
        :return: (B, out_channels, H, W)
        """
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z)

    def _check(self, x, name: str, channels: int, what: str, field: str) -> None:
        check_floating(x, name)
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected (B, {channels}, H, W): this autoencoder was "
                f"built with {field}={channels}. Pass a batch of {channels}-channel {what} (add a batch "
                f"dimension with {name}[None] for a single one)."
            )
        if self.check_values and not torch.compiler.is_compiling():
            check_finite(x, name)
