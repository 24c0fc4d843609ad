"""Pixel conventions, in one place.

The networks of the course see images as floats in [-1, 1], shaped (N, C, H, W); people and
files see 8-bit pixels 0..255 shaped (N, H, W, C). The conversions are those of diffusers'
``VaeImageProcessor`` (``denormalize``: x / 2 + 0.5, clipped; ``numpy_to_pil``: round(255 u)),
so our pictures equal diffusers' byte for byte.

    x ∈ [-1, 1]   --to_unit-->   u = clip(x / 2 + 0.5, 0, 1)   --to_uint8-->   round(255 u)
    v ∈ 0..255    --from_uint8-->   x = v / 127.5 - 1
"""

from __future__ import annotations

from typing import Callable

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
    array = torch.as_tensor(np.array(pixels))   # a copy: the pixels may be read-only (a cached array)
    if array.dtype != torch.uint8:
        raise TypeError(f"from_uint8 takes uint8 pixels (0..255), got dtype {array.dtype}. "
                        f"For floats in [0, 1] use from_unit; for [-1, 1] no conversion is needed.")
    # v in 0..255 -> x = v / 127.5 - 1; (..., H, W, C) -> (..., C, H, W)
    return (array.float() / 127.5 - 1.0).movedim(-1, -3)


def image_batch(image, check: Callable[[int, int, int], None] | None = None) -> torch.Tensor:
    """A picture a person gives (img2img's or invert's input) -> a float tensor (B, 3, H, W) in [-1, 1].

    ``check(B, H, W)``, if given, runs before converting (the caller's size checks).

    PIL images and 8-bit pixels (uint8 arrays or tensors, 0..255) are converted with
    ``from_uint8``; float tensors (or arrays) must already be in [-1, 1].
    """
    from PIL import Image   # PIL only where a picture is read

    _check = check or (lambda batch, height, width: None)

    if isinstance(image, Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, Image.Image) for i in image):
        sizes = sorted({i.size for i in image})
        if len(sizes) != 1:
            raise ValueError(f"The images have different sizes {[(h, w) for w, h in sizes]} (height, width); "
                             f"resize them to one size first.")
        width, height = sizes[0]
        _check(len(image), height, width)
        # 0..255 -> [-1, 1]; (B, H, W, 3) -> (B, 3, H, W)
        return from_uint8(np.stack([np.asarray(i.convert("RGB")) for i in image]))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a PIL image, a list of PIL images, uint8 pixels (0..255) or a float tensor "
                        f"(B, 3, H, W) in [-1, 1], got {type(image).__name__}.")
    batch = image if image.ndim == 4 else image[None]
    if image.dtype == torch.uint8:
        channels_last = batch.ndim == 4 and batch.shape[-1] == 3
        if batch.ndim != 4 or not (channels_last or batch.shape[1] == 3):
            raise ValueError(f"image has shape {tuple(image.shape)}: 8-bit pixels are (B, H, W, 3) or (H, W, 3) "
                             f"(a tensor also (B, 3, H, W)).")
        height, width = batch.shape[1:3] if channels_last else batch.shape[2:]
        _check(batch.shape[0], height, width)
        # 0..255 -> [-1, 1], channels first
        return from_uint8(batch if channels_last else batch.permute(0, 2, 3, 1))
    if image.is_complex() or not image.is_floating_point():
        raise TypeError(f"image has dtype {image.dtype}: give 8-bit pixels as uint8 (0..255), or floats in [-1, 1].")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}, expected (B, 3, H, W) with values in [-1, 1].")
    _check(batch.shape[0], batch.shape[2], batch.shape[3])
    if not torch.isfinite(batch).all():
        raise ValueError("image has NaN or inf values. Give pixel values in [-1, 1].")
    low, high = batch.min().item(), batch.max().item()
    if low < -1 or high > 1:
        raise ValueError(
            f"image has values from {low:.4g} to {high:.4g}, outside [-1, 1], the range the VAE encodes. A picture "
            f"in [0, 1] becomes [-1, 1] with course_lib.pixels.from_unit(x) (2x - 1); 8-bit pixels 0..255 can be "
            f"given as they are, as uint8 (a PIL image, or a uint8 array or tensor)."
        )
    return batch.float()
