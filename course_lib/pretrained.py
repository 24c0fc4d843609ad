"""The course's trained models, shipped in data/checkpoints/ so notebooks need not train them.

Each checkpoint NAME is two files made by ``python -m course_lib train NAME``:
``NAME.safetensors`` (the weights) and ``NAME.json`` (network class and config, schedule, how it
was trained). :func:`load_course_model` turns them back into a network::

    model, config = load_course_model("digits-ddpm")
    schedule = make_schedule(**config["schedule"])

The folder is data/checkpoints/ of the repository, or $COURSE_CHECKPOINT_DIR when that is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .checks import check_choice
from .train import DEFAULT_CHECKPOINT_DIR, NETWORKS, RECIPES, build_network, checkpoint_dir, load_checkpoint

__all__ = ["CHECKPOINT_DIR", "NETWORKS", "load_course_model", "available_checkpoints", "checkpoint_dir"]

CHECKPOINT_DIR = DEFAULT_CHECKPOINT_DIR  # data/checkpoints of the repository


def _folder(directory: str | os.PathLike | None) -> Path:
    return Path(directory) if directory is not None else checkpoint_dir()


def available_checkpoints(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the checkpoints present (both NAME.safetensors and NAME.json), sorted."""
    folder = _folder(directory)
    if not folder.is_dir():
        return []
    names = []
    for weights in folder.glob("*.safetensors"):
        name = weights.name[: -len(".safetensors")]
        if not name.endswith(".state") and (folder / f"{name}.json").is_file():
            names.append(name)
    return sorted(names)


def _train_command(name: str) -> str:
    if name in RECIPES:
        return f"Make it with: python -m course_lib train {name}"
    return f"No recipe makes a checkpoint of that name; known recipes: {', '.join(sorted(RECIPES))}."


def load_course_model(name: str, device: str | torch.device | None = None,
                      directory: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """Load a course checkpoint: build its network from NAME.json, load NAME.safetensors strictly.

    :param name: checkpoint name, e.g. "digits-ddpm" (the recipe that made it)
    :param device: where to put the model (None: the CPU)
    :param directory: folder of the checkpoints (default: $COURSE_CHECKPOINT_DIR or data/checkpoints)
    :return: (model in eval mode, config dict from NAME.json: "network", "network_config",
        "schedule", "recipe", "step", "seed", "command", "metrics", ...)
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a checkpoint name such as 'digits-ddpm', got {name!r}.")
    folder = _folder(directory)
    missing = [f"{name}{suffix}" for suffix in (".safetensors", ".json") if not (folder / f"{name}{suffix}").is_file()]
    if missing:
        present = available_checkpoints(folder)
        raise ValueError(
            f"Checkpoint {name!r} not found: {' and '.join(missing)} missing in {folder}. "
            + (f"Checkpoints present there: {', '.join(present)}. " if present else "")
            + _train_command(name)
        )
    state_dict, config = load_checkpoint(folder / name)
    for key in ("network", "network_config"):
        if key not in config:
            raise ValueError(f"{folder / name}.json has no {key!r} entry: it was not written by course_lib.train. "
                             f"{_train_command(name)}")
    check_choice(config["network"], list(NETWORKS), "network")
    model = build_network(config["network"], config["network_config"])
    _check_keys_match(model, state_dict, folder / f"{name}.safetensors")
    model.load_state_dict(state_dict, strict=True)
    if device is not None:
        model.to(device)
    return model.eval(), config


def _check_keys_match(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a ValueError naming the keys that differ between the built network and the weights."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{key} {tuple(state_dict[key].shape)} in the file, {tuple(expected[key].shape)} in the network"
        for key in set(expected) & set(state_dict) if state_dict[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        def show(keys):
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = [f"{len(keys)} {what}: {show(keys)}" for keys, what in (
            (missing, "keys missing from the file"), (unexpected, "unexpected keys in the file"),
            (wrong_shape, "keys with another shape")) if keys]
        raise ValueError(
            f"The weights in {path} do not match the network its JSON config describes ({'; '.join(parts)}). "
            f"The two files come from different runs: train the model again to write a matching pair."
        )
