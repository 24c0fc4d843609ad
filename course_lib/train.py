"""Training: one loop for every model of the course, recipes that say what to train, checkpoints.

A **recipe** (:class:`Recipe`) is data: which network with which config, which data, which loss,
the optimizer's hyperparameters, the number of steps, the batch size and the seed. ``RECIPES``
holds the course's recipes by name; ``python -m course_lib train NAME`` runs one.

The **loop** (:func:`train`) is the same for all of them: draw a batch, compute the recipe's loss,
take an AdamW step, save a checkpoint now and then.

**Determinism and resume.** Every random draw of step k (the batch indices, and inside the loss
the timesteps t and the noise eps) comes from generators seeded by (seed, k) alone, not from a
generator that has been running since step 0. Resuming from a checkpoint at step k therefore
restores everything step k needs -- the weights, the AdamW moments and the step number -- and
the run continues exactly as an uninterrupted one would (bit for bit on the same machine).

**Checkpoints** are two files: ``NAME.safetensors`` (the weights) and ``NAME.json`` (what the
network is and how it was made: network class and config, recipe, schedule, step, seed, command,
training time, final loss). Training state for resuming (AdamW moments, loss history) goes to a
second pair, ``NAME.state.safetensors`` + ``NAME.state.json``. No pickle anywhere: safetensors
files cannot run code when loaded. Every file is written to a temporary file in the same folder
and then renamed over the old one (``os.replace``), so a crash mid-save leaves the old checkpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import __version__
from .checks import check_choice, check_int_range
from .captions import ATTRIBUTES
from .datasets import digits_tensors, shapes_attributes, shapes_tensors
from .diffusion import diffusion_training_loss, q_sample
from .nn.classifier import (SHAPES_JUDGE_HEADS, split_attribute_logits,  # noqa: F401 (re-exported)
                            ClassifierConfig, JudgeClassifier, JudgeConfig, NoisyClassifier, judge_loss,
                            noisy_classifier_loss)
from .nn.unet import UNet2DConditionModel, UNetConfig
from .nn.vae import AutoencoderKL, VAEConfig
from .schedules import NoiseSchedule, make_schedule

__all__ = [
    "Recipe",
    "RECIPES",
    "NETWORKS",
    "TrainResult",
    "train",
    "get_recipe",
    "build_network",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_paths",
    "checkpoint_dir",
    "resolve_device",
    "step_generators",
    "DEFAULT_CHECKPOINT_DIR",
]

# data/checkpoints/ of the repository (course_lib/../data/checkpoints); the environment variable
# COURSE_CHECKPOINT_DIR points everything (train's default output, load_course_model, the command
# line) at another folder.
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
CHECKPOINT_FORMAT = "course_lib checkpoint v1"


def checkpoint_dir() -> Path:
    """The folder of the course's checkpoints: $COURSE_CHECKPOINT_DIR if set, else data/checkpoints."""
    return Path(os.environ.get("COURSE_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR)


# ---------------------------------------------------------------------------------------------
# Networks by name, so that a checkpoint's JSON can say which class to build
# ---------------------------------------------------------------------------------------------

def _clip_model(config: dict) -> nn.Module:
    """transformers' CLIPModel from its config dict (transformers is imported only when needed)."""
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig.from_dict(config))


# name -> builder: a function config dict -> freshly initialised network. The course's own configs
# have from_dict / to_dict; transformers' CLIPConfig too.
NETWORKS: dict[str, Callable[[dict], nn.Module]] = {
    "UNet2DConditionModel": lambda config: UNet2DConditionModel(UNetConfig.from_dict(config)),
    "NoisyClassifier": lambda config: NoisyClassifier(ClassifierConfig.from_dict(config)),
    "JudgeClassifier": lambda config: JudgeClassifier(JudgeConfig.from_dict(config)),
    "AutoencoderKL": lambda config: AutoencoderKL(VAEConfig.from_dict(config)),
    "CLIPModel": _clip_model,
}


def build_network(name: str, config: dict) -> nn.Module:
    """Build a freshly initialised network from its registered name and its config as a dict."""
    check_choice(name, list(NETWORKS), "network")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    return NETWORKS[name](config)


def _network_config_dict(model: nn.Module, fallback: dict) -> dict:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(fallback)


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------

# A loss takes (model, batch, schedule, generator, **recipe.loss_args) and returns a scalar tensor.
# batch: the recipe's data tensors indexed by this step's batch, on the training device;
# generator: seeded by (seed, step), on the training device -- draw ALL randomness from it.
LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """How to train one of the course's models. Change one with ``dataclasses.replace``.

    >>> from dataclasses import replace
    >>> quick = replace(RECIPES["digits-ddpm"], steps=200, batch_size=32)
    """

    name: str  # the checkpoint's name too: data/checkpoints/<name>.safetensors
    description: str
    network: str  # a key of NETWORKS
    # the network's config as a JSON-ready dict, or a function that makes it (for a config that needs
    # transformers, imported only when the recipe is used)
    network_config: dict | Callable[[], dict]
    data: Callable[[], dict[str, torch.Tensor]]  # -> full training set, e.g. {"images": (N, C, H, W)}
    loss: LossFn
    loss_args: dict = field(default_factory=dict)  # extra keyword arguments of loss (saved in the JSON)
    schedule: dict | None = None  # make_schedule(**schedule); None for a model that needs none
    steps: int = 10_000  # optimizer steps
    batch_size: int = 128
    lr: float = 1e-3  # AdamW learning rate after warmup
    warmup_steps: int = 100  # linear warmup from 0 to lr
    lr_decay: str = "cosine"  # after warmup: "cosine" (to 0 at the last step) or "constant"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # clip the gradient's global L2 norm (None: no clipping)
    seed: int = 0
    checkpoint_every: int = 1000  # save every this many steps (and at the end)
    evaluate: Callable[[nn.Module], dict] | None = None  # model -> metrics saved in the final JSON
    # writes what the model needs beside its checkpoint (shapes-clip: the tokenizer), given the folder
    companion_files: Callable[[Path], None] | None = None

    def learning_rate(self, step: int, total_steps: int | None = None) -> float:
        """lr at (0-based) step of a run of total_steps (default: the recipe's steps).

        Linear warmup over warmup_steps, then constant or a cosine decay to 0 at the last step.
        A short run that ends at a small learning rate gives most of what an exponential moving
        average of the weights gives, with nothing extra to store.
        """
        total_steps = total_steps or self.steps
        # warmup: lr_k = lr * (k + 1) / warmup_steps
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_decay == "constant":
            return self.lr
        # cosine: lr_k = lr * (1 + cos(pi * progress)) / 2, progress from 0 (end of warmup) to 1 (last step)
        progress = (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def network_config_dict(self) -> dict:
        """The network's config as a dict (calls ``network_config`` if it is a function)."""
        return self.network_config() if callable(self.network_config) else self.network_config

    def training_config(self) -> dict:
        """The optimizer settings as a JSON-ready dict (saved in the checkpoint)."""
        return {
            "batch_size": self.batch_size, "lr": self.lr, "warmup_steps": self.warmup_steps, "lr_decay": self.lr_decay,
            "weight_decay": self.weight_decay, "adam_betas": list(self.adam_betas),
            "grad_clip": self.grad_clip, "checkpoint_every": self.checkpoint_every,
        }


def eps_prediction_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator,
                        class_key: str | None = None) -> torch.Tensor:
    """The DDPM loss (Ho et al. 2020, Algorithm 1): E_{x0, t, eps} || eps - eps_theta(x_t, t) ||^2.

    :param batch: {"images": x_0 (B, C, H, W), ...}
    :param class_key: if set, pass ``batch[class_key]`` as ``class_labels`` (class-conditional model)
    """
    kwargs = {"class_labels": batch[class_key]} if class_key else {}
    return diffusion_training_loss(model, batch["images"], schedule, generator=generator, **kwargs)


def _digits_train_data() -> dict[str, torch.Tensor]:
    images, labels = digits_tensors("train", size=16)
    return {"images": images, "labels": labels}


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


def _digits_unet(num_class_embeds: int | None) -> dict:
    """The small UNet of lessons 02-05: 16x16 -> 8x8 -> 4x4, no attention.

    Sized for a 2-core CPU: the 16x16 level costs most, so it has only 16 channels (measured:
    about 0.3 s per training step at batch 64 on one thread, against 0.75 s with 32 channels).
    """
    return UNetConfig(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2D",
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        num_class_embeds=num_class_embeds,
    ).to_dict()


DIGITS_SCHEDULE = {"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
DIGITS_NULL_CLASS = 10  # the 11th class embedding stands for "no label"

RECIPES: dict[str, Recipe] = {}


def _register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


_register(Recipe(
    name="digits-ddpm",
    description="unconditional eps-prediction DDPM on the 16x16 digits (lesson 02)",
    network="UNet2DConditionModel",
    network_config=_digits_unet(num_class_embeds=None),
    data=_digits_train_data,
    loss=eps_prediction_loss,
    schedule=DIGITS_SCHEDULE,
    steps=4000,
    batch_size=64,
    lr=1e-3,
    warmup_steps=200,
    seed=0,
    checkpoint_every=500,
))

_register(Recipe(
    name="digits-cfg",
    description="class-conditional DDPM on the digits with label dropout p_uncond=0.1 (lesson 05)",
    network="UNet2DConditionModel",
    network_config=_digits_unet(num_class_embeds=11),
    data=_digits_train_data,
    loss=class_conditional_eps_loss,
    loss_args={"label_dropout": 0.1, "null_class": DIGITS_NULL_CLASS},
    schedule=DIGITS_SCHEDULE,
    steps=5000,
    batch_size=64,
    lr=1e-3,
    warmup_steps=200,
    seed=0,
    checkpoint_every=500,
))


def _noisy_classifier_batch_loss(model, batch, schedule, generator, max_shift=0):
    """noisy_classifier_loss on a batch of the digits (t, eps drawn from the step's generator)."""
    return noisy_classifier_loss(model, batch["images"], batch["labels"], schedule, generator, max_shift=max_shift)


def _judge_batch_loss(model, batch, schedule, generator, max_shift=2):
    """judge_loss on a batch of the digits, shifted by up to max_shift pixels (augmentation)."""
    return judge_loss(model, batch["images"], batch["labels"], generator, max_shift=max_shift)


def _noisy_classifier_test_accuracy(model) -> dict:
    """Accuracy of p(y | x_t, t) on the test digits at several t (one seeded noise draw)."""
    images, labels = digits_tensors("test", size=16)
    schedule = make_schedule(**DIGITS_SCHEDULE)
    generator = torch.Generator().manual_seed(0)
    accuracy = {}
    for t in (0, 100, 250, 500, 750, 999):
        t_batch = torch.full((len(images),), t)
        noise = torch.randn(images.shape, generator=generator)
        x_t = q_sample(images, t_batch, noise, schedule)
        accuracy[str(t)] = round((model(x_t, t_batch).argmax(1) == labels).float().mean().item(), 4)
    return {"test_accuracy_at_t": accuracy}


def _judge_test_accuracy(model) -> dict:
    images, labels = digits_tensors("test", size=16)
    return {"test_accuracy": round((model(images).argmax(1) == labels).float().mean().item(), 4)}


_register(Recipe(
    name="digits-noisy-classifier",
    description="noise-aware digit classifier p(y | x_t, t) for classifier guidance (lesson 04)",
    network="NoisyClassifier",
    network_config=ClassifierConfig().to_dict(),
    data=_digits_train_data,
    loss=_noisy_classifier_batch_loss,
    loss_args={"max_shift": 0},
    schedule=DIGITS_SCHEDULE,
    steps=1500,
    batch_size=128,
    lr=2e-3,
    warmup_steps=75,
    seed=0,
    checkpoint_every=500,
    evaluate=_noisy_classifier_test_accuracy,
))

_register(Recipe(
    name="digits-judge",
    description="clean-digit classifier that only evaluates samples, never guides (lessons 04-05)",
    network="JudgeClassifier",
    network_config=JudgeConfig().to_dict(),
    data=_digits_train_data,
    loss=_judge_batch_loss,
    loss_args={"max_shift": 2},
    schedule=None,
    steps=600,
    batch_size=128,
    lr=2e-3,
    warmup_steps=30,
    seed=0,
    checkpoint_every=300,
    evaluate=_judge_test_accuracy,
))


# ---------------------------------------------------------------------------------------------
# The shapes world (lessons 06-09): the judge, the autoencoder, the tiny CLIP, the latent UNet
# ---------------------------------------------------------------------------------------------

def shapes_judge_loss(model: nn.Module, batch: dict, schedule, generator: torch.Generator) -> torch.Tensor:
    """Sum over the four attributes a of the cross-entropy -log p(y_a | x) of the judge's head a."""
    heads = split_attribute_logits(model(batch["images"]))
    # L = sum_a -log p_a(y_a | x)
    return sum(torch.nn.functional.cross_entropy(heads[name], batch[name]) for name in SHAPES_JUDGE_HEADS)


def _shapes_judge_data() -> dict[str, torch.Tensor]:
    # the "all" split: the judge must also recognise the held-out green triangles and blue circles
    images, _ = shapes_tensors("all")
    return {"images": images, **shapes_attributes("all")}


def _shapes_judge_accuracy(model) -> dict:
    out = {}
    for split in ("test", "heldout"):
        images, _ = shapes_tensors(split)
        truth = shapes_attributes(split)
        heads = split_attribute_logits(torch.cat([model(images[i:i + 250]) for i in range(0, len(images), 250)]))
        out[f"{split}_accuracy"] = {name: round((heads[name].argmax(1) == truth[name]).float().mean().item(), 4)
                                    for name in SHAPES_JUDGE_HEADS}
    return out


_register(Recipe(
    name="shapes-judge",
    description="CNN with four heads (shape, colour, size, position) that grades shapes samples; never guides",
    network="JudgeClassifier",
    network_config=JudgeConfig(in_channels=3, sample_size=64, num_classes=sum(SHAPES_JUDGE_HEADS.values()),
                               channels=(16, 32, 32, 32), feature_dim=64, dropout=0.1).to_dict(),
    data=_shapes_judge_data,
    loss=shapes_judge_loss,
    schedule=None,
    steps=500,
    batch_size=64,
    lr=2e-3,
    warmup_steps=30,
    seed=0,
    checkpoint_every=250,
    evaluate=_shapes_judge_accuracy,
))


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


# Sized for a 2-core CPU (measured on one thread, batch 16): full-resolution layers cost most, so
# the 64x64 level has only 8 channels. (8, 16, 32, 64): 0.40 s per step, 25.9 dB after 545 steps;
# (16, 32, 64, 64): 0.48 s per step at batch 8 and 21.4 dB after 454 steps.
SHAPES_VAE_CHANNELS = (8, 16, 32, 64)
SHAPES_VAE_STEPS = 2800


def _shapes_train_images() -> dict[str, torch.Tensor]:
    return {"images": shapes_tensors("train")[0]}


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and sigma of q(z | x) for many images, in batches: ((N, C_z, h, w), (N, C_z, h, w))."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        posterior = vae.encode(images[i:i + batch_size])
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """s = 1 / std(z) over all latent entries: the UNet then sees s * z with unit variance.

    SD v1.x's 0.18215 was measured this way on its autoencoder's latents of real photos.
    """
    return 1.0 / latents.double().std().item()


def _shapes_vae_evaluate(model: AutoencoderKL) -> dict:
    """PSNR of the round trip on test and held-out pictures; set the scaling factor on the config."""
    from .metrics import psnr  # metrics sits above train; imported only to evaluate

    generator = torch.Generator().manual_seed(0)
    train_images = shapes_tensors("train")[0][:2000]
    mean, std = encode_latents(model, train_images)
    z = mean + std * torch.randn(mean.shape, generator=generator)  # samples of q(z | x), as SD's latents
    scaling_factor = latent_scaling_factor(z)
    model.config = dataclasses.replace(model.config, scaling_factor=round(scaling_factor, 5))
    metrics = {"latent_std": round(z.std().item(), 4), "scaling_factor": round(scaling_factor, 5)}
    for split in ("test", "heldout"):
        images = shapes_tensors(split)[0]
        reconstruction = torch.cat([model(images[i:i + 250]) for i in range(0, len(images), 250)])
        metrics[f"psnr_{split}_db"] = round(psnr(images, reconstruction.clamp(-1, 1)), 2)
    return metrics


_register(Recipe(
    name="shapes-vae",
    description="KL autoencoder 64x64x3 -> 8x8x4 (SD's factor 8 and 4 channels) on the shapes (lesson 06)",
    network="AutoencoderKL",
    network_config=VAEConfig(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=SHAPES_VAE_CHANNELS, layers_per_block=1, norm_num_groups=4, latent_channels=4,
        sample_size=64,
    ).to_dict(),
    data=_shapes_train_images,
    loss=vae_loss,
    loss_args={"kl_weight": 1e-6},
    schedule=None,
    steps=SHAPES_VAE_STEPS,
    batch_size=16,
    lr=2e-3,
    warmup_steps=100,
    seed=0,
    checkpoint_every=500,
    evaluate=_shapes_vae_evaluate,
))


def _shapes_clip_data() -> dict[str, torch.Tensor]:
    from .nn.text import build_caption_tokenizer, tokenize_prompts

    images, captions = shapes_tensors("train")
    tokens = tokenize_prompts(build_caption_tokenizer(), captions)
    return {"images": images, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def shapes_clip_loss(model: nn.Module, batch: dict, schedule, generator: torch.Generator) -> torch.Tensor:
    """CLIP's symmetric contrastive loss on a batch of pictures and their captions (nn.text.clip_loss)."""
    from .nn.text import clip_loss

    return clip_loss(model, batch["images"], batch["input_ids"], batch["attention_mask"])


def _shapes_clip_config() -> dict:
    from .nn.text import build_caption_tokenizer, tiny_clip_config

    return tiny_clip_config(build_caption_tokenizer()).to_dict()


SHAPES_TOKENIZER = "shapes-tokenizer"  # folder of the caption tokenizer, beside the checkpoints


def _save_shapes_tokenizer(folder: Path) -> None:
    """The caption tokenizer the tiny CLIP was trained with, as folder/shapes-tokenizer (tokenizer.json ...)."""
    from .nn.text import build_caption_tokenizer, save_caption_tokenizer

    save_caption_tokenizer(build_caption_tokenizer(), Path(folder) / SHAPES_TOKENIZER)


def _shapes_clip_evaluate(model) -> dict:
    from .metrics import clip_zero_shot_accuracy  # metrics sits above train; imported only to evaluate

    return {f"zero_shot_{split}": clip_zero_shot_accuracy(model, split) for split in ("test", "heldout")}


_register(Recipe(
    name="shapes-clip",
    description="tiny CLIP (transformers' CLIPModel) trained contrastively on shapes and captions (lesson 07)",
    network="CLIPModel",
    network_config=_shapes_clip_config,
    data=_shapes_clip_data,
    loss=shapes_clip_loss,
    schedule=None,
    steps=1000,
    batch_size=256,
    lr=1e-3,
    warmup_steps=50,
    weight_decay=0.1,
    adam_betas=(0.9, 0.98),
    seed=0,
    checkpoint_every=250,
    evaluate=_shapes_clip_evaluate,
    companion_files=_save_shapes_tokenizer,
))


SHAPES_LDM_SCHEDULE = {"kind": "scaled_linear", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}

SHAPES_LDM_CAPTION_DROPOUT = 0.1  # p_uncond: share of captions replaced by the empty caption ""


def _load_component(name: str) -> nn.Module:
    """A trained network of the checkpoint folder (the VAE and the CLIP the latent UNet builds on)."""
    path = checkpoint_dir() / name
    if not checkpoint_paths(path)["weights"].is_file():
        raise ValueError(f"The recipe shapes-ldm needs the checkpoint {name!r}, not found in {checkpoint_dir()}. "
                         f"Make it first: python -m course_lib train {name}")
    state_dict, config = load_checkpoint(path)
    model = build_network(config["network"], config["network_config"])
    model.load_state_dict(state_dict)
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def _shapes_text_states(captions: tuple[str, ...], folder: str) -> torch.Tensor:
    """The frozen tiny CLIP's last_hidden_state for each caption, (N, L, D); computed once per caption."""
    from .nn.text import build_caption_tokenizer, encode_text, tokenize_prompts

    clip = _load_component("shapes-clip")
    unique = sorted(set(captions))
    # no attention mask, as SD v1.x (CLIP's causal attention: the words' states do not see the padding)
    ids = tokenize_prompts(build_caption_tokenizer(), unique)["input_ids"]
    with torch.no_grad():
        states = encode_text(clip, ids)
    row = {caption: i for i, caption in enumerate(unique)}
    return states[torch.tensor([row[c] for c in captions])]


def _shapes_ldm_data() -> dict[str, torch.Tensor]:
    """Scaled VAE posteriors of the training pictures and the CLIP states of their captions.

    Encoded once before training (the VAE and the text encoder are frozen): s * mu and s * sigma of
    q(z | x) with s the VAE's scaling factor, so a latent sample s * z = s * mu + s * sigma * eps
    costs nothing per step.
    """
    vae = _load_component("shapes-vae")
    images, captions = shapes_tensors("train")
    mean, std = encode_latents(vae, images)
    s = vae.config.scaling_factor
    return {"latent_mean": s * mean, "latent_std": s * std,
            "text_states": _shapes_text_states(tuple(captions), str(checkpoint_dir()))}


def null_text_states() -> torch.Tensor:
    """The tiny CLIP's states of the empty caption "", (1, L, D): the unconditional input."""
    return _shapes_text_states(("",), str(checkpoint_dir()))


def latent_diffusion_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator,
                          caption_dropout: float = SHAPES_LDM_CAPTION_DROPOUT) -> torch.Tensor:
    """The training loss of latent diffusion with caption dropout (the notes' training loop).

        z_0 = s * (mu(x) + sigma(x) * eps_z)              a sample of the scaled latent
        c   = "" with probability p_uncond, else the caption   (caption dropout)
        L   = E_{t, eps} || eps - eps_theta(z_t, t, tau(c)) ||^2

    :param batch: {"latent_mean": s * mu (B, 4, h, w), "latent_std": s * sigma, "text_states": tau(c) (B, L, D)}
    :param caption_dropout: p_uncond, the share of examples trained with the empty caption
    """
    mean, std, states = batch["latent_mean"], batch["latent_std"], batch["text_states"]
    z0 = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    # c <- "" with probability p_uncond
    drop = torch.rand(states.shape[0], generator=generator, device=states.device) < caption_dropout
    null = null_text_states().to(device=states.device, dtype=states.dtype)
    states = torch.where(drop[:, None, None], null, states)
    return diffusion_training_loss(model, z0, schedule, generator=generator, encoder_hidden_states=states)


def _shapes_ldm_unet() -> dict:
    """The mini-SD UNet: SD v1.x's block types on 8x8x4 latents, 8 -> 4 -> 2, cross-attention to D = 64.

    Sized for a 2-core CPU; measured on one busy thread at batch 64: (32, 64, 64) 0.57 s per
    step, (64, 64, 64) 1.0 s, (64, 128, 128) 1.8 s.
    """
    return UNetConfig(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=SHAPES_LDM_CHANNELS, layers_per_block=SHAPES_LDM_LAYERS, norm_num_groups=16,
        cross_attention_dim=64, attention_head_dim=4,
    ).to_dict()


SHAPES_LDM_CHANNELS = (32, 64, 64)
SHAPES_LDM_LAYERS = 1

_register(Recipe(
    name="shapes-ldm",
    description="latent diffusion UNet of the mini Stable Diffusion: shapes-vae latents, shapes-clip text, "
                "caption dropout (lesson 07)",
    network="UNet2DConditionModel",
    network_config=_shapes_ldm_unet,
    data=_shapes_ldm_data,
    loss=latent_diffusion_loss,
    loss_args={"caption_dropout": SHAPES_LDM_CAPTION_DROPOUT},
    schedule=SHAPES_LDM_SCHEDULE,
    steps=3000,
    batch_size=64,
    lr=1e-3,
    warmup_steps=100,
    seed=0,
    checkpoint_every=250,
))

def get_recipe(recipe: str | Recipe) -> Recipe:
    """A recipe by name (a key of RECIPES), or the Recipe itself."""
    if isinstance(recipe, Recipe):
        return recipe
    return RECIPES[check_choice(recipe, list(RECIPES), "recipe")]


# ---------------------------------------------------------------------------------------------
# Devices and per-step randomness
# ---------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA if present, else MPS if present, else CPU; check that a named device exists."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}.")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {name!r}. Expected 'auto', 'cpu', 'cuda' (or 'cuda:N') or 'mps'.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} asked for, but CUDA is not available here (torch {torch.__version__}). "
            f"Use device 'cpu' (or 'auto', which picks the best device present)."
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' asked for, but MPS is not available here. Use device 'cpu' or 'auto'.")
    return torch.device(name)


def _seed_for(*numbers: int) -> int:
    """A 64-bit seed that depends on all of ``numbers`` (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, dtype=np.uint64)[0])


def step_generators(seed: int, step: int, device: torch.device | str = "cpu") -> tuple[torch.Generator, torch.Generator]:
    """The two generators of training step ``step``, seeded by (seed, step) alone.

    :return: (index_generator on the CPU: which examples form the batch,
              generator on ``device``: everything the loss draws -- t, eps, label dropout)
    """
    index_generator = torch.Generator().manual_seed(_seed_for(seed, step, 0))
    generator = torch.Generator(device=torch.device(device)).manual_seed(_seed_for(seed, step, 1))
    return index_generator, generator


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------


def checkpoint_paths(path: str | os.PathLike) -> dict[str, Path]:
    """The four files of a checkpoint ``path`` (with or without the .safetensors suffix).

    :return: {"weights": X.safetensors, "config": X.json, "state": X.state.safetensors,
              "state_config": X.state.json}
    """
    path = Path(path)
    for suffix in (".safetensors", ".json"):
        if path.name.endswith(suffix):
            path = path.with_name(path.name[: -len(suffix)])
    return {
        "weights": path.with_name(path.name + ".safetensors"),
        "config": path.with_name(path.name + ".json"),
        "state": path.with_name(path.name + ".state.safetensors"),
        "state_config": path.with_name(path.name + ".state.json"),
    }


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o644)  # safetensors creates files readable by their owner only


def _write_json(data: dict, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, sort_keys=False)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())


def _atomic_write_pair(tensors: dict[str, torch.Tensor], tensors_path: Path, config: dict, config_path: Path) -> None:
    """Write tensors (safetensors) and config (JSON) so that a failure leaves the old files intact.

    Both files are first written in full to temporary names in the same folder, then renamed over
    the old ones; a rename within a folder is atomic, so each file is always either the old or the
    new one. The step is also stored inside the safetensors header (metadata), so a reader can tell
    if a crash came between the two renames.
    """
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = [_temporary_path(tensors_path), _temporary_path(config_path)]
    try:
        metadata = {"format": CHECKPOINT_FORMAT, "config": json.dumps(config)}
        _write_safetensors(tensors, temporary[0], metadata)
        _write_json(config, temporary[1])
        os.replace(temporary[0], tensors_path)
        os.replace(temporary[1], config_path)
    finally:
        for path in temporary:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _read_pair(tensors_path: Path, config_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    for path in (tensors_path, config_path):
        if not path.is_file():
            raise ValueError(f"Checkpoint file {path} does not exist. Check the path, or train the model first.")
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    with safe_open(str(tensors_path), framework="pt") as file:
        metadata = file.metadata() or {}
    tensors = load_file(str(tensors_path))
    if "config" in metadata:
        inner = json.loads(metadata["config"])
        if inner.get("step") != config.get("step"):
            raise ValueError(
                f"{tensors_path.name} was saved at step {inner.get('step')} but {config_path.name} says step "
                f"{config.get('step')}: a save was interrupted between the two files. Train again (or resume) "
                f"to write a consistent pair."
            )
    return tensors, config


def save_checkpoint(path: str | os.PathLike, model: nn.Module | dict[str, torch.Tensor], config: dict) -> Path:
    """Save weights as ``X.safetensors`` and ``config`` as ``X.json``, atomically.

    :param path: X, X.safetensors or X.json
    :param model: a network (its state_dict is saved) or a state_dict
    :param config: JSON-ready dict; to be loadable by ``load_course_model`` it holds "network"
        (a key of NETWORKS) and "network_config"
    :return: the path of the weights file
    """
    if isinstance(model, nn.Module):
        state_dict = model.state_dict()
    elif isinstance(model, dict):
        state_dict = model
    else:
        raise TypeError(f"model must be an nn.Module or a state_dict, got {type(model).__name__}.")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    paths = checkpoint_paths(path)
    _atomic_write_pair(tensors, paths["weights"], config, paths["config"])
    return paths["weights"]


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    :param path: X, X.safetensors or X.json
    :return: (state_dict on the CPU, config dict)
    """
    paths = checkpoint_paths(path)
    return _read_pair(paths["weights"], paths["config"])


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict -> (tensors for safetensors, the rest as JSON-ready data)."""
    tensors, other = {}, {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                other.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], data: dict) -> dict:
    """Inverse of :func:`_flatten_optimizer`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for param_id, values in data["state"].items():
        state.setdefault(int(param_id), {}).update(values)
    groups = [dict(group) for group in data["param_groups"]]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module  # the trained network, in eval mode
    losses: list[float]  # loss of every step since step 0 (resumed runs included)
    step: int  # steps done
    checkpoint: Path  # the weights file written last
    config: dict  # the JSON config written with it


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn Ctrl-C (SIGINT) into a request that the loop answers at the end of the current step.

    A KeyboardInterrupt raised in the middle of ``optimizer.step()`` could leave some weights
    updated and others not; the flag lets the step finish, then the loop saves and stops.
    Only possible in the main thread; elsewhere Ctrl-C raises KeyboardInterrupt as usual.
    """
    flag = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag["requested"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag["requested"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


@dataclass(frozen=True)
class _Processes:
    """This process's place in a run of several processes (torchrun); a plain run is rank 0 of 1."""

    rank: int = 0  # 0 .. world_size - 1; rank 0 logs, evaluates and writes the checkpoints
    world_size: int = 1

    def barrier(self) -> None:
        """Wait until every process has reached this line (a no-op for one process)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def mean_and_any(self, loss: torch.Tensor, flag: bool) -> tuple[float, bool]:
        """The loss averaged over the processes, and whether ``flag`` is set in any of them (one all_reduce)."""
        values = torch.tensor([loss.item(), float(flag)], dtype=torch.float64, device=loss.device)
        torch.distributed.all_reduce(values)  # the sum over the processes, the same on every one
        return values[0].item() / self.world_size, values[1].item() > 0


def _distributed_setup(device: torch.device) -> tuple[_Processes, torch.device]:
    """Join the run of several processes that torchrun started, if any.

    torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment of
    each process it starts. With WORLD_SIZE > 1, start the process group (gloo on the CPU, NCCL on
    CUDA GPUs, process r on GPU LOCAL_RANK), unless it is started already (by the caller, or by an
    earlier call of train() in this process). It is ended when the process exits, not at the end of
    train(): torchrun's processes cannot start a second group after destroying the first (the
    second start waits forever).

    :return: (this process's place in the run, the device it trains on)
    """
    distributed = torch.distributed
    started = distributed.is_available() and distributed.is_initialized()
    world_size = distributed.get_world_size() if started else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Processes(), device
    if not distributed.is_available():
        raise ValueError(f"WORLD_SIZE is {world_size} (several processes, as torchrun starts them), but this torch "
                         f"{torch.__version__} has no torch.distributed. Run a single process with plain python.")
    if device.type == "mps":
        raise ValueError("Training with several processes needs CPUs (gloo) or CUDA GPUs (NCCL), not MPS. "
                         "Run a single process on MPS, or use --device cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
    if not started:
        # init_process_group reads the torchrun variables
        if device.type == "cuda":
            torch.cuda.set_device(device)
            distributed.init_process_group("nccl", device_id=device)
        else:
            distributed.init_process_group("gloo")
        atexit.register(distributed.destroy_process_group)
    return _Processes(distributed.get_rank(), world_size), device


def _process_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The loss's generator of process ``rank`` at step ``step`` of a run of several: seeded by (seed, step, rank)."""
    return torch.Generator(device=device).manual_seed(_seed_for(seed, step, 1, rank))


class _RecipeLoss(nn.Module):
    """The recipe's loss as a module: ``_RecipeLoss(model, loss, args)(batch, schedule, generator)``.

    DistributedDataParallel averages, during ``backward()``, the gradients of what ran inside its
    own ``forward``. Not every loss calls ``model(...)``: the VAE's calls ``model.encode`` and
    ``model.decode``, CLIP's its two towers, the classifiers read ``model.config``. Wrapping the
    whole loss rather than the network lets every loss run unchanged on the plain network.
    """

    def __init__(self, model: nn.Module, loss: LossFn, loss_args: dict):
        super().__init__()
        self.model = model
        self.loss = loss
        self.loss_args = loss_args

    def forward(self, batch: dict, schedule: NoiseSchedule | None, generator: torch.Generator) -> torch.Tensor:
        return self.loss(self.model, batch, schedule, generator, **self.loss_args)


def train(
    recipe: str | Recipe,
    out: str | os.PathLike | None = None,
    steps: int | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train a recipe's model, saving checkpoints; the one training loop of the course.

    Each step k: draw batch_size examples (uniformly, with replacement) and the loss's noise from
    generators seeded by (seed, k); compute the recipe's loss; AdamW step with the learning rate
    of step k. Saves every ``checkpoint_every`` steps, at the end, and when interrupted (Ctrl-C
    finishes the current step, saves, then raises KeyboardInterrupt).

    **Several processes.** Started by ``torchrun --nproc_per_node=N`` (one process per CPU core or
    GPU), the same call trains with DistributedDataParallel: every process draws the same global
    batch of step k and takes its share, batch_size / N examples, with its own noise (a generator
    seeded by (seed, k, rank)); ``backward()`` averages the gradients over the processes, so every
    process takes the same AdamW step, that of the whole batch. The history holds the loss of the
    whole batch. Rank 0 alone shows the progress bar, evaluates and writes the checkpoints, while
    the others wait. Every process returns the same weights (the network itself, not a wrapper) and
    the JSON that rank 0 wrote; only rank 0's model went through the recipe's ``evaluate``. A run
    on N processes resumes exactly on N processes. Ctrl-C (torchrun passes it on to every process)
    stops all of them after the same step, and rank 0 saves; a process that fails ends the run
    without saving (torchrun stops the others; the last checkpoint stays).

    :param recipe: a key of RECIPES ("digits-ddpm") or a Recipe
    :param out: checkpoint path X (writes X.safetensors, X.json, X.state.*); a folder means
        folder/<recipe>; default: data/checkpoints/<recipe> (or $COURSE_CHECKPOINT_DIR/<recipe>)
    :param steps: total number of steps to reach (default: the recipe's)
    :param resume: continue from X.state.* (and X.safetensors) up to ``steps``
    :param device: "cpu", "cuda", "mps" or "auto" (under torchrun, "cuda" means process r's GPU LOCAL_RANK)
    :param progress: show a tqdm progress bar
    :param command: how this run was started, saved in the JSON (default: this Python call)
    :return: a :class:`TrainResult`
    """
    recipe = get_recipe(recipe)
    steps = recipe.steps if steps is None else check_int_range(steps, "steps", 1, hint="Train at least one step.")
    processes, device = _distributed_setup(resolve_device(device))
    if recipe.batch_size % processes.world_size != 0:
        raise ValueError(
            f"The batch of recipe {recipe.name!r} ({recipe.batch_size} examples) cannot be shared evenly among "
            f"{processes.world_size} processes. Use a number of processes that divides it (torchrun "
            f"--nproc_per_node), or a batch size that is a multiple of {processes.world_size} "
            f"(dataclasses.replace(recipe, batch_size=...))."
        )
    if out is None:
        out = checkpoint_dir() / recipe.name
    elif Path(out).is_dir():
        out = Path(out) / recipe.name
    paths = checkpoint_paths(out)
    command = command or f"course_lib.train.train({recipe.name!r}, steps={steps}, resume={resume})"
    schedule = make_schedule(**recipe.schedule) if recipe.schedule is not None else None
    data = recipe.data()
    num_examples = len(next(iter(data.values())))  # every column has one entry per example

    with torch.random.fork_rng(devices=[]):  # leave the caller's global random state alone
        # Initial weights from the seed alone, built on the CPU so every device starts the same.
        torch.manual_seed(recipe.seed)
        model = build_network(recipe.network, recipe.network_config_dict())
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.adam_betas,
                                  weight_decay=recipe.weight_decay)
    start, losses, train_time = 0, [], 0.0
    if resume:
        start, losses, train_time = _load_training_state(paths, recipe, model, optimizer)
    loss_fn = _RecipeLoss(model, recipe.loss, recipe.loss_args)
    if processes.world_size > 1:
        # DDP copies rank 0's weights to the others once, then averages the gradients in backward()
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn)

    def save(done: int) -> dict | None:
        config = None
        if processes.rank == 0:
            metrics = {}
            if recipe.evaluate is not None and done == steps:
                # before the config is written: an evaluation may also set part of the network's config
                # (the VAE's scaling factor is measured on the trained encoder's latents)
                model.eval()
                with torch.no_grad():
                    metrics = recipe.evaluate(model)
                model.train()
            config = _checkpoint_config(recipe, model, schedule, done, steps, command, train_time, losses, device)
            config["metrics"].update(metrics)
            if processes.world_size > 1:
                config["processes"] = processes.world_size
            save_checkpoint(paths["weights"], model, config)
            _save_training_state(paths, recipe, optimizer, done, losses, train_time)
            if recipe.companion_files is not None:
                recipe.companion_files(paths["weights"].parent)
        processes.barrier()  # the other processes wait until the files are written
        return config

    config = None
    done = start
    stop = False  # several processes: all of them agreed to stop after this step (Ctrl-C)
    bar = _progress_bar(recipe.name, start, steps, progress and processes.rank == 0)
    clock = time.perf_counter()
    try:
        with _deferred_interrupt() as interrupt:
            for step in range(start, steps):
                index_generator, generator = step_generators(recipe.seed, step, device)
                index = torch.randint(num_examples, (recipe.batch_size,), generator=index_generator)
                if processes.world_size > 1:
                    # every process draws the same batch and takes its share, with noise of its own
                    index = index.chunk(processes.world_size)[processes.rank]
                    generator = _process_generator(recipe.seed, step, processes.rank, device)
                batch = _make_batch(data, index, device)
                for group in optimizer.param_groups:
                    group["lr"] = recipe.learning_rate(step, steps)
                loss = loss_fn(batch, schedule, generator)
                if processes.world_size == 1:
                    value = loss.item()
                else:
                    # the loss of the whole batch, and whether Ctrl-C reached any process (all stop after this step)
                    value, stop = processes.mean_and_any(loss, interrupt["requested"])
                if not math.isfinite(value):
                    raise ValueError(
                        f"The loss of recipe {recipe.name!r} became {value} at step {step}. Lower the learning "
                        f"rate (lr={recipe.lr}) or check the data; the last checkpoint is unchanged."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                losses.append(value)
                done = step + 1
                bar.update(1)
                if done % 10 == 0 or done == steps:
                    bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}", refresh=False)
                if processes.world_size == 1:
                    stop = interrupt["requested"]
                if stop:
                    raise KeyboardInterrupt
                if done % recipe.checkpoint_every == 0 and done < steps:
                    train_time += time.perf_counter() - clock
                    clock = time.perf_counter()
                    save(done)
            train_time += time.perf_counter() - clock
            clock = time.perf_counter()
            if done > start or not paths["weights"].exists():
                config = save(done)
    except KeyboardInterrupt:
        if processes.world_size > 1 and not stop:
            raise  # not agreed by all processes (a second Ctrl-C): saving would wait for the others forever
        train_time += time.perf_counter() - clock
        bar.close()
        save(done)
        if processes.rank == 0:
            launcher = "python" if processes.world_size == 1 else f"torchrun --nproc_per_node={processes.world_size}"
            print(f"\nInterrupted: saved step {done} of {steps} to {paths['weights']}. Continue with resume=True "
                  f"({launcher} -m course_lib train {recipe.name} --resume).", file=sys.stderr)
        raise
    finally:
        bar.close()
    if config is None:  # nothing to do (already at `steps`), or rank 0 wrote it
        _, config = load_checkpoint(paths["weights"])
    model.eval()
    return TrainResult(model=model, losses=losses, step=done, checkpoint=paths["weights"], config=config)


def _make_batch(data: dict, index: torch.Tensor, device: torch.device) -> dict:
    """The examples ``index`` of every data column: tensors on ``device``, lists (captions) as lists."""
    batch = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            batch[key] = value[index].to(device)
        else:
            batch[key] = [value[i] for i in index.tolist()]
    return batch


def _progress_bar(name: str, start: int, steps: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc=name, unit="step", disable=not enabled, dynamic_ncols=True)


def _checkpoint_config(recipe: Recipe, model: nn.Module, schedule, done: int, steps: int, command: str,
                       train_time: float, losses: list[float], device: torch.device) -> dict:
    last = losses[-100:]
    return {
        "format": CHECKPOINT_FORMAT,
        "recipe": recipe.name,
        "description": recipe.description,
        "network": recipe.network,
        "network_config": _network_config_dict(model, recipe.network_config_dict()),
        "schedule": schedule.config if schedule is not None else None,
        "loss": getattr(recipe.loss, "__name__", repr(recipe.loss)),
        "loss_args": recipe.loss_args,
        "training": recipe.training_config(),
        "step": done,
        "steps": steps,
        "seed": recipe.seed,
        "command": command,
        "device": str(device),
        "train_time_s": round(train_time, 2),
        "metrics": {
            "loss_last_100_steps": (sum(last) / len(last)) if last else None,
            "num_parameters": sum(p.numel() for p in model.parameters()),
        },
        "versions": {"course_lib": __version__, "torch": torch.__version__},
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _save_training_state(paths: dict, recipe: Recipe, optimizer, done: int, losses: list[float],
                         train_time: float) -> None:
    tensors, optimizer_data = _flatten_optimizer(optimizer.state_dict())
    tensors["loss_history"] = torch.tensor(losses, dtype=torch.float64)
    state = {
        "format": CHECKPOINT_FORMAT + " training state",
        "recipe": recipe.name,
        "seed": recipe.seed,
        "step": done,
        "train_time_s": train_time,
        "optimizer": optimizer_data,
    }
    _atomic_write_pair(tensors, paths["state"], state, paths["state_config"])


def _load_training_state(paths: dict, recipe: Recipe, model: nn.Module, optimizer) -> tuple[int, list, float]:
    if not paths["state"].is_file():
        raise ValueError(
            f"Cannot resume: no training state at {paths['state']}. Train without resume (--resume) to start "
            f"from step 0, or point out/--out at the checkpoint you want to continue."
        )
    tensors, state = _read_pair(paths["state"], paths["state_config"])
    weights, config = load_checkpoint(paths["weights"])
    if state["recipe"] != recipe.name or state["seed"] != recipe.seed:
        raise ValueError(
            f"Cannot resume: {paths['state'].name} was written by recipe {state['recipe']!r} with seed "
            f"{state['seed']}, not {recipe.name!r} with seed {recipe.seed}. Use another --out path."
        )
    if config.get("step") != state["step"]:
        raise ValueError(
            f"Cannot resume: the weights are at step {config.get('step')} but the training state at step "
            f"{state['step']} (a save was interrupted). Train again without resume."
        )
    model.load_state_dict(weights)
    # (load_state_dict moves the moments to each parameter's device and dtype)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    losses = tensors["loss_history"].tolist()
    return state["step"], losses, float(state.get("train_time_s", 0.0))
