"""Checkpoints: the files of a trained model, saved as one unit and loaded with checks.

A checkpoint ``X`` is a few files in one folder; nothing in them is a pickle (safetensors files
cannot run code when loaded)::

    X.safetensors         the weights; its metadata holds the config as well
    X.json                the config, readable: network, network_config, schedule, step, recipe, ...
    X.state.safetensors   training state for --resume (AdamW moments, loss history); metadata: its info
    X.state.json          that info, readable
    (companion files)     what a model needs beside it, e.g. shapes-tokenizer/ beside shapes-clip

**One unit.** :func:`save_checkpoint` replaces all of them in one commit:

1. each new file is written in full under a pending name (``.X.pending-N``) and flushed to the disk;
2. a journal ``.X.commit`` lists the pending and final names and each new file's SHA-256; its
   atomic rename into place is the commit point;
3. the pending files are renamed onto the final names, then the journal is deleted.

A process that dies before step 2 leaves the previous checkpoint as it was (plus pending files,
deleted by the next writer). One that dies after step 2 leaves a committed journal: readers
already see the new files through it, and the next writer finishes the renames. So whatever
moment the process dies (SIGKILL, a second Ctrl-C, a full disk), a reader sees the previous
complete checkpoint or the new complete one. A writer holds ``.X.lock`` (``fcntl.flock``, which
the kernel releases when the process dies, even by SIGKILL) for as long as it writes; taking
the lock first finishes or cleans up what a dead writer left, and a second writer is refused.

**Loading checks.** :func:`load_checkpoint` refuses, naming the file and saying what to do: a
missing file, a truncated or corrupt safetensors file, a pickle renamed ``.safetensors``,
invalid JSON, and a JSON whose network, network config, schedule or step differs from the
config stored inside the weights file (an edited JSON would otherwise change every image
silently). :func:`check_state_dict` is the one report of weights that do not fit a network:
missing, unexpected, wrongly shaped keys, and tensors of another dtype (never cast silently).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checks import PathError
from .files import atomic_write, fsync_folder, remove_stale_temporaries

try:  # POSIX; elsewhere (Windows) a checkpoint has no lock and one writer at a time is assumed
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_CHECKPOINT_DIR",
    "DEFAULT_RUNS_DIR",
    "MUST_AGREE",
    "CheckpointError",
    "TrainingState",
    "checkpoint_dir",
    "runs_dir",
    "checkpoint_paths",
    "checkpoint_exists",
    "checkpoint_files",
    "repair_hint",
    "save_checkpoint",
    "load_checkpoint",
    "load_training_state",
    "read_config",
    "check_state_dict",
    "writing",
    "optimizer_to_tensors",
    "optimizer_from_tensors",
]

# data/checkpoints/ of the repository (course_lib/../data/checkpoints): the course's shipped models.
# $COURSE_CHECKPOINT_DIR points the loaders (load_course_model, the command line) at another folder.
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
# runs/ of the repository (git-ignored): where `train` writes unless told otherwise ($COURSE_RUNS_DIR).
DEFAULT_RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"
CHECKPOINT_FORMAT = "course_lib checkpoint v1"
COMMIT_FORMAT = "course_lib checkpoint commit v1"
# What the JSON and the config inside the weights file must agree on: everything that changes what
# the loaded model computes. (A description may be edited in the JSON alone.)
MUST_AGREE = ("network", "network_config", "schedule", "step")
MAX_JSON_BYTES = 16 * 2**20  # a course config is a few kB; refuse to parse a huge file
# fault injection for the tests: the process exits at the N-th file operation of its saves
FAULT_ENVIRONMENT_VARIABLE = "COURSE_CHECKPOINT_FAULT_AT"
FAULT_EXIT_STATUS = 86


def checkpoint_dir() -> Path:
    """The folder of the course's checkpoints: $COURSE_CHECKPOINT_DIR if set, else data/checkpoints."""
    return Path(os.environ.get("COURSE_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR)


def runs_dir() -> Path:
    """Where training writes by default: $COURSE_RUNS_DIR if set, else runs/ of the repository (git-ignored)."""
    return Path(os.environ.get("COURSE_RUNS_DIR") or DEFAULT_RUNS_DIR)


class CheckpointError(PathError):
    """A checkpoint file that cannot be used: ``str(error)`` is ``"<path>: <what is wrong> — <what to do>"``."""


@dataclass
class TrainingState:
    """What --resume needs beside the weights: tensors (AdamW moments, loss history) and JSON-ready info."""

    tensors: dict[str, torch.Tensor]
    info: dict


def checkpoint_paths(path: str | os.PathLike) -> dict[str, Path]:
    """The four files of a checkpoint ``path`` (X, X.safetensors or X.json).

    :return: {"weights": X.safetensors, "config": X.json, "state": X.state.safetensors,
              "state_config": X.state.json}
    """
    base = _base(path)
    return {
        "weights": base.with_name(base.name + ".safetensors"),
        "config": base.with_name(base.name + ".json"),
        "state": base.with_name(base.name + ".state.safetensors"),
        "state_config": base.with_name(base.name + ".state.json"),
    }


def _base(path: str | os.PathLike) -> Path:
    """X for X, X.safetensors, X.json (the name the checkpoint's files share)."""
    path = Path(path)
    for suffix in (".safetensors", ".json"):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def repair_hint(path: str | os.PathLike, recipe: str | None = None) -> str:
    """What to do about a damaged checkpoint: a shipped one comes back from git, another is trained again.

    :param recipe: the recipe that makes it, for the command (default: a placeholder RECIPE)
    """
    base = _base(path)
    if base.parent.resolve() == DEFAULT_CHECKPOINT_DIR:
        return (f"restore the shipped files with: git checkout -- data/checkpoints/{base.name}.* "
                f"(or retrain it, see data/checkpoints/README.md)")
    return f"train it again: python -m course_lib train {recipe or 'RECIPE'} --out {base} --overwrite"


# ---------------------------------------------------------------------------------------------
# Writing: one commit for all files of a checkpoint
# ---------------------------------------------------------------------------------------------

_operations = 0  # file operations of saves in this process (fault injection counts them)


def _file_operation_done() -> None:
    """Count one write or rename of a save; exit at once at the N-th if the fault-injection variable says N."""
    global _operations
    _operations += 1
    if os.environ.get(FAULT_ENVIRONMENT_VARIABLE) == str(_operations):
        os._exit(FAULT_EXIT_STATUS)  # as a SIGKILL would: no cleanup, no finally


def _journal_path(base: Path) -> Path:
    return base.with_name(f".{base.name}.commit")


def _pending_path(base: Path, index: int) -> Path:
    return base.with_name(f".{base.name}.pending-{index}")


def _lock_path(base: Path) -> Path:
    return base.with_name(f".{base.name}.lock")


_held_locks: dict[tuple[int, Path], list] = {}  # (pid, base) -> [descriptor, depth]: locks this process holds
# (keyed by pid too: a forked child inherits this dict, not the lock)


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """Hold the write lock of checkpoint ``path`` (re-entrant); on taking it, finish or clean what a dead writer left.

    Raises a :class:`CheckpointError` at once if another process holds it (two trainings into one path).
    """
    key = (os.getpid(), _base(path).absolute())
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield
        finally:
            _held_locks[key][1] -= 1
        return
    descriptor = _acquire_lock(key[1])
    _held_locks[key] = [descriptor, 1]
    try:
        _recover(key[1])
        yield
    finally:
        del _held_locks[key]
        _release_lock(key[1], descriptor)


def _acquire_lock(base: Path) -> int | None:
    if fcntl is None:  # pragma: no cover
        return None
    lock = _lock_path(base)
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise CheckpointError(base, f"another process (pid {owner}) is writing this checkpoint",
                                  "wait until it ends or stop it, or write to another path (--out)") from None
        # the holder before us may have deleted the file between our open and our lock: retry on the new one
        if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(descriptor).st_ino:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
            return descriptor
        os.close(descriptor)


def _release_lock(base: Path, descriptor: int | None) -> None:
    if descriptor is None:  # pragma: no cover
        return
    with contextlib.suppress(FileNotFoundError):
        _lock_path(base).unlink()  # while still holding it, so that nobody locks a deleted file
    os.close(descriptor)


def _recover(base: Path) -> None:
    """Under the lock: finish a committed save of a dead writer, delete uncommitted pending files."""
    journal = _read_journal(base)
    if journal is not None:
        _roll_forward(base, journal)
    for pending in base.parent.glob(f".{base.name}.pending-*"):
        pending.unlink()
    remove_stale_temporaries(base.parent)


def _read_journal(base: Path) -> dict | None:
    path = _journal_path(base)
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):  # no journal; or the "folder" is a file: no checkpoint
        return None
    except (OSError, ValueError) as error:  # it is written atomically: only outside damage gets here
        raise CheckpointError(path, f"the journal of a save is unreadable ({error})",
                              f"delete it; {_base(path).name} is then the checkpoint before that save") from None
    if not isinstance(journal, dict) or journal.get("format") != COMMIT_FORMAT:
        raise CheckpointError(path, "is not a course_lib commit journal", "delete it")
    return journal


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _roll_forward(base: Path, journal: dict) -> None:
    """Rename a committed save's pending files onto their targets, then delete the journal."""
    folder = base.parent
    for entry in journal["files"]:
        target = folder / entry["target"]
        if entry["pending"] is None:  # a file the new checkpoint no longer has
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
                _file_operation_done()
            continue
        pending = folder / entry["pending"]
        if pending.exists():
            os.replace(pending, target)
            _file_operation_done()
        elif not target.exists() or _sha256(target) != entry["sha256"]:
            raise CheckpointError(target, "a committed save's new file is missing (deleted by another program)",
                                  f"the checkpoint is incomplete: {repair_hint(base)}")
    for parent in {(folder / entry["target"]).parent for entry in journal["files"]}:
        fsync_folder(parent)
    _journal_path(base).unlink()
    fsync_folder(folder)
    _file_operation_done()


def _write_and_count(data: bytes):
    def write(temporary: Path) -> None:
        temporary.write_bytes(data)
        _file_operation_done()  # written, not yet flushed nor renamed

    return write


def _commit(base: Path, files: dict[Path, bytes | None]) -> None:
    """Replace ``files`` (path -> new content; None deletes it) as one unit; the caller holds the lock.

    An OSError before the commit point (a full disk) is raised again naming the checkpoint, saying
    that the previous one is intact.
    """
    folder = base.parent
    entries = []
    try:
        for index, (target, data) in enumerate(files.items()):
            relative = target.relative_to(folder).as_posix()
            if data is None:
                entries.append({"target": relative, "pending": None})
                continue
            target.parent.mkdir(exist_ok=True)  # a companion folder (shapes-tokenizer/)
            pending = _pending_path(base, index)
            atomic_write(pending, _write_and_count(data))
            _file_operation_done()
            entries.append({"target": relative, "pending": pending.name, "sha256": hashlib.sha256(data).hexdigest()})
        journal = json.dumps({"format": COMMIT_FORMAT, "files": entries}, indent=1) + "\n"
        atomic_write(_journal_path(base), _write_and_count(journal.encode()))  # the commit point
    except OSError as error:
        for entry in entries:  # what this save wrote so far (the next writer would delete it too)
            if entry["pending"] is not None:
                with contextlib.suppress(OSError):
                    (folder / entry["pending"]).unlink()
        raise OSError(error.errno, f"{error.strerror or error} while saving the checkpoint (the one before is "
                                   f"intact)", str(base.with_name(base.name + ".safetensors"))) from error
    _file_operation_done()
    _roll_forward(base, {"files": entries})


def _tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict) -> bytes:
    from safetensors.torch import save

    return save({key: value.detach().to("cpu").contiguous() for key, value in tensors.items()},
                metadata={"format": CHECKPOINT_FORMAT, **{key: json.dumps(value) for key, value in metadata.items()}})


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def save_checkpoint(path: str | os.PathLike, model: nn.Module | dict[str, torch.Tensor], config: dict,
                    training_state: TrainingState | None = None,
                    companion_files: dict[str, bytes] | None = None) -> Path:
    """Save weights, config, training state and companion files as one unit (see the module's docstring).

    Replaces a checkpoint already at ``path``; a previous training state is removed when none is given.

    :param path: X, X.safetensors or X.json; the folder must exist
    :param model: a network (its state_dict is saved) or a state_dict
    :param config: JSON-ready dict, saved as X.json and inside X.safetensors; to be loadable by
        ``load_course_model`` it holds "network" (a key of ``networks.NETWORKS``) and "network_config"
    :param training_state: for --resume: saved as X.state.safetensors + X.state.json
    :param companion_files: {path relative to the folder: bytes}, e.g. {"shapes-tokenizer/tokenizer.json": ...}
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
    paths = checkpoint_paths(path)
    folder = paths["weights"].parent
    if not folder.is_dir():
        raise CheckpointError(folder, "is not a folder", "create it first (mkdir -p), or choose another path")
    files: dict[Path, bytes | None] = {
        paths["weights"]: _tensors_bytes(state_dict, {"config": config}),
        paths["config"]: _json_bytes(config),
        paths["state"]: None,
        paths["state_config"]: None,
    }
    if training_state is not None:
        files[paths["state"]] = _tensors_bytes(training_state.tensors, {"state": training_state.info})
        files[paths["state_config"]] = _json_bytes(training_state.info)
    for relative, data in (companion_files or {}).items():
        target = (folder / relative).resolve()
        if folder.resolve() not in target.parents:
            raise ValueError(f"companion file {relative!r} is outside the checkpoint's folder {folder}.")
        files[folder / relative] = data
    with writing(paths["weights"]):
        _commit(_base(path), files)
    return paths["weights"]


# ---------------------------------------------------------------------------------------------
# Reading: through a committed journal, with checks that name the file
# ---------------------------------------------------------------------------------------------


def _visible(path: Path, base: Path) -> Path | None:
    """The file a reader opens for ``path`` of checkpoint ``base``: its pending copy while a committed
    save is not renamed yet; None if there is none."""
    for entry in (_read_journal(base) or {}).get("files", []):
        if base.parent / entry["target"] == path:
            if entry["pending"] is None:
                return None
            pending = base.parent / entry["pending"]
            if pending.exists():
                return pending
    return path if path.exists() else None


def checkpoint_files(path: str | os.PathLike) -> dict[str, bool]:
    """Which files of checkpoint ``path`` a reader sees: {"weights": bool, "config": ..., "state": ..., "state_config": ...}."""
    return {key: _visible(file, _base(path)) is not None for key, file in checkpoint_paths(path).items()}


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether any file of checkpoint ``path`` (weights, JSON or training state) is there for a reader."""
    return any(checkpoint_files(path).values())


