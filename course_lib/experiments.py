"""The measured experiments of lessons 04-05, 08 and 09: guidance sweeps on the digits, a negative
prompt at several guidance scales (``negative_prompt_sweep``) and the sampler sweep of the mini
Stable Diffusion (``sampler_sweep``), cached on disk.

A sweep samples 10 * per_class digits (per_class of each class) at every guidance strength, all
strengths in ONE batched sampling run (the guidance scale may differ per image), and scores each
strength with the judge (``metrics.sample_report``). Lesson 04 sweeps classifier guidance, lesson 05
classifier-free guidance and compares the two; ``tests/test_guidance_targets.py`` checks the
targets with the same function.

Sampling a sweep takes tens of seconds on a laptop CPU, so results are cached in
``artifacts/cache/`` (or $COURSE_CACHE_DIR). The cache key is every argument plus a hash of the
checkpoint files, so a retrained model or another setting is never served stale numbers. Delete
the folder to recompute everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .captions import ATTRIBUTES, IMAGE_SIZE
from .checks import check_choice, check_int_range, check_number
from .datasets import digits_tensors, render_shape, shapes_tensors
from .files import atomic_write, atomic_write_text
from .guidance import cfg_denoiser, classifier_guided_denoiser
from .metrics import (clip_image_features, feature_statistics, gaussian_frechet_distance, sample_report,
                      shapes_judge_report, shapes_prompt_grid)
from .nn.classifier import split_attribute_logits
from .nn.text import clip_score, tokenize_prompts
from .pipeline import MINI_SD_TOKENIZER, StableDiffusion
from .pixels import from_uint8, from_unit
from .pretrained import checkpoint_dir, load_course_model
from .profiling import Timer
from .samplers import SAMPLER_NAMES, DDIMSampler, sample_loop
from .schedules import make_schedule

__all__ = ["SweepResult", "guidance_sweep", "cache_dir", "METHODS"]

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "cache"
# method -> (the checkpoints it samples with); the judge scores every method
METHODS = {
    "cfg": ("digits-cfg",),
    "classifier": ("digits-ddpm", "digits-noisy-classifier"),
}


def cache_dir() -> Path:
    """Where sweeps are cached: $COURSE_CACHE_DIR if set, else artifacts/cache of the repository."""
    return Path(os.environ.get("COURSE_CACHE_DIR") or DEFAULT_CACHE_DIR)


@dataclass
class SweepResult:
    """Samples and scores of one guidance sweep.

    ``samples[i * n:(i + 1) * n]`` with ``n = 10 * per_class`` are the samples at ``strengths[i]``,
    ordered 0 ... 0 1 ... 1 ... 9 (``per_class`` of each); ``reports[i]`` their scores.
    """

    method: str
    strengths: list[float]
    per_class: int
    steps: int
    seed: int
    samples: torch.Tensor  # (len(strengths) * 10 * per_class, 1, 16, 16)
    labels: torch.Tensor  # (len(strengths) * 10 * per_class,)
    reports: list[dict]  # metrics.sample_report of each strength
    seconds_per_sample: float  # sampling wall time when it was computed
    from_cache: bool = False

    def at(self, index: int) -> torch.Tensor:
        """The samples at ``strengths[index]``, (10 * per_class, 1, 16, 16)."""
        n = 10 * self.per_class
        return self.samples[index * n:(index + 1) * n]


def _read_cache(key: str) -> tuple[dict, dict] | None:
    """The tensors and the info of a cached result, or None when the cache does not hold both files."""
    files = cache_dir() / f"{key}.safetensors", cache_dir() / f"{key}.json"
    if not (files[0].is_file() and files[1].is_file()):
        return None
    return load_file(files[0]), json.loads(files[1].read_text())


def _write_cache(key: str, tensors: dict, info: dict) -> None:
    """Cache a result as KEY.safetensors and KEY.json, each written atomically (never half a file).

    A reader takes a result only when both files are there; both hold the result of the same key.
    """
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{key}.safetensors", lambda path: save_file(tensors, path))
    atomic_write_text(folder / f"{key}.json", json.dumps(info, indent=1))


def _key(method: str, strengths: list[float], per_class: int, steps: int, seed: int) -> str:
    digest = hashlib.sha256(json.dumps([method, strengths, per_class, steps, seed]).encode())
    for name in METHODS[method] + ("digits-judge",):
        digest.update((checkpoint_dir() / f"{name}.safetensors").read_bytes())
    return f"sweep-{method}-{digest.hexdigest()[:16]}"


def guidance_sweep(method: str, strengths, per_class: int = 5, steps: int = 50, seed: int = 0,
                   progress: bool = True, use_cache: bool = True) -> SweepResult:
    """Sample and score the digits at several guidance strengths, with 50 DDIM steps by default.

    :param method: "cfg" (``digits-cfg``, guidance scale: 1 = none) or "classifier"
        (``digits-ddpm`` + ``digits-noisy-classifier``, lambda: 0 = none)
    :param strengths: the guidance scales / lambdas to compare
    :param per_class: samples of each digit per strength
    :param steps: DDIM steps
    :param seed: seed of the starting noise (the same noise at every strength)
    :param progress: show a progress bar while sampling
    :param use_cache: read and write the cache (see the module's docstring)
    """
    check_choice(method, list(METHODS), "guidance method")
    strengths = [check_number(s, "strength", minimum=0.0) for s in strengths]
    if not strengths:
        raise ValueError("strengths is empty: give at least one guidance scale, e.g. [1, 3, 5].")
    check_int_range(per_class, "per_class", 2, hint="Diversity needs at least two samples of each class.")
    check_int_range(steps, "steps", 1, 1000)
    key = _key(method, strengths, per_class, steps, seed)
    cached = _read_cache(key) if use_cache else None
    if cached is not None:
        tensors, info = cached
        return SweepResult(method, strengths, per_class, steps, seed, tensors["samples"], tensors["labels"],
                           info["reports"], info["seconds_per_sample"], from_cache=True)

    judge, _ = load_course_model("digits-judge")
    unet, config = load_course_model(METHODS[method][0])
    sampler = DDIMSampler(make_schedule(**config["schedule"]))
    sampler.set_timesteps(steps)
    n = 10 * per_class
    labels = torch.arange(10).repeat_interleave(per_class).repeat(len(strengths))   # (S * n,)
    scales = torch.tensor(strengths).repeat_interleave(n)                            # (S * n,)
    noise = torch.randn((n, 1, 16, 16), generator=torch.Generator().manual_seed(seed)).repeat(len(strengths), 1, 1, 1)
    if method == "cfg":
        null_class = config["network_config"]["num_class_embeds"] - 1
        denoise = cfg_denoiser(unet, labels, scales, null_label=null_class)
    else:
        classifier, _ = load_course_model("digits-noisy-classifier")
        denoise = classifier_guided_denoiser(unet, classifier, labels, scales, sampler)
    with Timer() as timer:
        samples = sample_loop(denoise, sampler, noise, progress=progress).clamp(-1, 1)
    seconds_per_sample = timer.seconds / len(samples)

    reference = digits_tensors("test")[0]
    reports = [sample_report(judge, samples[i * n:(i + 1) * n], labels[i * n:(i + 1) * n], reference)
               for i in range(len(strengths))]
    result = SweepResult(method, strengths, per_class, steps, seed, samples, labels, reports, seconds_per_sample)
    if use_cache:
        _write_cache(key, {"samples": samples.contiguous(), "labels": labels},
                     {"reports": reports, "seconds_per_sample": seconds_per_sample})
    return result


# ----------------------------------------------------------------------------------------------
# Lesson 09: the four samplers against the number of steps, on the mini Stable Diffusion
# ----------------------------------------------------------------------------------------------

# the checkpoints a sampler sweep depends on: the mini SD's three parts and the shapes judge
SAMPLER_SWEEP_CHECKPOINTS = ("shapes-ldm", "shapes-vae", "shapes-clip", "shapes-judge")


@dataclass
class SamplerSweepResult:
    """Scores of the mini SD's pictures for every sampler and number of steps.

    ``reports[sampler][steps]`` is :func:`course_lib.metrics.shapes_judge_report` of the pictures
    (the shares of pictures whose "shape", "color", "size", "position" the judge reads as asked,
    "color_and_shape" and "all" four right) plus "clip_score" (the tiny CLIP's mean score of each
    picture with its prompt), "frechet_distance" (in the tiny CLIP's image features, against the
    real test pictures) and "seconds_per_image" (wall time of the sampling run / number of pictures,
    measured when the sweep was computed). ``real`` holds the same scores for real pictures
    (``datasets.render_shape``) of the same prompts: the best the numbers can be with N pictures.
    ``images[i, j]`` are the pictures of ``samplers[i]`` at ``steps[j]``, uint8 (N, 3, 64, 64), picture k
    of every run from the same starting noise and for the prompt ``wanted[k]``.
    """

    samplers: list[str]
    steps: list[int]
    wanted: list[dict]  # one shapes_prompt_grid entry per picture: "prompt", "shape", "color", ...
    guidance_scale: float
    seed: int
    reports: dict  # reports[sampler][steps] -> dict of scores
    real: dict  # the same scores for real pictures of the prompts (no "seconds_per_image")
    images: torch.Tensor  # (S, K, N, 3, H, W) uint8
    from_cache: bool = False

    def table(self, score: str) -> list[list[float]]:
        """One score as rows (samplers) x columns (steps), e.g. ``result.table("all")``."""
        return [[self.reports[s][n][score] for n in self.steps] for s in self.samplers]


def sweep_prompts(num_prompts: int = 16) -> list[dict]:
    """``num_prompts`` full prompts of seen colour-shape pairs, spread over every attribute.

    ``metrics.shapes_prompt_grid()`` lists, for each of the 16 seen colour-shape pairs, its 10
    (size, position) cells. Prompt i takes pair p = i mod 16 in round r = i // 16 and cell
    c = (5 (p mod 2) + p mod 5 + 3 r) mod 10: the first 16 prompts are the 16 pairs, small and large
    in turn, the five positions in turn; 160 prompts are all of them, each once.
    """
    grid = shapes_prompt_grid(heldout=False)
    cells = len(ATTRIBUTES["size"]) * len(ATTRIBUTES["position"])  # 10 (size, position) cells per pair
    pairs = len(grid) // cells  # 16
    check_int_range(num_prompts, "num_prompts", 2, len(grid),
                    hint=f"The Fréchet distance needs at least 2 pictures; there are {len(grid)} prompts.")
    chosen = []
    for i in range(num_prompts):
        p, r = i % pairs, i // pairs
        chosen.append(grid[cells * p + (5 * (p % 2) + p % 5 + 3 * r) % cells])
    return chosen


def _mini_sd_key(prefix: str, arguments: list) -> str:
    """A cache key for a measurement of the mini SD: its arguments and the bytes of the checkpoints it uses."""
    digest = hashlib.sha256(json.dumps(arguments).encode())
    for name in SAMPLER_SWEEP_CHECKPOINTS:
        digest.update((checkpoint_dir() / f"{name}.safetensors").read_bytes())
    tokenizer_file = checkpoint_dir() / MINI_SD_TOKENIZER / "tokenizer.json"
    if tokenizer_file.is_file():
        digest.update(tokenizer_file.read_bytes())
    return f"{prefix}-{digest.hexdigest()[:16]}"


def _sampler_sweep_key(samplers, steps, num_prompts, guidance_scale, seed) -> str:
    return _mini_sd_key("samplers", ["samplers-v1", samplers, steps, num_prompts, guidance_scale, seed])


@torch.no_grad()
def sampler_sweep(samplers=("ddpm", "ddim", "euler", "dpmsolver"), steps=(5, 10, 20, 50), num_prompts: int = 16,
                  guidance_scale: float = 7.5, seed: int = 0, progress: bool = True,
                  use_cache: bool = True) -> SamplerSweepResult:
    """Sample the mini SD with every sampler at every number of steps and score the pictures (lesson 09).

    Every run takes the same ``num_prompts`` prompts (:func:`sweep_prompts`, one picture each) and
    the same starting noise z_T (``torch.Generator().manual_seed(seed)``), with classifier-free
    guidance, through ``StableDiffusion.__call__``: one batched run per (sampler, steps). The
    pictures are scored by the shapes judge, the tiny CLIP's score and the Fréchet distance in the
    tiny CLIP's image features against the 1,000 real test pictures (``shapes_tensors("test")``).
    Results are cached like :func:`guidance_sweep`'s, keyed by the arguments and the checkpoints.

    :param samplers: names from ``course_lib.samplers.SAMPLER_NAMES``
    :param steps: numbers of sampling steps n
    :param num_prompts: pictures per run (the Fréchet distance depends on it)
    :param guidance_scale: lambda (1 = no guidance)
    :param seed: seed of the starting noise (and of DDPM's noise)
    :param progress: show a progress bar over the runs
    :param use_cache: read and write the cache
    """
    samplers = [check_choice(s, SAMPLER_NAMES, "sampler") for s in samplers]
    steps = [check_int_range(n, "steps", 1, 1000) for n in steps]
    if not samplers or not steps:
        raise ValueError("samplers and steps must not be empty, e.g. samplers=('ddim', 'euler'), steps=(5, 10, 20).")
    guidance_scale = check_number(guidance_scale, "guidance_scale", minimum=0.0)
    wanted = sweep_prompts(num_prompts)
    key = _sampler_sweep_key(samplers, steps, num_prompts, guidance_scale, seed)
    cached = _read_cache(key) if use_cache else None
    if cached is not None:
        tensors, info = cached
        reports = {s: {int(n): r for n, r in by_steps.items()} for s, by_steps in info["reports"].items()}
        return SamplerSweepResult(samplers, steps, wanted, guidance_scale, seed, reports, info["real"],
                                  tensors["images"], from_cache=True)

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_course_model("shapes-judge")
    clip, _ = load_course_model("shapes-clip")
    prompts = [w["prompt"] for w in wanted]
    tokens = tokenize_prompts(pipe.tokenizer, prompts)
    reference = feature_statistics(clip_image_features(clip, shapes_tensors("test")[0]))

    def scores(images: torch.Tensor) -> dict:
        report = shapes_judge_report(judge, images, wanted)
        report["clip_score"] = round(clip_score(clip, images.clamp(-1, 1), **tokens).mean().item(), 3)
        features = clip_image_features(clip, images)
        report["frechet_distance"] = round(gaussian_frechet_distance(*feature_statistics(features), *reference), 5)
        return report

    # real pictures of the same prompts: the best the scores can be with this many pictures
    real_images = torch.from_numpy(np.stack([render_shape(w["shape"], w["color"], w["size"], w["position"], rng=i)
                                             for i, w in enumerate(wanted)]))
    real = scores(from_uint8(real_images))  # uint8 (N, H, W, 3) -> [-1, 1] (N, 3, H, W)
    height, width = real_images.shape[1:3]  # the shapes world's size, 64 x 64

    reports = {s: {} for s in samplers}
    pictures = []
    runs = [(s, n) for s in samplers for n in steps]
    for sampler, n in tqdm(runs, disable=not progress, desc="sampler sweep"):
        with Timer() as timer:
            images = pipe(prompts, height=height, width=width, num_inference_steps=n, guidance_scale=guidance_scale,
                          sampler=sampler, generator=torch.Generator().manual_seed(seed),
                          output_type="np")  # (N, H, W, 3) in [0, 1]
        images = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W) in [0, 1]
        reports[sampler][n] = {**scores(from_unit(images)), "seconds_per_image": round(timer.seconds / num_prompts, 5)}
        # round(255 u), the pixels' convention (course_lib.pixels.to_uint8) applied to the pipeline's u in [0, 1]
        pictures.append((images * 255).round().to(torch.uint8))
    pictures = torch.stack(pictures).reshape(len(samplers), len(steps), num_prompts, 3, height, width)
    result = SamplerSweepResult(samplers, steps, wanted, guidance_scale, seed, reports, real, pictures)
    if use_cache:
        _write_cache(key, {"images": pictures.contiguous()},
                     {"reports": {s: {str(n): r for n, r in by_steps.items()} for s, by_steps in reports.items()},
                      "real": real})
    return result


__all__ += ["SamplerSweepResult", "SAMPLER_SWEEP_CHECKPOINTS", "sampler_sweep", "sweep_prompts"]


# ----------------------------------------------------------------------------------------------
# Lessons 08-09: the mini SD at several settings of one knob, each picture read by the shapes judge
# ----------------------------------------------------------------------------------------------


class _JudgeReadings:
    """What a result with ``readings[attribute][i][k]`` (picture k at setting i) offers."""

    readings: dict[str, list[list[str]]]

    def tally(self, attribute: str, value: str) -> list[int]:
        """How many pictures the judge reads as ``value`` at each setting, e.g. ``tally("color", "cyan")``."""
        check_choice(attribute, tuple(self.readings), "attribute")
        return [sum(read == value for read in at_setting) for at_setting in self.readings[attribute]]

    @property
    def colors(self) -> list[list[str]]:
        """``colors[i][k]``: the colour the judge reads in picture k at setting i."""
        return self.readings["color"]

    @property
    def shapes(self) -> list[list[str]]:
        """``shapes[i][k]``: the shape the judge reads in picture k at setting i."""
        return self.readings["shape"]


def _judged_per_setting(prefix: str, key_arguments, settings: list[float], sample, attributes: tuple[str, ...],
                        use_cache: bool) -> tuple[torch.Tensor, dict[str, list[list[str]]], bool]:
    """Pictures and the judge's readings at each setting, each setting cached on its own.

    :param prefix: the cache files' prefix
    :param key_arguments: ``key_arguments(setting)`` -> everything the pictures at that setting depend on
        (the checkpoints are added to the key)
    :param settings: the values of the knob (a guidance scale, a strength), one sampling call each
    :param sample: ``sample(setting)`` -> uint8 pictures (N, 3, 64, 64)
    :param attributes: the attributes the judge's readings are kept for
    :return: (images (S, N, 3, 64, 64) uint8, readings[attribute][i][k], whether every setting was cached)
    """
    judge = None
    images, readings, all_cached = [], {name: [] for name in attributes}, True
    for setting in settings:
        key = _mini_sd_key(prefix, key_arguments(setting))
        cached = _read_cache(key) if use_cache else None
        if cached is None:
            all_cached = False
            uint8 = sample(setting)
            if judge is None:
                judge, _ = load_course_model("shapes-judge")
            heads = split_attribute_logits(judge(from_uint8(uint8.permute(0, 2, 3, 1))))
            cached = {"images": uint8}, {name: [ATTRIBUTES[name][k] for k in heads[name].argmax(1).tolist()]
                                         for name in attributes}
            if use_cache:
                _write_cache(key, *cached)
        tensors, info = cached
        images.append(tensors["images"])
        for name in attributes:
            readings[name].append(info[name])
    return torch.stack(images), readings, all_cached


def _mini_sd_pipeline() -> StableDiffusion:
    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _to_uint8(pictures: np.ndarray) -> torch.Tensor:
    """The pipeline's float array (N, H, W, 3) in [0, 1] -> uint8 (N, 3, H, W): round(255 u), as pixels.to_uint8."""
    return torch.from_numpy(np.round(pictures * 255)).to(torch.uint8).permute(0, 3, 1, 2).contiguous()


@dataclass
class NegativePromptSweepResult(_JudgeReadings):
    """The mini SD's pictures of one prompt and one negative prompt at several guidance scales.

    ``images[i]`` are the pictures at ``scales[i]``, uint8 (N, 3, 64, 64); picture k of every scale
    starts from the same noise. ``readings["color"][i][k]`` (also ``colors[i][k]``) and
    ``readings["shape"][i][k]`` (``shapes[i][k]``) are what the shapes judge reads in picture k at
    ``scales[i]`` (names from ``captions.ATTRIBUTES``).
    """

    prompt: str
    negative_prompt: str
    scales: list[float]
    num_images: int
    steps: int
    seed: int
    images: torch.Tensor  # (S, N, 3, 64, 64) uint8
    readings: dict[str, list[list[str]]]
    from_cache: bool = False


@torch.no_grad()
def negative_prompt_sweep(prompt: str = "a circle", negative_prompt: str = "red", scales=(7.5,),
                          num_images: int = 16, steps: int = 20, seed: int = 1,
                          use_cache: bool = True) -> NegativePromptSweepResult:
    """The mini SD at several guidance scales with a negative prompt, read by the shapes judge (lesson 08).

    Every scale starts from the same noise, ``torch.randn((num_images, 4, 8, 8))`` drawn with
    ``torch.Generator().manual_seed(seed)``, and runs ``steps`` DDIM steps through
    ``StableDiffusion.__call__``. Each scale is sampled in a call of its own and cached on its own
    (keyed like :func:`sampler_sweep`'s), so a scale's pictures never depend on which other scales
    were asked for with it: a check that measures one scale sees what a sweep showed there.

    :param prompt: the prompt
    :param negative_prompt: the negative prompt ("" = the plain unconditional branch)
    :param scales: guidance scales (diffusers' meaning: 1 or less = no guidance, and no negative prompt)
    :param num_images: pictures per scale
    :param steps: DDIM steps
    :param seed: seed of the starting noise
    :param use_cache: read and write the cache
    """
    scales = [check_number(s, "guidance scale", minimum=0.0) for s in scales]
    if not scales:
        raise ValueError("scales is empty: give at least one guidance scale, e.g. [1, 3, 7.5].")
    check_int_range(num_images, "num_images", 1, 256)
    check_int_range(steps, "steps", 1, 1000)
    pipe = None

    def sample(scale: float) -> torch.Tensor:
        nonlocal pipe
        pipe = pipe or _mini_sd_pipeline()
        size = IMAGE_SIZE // pipe.vae_scale_factor  # the shapes world's 64 px in latents
        noise = torch.randn((num_images, pipe.unet.config.in_channels, size, size),
                            generator=torch.Generator().manual_seed(seed))
        return _to_uint8(pipe(prompt, negative_prompt=negative_prompt, height=IMAGE_SIZE, width=IMAGE_SIZE,
                              num_inference_steps=steps, guidance_scale=scale, num_images_per_prompt=num_images,
                              latents=noise, output_type="np"))

    images, readings, all_cached = _judged_per_setting(
        "negative", lambda scale: ["negative-v1", prompt, negative_prompt, scale, num_images, steps, seed], scales,
        sample, ("color", "shape"), use_cache)
    return NegativePromptSweepResult(prompt, negative_prompt, scales, num_images, steps, seed, images, readings,
                                     from_cache=all_cached)


@dataclass
class Img2ImgSweepResult(_JudgeReadings):
    """img2img of one picture with one prompt at several strengths, read by the shapes judge.

    ``images[i]`` are the pictures at ``strengths[i]``, uint8 (N, 3, 64, 64); ``readings[attribute][i][k]``
    is what the judge reads in picture k at ``strengths[i]`` for "shape", "color", "size" and "position".
    """

    source: dict  # the input picture: datasets.render_shape(**source, rng=source_seed)
    source_seed: int
    prompt: str
    strengths: list[float]
    num_images: int
    steps: int
    seed: int
    images: torch.Tensor  # (S, N, 3, 64, 64) uint8
    readings: dict[str, list[list[str]]]
    from_cache: bool = False


@torch.no_grad()
def img2img_sweep(prompt: str = "a large blue circle", strengths=(0.2, 0.4, 0.6, 0.8, 1.0),
                  source: dict | None = None, source_seed: int = 0, num_images: int = 8, steps: int = 20,
                  seed: int = 0, use_cache: bool = True) -> Img2ImgSweepResult:
    """img2img of a drawn picture at several strengths, read by the shapes judge (lesson 09).

    The input is ``datasets.render_shape`` of ``source`` (default: a large red circle in the top
    left), repeated ``num_images`` times; each strength is one call
    ``StableDiffusion.img2img(..., strength, num_inference_steps=steps, generator=manual_seed(seed))``
    (DDIM, guidance 7.5), cached on its own like :func:`negative_prompt_sweep`'s scales.

    :param prompt: the new prompt
    :param strengths: img2img strengths in [0, 1]
    :param source: the input's attributes {"shape", "color", "size", "position"}
    :param source_seed: ``render_shape``'s rng (the jitter of colour and place)
    :param num_images: pictures per strength
    :param steps: the sampler's n (img2img runs the last int(n * strength) of them)
    :param seed: the generator's seed (the encoder's sample and the added noise)
    :param use_cache: read and write the cache
    """
    source = dict(source or {"shape": "circle", "color": "red", "size": "large", "position": "top left"})
    for name, values in ATTRIBUTES.items():
        check_choice(source.get(name), values, f"source {name}")
    strengths = [check_number(s, "strength", minimum=0.0) for s in strengths]
    if not strengths or max(strengths) > 1:
        raise ValueError(f"strengths must be a non-empty list of numbers in [0, 1], got {strengths}.")
    check_int_range(num_images, "num_images", 1, 256)
    check_int_range(steps, "steps", 1, 1000)
    pipe = None

    def sample(strength: float) -> torch.Tensor:
        nonlocal pipe
        pipe = pipe or _mini_sd_pipeline()
        picture = from_uint8(render_shape(source["shape"], source["color"], source["size"], source["position"],
                                          rng=source_seed))  # (3, 64, 64) in [-1, 1]
        return _to_uint8(pipe.img2img(picture[None].repeat(num_images, 1, 1, 1), prompt, strength=strength,
                                      num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                                      output_type="np"))

    def key_arguments(strength: float) -> list:
        return ["img2img-v1", sorted(source.items()), source_seed, prompt, strength, num_images, steps, seed]

    images, readings, all_cached = _judged_per_setting("img2img", key_arguments, strengths, sample,
                                                       tuple(ATTRIBUTES), use_cache)
    return Img2ImgSweepResult(source, source_seed, prompt, strengths, num_images, steps, seed, images, readings,
                              from_cache=all_cached)


# ----------------------------------------------------------------------------------------------
# Benchmarks' results, wherever the notebook runs
# ----------------------------------------------------------------------------------------------

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def benchmark_results(pattern: str) -> list[dict]:
    """The JSON results in benchmarks/results/ whose file names match ``pattern`` (a glob), in name order.

    Each is the file's object with its name added as "file". The folder is found from course_lib's
    own location, so a lesson reads it from notebooks/ and from notebooks/zh/ alike.

    :param pattern: e.g. "minisd_samplers-*.json"
    """
    return [json.loads(path.read_text(encoding="utf-8")) | {"file": path.name}
            for path in sorted(RESULTS_DIR.glob(pattern))]


__all__ += ["NegativePromptSweepResult", "negative_prompt_sweep", "Img2ImgSweepResult", "img2img_sweep",
            "RESULTS_DIR", "benchmark_results"]
