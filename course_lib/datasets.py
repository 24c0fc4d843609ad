"""The course's two data sets, both made on the learner's machine with no download.

**digits** -- scikit-learn's bundled handwritten digits (1,797 real images, 8x8, 10 classes),
upsampled to 16x16 and scaled to [-1, 1] (lessons 01-05).

**shapes with captions** -- generated 64x64 RGB pictures of one solid shape on black, with a
caption that says what is in them (lessons 06-09). Every green triangle and every blue circle is
held out of the training split, so lesson 07 can ask a text-conditioned model for a combination
it never saw.

The notebooks and the training recipes take them as plain tensors (``digits_tensors``,
``shapes_tensors``, ``shapes_attributes``): a whole split fits in memory and a batch is one
indexing. ``load_digits`` and ``load_shapes`` give the same data as Hugging Face
``datasets.Dataset`` objects (PNG images, labels or captions), for use with that library's tools;
tests/test_datasets.py checks that both forms hold the same pictures.

Notation: x_0 is a clean image in [-1, 1], (B, C, H, W) with C = 1 (digits) or 3 (shapes).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch

from .captions import (ATTRIBUTES, COLOR_JITTER, COLORS, HELDOUT_PAIRS, IMAGE_SIZE, POSITION_JITTER, POSITIONS,  # noqa: F401
                       SHAPES, SIZES, _COLOR_NAMES, _POSITION_NAMES, _SIZE_NAMES, shape_caption)
from .checks import check_choice, check_int_range
from .pixels import from_uint8

__all__ = [
    "load_digits",
    "digits_tensors",
    "load_shapes",
    "shapes_attributes",
    "shapes_tensors",
    "render_shape",
    "shape_caption",
    "SHAPES",
    "COLORS",
    "SIZES",
    "POSITIONS",
    "HELDOUT_PAIRS",
    "IMAGE_SIZE",
    "COLOR_JITTER",
    "POSITION_JITTER",
]

# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------

DIGITS_SPLITS = ("train", "test", "all")
DIGITS_TEST_SIZE = 300  # 1,797 = 1,497 train + 300 test (about 30 of each class)
DIGITS_SPLIT_SEED = 0


@functools.lru_cache(maxsize=8)
def _digits_arrays(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, size, size) float32 in [-1, 1], labels (N,) int64) as read-only arrays."""
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    # Pixel values are integers 0..16 (ink counts); x_0 = 2 * v / 16 - 1 puts them in [-1, 1].
    images = torch.from_numpy(bunch.images.astype(np.float32))[:, None] / 16.0 * 2.0 - 1.0
    if size != 8:
        # Bilinear, not nearest: nearest would make every image exactly constant on 2x2 blocks,
        # a pattern the model would have to learn and that its samples then visibly break;
        # bilinear gives smooth strokes that look like handwriting. Its weights are a convex
        # combination, so the values stay in [-1, 1].
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.numpy()
    labels = bunch.target.astype(np.int64)
    if split != "all":
        # A fixed, seeded split, stratified so that each class has the same share in both parts.
        index = np.arange(len(labels))
        train_index, test_index = train_test_split(
            index, test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
        )
        keep = np.sort(train_index if split == "train" else test_index)
        images, labels = images[keep], labels[keep]
    images = np.ascontiguousarray(images)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_digits_args(split: str, size: int) -> None:
    check_choice(split, DIGITS_SPLITS, "digits split")
    check_int_range(size, "size", 8, 256, hint="Digits are 8x8 originally; the course uses size=16.")


