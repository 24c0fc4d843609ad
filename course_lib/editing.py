"""Editing pictures, measured: DDIM inversion's reconstruction, and colour edits by inversion and by img2img (lesson 11).

Three measurements on pictures the course did not generate (``inversion.drawn_pictures``):

* **reconstruction** -- invert each picture with its caption at guidance 1, sample it back with
  DDIM (eta = 0) at guidance 1 from the z_T found, and compare with the picture (PSNR). Beside
  it the VAE's own round trip D(E(x)), which bounds every method that works on latents;
* **a colour edit by inversion** -- invert with the source caption, sample from z_T with the
  colour word changed;
* **a colour edit by img2img** (SDEdit) -- the same pictures and new prompts, at a strength.

An edit is read by the 7-colour judge (``orange.EXTENDED_JUDGE``): it succeeds when the judge
reads the new colour, and the shape and position that were drawn (the size is reported apart). Shares come with 90 % Wilson intervals
(``sample_stats.proportion_interval``). benchmarks/lora_inversion.py runs these on 40 pictures,
tests/test_inversion.py checks issue 16's targets with them, and lesson 11 shows both.

Notation: x is a picture (N, 3, 64, 64) in [-1, 1]; z_0 = s mean(E(x)) its latent.
"""

from __future__ import annotations

import numpy as np
import torch

from .captions import COLORS, shape_caption
from .checks import check_int_range
from .inversion import drawn_prompts
from .metrics import psnr
from .nn.classifier import split_attribute_logits
from .orange import EXTENDED_ATTRIBUTES, EXTENDED_JUDGE_HEADS
from .sample_stats import proportion_interval

__all__ = ["EDIT_SHAPES", "INTERVAL_LEVEL", "judge_readings", "edit_targets", "edited_prompts", "reconstruct",
           "edit_by_inversion", "edit_by_img2img", "edit_report", "share", "shape_mask_iou"]

EDIT_SHAPES = ("circle", "square", "triangle")  # drawn shapes that have a word, so that a caption can name them
INTERVAL_LEVEL = 0.9  # the course's Wilson intervals


def share(flags) -> dict:
    """{"share", "count", "successes", "interval"}: the rate of True in ``flags`` with its 90 % Wilson interval."""
    flags = [bool(f) for f in flags]
    low, high = proportion_interval(sum(flags), len(flags), INTERVAL_LEVEL)
    return {"share": round(sum(flags) / len(flags), 4), "successes": sum(flags), "count": len(flags),
            "interval": [round(low, 4), round(high, 4)]}