def _read_bytes(path: Path, base: Path, what: str, fix: str, limit: int | None = None) -> bytes:
    for _ in range(3):  # a writer may rename the pending copy between _visible and open: look again
        visible = _visible(path, base)
        if visible is None:
            raise CheckpointError(path, f"{what} does not exist", fix)
        try:
            if limit is not None and visible.stat().st_size > limit:
                raise CheckpointError(path, f"is {visible.stat().st_size} bytes, too large for {what} "
                                            f"(at most {limit})", fix)
            return visible.read_bytes()
        except FileNotFoundError:
            continue
        except IsADirectoryError:
            raise CheckpointError(path, "is a folder, not a file", fix) from None
    raise CheckpointError(path, f"{what} keeps disappearing while being read", "stop the program writing it")


def read_config(path: str | os.PathLike, fix: str | None = None, base: Path | None = None) -> dict:
    """A checkpoint's JSON (X.json, or any JSON file) as a dict, with errors that name the file.

    :param base: the checkpoint the file belongs to (default: X for X.json)
    """
    path = Path(path)
    base = _base(path) if base is None else base
    fix = fix or repair_hint(base)
    data = _read_bytes(path, base, "the checkpoint's JSON config", fix, limit=MAX_JSON_BYTES)
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CheckpointError(path, f"is not UTF-8 text ({error.reason} at byte {error.start})", fix) from None
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})",
                              fix) from None
    if not isinstance(config, dict):
        kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(config), "null")
        raise CheckpointError(path, f"holds a JSON {kind}, expected an object {{...}}", fix)
    return config


