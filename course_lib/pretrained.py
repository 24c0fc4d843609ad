"""The course's trained models, shipped in data/checkpoints/ so notebooks need not train them.

Each checkpoint NAME is made by ``python -m course_lib train NAME`` (the recipe of the same name,
course_lib.recipes): ``NAME.safetensors`` (the weights) and ``NAME.json`` (network class and
config, schedule, how it was trained). :func:`load_course_model` turns them back into a network::

    model, config = load_course_model("digits-ddpm")
    schedule = make_schedule(**config["schedule"])

The folder is data/checkpoints/ of the repository, or $COURSE_CHECKPOINT_DIR when that is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .checkpoints import DEFAULT_CHECKPOINT_DIR, CheckpointError, checkpoint_dir, checkpoint_files, repair_hint
from .networks import NETWORKS, load_network
from .recipes import RECIPES, SHAPES_TOKENIZER

__all__ = ["CHECKPOINT_DIR", "NETWORKS", "SHAPES_TOKENIZER", "load_course_model", "available_checkpoints",
           "checkpoint_dir", "train_command"]

CHECKPOINT_DIR = DEFAULT_CHECKPOINT_DIR  # data/checkpoints of the repository


def _folder(directory: str | os.PathLike | None) -> Path:
    return Path(directory) if directory is not None else checkpoint_dir()


def available_checkpoints(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the checkpoints present (both NAME.safetensors and NAME.json), sorted."""
    folder = _folder(directory)
    if not folder.is_dir():
        return []
    names = {path.name.split(".")[0] for path in folder.glob("*.safetensors")}
    names |= {path.name[1:].split(".")[0] for path in folder.glob(".*.commit")}  # saved, not yet renamed
    return sorted(name for name in names if name and all(
        checkpoint_files(folder / name)[key] for key in ("weights", "config")))


def train_command(name: str, folder: str | os.PathLike | None = None) -> str:
    """How to make checkpoint ``name`` in ``folder`` (default: the checkpoint folder), as a sentence."""
    if name not in RECIPES:
        return f"No recipe makes a checkpoint of that name; known recipes: {', '.join(sorted(RECIPES))}."
    out = Path(folder if folder is not None else checkpoint_dir()) / name
    return f"Make it with: python -m course_lib train {name} --out {out}"


def load_course_model(name: str, device: str | torch.device | None = None,
                      directory: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """Load a course checkpoint: build its network from NAME.json, load NAME.safetensors strictly.

    Every file problem (missing, truncated, a pickle, invalid JSON, a JSON that disagrees with the
    weights, weights that do not fit the network) raises a
    :class:`~course_lib.checkpoints.CheckpointError` that names the file and says what to do.

    :param name: checkpoint name, e.g. "digits-ddpm" (the recipe that made it)
    :param device: where to put the model (None: the CPU)
    :param directory: folder of the checkpoints (default: $COURSE_CHECKPOINT_DIR or data/checkpoints)
    :return: (model in eval mode, config dict from NAME.json: "network", "network_config",
        "schedule", "recipe", "step", "seed", "command", "metrics", ...)
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a checkpoint name such as 'digits-ddpm', got {name!r}.")
    folder = _folder(directory)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(folder, "is a file, not a folder of checkpoints",
                              "give the folder that holds NAME.safetensors and NAME.json")
    present = checkpoint_files(folder / name)
    missing = [f"{name}{suffix}" for key, suffix in (("weights", ".safetensors"), ("config", ".json"))
               if not present[key]]
    if missing:
        others = available_checkpoints(folder)
        raise CheckpointError(
            folder / name, f"checkpoint {name!r} not found: {' and '.join(missing)} missing in {folder}"
            + (f" (checkpoints present there: {', '.join(others)})" if others else ""), train_command(name, folder))
    return load_network(folder / name, device=device, fix=repair_hint(folder / name, name if name in RECIPES else None))

