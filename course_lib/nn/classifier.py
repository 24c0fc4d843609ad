"""Two digit classifiers with two different jobs (lessons 04-05).

    NoisyClassifier   p_φ(y | x_t, t): reads NOISY images x_t at any timestep t. Its gradient
                      ∇_{x_t} log p_φ(y | x_t) is the "adversarial gradient" that classifier
                      guidance adds to the unconditional score (notes, eq. 3-5). It is the encoder
                      half of a UNet (as guided-diffusion's classifier, Dhariwal & Nichol 2021),
                      built from the UNet's own blocks: the same time embedding, ResnetBlock2D
                      and Downsample2D, then global average pooling and a linear layer.
    JudgeClassifier   p(y | x_0): a plain CNN of CLEAN digits, used only to EVALUATE samples
                      (course_lib.metrics: accuracy, Fréchet distance in its feature space).
                      It shares no weights and no code path with the guidance classifier: a judge
                      that guidance had been optimising against would be fooled by exactly the
                      adversarial pixels guidance adds, and would score guided samples too well.

Their training losses are course_lib.losses.noisy_classifier_loss and judge_loss.

Notation (code name -> symbol):

    x_t, t               noisy image x_t at timestep t (x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε)
    labels               class y in {0, ..., K - 1}; K = num_classes
    logits               unnormalised log p(y | ·), (B, K)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..captions import ATTRIBUTES
from ..checks import check_floating, check_int_range, check_timesteps
from .config import NetworkConfig
from .unet import DownBlock2D, MidBlock2D, TimestepEmbedding, Timesteps

__all__ = [
    "ClassifierConfig",
    "NoisyClassifier",
    "JudgeConfig",
    "JudgeClassifier",
    "random_shift",
    "SHAPES_JUDGE_HEADS",
    "split_attribute_logits",
]


# ----------------------------------------------------------------------------------------------
# Argument checks shared by both classifiers


def _check_images(x, name: str, channels: int, size: int, hint: str) -> torch.Tensor:
    check_floating(x, name)
    if x.ndim != 4 or tuple(x.shape[1:]) != (channels, size, size):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, expected (B, {channels}, {size}, {size}). {hint}"
        )
    return x


# ----------------------------------------------------------------------------------------------
# The noise-aware classifier p_φ(y | x_t, t), for classifier guidance


@dataclass(frozen=True)
class ClassifierConfig(NetworkConfig):
    """Hyperparameters of :class:`NoisyClassifier`; the defaults are the digits classifier."""

    in_channels: int = 1  # channels of x_t
    sample_size: int = 16  # H = W of x_t
    num_classes: int = 10  # K
    block_out_channels: tuple[int, ...] = (16, 32)  # channels per resolution; H, W halved after each but the last
    layers_per_block: int = 1  # ResnetBlock2D per resolution
    norm_num_groups: int = 8  # GroupNorm groups (must divide every entry of block_out_channels)
    norm_eps: float = 1e-5  # GroupNorm epsilon
    dropout: float = 0.0  # dropout inside the ResnetBlock2Ds
    flip_sin_to_cos: bool = True  # time embedding as in the UNet: cosines first
    freq_shift: int = 0  # time embedding frequency shift s
    num_train_timesteps: int = 1000  # T of the schedule the classifier is trained with; t in [0, T - 1]

    config_name: ClassVar[str] = "noisy classifier"
    size_keys: ClassVar[dict[str, str]] = {
        "in_channels": "width", "sample_size": "width", "num_classes": "classes", "block_out_channels": "width",
        "layers_per_block": "layers", "norm_num_groups": "width", "num_train_timesteps": "count",
    }
    main_size_keys: ClassVar[tuple[str, ...]] = ("block_out_channels", "layers_per_block")

    def _validate(self):
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"ClassifierConfig.norm_num_groups={self.norm_num_groups} must divide every entry of "
                f"block_out_channels={self.block_out_channels}. Pick widths that are multiples of it."
            )
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.sample_size % factor:
            raise ValueError(
                f"ClassifierConfig.sample_size={self.sample_size} must be divisible by {factor}: the classifier "
                f"halves H and W {len(self.block_out_channels) - 1} times. Use fewer blocks or a larger size."
            )

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding, 4 * C0 as in the UNet."""
        return 4 * self.block_out_channels[0]

    def build(self) -> "NoisyClassifier":
        return NoisyClassifier(self)


