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

import contextlib
import dataclasses
import datetime
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
from .datasets import digits_tensors
from .diffusion import diffusion_training_loss, q_sample
from .nn.classifier import (ClassifierConfig, JudgeClassifier, JudgeConfig, NoisyClassifier, judge_loss,
                            noisy_classifier_loss)
from .nn.unet import UNet2DConditionModel, UNetConfig
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

# name -> (config class, network class). The config class needs from_dict / to_dict (or takes the
# dict as keyword arguments). Later lessons add their networks here (classifier, VAE, ...).
NETWORKS: dict[str, tuple[type, type]] = {
    "UNet2DConditionModel": (UNetConfig, UNet2DConditionModel),
    "NoisyClassifier": (ClassifierConfig, NoisyClassifier),
    "JudgeClassifier": (JudgeConfig, JudgeClassifier),
}


def build_network(name: str, config: dict) -> nn.Module:
    """Build a freshly initialised network from its registered name and its config as a dict."""
    check_choice(name, list(NETWORKS), "network")
    config_class, network_class = NETWORKS[name]
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    if hasattr(config_class, "from_dict"):
        return network_class(config_class.from_dict(config))
    return network_class(config_class(**config))


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
    network_config: dict  # the network's config as a JSON-ready dict
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
    """The small UNet of lessons 02-04: 16x16 -> 8x8 -> 4x4, no attention.

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
    description="class-conditional DDPM on the digits with label dropout p_uncond=0.1 (lesson 04)",
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
    description="noise-aware digit classifier p(y | x_t, t) for classifier guidance (lesson 03)",
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
    description="clean-digit classifier that only evaluates samples, never guides (lessons 03-04)",
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

    :param recipe: a key of RECIPES ("digits-ddpm") or a Recipe
    :param out: checkpoint path X (writes X.safetensors, X.json, X.state.*); a folder means
        folder/<recipe>; default: data/checkpoints/<recipe> (or $COURSE_CHECKPOINT_DIR/<recipe>)
    :param steps: total number of steps to reach (default: the recipe's)
    :param resume: continue from X.state.* (and X.safetensors) up to ``steps``
    :param device: "cpu", "cuda", "mps" or "auto"
    :param progress: show a tqdm progress bar
    :param command: how this run was started, saved in the JSON (default: this Python call)
    :return: a :class:`TrainResult`
    """
    recipe = get_recipe(recipe)
    steps = recipe.steps if steps is None else check_int_range(steps, "steps", 1, hint="Train at least one step.")
    device = resolve_device(device)
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
        model = build_network(recipe.network, recipe.network_config)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.adam_betas,
                                  weight_decay=recipe.weight_decay)
    start, losses, train_time = 0, [], 0.0
    if resume:
        start, losses, train_time = _load_training_state(paths, recipe, model, optimizer)

    def save(done: int) -> dict:
        config = _checkpoint_config(recipe, model, schedule, done, steps, command, train_time, losses, device)
        if recipe.evaluate is not None and done == steps:
            model.eval()
            with torch.no_grad():
                config["metrics"].update(recipe.evaluate(model))
            model.train()
        save_checkpoint(paths["weights"], model, config)
        _save_training_state(paths, recipe, optimizer, done, losses, train_time)
        return config

    config = None
    done = start
    bar = _progress_bar(recipe.name, start, steps, progress)
    clock = time.perf_counter()
    try:
        with _deferred_interrupt() as interrupt:
            for step in range(start, steps):
                index_generator, generator = step_generators(recipe.seed, step, device)
                index = torch.randint(num_examples, (recipe.batch_size,), generator=index_generator)
                batch = _make_batch(data, index, device)
                for group in optimizer.param_groups:
                    group["lr"] = recipe.learning_rate(step, steps)
                loss = recipe.loss(model, batch, schedule, generator, **recipe.loss_args)
                value = loss.item()
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
                if interrupt["requested"]:
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
        train_time += time.perf_counter() - clock
        bar.close()
        save(done)
        print(f"\nInterrupted: saved step {done} of {steps} to {paths['weights']}. "
              f"Continue with resume=True (python -m course_lib train {recipe.name} --resume).", file=sys.stderr)
        raise
    finally:
        bar.close()
    if config is None:  # nothing to do: already at `steps`
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
        "network_config": _network_config_dict(model, recipe.network_config),
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
