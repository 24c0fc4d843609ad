"""The exercises of lesson 08, the Stable Diffusion pipeline: the guided noise of one step, decoding the
latents, and the guidance scale at which a negative prompt turns every circle cyan."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from ..experiments import negative_prompt_sweep
from ..guidance import cfg
from ..i18n import tr
from .grading import (
    Case, CountingModel, call_learner, correct, grade, hint_for_exception, is_function, not_yet, seeded,
    stand_in_error, too_many_calls, wrong_value,
)

__all__ = ["check_guided_noise", "check_decode_latents", "check_cyan_scale", "count_cyan"]


class _ToyTextDenoiser(nn.Module):
    """A text-conditioned stand-in with the course UNet's signature and argument checks.

    model(sample, timestep, encoder_hidden_states) -> eps of sample's shape; images do not
    interact, so one pass over a batch equals passes over its parts.
    """

    def __init__(self, channels: int, text_width: int):
        super().__init__()
        self.register_buffer("text_projection", 0.5 * seeded(240, text_width, channels))

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None):
        if encoder_hidden_states is None:
            raise stand_in_error("no text states", tr("This UNet cross-attends to the prompt: pass "
                                                      "encoder_hidden_states=... (B, L, D)."))
        B = sample.shape[0]
        if encoder_hidden_states.shape[0] != B:
            raise stand_in_error("text states count", tr("encoder_hidden_states has {count} items but sample has "
                                                         "{images}.", count=encoder_hidden_states.shape[0], images=B),
                                 count=encoder_hidden_states.shape[0], images=B)
        timestep = torch.as_tensor(timestep).reshape(-1)
        if timestep.numel() not in (1, B):
            raise stand_in_error("timestep count", tr("{name} has {count} entries but sample has {images} images.",
                                                      name="timestep", count=timestep.numel(), images=B))
        t = timestep.expand(B).to(sample.dtype).reshape(-1, 1, 1, 1)
        # each image reads its own text states: (B, L, D) -> (B, D) -> (B, C, 1, 1)
        text = (encoder_hidden_states.mean(dim=1) @ self.text_projection)[:, :, None, None]
        return torch.tanh(sample + 0.5 * sample.roll(1, dims=-1) + text) * torch.cos(t / 300) + 0.1 * text


# ((B, C_z, h, w), L tokens, D text width, t, guidance_scale)
_GUIDED_NOISE_CASES = [((1, 4, 8, 8), 6, 8, 801, 7.5), ((3, 4, 8, 8), 6, 8, 401, 3.0),
                       ((2, 4, 4, 6), 5, 12, 21, 1.0)]
_GUIDED_NOISE_RECIPE = ("latent_model_input = torch.cat([latents] * 2); states = torch.cat([negative_prompt_embeds, "
                        "prompt_embeds]); noise_pred = unet(latent_model_input, t, encoder_hidden_states=states); "
                        "noise_pred_uncond, noise_pred_text = noise_pred.chunk(2); return noise_pred_uncond + "
                        "guidance_scale * (noise_pred_text - noise_pred_uncond).")


def _guided_noise_exception_hint(error: BaseException) -> str:
    message, reason = str(error), getattr(error, "stand_in_reason", None)
    if reason == "text states count":
        if error.details["count"] < error.details["images"]:
            return (tr("the text states must be a batch of two as well: torch.cat([negative_prompt_embeds, "
                       "prompt_embeds]), one per copy of the latents."))
        return tr("the latents must be a batch of two as well: torch.cat([latents] * 2), one copy per text state.")
    if reason == "timestep count":
        return (tr("t is one timestep for every image of the batch of two: pass it as it is, unet(latent_model_input, "
                   "t, encoder_hidden_states=states)."))
    if reason == "no text states":
        return tr("give the UNet the text states by name: unet(latent_model_input, t, encoder_hidden_states=states).")
    if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
        return tr("your function must take exactly these arguments, in this order: {signature}.",
                  signature="(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale)")
    return _GUIDED_NOISE_RECIPE


def check_guided_noise(fn: Callable) -> bool:
    """Check ``fn(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale) -> eps`` (lesson 08).

    The heart of ``StableDiffusionPipeline.__call__``: one UNet pass over the batch of two,
    latents ``[z_t, z_t]`` with text states ``[c_neg, c]`` (the negative prompt first), the output
    split with ``chunk(2)`` and combined with classifier-free guidance. The check counts the
    UNet's calls and compares with two separate passes.

    :param fn: the learner's function; ``unet(sample, timestep, encoder_hidden_states=...)`` has
        the course UNet's signature, ``latents`` is (B, C_z, h, w), ``t`` an int, both text states
        (B, L, D), ``guidance_scale`` a number (1 = no guidance)
    :return: True if the values are right and the UNet was called once per case
    """
    if not is_function(fn, "check_guided_noise"):
        return False
    for seed, (shape, L, D, t, s) in enumerate(_GUIDED_NOISE_CASES):
        base = _ToyTextDenoiser(shape[1], D)
        latents = seeded(250 + seed, *shape)
        prompt_embeds, negative_prompt_embeds = seeded(260 + seed, shape[0], L, D), seeded(270 + seed, shape[0], L, D)
        with torch.no_grad():
            u = base(latents, t, encoder_hidden_states=negative_prompt_embeds)  # eps(z_t, c_neg)
            c = base(latents, t, encoder_hidden_states=prompt_embeds)  # eps(z_t, c)
        where = tr("for latents of shape {shape}, text states of shape {text_shape}, t = {t}, guidance_scale = {scale}",
                   shape=shape, text_shape=(shape[0], L, D), t=t, scale=s)
        case = Case(
            args=(latents, t, prompt_embeds, negative_prompt_embeds, s), expected=cfg(u, c, s), where=where,
            mistakes=[
                (tr("the halves are swapped: chunk(2) returns them in the order of torch.cat, and the pipeline puts "
                    "the negative prompt first, so noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)."),
                 lambda: c + s * (u - c)),
                (tr("you used guidance_scale as Ho & Salimans' w; in diffusers' convention the formula is "
                    "noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)."),
                 lambda: c + s * (c - u)),
                (tr("off by one in the scale: guidance_scale = 1 must give noise_pred_text (no guidance)."),
                 lambda: u + (s - 1) * (c - u)),
                (tr("check the sign: guidance moves away from the negative prompt, toward the prompt."),
                 lambda: u - s * (c - u)),
                (tr("the scale multiplies the difference (noise_pred_text - noise_pred_uncond), not "
                    "noise_pred_uncond: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)."),
                 lambda: s * u + (c - u)),
                (tr("the parentheses are missing: guidance_scale * noise_pred_text - noise_pred_uncond + "
                    "noise_pred_uncond is only guidance_scale * noise_pred_text; scale the difference."),
                 lambda: s * c),
                (tr("you returned the guidance term alone; add it to noise_pred_uncond."), lambda: s * (c - u)),
                (tr("you returned the prediction for the prompt alone: did both halves see prompt_embeds? The "
                    "first half must see negative_prompt_embeds, and the two halves are combined with the scale."),
                 lambda: c),
                (tr("you returned the prediction for the negative prompt alone: the second half must see "
                    "prompt_embeds, and the two halves are combined with the scale."), lambda: u),
            ],
        )
        model = CountingModel(base)
        ok, got = call_learner(fn, (model, *case.args), _guided_noise_exception_hint)
        if not ok:
            return False
        if isinstance(got, (tuple, list)):
            return not_yet(tr("your function returned a {type_name} of {length} items {where}, expected one tensor of "
                              "shape {shape}.", type_name=type(got).__name__, length=len(got), where=where, shape=shape),
                           tr("return the guided noise, noise_pred_uncond + guidance_scale * (noise_pred_text - "
                              "noise_pred_uncond), not the two halves."))
        shape_hint = tr("the guided noise has the shape of the latents, {shape}: split the UNet's output of the batch "
                        "of two with .chunk(2) and combine the halves.", shape=shape)
        lines = wrong_value(got, case, tr("the guided noise"), _GUIDED_NOISE_RECIPE, shape_hint)
        if lines:
            print("\n".join(lines))
            return False
        calls = len(model.batch_sizes)
        if calls != 1:
            return too_many_calls(tr("the UNet"), calls, where,
                                  tr("the batch of two needs ONE UNet pass: {recipe}", recipe=_GUIDED_NOISE_RECIPE))
    return correct(tr("one UNet pass over [latents, latents] with [negative_prompt_embeds, prompt_embeds], split "
                      "with chunk(2) and combined as uncond + s·(text - uncond), equals the two separate passes "
                      "(3 batches, scales 7.5, 3 and 1)."))


class _ToyVAE(nn.Module):
    """A stand-in for the VAE: ``config.scaling_factor``, ``config.latent_channels`` and ``decode(z)``.

    decode: (B, 4, h, w) -> (B, 3, 2h, 2w), a little beyond [-1, 1] as a real decoder's output can be.
    """

    def __init__(self, scaling_factor: float, seed: int):
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=scaling_factor, latent_channels=4)
        self.register_buffer("mixing", 0.6 * seeded(280 + seed, 3, 4))
        self.register_buffer("bias", 0.3 * seeded(290 + seed, 3))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise stand_in_error("decode input", tr("decode takes latents (B, {channels}, h, w), got {got}.",
                                                    channels=self.config.latent_channels, got=got))
        x = torch.einsum("oc,bchw->bohw", self.mixing, z) + self.bias[:, None, None]  # (B, 3, h, w)
        x = 1.25 * torch.tanh(x)
        return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # (B, 3, 2h, 2w)


# ((B, 4, h, w) latents, the VAE's scaling factor)
_DECODE_CASES = [((1, 4, 4, 4), 0.18215), ((3, 4, 8, 8), 0.871), ((2, 4, 6, 4), 0.5)]
_DECODE_RECIPE = ("images = vae.decode(latents / vae.config.scaling_factor); "
                  "return (images / 2 + 0.5).clamp(0, 1)")


def check_decode_latents(fn: Callable) -> bool:
    """Check ``fn(vae, latents) -> images in [0, 1]``, steps 8 and 10 of the pipeline (lesson 08).

    The UNet works on s·z (s = ``vae.config.scaling_factor``, lesson 06), so the loop's latents are
    divided by s before the decoder, and the decoder's [-1, 1] is mapped to [0, 1] and clipped.

    :param fn: the learner's function; ``vae`` has ``config.scaling_factor`` and ``decode(z)``,
        ``latents`` is (B, 4, h, w)
    :return: True if fn returns (vae.decode(latents / s) / 2 + 0.5).clamp(0, 1), (B, 3, H, W), on every case
    """
    cases = []
    for seed, (shape, s) in enumerate(_DECODE_CASES):
        vae = _ToyVAE(s, seed)
        latents = 1.2 * seeded(300 + seed, *shape) * s / 0.5  # s·z with z of a few units, as the UNet's latents

        def mistakes(vae=vae, latents=latents, s=s):
            decoded = vae.decode(latents / s)
            return [
                (tr("you forgot to divide by the scaling factor: the UNet's latents are s·z, and the decoder "
                    "wants z = latents / vae.config.scaling_factor."),
                 lambda: (vae.decode(latents) / 2 + 0.5).clamp(0, 1)),
                (tr("you multiplied by the scaling factor; divide: z = latents / vae.config.scaling_factor."),
                 lambda: (vae.decode(latents * s) / 2 + 0.5).clamp(0, 1)),
                (tr("use this VAE's own vae.config.scaling_factor; 0.18215 is SD v1.x's, and the course's VAE "
                    "measured its own in lesson 06."),
                 lambda: (vae.decode(latents / 0.18215) / 2 + 0.5).clamp(0, 1)),
                (tr("the decoder gives images in [-1, 1]; map them to [0, 1] with images / 2 + 0.5."), lambda: decoded),
                (tr("the decoder gives images in [-1, 1]; map them to [0, 1] with images / 2 + 0.5 (then clamp)."),
                 lambda: decoded.clamp(-1, 1)),
                (tr("a decoder can overshoot [-1, 1] a little: clip after mapping, .clamp(0, 1)."),
                 lambda: decoded / 2 + 0.5),
                (tr("return floats in [0, 1], as the pipeline's output_type='np'; 0..255 comes only when "
                    "making PIL images."), lambda: ((decoded / 2 + 0.5).clamp(0, 1) * 255)),
                (tr("return floats in [0, 1], as the pipeline's output_type='np'; 0..255 comes only when "
                    "making PIL images."), lambda: ((decoded / 2 + 0.5).clamp(0, 1) * 255).round()),
                (tr("clamp after mapping to [0, 1], not before: (images / 2 + 0.5).clamp(0, 1)."),
                 lambda: decoded.clamp(0, 1) / 2 + 0.5),
                (tr("(images + 1) / 2 is right, but the result must be clipped to [0, 1] as well."),
                 lambda: (decoded + 1) / 2),
            ]

        cases.append(Case(args=(vae, latents), expected=(vae.decode(latents / s) / 2 + 0.5).clamp(0, 1),
                           where=tr("for latents of shape {shape} and scaling_factor = {scale}", shape=shape, scale=s),
                           mistakes=mistakes()))

    def exception_hint(error: BaseException) -> str:
        message = str(error)
        if getattr(error, "stand_in_reason", None) == "decode input":
            return tr("give vae.decode the latents themselves, (B, 4, h, w), divided by vae.config.scaling_factor.")
        if isinstance(error, AttributeError) and "scaling_factor" in message:
            return tr("the scaling factor is in the VAE's config: vae.config.scaling_factor.")
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return tr("your function must take exactly these arguments, in this order: {signature}.",
                      signature="(vae, latents)")
        return _DECODE_RECIPE + "."

    return grade(
        fn, cases, check_name="check_decode_latents", result_name=tr("the images"),
        success=tr("(vae.decode(latents / s) / 2 + 0.5).clamp(0, 1) matches for scaling factors 0.18215, 0.871 "
                   "and 0.5."),
        generic_hint=_DECODE_RECIPE + ".",
        shape_hint=tr("keep the decoder's layout (B, 3, H, W): the pipeline moves the channels last only when it "
                      "makes PIL images."),
        exception_hint=exception_hint,
    )


# the measurement of exercise 8.3: lesson 08's strip, 16 pictures per scale, 20 DDIM steps, noise seed 1
CYAN_EXPERIMENT = {"prompt": "a circle", "negative_prompt": "red", "num_images": 16, "steps": 20, "seed": 1}
CYAN_RESOLUTION = 0.5  # the learner's scale is the smallest to within this
_LARGEST_SCALE = 30.0


def count_cyan(scale: float) -> int:
    """How many of exercise 8.3's 16 pictures the shapes judge reads as cyan at guidance scale ``scale``.

    "a circle" with the negative prompt "red", lesson 08's 16 starting noises, 20 DDIM steps
    (:func:`course_lib.experiments.negative_prompt_sweep` with ``CYAN_EXPERIMENT``, cached per scale).
    """
    return negative_prompt_sweep(scales=[scale], **CYAN_EXPERIMENT).tally("color", "cyan")[0]


def check_cyan_scale(fn: Callable) -> bool:
    """Check ``fn(count_cyan) -> λ``: the smallest guidance scale, to within 0.5, at which the negative prompt
    "red" turns all 16 pictures of "a circle" cyan (lesson 08). Graded by measuring, not by a stored answer.

    The learner's function gets :func:`count_cyan` to measure with and returns a scale λ. The check
    then measures λ and λ - 0.5 the same way (cached per scale: what the learner measured costs nothing
    here) and asks the shapes judge: every picture cyan at λ, and not every picture at λ - 0.5.

    :param fn: the learner's function of one argument, ``count_cyan(scale) -> int``; returns a number
    :return: True if the measurement agrees
    """
    if not is_function(fn, "check_cyan_scale"):
        return False
    ok, got = call_learner(fn, (count_cyan,), hint_for_exception(
        "(count_cyan)", tr("measure with count_cyan(scale) and return the scale you found, e.g. return 2.0"),
        broadcast=False))
    if not ok:
        return False
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
        return not_yet(tr("your function returned {got!r}, expected one guidance scale (a number).", got=got),
                       tr("return the scale you found, e.g. `return 2.0`."))
    scale = float(got)
    if scale <= 1:
        return not_yet(tr("at guidance scale {scale:g} there is no guidance: the pipeline (as diffusers') skips the "
                          "batch of two when guidance_scale <= 1, and the negative prompt with it (section 10 measured "
                          "it: the pictures with and without it are identical).", scale=scale),
                       tr("look above 1: the strip of section 10 shows between which of its scales the circles turn."))
    if scale > _LARGEST_SCALE:
        return not_yet(tr("{scale:g} is far outside the scales the pipeline is used with (1 to about 20).", scale=scale),
                       tr("look between the scales of section 10's strip where the circles turn cyan."))
    below = scale - CYAN_RESOLUTION
    result = negative_prompt_sweep(scales=[below, scale], **CYAN_EXPERIMENT)
    count = CYAN_EXPERIMENT["num_images"]
    cyan_below, cyan_at = result.tally("color", "cyan")
    if cyan_at < count:
        others = Counter(colour for colour in result.colors[1] if colour != "cyan")
        listed = ", ".join(f"{n} {colour}" for colour, n in others.most_common())
        return not_yet(tr("at guidance scale {scale:g} the judge reads {cyan} of the {count} pictures as cyan (the "
                          "others: {others}).", scale=scale, cyan=cyan_at, count=count, others=listed),
                       tr("the negative prompt does not push every circle all the way there yet: try a larger scale."))
    if cyan_below == count:
        return not_yet(tr("all {count} pictures are cyan at {scale:g}, but already at {below:g} as well.", count=count,
                          scale=scale, below=below),
                       tr("look for a smaller scale: the smallest at which all {count} are cyan, to within "
                          "{resolution:g}. Halve the gap between a scale where some are not cyan and {below:g}.",
                          count=count, resolution=CYAN_RESOLUTION, below=below))
    return correct(tr("the judge reads every one of the {count} circles as cyan at your scale and not at {resolution:g} "
                      "below it. Each step moves λ times along ε(z, \"a circle\") - ε(z, \"red\"): past some λ every "
                      "picture leaves red as far behind as the model can draw, and in RGB that is cyan.", count=count,
                      resolution=CYAN_RESOLUTION))
