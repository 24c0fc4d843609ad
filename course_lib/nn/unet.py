"""The denoising UNet eps_theta(x_t, t, y): one class for every lesson.

The same ``UNet2DConditionModel`` is the small class-conditional digits model of lessons 02-05
(no cross-attention; y is a class label whose embedding is added to the time embedding) and
the latent text-to-image UNet of lessons 07-10 (y is a prompt read through cross-attention),
up to Stable Diffusion v1.x itself. Module names follow diffusers' ``UNet2DConditionModel``, so
a diffusers model's ``state_dict()`` loads into ours with ``strict=True`` and back, and SD
checkpoints load by key.

Layout (C0 = block_out_channels[0], time_embed_dim = 4 * C0):

    sample (B, in_channels, H, W)
      conv_in                          -> (B, C0, H, W)
      down_blocks[i]  resnets (+ attentions), then a stride-2 conv except in the last block
      mid_block       resnet (+ attention + resnet)
      up_blocks[i]    resnets on [h, skip] concatenated (+ attentions), then 2x upsampling
      conv_norm_out, conv_act, conv_out -> (B, out_channels, H, W)
    timestep t -> time_proj (sinusoids, B x C0) -> time_embedding (MLP) -> emb (B, time_embed_dim)
    class_labels y -> class_embedding (B, time_embed_dim), added to emb
    emb enters every ResnetBlock2D; encoder_hidden_states enter every Transformer2DModel.

diffusers block type -> class here:

    "DownBlock2D" / "CrossAttnDownBlock2D"                 DownBlock2D (with attentions for CrossAttn)
    "UpBlock2D" / "CrossAttnUpBlock2D"                     UpBlock2D   (with attentions for CrossAttn)
    "UNetMidBlock2DCrossAttn" / "UNetMidBlock2D" / None    MidBlock2D  (UNetMidBlock2D inside
        diffusers' UNet2DConditionModel is a single ResnetBlock2D without attention) / no mid block

The building blocks (ResnetBlock2D, Timesteps, TimestepEmbedding, Downsample2D, Upsample2D) take
a few explicit arguments so other networks (the noise-aware classifier of lesson 04) reuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_finite, check_floating
from .attention import Transformer2DModel
from .config import NetworkConfig

__all__ = [
    "timestep_embedding",
    "Timesteps",
    "TimestepEmbedding",
    "ResnetBlock2D",
    "Downsample2D",
    "Upsample2D",
    "DownBlock2D",
    "UpBlock2D",
    "MidBlock2D",
    "UNetConfig",
    "UNet2DConditionModel",
]

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}


# ----------------------------------------------------------------------------------------------
# Time embedding


def timestep_embedding(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0, max_period: float = 10000
) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017; DDPM), as diffusers computes it.

    With half = dim // 2 and i = 0 .. half - 1:
        omega_i = max_period^(-i / (half - freq_shift))
        emb(t)  = [cos(t omega_0 .. t omega_{half-1}), sin(t omega_0 .. t omega_{half-1})]
    (sin first when flip_sin_to_cos is False; one zero appended when dim is odd).

    :param t: timesteps, shape (B,), integer or fractional
    :param dim: embedding width (C0 in the UNet)
    :param flip_sin_to_cos: cosines first (True in SD)
    :param freq_shift: the shift s in the exponent's denominator (0 in SD, 1 in the original DDPM)
    :param max_period: the longest period, 10000
    :return: (B, dim) float32
    """
    if t.ndim != 1:
        raise ValueError(
            f"t must be a 1-D tensor of timesteps (B,), got shape {tuple(t.shape)}. Use t.reshape(-1)."
        )
    half = dim // 2
    # omega_i = exp(-ln(max_period) * i / (half - s))
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    omega = torch.exp(exponent / (half - freq_shift))  # (half,)
    angles = t[:, None].float() * omega[None, :]  # (B, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (B, 2*half)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)  # cos first
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class Timesteps(nn.Module):
    """:func:`timestep_embedding` as a module without weights (``time_proj`` in the UNet).

    :param num_channels: embedding width
    :param flip_sin_to_cos: cosines first
    :param freq_shift: the shift s of the frequencies
    """

    def __init__(self, num_channels: int, flip_sin_to_cos: bool = True, freq_shift: float = 0):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) -> (B, num_channels)."""
        return timestep_embedding(t, self.num_channels, self.flip_sin_to_cos, self.freq_shift)


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal features: emb = linear_2(act(linear_1(x))).

    :param in_channels: width of the sinusoidal features
    :param time_embed_dim: output width (4 * C0 in the UNet)
    :param act_fn: activation, one of "silu", "swish", "mish", "gelu", "relu"
    """

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu"):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = ACTIVATIONS[check_choice(act_fn, list(ACTIVATIONS), "act_fn")]()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels) -> (B, time_embed_dim)."""
        return self.linear_2(self.act(self.linear_1(x)))


