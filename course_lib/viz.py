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


SEPARATOR = 0.0  # the grey (pixel value 128) of the lines between tiles: visible on black and on white pictures


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1, pad_value: float = SEPARATOR) -> torch.Tensor:
    """Tile a batch into one image, with grey lines between the tiles.

    :param images: (B, C, H, W) in [-1, 1]
    :param nrow: images per row (default: about square)
    :param pad_value: the value of the separating lines, in [-1, 1] (grey by default)
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


def use_course_style() -> None:
    """Matplotlib settings of every lesson's figures: 100 dpi, text of 8-9 pt, no clipped labels.

    Call it once in a lesson's setup cell; it changes sizes only (fonts chosen by
    ``course_lib.set_language``, e.g. for Chinese, stay).
    """
    import matplotlib

    matplotlib.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 100, "figure.autolayout": True,
        "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
        "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.titlesize": 10,
    })


def image_strip(images, top: list[str] | None = None, bottom: list[str] | None = None,
                ok: list[bool | None] | None = None, size: float = 1.1, title: str | None = None):
    """Tiles in one row, each with a label above (e.g. "λ = 3") and a verdict below (e.g. "4/4 ✓").

    Made for evidence a reader sees without running the notebook: a guidance sweep with the
    judge's verdict under each picture, green where it holds and red where it does not.

    :param images: (B, C, H, W) in [-1, 1], or a list of (C, H, W)
    :param top: B labels above the tiles
    :param bottom: B labels below the tiles
    :param ok: B booleans (or None) colouring the labels below: True green, False red
    :return: the figure
    """
    import matplotlib.pyplot as plt

    count = len(images)
    for name, labels in (("top", top), ("bottom", bottom), ("ok", ok)):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name} has {len(labels)} entries for {count} images. Give one per image.")
    fig, axes = plt.subplots(1, count, figsize=(size * count, size * 1.45), squeeze=False)
    for index, ax in enumerate(axes[0]):
        image = images[index]
        show_images(image[None] if image.ndim == 3 else image, ax=ax, title=top[index] if top else None)
        if bottom:
            colour = {True: "tab:green", False: "tab:red"}.get(ok[index] if ok else None, "black")
            ax.text(0.5, -0.06, bottom[index], transform=ax.transAxes, ha="center", va="top",
                    fontsize=8, color=colour)
    if title:
        fig.suptitle(title)
    return fig


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
