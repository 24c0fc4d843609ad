"""The course's networks by name, so that a checkpoint's JSON can say which class to build.

``NETWORKS`` maps the "network" entry of a checkpoint's JSON to a builder taking the
"network_config" dict; :func:`load_network` turns a checkpoint back into a network, checking the
weights against the network on the meta device first (no memory is allocated for a network that
the weights do not fit, whatever sizes an edited config asks for).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch
from torch import nn

from .checkpoints import CheckpointError, check_state_dict, checkpoint_dir, checkpoint_paths, load_checkpoint
from .checks import check_choice
from .lora import ADAPTER_NETWORK, AdaptedModel, AdaptedModelConfig
from .nn.classifier import ClassifierConfig, JudgeClassifier, JudgeConfig, NoisyClassifier
from .nn.text import build_tiny_clip, load_caption_tokenizer, text_encoder_from_clip
from .nn.unet import UNet2DConditionModel, UNetConfig
from .nn.vae import AutoencoderKL, VAEConfig

__all__ = ["NETWORKS", "build_network", "network_config_dict", "load_network"]


# name -> builder: a function config dict -> freshly initialised network
NETWORKS: dict[str, Callable[[dict], nn.Module]] = {
    "UNet2DConditionModel": lambda config: UNet2DConditionModel(UNetConfig.from_dict(config)),
    "NoisyClassifier": lambda config: NoisyClassifier(ClassifierConfig.from_dict(config)),
    "JudgeClassifier": lambda config: JudgeClassifier(JudgeConfig.from_dict(config)),
    "AutoencoderKL": lambda config: AutoencoderKL(VAEConfig.from_dict(config)),
    "CLIPModel": build_tiny_clip,  # transformers' CLIPModel, from its config dict
    ADAPTER_NETWORK: lambda config: _adapted_model(config),  # an adapter on frozen models of the checkpoint folder
}


def _adapted_model(config: dict) -> AdaptedModel:
    """An adapter in training (lora.AdaptedModel) on the frozen models its config names in the checkpoint folder.

    Not a fresh network: the UNet, the text encoder and the tokenizer are the trained ones of
    ``checkpoints.checkpoint_dir()`` (``$COURSE_CHECKPOINT_DIR``, default data/checkpoints), as the
    shapes-ldm recipe reads its frozen VAE and CLIP there; only the adapter starts fresh.
    """
    adapted = AdaptedModelConfig.from_dict(config)
    folder = checkpoint_dir()
    with torch.device("cpu"):  # the frozen models hold real weights, also inside load_network's meta-device skeleton
        unet = load_network(folder / adapted.base["unet"])[0]
        clip = load_network(folder / adapted.base["text_encoder"])[0]
        tokenizer = load_caption_tokenizer(folder / adapted.base["tokenizer"])
        vae = load_network(folder / adapted.base["vae"])[0] if adapted.adapter.decoder_rank is not None else None
        return AdaptedModel(unet, tokenizer, text_encoder_from_clip(clip), adapted, vae=vae)


def build_network(name: str, config: dict) -> nn.Module:
    """Build a freshly initialised network from its registered name and its config as a dict."""
    check_choice(name, list(NETWORKS), "network")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    return NETWORKS[name](config)


def network_config_dict(model: nn.Module) -> dict | None:
    """A network's config as a JSON-ready dict (None if it has no config object)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return None


def load_network(path: str | os.PathLike, device: str | torch.device | None = None,
                 fix: str | None = None) -> tuple[nn.Module, dict]:
    """A checkpoint as a network: build it from X.json, check the weights, load them strictly.

    :param path: the checkpoint X (X, X.safetensors or X.json)
    :param device: where to put the model (None: the CPU)
    :param fix: what to do about damaged or mismatched files, for the error messages
    :return: (model in eval mode, config from X.json)
    """
    state_dict, config = load_checkpoint(path, fix)
    paths = checkpoint_paths(path)
    for key in ("network", "network_config"):
        if key not in config:
            raise CheckpointError(paths["config"], f"has no {key!r} entry, so it does not say which network to build",
                                  fix or "save the checkpoint with course_lib's train or save_checkpoint")
    if config["network"] not in NETWORKS:
        raise CheckpointError(paths["config"], f"names the network {config['network']!r}, which course_lib does not "
                                               f"know (known: {', '.join(NETWORKS)})",
                              fix or "use a checkpoint written by course_lib")
    try:
        with torch.device("meta"):  # shapes and dtypes only: nothing allocated yet
            skeleton = build_network(config["network"], config["network_config"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(paths["config"], f"has a network_config that {config['network']} refuses ({error})",
                              fix or "use the JSON written with these weights") from None
    check_state_dict(skeleton, state_dict, paths["weights"], fix)
    model = build_network(config["network"], config["network_config"])
    model.load_state_dict(state_dict, strict=True)
    if device is not None:
        model.to(device)
    return model.eval(), config
