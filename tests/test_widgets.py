"""Tests of course_lib.widgets: the guidance explorer's logic, without a browser.

A tiny random mini Stable Diffusion (tests/_minisd.py) stands in for the real one. The slider is
moved by setting its value, as a learner's drag does through the widget's comm; the tests check
that the picture changes, that every scale comes from ONE pipeline call, and that errors become
a line of text in the status, never an exception.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from _minisd import IMAGE_SIZE, make_mini_sd

pytest.importorskip("ipywidgets")
pytest.importorskip("transformers")

from course_lib.pipeline import StableDiffusion  # noqa: E402
from course_lib.widgets import CSS_CLASSES, GuidanceExplorer, guidance_explorer  # noqa: E402

PROMPT = "a large red circle in the center"
SCALES = (1, 2, 3, 5, 7.5, 10)
STEPS = 3


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = StableDiffusion.from_course("mini-sd", directory=make_mini_sd(tmp_path_factory.mktemp("mini-sd")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class CountingPipe:
    """Calls the pipeline and records the keyword arguments of every call."""

    def __init__(self, pipe, fail_with: Exception | None = None):
        self.pipe = pipe
        self.calls: list[dict] = []
        self.fail_with = fail_with

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        if self.fail_with is not None:
            raise self.fail_with
        return self.pipe(*args, **kwargs)


def explorer_for(pipe, **kwargs) -> tuple[GuidanceExplorer, CountingPipe]:
    counting = CountingPipe(pipe)
    return guidance_explorer(counting, PROMPT, scales=SCALES, steps=STEPS, **kwargs), counting


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_controls_have_stable_descriptions_and_css_classes(pipe):
    explorer, _ = explorer_for(pipe)
    assert CSS_CLASSES["explorer"] in explorer._dom_classes
    expected = {
        "prompt_text": ("course-guidance-prompt", "prompt"),
        "negative_text": ("course-guidance-negative-prompt", "negative prompt"),
        "scale_slider": ("course-guidance-slider", "guidance scale"),
        "steps_dropdown": ("course-guidance-steps", "steps"),
        "seed_text": ("course-guidance-seed", "seed"),
        "generate_button": ("course-guidance-generate", "Generate"),
        "image": ("course-guidance-image", None),
        "status": ("course-guidance-status", None),
    }
    for attribute, (css, description) in expected.items():
        widget = getattr(explorer, attribute)
        assert css in widget._dom_classes, attribute
        if description is not None:
            assert widget.description == description
    assert explorer.scale_slider.continuous_update is False
    assert list(explorer.scale_slider._options_labels) == [f"{s:g}" for s in SCALES]
    assert explorer.scale_slider.value == 7.5


def test_all_scales_come_from_one_batched_call(pipe):
    explorer, counting = explorer_for(pipe)
    assert len(counting.calls) == 1 and explorer.pipeline_calls == 1
    call = counting.calls[0]
    assert call["guidance_scale"] == list(SCALES)
    assert call["num_inference_steps"] == STEPS and call["output_type"] == "np"
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert explorer.status.value.startswith("guidance scale 7.5 · 6 scales sampled in one batched pass")


def test_moving_the_slider_changes_the_picture_without_sampling(pipe):
    explorer, counting = explorer_for(pipe)
    shown = {}
    for scale in SCALES:
        explorer.scale_slider.value = scale  # what the browser's slider does
        shown[scale] = explorer.image.value
        assert explorer.status.value.startswith(f"guidance scale {scale:g} · ")
    assert len(counting.calls) == 1  # the slider never samples
    assert len(set(shown.values())) == len(SCALES)  # a different picture at every scale
    explorer.scale_slider.value = 7.5
    assert explorer.image.value == shown[7.5]  # the same picture when it comes back


def test_each_picture_is_the_single_scale_run(pipe):
    """The sweep's picture at scale s equals pipe(prompt, guidance_scale=s) from the same seed."""
    explorer, _ = explorer_for(pipe, seed=3)
    for scale in (1, 5, 10):
        alone = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=scale,
                     generator=torch.Generator().manual_seed(3), output_type="pil")
        expected = np.stack([np.asarray(picture) for picture in alone])  # uint8 (1, H, W, 3)
        difference = np.abs(explorer.pictures(scale).astype(int) - expected.astype(int)).max()
        assert difference <= 1, (scale, difference)


