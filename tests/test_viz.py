"""Tests of course_lib.viz: grids, PIL images and PNG bytes use course_lib.pixels' conversion."""

import io

import numpy as np
import torch
from PIL import Image

from course_lib.pixels import to_uint8
from course_lib.viz import grid_image, grid_png, make_grid, to_pil


def test_make_grid_tiles_the_batch_with_padding():
    images = torch.arange(4.0).reshape(4, 1, 1, 1) / 4
    grid = make_grid(images, nrow=2, padding=1, pad_value=-1.0)
    assert grid.shape == (1, 5, 5)
    assert grid[0, 1, 1] == 0 and grid[0, 1, 3] == 0.25 and grid[0, 3, 1] == 0.5 and grid[0, 3, 3] == 0.75
    assert grid[0, 0].eq(-1).all() and grid[0, 2].eq(-1).all()


def test_to_pil_is_the_pixels_conversion_enlarged():
    image = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # beyond [-1, 1] too
    np.testing.assert_array_equal(np.asarray(to_pil(image)), to_uint8(image))
    grey = to_pil(image[:1], scale=3)
    assert grey.mode == "L" and grey.size == (15, 12)
    np.testing.assert_array_equal(np.asarray(grey)[::3, ::3], to_uint8(image[:1])[..., 0])
    np.testing.assert_array_equal(np.asarray(to_pil(image[0])), np.asarray(to_pil(image[:1])))


def test_grid_png_holds_the_grid_image():
    images = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 2 - 1
    png = grid_png(images, nrow=2, scale=2)
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(grid_image(images, 2, 2)))


def test_grid_lines_are_grey_by_default():
    grid = make_grid(torch.full((2, 3, 2, 2), -1.0), nrow=2)            # two black tiles
    assert grid[:, 0].eq(0).all() and grid[:, :, 3].eq(0).all()         # grey (0 -> pixel 128) between them
    assert to_uint8(grid[:, :1, :1])[0, 0, 0] == 128


def test_image_strip_puts_a_coloured_verdict_under_each_tile():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.viz import image_strip, use_course_style

    use_course_style()
    assert matplotlib.rcParams["figure.dpi"] == 100 and matplotlib.rcParams["font.size"] >= 8
    fig = image_strip(torch.zeros(3, 3, 4, 4), top=["λ=1", "λ=3", "λ=7"], bottom=["ok", "no", "?"],
                      ok=[True, False, None])
    texts = {text.get_text(): text.get_color() for ax in fig.axes for text in ax.texts}
    assert texts == {"ok": "tab:green", "no": "tab:red", "?": "black"}
    assert [ax.get_title() for ax in fig.axes] == ["λ=1", "λ=3", "λ=7"]
    import pytest
    with pytest.raises(ValueError, match="one per image"):
        image_strip(torch.zeros(3, 3, 4, 4), bottom=["a"])
