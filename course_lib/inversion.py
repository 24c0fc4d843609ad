"""DDIM inversion: from a picture back to the noise that DDIM turns into it (lesson 11).

Deterministic DDIM (eta = 0) maps z_t to the next, less noisy z_{t'} on the sampling grid:

    x̂_0    = (z_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)                      (DDIM eq. 12)
    z_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'}) ε,      ε = ε_θ(z_t, t, c)

For a fixed ε both lines are invertible, and solving them for z_t gives the same update with
the roles of t and t' swapped:

    x̂_0 = (z_{t'} - sqrt(1 - ᾱ_{t'}) ε) / sqrt(ᾱ_{t'})
    z_t  = sqrt(ᾱ_t) x̂_0 + sqrt(1 - ᾱ_t) ε

The catch: ε = ε_θ(z_t, t, c) needs z_t, the point we are solving for. Inversion uses the point
it has instead, ε ≈ ε_θ(z_{t'}, t, c) (as diffusers' ``DDIMInverseScheduler`` and null-text
inversion do). That is the only approximation: it is small when one step changes z little
(many steps, ε_θ smooth in z) and grows with few steps and with classifier-free guidance, whose
ε̃ changes faster along the path. Running the inverse steps from t = 0 up to T turns the
picture's latent z_0 into a z_T from which DDIM with the same prompt and guidance draws the
picture again; sampling from that z_T with another prompt edits it (Mokady et al. 2023,
"Null-text inversion", section 3; Song et al. 2021, section 4.3).

The loop itself is the pipeline's one loop: ``StableDiffusion.invert`` runs ``run_loop`` over the
timesteps in ascending order with :func:`ddim_inverse_step` as its step.

Notation (code name -> symbol):

    t, prev_t          t and t' = t - T/n, the timestep DDIM steps to from t (t' < 0: the end, ᾱ_final)
    alpha_bar_t        ᾱ_t;  alpha_bar_prev: ᾱ_{t'}
    model_output       ε, the noise prediction used for the step
    sample             z_{t'} for the inverse step (z_t for DDIM's own step)
    latents            z_0 = s E(x): the VAE's posterior mean of the picture, scaled by s
"""

from __future__ import annotations

import numpy as np
import torch

from .captions import COLORS, POSITIONS, SHAPES, shape_caption
from .checks import check_choice, check_floating, check_int_range, check_shape
from .pixels import from_uint8
from .samplers import DDIMSampler

__all__ = ["ddim_inverse_step", "drawn_pictures", "drawn_prompts", "DRAWN_SHAPES"]


