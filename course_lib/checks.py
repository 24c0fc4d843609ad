"""Argument checks shared by the whole library, and output paths checked before any work.

Every public function a learner can call with a wrong argument raises a ``ValueError`` (or a
``TypeError`` for a wrong type) whose message says three things: what was given, what was
expected, and what to do. These helpers keep those messages uniform.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .files import temporary_name

__all__ = [
    "check_choice",
    "check_finite",
    "check_shape",
    "check_floating",
    "check_timesteps",
    "check_int_range",
    "check_number",
    "check_labels",
    "check_config_keys",
    "PathError",
    "check_output_folder",
    "check_output_file",
]


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Unknown {what} {value!r}. Expected one of: {', '.join(repr(c) for c in choices)}. "
            f"Pick one of those names."
        )
    return value


def check_int_range(value, name: str, low: int, high: int | None = None, hint: str = "") -> int:
    """Check ``low <= value <= high`` (``high=None``: no upper bound) for an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}.")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}. {hint}".rstrip())
    return value


def check_number(value, name: str, minimum: float | None = None, hint: str = "") -> float:
    """Check a real number (and optionally ``value >= minimum``); return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value}. {hint}".rstrip())
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}. {hint}".rstrip())
    return value


def check_floating(x, name: str) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}. "
            f"Convert it with torch.as_tensor(...)."
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}. "
            f"Convert it with {name}.float()."
        )
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Check that a tensor has no NaN or infinity (a diverged model or a bad input)."""
    check_floating(x, name)
    if x.device.type == "meta":  # shapes only (counting FLOPs): there are no values to check
        return x
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} non-finite values (NaN or inf) out of {x.numel()}. "
            f"Check the input for NaNs, lower the learning rate, or use float32 instead of float16."
        )
    return x


def check_shape(x: torch.Tensor, name: str, expected: Iterable, hint: str = "") -> torch.Tensor:
    """Check a tensor's shape against ``expected``; ``None`` entries match any size.

    ``check_shape(x, "sample", (None, 1, 16, 16))`` accepts any batch of 1x16x16 images.
    """
    expected = tuple(expected)
    ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        shown = "(" + ", ".join("B" if e is None else str(e) for e in expected) + ")"
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, expected {shown}. {hint}".rstrip()
        )
    return x


def check_timesteps(t, num_train_timesteps: int, name: str = "t") -> torch.Tensor:
    """Check integer timesteps in [0, num_train_timesteps - 1]; return a LongTensor."""
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.tensor([t])
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an int or a LongTensor of timesteps, got {type(t).__name__}.")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(
                f"{name} must hold integer timesteps, got non-integer values such as {t.flatten()[0].item()}. "
                f"Use t.long() on integer timesteps."
            )
        t = t.long()
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_train_timesteps:
        raise ValueError(
            f"{name} out of range: got values from {lo} to {hi}, expected 0 <= {name} <= "
            f"{num_train_timesteps - 1} (the schedule has {num_train_timesteps} training timesteps). "
            f"Timesteps count from 0, so the last one is {num_train_timesteps - 1}."
        )
    return t


def check_labels(labels, num_classes: int | None, batch_size: int | None = None, name: str = "labels") -> torch.Tensor:
    """Check class labels: an integer tensor (B,) with values in [0, num_classes).

    :param labels: the labels y
    :param num_classes: K; ``None`` skips the range check
    :param batch_size: B the labels must match; ``None`` skips the check
    :return: ``labels`` as a LongTensor
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}. "
            f"Use torch.tensor([3, 1, 4])."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}. Use {name}.long()."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)}, expected (B,): one class index per image. "
            f"Flatten it with {name}.reshape(-1)."
        )
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} has {labels.shape[0]} entries but the batch has {batch_size} images. Give one label per image (x_T of shape (B, C, H, W) needs B labels)."
        )
    if num_classes is not None and labels.numel() > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes - 1}] ({num_classes} classes), got values from {low} to "
                f"{high}. Check that the labels belong to this dataset and that the model's num_classes is right."
            )
    return labels.long()


def check_config_keys(config: dict, known, what: str) -> None:
    """Refuse config keys that a network's config dataclass does not have (a typo, or another model's config).

    :param config: the dict given to ``XConfig.from_dict``
    :param known: the dataclass's field names
    :param what: the config's name in the message, e.g. "UNet"
    """
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown {what} config key(s) {unknown}. Known keys: {sorted(known)}. "
            f"Remove them, or check the spelling."
        )


# ---------------------------------------------------------------------------------------------
# Files: errors that name the path, and output paths checked before any work is done
# ---------------------------------------------------------------------------------------------


class PathError(ValueError):
    """A file or folder that cannot be used: ``str(error)`` is ``"<path>: <what is wrong> — <what to do>"``."""

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str):
        self.path = Path(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem} — {fix}" if path is not None else f"{problem} — {fix}")

    def __reduce__(self):  # picklable (sent between processes), with its three parts
        return type(self), (self.path, self.problem, self.fix)


def check_output_folder(folder: str | os.PathLike, create: bool = False) -> Path:
    """Check, in milliseconds, that files can be written into ``folder``: it exists (or, with
    ``create``, its parent does and it is made), is a folder, and a file can be created in it.

    :return: ``folder`` as a Path
    """
    folder = Path(folder)
    if create and not folder.exists() and folder.parent.is_dir():
        try:
            folder.mkdir(exist_ok=True)
        except OSError as error:
            raise PathError(folder, f"cannot be created ({error.strerror})",
                            "choose a folder you can write to") from None
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise PathError(folder, f"lies under {parent}, which is a file, not a folder", "choose another path")
        raise PathError(folder, "this folder does not exist", f"create it first (mkdir -p {folder}), or choose "
                                                              "another path")
    if not folder.is_dir():
        raise PathError(folder, "is a file, not a folder", "choose a folder, or another path")
    probe = temporary_name(folder / "write-test")  # removed by remove_stale_temporaries if we die here
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        raise PathError(folder, f"cannot be written ({error.strerror})",
                        "choose a folder you can write to, or change its permissions") from None
    return folder


def check_output_file(path: str | os.PathLike, suffixes: Sequence[str] | None = None) -> Path:
    """Check that ``path`` can be written as a file: its folder exists and is writable, it is not a
    folder itself, and (if given) its extension is one of ``suffixes`` (e.g. [".png", ".jpg"]).

    :return: ``path`` as a Path
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise PathError(path, f"unknown file type {path.suffix or '(no extension)'!r}",
                        f"end the name with one of {', '.join(suffixes)}")
    if path.is_dir():
        raise PathError(path, "is a folder, not a file", "give a file name inside it")
    check_output_folder(path.parent)
    return path
