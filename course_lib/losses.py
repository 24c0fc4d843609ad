"""Every training loss of the course, one function each, the formula above the line that computes it.

Two kinds live here:

* **the losses themselves**, on tensors: :func:`eps_loss` (L_simple), :func:`diffusion_training_loss`
  (one sample of DDPM's objective), :func:`noisy_classifier_loss`, :func:`judge_loss`, CLIP's
  :func:`clip_loss` and :func:`contrastive_loss` (lesson 07);
* **recipe losses** with the signature the training loop calls,
  ``loss(model, batch, schedule, generator, **loss_args) -> scalar``, where ``batch`` holds the
  data columns of this step's examples and ``generator`` (seeded by (seed, step)) is where every
  random draw comes from: :func:`eps_prediction_loss`, :func:`class_conditional_eps_loss`,
  :func:`noisy_classifier_batch_loss`, :func:`judge_batch_loss`, :func:`shapes_judge_loss`,
  :func:`vae_loss`, :func:`shapes_clip_loss`, :func:`latent_diffusion_loss`,
  :func:`adapter_latent_diffusion_loss`.

Notation: x_0 clean images, t ~ U{0..T-1} timesteps, eps ~ N(0, I) noise,
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (diffusion.q_sample), y labels.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_finite, check_labels, check_shape
from .diffusion import q_sample
from .nn.classifier import SHAPES_JUDGE_HEADS, JudgeClassifier, NoisyClassifier, random_shift, split_attribute_logits
from .nn.text import clip_embeddings, encode_text
from .schedules import NoiseSchedule

__all__ = [
    "LossFn",
    "eps_loss",
    "diffusion_training_loss",
    "noisy_classifier_loss",
    "judge_loss",
    "clip_loss",
    "contrastive_loss",
    "eps_prediction_loss",
    "class_conditional_eps_loss",
    "noisy_classifier_batch_loss",
    "judge_batch_loss",
    "shapes_judge_loss",
    "vae_loss",
    "shapes_clip_loss",
    "latent_diffusion_loss",
    "adapter_latent_diffusion_loss",
]

# A recipe loss takes (model, batch, schedule, generator, **recipe.loss_args) and returns a scalar tensor.
LossFn = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------------------------
# The losses on tensors
# ---------------------------------------------------------------------------------------------


def eps_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The simplified DDPM loss between predicted and true noise (Ho et al. 2020, eq. 14).

    :param eps_pred: $\\epsilon_\\theta(x_t, t)$, (B, C, H, W)
    :param noise: the noise $\\epsilon$ that made x_t, same shape
    :return: a scalar, $\\mathbb{E} \\| \\epsilon - \\epsilon_\\theta(x_t, t) \\|^2$ averaged over elements
    """
    check_finite(eps_pred, "eps_pred")
    check_finite(noise, "noise")
    check_shape(eps_pred, "eps_pred", noise.shape, hint="The model must predict noise of the image's shape.")
    # L_simple = E_{t, x_0, ε} ||ε - ε_θ(x_t, t)||²                (Ho et al. 2020, eq. 14)
    return F.mse_loss(eps_pred, noise)