def test_pictures_are_enlarged_with_nearest_neighbour(pipe):
    explorer, _ = explorer_for(pipe, display_size=256)
    assert png_size(explorer.image.value) == (256, 256)  # 16 px -> 256 px
    # shown at that size, not stretched to the width of the notebook's output
    assert (explorer.image.layout.width, explorer.image.layout.height) == ("256px", "256px")
    assert explorer.image.layout.align_self == "flex-start"
    picture = np.asarray(Image.open(io.BytesIO(explorer.image.value)))
    factor = 256 // IMAGE_SIZE
    assert (picture[::factor, ::factor] == explorer.pictures(7.5)[0]).all()  # whole pixels, no smoothing
    two, _ = explorer_for(pipe, display_size=64, num_images=2)
    assert png_size(two.image.value) == (2 * 64 + 4 * (64 // IMAGE_SIZE), 64)
    assert two.pictures(1).shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_new_prompt_samples_once_and_old_prompt_is_cached(pipe):
    explorer, counting = explorer_for(pipe)
    first = explorer.image.value
    explorer.prompt_text.value = "a small blue square in the top left"
    assert len(counting.calls) == 2 and explorer.image.value != first
    explorer.scale_slider.value = 2
    assert len(counting.calls) == 2
    explorer.prompt_text.value = PROMPT  # back to the first prompt: read from the cache
    assert len(counting.calls) == 2
    assert "read from the cache" in explorer.status.value
    explorer.seed_text.value = 5
    explorer.steps_dropdown.value = 10
    explorer.negative_text.value = "red"
    assert len(counting.calls) == 5
    assert counting.calls[-1]["negative_prompt"] == "red" and counting.calls[-1]["num_inference_steps"] == 10
    assert counting.calls[0]["negative_prompt"] is None  # "" is the plain unconditional branch


def test_generate_button_when_not_automatic(pipe):
    explorer, counting = explorer_for(pipe, auto=False)
    assert counting.calls == [] and explorer.image.value == b""
    assert "Generate" in explorer.status.value
    explorer.scale_slider.value = 3  # nothing to show yet, and still no sampling
    assert counting.calls == []
    explorer.generate_button.click()
    assert len(counting.calls) == 1 and explorer.image.value != b""
    explorer.prompt_text.value = "a triangle"  # not automatic: waits for the button
    assert len(counting.calls) == 1
    explorer.generate_button.click()
    assert len(counting.calls) == 2


def test_errors_are_a_status_line_not_an_exception(pipe, capsys):
    counting = CountingPipe(pipe)
    explorer = guidance_explorer(counting, PROMPT, scales=SCALES, steps=STEPS)
    good = explorer.image.value
    counting.fail_with = RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
    explorer.seed_text.value = 1
    assert explorer.status.value == "⚠ RuntimeError: CUDA out of memory."
    assert CSS_CLASSES["error"] in explorer._dom_classes
    assert CSS_CLASSES["busy"] not in explorer._dom_classes
    assert explorer.image.value == good and explorer.generate_button.disabled is False
    counting.fail_with = None
    explorer.prompt_text.value = "   "
    assert explorer.status.value.startswith("⚠ ValueError: the prompt is empty")
    explorer.prompt_text.value = "a red square"
    assert CSS_CLASSES["error"] not in explorer._dom_classes
    assert explorer.status.value.startswith("guidance scale 7.5")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_unknown_words_are_reported_in_the_status(pipe):
    explorer, _ = explorer_for(pipe)
    explorer.prompt_text.value = "a red dodecahedron"
    assert "warning: These words are not in the tokenizer's vocabulary" in explorer.status.value


def test_cache_keeps_the_newest_sweeps(pipe):
    explorer, counting = explorer_for(pipe, max_cached=2)
    for seed in (1, 2):
        explorer.seed_text.value = seed
    explorer.seed_text.value = 0  # dropped: sampled again
    assert len(counting.calls) == 4
    explorer.seed_text.value = 2  # still cached
    assert len(counting.calls) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"guidance_scale": 4.0}, "not one of the slider's scales"),
    ({"scales": (1, 3, 3)}, "repeated"),
    ({"scales": ()}, "non-empty"),
    ({"scales": (1, -2)}, "at least 0"),
    ({"steps": 0}, "steps"),
])
def test_bad_arguments_say_what_to_do(pipe, kwargs, message):
    arguments = {"scales": SCALES, "steps": STEPS, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        guidance_explorer(pipe, PROMPT, **arguments)
