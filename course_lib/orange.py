"""A seventh colour for the shapes world: orange pictures, their captions, and a judge that reads them.

Lesson 11 teaches the mini-SD the word "orange" (``course_lib.lora``). The six-colour world of
``captions`` and ``datasets`` stays exactly as it is: the shipped models and every lesson before
11 depend on its six colours and on the judge's 16 logits. This module adds orange beside it:

* **pictures** -- drawn by ``datasets``' own renderer (the same geometry, sizes, positions and
  +-15 jitter per channel), with the base RGB (235, 130, 30) passed in by this module;
* **captions** -- the same grammar, with "orange" where the colour goes: "a small orange circle in
  the top left", "a orange square" (the template's article is always "a");
* **the extended attributes** -- ``EXTENDED_ATTRIBUTES``: the six colours, then "orange" as colour
  id 6, so a six-colour picture keeps its ids;
* **the 7-colour judge** -- ``EXTENDED_JUDGE``, the checkpoint of the recipe ``shapes-judge7``
  (``recipes.py``): the shapes judge's network and settings with 17 logits (3 + 7 + 2 + 5),
  trained on the six-colour "all" split plus orange circles, squares and triangles (the judge may
  see orange triangles: only the model under test must not);
* **the report** -- :func:`extended_judge_report`, ``metrics.shapes_judge_report`` for the
  extended attributes, with a Wilson interval for each share.

Notation: x_0 is a clean image in [-1, 1], (N, 3, 64, 64).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .captions import ATTRIBUTES, COLOR_JITTER, POSITIONS, SHAPES, SIZES, shape_caption
from .checks import check_choice, check_int_range
from .datasets import _render, _sample_geometry
from .metrics import shapes_judge_report
from .pixels import from_uint8
from .sample_stats import proportion_interval

__all__ = [
    "ORANGE",
    "ORANGE_RGB",
    "ORANGE_SEEN_SHAPES",
    "ORANGE_HELDOUT_SHAPES",
    "EXTENDED_ATTRIBUTES",
    "EXTENDED_JUDGE_HEADS",
    "EXTENDED_JUDGE",
    "colored_caption",
    "render_colored",
    "orange_tensors",
    "orange_prompt_grid",
    "extended_judge_report",
]

ORANGE = "orange"
ORANGE_RGB = (235, 130, 30)  # base colour; each channel jittered by at most COLOR_JITTER, as the others
ORANGE_SEEN_SHAPES = ("circle", "square")  # the shapes the adapter is trained on
ORANGE_HELDOUT_SHAPES = ("triangle",)  # never shown to the model under test in orange
# The attributes of the extended world: orange is colour id 6, after the six of ATTRIBUTES.
EXTENDED_ATTRIBUTES = {**ATTRIBUTES, "color": (*ATTRIBUTES["color"], ORANGE)}
EXTENDED_JUDGE_HEADS = {name: len(values) for name, values in EXTENDED_ATTRIBUTES.items()}  # 3, 7, 2, 5
EXTENDED_JUDGE = "shapes-judge7"  # the checkpoint name of the 7-colour judge


# ---------------------------------------------------------------------------------------------
# Pictures and captions
# ---------------------------------------------------------------------------------------------

def colored_caption(shape: str, color: str, size: str | None = None, position: str | None = None) -> str:
    """The shapes caption with any colour word: "a {size} {color} {shape} in the {position}".

    ``captions.shape_caption`` knows only the six colours; the grammar puts the colour just
    before the shape, so the caption without colour gets the word inserted there.

    >>> colored_caption("circle", "orange", "small", "top left")
    'a small orange circle in the top left'
    """
    if not isinstance(color, str) or not color.isalpha():
        raise ValueError(f"color must be one word of letters such as 'orange', got {color!r}.")
    words = shape_caption(shape, None, size, position).split()
    words.insert(words.index(shape), color.lower())
    return " ".join(words)


def render_colored(shape_index: np.ndarray, size_index: np.ndarray, position_index: np.ndarray,
                   base_rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Pictures of one new colour, drawn by ``datasets``' renderer with the same jitter as the six.

    The draws come in ``datasets._draw``'s order: the colour jitter, then the box (side and corner).

    :param shape_index: (N,) ids into SHAPES
    :param size_index: (N,) ids into SIZES
    :param position_index: (N,) ids into POSITIONS
    :param base_rgb: the colour's base RGB; each channel gets an integer in [-COLOR_JITTER, COLOR_JITTER]
    :param rng: a numpy Generator
    :return: (N, 64, 64, 3) uint8
    """
    if len(base_rgb) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in base_rgb):
        raise ValueError(f"base_rgb must be three integers in 0..255, got {base_rgb!r}.")
    count = len(shape_index)
    # RGB = base + jitter, jitter uniform on the integers [-15, 15] per channel, clipped to 0..255
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=(count, 3))
    rgb = np.clip(np.array(base_rgb, dtype=np.int64) + jitter, 0, 255).astype(np.uint8)
    side, corner = _sample_geometry(rng, size_index, position_index)
    return _render(shape_index, side, corner, rgb)


