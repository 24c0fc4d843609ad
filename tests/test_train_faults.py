"""Training that is killed, interrupted twice or runs out of disk, then resumed: it ends bit-identical to a
run that was never interrupted (weights, AdamW moments, loss history). Issue 12, item 1.

The killed runs are forked children of this process (no start-up cost), killed by SIGKILL or by the
fault-injection variable of course_lib.checkpoints, which exits at the N-th write or rename of a save.
"""

import errno
import functools
import os
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from course_lib import checkpoints
from course_lib.checkpoints import checkpoint_files, load_checkpoint, load_training_state
from course_lib.train import train

from _processes import exit_status, fork
from _tiny import TINY, assert_same_weights

pytestmark = pytest.mark.slow

# a save of TINY: 4 files (weights, JSON, state, state JSON), each written then renamed to its pending
# name (8), the journal written and renamed (2), 4 renames onto the targets, the journal deleted
OPERATIONS_PER_SAVE = 4 * 2 + 2 + 4 + 1


def _recipe(steps: int):
    return replace(TINY, steps=steps, checkpoint_every=1, warmup_steps=1)  # a save after every step


@functools.lru_cache(maxsize=None)
def _reference(steps: int) -> tuple[dict, dict, list]:
    """(weights, training-state tensors, losses) of an uninterrupted run."""
    with tempfile.TemporaryDirectory() as folder:
        result = train(_recipe(steps), out=Path(folder) / "reference", progress=False)
        return (load_checkpoint(Path(folder) / "reference")[0], load_training_state(Path(folder) / "reference").tensors,
                result.losses)


def _resume_and_compare(out: Path, steps: int) -> None:
    resume = checkpoint_files(out)["state"]  # nothing saved yet: start from step 0
    result = train(_recipe(steps), out=out, resume=resume, progress=False)
    weights, state, losses = _reference(steps)
    assert result.losses == losses and result.step == steps
    assert_same_weights(load_checkpoint(out)[0], weights)
    assert_same_weights(load_training_state(out).tensors, state)  # the AdamW moments and the loss history
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # nothing left behind


def _seen_step(out: Path) -> int | None:
    """The step a reader sees (weights, JSON and training state agree on it: one unit), or None."""
    if not checkpoint_files(out)["weights"]:
        return None
    config = load_checkpoint(out)[1]
    assert load_training_state(out).info["step"] == config["step"]
    return config["step"]


@pytest.fixture(scope="module")
def step_one(tmp_path_factory):
    """The checkpoint of step 1 of a 2-step run (weights, JSON, training state)."""
    folder = tmp_path_factory.mktemp("step-one")
    train(_recipe(2), out=folder / "run", steps=1, progress=False)
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.name.startswith("run.")}


def test_a_kill_at_every_write_and_rename_of_a_save_resumes_bit_identical(tmp_path, step_one):
    seen = []
    # a run resumed at step 1, killed at the 1st, 2nd, ... 15th file operation of its save of step 2
    for fault_at in range(1, OPERATIONS_PER_SAVE + 1):
        out = tmp_path / str(fault_at) / "run"
        out.parent.mkdir()
        for name, data in step_one.items():
            (out.parent / name).write_bytes(data)
        pid = fork(lambda: train(_recipe(2), out=out, resume=True, progress=False), fault_at)
        assert exit_status(pid) == checkpoints.FAULT_EXIT_STATUS
        seen.append(_seen_step(out))
        _resume_and_compare(out, 2)
    # the checkpoint of step 1 until the journal's rename (the commit point), that of step 2 after it
    assert seen == [1] * 9 + [2] * 6


