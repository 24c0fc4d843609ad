"""What one sampling request may cost, estimated and bounded before any work is done.

A diffusion model accepts any height, width and number of images, but its cost does not stay
small: the activations grow with the pixels and the batch, and self-attention's work grows with
the *square* of the latent positions. A request that does not fit is refused here, at once, with
the estimate and the cap in the message, before a tensor is allocated.

Two caps, each documented and each set by an environment variable:

=================================  ==========================================================  =============================
cap                                default                                                     environment variable
=================================  ==========================================================  =============================
memory of one request              half the memory of the device (the machine's RAM on a       ``COURSE_MAX_MEMORY_GB``
                                   CPU, or the container's limit if lower; the GPU's memory)
latent positions per image         128 x 128 = 16384 (SD v1.5 at 1024 x 1024 pixels)          ``COURSE_MAX_LATENT_POSITIONS``
=================================  ==========================================================  =============================

The memory estimate (bytes; N images of H x W pixels, latents h x w = H/f x W/f, b bytes per
number, G = 2 with classifier-free guidance (the batch of two), else 1)::

    latents     = 8 N C_z h w b                          z_t, the batch of two, eps, the step's temporaries
    images      = 3 N 3 H W 4                            decoded images, [0, 1], the numpy/PIL copies
    unet        = G N b (skips + k_unet widest_unet)     one UNet call on the batch of two
    vae_decode  = N b k_vae widest_decoder               the decoder, all N images at once
    vae_encode  = N b k_vae widest_encoder               img2img only
    peak        = overhead + latents + images + max(unet, vae_decode, vae_encode)

``skips`` are the UNet's skip connections, kept from the down path to the up path (conv_in's
output, every resnet's output, every downsampled output); ``widest`` is the largest single
activation per image: in the UNet the feed-forward's GEGLU projection, 2 * 4 C_l channels at a
level l with attention (or a concatenation [x, skip] on the up path), in the VAE an upsampler's
output (C_i channels at twice the resolution). The factors k (how many activations of the widest
size are alive at the peak: the tensor, its normalised and activated copies, the next layer's
output, oneDNN's reordered copies, memory the allocator keeps for reuse) and the fixed overhead
come from the peak resident memory measured on a CPU by ``benchmarks/sampling_memory.py``,
rounded up: the estimate errs on the high side (its ratio to the measured peak is printed there).

Self-attention over h w latent positions compares each with every other: its work grows as
(h w)^2, so a request 4 times the cap's side has 256 times the attention work per image. That is
what turned ``generate --height 4096 --width 4096`` into hours; its memory alone would have fit.

    estimate = check_sampling_request(unet_config, vae_config, height=512, width=512, batch_size=4)
    print(estimate.describe())
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

from .nn.unet import UNetConfig
from .nn.vae import VAEConfig

__all__ = ["SamplingEstimate", "ResourceLimitError", "estimate_sampling_memory", "check_sampling_request",
           "memory_cap", "latent_positions_cap", "MEMORY_CAP_VARIABLE", "LATENT_POSITIONS_VARIABLE",
           "DEFAULT_LATENT_POSITIONS"]

MEMORY_CAP_VARIABLE = "COURSE_MAX_MEMORY_GB"
LATENT_POSITIONS_VARIABLE = "COURSE_MAX_LATENT_POSITIONS"
DEFAULT_LATENT_POSITIONS = 128 * 128  # SD v1.5 at 1024 x 1024 px (f = 8); the mini-SD at 1024 px too

# from the peak resident memory measured on a CPU by benchmarks/sampling_memory.py, rounded up
UNET_ACTIVATION_FACTOR = 6  # k_unet: measured 4.6-5 for the mini-SD's UNet at 512-1024 px
VAE_ACTIVATION_FACTOR = 10  # k_vae: measured 4 to 9.8 for its decoder at 512-1024 px, as the allocator reuses memory
OVERHEAD_BYTES = 64 * 2**20  # the allocator, oneDNN's scratch space, weight reorders: 40-60 MiB for SD v1.5
GEGLU_WIDTH = 2 * 4  # the feed-forward projects C channels to 2 * 4C (GEGLU's two halves, mult 4)
GIB = 2**30


class ResourceLimitError(ValueError):
    """A request over a documented cap; the message has the estimate, the cap and what to do."""


@dataclass(frozen=True)
class SamplingEstimate:
    """The estimated memory of one sampling request, in bytes, and its size.

    :param latents: z_t, the batch of two and the sampler's temporaries
    :param images: the decoded images and their [0, 1] / numpy copies
    :param unet: one UNet call on the batch of two (its activations; the weights are not counted)
    :param vae_decode: decoding all images at once
    :param vae_encode: encoding the input images (img2img; 0 otherwise)
    :param latent_positions: h * w, the latent positions per image (self-attention's sequence length)
    :param batch_size: N, the images sampled in one pass
    """

    latents: int
    images: int
    unet: int
    vae_decode: int
    vae_encode: int
    latent_positions: int
    batch_size: int

    @property
    def peak(self) -> int:
        """The estimated peak: the parts alive all along plus the largest network call."""
        return OVERHEAD_BYTES + self.latents + self.images + max(self.unet, self.vae_decode, self.vae_encode)

    def describe(self) -> str:
        """One line: the peak and its largest parts, in GiB."""
        parts = [("UNet activations", self.unet), ("VAE decoding", self.vae_decode),
                 ("VAE encoding", self.vae_encode), ("latents and images", self.latents + self.images)]
        shown = ", ".join(f"{name} {value / GIB:.2f}" for name, value in parts if value)
        return f"about {self.peak / GIB:.2f} GiB ({shown} GiB)"


def _config(config, config_class):
    """A UNetConfig or VAEConfig, from itself or its dict (a checkpoint's network_config, or diffusers' config.json)."""
    if isinstance(config, config_class):
        return config
    if isinstance(config, dict):
        fields = {field.name for field in dataclasses.fields(config_class)}
        if set(config) <= fields:  # our own keys: the constructor checks them, without from_dict's build on meta
            return config_class(**config)
        return config_class.from_dict(config)
    raise TypeError(f"Expected a {config_class.__name__} or its dict (a checkpoint's network_config), "
                    f"got {type(config).__name__}.")


def _per_level(value, levels: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * levels


def _positions(height: int, width: int, level: int) -> int:
    """Positions of a feature map halved ``level`` times (rounding up, as stride-2 convolutions do)."""
    return math.ceil(height / 2**level) * math.ceil(width / 2**level)


def _unet_elements(config: UNetConfig, height: int, width: int) -> tuple[int, int]:
    """(skips, widest) of one image, in numbers, for latents of height x width.

    skips = C_0 P_0 + sum_l (L_l C_l P_l + C_l P_{l+1} [l < n-1])       (P_l: positions at level l)
    widest = max(8 C_l P_l at levels with attention, (C_{l+1} + C_l) P_l at every level)
    """
    channels = config.block_out_channels
    n = len(channels)
    layers = _per_level(config.layers_per_block, n)
    skips = channels[0] * _positions(height, width, 0)  # conv_in's output
    for level, c in enumerate(channels):
        skips += layers[level] * c * _positions(height, width, level)  # each resnet's (+ attention's) output
        if level < n - 1:
            skips += c * _positions(height, width, level + 1)  # the downsampled output
    attention_levels = {level for level, kind in enumerate(config.down_block_types) if kind.startswith("CrossAttn")}
    attention_levels |= {n - 1 - i for i, kind in enumerate(config.up_block_types) if kind.startswith("CrossAttn")}
    if config.mid_block_type == "UNetMidBlock2DCrossAttn":
        attention_levels.add(n - 1)
    widest = max([GEGLU_WIDTH * channels[level] * _positions(height, width, level) for level in attention_levels]
                 + [(channels[min(level + 1, n - 1)] + c) * _positions(height, width, level)
                    for level, c in enumerate(channels)])
    return skips, widest


def _decoder_widest(config: VAEConfig, height: int, width: int) -> int:
    """The decoder's largest activation for one image of latents height x width, in numbers.

    Stage i (deepest first, channels C_i = reversed(block_out_channels)[i]) works on 4^i h w
    positions and its upsampler writes C_i channels on 4^(i+1) h w of them.
    """
    channels = tuple(reversed(config.block_out_channels))
    latent = height * width
    return max(c * latent * 4 ** (i + 1 if i < len(channels) - 1 else i) for i, c in enumerate(channels))


def _encoder_widest(config: VAEConfig, height: int, width: int) -> int:
    """The encoder's largest activation for one image of latents height x width, in numbers.

    Stage i (channels C_i, its input C_{i-1}) works on H W / 4^i positions, H W = f^2 h w.
    """
    channels = config.block_out_channels
    pixels = height * width * config.downsample_factor ** 2
    return max(max(c, channels[max(i - 1, 0)]) * pixels // 4**i for i, c in enumerate(channels))


def estimate_sampling_memory(unet_config, vae_config=None, *, height: int, width: int, batch_size: int,
                             guidance: bool = True, dtype: torch.dtype = torch.float32,
                             vae_dtype: torch.dtype | None = None, encode: bool = False) -> SamplingEstimate:
    """The memory of sampling ``batch_size`` images of height x width pixels (the formula above).

    :param unet_config: the UNet's :class:`UNetConfig` (or its dict, a checkpoint's network_config)
    :param vae_config: the VAE's :class:`VAEConfig` (or its dict); None for a model in pixel space
        (the digits UNet: height and width are then the UNet's own)
    :param height: image height in pixels
    :param width: image width in pixels
    :param batch_size: N, the images sampled in one pass (prompts x images per prompt x guidance scales)
    :param guidance: classifier-free guidance: the UNet sees the batch of two, 2N
    :param dtype: the UNet's and the latents' dtype
    :param vae_dtype: the VAE's dtype (default: ``dtype``; float32 when it is upcast)
    :param encode: also encode N images of that size (img2img)
    :return: a :class:`SamplingEstimate`
    """
    unet_config = _config(unet_config, UNetConfig)
    vae_config = _config(vae_config, VAEConfig) if vae_config is not None else None
    f = vae_config.downsample_factor if vae_config is not None else 1
    h, w = math.ceil(height / f), math.ceil(width / f)
    element = torch.empty((), dtype=dtype).element_size()
    vae_element = torch.empty((), dtype=vae_dtype or dtype).element_size()
    latent_numbers = batch_size * unet_config.in_channels * h * w
    skips, widest = _unet_elements(unet_config, h, w)
    unet = (2 if guidance else 1) * batch_size * element * (skips + UNET_ACTIVATION_FACTOR * widest)
    if vae_config is None:
        decode = encode_bytes = 0
        images = 3 * batch_size * unet_config.in_channels * h * w * 4
    else:
        decode = batch_size * vae_element * VAE_ACTIVATION_FACTOR * _decoder_widest(vae_config, h, w)
        encode_bytes = batch_size * vae_element * VAE_ACTIVATION_FACTOR * _encoder_widest(vae_config, h, w) \
            if encode else 0
        images = 3 * batch_size * 3 * height * width * 4
    return SamplingEstimate(latents=8 * latent_numbers * element, images=images, unet=unet, vae_decode=decode,
                            vae_encode=encode_bytes, latent_positions=h * w, batch_size=batch_size)


def _total_memory(device: torch.device) -> int:
    """Bytes of memory of the device: a GPU's own, else the machine's (or its container's limit)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        total = 16 * GIB
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _environment_number(name: str, minimum: float) -> float | None:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= minimum or math.isinf(value):
        raise ValueError(f"The environment variable {name} is {text!r}; it must be a number of at least {minimum:g}. "
                         f"Set it to a number, or unset it for the default.")
    return value


def memory_cap(device: str | torch.device = "cpu") -> int:
    """The most memory one request may take, in bytes: $COURSE_MAX_MEMORY_GB GiB if set, else half
    the device's memory."""
    gigabytes = _environment_number(MEMORY_CAP_VARIABLE, minimum=0.001)
    if gigabytes is not None:
        return int(gigabytes * GIB)
    return _total_memory(torch.device(device)) // 2


def latent_positions_cap() -> int:
    """The most latent positions h * w per image: $COURSE_MAX_LATENT_POSITIONS if set, else 128 * 128."""
    value = _environment_number(LATENT_POSITIONS_VARIABLE, minimum=1)
    return DEFAULT_LATENT_POSITIONS if value is None else int(value)


def check_sampling_request(unet_config, vae_config=None, *, height: int, width: int, batch_size: int,
                           guidance: bool = True, dtype: torch.dtype = torch.float32,
                           vae_dtype: torch.dtype | None = None, encode: bool = False,
                           device: str | torch.device = "cpu") -> SamplingEstimate:
    """Refuse a request over a cap (:class:`ResourceLimitError`, a ValueError); return its estimate.

    Arguments as :func:`estimate_sampling_memory`; ``device`` chooses the default memory cap.
    Only arithmetic on the configs: it takes microseconds and allocates nothing.
    """
    estimate = estimate_sampling_memory(unet_config, vae_config, height=height, width=width,
                                        batch_size=batch_size, guidance=guidance, dtype=dtype,
                                        vae_dtype=vae_dtype, encode=encode)
    positions_cap = latent_positions_cap()
    f = _config(vae_config, VAEConfig).downsample_factor if vae_config is not None else 1
    if estimate.latent_positions > positions_cap:
        side = math.isqrt(positions_cap) * f
        work = (estimate.latent_positions / positions_cap) ** 2
        raise ResourceLimitError(
            f"{height}x{width} pixels are {estimate.latent_positions} latent positions per image, over the cap of "
            f"{positions_cap} (about {side}x{side} pixels): self-attention compares every position with every other, "
            f"so its work grows with their square, here {work:.0f} times the work at the cap, per image and step "
            f"(memory: {estimate.describe()}). Use a smaller height and width, or raise the cap with "
            f"{LATENT_POSITIONS_VARIABLE}=N."
        )
    cap = memory_cap(device)
    if estimate.peak > cap:
        per_image = (estimate.peak - OVERHEAD_BYTES) / max(batch_size, 1)
        fits = max(int((cap - OVERHEAD_BYTES) // per_image), 0)
        source = (f"${MEMORY_CAP_VARIABLE}" if os.environ.get(MEMORY_CAP_VARIABLE, "").strip()
                  else f"half the memory of {torch.device(device).type}")
        raise ResourceLimitError(
            f"Sampling {batch_size} image(s) of {height}x{width} pixels needs {estimate.describe()}, over the cap "
            f"of {cap / GIB:.2f} GiB ({source}). "
            + (f"At this size at most {fits} image(s) fit in one pass: ask for fewer images per call, or a smaller "
               f"height and width" if fits else "Use a smaller height and width")
            + f"; to allow more, set {MEMORY_CAP_VARIABLE}=<GiB>."
        )
    return estimate