def _alpha_bars(sampler: DDIMSampler, t) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(t, ᾱ_t, ᾱ_{t'}) with t' = t - T / n, exactly as ``DDIMSampler.step`` takes them."""
    if not isinstance(sampler, DDIMSampler):
        raise TypeError(f"sampler must be a DDIMSampler (inversion runs deterministic DDIM backwards), got "
                        f"{type(sampler).__name__}. Use pipe.make_sampler('ddim').")
    if sampler.eta != 0:
        raise ValueError(f"DDIM inversion needs the deterministic sampler, eta = 0; this one has eta = {sampler.eta}. "
                         f"Only eta = 0 is a one-to-one map that can be run backwards.")
    t = int(sampler.timesteps[sampler.index_of(t)])
    prev_t = t - sampler.schedule.num_train_timesteps // sampler.num_inference_steps
    alphas_cumprod = sampler.schedule.alphas_cumprod
    alpha_bar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else sampler.final_alpha_bar
    return t, alphas_cumprod[t], alpha_bar_prev


def ddim_inverse_step(model_output: torch.Tensor, t, sample: torch.Tensor, sampler: DDIMSampler) -> torch.Tensor:
    """Undo one DDIM step (eta = 0): from z_{t'} (t' = t - T/n) back up to z_t, for a given ε.

    With the same ε, ``sampler.step(ε, t, ddim_inverse_step(ε, t, z, sampler))`` is z again.

    :param model_output: ε, (B, C, H, W); inversion passes ε_θ(z_{t'}, t, c) for the unknown ε_θ(z_t, t, c)
    :param t: the timestep of the DDIM step being undone, one of ``sampler.timesteps``
    :param sample: z_{t'}, (B, C, H, W)
    :param sampler: the DDIM sampler (eta = 0) after ``set_timesteps``
    :return: z_t, (B, C, H, W)
    """
    check_floating(sample, "sample")
    check_floating(model_output, "model_output")
    check_shape(model_output, "model_output", sample.shape, hint="The denoiser must return ε of the sample's shape.")
    t, alpha_bar_t, alpha_bar_prev = _alpha_bars(sampler, t)
    # x̂_0 = (z_{t'} - sqrt(1 - ᾱ_{t'}) ε) / sqrt(ᾱ_{t'})          (DDIM eq. 12 solved for x̂_0 at t')
    pred_x0 = (sample - (1 - alpha_bar_prev) ** 0.5 * model_output) / alpha_bar_prev ** 0.5
    # z_t = sqrt(ᾱ_t) x̂_0 + sqrt(1 - ᾱ_t) ε                        (DDIM eq. 12 with t and t' swapped)
    return (alpha_bar_t ** 0.5 * pred_x0 + (1 - alpha_bar_t) ** 0.5 * model_output).to(sample.dtype)


# ---------------------------------------------------------------------------------------------
# Pictures the course did not generate
# ---------------------------------------------------------------------------------------------

DRAWN_SHAPES = ("circle", "square", "triangle", "ring", "plus")  # ring and plus: no word in the shapes world
DRAWN_SHADE = 30  # each channel of the base colour moves by up to this much (the data set: 15)
DRAWN_SIDES = (12, 36)  # box side in px, inclusive (the data set: 14-18 and 28-34)
DRAWN_OFFSET = 7  # the centre moves up to this many px from the nominal one along each axis (the data set: 4)


def drawn_pictures(num_images: int, seed: int = 0, shapes=DRAWN_SHAPES) -> tuple[torch.Tensor, list[dict]]:
    """Pictures drawn with PIL, off the shapes data set's grid: other sizes, positions and shades.

    Each is one solid shape on black, like the data set's, but drawn by PIL's polygon and ellipse
    rasteriser, with a box side anywhere in 12-36 px, a centre up to 7 px from the nominal
    position, each channel up to 30 away from the base colour; "ring" (a circle's outline) and
    "plus" are shapes the data set does not have.

    :param num_images: N
    :param seed: seed of the draws
    :param shapes: which of DRAWN_SHAPES to draw
    :return: images (N, 3, 64, 64) float32 in [-1, 1], and per picture {"shape", "color", "size",
        "position"}: the nearest values of the shapes world ("size" is "small" for a side < 23 px;
        "shape" is "ring" or "plus" for those, which the world has no word for)
    """
    from PIL import Image, ImageDraw

    check_int_range(num_images, "num_images", 1, 100_000)
    for shape in shapes:
        check_choice(shape, DRAWN_SHAPES, "drawn shape")
    rng = np.random.default_rng([seed, 11])
    arrays, attributes = [], []
    for _ in range(num_images):
        shape = shapes[rng.integers(len(shapes))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        side = int(rng.integers(DRAWN_SIDES[0], DRAWN_SIDES[1] + 1))
        rgb = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + rng.integers(-DRAWN_SHADE, DRAWN_SHADE + 1, 3),
                                            0, 255))
        centre = np.array(POSITIONS[position]) + rng.integers(-DRAWN_OFFSET, DRAWN_OFFSET + 1, 2)
        left, top = np.clip(centre - side / 2, 0, 64 - side)
        box = (float(left), float(top), float(left + side - 1), float(top + side - 1))
        image = Image.new("RGB", (64, 64))
        draw = ImageDraw.Draw(image)
        if shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif shape == "square":
            draw.rectangle(box, fill=rgb)
        elif shape == "triangle":
            draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=rgb)
        elif shape == "ring":
            draw.ellipse(box, outline=rgb, width=max(3, side // 6))
        else:  # plus: two bars a third of the box wide
            third = side / 3
            draw.rectangle((box[0] + third, box[1], box[2] - third, box[3]), fill=rgb)
            draw.rectangle((box[0], box[1] + third, box[2], box[3] - third), fill=rgb)
        arrays.append(np.asarray(image))
        attributes.append({"shape": shape, "color": color, "size": "small" if side < 23 else "large",
                           "position": position})
    return from_uint8(np.stack(arrays)).contiguous(), attributes


def drawn_prompts(attributes: list[dict]) -> list[str]:
    """The full caption of each drawn picture ("a small red circle in the top left"); "" (the empty
    prompt) for a ring or a plus, which the shapes world has no word for.

    :param attributes: what :func:`drawn_pictures` returns beside the images
    """
    return [shape_caption(a["shape"], a["color"], a["size"], a["position"]) if a["shape"] in SHAPES else ""
            for a in attributes]
