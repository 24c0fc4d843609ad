"""The one training loop of the course: :func:`train` runs any recipe (course_lib.recipes).

Each step: draw a batch, compute the recipe's loss (course_lib.losses), take an AdamW step; save
a checkpoint (course_lib.checkpoints) now and then, at the end, and on Ctrl-C.

**Determinism and resume.** Every random draw of step k (the batch indices, and inside the loss
the timesteps t and the noise eps) comes from generators seeded by (seed, k) alone
(runtime.step_generators), not from a generator that has been running since step 0. Resuming
from a checkpoint at step k therefore restores everything step k needs -- the weights, the AdamW
moments and the step number -- and the run continues exactly as an uninterrupted one would (bit
for bit on the same machine).

**Nothing lost, nothing overwritten silently.** A checkpoint (weights, JSON, training state,
companion files) is saved as one unit: whenever the process dies, the previous complete
checkpoint or the new one is there, and ``resume=True`` continues from it. Without an ``out``,
training writes to runs/<recipe> (git-ignored), never into the shipped data/checkpoints/.
Training into a path that holds a checkpoint needs ``resume=True`` (continue it) or
``overwrite=True`` (start again; the old one stays until the first save replaces it). The output
folder is checked before any data is loaded.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .checkpoints import (CHECKPOINT_FORMAT, CheckpointError, TrainingState, checkpoint_exists, checkpoint_paths,
                          checkpoint_files, load_checkpoint, load_training_state, optimizer_from_tensors, optimizer_to_tensors,
                          runs_dir, save_checkpoint, writing)
from .checks import check_int_range, check_output_folder
from .losses import LossFn
from .networks import build_network, network_config_dict
from .recipes import Recipe, get_recipe
from .runtime import Processes, deferred_interrupt, distributed_setup, process_generator, resolve_device, step_generators
from .schedules import NoiseSchedule, make_schedule

__all__ = ["TrainResult", "train", "output_path"]


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module  # the trained network, in eval mode
    losses: list[float]  # loss of every step since step 0 (resumed runs included)
    step: int  # steps done
    checkpoint: Path  # the weights file written last
    config: dict  # the JSON config written with it


def output_path(recipe_name: str, out: str | os.PathLike | None = None) -> Path:
    """Where a run of ``recipe_name`` writes: X for X.safetensors, X.json, X.state.* .

    :param out: a path X (X.safetensors and X.json are accepted too), a folder (then folder/<recipe>),
        or None: runs/<recipe> of the repository ($COURSE_RUNS_DIR/<recipe>)
    """
    if out is None:
        return runs_dir() / recipe_name
    if Path(out).is_dir():
        return Path(out) / recipe_name
    return checkpoint_paths(out)["weights"].with_suffix("")


def _check_output(base: Path, resume: bool, overwrite: bool, default: bool) -> None:
    """Refuse at once what would fail or destroy work later: an unwritable folder, a checkpoint
    that would be replaced without ``overwrite``, a resume with nothing to resume."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: --resume continues the checkpoint, --overwrite "
                         "starts again in its place. Choose one.")
    check_output_folder(base.parent, create=default)
    paths = checkpoint_paths(base)
    if resume:
        if not checkpoint_files(base)["state"]:
            raise CheckpointError(paths["state"], "Cannot resume: no training state here" + (
                " (the checkpoint was saved without one)" if checkpoint_exists(base) else ""),
                "train without --resume to start from step 0 (with --overwrite where a checkpoint is), or point "
                "--out at the checkpoint you want to continue")
        return
    if checkpoint_exists(base) and not overwrite:
        raise CheckpointError(paths["weights"], "a checkpoint is here already, and training would replace it",
                              "continue it with --resume (resume=True), start again in its place with --overwrite "
                              "(overwrite=True), or write elsewhere with --out")