def orange_tensors(num_images: int, seed: int = 0, shapes=ORANGE_SEEN_SHAPES,
                   full_caption_fraction: float = 0.5) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
    """Orange pictures with captions, every size and position, drawn as the shapes data is.

    Captions follow ``datasets``' forms: with probability ``full_caption_fraction`` all four
    attributes, else size and position each kept with probability 1/2. Unlike the six-colour
    data the colour is always named: an orange picture captioned "a circle" would teach the
    model that a plain circle may be orange, which is the forgetting lesson 11 measures.

    :param num_images: N
    :param seed: seed of the shapes, sizes, positions, jitter and caption forms
    :param shapes: which shapes ("circle", "square" for training; add "triangle" for the judge)
    :param full_caption_fraction: share of captions that name every attribute
    :return: images x_0 (N, 3, 64, 64) float32 in [-1, 1], captions (N str), attribute ids
        {"shape", "color", "size", "position"}: LongTensor (N,) in EXTENDED_ATTRIBUTES' order
    """
    check_int_range(num_images, "num_images", 1, 1_000_000)
    check_int_range(seed, "seed", 0)
    shapes = tuple(shapes)
    if not shapes:
        raise ValueError("shapes is empty. Give some of 'circle', 'square', 'triangle'.")
    for shape in shapes:
        check_choice(shape, SHAPES, "shape")
    rng = np.random.default_rng([seed, 7])  # 7: a stream of its own, apart from the six-colour splits
    shape_index = np.array([SHAPES.index(s) for s in shapes])[rng.integers(len(shapes), size=num_images)]
    size_index = rng.integers(len(SIZES), size=num_images)
    position_index = rng.integers(len(POSITIONS), size=num_images)
    full = rng.random(num_images) < full_caption_fraction
    keep = (rng.random((num_images, 2)) < 0.5) | full[:, None]  # (N, 2): size, position
    images = render_colored(shape_index, size_index, position_index, ORANGE_RGB, rng)
    sizes, positions = tuple(SIZES), tuple(POSITIONS)
    captions = [colored_caption(SHAPES[shape_index[i]], ORANGE, sizes[size_index[i]] if keep[i, 0] else None,
                                positions[position_index[i]] if keep[i, 1] else None) for i in range(num_images)]
    x0 = from_uint8(images)  # (N, 64, 64, 3) uint8 -> (N, 3, 64, 64) in [-1, 1]
    orange_id = EXTENDED_ATTRIBUTES["color"].index(ORANGE)
    attributes = {"shape": torch.from_numpy(shape_index), "color": torch.full((num_images,), orange_id),
                  "size": torch.from_numpy(size_index), "position": torch.from_numpy(position_index)}
    return x0.contiguous(), captions, attributes


def orange_prompt_grid(shapes=ORANGE_SEEN_SHAPES) -> list[dict]:
    """Every full orange prompt of the given shapes: 2 sizes x 5 positions per shape.

    :return: [{"prompt": "a small orange circle in the top left", "shape": "circle", "color":
        "orange", "size": "small", "position": "top left"}, ...] (the form of
        ``metrics.shapes_prompt_grid``)
    """
    return [{"prompt": colored_caption(shape, ORANGE, size, position), "shape": shape, "color": ORANGE,
             "size": size, "position": position}
            for shape in shapes for size in SIZES for position in POSITIONS]


# ---------------------------------------------------------------------------------------------
# Reading pictures with the 7-colour judge
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def extended_judge_report(judge: nn.Module, images: torch.Tensor, wanted, batch_size: int = 250,
                          with_interval: bool = True, level: float = 0.95) -> dict:
    """How many pictures show what was asked, per attribute, read by the 7-colour judge.

    ``metrics.shapes_judge_report`` with the extended attributes, and each share's Wilson interval
    (``sample_stats.proportion_interval``).

    :param judge: the 7-colour judge (``load_course_model("shapes-judge7")``), 17 logits
    :param images: (N, 3, 64, 64) in [-1, 1] (clamped there)
    :param wanted: N dicts of asked-for values ("shape", "color", "size", "position"; a missing
        one counts as right), or ids per attribute {"shape": (N,), ...} in EXTENDED_ATTRIBUTES' order
    :param with_interval: also give each share's Wilson interval as "<name>_interval"
    :param level: the intervals' coverage
    :return: {"shape", "color", "size", "position", "all", "color_and_shape": share right,
        "count": N, and with_interval "<name>_interval": (low, high)}
    """
    report = shapes_judge_report(judge, images, wanted, batch_size, attributes=EXTENDED_ATTRIBUTES)
    count = images.shape[0]
    if with_interval:
        for name, share in list(report.items()):
            # k = share * N, exact: the shares are rounded to 1e-4 and N < 5000 pictures
            low, high = proportion_interval(round(share * count), count, level=level)
            report[f"{name}_interval"] = (round(low, 4), round(high, 4))
    report["count"] = count
    return report
