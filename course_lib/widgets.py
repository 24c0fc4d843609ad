"""ipywidgets explorers for the notebooks: the guidance-scale explorer of lesson 08.

``guidance_explorer(pipe)`` shows one prompt at several guidance scales. All the scales are
sampled together, **one batched pass** of ``pipe(prompt, guidance_scale=[1, 2, 3, 5, 7.5, 10])``
per (prompt, negative prompt, steps, seed), from the same starting noise, and kept in a cache: moving
the slider only picks another picture out of the cache, so it answers at once. Changing the
prompt, the negative prompt, the steps or the seed (or pressing "Generate") samples a new sweep.

The controls have stable descriptions and CSS classes, so that a browser test can find them in
JupyterLab or Voilà:

==================================  ========================================  ==========================
CSS class                           widget                                    description
==================================  ========================================  ==========================
``course-guidance-explorer``        the whole explorer (a VBox)               --
``course-guidance-busy``            added to the explorer while it samples    --
``course-guidance-error``           added to the explorer after a failure     --
``course-guidance-prompt``          Text                                      "prompt"
``course-guidance-negative-prompt`` Text                                      "negative prompt"
``course-guidance-slider``          SelectionSlider over the scales           "guidance scale"
``course-guidance-steps``           Dropdown                                  "steps"
``course-guidance-seed``            IntText                                   "seed"
``course-guidance-generate``        Button                                    "Generate"
``course-guidance-image``           Image (PNG, nearest-neighbour enlarged)   --
``course-guidance-status``          Label: scale shown, time, errors as text  --
==================================  ========================================  ==========================

Errors (an unknown word, a bad argument, a model that fails) appear in the status line as one
line of text, never as a traceback, and the last good picture stays.
"""

from __future__ import annotations

import io
import time
import warnings
from collections import OrderedDict
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image

from .checks import check_int_range, check_number
from .i18n import tr
from .pixels import from_unit, to_uint8

__all__ = ["guidance_explorer", "GuidanceExplorer", "CSS_CLASSES"]

# widget -> CSS class (a browser test finds the widgets by these)
CSS_CLASSES = {
    "explorer": "course-guidance-explorer",
    "busy": "course-guidance-busy",
    "error": "course-guidance-error",
    "prompt": "course-guidance-prompt",
    "negative_prompt": "course-guidance-negative-prompt",
    "slider": "course-guidance-slider",
    "steps": "course-guidance-steps",
    "seed": "course-guidance-seed",
    "generate": "course-guidance-generate",
    "image": "course-guidance-image",
    "status": "course-guidance-status",
}


def guidance_explorer(pipe, prompt: str = "a large red circle in the center", negative_prompt: str = "",
                      scales: Sequence[float] = (1, 2, 3, 5, 7.5, 10), steps: int = 20, seed: int = 0, *,
                      guidance_scale: float = 7.5, steps_options: Sequence[int] = (10, 20, 30, 50),
                      sampler: str = "ddim", num_images: int = 1, display_size: int = 256,
                      auto: bool = True, max_cached: int = 16) -> "GuidanceExplorer":
    """An explorer of the guidance scale: prompt, negative prompt, a scale slider, steps, seed, the picture.

    :param pipe: a :class:`course_lib.pipeline.StableDiffusion` (or anything called like it with
        ``guidance_scale=[...]`` and ``output_type="np"``)
    :param prompt: the first prompt
    :param negative_prompt: the first negative prompt ("" = the unconditional branch sees the empty prompt)
    :param scales: the guidance scales of the slider, sampled together (diffusers' meaning: 1 = no guidance)
    :param steps: sampling steps of the first sweep (added to ``steps_options`` if missing)
    :param seed: seed of the starting noise (a CPU generator: the same pictures on every device)
    :param guidance_scale: where the slider starts: one of ``scales``
    :param steps_options: the choices of the steps dropdown
    :param sampler: "ddim", "ddpm", "euler" or "dpmsolver"
    :param num_images: pictures per scale, shown side by side (different starting noise each)
    :param display_size: each picture is shown this wide: enlarged with nearest-neighbour
        (64 px -> 256 px) or shrunk (SD's 512 px -> 256 px)
    :param auto: sample a sweep at once, and again whenever the prompt, negative prompt, steps or
        seed change (False: only when "Generate" is pressed)
    :param max_cached: sweeps kept in memory (the oldest is dropped first)
    :return: the explorer, an ``ipywidgets.VBox``; display it as the last line of a cell
    """
    return GuidanceExplorer(pipe, prompt=prompt, negative_prompt=negative_prompt, scales=scales, steps=steps,
                            seed=seed, guidance_scale=guidance_scale, steps_options=steps_options, sampler=sampler,
                            num_images=num_images, display_size=display_size, auto=auto, max_cached=max_cached)