def _make_batch(data: dict, index: torch.Tensor, device: torch.device) -> dict:
    """The examples ``index`` of every data column: tensors on ``device``, lists (captions) as lists."""
    batch = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            batch[key] = value[index].to(device)
        else:
            batch[key] = [value[i] for i in index.tolist()]
    return batch


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


class _Run:
    """One training run: the model, its optimizer and data, what has been done; a step, a save."""

    def __init__(self, recipe: Recipe, base: Path, steps: int, device: torch.device, processes: Processes,
                 command: str):
        self.recipe, self.base, self.steps, self.device = recipe, base, steps, device
        self.processes, self.command = processes, command
        self.schedule = make_schedule(**recipe.schedule) if recipe.schedule is not None else None
        self.data = recipe.data()
        self.num_examples = len(next(iter(self.data.values())))  # every column has one entry per example
        with torch.random.fork_rng(devices=[]):  # leave the caller's global random state alone
            # Initial weights from the seed alone, built on the CPU so every device starts the same.
            torch.manual_seed(recipe.seed)
            self.model = build_network(recipe.network, recipe.network_config_dict())
        self.model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=recipe.lr, betas=recipe.adam_betas,
                                           weight_decay=recipe.weight_decay)
        self.loss_fn = _RecipeLoss(self.model, recipe.loss, recipe.loss_args)
        if processes.world_size > 1:
            # DDP copies rank 0's weights to the others once, then averages the gradients in backward()
            self.loss_fn = torch.nn.parallel.DistributedDataParallel(self.loss_fn)
        self.done, self.losses, self.train_time = 0, [], 0.0
        self.clock = time.perf_counter()  # training time is counted from here to each save
        self.updating = False  # inside optimizer.step(): weights and moments are half of step done + 1

    def resume(self) -> None:
        """Restore weights, AdamW moments, loss history and step from the checkpoint's training state."""
        state = load_training_state(self.base)
        weights, config = load_checkpoint(self.base)
        paths = checkpoint_paths(self.base)
        info = state.info
        if info.get("recipe") != self.recipe.name or info.get("seed") != self.recipe.seed:
            raise CheckpointError(paths["state"], f"Cannot resume: written by recipe {info.get('recipe')!r} with seed "
                                                  f"{info.get('seed')}, not {self.recipe.name!r} with seed "
                                                  f"{self.recipe.seed}", "use another --out path")
        if config.get("step") != info.get("step"):  # one unit: only a file copied by hand gets here
            raise CheckpointError(paths["state"], f"is at step {info.get('step')} but the weights at step "
                                                  f"{config.get('step')}", "train with --overwrite to start again")
        self.model.load_state_dict(weights)
        # (load_state_dict moves the moments to each parameter's device and dtype)
        self.optimizer.load_state_dict(optimizer_from_tensors(state.tensors, info["optimizer"]))
        self.losses = state.tensors["loss_history"].tolist()
        self.done, self.train_time = info["step"], float(info.get("train_time_s", 0.0))

    def step(self, step: int, interrupted: bool) -> bool:
        """Train step ``step``; return whether to stop after it (Ctrl-C, agreed by every process)."""
        recipe, processes = self.recipe, self.processes
        index_generator, generator = step_generators(recipe.seed, step, self.device)
        index = torch.randint(self.num_examples, (recipe.batch_size,), generator=index_generator)
        if processes.world_size > 1:
            # every process draws the same batch and takes its share, with noise of its own
            index = index.chunk(processes.world_size)[processes.rank]
            generator = process_generator(recipe.seed, step, processes.rank, self.device)
        batch = _make_batch(self.data, index, self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = recipe.learning_rate(step, self.steps)
        loss = self.loss_fn(batch, self.schedule, generator)
        stop = False
        if processes.world_size == 1:
            value = loss.item()
        else:  # the loss of the whole batch, and whether Ctrl-C reached any process (all stop after this step)
            value, stop = processes.mean_and_any(loss, interrupted)
        if not math.isfinite(value):
            raise ValueError(f"The loss of recipe {recipe.name!r} became {value} at step {step}. Lower the learning "
                             f"rate (lr={recipe.lr}) or check the data; the last checkpoint is unchanged.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), recipe.grad_clip)
        self.updating = True
        self.optimizer.step()
        self.losses.append(value)
        self.done = step + 1
        self.updating = False
        return stop

    def save(self) -> dict | None:
        """Rank 0 saves the checkpoint at step ``done`` (weights, JSON, training state, companions) as one unit."""
        self.train_time += time.perf_counter() - self.clock
        self.clock = time.perf_counter()
        config = None
        if self.processes.rank == 0:
            metrics = {}
            if self.recipe.evaluate is not None and self.done == self.steps:
                # before the config is written: an evaluation may also set part of the network's config
                # (the VAE's scaling factor is measured on the trained encoder's latents)
                self.model.eval()
                with torch.no_grad():
                    metrics = self.recipe.evaluate(self.model)
                self.model.train()
            config = self._config(metrics)
            tensors, optimizer_data = optimizer_to_tensors(self.optimizer.state_dict())
            tensors["loss_history"] = torch.tensor(self.losses, dtype=torch.float64)
            info = {"format": CHECKPOINT_FORMAT + " training state", "recipe": self.recipe.name,
                    "seed": self.recipe.seed, "step": self.done, "train_time_s": self.train_time,
                    "optimizer": optimizer_data}
            companions = self.recipe.companion_files() if self.recipe.companion_files is not None else None
            save_checkpoint(self.base, self.model, config, TrainingState(tensors, info), companions)
        self.processes.barrier()  # the other processes wait until the files are written
        return config

    def _config(self, metrics: dict) -> dict:
        recipe, last = self.recipe, self.losses[-100:]
        config = {
            "format": CHECKPOINT_FORMAT,
            "recipe": recipe.name,
            "description": recipe.description,
            "network": recipe.network,
            "network_config": network_config_dict(self.model) or recipe.network_config_dict(),
            "schedule": self.schedule.config if self.schedule is not None else None,
            "loss": getattr(recipe.loss, "__name__", repr(recipe.loss)),
            "loss_args": recipe.loss_args,
            "training": recipe.training_config(),
            "step": self.done,
            "steps": self.steps,
            "seed": recipe.seed,
            "command": self.command,
            "device": str(self.device),
            "train_time_s": round(self.train_time, 2),
            "metrics": {"loss_last_100_steps": (sum(last) / len(last)) if last else None,
                        "num_parameters": sum(p.numel() for p in self.model.parameters()), **metrics},
            "versions": {"course_lib": __version__, "torch": torch.__version__},
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if self.processes.world_size > 1:
            config["processes"] = self.processes.world_size
        return config


def _progress_bar(name: str, start: int, steps: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc=name, unit="step", disable=not enabled, dynamic_ncols=True)


def _fit(run: _Run, progress: bool) -> dict | None:
    """Steps ``run.done`` .. ``run.steps - 1``, saving every ``checkpoint_every`` steps, at the end and on Ctrl-C.

    :return: the config saved last by this process (None: nothing to save, or not rank 0)
    """
    start, steps, every = run.done, run.steps, run.recipe.checkpoint_every
    bar = _progress_bar(run.recipe.name, start, steps, progress and run.processes.rank == 0)
    run.clock = time.perf_counter()
    agreed = False  # every process agreed to stop after this step (Ctrl-C)
    try:
        with deferred_interrupt() as interrupt:
            try:
                for step in range(start, steps):
                    agreed = run.step(step, interrupt["requested"])
                    bar.update(1)
                    if run.done % 10 == 0 or run.done == steps:
                        bar.set_postfix(loss=f"{sum(run.losses[-10:]) / len(run.losses[-10:]):.4f}", refresh=False)
                    agreed = agreed or (run.processes.world_size == 1 and interrupt["requested"])
                    if agreed:
                        raise KeyboardInterrupt
                    if run.done % every == 0 and run.done < steps:
                        run.save()
                return run.save() if run.done > start or not checkpoint_exists(run.base) else None
            except KeyboardInterrupt:
                bar.close()
                if (run.processes.world_size > 1 and not agreed) or run.updating:
                    # not agreed by all processes (saving would wait for the others forever), or a second
                    # Ctrl-C inside optimizer.step() (the weights are half updated): the last checkpoint stays
                    _say_interrupted(run, saved=False)
                    raise
                run.save()  # a second Ctrl-C cuts it short: the checkpoint before it stays whole
                _say_interrupted(run, saved=True)
                raise
    finally:
        bar.close()


def _say_interrupted(run: _Run, saved: bool) -> None:
    if run.processes.rank != 0:
        return
    launcher = "python" if run.processes.world_size == 1 else f"torchrun --nproc_per_node={run.processes.world_size}"
    what = (f"saved step {run.done} of {run.steps} to {checkpoint_paths(run.base)['weights']}" if saved else
            f"stopped in the middle of step {run.done + 1} of {run.steps}, not saved; the last checkpoint stays")
    print(f"\nInterrupted: {what}. Continue with resume=True ({launcher} -m course_lib train {run.recipe.name} "
          f"--out {run.base} --resume).", file=sys.stderr)


def train(
    recipe: str | Recipe,
    out: str | os.PathLike | None = None,
    steps: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train a recipe's model, saving checkpoints; the one training loop of the course.

    Each step k: draw batch_size examples (uniformly, with replacement) and the loss's noise from
    generators seeded by (seed, k); compute the recipe's loss; AdamW step with the learning rate
    of step k. Saves every ``checkpoint_every`` steps, at the end, and when interrupted (Ctrl-C
    finishes the current step, saves, then raises KeyboardInterrupt; a second Ctrl-C stops at once,
    and the last complete checkpoint stays).

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
        folder/<recipe>; default: runs/<recipe> of the repository (or $COURSE_RUNS_DIR/<recipe>)
    :param steps: total number of steps to reach (default: the recipe's)
    :param resume: continue from the checkpoint at ``out`` up to ``steps``
    :param overwrite: start again where a checkpoint is (without it, that is refused)
    :param device: "cpu", "cuda", "mps" or "auto" (under torchrun, "cuda" means process r's GPU LOCAL_RANK)
    :param progress: show a tqdm progress bar
    :param command: how this run was started, saved in the JSON (default: this Python call)
    :return: a :class:`TrainResult`
    """
    recipe = get_recipe(recipe)
    steps = recipe.steps if steps is None else check_int_range(steps, "steps", 1, hint="Train at least one step.")
    base = output_path(recipe.name, out)
    _check_output(base, resume, overwrite, default=out is None)
    processes, device = distributed_setup(resolve_device(device))
    if recipe.batch_size % processes.world_size != 0:
        raise ValueError(
            f"The batch of recipe {recipe.name!r} ({recipe.batch_size} examples) cannot be shared evenly among "
            f"{processes.world_size} processes. Use a number of processes that divides it (torchrun "
            f"--nproc_per_node), or a batch size that is a multiple of {processes.world_size} "
            f"(dataclasses.replace(recipe, batch_size=...))."
        )
    command = command or f"course_lib.train.train({recipe.name!r}, steps={steps}, resume={resume})"
    # rank 0 writes, and holds the checkpoint's lock for the whole run (a second run into it is refused)
    with writing(base) if processes.rank == 0 else contextlib.nullcontext():
        run = _Run(recipe, base, steps, device, processes, command)
        if resume:
            run.resume()
        config = _fit(run, progress)
    if config is None:  # nothing to do (already at `steps`), or rank 0 wrote it
        _, config = load_checkpoint(base)
    run.model.eval()
    return TrainResult(model=run.model, losses=run.losses, step=run.done, checkpoint=checkpoint_paths(base)["weights"],
                       config=config)