def _read_tensors(path: Path, base: Path, fix: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file, refusing anything that is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = _read_bytes(path, base, what, fix)
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:4] == b"PK\x03\x04":
        raise CheckpointError(path, "is a pickle (torch.save) file renamed .safetensors; course_lib never unpickles "
                                    "a file, since loading a pickle can run any code",
                              "convert it where you trust its origin: safetensors.torch.save_file("
                              "torch.load(f, weights_only=True), 'X.safetensors'); or " + fix)
    try:
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_length]) if 8 + header_length <= len(data) else None
        tensors = load(data)
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(path, f"is not a readable safetensors file ({error}); it may be truncated or corrupt",
                              fix) from None
    metadata = (header or {}).get("__metadata__") or {}
    return tensors, metadata


def _first_difference(a, b, name: str) -> tuple[str, object, object] | None:
    """The first entry (as a dotted name) where two JSON values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{name}.{key}")
            if found:
                return found
        return None
    return None if a == b else (name, a, b)


def _shorten(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_checkpoint(path: str | os.PathLike, fix: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: (state_dict on the CPU, config from X.json).

    Refuses (:class:`CheckpointError`, naming the file) a missing, truncated or corrupt file, a
    pickle, invalid JSON, and a JSON that disagrees with the config stored in the weights file on
    any of ``MUST_AGREE``.

    :param path: X, X.safetensors or X.json
    :param fix: what to do about a damaged file, for the messages (default: :func:`repair_hint`)
    """
    paths, base = checkpoint_paths(path), _base(path)
    fix = fix or repair_hint(base)
    tensors, metadata = _read_tensors(paths["weights"], base, fix, "the weights file")
    config = read_config(paths["config"], fix, base)
    if "config" not in metadata:
        raise CheckpointError(paths["weights"], "has no course_lib config in its metadata, so nothing can check "
                                                f"that {paths['config'].name} describes these weights",
                              "save it with course_lib.checkpoints.save_checkpoint(path, model, config)")
    try:
        stored = json.loads(metadata["config"])
    except ValueError:
        raise CheckpointError(paths["weights"], "holds an unreadable config in its metadata", fix) from None
    for key in MUST_AGREE:
        difference = _first_difference(config.get(key), stored.get(key), key)
        if difference:
            name, in_json, in_weights = difference
            raise CheckpointError(
                paths["config"], f"says {name} = {_shorten(in_json)}, but {paths['weights'].name} was saved with "
                                 f"{name} = {_shorten(in_weights)}",
                f"the JSON was edited or belongs to another run; put back {name} = {_shorten(in_weights)} "
                f"(what the weights were trained with), or {fix}")
    return tensors, config


