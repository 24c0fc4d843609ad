"""Recipes: what to train for each of the course's models, as data.

A :class:`Recipe` says which network with which config, which data, which loss (course_lib.losses),
the optimizer's hyperparameters, the number of steps, the batch size and the seed. ``RECIPES``
holds the course's recipes by name, one per shipped checkpoint in data/checkpoints/; the one
training loop (course_lib.train.train) runs any of them, and ``python -m course_lib train NAME``
runs one from the command line.

The shapes recipes build on each other: ``shapes-ldm`` encodes its training pictures with the
``shapes-vae`` and its captions with the ``shapes-clip`` of the checkpoint folder
(``checkpoints.checkpoint_dir()``) before its first step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoints import CheckpointError, checkpoint_dir, checkpoint_paths
from .checks import check_choice
from .datasets import digits_tensors, shapes_attributes, shapes_tensors
from .diffusion import q_sample
from .lora import ADAPTER_NETWORK, AdaptedModelConfig, AdapterConfig, tokenizer_with_word
from .losses import (LossFn, adapter_latent_diffusion_loss, class_conditional_eps_loss, eps_prediction_loss,
                     judge_batch_loss, latent_diffusion_loss, noisy_classifier_batch_loss, shapes_clip_loss,
                     shapes_judge_loss, vae_loss)
from .metrics import clip_zero_shot_accuracy, psnr
from .networks import load_network
from .nn.classifier import SHAPES_JUDGE_HEADS, ClassifierConfig, JudgeConfig, split_attribute_logits
from .nn.text import (build_caption_tokenizer, encode_text, load_caption_tokenizer, save_caption_tokenizer,
                      tiny_clip_config, tokenize_prompts)
from .orange import (EXTENDED_JUDGE, EXTENDED_JUDGE_HEADS, ORANGE, ORANGE_SEEN_SHAPES, extended_judge_report,
                     orange_tensors)
from .nn.unet import UNetConfig
from .nn.vae import AutoencoderKL, VAEConfig
from .schedules import make_schedule

__all__ = [
    "Recipe",
    "RECIPES",
    "get_recipe",
    "DIGITS_SCHEDULE",
    "DIGITS_NULL_CLASS",
    "SHAPES_LDM_SCHEDULE",
    "SHAPES_TOKENIZER",
    "encode_latents",
    "latent_scaling_factor",
    "null_text_states",
]


@dataclass(frozen=True)
class Recipe:
    """How to train one of the course's models. Change one with ``dataclasses.replace``.

    >>> from dataclasses import replace
    >>> quick = replace(RECIPES["digits-ddpm"], steps=200, batch_size=32)
    """

    name: str  # the checkpoint's name too: data/checkpoints/<name>.safetensors
    description: str
    network: str  # a key of networks.NETWORKS
    # the network's config as a JSON-ready dict, or a function that makes it (for a config that needs
    # transformers, imported only when the recipe is used)
    network_config: dict | Callable[[], dict]
    data: Callable[[], dict[str, torch.Tensor]]  # -> full training set, e.g. {"images": (N, C, H, W)}
    # (model, batch, schedule, generator, **loss_args) -> scalar; batch: the data columns of this step's
    # examples on the training device; generator: seeded by (seed, step) -- draw ALL randomness from it
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
    # what the model needs beside its checkpoint (shapes-clip: the tokenizer), saved with it as one unit:
    # () -> {path relative to the checkpoint's folder: bytes}
    companion_files: Callable[[], dict[str, bytes]] | None = None

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


RECIPES: dict[str, Recipe] = {}


def _register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A recipe by name (a key of RECIPES), or the Recipe itself."""
    if isinstance(recipe, Recipe):
        return recipe
    return RECIPES[check_choice(recipe, list(RECIPES), "recipe")]


# ---------------------------------------------------------------------------------------------
# The digits (lessons 02-05): DDPM, classifier-free guidance, the noise-aware classifier, the judge
# ---------------------------------------------------------------------------------------------