# ----------------------------------------------------------------------------------------------
# Residual block, down- and upsampling


class ResnetBlock2D(nn.Module):
    """Residual block with the time embedding added between its two convolutions:

        h = conv1(act(norm1(x))) + time_emb_proj(act(emb))[:, :, None, None]
        h = conv2(dropout(act(norm2(h))))
        out = (shortcut(x) + h) / output_scale_factor    shortcut: 1x1 conv if channels change

    :param in_channels: input channels
    :param out_channels: output channels
    :param temb_channels: width of emb; ``None`` for a block without time input (no time_emb_proj)
    :param groups: GroupNorm groups (must divide in_channels and out_channels)
    :param eps: GroupNorm epsilon
    :param dropout: dropout probability before conv2
    :param act_fn: activation, one of "silu", "swish", "mish", "gelu", "relu"
    :param output_scale_factor: divides the output (mid_block_scale_factor in the UNet, usually 1)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        act_fn: str = "silu",
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = ACTIVATIONS[check_choice(act_fn, list(ACTIVATIONS), "act_fn")]()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, in_channels, H, W); emb: (B, temb_channels) or ``None``. Returns (B, out_channels, H, W)."""
        h = self.conv1(self.nonlinearity(self.norm1(x)))  # (B, out, H, W)
        if self.time_emb_proj is not None and emb is not None:
            h = h + self.time_emb_proj(self.nonlinearity(emb))[:, :, None, None]  # (B, out) -> (B, out, 1, 1)
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (shortcut + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    """Halve H and W with a 3x3 convolution of stride 2.

    :param channels: input channels
    :param out_channels: output channels (default: ``channels``)
    :param padding: 1 (SD), or 0 with one extra row and column of zeros on the bottom and right
    """

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H/2, W/2) for even H and W."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # (B, C, H+1, W+1)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Double H and W by nearest-neighbour interpolation, then a 3x3 convolution.

    :param channels: input channels
    :param out_channels: output channels (default: ``channels``)
    """

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------------------------
# UNet blocks. ``transformer`` is a dict of Transformer2DModel arguments (all but in_channels),
# or None for a block without attention ("DownBlock2D", "UpBlock2D", "UNetMidBlock2D").


class DownBlock2D(nn.Module):
    """``num_layers`` x (ResnetBlock2D [+ Transformer2DModel]), then an optional Downsample2D.

    Every intermediate output is kept as a skip connection for the up path.

    :param in_channels: input channels
    :param out_channels: channels of every layer's output
    :param temb_channels: width of the time embedding
    :param num_layers: resnets (and transformers) in the block
    :param add_downsample: end with a stride-2 convolution (all blocks but the last)
    :param downsample_padding: see :class:`Downsample2D`
    :param transformer: Transformer2DModel arguments, or ``None`` (diffusers' "DownBlock2D")
    :param groups, eps, dropout, act_fn: see :class:`ResnetBlock2D`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int = 1,
        add_downsample: bool = True,
        downsample_padding: int = 1,
        transformer: dict | None = None,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        act_fn: str = "silu",
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps, dropout, act_fn)
            for i in range(num_layers)
        )
        if transformer is not None:
            self.attentions = nn.ModuleList(Transformer2DModel(out_channels, **transformer) for _ in range(num_layers))
        else:
            self.attentions = None
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=downsample_padding)])
        else:
            self.downsamplers = None

    def forward(self, x, emb, context=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, C_in, H, W) -> (B, C_out, H', W') and the skips, one per layer (+ the downsampled x)."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb)  # (B, C_out, H, W)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)  # (B, C_out, H/2, W/2)
            skips.append(x)
        return x, skips