class NoisyClassifier(nn.Module):
    """p_φ(y | x_t, t): a classifier of noisy images, the encoder half of the UNet.

    Layout (C_i = block_out_channels[i]):

        x_t (B, in_channels, H, W)
          conv_in                      -> (B, C_0, H, W)
          down_blocks[i]  ResnetBlock2D x layers_per_block, then a stride-2 conv except in the last
          mid_block       one ResnetBlock2D at (H, W) / 2^(levels - 1)
          conv_norm_out, conv_act, mean over H and W -> (B, C_last)
          head (linear)                -> logits (B, num_classes)
        t -> time_proj (sinusoids, B x C_0) -> time_embedding (MLP) -> emb (B, 4 C_0), into every resnet

    :param config: a :class:`ClassifierConfig`
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"config must be a ClassifierConfig, got {type(config).__name__}. "
                            f"Use NoisyClassifier(ClassifierConfig(...)).")
        self.config = c = config
        channels = c.block_out_channels
        resnet_args = dict(groups=c.norm_num_groups, eps=c.norm_eps, dropout=c.dropout)

        self.conv_in = nn.Conv2d(c.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], c.time_embed_dim)
        self.down_blocks = nn.ModuleList(
            DownBlock2D(channels[max(i - 1, 0)], channels[i], c.time_embed_dim, c.layers_per_block,
                        add_downsample=i < len(channels) - 1, **resnet_args)
            for i in range(len(channels))
        )
        self.mid_block = MidBlock2D(channels[-1], c.time_embed_dim, **resnet_args)
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, channels[-1], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.head = nn.Linear(channels[-1], c.num_classes)

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Logits of p_φ(y | x_t, t).

        Differentiable in x_t: classifier guidance takes ∇_{x_t} log softmax(logits)[y].

        :param x_t: noisy images, (B, in_channels, sample_size, sample_size)
        :param t: timesteps in [0, num_train_timesteps - 1]: an int, or a LongTensor (B,) or (1,)
        :return: logits (B, num_classes)
        """
        c = self.config
        _check_images(x_t, "x_t", c.in_channels, c.sample_size,
                      "The classifier was built for this image size (ClassifierConfig.sample_size, in_channels).")
        batch = x_t.shape[0]
        t = check_timesteps(t, c.num_train_timesteps).to(x_t.device).reshape(-1)
        if t.shape[0] not in (1, batch):
            raise ValueError(f"t has {t.shape[0]} timesteps but x_t has {batch} images. "
                             f"Give one timestep per image, or a single one for all.")
        t = t.expand(batch)

        # 1. time embedding: t -> sinusoids (B, C_0) -> MLP -> emb (B, 4 C_0), as in the UNet
        emb = self.time_embedding(self.time_proj(t).to(x_t.dtype))
        # 2. encoder: the UNet's down path and bottleneck
        h = self.conv_in(x_t)  # (B, C_0, H, W)
        for block in self.down_blocks:
            h, _ = block(h, emb)  # (B, C_i, H / 2^i, W / 2^i); skips are not needed
        h = self.mid_block(h, emb)  # (B, C_last, h, w)
        # 3. global average pooling, then a linear layer
        h = self.conv_act(self.conv_norm_out(h)).mean(dim=(2, 3))  # (B, C_last, h, w) -> (B, C_last)
        return self.head(h)  # (B, K)


# ----------------------------------------------------------------------------------------------
# The judge: a classifier of clean digits, for evaluation only


@dataclass(frozen=True)
class JudgeConfig(NetworkConfig):
    """Hyperparameters of :class:`JudgeClassifier`; the defaults are the digits judge."""

    in_channels: int = 1  # channels of the images
    sample_size: int = 16  # H = W of the images
    num_classes: int = 10  # K
    channels: tuple[int, ...] = (32, 64)  # conv widths; each conv is followed by ReLU and 2x2 max-pooling
    feature_dim: int = 64  # D, width of features(x): the space of the Fréchet distance
    dropout: float = 0.25  # dropout on the features before the head (training only)

    config_name: ClassVar[str] = "judge"
    size_keys: ClassVar[dict[str, str]] = {
        "in_channels": "width", "sample_size": "width", "num_classes": "classes", "channels": "width",
        "feature_dim": "width",
    }
    main_size_keys: ClassVar[tuple[str, ...]] = ("channels", "feature_dim", "sample_size")

    def _validate(self):
        factor = 2 ** len(self.channels)
        if self.sample_size % factor:
            raise ValueError(
                f"JudgeConfig.sample_size={self.sample_size} must be divisible by {factor}: each of the "
                f"{len(self.channels)} conv layers halves H and W. Use fewer conv layers or another size."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"JudgeConfig.dropout must be in [0, 1), got {self.dropout}.")

    def build(self) -> "JudgeClassifier":
        return JudgeClassifier(self)