DIGITS_SCHEDULE = {"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
DIGITS_NULL_CLASS = 10  # the 11th class embedding stands for "no label"


def _digits_train_data() -> dict[str, torch.Tensor]:
    images, labels = digits_tensors("train", size=16)
    return {"images": images, "labels": labels}


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

_register(Recipe(
    name="digits-noisy-classifier",
    description="noise-aware digit classifier p(y | x_t, t) for classifier guidance (lesson 04)",
    network="NoisyClassifier",
    network_config=ClassifierConfig().to_dict(),
    data=_digits_train_data,
    loss=noisy_classifier_batch_loss,
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
    loss=judge_batch_loss,
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
    images, captions = shapes_tensors("train")
    tokens = tokenize_prompts(build_caption_tokenizer(), captions)
    return {"images": images, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def _shapes_clip_config() -> dict:
    return tiny_clip_config(build_caption_tokenizer()).to_dict()


SHAPES_TOKENIZER = "shapes-tokenizer"  # folder of the caption tokenizer, beside the checkpoints


def _shapes_tokenizer_files() -> dict[str, bytes]:
    """The caption tokenizer the tiny CLIP was trained with: {"shapes-tokenizer/tokenizer.json": ..., ...}."""
    with tempfile.TemporaryDirectory() as folder:
        save_caption_tokenizer(build_caption_tokenizer(), folder)
        return {f"{SHAPES_TOKENIZER}/{path.name}": path.read_bytes() for path in sorted(Path(folder).iterdir())}


def _shapes_clip_evaluate(model) -> dict:
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
    companion_files=_shapes_tokenizer_files,
))


SHAPES_LDM_SCHEDULE = {"kind": "scaled_linear", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}
SHAPES_LDM_CAPTION_DROPOUT = 0.1  # p_uncond: share of captions replaced by the empty caption ""
SHAPES_LDM_CHANNELS = (32, 64, 64)
SHAPES_LDM_LAYERS = 1


def _frozen_component(name: str, folder: str) -> nn.Module:
    """A trained network of the checkpoint folder that shapes-ldm builds on (the VAE, the CLIP), frozen."""
    path = Path(folder) / name
    if not checkpoint_paths(path)["weights"].is_file():
        raise CheckpointError(checkpoint_paths(path)["weights"], f"not found: the recipe shapes-ldm builds on {name!r}",
                              f"make it first: python -m course_lib train {name} --out {path}")
    return load_network(path)[0].requires_grad_(False)


@functools.lru_cache(maxsize=2)
def _shapes_text_states(captions: tuple[str, ...], folder: str) -> torch.Tensor:
    """The frozen tiny CLIP's last_hidden_state for each caption, (N, L, D); computed once per caption."""
    clip = _frozen_component("shapes-clip", folder)
    unique = sorted(set(captions))
    # no attention mask, as SD v1.x (CLIP's causal attention: the words' states do not see the padding)
    ids = tokenize_prompts(build_caption_tokenizer(), unique)["input_ids"]
    with torch.no_grad():
        states = encode_text(clip, ids)
    row = {caption: i for i, caption in enumerate(unique)}
    return states[torch.tensor([row[c] for c in captions])]


def null_text_states() -> torch.Tensor:
    """The tiny CLIP's states of the empty caption "", (1, L, D): the unconditional input."""
    return _shapes_text_states(("",), str(checkpoint_dir()))


def _shapes_ldm_data() -> dict[str, torch.Tensor]:
    """Scaled VAE posteriors of the training pictures, the CLIP states of their captions and of "".

    Encoded once before training (the VAE and the text encoder are frozen): s * mu and s * sigma of
    q(z | x) with s the VAE's scaling factor, so a latent sample s * z = s * mu + s * sigma * eps
    costs nothing per step. The states of "" are one (1, L, D) tensor seen as (N, L, D) (no copies).
    """
    vae = _frozen_component("shapes-vae", str(checkpoint_dir()))
    images, captions = shapes_tensors("train")
    mean, std = encode_latents(vae, images)
    s = vae.config.scaling_factor
    return {"latent_mean": s * mean, "latent_std": s * std,
            "text_states": _shapes_text_states(tuple(captions), str(checkpoint_dir())),
            "null_text_states": null_text_states().expand(len(captions), -1, -1)}


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


# ---------------------------------------------------------------------------------------------
# Lesson 11: a seventh colour. The 7-colour judge, and the adapter that teaches the mini-SD "orange"
# ---------------------------------------------------------------------------------------------

ORANGE_JUDGE_IMAGES = 1800  # orange circles, squares and triangles added to the 10,000 of "all"


def _shapes_judge7_data() -> dict[str, torch.Tensor]:
    """The six-colour "all" split (held-out pairs included) plus 1,800 orange pictures of all three
    shapes (seed 0): the judge may see orange triangles, only the model under test must not.

    :return: {"images": (11800, 3, 64, 64), "shape", "color", "size", "position": (11800,) ids}
    """
    images, _ = shapes_tensors("all")
    attributes = shapes_attributes("all")  # colour ids 0..5 are the same in the extended attributes
    orange, _, orange_attributes = orange_tensors(ORANGE_JUDGE_IMAGES, seed=0, shapes=("circle", "square", "triangle"))
    return {"images": torch.cat([images, orange]),
            **{name: torch.cat([attributes[name], orange_attributes[name]]) for name in EXTENDED_JUDGE_HEADS}}


def _shapes_judge7_accuracy(model) -> dict:
    """Accuracy per attribute on pictures the judge never saw: the six-colour test and held-out
    splits (1,000 each), and 900 orange pictures of every shape from another seed (1)."""
    sets = {split: (shapes_tensors(split)[0], shapes_attributes(split)) for split in ("test", "heldout")}
    orange, _, orange_attributes = orange_tensors(900, seed=1, shapes=("circle", "square", "triangle"))
    sets["orange"] = (orange, orange_attributes)
    return {f"{name}_accuracy": extended_judge_report(model, images, truth, with_interval=False)
            for name, (images, truth) in sets.items()}


_register(dataclasses.replace(
    RECIPES["shapes-judge"],
    name=EXTENDED_JUDGE,
    description="the shapes judge with a seventh colour, orange (17 logits); grades lesson 11, never guides",
    network_config=dict(RECIPES["shapes-judge"].network_config_dict(), num_classes=sum(EXTENDED_JUDGE_HEADS.values())),
    data=_shapes_judge7_data,
    loss=shapes_judge_loss,
    loss_args={"heads": dict(EXTENDED_JUDGE_HEADS)},
    evaluate=_shapes_judge7_accuracy,
))


SHAPES_LORA_BASE = {"unet": "shapes-ldm", "text_encoder": "shapes-clip", "vae": "shapes-vae",
                    "tokenizer": SHAPES_TOKENIZER}
ORANGE_TRAIN_IMAGES = 600  # orange circles and squares (seed 0)
REPLAY_IMAGES = 600  # six-colour training pictures beside them (replay): half of each batch, on average


def _orange_lora_data() -> dict[str, torch.Tensor]:
    """Orange circles and squares with their captions, beside as many six-colour training pictures.

    The pictures (for the decoder's LoRA), the frozen VAE's posteriors (scaled, as shapes-ldm's
    data) and the captions' token ids with the new word (the text states are computed at every
    step: the word's row is trained). The six colours are replayed so that the adapter does not
    make the model forget them, in the UNet and in the decoder.
    """
    folder = checkpoint_dir()
    vae = _frozen_component(SHAPES_LORA_BASE["vae"], str(folder))
    tokenizer, _ = tokenizer_with_word(load_caption_tokenizer(folder / SHAPES_LORA_BASE["tokenizer"]), ORANGE)
    orange, orange_captions, _ = orange_tensors(ORANGE_TRAIN_IMAGES, seed=0, shapes=ORANGE_SEEN_SHAPES)
    replay, replay_captions = shapes_tensors("train", num_images=REPLAY_IMAGES, seed=0)
    images = torch.cat([orange, replay])
    with torch.no_grad():
        mean, std = encode_latents(vae, images)
    s = vae.config.scaling_factor
    ids = tokenize_prompts(tokenizer, orange_captions + replay_captions)["input_ids"]
    null_ids = tokenize_prompts(tokenizer, [""])["input_ids"]
    return {"images": images, "latent_mean": s * mean, "latent_std": s * std, "input_ids": ids,
            "null_input_ids": null_ids.expand(len(ids), -1)}


_register(Recipe(
    name=f"shapes-lora-{ORANGE}",
    description="LoRA adapter (rank 4, attention projections of the mini-SD UNet; rank 8, the VAE decoder's "
                "convolutions) and the new word 'orange' (textual inversion) on the frozen mini-SD (lesson 11)",
    network=ADAPTER_NETWORK,
    network_config=AdaptedModelConfig(adapter=AdapterConfig(rank=4, alpha=4.0, token=ORANGE, decoder_rank=8),
                                      base=SHAPES_LORA_BASE, token_scale=8.0).to_dict(),
    data=_orange_lora_data,
    loss=adapter_latent_diffusion_loss,
    loss_args={"caption_dropout": SHAPES_LDM_CAPTION_DROPOUT, "decoder_batch": 8},
    schedule=SHAPES_LDM_SCHEDULE,
    steps=800,
    batch_size=64,
    lr=1e-3,
    warmup_steps=0,
    seed=0,
    checkpoint_every=200,
))
