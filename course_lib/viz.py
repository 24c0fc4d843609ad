"""Image grids and small plots for the notebooks and the command line.

Images in the course are tensors in [-1, 1] of shape (B, C, H, W) with C = 1 (digits) or 3
(shapes, Stable Diffusion), turned into pixels by ``course_lib.pixels`` (diffusers' convention).
Pillow makes PNGs (``grid_png`` gives the bytes an ``ipywidgets.Image`` shows); matplotlib is
imported only by the plotting functions, so the command line does not need it.
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image

from .checks import check_floating
from .pixels import to_uint8, to_unit


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1, pad_value: float = -1.0) -> torch.Tensor:
    """Tile a batch into one image.

    :param images: (B, C, H, W) in [-1, 1]
    :param nrow: images per row (default: about square)
    :return: (C, rows*(H+padding)+padding, nrow*(W+padding)+padding)
    """
    check_floating(images, "images")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}. Add a batch axis with images[None].")
    count, channels, height, width = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / nrow)
    grid = images.new_full((channels, rows * (height + padding) + padding, nrow * (width + padding) + padding), pad_value)
    for index in range(count):
        row, col = divmod(index, nrow)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[:, top:top + height, left:left + width] = images[index]
    return grid


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """A (C, H, W) or (H, W) tensor in [-1, 1] -> a PIL image, enlarged ``scale`` times (nearest)."""
    if image.ndim == 2:  # (H, W) -> (1, H, W)
        image = image[None]
    array = to_uint8(image)  # (H, W, C) uint8
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def grid_image(images: torch.Tensor, nrow: int | None = None, scale: int = 1) -> Image.Image:
    """``to_pil(make_grid(images))``: a batch as one PIL image."""
    return to_pil(make_grid(images, nrow=nrow), scale=scale)


def grid_png(images: torch.Tensor, nrow: int | None = None, scale: int = 1) -> bytes:
    """A batch as one PNG file's bytes (``grid_image``), e.g. the value of an ``ipywidgets.Image``."""
    buffer = io.BytesIO()
    grid_image(images, nrow=nrow, scale=scale).save(buffer, format="PNG")
    return buffer.getvalue()


def show_images(images: torch.Tensor, nrow: int | None = None, title: str | None = None, ax=None, size: float = 3.0):
    """Draw a batch as a grid with matplotlib (small, for notebooks). Returns the axis."""
    import matplotlib.pyplot as plt

    grid = make_grid(images.detach().float().cpu(), nrow=nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(size, size * grid.shape[1] / grid.shape[2]))
    shown = to_unit(grid).permute(1, 2, 0).numpy()  # (H, W, C) in [0, 1]
    ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray" if shown.shape[-1] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def image_row(images: list[torch.Tensor] | torch.Tensor, titles: list[str] | None = None, size: float = 1.6):
    """Draw images side by side with titles (e.g. a digit at several timesteps). Returns the figure."""
    import matplotlib.pyplot as plt

    count = len(images)
    fig, axes = plt.subplots(1, count, figsize=(size * count, size * 1.15), squeeze=False)
    for index, ax in enumerate(axes[0]):
        show_images(images[index][None] if images[index].ndim == 3 else images[index], ax=ax,
                    title=titles[index] if titles else None)
    fig.tight_layout()
    return fig