class UpBlock2D(nn.Module):
    """``num_layers`` x (concatenate a skip, ResnetBlock2D [+ Transformer2DModel]), then an optional
    Upsample2D. Skips are consumed last first, mirroring the down path.

    :param in_channels: channels of the block's last skip (the output of the down block one level up,
        or of conv_in for the last up block)
    :param prev_output_channel: channels of the incoming x (the previous up block's output)
    :param out_channels: channels of every layer's output (also of the other skips)
    :param temb_channels: width of the time embedding
    :param num_layers: resnets in the block (layers_per_block + 1 in the UNet)
    :param add_upsample: end with 2x upsampling (all blocks but the last)
    :param transformer: Transformer2DModel arguments, or ``None`` (diffusers' "UpBlock2D")
    :param groups, eps, dropout, act_fn: see :class:`ResnetBlock2D`
    """

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int = 1,
        add_upsample: bool = True,
        transformer: dict | None = None,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        act_fn: str = "silu",
    ):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            x_channels = prev_output_channel if i == 0 else out_channels
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnets.append(
                ResnetBlock2D(x_channels + skip_channels, out_channels, temb_channels, groups, eps, dropout, act_fn)
            )
        self.resnets = nn.ModuleList(resnets)
        if transformer is not None:
            self.attentions = nn.ModuleList(Transformer2DModel(out_channels, **transformer) for _ in range(num_layers))
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x, skips: list[torch.Tensor], emb, context=None) -> torch.Tensor:
        """x: (B, C_prev, H, W); skips: ``num_layers`` tensors, used last first. -> (B, C_out, H', W')."""
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1 - i]], dim=1)  # (B, C_x + C_skip, H, W)
            x = resnet(x, emb)  # (B, C_out, H, W)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)  # (B, C_out, 2H, 2W)
        return x


class MidBlock2D(nn.Module):
    """The bottleneck: resnet, then (transformer, resnet) when ``transformer`` is given.

    "UNetMidBlock2DCrossAttn" is resnets.0, attentions.0, resnets.1; "UNetMidBlock2D" inside
    diffusers' UNet2DConditionModel is resnets.0 alone (it is built with num_layers=0 and
    add_attention=False there).

    :param channels: channels in and out
    :param temb_channels: width of the time embedding
    :param transformer: Transformer2DModel arguments, or ``None``
    :param output_scale_factor: divides each resnet's output (mid_block_scale_factor)
    :param groups, eps, dropout, act_fn: see :class:`ResnetBlock2D`
    """

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        transformer: dict | None = None,
        output_scale_factor: float = 1.0,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        act_fn: str = "silu",
    ):
        super().__init__()
        num_resnets = 2 if transformer is not None else 1
        self.resnets = nn.ModuleList(
            ResnetBlock2D(channels, channels, temb_channels, groups, eps, dropout, act_fn, output_scale_factor)
            for _ in range(num_resnets)
        )
        attentions = [Transformer2DModel(channels, **transformer)] if transformer is not None else []
        self.attentions = nn.ModuleList(attentions)

    def forward(self, x, emb, context=None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = self.resnets[0](x, emb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x, context), emb)
        return x


# ----------------------------------------------------------------------------------------------
# Configuration

DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)

# diffusers config keys we do not implement -> the values under which they change nothing.
_FIXED_KEYS = {
    "center_input_sample": (False,),
    "only_cross_attention": (False,),
    "dual_cross_attention": (False,),
    "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,),
}
# diffusers config keys that only matter with an option above switched on: ignored.
_IGNORED_KEYS = ("addition_time_embed_dim", "projection_class_embeddings_input_dim", "addition_embed_type_num_heads")