class JudgeClassifier(nn.Module):
    """A plain CNN of clean images that grades samples; never used for guidance.

        x (B, C, H, W) -> [conv 3x3, ReLU, max-pool 2x2] per entry of channels -> (B, C_last, H/2^n, W/2^n)
          -> flatten -> fc, ReLU -> features (B, D) -> dropout -> head -> logits (B, K)

    :param config: a :class:`JudgeConfig`
    """

    def __init__(self, config: JudgeConfig):
        super().__init__()
        if not isinstance(config, JudgeConfig):
            raise TypeError(f"config must be a JudgeConfig, got {type(config).__name__}. "
                            f"Use JudgeClassifier(JudgeConfig(...)).")
        self.config = c = config
        layers, width = [], c.in_channels
        for out in c.channels:
            layers += [nn.Conv2d(width, out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        self.convs = nn.Sequential(*layers)
        side = c.sample_size // 2 ** len(c.channels)
        self.fc = nn.Linear(width * side * side, c.feature_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The judge's feature vector of each image (after the ReLU of ``fc``).

        :param x: clean images, (B, in_channels, sample_size, sample_size) in [-1, 1]
        :return: (B, feature_dim)
        """
        c = self.config
        _check_images(x, "x", c.in_channels, c.sample_size,
                      "The judge was built for this image size (JudgeConfig.sample_size, in_channels).")
        h = self.convs(x)  # (B, C_last, H / 2^n, W / 2^n)
        return F.relu(self.fc(h.flatten(1)))  # (B, C_last * h * w) -> (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of clean images x (B, in_channels, sample_size, sample_size)."""
        return self.head(self.dropout(self.features(x)))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None,
                 fill: float = -1.0) -> torch.Tensor:
    """Translate each image by its own random (dy, dx), |dy|, |dx| <= max_shift, filling with ``fill``.

    Training-time augmentation: a digit a few pixels off centre is still the same digit, and
    generated digits are not always centred like the training set.

    :param x: images (B, C, H, W)
    :param max_shift: largest shift in pixels (0 returns x unchanged)
    :param generator: draws the shifts on x's device
    :param fill: value of the pixels shifted in (-1 = the black background of images in [-1, 1])
    :return: (B, C, H, W)
    """
    check_floating(x, "x")
    check_int_range(max_shift, "max_shift", 0, hint="Use a few pixels at most, e.g. 1 or 2 for 16x16 digits.")
    if x.ndim != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (B, C, H, W). Add a batch axis with x[None].")
    if max_shift == 0:
        return x
    batch, _, height, width = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=fill)  # (B, C, H + 2s, W + 2s)
    # a crop starting at (s + dy, s + dx) of the padded image is x shifted by (-dy, -dx)
    offsets = torch.randint(0, 2 * s + 1, (2, batch), generator=generator, device=x.device)
    rows = offsets[0][:, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = offsets[1][:, None] + torch.arange(width, device=x.device)  # (B, W)
    index = torch.arange(batch, device=x.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return crops.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


# ----------------------------------------------------------------------------------------------
# The shapes judge: one network, four heads (shape, colour, size, position)
# ----------------------------------------------------------------------------------------------

SHAPES_JUDGE_HEADS = {name: len(values) for name, values in ATTRIBUTES.items()}  # shape 3, color 6, size 2, position 5


def split_attribute_logits(logits: torch.Tensor, heads: dict[str, int] = SHAPES_JUDGE_HEADS) -> dict[str, torch.Tensor]:
    """The shapes judge's logits (B, 16) cut into its four heads: {"shape": (B, 3), "color": (B, 6), ...}.

    :param heads: attribute -> number of values, in the order of the logits (a judge of an extended
        world, e.g. with a seventh colour, passes its own)
    """
    if logits.ndim != 2 or logits.shape[1] != sum(heads.values()):
        raise ValueError(f"logits has shape {tuple(logits.shape)}, expected (B, {sum(heads.values())}): "
                         f"one logit per value of each attribute {heads}.")
    return dict(zip(heads, logits.split(list(heads.values()), dim=1)))