def diffusion_training_loss(
    model_fn: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """One sample of the DDPM training objective (Ho et al. 2020, Algorithm 1).

    Draws t ~ Uniform{0, ..., T-1} (one per image), then eps ~ N(0, I), both from ``generator``
    on x0's device, forms x_t with :func:`~course_lib.diffusion.q_sample` and returns
    ``eps_loss(model_fn(x_t, t, **model_kwargs), eps)``.

    :param model_fn: the denoiser, ``model_fn(x_t, t, **model_kwargs) -> eps prediction``
    :param x0: clean images $x_0$, (B, C, H, W)
    :param schedule: the noise schedule
    :param generator: random generator on x0's device (None: torch's global one)
    :param model_kwargs: passed to model_fn (e.g. ``class_labels=``, ``encoder_hidden_states=``)
    :return: the scalar loss
    """
    check_finite(x0, "x0")
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a batch of shape (B, ...) with B >= 1, got shape {tuple(x0.shape)}.")
    # t ~ Uniform({0, ..., T-1})
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    # ε ~ N(0, I)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(x0, t, noise, schedule)
    return eps_loss(model_fn(x_t, t, **model_kwargs), noise)


def _check_classifier_images(x: torch.Tensor, name: str, model: nn.Module, hint: str) -> None:
    c = model.config
    check_shape(x, name, (None, c.in_channels, c.sample_size, c.sample_size), hint=hint)


def noisy_classifier_loss(
    model: NoisyClassifier,
    x0: torch.Tensor,
    labels: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
    max_shift: int = 0,
) -> torch.Tensor:
    """Cross-entropy of the noise-aware classifier on freshly noised images (lesson 04).

        t ~ U{0, ..., T - 1},  ε ~ N(0, I),  x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε  (diffusion.q_sample)
        L = -log p_φ(y | x_t, t)                                                     averaged over the batch

    :param model: a :class:`~course_lib.nn.classifier.NoisyClassifier`
    :param x0: clean images x_0, (B, C, H, W) in [-1, 1]
    :param labels: classes y, LongTensor (B,)
    :param schedule: the noise schedule (its T must equal ``model.config.num_train_timesteps``)
    :param generator: draws t, ε (and shifts) on x0's device; ``None`` uses the global generator
    :param max_shift: shift the clean images by up to this many pixels first (augmentation; 0 = off)
    :return: scalar loss
    """
    c = model.config
    _check_classifier_images(x0, "x0", model, "Pass clean training images of the classifier's size.")
    labels = check_labels(labels, c.num_classes, x0.shape[0])
    if schedule.num_train_timesteps != c.num_train_timesteps:
        raise ValueError(
            f"The schedule has T = {schedule.num_train_timesteps} steps but the classifier was built for "
            f"num_train_timesteps={c.num_train_timesteps}. Use the schedule of the diffusion model it will guide, "
            f"and set ClassifierConfig(num_train_timesteps=...) to its T."
        )
    if max_shift:
        x0 = random_shift(x0, max_shift, generator)
    batch = x0.shape[0]
    t = torch.randint(0, c.num_train_timesteps, (batch,), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(x0, t, noise, schedule)
    # L = -log p_φ(y | x_t, t)
    return F.cross_entropy(model(x_t, t), labels.to(x0.device))


def judge_loss(
    model: JudgeClassifier,
    x: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    max_shift: int = 1,
) -> torch.Tensor:
    """Cross-entropy of the judge on clean images, randomly shifted by up to ``max_shift`` pixels.

        L = -log p(y | shift(x))       averaged over the batch

    :param model: a :class:`~course_lib.nn.classifier.JudgeClassifier`
    :param x: clean images (B, C, H, W) in [-1, 1]
    :param labels: classes y, LongTensor (B,)
    :param generator: draws the shifts on x's device
    :param max_shift: augmentation strength in pixels (0 = no augmentation)
    :return: scalar loss
    """
    c = model.config
    _check_classifier_images(x, "x", model, "Pass clean training images of the judge's size.")
    labels = check_labels(labels, c.num_classes, x.shape[0])
    x = random_shift(x, max_shift, generator)
    # L = -log p(y | x)
    return F.cross_entropy(model(x), labels.to(x.device))


def clip_loss(model, pixel_values, input_ids, attention_mask=None) -> torch.Tensor:
    """CLIP's symmetric contrastive (InfoNCE) loss over a batch of B matching (image, caption) pairs.

    With logits s_ij = exp(logit_scale) v_i . t_j (image i, caption j; the pair i == j matches):

        L = 1/2 [ -1/B sum_i log( exp(s_ii) / sum_j exp(s_ij) )     (each image picks its caption)
                  -1/B sum_j log( exp(s_jj) / sum_i exp(s_ij) ) ]   (each caption picks its image)

    i.e. the cross-entropy of the logit matrix along its rows and along its columns, with the
    diagonal as the targets (Radford et al. 2021, fig. 3). Equal to ``model(...,
    return_loss=True).loss``. CLIP keeps exp(logit_scale) <= 100 during training; clamp
    ``model.logit_scale`` after each optimiser step to do the same.

    :param model: a ``CLIPModel``
    :param pixel_values: images x_i in [-1, 1], (B, 3, H, W)
    :param input_ids: the matching captions' token ids (B, L)
    :param attention_mask: (B, L)
    :return: the loss, a scalar tensor
    """
    image_embeds, text_embeds = clip_embeddings(model, pixel_values, input_ids, attention_mask)
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(f"clip_loss needs one caption per image, got {image_embeds.shape[0]} images and "
                         f"{text_embeds.shape[0]} captions. Pass matching pairs.")
    return contrastive_loss(image_embeds, text_embeds, model.logit_scale)


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric contrastive loss from the embeddings of B matching pairs (see :func:`clip_loss`).

        s_ij = exp(logit_scale) v_i . t_j
        L    = 1/2 [ CE(rows of s, diagonal) + CE(columns of s, diagonal) ]

    :param image_embeds: v_i, unit length, (B, P)
    :param text_embeds: t_j, unit length, (B, P); text_embeds[i] is the caption of image i
    :param logit_scale: log(1 / tau), a number or a scalar tensor (CLIPModel.logit_scale)
    :return: the loss, a scalar tensor
    """
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(f"The contrastive loss needs one caption per image: image_embeds (B, P) and text_embeds "
                         f"(B, P) of the same shape, got {tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}. "
                         f"Pass matching pairs.")
    logit_scale = torch.as_tensor(logit_scale, dtype=image_embeds.dtype, device=image_embeds.device)
    # s_ij = exp(logit_scale) v_i . t_j, (B images, B captions)
    logits = logit_scale.exp() * image_embeds @ text_embeds.T
    # log-softmax along j (rows: image -> captions) and along i (columns: caption -> images)
    image_to_text = -torch.diagonal(logits.log_softmax(dim=1)).mean()
    text_to_image = -torch.diagonal(logits.log_softmax(dim=0)).mean()
    return (image_to_text + text_to_image) / 2


# ---------------------------------------------------------------------------------------------
# Recipe losses: (model, batch, schedule, generator, **loss_args) -> scalar
# ---------------------------------------------------------------------------------------------


def eps_prediction_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator,
                        class_key: str | None = None) -> torch.Tensor:
    """The DDPM loss (Ho et al. 2020, Algorithm 1): E_{x0, t, eps} || eps - eps_theta(x_t, t) ||^2.

    :param batch: {"images": x_0 (B, C, H, W), ...}
    :param class_key: if set, pass ``batch[class_key]`` as ``class_labels`` (class-conditional model)
    """
    kwargs = {"class_labels": batch[class_key]} if class_key else {}
    return diffusion_training_loss(model, batch["images"], schedule, generator=generator, **kwargs)


def class_conditional_eps_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator,
                               label_dropout: float = 0.1, null_class: int = 10) -> torch.Tensor:
    """The DDPM loss with label dropout, for classifier-free guidance (Ho & Salimans 2021, Algorithm 1).

    With probability ``label_dropout`` (p_uncond) a label is replaced by the null class, so one
    network learns both eps(x_t, t, y) and eps(x_t, t) = eps(x_t, t, null).

    :param batch: {"images": x_0 (B, C, H, W), "labels": y (B,)}
    """
    labels = batch["labels"]
    # y <- null with probability p_uncond
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, null_class), labels)
    return diffusion_training_loss(model, batch["images"], schedule, generator=generator, class_labels=labels)


def noisy_classifier_batch_loss(model, batch, schedule, generator, max_shift=0):
    """:func:`noisy_classifier_loss` on a batch {"images", "labels"} (t, eps drawn from the step's generator)."""
    return noisy_classifier_loss(model, batch["images"], batch["labels"], schedule, generator, max_shift=max_shift)


def judge_batch_loss(model, batch, schedule, generator, max_shift=2):
    """:func:`judge_loss` on a batch {"images", "labels"}, shifted by up to max_shift pixels (augmentation)."""
    return judge_loss(model, batch["images"], batch["labels"], generator, max_shift=max_shift)


def shapes_judge_loss(model: nn.Module, batch: dict, schedule, generator: torch.Generator,
                      heads: dict[str, int] | None = None) -> torch.Tensor:
    """Sum over the four attributes a of the cross-entropy -log p(y_a | x) of the judge's head a.

    :param batch: {"images": (B, 3, 64, 64), "shape": (B,), "color": (B,), "size": (B,), "position": (B,)}
    :param heads: attribute -> number of values, in the order of the logits (default: the six-colour
        judge's SHAPES_JUDGE_HEADS; the 7-colour judge of lesson 11 passes {"shape": 3, "color": 7, ...})
    """
    heads = SHAPES_JUDGE_HEADS if heads is None else heads
    logits = split_attribute_logits(model(batch["images"]), heads)
    # L = sum_a -log p_a(y_a | x)
    return sum(F.cross_entropy(logits[name], batch[name]) for name in heads)


def vae_loss(model: nn.Module, batch: dict, schedule, generator: torch.Generator,
             kl_weight: float = 1e-6) -> torch.Tensor:
    """The KL autoencoder's loss: reconstruction plus a small KL term (Rombach et al. 2022).

        z ~ q(z | x) = N(mu(x), sigma(x)^2)      (reparameterised: z = mu + sigma * eps)
        L = ||x - D(z)||^2 / (C H W) + kl_weight * KL(q(z | x) || N(0, I))

    SD's autoencoder adds a perceptual (LPIPS) and an adversarial loss for sharp textures; flat
    shapes need neither. The tiny kl_weight (SD: 1e-6) keeps the latents near N(0, I) in scale
    without blurring them; the scaling factor fixes what is left.
    """
    x = batch["images"]
    posterior = model.encode(x)
    reconstruction = model.decode(posterior.sample(generator))
    return (reconstruction - x).pow(2).mean() + kl_weight * posterior.kl().mean()


def shapes_clip_loss(model: nn.Module, batch: dict, schedule, generator: torch.Generator) -> torch.Tensor:
    """CLIP's symmetric contrastive loss on a batch of pictures and their captions (nn.text.clip_loss).

    :param batch: {"images": (B, 3, H, W), "input_ids": (B, L), "attention_mask": (B, L)}
    """
    return clip_loss(model, batch["images"], batch["input_ids"], batch["attention_mask"])


def latent_diffusion_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator,
                          caption_dropout: float = 0.1) -> torch.Tensor:
    """The training loss of latent diffusion with caption dropout (the notes' training loop).

        z_0 = s * (mu(x) + sigma(x) * eps_z)              a sample of the scaled latent
        c   = "" with probability p_uncond, else the caption   (caption dropout)
        L   = E_{t, eps} || eps - eps_theta(z_t, t, tau(c)) ||^2

    :param batch: {"latent_mean": s * mu (B, 4, h, w), "latent_std": s * sigma, "text_states": tau(c) (B, L, D),
        "null_text_states": tau("") (B, L, D) or (1, L, D)}, the frozen VAE's and text encoder's outputs
    :param caption_dropout: p_uncond, the share of examples trained with the empty caption
    """
    mean, std, states = batch["latent_mean"], batch["latent_std"], batch["text_states"]
    z0 = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    # c <- "" with probability p_uncond
    drop = torch.rand(states.shape[0], generator=generator, device=states.device) < caption_dropout
    null = batch["null_text_states"].to(device=states.device, dtype=states.dtype)
    states = torch.where(drop[:, None, None], null, states)
    return diffusion_training_loss(model, z0, schedule, generator=generator, encoder_hidden_states=states)


def adapter_latent_diffusion_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator,
                                  caption_dropout: float = 0.1, decoder_batch: int = 8) -> torch.Tensor:
    """:func:`latent_diffusion_loss` for an adapter in training (``lora.AdaptedModel``, lesson 11).

    The same loss; only the text states are computed at every step, through the text encoder, since
    the new word's row is trained (every other weight of the model is frozen):

        L = E_{t, eps} || eps - eps_theta'(z_t, t, tau'(c)) ||^2,   theta' = theta + LoRA,  tau' with e_w

    When the adapter also adapts the VAE's decoder (``model.vae``), the decoder's reconstruction of
    the first ``decoder_batch`` pictures of the batch is added; it trains only the decoder's LoRA:

        L_D = || D'(z) - x ||^2 / (C H W),   z = mu(x) + sigma(x) eps_z  (the frozen encoder's sample)

    :param model: an ``AdaptedModel`` (its ``unet``, ``text_encoder`` and ``vae``)
    :param batch: {"latent_mean": s * mu (B, 4, h, w), "latent_std": s * sigma, "input_ids": the captions'
        token ids (B, L), "null_input_ids": the ids of "" (B, L), and for the decoder "images": x (B, 3, H, W)}
    :param caption_dropout: p_uncond
    :param decoder_batch: pictures per step for L_D
    """
    states = encode_text(model.text_encoder, batch["input_ids"])
    null_states = encode_text(model.text_encoder, batch["null_input_ids"][:1])
    loss = latent_diffusion_loss(model.unet, {"latent_mean": batch["latent_mean"], "latent_std": batch["latent_std"],
                                              "text_states": states, "null_text_states": null_states},
                                 schedule, generator, caption_dropout=caption_dropout)
    if getattr(model, "vae", None) is None:
        return loss
    mean, std = batch["latent_mean"][:decoder_batch], batch["latent_std"][:decoder_batch]
    eps_z = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    # z = (s mu + s sigma eps_z) / s, the unscaled latent the decoder reads
    z = (mean + std * eps_z) / model.vae.config.scaling_factor
    # L_D = || D'(z) - x ||^2 / (C H W)
    return loss + (model.vae.decode(z) - batch["images"][:decoder_batch]).pow(2).mean()