@dataclass(frozen=True)
class UNetConfig(NetworkConfig):
    """Hyperparameters of :class:`UNet2DConditionModel`; names and defaults are diffusers'.

    The defaults are diffusers' defaults (SD v1.x's layout with cross_attention_dim 1280; SD v1.x
    itself has cross_attention_dim=768, sample_size=64). Per-block settings take one value for all
    blocks or a tuple with one value per down block.
    """

    sample_size: int | tuple[int, int] | None = None  # H (= W) of training samples; informative only
    in_channels: int = 4  # channels of the input x_t (4 latent channels in SD, 1 for digits)
    out_channels: int = 4  # channels of the prediction (eps)
    flip_sin_to_cos: bool = True  # time embedding: cosines first
    freq_shift: int = 0  # time embedding: frequency shift s
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # channels per level, C0 first
    layers_per_block: int | tuple[int, ...] = 2  # resnets per down block (up blocks have one more)
    downsample_padding: int = 1  # 1, or 0 with asymmetric padding
    mid_block_scale_factor: float = 1  # mid resnets divide their output by this
    dropout: float = 0.0  # dropout inside every ResnetBlock2D
    act_fn: str = "silu"
    norm_num_groups: int = 32  # GroupNorm groups everywhere
    norm_eps: float = 1e-5  # GroupNorm epsilon of the resnets and conv_norm_out
    cross_attention_dim: int = 1280  # channels D of encoder_hidden_states (768 for SD v1.x's CLIP)
    transformer_layers_per_block: int | tuple[int, ...] = 1  # transformer blocks per Transformer2DModel
    # NAMING QUIRK kept from diffusers: when num_attention_heads is None, attention_head_dim is the
    # NUMBER OF HEADS (SD v1.x: 8 heads; SD 2.x: (5, 10, 20, 20)); each head has C // heads channels.
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None  # if set, the number of heads (wins)
    use_linear_projection: bool = False  # Linear instead of 1x1 conv in proj_in/proj_out (SD 2.x)
    num_class_embeds: int | None = None  # class embedding rows (digits: 10 classes + 1 null class)
    upcast_attention: bool = False  # attention in float32 under float16/bfloat16

    config_name: ClassVar[str] = "UNet"
    size_keys: ClassVar[dict[str, str]] = {
        "in_channels": "width", "out_channels": "width", "block_out_channels": "width", "norm_num_groups": "width",
        "cross_attention_dim": "width", "attention_head_dim": "width", "num_attention_heads": "width",
        "layers_per_block": "layers", "transformer_layers_per_block": "layers", "num_class_embeds": "classes",
    }
    size_hints: ClassVar[dict[str, str]] = {
        "num_class_embeds": "For classifier-free guidance use the number of classes + 1 (the last is the null "
                            "class); None for no class embedding.",
    }
    main_size_keys: ClassVar[tuple[str, ...]] = ("block_out_channels", "layers_per_block",
                                                 "transformer_layers_per_block", "cross_attention_dim")

    # -- derived quantities ------------------------------------------------------------------

    @property
    def num_levels(self) -> int:
        """Number of resolutions (down blocks)."""
        return len(self.block_out_channels)

    @property
    def num_downsamples(self) -> int:
        """How often H and W are halved; inputs must be divisible by 2 ** num_downsamples."""
        return self.num_levels - 1

    @property
    def time_embed_dim(self) -> int:
        """Width of the time (and class) embedding: 4 * C0."""
        return 4 * self.block_out_channels[0]

    @property
    def has_cross_attention(self) -> bool:
        """Whether the model reads encoder_hidden_states."""
        return "CrossAttnDownBlock2D" in self.down_block_types or "CrossAttnUpBlock2D" in self.up_block_types \
            or self.mid_block_type == "UNetMidBlock2DCrossAttn"

    def per_block(self, name: str) -> tuple:
        """Setting ``name`` as a tuple with one entry per down block."""
        value = getattr(self, name)
        return tuple(value) if isinstance(value, tuple) else (value,) * self.num_levels

    def heads_per_block(self) -> tuple[int, ...]:
        """Attention heads per down block: num_attention_heads or, as in diffusers, attention_head_dim."""
        return self.per_block("num_attention_heads" if self.num_attention_heads is not None else "attention_head_dim")

    # -- dict round trip -----------------------------------------------------------------------

    @classmethod
    def _translate(cls, config: dict) -> dict:
        """diffusers' UNet options this UNet does not implement: refused unless neutral, then dropped."""
        config = dict(config)
        for key, allowed in _FIXED_KEYS.items():
            if key not in config:
                continue
            value = config.pop(key)
            values = value if isinstance(value, (list, tuple)) and key == "only_cross_attention" else [value]
            if any(v not in allowed for v in values):
                raise ValueError(
                    f"UNet config {key}={value!r} is not supported by course_lib's UNet "
                    f"(it implements only {key}={allowed[0]!r}). Use a Stable Diffusion v1.x/v2.x-style "
                    f"config, or set {key} to {allowed[0]!r}."
                )
        for key in _IGNORED_KEYS:
            config.pop(key, None)
        return config

    def build(self) -> "UNet2DConditionModel":
        return UNet2DConditionModel(self)

    def _validate(self):
        n = self.num_levels
        for name in ("layers_per_block", "transformer_layers_per_block", "attention_head_dim", "num_attention_heads"):
            values = self.per_block(name)
            if name == "num_attention_heads" and self.num_attention_heads is None:
                continue
            if len(values) != n:
                raise ValueError(
                    f"UNet config {name} must be a positive integer or a tuple of {n} of them (one per down "
                    f"block), got {getattr(self, name)!r}."
                )
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"UNet config needs one down and one up block type per entry of block_out_channels "
                f"({n}), got {len(self.down_block_types)} down_block_types and {len(self.up_block_types)} "
                f"up_block_types. Make the three tuples the same length."
            )
        for block_type in self.down_block_types:
            check_choice(block_type, DOWN_BLOCK_TYPES, "down block type")
        for block_type in self.up_block_types:
            check_choice(block_type, UP_BLOCK_TYPES, "up block type")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            raise ValueError(f"Unknown mid_block_type {self.mid_block_type!r}. Expected one of {MID_BLOCK_TYPES}.")
        check_choice(self.act_fn, list(ACTIVATIONS), "act_fn")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"UNet config downsample_padding must be 0 or 1, got {self.downsample_padding!r}.")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"UNet config norm_num_groups={self.norm_num_groups} must divide every entry of "
                    f"block_out_channels={self.block_out_channels}; {channels} is not divisible. "
                    f"Pick widths that are multiples of norm_num_groups."
                )
        heads = self.heads_per_block()
        attention_levels = [i for i, t in enumerate(self.down_block_types) if t.startswith("CrossAttn")]
        attention_levels += [n - 1 - i for i, t in enumerate(self.up_block_types) if t.startswith("CrossAttn")]
        if self.mid_block_type == "UNetMidBlock2DCrossAttn":
            attention_levels.append(n - 1)
        for i in sorted(set(attention_levels)):
            # the up block at level i uses heads[i] too (diffusers reverses the tuple)
            if self.block_out_channels[i] % heads[i]:
                raise ValueError(
                    f"UNet config: {self.block_out_channels[i]} channels at level {i} cannot be split into "
                    f"{heads[i]} attention heads (attention_head_dim / num_attention_heads). Use a number "
                    f"of heads that divides the channel count."
                )