def _check_scales(scales) -> list[float]:
    if isinstance(scales, (int, float)) or not isinstance(scales, Sequence) or len(scales) == 0:
        raise ValueError(f"scales must be a non-empty list of guidance scales such as (1, 3, 7.5), got {scales!r}.")
    values = [check_number(s, "each guidance scale", minimum=0.0, hint="1 means no guidance.") for s in scales]
    if len(set(values)) != len(values):
        raise ValueError(f"scales has repeated values {values}; give each guidance scale once.")
    return values


def _first_line(text: str, limit: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else "(no message)"
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _png(pictures: np.ndarray, display_size: int) -> bytes:
    """uint8 pictures (n, H, W, 3) -> one PNG, side by side, each ``display_size`` pixels wide."""
    n, height, width, _ = pictures.shape
    gap = 4
    row = np.zeros((height, n * width + (n - 1) * gap, 3), dtype=np.uint8)
    for i, picture in enumerate(pictures):
        row[:, i * (width + gap):i * (width + gap) + width] = picture
    image = Image.fromarray(row)
    factor = display_size / width
    if factor >= 1:  # small pictures: whole-pixel enlargement, so every pixel stays a sharp square
        factor = max(1, int(factor))
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    else:  # large pictures (SD's 512 px): shrink smoothly
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class GuidanceExplorer(widgets.VBox):
    """The guidance explorer; build it with :func:`guidance_explorer`.

    Attributes: the controls ``prompt_text``, ``negative_text``, ``scale_slider``,
    ``steps_dropdown``, ``seed_text``, ``generate_button``; the picture ``image`` and the
    ``status`` line; ``pipeline_calls`` (how many times the pipeline ran: one per sweep) and
    ``scales``. Methods: ``generate()`` (sample the sweep of the current controls unless it is
    cached; returns whether it worked), ``render()`` (show the slider's scale from the cache),
    ``pictures(scale)`` (the cached uint8 pictures (n, H, W, 3) of one scale).
    """

    def __init__(self, pipe, *, prompt: str, negative_prompt: str, scales, steps: int, seed: int,
                 guidance_scale: float, steps_options, sampler: str, num_images: int, display_size: int,
                 auto: bool, max_cached: int):
        if not callable(pipe):
            raise TypeError(f"pipe must be a pipeline such as StableDiffusion.from_course('mini-sd'), "
                            f"got {type(pipe).__name__}.")
        scales = _check_scales(scales)
        guidance_scale = check_number(guidance_scale, "guidance_scale")
        if guidance_scale not in scales:
            raise ValueError(f"guidance_scale={guidance_scale:g} is not one of the slider's scales {scales}; "
                             f"start the slider at one of them.")
        check_int_range(steps, "steps", 1, hint="Use 20 to 50 sampling steps.")
        check_int_range(seed, "seed", 0)
        check_int_range(num_images, "num_images", 1)
        check_int_range(display_size, "display_size", 16)
        check_int_range(max_cached, "max_cached", 1)
        options = sorted({check_int_range(s, "each of steps_options", 1) for s in steps_options} | {steps})

        self.pipe = pipe
        self.scales = scales
        self.sampler = sampler
        self.num_images = num_images
        self.display_size = display_size
        self.max_cached = max_cached
        self.pipeline_calls = 0
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()  # key -> uint8 (S * n, H, W, 3)
        self._shown_key: tuple | None = None  # the sweep the slider reads
        self._note = ""  # how the shown sweep was made, for the status line

        wide = {"description_width": "initial"}
        self.prompt_text = widgets.Text(value=prompt, description=tr("prompt"), continuous_update=False,
                                        style=wide, layout=widgets.Layout(width="420px"))
        self.negative_text = widgets.Text(value=negative_prompt, description=tr("negative prompt"),
                                          continuous_update=False, style=wide, layout=widgets.Layout(width="420px"))
        self.scale_slider = widgets.SelectionSlider(options=[(f"{s:g}", s) for s in scales], value=guidance_scale,
                                                    description=tr("guidance scale"), continuous_update=False,
                                                    style=wide, layout=widgets.Layout(width="420px"))
        self.steps_dropdown = widgets.Dropdown(options=options, value=steps, description=tr("steps"),
                                               layout=widgets.Layout(width="140px"))
        self.seed_text = widgets.IntText(value=seed, description=tr("seed"), layout=widgets.Layout(width="140px"))
        self.generate_button = widgets.Button(description=tr("Generate"), button_style="primary",
                                              tooltip=tr("sample every guidance scale of the slider in one batched pass"))
        # not stretched to the output's width (a flex column stretches its items): the PNG's own size
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start", max_width="100%",
                                                                          object_fit="contain"))
        self.status = widgets.Label(value="")
        for name, widget in (("prompt", self.prompt_text), ("negative_prompt", self.negative_text),
                             ("slider", self.scale_slider), ("steps", self.steps_dropdown),
                             ("seed", self.seed_text), ("generate", self.generate_button),
                             ("image", self.image), ("status", self.status)):
            widget.add_class(CSS_CLASSES[name])

        super().__init__(children=[
            self.prompt_text, self.negative_text,
            widgets.HBox([self.steps_dropdown, self.seed_text, self.generate_button]),
            self.scale_slider, self.image, self.status,
        ])
        self.add_class(CSS_CLASSES["explorer"])

        self.scale_slider.observe(self._on_slider, names="value")
        self.generate_button.on_click(self._on_generate)
        if auto:
            for control in (self.prompt_text, self.negative_text, self.steps_dropdown, self.seed_text):
                control.observe(self._on_generate, names="value")
            self.generate()
        else:
            self.status.value = tr("press Generate to sample every guidance scale in one batched pass")

    # ------------------------------------------------------------------------------ callbacks
    def _on_slider(self, _change=None) -> None:
        self.render()  # never samples: the slider only reads the cache

    def _on_generate(self, _change=None) -> None:
        self.generate()

    # ------------------------------------------------------------------------------ work
    def _key(self) -> tuple:
        return (self.prompt_text.value, self.negative_text.value, int(self.steps_dropdown.value),
                int(self.seed_text.value))

    def generate(self) -> bool:
        """Sample the sweep of the current controls (one pipeline call) unless it is cached; show it.

        :return: True when the pictures are shown, False when sampling failed (the status says why)
        """
        key = self._key()
        if key not in self._cache:
            prompt, negative_prompt, steps, seed = key
            self.add_class(CSS_CLASSES["busy"])
            self.generate_button.disabled = True
            self.status.value = tr("sampling {count} guidance scales in one batched pass ...", count=len(self.scales))
            try:
                if not prompt.strip():
                    raise ValueError("the prompt is empty; type what to draw, e.g. a red circle")
                if seed < 0:
                    raise ValueError(f"the seed must be 0 or more, got {seed}")
                start = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self.pipeline_calls += 1
                    images = self.pipe(prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                                       guidance_scale=list(self.scales), sampler=self.sampler,
                                       generator=torch.Generator().manual_seed(seed),
                                       num_images_per_prompt=self.num_images, output_type="np")
                seconds = time.perf_counter() - start
                images = np.asarray(images)
                expected = len(self.scales) * self.num_images
                if images.ndim != 4 or images.shape[0] != expected:
                    raise ValueError(f"the pipeline returned an array of shape {images.shape}, expected "
                                     f"({expected}, H, W, 3)")
            except Exception as error:  # shown as text: a learner's typo must not print a traceback
                self.add_class(CSS_CLASSES["error"])
                self.status.value = f"⚠ {type(error).__name__}: {_first_line(error)}"
                return False
            finally:
                self.remove_class(CSS_CLASSES["busy"])
                self.generate_button.disabled = False
            # [0, 1], (S * n, H, W, 3) -> uint8 0..255: to [-1, 1] and through pixels' one conversion
            self._cache[key] = to_uint8(from_unit(torch.from_numpy(images)).movedim(-1, 1))
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            self._note = tr("{count} scales sampled in one batched pass in {seconds:.1f} s ({steps} steps, seed {seed})",
                            count=len(self.scales), seconds=seconds, steps=steps, seed=seed)
            if caught:
                self._note += tr(" · warning: {message}", message=_first_line(caught[0].message, 160))
        else:
            self._cache.move_to_end(key)
            self._note = tr("read from the cache ({steps} steps, seed {seed})", steps=key[2], seed=key[3])
        self.remove_class(CSS_CLASSES["error"])
        self._shown_key = key
        self.render()
        return True

    def pictures(self, scale: float) -> np.ndarray:
        """The shown sweep's pictures at one scale, uint8 (num_images, H, W, 3)."""
        if self._shown_key is None:
            raise RuntimeError("Nothing sampled yet: call generate() (or press Generate) first.")
        if scale not in self.scales:
            raise ValueError(f"scale {scale:g} is not one of the slider's scales {self.scales}.")
        index = self.scales.index(scale)
        return self._cache[self._shown_key][index * self.num_images:(index + 1) * self.num_images]

    def render(self) -> None:
        """Show the slider's scale from the cache (nothing is sampled here)."""
        if self._shown_key is None or self._shown_key not in self._cache:
            self.status.value = tr("press Generate to sample every guidance scale in one batched pass")
            return
        scale = self.scale_slider.value
        png = _png(self.pictures(scale), self.display_size)
        width, height = Image.open(io.BytesIO(png)).size
        if self.image.layout.width != f"{width}px":
            self.image.layout.width, self.image.layout.height = f"{width}px", f"{height}px"
        self.image.value = png
        self.status.value = tr("guidance scale {scale:g} · {note}", scale=scale, note=self._note)