def test_twenty_random_sigkills_during_a_run_that_saves_every_step(tmp_path):
    steps, kills, landed = 16, 0, {"before any save": 0, "mid-save": 0, "between saves": 0}
    out = tmp_path / "run"
    generator = random.Random(0)
    _reference(steps)  # (also: every lazy import done here, once, not again in each child)
    while kills < 20:
        resume = checkpoint_files(out)["state"]
        started_read, started_write = os.pipe()

        def run():
            def loss(model, batch, schedule, generator):  # says "training" once, at the first step
                os.write(started_write, b"x")
                return TINY.loss(model, batch, schedule, generator)

            loss.__name__ = TINY.loss.__name__
            train(replace(_recipe(steps), loss=loss), out=out, resume=resume, progress=False)

        pid = fork(run)
        os.close(started_write)  # (the child's copy stays open: the read below ends when it writes or exits)
        os.read(started_read, 1)  # the child reached its first step, or ended without one (a finished run)
        os.close(started_read)
        time.sleep(generator.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        status = exit_status(pid)
        if status == 0:  # it finished before the kill: start again from scratch to keep killing
            for path in tmp_path.iterdir():
                path.unlink()
            continue
        assert status == -signal.SIGKILL
        kills += 1
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
        landed["before any save" if _seen_step(out) is None else "mid-save" if leftovers else "between saves"] += 1
    print(f"\n{kills} SIGKILLs, where they landed: {landed}")
    _resume_and_compare(out, steps)


# the first write of the save, the journal's write (the last before the commit point), the journal's rename
# (the commit point), a rename onto a target, the journal's deletion (fault injection above tries every one)
@pytest.mark.parametrize("at_operation", [1, 9, 10, 12, 15])
def test_a_second_ctrl_c_during_the_save_leaves_a_checkpoint_that_resumes(tmp_path, monkeypatch, at_operation):
    steps = 4
    calls = {"steps": 0, "operations": None}

    def loss(model, batch, schedule, generator):
        calls["steps"] += 1
        if calls["steps"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: step 3 finishes, then the save starts
            calls["operations"] = 0
        return TINY.loss(model, batch, schedule, generator)

    real = checkpoints._file_operation_done

    def second_ctrl_c():
        real()
        if calls["operations"] is not None:
            calls["operations"] += 1
            if calls["operations"] == at_operation:
                os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, in the middle of the save
                time.sleep(0.05)  # its handler runs here, raising KeyboardInterrupt at this very operation

    monkeypatch.setattr(checkpoints, "_file_operation_done", second_ctrl_c)
    loss.__name__ = TINY.loss.__name__
    with pytest.raises(KeyboardInterrupt):
        train(replace(_recipe(steps), loss=loss), out=tmp_path / "run", progress=False)
    monkeypatch.setattr(checkpoints, "_file_operation_done", real)
    # the save of step 3 was cut short: before its commit point the checkpoint of step 2 is there, after it step 3
    assert _seen_step(tmp_path / "run") == (2 if at_operation <= 9 else 3)
    _resume_and_compare(tmp_path / "run", steps)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of 1 MiB (the test is root and may mount), else None: the disk will be simulated."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    yield folder if mounted else None
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_during_training_keeps_the_last_checkpoint_and_resumes(tmp_path, small_disk, monkeypatch):
    steps = 4
    if small_disk is not None:
        # room for the first save, not for the second (the new files are written beside the old ones)
        probe = tmp_path / "probe"
        train(_recipe(1), out=probe, progress=False)
        unit = sum(path.stat().st_size for path in tmp_path.iterdir() if path.name.startswith("probe."))
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        (small_disk / "filler").write_bytes(bytes(free - int(1.5 * unit)))
        out = small_disk / "run"
    else:  # a disk that fills up at the 7th file write of the run (in the second save)
        writes = {"n": 0}
        real = checkpoints._write_and_count

        def fill_up(data):
            def write(temporary):
                writes["n"] += 1
                if writes["n"] == 7:
                    raise OSError(errno.ENOSPC, "No space left on device", str(temporary))
                real(data)(temporary)
            return write

        monkeypatch.setattr(checkpoints, "_write_and_count", fill_up)
        out = tmp_path / "run"
    with pytest.raises(OSError, match="No space left on device while saving the checkpoint") as error:
        train(_recipe(steps), out=out, progress=False)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(out) + ".safetensors"
    assert _seen_step(out) == 1  # the first save is whole
    if small_disk is not None:
        (small_disk / "filler").unlink()  # space freed
    else:
        monkeypatch.setattr(checkpoints, "_write_and_count", real)
    _resume_and_compare(out, steps)