# ----------------------------------------------------------------------------------------------
# The model


class UNet2DConditionModel(nn.Module):
    """eps_theta(x_t, t, y): the UNet of every lesson, diffusers-compatible by state_dict key.

    :param config: a :class:`UNetConfig` (``UNetConfig.from_dict(d)`` for a diffusers config dict)

    Attribute ``check_values`` (default True): also run the input checks that read tensor values
    (NaN/inf in the sample, class labels in range). They make the CPU wait for the GPU once per call;
    set it to False when timing on a GPU. They are skipped under ``torch.compile``.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(
                f"config must be a UNetConfig, got {type(config).__name__}. "
                f"For a dict (e.g. diffusers' config.json) use UNetConfig.from_dict(d)."
            )
        self.config = config
        self.check_values = True
        c = config
        n = c.num_levels
        channels = c.block_out_channels
        heads = c.heads_per_block()
        layers = c.per_block("layers_per_block")
        transformer_layers = c.per_block("transformer_layers_per_block")
        time_embed_dim = c.time_embed_dim
        resnet_args = dict(groups=c.norm_num_groups, eps=c.norm_eps, dropout=c.dropout, act_fn=c.act_fn)

        def transformer_args(block_type: str | None, level: int) -> dict | None:
            """Transformer2DModel arguments for a cross-attention block at ``level``, else None."""
            if block_type not in ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D", "UNetMidBlock2DCrossAttn"):
                return None
            return dict(
                num_attention_heads=heads[level],
                cross_attention_dim=c.cross_attention_dim,
                num_layers=transformer_layers[level],
                norm_num_groups=c.norm_num_groups,
                use_linear_projection=c.use_linear_projection,
                upcast_attention=c.upcast_attention,
            )

        # input and embeddings
        self.conv_in = nn.Conv2d(c.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim, c.act_fn)
        self.class_embedding = nn.Embedding(c.num_class_embeds, time_embed_dim) if c.num_class_embeds else None

        # down path: level i works at resolution H / 2^i with channels[i]
        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(c.down_block_types):
            self.down_blocks.append(
                DownBlock2D(
                    channels[max(i - 1, 0)], channels[i], time_embed_dim, layers[i],
                    add_downsample=i < n - 1, downsample_padding=c.downsample_padding,
                    transformer=transformer_args(block_type, i), **resnet_args,
                )
            )

        # bottleneck
        if c.mid_block_type is None:
            self.mid_block = None
        else:
            self.mid_block = MidBlock2D(
                channels[-1], time_embed_dim, transformer_args(c.mid_block_type, n - 1),
                output_scale_factor=c.mid_block_scale_factor, **resnet_args,
            )

        # up path: up block i works at level n - 1 - i, from the bottom up
        self.up_blocks = nn.ModuleList()
        for i, block_type in enumerate(c.up_block_types):
            level = n - 1 - i
            self.up_blocks.append(
                UpBlock2D(
                    in_channels=channels[max(level - 1, 0)],  # the last skip: one level up, or conv_in
                    prev_output_channel=channels[min(level + 1, n - 1)],  # x coming from below
                    out_channels=channels[level],
                    temb_channels=time_embed_dim,
                    num_layers=layers[level] + 1,
                    add_upsample=level > 0,
                    transformer=transformer_args(block_type, level),
                    **resnet_args,
                )
            )

        # output
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, channels[0], eps=c.norm_eps)
        self.conv_act = ACTIVATIONS[c.act_fn]()
        self.conv_out = nn.Conv2d(channels[0], c.out_channels, kernel_size=3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Predict the noise eps_theta(x_t, t, y).

        :param sample: x_t, (B, in_channels, H, W), H and W divisible by 2 ** config.num_downsamples
        :param timestep: t, an int, a 0-d tensor or a (B,) tensor (a single t is used for the batch)
        :param encoder_hidden_states: prompt tokens c, (B, L, cross_attention_dim); required exactly
            when the model has cross-attention blocks
        :param class_labels: y, integer (B,) tensor (or an int) in [0, num_class_embeds); required
            exactly when the model has a class embedding
        :return: (B, out_channels, H, W)
        """
        timesteps, class_labels = self._check_inputs(sample, timestep, encoder_hidden_states, class_labels)
        context = encoder_hidden_states

        # 1. time embedding: t -> sinusoids (B, C0) -> MLP -> emb (B, 4*C0)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        # 2. class conditioning: emb = emb(t) + E[y]
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels).to(sample.dtype)

        # 3. down path, keeping every intermediate output as a skip
        h = self.conv_in(sample)  # (B, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)
            skips.extend(block_skips)

        # 4. bottleneck at (H, W) / 2^num_downsamples
        if self.mid_block is not None:
            h = self.mid_block(h, emb, context)

        # 5. up path, each block consuming as many skips as it has resnets, last first
        for block in self.up_blocks:
            n = len(block.resnets)
            skips, block_skips = skips[:-n], skips[-n:]
            h = block(h, block_skips, emb, context)

        # 6. output: (B, C0, H, W) -> (B, out_channels, H, W)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))

    def _check_inputs(self, sample, timestep, encoder_hidden_states, class_labels):
        """Check the arguments of forward; return timesteps and class labels as (B,) tensors."""
        c = self.config
        check_floating(sample, "sample")
        if sample.ndim != 4 or sample.shape[1] != c.in_channels:
            raise ValueError(
                f"sample has shape {tuple(sample.shape)}, expected (B, {c.in_channels}, H, W): this UNet "
                f"was built with in_channels={c.in_channels}. Pass a batch of {c.in_channels}-channel images "
                f"or latents (add a batch dimension with x[None] for a single one)."
            )
        B, _, H, W = sample.shape
        factor = 2 ** c.num_downsamples
        if H % factor or W % factor:
            raise ValueError(
                f"sample is {H}x{W}, but this UNet halves height and width {c.num_downsamples} times, so both "
                f"must be divisible by {factor}. Resize or pad to "
                f"{math.ceil(H / factor) * factor}x{math.ceil(W / factor) * factor}."
            )
        timesteps = self._broadcast(timestep, B, sample.device, "timestep")

        if c.has_cross_attention:
            if encoder_hidden_states is None:
                raise ValueError(
                    f"This UNet has cross-attention and needs encoder_hidden_states of shape "
                    f"(B, L, {c.cross_attention_dim}): pass the text encoder's last hidden state "
                    f"(for classifier-free guidance, the empty prompt's for the unconditional half)."
                )
            check_floating(encoder_hidden_states, "encoder_hidden_states")
            shape = tuple(encoder_hidden_states.shape)
            if len(shape) != 3 or shape[0] != B or shape[2] != c.cross_attention_dim:
                raise ValueError(
                    f"encoder_hidden_states has shape {shape}, expected ({B}, L, {c.cross_attention_dim}): "
                    f"the batch must match sample's ({B}) and the last dimension must be "
                    f"cross_attention_dim={c.cross_attention_dim}, the hidden size of the text encoder this "
                    f"UNet was trained with. Repeat the prompt embeddings to the batch size, or use that encoder."
                )
        elif encoder_hidden_states is not None:
            raise ValueError(
                "This UNet has no cross-attention blocks, so it cannot use encoder_hidden_states. Pass "
                "encoder_hidden_states=None" + (" and condition with class_labels." if c.num_class_embeds else ".")
            )

        if c.num_class_embeds is not None:
            if class_labels is None:
                raise ValueError(
                    f"This UNet has a class embedding (num_class_embeds={c.num_class_embeds}) and needs "
                    f"class_labels: an integer tensor (B,) with values in [0, {c.num_class_embeds - 1}]. "
                    f"For the unconditional prediction pass the null class (the last index, "
                    f"{c.num_class_embeds - 1}, if the model was trained with label dropout)."
                )
            class_labels = self._broadcast(class_labels, B, sample.device, "class_labels")
            if class_labels.is_floating_point() or class_labels.dtype == torch.bool:
                raise ValueError(
                    f"class_labels must be integers, got dtype {class_labels.dtype}. Use class_labels.long()."
                )
        elif class_labels is not None:
            raise ValueError(
                "This UNet has no class embedding (num_class_embeds=None), so it cannot use class_labels. "
                "Pass class_labels=None, or build the model with num_class_embeds set."
            )

        if self.check_values and not torch.compiler.is_compiling():
            check_finite(sample, "sample")
            if class_labels is not None:
                low, high = int(class_labels.min()), int(class_labels.max())
                if low < 0 or high >= c.num_class_embeds:
                    raise ValueError(
                        f"class_labels must lie in [0, {c.num_class_embeds - 1}] (num_class_embeds="
                        f"{c.num_class_embeds}), got values from {low} to {high}."
                    )
        return timesteps, class_labels

    @staticmethod
    def _broadcast(value, batch_size: int, device, name: str) -> torch.Tensor:
        """An int / float, a 0-d or (1,) tensor or a (B,) tensor -> a (B,) tensor on ``device``."""
        if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
            raise TypeError(
                f"{name} must be an int or a tensor of shape (B,), got {type(value).__name__}."
            )
        if not isinstance(value, torch.Tensor):
            value = torch.tensor([value], device=device)
        if value.ndim == 0:
            value = value[None]
        if value.ndim != 1 or value.shape[0] not in (1, batch_size):
            raise ValueError(
                f"{name} must be a single value or have shape ({batch_size},) to match the batch of "
                f"sample, got shape {tuple(value.shape)}."
            )
        # non_blocking: a copy from the host that does not make the host wait for the GPU's queue
        return value.to(device, non_blocking=True).expand(batch_size)