@torch.no_grad()
def judge_readings(judge, images: torch.Tensor, batch_size: int = 250) -> dict[str, list[str]]:
    """What the 7-colour judge reads in each picture: {"shape": [...], "color": [...], "size", "position"}.

    :param judge: the 7-colour judge (``load_course_model(orange.EXTENDED_JUDGE)``), 17 logits
    :param images: (N, 3, 64, 64) in [-1, 1] (clamped here)
    """
    images = images.clamp(-1, 1)
    logits = torch.cat([judge(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    heads = split_attribute_logits(logits, EXTENDED_JUDGE_HEADS)
    return {name: [EXTENDED_ATTRIBUTES[name][k] for k in heads[name].argmax(1).tolist()] for name in heads}


def edit_targets(attributes: list[dict], seed: int = 0) -> list[str]:
    """A new colour for each picture: one of the five other colours of the shapes world, drawn at random.

    :param attributes: the pictures' attributes (``drawn_pictures``' second result)
    :param seed: seed of the draws
    """
    rng = np.random.default_rng([seed, 16])
    targets = []
    for picture in attributes:
        others = [color for color in COLORS if color != picture["color"]]
        targets.append(others[rng.integers(len(others))])
    return targets


def edited_prompts(attributes: list[dict], targets: list[str]) -> list[str]:
    """The source caption with the colour word changed: "a small red circle ..." -> "a small blue circle ..."."""
    return [shape_caption(a["shape"], color, a["size"], a["position"]) for a, color in zip(attributes, targets)]


SHAPE_THRESHOLD = -0.5  # a pixel belongs to the shape when its brightest channel is above this (background: -1)


def shape_mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How well two pictures' shapes overlap, whatever their colours: IoU of the painted pixels.

    The mask of a picture is where its brightest channel is above the black background's level
    (SHAPE_THRESHOLD), so a red and a blue circle of the same outline have IoU 1.

        IoU = |A ∩ B| / |A ∪ B|

    :param a: pictures (N, 3, H, W) in [-1, 1]
    :param b: pictures (N, 3, H, W) in [-1, 1]
    :return: (N,) in [0, 1]
    """
    mask_a, mask_b = a.amax(dim=1) > SHAPE_THRESHOLD, b.amax(dim=1) > SHAPE_THRESHOLD
    # IoU = |A ∩ B| / |A ∪ B|
    return (mask_a & mask_b).sum(dim=(1, 2)) / (mask_a | mask_b).sum(dim=(1, 2)).clamp(min=1)


def _batches(count: int, batch_size: int):
    return [slice(i, i + batch_size) for i in range(0, count, batch_size)]


@torch.no_grad()
def reconstruct(pipe, images: torch.Tensor, attributes: list[dict], num_inference_steps: int = 50,
                batch_size: int = 64) -> dict:
    """Invert each picture with its caption at guidance 1, sample it back (DDIM, guidance 1), measure PSNR.

    :param pipe: the mini-SD (``StableDiffusion``)
    :param images: x, (N, 3, H, W) in [-1, 1]
    :param attributes: per picture, as ``drawn_pictures`` gives them (the prompt is its full caption,
        "" for a ring or a plus)
    :param num_inference_steps: n, for the inversion and the sampling
    :return: {"prompts": N str, "rebuilt": (N, 3, H, W), "round_trip": (N, 3, H, W) D(E(x)),
        "inversion_db": (N,), "round_trip_db": (N,)}
    """
    check_int_range(num_inference_steps, "num_inference_steps", 1)
    prompts = drawn_prompts(attributes)
    rebuilt, round_trip = [], []
    for part in _batches(len(prompts), batch_size):
        z_T = pipe.invert(images[part], prompts[part], num_inference_steps=num_inference_steps, guidance_scale=1.0)
        latents = pipe(prompts[part], latents=z_T, num_inference_steps=num_inference_steps, guidance_scale=1.0,
                       output_type="latent")
        rebuilt.append(pipe.decode_latents(latents).float().clamp(-1, 1).cpu())
        # the VAE's round trip D(E(x)), from the same z_0 = s mean(E(x)) the inversion starts at
        posterior = pipe.vae.encode(images[part].to(pipe.device, next(pipe.vae.parameters()).dtype))
        round_trip.append(pipe.decode_latents(posterior.mean * pipe.vae.config.scaling_factor).float()
                          .clamp(-1, 1).cpu())
    rebuilt, round_trip = torch.cat(rebuilt), torch.cat(round_trip)
    return {"prompts": prompts, "rebuilt": rebuilt, "round_trip": round_trip,
            "inversion_db": psnr(images.float(), rebuilt, reduction="none"),
            "round_trip_db": psnr(images.float(), round_trip, reduction="none")}


@torch.no_grad()
def edit_by_inversion(pipe, images: torch.Tensor, attributes: list[dict], targets: list[str],
                      guidance_scales=(7.5,), num_inference_steps: int = 50, batch_size: int = 64) -> dict:
    """Invert each picture with its caption (guidance 1), then sample from z_T with the new colour word.

    :param guidance_scales: the scales λ of the edit's sampling (the inversion is at 1)
    :return: {λ: edited pictures (N, 3, H, W) in [-1, 1]}
    """
    sources, prompts = drawn_prompts(attributes), edited_prompts(attributes, targets)
    edits = {float(scale): [] for scale in guidance_scales}
    for part in _batches(len(prompts), batch_size):
        z_T = pipe.invert(images[part], sources[part], num_inference_steps=num_inference_steps, guidance_scale=1.0)
        for scale in edits:
            latents = pipe(prompts[part], latents=z_T, num_inference_steps=num_inference_steps,
                           guidance_scale=scale, output_type="latent")
            edits[scale].append(pipe.decode_latents(latents).float().clamp(-1, 1).cpu())
    return {scale: torch.cat(parts) for scale, parts in edits.items()}


@torch.no_grad()
def edit_by_img2img(pipe, images: torch.Tensor, attributes: list[dict], targets: list[str], strengths=(0.4, 0.6, 0.8),
                    guidance_scale: float = 7.5, num_inference_steps: int = 50, seed: int = 0,
                    batch_size: int = 64) -> dict:
    """img2img (SDEdit) of each picture with the new colour word, at each strength.

    :return: {strength: edited pictures (N, 3, H, W) in [-1, 1]}
    """
    prompts = edited_prompts(attributes, targets)
    edits = {}
    for strength in strengths:
        parts = []
        for index, part in enumerate(_batches(len(prompts), batch_size)):
            generator = torch.Generator().manual_seed(seed + index)
            array = pipe.img2img(images[part], prompts[part], strength=strength, guidance_scale=guidance_scale,
                                 num_inference_steps=num_inference_steps, generator=generator, output_type="np")
            parts.append(torch.from_numpy(array).permute(0, 3, 1, 2) * 2 - 1)  # [0, 1] -> [-1, 1]
        edits[float(strength)] = torch.cat(parts)
    return edits


def edit_report(judge, sources: torch.Tensor, edits: torch.Tensor, attributes: list[dict], targets: list[str]) -> dict:
    """Did each edit change the colour and keep the rest? Read by the 7-colour judge.

    "kept" compares the judge's reading of the edit with what was drawn (``attributes``): the
    pictures are ours, so their shape, size and position are known. The judge's reading of the
    source picture is the other possible reference; it counts the judge's own mistakes on the
    drawings (4 of lesson 11's 40 circles and squares are read as the other shape) against the
    edit, and is reported beside it as "edit_success_vs_source_reading".

    :param judge: the 7-colour judge
    :param sources: the source pictures (N, 3, H, W)
    :param edits: the edited pictures (N, 3, H, W), edit i of source i
    :param attributes: what each source shows (``drawn_pictures``' second result)
    :param targets: the N new colours
    :return: {"color_changed", "shape_kept", "size_kept", "position_kept", "edit_success" (colour
        changed, shape and position kept: issue 16's criterion), "edit_success_with_size",
        "edit_success_vs_source_reading": share(...), "psnr_to_source_db": mean PSNR,
        "shape_mask_iou": mean IoU of the shapes' pixels (``shape_mask_iou``),
        "success": the N verdicts of edit_success}
    """
    before, after = judge_readings(judge, sources), judge_readings(judge, edits)
    changed = [after["color"][i] == target for i, target in enumerate(targets)]
    kept = {name: [after[name][i] == a[name] for i, a in enumerate(attributes)] for name in ("shape", "size", "position")}
    success = [c and s and p for c, s, p in zip(changed, kept["shape"], kept["position"])]
    as_read = [c and after["shape"][i] == before["shape"][i] and after["position"][i] == before["position"][i]
               for i, c in enumerate(changed)]
    return {"color_changed": share(changed), **{f"{name}_kept": share(flags) for name, flags in kept.items()},
            "edit_success": share(success),
            "edit_success_with_size": share([ok and size for ok, size in zip(success, kept["size"])]),
            "edit_success_vs_source_reading": share(as_read),
            "psnr_to_source_db": round(psnr(sources.float(), edits.float().clamp(-1, 1)), 2),
            "shape_mask_iou": round(shape_mask_iou(sources, edits).mean().item(), 4),
            "success": success}
