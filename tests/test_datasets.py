"""Tests of course_lib.datasets: the digits and the shapes with captions, measured on the pixels."""

import re

import numpy as np
import pytest
import torch

from course_lib.datasets import (
    COLOR_JITTER,
    COLORS,
    HELDOUT_PAIRS,
    POSITION_JITTER,
    POSITIONS,
    SHAPES,
    SIZES,
    digits_tensors,
    load_digits,
    load_shapes,
    render_shape,
    shape_caption,
    shapes_tensors,
)

# ----------------------------------------------------------------------------------- digits


@pytest.mark.parametrize("split, count", [("train", 1497), ("test", 300), ("all", 1797)])
def test_digits_shapes_range_and_classes(split, count):
    images, labels = digits_tensors(split)
    assert images.shape == (count, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (count,) and labels.dtype == torch.long
    assert images.min() == -1.0 and images.max() == 1.0  # black background, full-ink strokes
    assert set(labels.tolist()) == set(range(10))


def test_digits_split_is_stratified_disjoint_and_complete():
    train, train_labels = digits_tensors("train")
    test, test_labels = digits_tensors("test")
    everything, all_labels = digits_tensors("all")
    # Each class has (nearly) the same share in test as in the whole data set: 300/1797.
    expected = torch.bincount(all_labels) * 300 / 1797
    assert (torch.bincount(test_labels, minlength=10) - expected).abs().max() < 1.0
    # train + test is all of it, with no image in both (compare images as rows of bytes).
    rows = lambda x: {bytes(r.numpy().tobytes()) for r in x.flatten(1)}
    assert len(rows(train) & rows(test)) == 0
    assert sorted(rows(train) | rows(test)) == sorted(rows(everything))
    assert sorted(train_labels.tolist() + test_labels.tolist()) == sorted(all_labels.tolist())


def test_digits_size_8_is_the_original_scaled_to_minus_one_one():
    from sklearn.datasets import load_digits as sklearn_load_digits

    images, _ = digits_tensors("all", size=8)
    original = torch.from_numpy(sklearn_load_digits().images).float()
    # x_0 = 2 * v / 16 - 1 with v in 0..16
    torch.testing.assert_close(images[:, 0], original / 8 - 1)


def test_digits_upsampling_keeps_block_means():
    # Bilinear 2x upsampling (align_corners=False) then 2x2 averaging gives back a smoothed
    # original: it matches the original closely, and exactly on the mean of each image.
    small, _ = digits_tensors("all", size=8)
    large, _ = digits_tensors("all", size=16)
    pooled = torch.nn.functional.avg_pool2d(large, 2)
    torch.testing.assert_close(pooled.mean(dim=(1, 2, 3)), small.mean(dim=(1, 2, 3)), atol=0.05, rtol=0)
    assert (pooled - small).abs().mean() < 0.15


def test_digits_tensors_are_copies():
    images, labels = digits_tensors("test")
    images.zero_()
    labels.zero_()
    again, again_labels = digits_tensors("test")
    assert again.abs().sum() > 0 and again_labels.sum() > 0


def test_load_digits_dataset_matches_tensors():
    dataset = load_digits("test")
    images, labels = digits_tensors("test")
    assert len(dataset) == 300 and dataset.column_names == ["image", "label"]
    item = dataset[7]
    assert isinstance(item["image"], torch.Tensor) and item["image"].shape == (1, 16, 16)
    assert item["image"].dtype == torch.float32 and isinstance(item["label"], int)
    torch.testing.assert_close(item["image"], images[7])
    assert list(dataset["label"])[:20] == labels[:20].tolist()
    assert dataset.features["label"].names == [str(d) for d in range(10)]


def test_digits_errors():
    with pytest.raises(ValueError, match="Unknown digits split 'validation'"):
        digits_tensors("validation")
    with pytest.raises(ValueError, match="size must be between 8 and 256, got 4"):
        load_digits(size=4)
    with pytest.raises(TypeError, match="size must be an integer"):
        digits_tensors(size=16.0)


# ----------------------------------------------------------------------------------- shapes


def _measure(image: np.ndarray) -> dict:
    """What a picture shows, read from its pixels: bounding box, colour, fill."""
    painted = image.any(axis=-1)  # (64, 64)
    ys, xs = np.nonzero(painted)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    colors = np.unique(image[painted], axis=0)
    return {
        "width": x1 - x0, "height": y1 - y0, "centre": ((x0 + x1) / 2, (y0 + y1) / 2),
        "colors": colors, "fill": painted.sum() / ((x1 - x0) * (y1 - y0)),
        "top_row": painted[y0].sum(), "bottom_row": painted[y1 - 1].sum(),
    }


@pytest.fixture(scope="module")
def train_shapes():
    return load_shapes("train", num_images=600, seed=3)


def test_shapes_columns_and_image_type(train_shapes):
    assert train_shapes.column_names == ["image", "caption", "shape", "color", "size", "position"]
    image = train_shapes[0]["image"]
    assert image.size == (64, 64) and image.mode == "RGB"  # a PIL image
    as_torch = train_shapes.with_format("torch")[:4]["image"]
    assert as_torch.shape == (4, 3, 64, 64) and as_torch.dtype == torch.uint8


@pytest.mark.slow
def test_shapes_attributes_measured_on_pixels(train_shapes):
    array = train_shapes.with_format("numpy")[:]["image"]  # (N, 64, 64, 3) uint8
    rows = train_shapes.remove_columns("image").to_list()
    for index, row in enumerate(rows):
        seen = _measure(array[index])
        low, high = SIZES[row["size"]]
        # A square bounding box whose side is in the size's range.
        assert seen["width"] == seen["height"] and low <= seen["width"] <= high, (index, row, seen)
        # One solid colour, each channel within the jitter of the named colour.
        assert len(seen["colors"]) == 1
        assert np.abs(seen["colors"][0].astype(int) - COLORS[row["color"]]).max() <= COLOR_JITTER
        # The centre of the box within the position jitter of the named position.
        cx, cy = POSITIONS[row["position"]]
        assert abs(seen["centre"][0] - cx) <= POSITION_JITTER and abs(seen["centre"][1] - cy) <= POSITION_JITTER
        # The shape, from how it fills its box: square 1, circle pi/4, triangle 1/2, apex on top.
        if row["shape"] == "square":
            assert seen["fill"] == 1.0
        elif row["shape"] == "circle":
            assert 0.72 < seen["fill"] < 0.85  # pi/4 = 0.785
            assert seen["top_row"] < seen["width"] / 2 and seen["bottom_row"] < seen["width"] / 2
        else:
            assert 0.45 < seen["fill"] < 0.65  # 1/2 + about 1/(2 s) from the pixel rows
            assert seen["top_row"] <= 2 and seen["bottom_row"] == seen["width"]


def test_shapes_cover_every_attribute_value(train_shapes):
    assert set(train_shapes["shape"]) == set(SHAPES)
    assert set(train_shapes["color"]) == set(COLORS)
    assert set(train_shapes["size"]) == set(SIZES)
    assert set(train_shapes["position"]) == set(POSITIONS)


@pytest.mark.slow
def test_jitter_reaches_its_limits():
    # Over many images the jitter uses its whole range: it is really "at most 15" / "at most 4".
    dataset = load_shapes("all", num_images=2000, seed=0)
    array = dataset.with_format("numpy")[:]["image"]
    offsets, centre_offsets = [], []
    colors, positions = list(dataset["color"]), list(dataset["position"])
    for index in range(len(dataset)):
        seen = _measure(array[index])
        offsets.append(seen["colors"][0].astype(int) - COLORS[colors[index]])
        centre = np.array(seen["centre"]) - POSITIONS[positions[index]]
        centre_offsets.append(centre)
    offsets, centre_offsets = np.array(offsets), np.array(centre_offsets)
    assert offsets.min() == -COLOR_JITTER and offsets.max() == COLOR_JITTER
    assert centre_offsets.min() == -POSITION_JITTER and centre_offsets.max() == POSITION_JITTER


def test_heldout_pairs_only_in_heldout_split(train_shapes):
    heldout = set(HELDOUT_PAIRS)
    train_pairs = set(zip(train_shapes["shape"], train_shapes["color"]))
    test = load_shapes("test", num_images=600, seed=3)
    assert not train_pairs & heldout
    assert not set(zip(test["shape"], test["color"])) & heldout
    assert len(train_pairs) == len(SHAPES) * len(COLORS) - len(heldout)  # all other pairs occur
    held = load_shapes("heldout", num_images=100, seed=3)
    assert set(zip(held["shape"], held["color"])) == heldout
    for caption in list(train_shapes["caption"]) + list(test["caption"]):
        assert "green triangle" not in caption and "blue circle" not in caption


def test_captions_name_the_attributes_in_every_form(train_shapes):
    pattern = re.compile(r"^a (?:(small|large) )?(?:(\w+) )?(circle|square|triangle)(?: in the (.+))?$")
    forms, full = set(), 0
    for row in train_shapes.remove_columns("image").to_list():
        match = pattern.match(row["caption"])
        assert match, row["caption"]
        size, color, shape, position = match.groups()
        assert shape == row["shape"]
        assert size in (None, row["size"]) and color in (None, row["color"]) and position in (None, row["position"])
        forms.add((size is not None, color is not None, position is not None))
        full += None not in (size, color, position)
    assert len(forms) == 8  # every subset of (size, colour, position) left out somewhere
    assert 0.45 < full / len(train_shapes) < 0.65  # half full captions, plus 1/8 of the other half


def test_shape_caption_formula():
    assert shape_caption("circle", "red", "large", "center") == "a large red circle in the center"
    assert shape_caption("circle", color="red") == "a red circle"
    assert shape_caption("triangle", position="center") == "a triangle in the center"
    assert shape_caption("square") == "a square"
    with pytest.raises(ValueError, match="Unknown color 'purple'"):
        shape_caption("square", color="purple")


def test_shapes_deterministic_by_seed():
    first = load_shapes("train", num_images=50, seed=11)
    again = load_shapes("train", num_images=50, seed=11)
    other = load_shapes("train", num_images=50, seed=12)
    images = lambda d: d.with_format("numpy")[:]["image"]
    assert np.array_equal(images(first), images(again)) and list(first["caption"]) == list(again["caption"])
    assert not np.array_equal(images(first), images(other))
    # test is a different stream from train with the same seed
    assert list(load_shapes("test", num_images=50, seed=11)["caption"]) != list(first["caption"])


def test_render_shape_deterministic_and_checked():
    a = render_shape("triangle", "green", "large", "center", np.random.default_rng(5))
    b = render_shape("triangle", "green", "large", "center", 5)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    seen = _measure(a)
    assert 28 <= seen["width"] <= 34 and seen["top_row"] <= 2
    with pytest.raises(ValueError, match="Unknown shape 'star'"):
        render_shape("star", "green", "large", "center", 0)
    with pytest.raises(ValueError, match="Unknown position 'middle'"):
        render_shape("circle", "green", "large", "middle", 0)
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        render_shape("circle", "green", "large", "center", "seed")


def test_large_corner_shapes_stay_inside_the_image():
    for position in ("top left", "bottom right"):
        for seed in range(20):
            image = render_shape("square", "red", "large", position, seed)
            seen = _measure(image)
            assert seen["width"] >= 28 and seen["height"] >= 28  # not cut by the border


def test_shapes_tensors_match_dataset():
    dataset = load_shapes("heldout", num_images=20, seed=1)
    images, captions = shapes_tensors("heldout", num_images=20, seed=1)
    assert images.shape == (20, 3, 64, 64) and images.dtype == torch.float32
    assert captions == list(dataset["caption"])
    as_uint8 = dataset.with_format("torch")[:]["image"].float()
    torch.testing.assert_close(images, as_uint8 / 127.5 - 1)
    assert images.min() >= -1 and images.max() <= 1


def test_shapes_errors():
    with pytest.raises(ValueError, match="Unknown shapes split 'valid'"):
        load_shapes("valid")
    with pytest.raises(ValueError, match="num_images must be between 1"):
        shapes_tensors(num_images=0)
    with pytest.raises(TypeError, match="seed must be an integer"):
        load_shapes(seed=1.5)
