"""Pixel conventions, in one place.

The networks of the course see images as floats in [-1, 1], shaped (N, C, H, W); people and
files see 8-bit pixels 0..255 shaped (N, H, W, C). The conversions are those of diffusers'
``VaeImageProcessor`` (``denormalize``: x / 2 + 0.5, clipped; ``numpy_to_pil``: round(255 u)),
so our pictures equal diffusers' byte for byte.

    x ∈ [-1, 1]   --to_unit-->   u = clip(x / 2 + 0.5, 0, 1)   --to_uint8-->   round(255 u)
    v ∈ 0..255    --from_uint8-->   x = v / 127.5 - 1
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_unit", "to_uint8", "from_uint8", "from_unit"]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: u = clip(x / 2 + 0.5, 0, 1), any shape, same dtype and device."""
    return (images / 2 + 0.5).clamp(0, 1)


def from_unit(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: x = 2u - 1 (the inverse of :func:`to_unit` inside the range)."""
    return images * 2 - 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (N, C, H, W) or (C, H, W) -> uint8 numpy, (N, H, W, C) or (H, W, C).

    A single channel stays a channel axis of length 1; ``[..., 0]`` gives a grey image.
    """
    unit = to_unit(images.detach().float().cpu())
    # (N, C, H, W) -> (N, H, W, C), or (C, H, W) -> (H, W, C)
    unit = unit.movedim(-3, -1)
    return (unit.numpy() * 255).round().astype(np.uint8)


def from_uint8(pixels) -> torch.Tensor:
    """uint8 pixels, (N, H, W, C) or (H, W, C) numpy or tensor -> float32 in [-1, 1], (N, C, H, W) or (C, H, W)."""
    array = torch.as_tensor(np.asarray(pixels))
    if array.dtype != torch.uint8:
        raise TypeError(f"from_uint8 takes uint8 pixels (0..255), got dtype {array.dtype}. "
                        f"For floats in [0, 1] use from_unit; for [-1, 1] no conversion is needed.")
    # v in 0..255 -> x = v / 127.5 - 1; (..., H, W, C) -> (..., C, H, W)
    return (array.float() / 127.5 - 1.0).movedim(-1, -3)