def digits_tensors(split: str = "train", size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as tensors, for fast training loops.

    :param split: "train" (1,497 images), "test" (300, about 30 per class) or "all" (1,797)
    :param size: height and width H = W of the images (bilinear upsampling from 8x8)
    :return: images x_0 (N, 1, H, W) float32 in [-1, 1], labels y (N,) int64 in 0..9
    """
    _check_digits_args(split, size)
    images, labels = _digits_arrays(split, size)
    # Copies, so that a caller who edits them in place cannot change the cached arrays.
    return torch.tensor(images), torch.tensor(labels)


def load_digits(split: str = "train", size: int = 16):
    """The digits as a ``datasets.Dataset`` with columns "image" and "label".

    ``ds[i]["image"]`` is a float32 tensor (1, H, W) in [-1, 1]; ``ds[i]["label"]`` is an int
    0..9 (the column's feature is a ``ClassLabel`` named "0".."9").

    :param split: "train" (1,497 images), "test" (300) or "all" (1,797)
    :param size: height and width H = W of the images
    """
    import datasets
    import pyarrow as pa

    _check_digits_args(split, size)
    images, labels = _digits_arrays(split, size)
    features = datasets.Features({
        "image": datasets.Array3D(shape=(1, size, size), dtype="float32"),
        "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
    })
    table = pa.table({"image": _fixed_size_lists(images), "label": pa.array(labels)})
    dataset = datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))
    return dataset.with_format("torch", columns=["image"], output_all_columns=True)


def _fixed_size_lists(array: np.ndarray):
    """A numpy array (N, d1, d2, ...) as nested Arrow fixed-size lists (fast, no Python loop)."""
    import pyarrow as pa

    nested = pa.array(np.ascontiguousarray(array).reshape(-1))
    for length in reversed(array.shape[1:]):
        nested = pa.FixedSizeListArray.from_arrays(nested, length)
    return nested


# ---------------------------------------------------------------------------------------------
# shapes with captions
# ---------------------------------------------------------------------------------------------

SHAPES_SPLITS = ("train", "test", "heldout", "all")
DEFAULT_NUM_IMAGES = {"train": 10_000, "test": 1_000, "heldout": 1_000, "all": 10_000}
FULL_CAPTION_FRACTION = 0.5  # share of images whose caption names all four attributes


def _sample_geometry(rng: np.random.Generator, size_index: np.ndarray, position_index: np.ndarray):
    """Draw each image's bounding box: side s and top-left corner (x0, y0), all integers.

    The box covers pixels x0 <= x < x0 + s and y0 <= y < y0 + s, so its centre is
    (x0 + s/2, y0 + s/2). Steps:
      1. s uniform over the size's range (14..18 or 28..34);
      2. x0 uniform over the integers whose centre is within POSITION_JITTER of the position's
         centre: |x0 + s/2 - cx| <= 4 (same for y0);
      3. clamped into the image, 0 <= x0 <= 64 - s: only large shapes in a corner move, and
         they move towards the nominal centre, so |centre - (cx, cy)| <= 4 still holds.
    """
    count = len(size_index)
    low_high = np.array([SIZES[name] for name in _SIZE_NAMES])[size_index]  # (N, 2)
    side = rng.integers(low_high[:, 0], low_high[:, 1] + 1)  # (N,)
    centre = np.array([POSITIONS[name] for name in _POSITION_NAMES], dtype=np.float64)[position_index]  # (N, 2)
    lowest = np.ceil(centre - side[:, None] / 2 - POSITION_JITTER)  # (N, 2)
    highest = np.floor(centre - side[:, None] / 2 + POSITION_JITTER)
    corner = lowest + np.floor(rng.random((count, 2)) * (highest - lowest + 1))
    corner = np.clip(corner, 0, IMAGE_SIZE - side[:, None]).astype(np.int64)
    return side, corner


def _sample_colors(rng: np.random.Generator, color_index: np.ndarray) -> np.ndarray:
    """RGB (N, 3) uint8: the base colour plus an integer in [-15, 15] on each channel."""
    base = np.array([COLORS[name] for name in _COLOR_NAMES], dtype=np.int64)[color_index]
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=base.shape)
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def _render(shape_index: np.ndarray, side: np.ndarray, corner: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Draw the shapes: (N,) shape ids, box sides, (N, 2) corners, (N, 3) colours -> (N, 64, 64, 3) uint8.

    A pixel (x, y) is painted when its centre (u, v) = (x + 0.5 - x0, y + 0.5 - y0), measured
    from the box's top-left corner, lies in the shape (all sizes in px, s the box side):
      square:   0 <= u, v <= s
      circle:   (u - s/2)^2 + (v - s/2)^2 <= (s/2)^2
      triangle: apex (s/2, 0), base from (0, s) to (s, s): |u - s/2| <= (v + 1/2) / 2, tested at
                the pixel's lower edge v + 1/2 so that the apex row is painted and the measured
                box is exactly s x s.
    """
    count = len(side)
    images = np.zeros((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    pixel = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    for start in range(0, count, 1024):  # chunks keep the (n, 64, 64) masks small
        stop = min(start + 1024, count)
        s = side[start:stop, None, None].astype(np.float32)  # (n, 1, 1)
        u = pixel[None, None, :] - corner[start:stop, 0, None, None]  # (n, 1, 64): x across
        v = pixel[None, :, None] - corner[start:stop, 1, None, None]  # (n, 64, 1): y down
        inside_box = (u >= 0) & (u <= s) & (v >= 0) & (v <= s)  # (n, 64, 64)
        circle = (u - s / 2) ** 2 + (v - s / 2) ** 2 <= (s / 2) ** 2
        triangle = np.abs(u - s / 2) <= (v + 0.5) / 2
        kind = shape_index[start:stop, None, None]
        mask = inside_box & np.where(kind == 0, circle, np.where(kind == 1, True, triangle))
        images[start:stop] = mask[..., None] * rgb[start:stop, None, None, :]
    return images


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, int) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}. "
                    f"Pass np.random.default_rng(0) or 0.")


def render_shape(shape: str, color: str, size: str, position: str, rng=None) -> np.ndarray:
    """Draw one picture: a solid shape on black, with jittered colour, box size and position.

    :param shape: "circle", "square" or "triangle"
    :param color: one of COLORS ("red", "green", ...)
    :param size: "small" (box 14-18 px) or "large" (28-34 px)
    :param position: one of POSITIONS ("top left", ..., "center")
    :param rng: a numpy Generator (or an int seed) that draws the jitter
    :return: (64, 64, 3) uint8 RGB array
    """
    ids = _attribute_ids([shape], [color], [size], [position])
    return _draw(_as_rng(rng), *ids)[0]


def _attribute_ids(shapes, colors, sizes, positions):
    for values, names, what in ((shapes, SHAPES, "shape"), (colors, _COLOR_NAMES, "color"),
                                (sizes, _SIZE_NAMES, "size"), (positions, _POSITION_NAMES, "position")):
        for value in set(values):
            check_choice(value, names, what)
    return tuple(np.array([names.index(v) for v in values], dtype=np.int64)
                 for values, names in ((shapes, SHAPES), (colors, _COLOR_NAMES),
                                       (sizes, _SIZE_NAMES), (positions, _POSITION_NAMES)))


def _draw(rng, shape_index, color_index, size_index, position_index) -> np.ndarray:
    """The jitter (colour, then box) drawn from ``rng``, then the pictures: (N, 64, 64, 3) uint8."""
    rgb = _sample_colors(rng, color_index)
    side, corner = _sample_geometry(rng, size_index, position_index)
    return _render(shape_index, side, corner, rgb)


def _check_shapes_args(split, num_images, seed):
    check_choice(split, SHAPES_SPLITS, "shapes split")
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES[split]
    check_int_range(num_images, "num_images", 1, 1_000_000)
    check_int_range(seed, "seed", 0)
    return num_images


@functools.lru_cache(maxsize=2)
def _make_shapes(split: str, num_images: int, seed: int):
    """Attributes, captions and pictures of one split; read-only arrays, cached."""
    # Each split has its own random stream, so "test" with seed 0 is not a copy of "train".
    rng = np.random.default_rng([seed, SHAPES_SPLITS.index(split)])
    pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(_COLOR_NAMES))]
    heldout = {(SHAPES.index(s), _COLOR_NAMES.index(c)) for s, c in HELDOUT_PAIRS}
    if split in ("train", "test"):
        pairs = [p for p in pairs if p not in heldout]
    elif split == "heldout":
        pairs = sorted(heldout)
    pair = np.array(pairs)[rng.integers(len(pairs), size=num_images)]  # (N, 2): shape, colour
    shape_index, color_index = pair[:, 0], pair[:, 1]
    size_index = rng.integers(len(_SIZE_NAMES), size=num_images)
    position_index = rng.integers(len(_POSITION_NAMES), size=num_images)
    # Caption form: with probability FULL_CAPTION_FRACTION all attributes; otherwise each of
    # size, colour and position is kept with probability 1/2 (the shape is always named).
    full = rng.random(num_images) < FULL_CAPTION_FRACTION
    keep = (rng.random((num_images, 3)) < 0.5) | full[:, None]  # (N, 3): size, colour, position
    images = _draw(rng, shape_index, color_index, size_index, position_index)
    attributes = {
        "shape": [SHAPES[i] for i in shape_index],
        "color": [_COLOR_NAMES[i] for i in color_index],
        "size": [_SIZE_NAMES[i] for i in size_index],
        "position": [_POSITION_NAMES[i] for i in position_index],
    }
    captions = [
        shape_caption(attributes["shape"][i],
                      attributes["color"][i] if keep[i, 1] else None,
                      attributes["size"][i] if keep[i, 0] else None,
                      attributes["position"][i] if keep[i, 2] else None)
        for i in range(num_images)
    ]
    images.setflags(write=False)
    return images, captions, attributes


