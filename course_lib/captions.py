"""The world of the shapes-with-captions data: its attributes and its caption template.

Lowest layer that knows the words: ``datasets`` draws pictures of these attributes, and
``nn.text`` builds the tokenizer's vocabulary from the same lists, so the two can never disagree.
"""

from __future__ import annotations

from .checks import check_choice

__all__ = ["ATTRIBUTES", "IMAGE_SIZE", "SHAPES", "COLORS", "SIZES", "POSITIONS", "COLOR_JITTER", "POSITION_JITTER",
           "HELDOUT_PAIRS", "shape_caption"]

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLORS = {  # base RGB of each colour; each channel is jittered by at most COLOR_JITTER
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 210, 220),
}
SIZES = {"small": (14, 18), "large": (28, 34)}  # side of the square bounding box in px, inclusive
POSITIONS = {  # (x, y) of the shape's centre, x to the right and y downwards
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
    "center": (32, 32),
}
COLOR_JITTER = 15  # at most this much added to or subtracted from each RGB channel
POSITION_JITTER = 4  # the centre moves at most this many px along each axis
HELDOUT_PAIRS = (("triangle", "green"), ("circle", "blue"))  # never in the "train" split
# The four attributes of a picture and their values, in a fixed order: the judge's four heads and
# shapes_attributes' integer ids use it.
ATTRIBUTES = {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES), "position": tuple(POSITIONS)}

_COLOR_NAMES = tuple(COLORS)
_SIZE_NAMES = tuple(SIZES)
_POSITION_NAMES = tuple(POSITIONS)


def shape_caption(shape: str, color: str | None = None, size: str | None = None,
                  position: str | None = None) -> str:
    """The caption "a {size} {color} {shape} in the {position}", leaving out each attribute that is None.

    >>> shape_caption("circle", "red", "large", "center")
    'a large red circle in the center'
    >>> shape_caption("triangle", position="top left")
    'a triangle in the top left'
    """
    check_choice(shape, SHAPES, "shape")
    words = ["a"]
    if size is not None:
        words.append(check_choice(size, _SIZE_NAMES, "size"))
    if color is not None:
        words.append(check_choice(color, _COLOR_NAMES, "color"))
    words.append(shape)
    if position is not None:
        words += ["in", "the", check_choice(position, _POSITION_NAMES, "position")]
    return " ".join(words)