def load_training_state(path: str | os.PathLike) -> TrainingState:
    """Read the training state of checkpoint ``path`` (X.state.safetensors + X.state.json), checked alike."""
    paths = checkpoint_paths(path)
    fix = ("train without --resume into a new path, or with --overwrite to start again "
           "(the weights are intact; only --resume needs this file)")
    tensors, metadata = _read_tensors(paths["state"], _base(path), fix, "the training state")
    info = read_config(paths["state_config"], fix, _base(path))
    if "state" not in metadata or json.loads(metadata["state"]) != info:
        raise CheckpointError(paths["state_config"], f"does not match {paths['state'].name}", fix)
    return TrainingState(tensors, info)


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike,
                     fix: str | None = None, cast_floats: bool = False) -> None:
    """Raise a :class:`CheckpointError` naming every key where ``state_dict`` does not fit ``model``.

    The one check of every loader (course checkpoints, real SD weights): keys missing from the
    file, unexpected keys, keys with another shape, and tensors of another dtype (int64 weights are
    never cast silently into a float network). ``model`` may live on the meta device (a check
    before allocating anything).

    :param source: the file (or folder) the weights come from, named in the message
    :param fix: what to do, for the message (default: weights and config come from different runs)
    :param cast_floats: accept a floating dtype for another (float16 weights into a float32 network)
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    common = sorted(set(expected) & set(state_dict))
    wrong_shape = [f"{key} {tuple(state_dict[key].shape)} in the file, {tuple(expected[key].shape)} in the network"
                   for key in common if state_dict[key].shape != expected[key].shape]
    wrong_dtype = [f"{key} {state_dict[key].dtype} in the file, {expected[key].dtype} in the network"
                   for key in common if state_dict[key].dtype != expected[key].dtype
                   and not (cast_floats and state_dict[key].is_floating_point() and expected[key].is_floating_point())]
    if not (missing or unexpected or wrong_shape or wrong_dtype):
        return

    def show(keys):
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    parts = [f"{len(keys)} {what}: {show(keys)}" for keys, what in (
        (missing, "keys missing from the file"), (unexpected, "unexpected keys in the file"),
        (wrong_shape, "keys with another shape"), (wrong_dtype, "tensors of another dtype")) if keys]
    raise CheckpointError(source, f"the weights do not fit the network ({'; '.join(parts)})",
                          fix or "the weights and the config come from different runs: train the model again "
                                 "to write a matching pair")


# ---------------------------------------------------------------------------------------------
# The optimizer's state as safetensors tensors + JSON
# ---------------------------------------------------------------------------------------------


def optimizer_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict -> (tensors "optimizer.<param id>.<name>", the rest as JSON-ready data)."""
    tensors, other = {}, {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                other.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], data: dict) -> dict:
    """Inverse of :func:`optimizer_to_tensors`: an optimizer's state_dict."""
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