def load_shapes(split: str = "train", num_images: int | None = None, seed: int = 0):
    """Shapes with captions as a ``datasets.Dataset``.

    Columns: "image" (a 64x64 RGB ``PIL.Image``: shows itself in a notebook; use
    ``ds.with_format("torch")`` for uint8 tensors (B, 3, 64, 64), or ``shapes_tensors`` for
    float tensors in [-1, 1]), "caption" (str), "shape", "color", "size", "position" (str).

    The same (split, num_images, seed) always gives the same images and captions.

    :param split: "train" (no green triangle, no blue circle), "test" (same distribution as
        train, other images), "heldout" (only green triangles and blue circles), "all" (every pair)
    :param num_images: how many (default 10,000 for train and all, 1,000 for test and heldout)
    :param seed: seed of the random attributes, jitter and caption forms
    """
    import datasets
    import pyarrow as pa
    from PIL import Image

    num_images = _check_shapes_args(split, num_images, seed)
    images, captions, attributes = _make_shapes(split, num_images, seed)
    encoded = []
    for image in images:  # PNG bytes, the storage of datasets.Image (about 200 bytes each)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        encoded.append(buffer.getvalue())
    features = datasets.Features({
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        **{name: datasets.Value("string") for name in attributes},
    })
    image_column = pa.StructArray.from_arrays(
        [pa.array(encoded, pa.binary()), pa.array([None] * num_images, pa.string())], ["bytes", "path"]
    )
    table = pa.table({"image": image_column, "caption": pa.array(captions),
                      **{name: pa.array(values) for name, values in attributes.items()}})
    return datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))


def shapes_tensors(split: str = "train", num_images: int | None = None, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Shapes as tensors for fast training: the same images and captions as ``load_shapes``.

    :return: images x_0 (N, 3, 64, 64) float32 in [-1, 1], captions (list of N str)
    """
    num_images = _check_shapes_args(split, num_images, seed)
    images, captions, _ = _make_shapes(split, num_images, seed)
    # uint8 (N, H, W, C) -> x_0 in [-1, 1], (N, C, H, W)
    return from_uint8(images).contiguous(), list(captions)


def shapes_attributes(split: str = "train", num_images: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The attributes of the pictures of ``shapes_tensors(split, num_images, seed)`` as integer ids.

    :return: {"shape", "color", "size", "position"}: LongTensor (N,), the index of each picture's
        value in ``ATTRIBUTES[name]`` (e.g. color 0 = "red")
    """
    num_images = _check_shapes_args(split, num_images, seed)
    _, _, attributes = _make_shapes(split, num_images, seed)
    return {name: torch.tensor([values.index(v) for v in attributes[name]]) for name, values in ATTRIBUTES.items()}
