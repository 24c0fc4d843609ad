"""Tests of course_lib.checkpoints: one unit per save (fault injection at every file operation), the
lock, and loading that refuses damaged or mismatched files, naming the file and what to do."""

import io
import json
import os
import signal
import time

import pytest
import torch

from course_lib import checkpoints
from course_lib.checkpoints import (CheckpointError, TrainingState, check_state_dict, checkpoint_exists,
                                    checkpoint_paths, load_checkpoint, load_training_state, optimizer_from_tensors,
                                    optimizer_to_tensors, read_config, save_checkpoint, writing)

from _processes import exit_status, fork

CONFIG = {"network": "Linear", "network_config": {"width": 3}, "schedule": {"kind": "linear", "beta_end": 0.02},
          "step": 4, "description": "a test"}


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((3, 3), value), "bias": torch.full((3,), value)}


def _state(value: float) -> TrainingState:
    return TrainingState({"optimizer.0.exp_avg": torch.full((3,), value), "loss_history": torch.tensor([value])},
                         {"step": int(value), "recipe": "test"})


def _save(path, value: float, state: bool = True):
    config = dict(CONFIG, step=int(value))
    companions = {"tokenizer/vocab.txt": f"vocabulary {value}".encode()}
    return save_checkpoint(path, _weights(value), config, _state(value) if state else None, companions)


def _snapshot(path):
    """What a reader sees of checkpoint ``path``: (weights value, config step, state step) or None if nothing."""
    if not checkpoint_exists(path):
        return None
    tensors, config = load_checkpoint(path)
    state = load_training_state(path)
    assert tensors["weight"][0, 0].item() == config["step"] == state.info["step"]  # one unit, never a mix
    assert state.tensors["optimizer.0.exp_avg"][0].item() == config["step"]
    return config["step"]


def test_round_trip_of_every_file(tmp_path):
    written = _save(tmp_path / "m", 3.0)
    assert written == tmp_path / "m.safetensors"
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors", "m.state.json", "m.state.safetensors",
                                            "tokenizer"]  # no lock, journal or pending file left
    for path in (tmp_path / "m", tmp_path / "m.safetensors", tmp_path / "m.json"):
        tensors, config = load_checkpoint(path)
        assert torch.equal(tensors["weight"], torch.full((3, 3), 3.0)) and config == dict(CONFIG, step=3)
    assert json.loads((tmp_path / "m.json").read_text()) == dict(CONFIG, step=3)
    state = load_training_state(tmp_path / "m")
    assert state.info == {"step": 3, "recipe": "test"} and torch.equal(state.tensors["loss_history"], torch.tensor([3.0]))
    assert (tmp_path / "tokenizer" / "vocab.txt").read_bytes() == b"vocabulary 3.0"
    assert oct((tmp_path / "m.safetensors").stat().st_mode & 0o777) == "0o644"


def test_a_save_without_training_state_removes_the_old_one(tmp_path):
    _save(tmp_path / "m", 1.0)
    save_checkpoint(tmp_path / "m", _weights(2.0), dict(CONFIG, step=2))
    assert not checkpoint_paths(tmp_path / "m")["state"].exists()
    with pytest.raises(CheckpointError, match=r"m.state.safetensors: the training state does not exist — train without "
                                              r"--resume"):
        load_training_state(tmp_path / "m")


@pytest.mark.slow
def test_a_save_killed_at_any_file_operation_leaves_the_old_or_the_new_checkpoint(tmp_path):
    # a first save, then a second save killed at its 1st, 2nd, ... file operation, until one completes
    operations_seen = []
    for fault_at in range(1, 100):
        folder = tmp_path / str(fault_at)
        folder.mkdir()
        _save(folder / "m", 1.0)
        status = exit_status(fork(lambda: _save(folder / "m", 2.0), fault_at))
        seen = _snapshot(folder / "m")  # a reader, before any writer cleaned up
        if status == 0:
            break
        assert status == checkpoints.FAULT_EXIT_STATUS
        operations_seen.append(seen)
        with writing(folder / "m"):  # the next writer finishes or cleans up what the dead one left
            pass
        assert _snapshot(folder / "m") == seen  # and the reader still sees the same checkpoint
        leftovers = [name for name in os.listdir(folder) if name.startswith(".")]
        assert leftovers == [], leftovers
        assert (folder / "tokenizer" / "vocab.txt").read_bytes() == f"vocabulary {float(seen)}".encode()
    # 5 new files (weights, JSON, state pair, companion): each written then renamed to a pending name;
    # the journal written and renamed; 5 renames onto the targets; the journal deleted
    assert len(operations_seen) == 5 * 2 + 2 + 5 + 1
    assert operations_seen == [1] * 11 + [2] * 7  # old up to the journal's rename (the commit point), new after


def test_a_reader_sees_a_committed_save_before_its_renames(tmp_path):
    _save(tmp_path / "m", 1.0)
    # killed right after the journal's rename (operation 12): nothing renamed onto the targets yet
    assert exit_status(fork(lambda: _save(tmp_path / "m", 2.0), fault_at=12)) == checkpoints.FAULT_EXIT_STATUS
    assert json.loads((tmp_path / "m.json").read_text())["step"] == 1  # the old file on disk ...
    assert read_config(tmp_path / "m.json")["step"] == 2  # ... but readers see the committed one
    assert _snapshot(tmp_path / "m") == 2


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_process(tmp_path):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with writing(tmp_path / "m"):
                os.write(write_end, b"x")
                time.sleep(60)
        finally:
            os._exit(0)
    os.read(read_end, 1)
    try:
        with pytest.raises(CheckpointError, match=rf"m: another process \(pid {pid}\) is writing this checkpoint — "
                                                  r"wait until it ends or stop it"):
            _save(tmp_path / "m", 1.0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    _save(tmp_path / "m", 1.0)  # the kernel released the lock of the killed process
    assert _snapshot(tmp_path / "m") == 1


def test_a_full_disk_during_a_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path / "m", 1.0)
    writes = {"n": 0}
    real = checkpoints._write_and_count

    def fill_up(data):
        def write(temporary):
            writes["n"] += 1
            if writes["n"] == 3:
                temporary.write_bytes(data[: len(data) // 2])
                raise OSError(28, "No space left on device", str(temporary))
            real(data)(temporary)
        return write

    monkeypatch.setattr(checkpoints, "_write_and_count", fill_up)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path / "m", 2.0)
    monkeypatch.setattr(checkpoints, "_write_and_count", real)
    assert _snapshot(tmp_path / "m") == 1
    _save(tmp_path / "m", 3.0)  # the next save cleans the pending files of the failed one
    assert _snapshot(tmp_path / "m") == 3 and [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


# ------------------------------------------------------------------------------ refusals that name the file


@pytest.fixture
def saved(tmp_path):
    _save(tmp_path / "m", 1.0)
    return tmp_path / "m"


def test_missing_files(tmp_path, saved):
    with pytest.raises(CheckpointError, match=r"nothing.safetensors: the weights file does not exist — train it"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match=r"m.json: the checkpoint's JSON config does not exist"):
        load_checkpoint(saved)


@pytest.mark.parametrize("damage, what", [
    (lambda data: data[: len(data) // 2], "truncated"),
    (lambda data: data[:5], "five bytes"),
    (lambda data: b"", "empty"),
    (lambda data: b"\xff" * 64, "garbage"),
])
def test_truncated_or_corrupt_weights(saved, damage, what):
    weights = checkpoint_paths(saved)["weights"]
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=r"m.safetensors: is not a readable safetensors file \(.+\); it may be "
                                              r"truncated or corrupt — train it again") as error:
        load_checkpoint(saved)
    assert error.value.path == weights


@pytest.mark.parametrize("protocol", ["zip", 2, 4])
def test_a_pickle_renamed_safetensors_is_never_unpickled(saved, protocol):
    buffer = io.BytesIO()
    torch.save(_weights(1.0), buffer, **({} if protocol == "zip" else
                                         {"pickle_protocol": protocol, "_use_new_zipfile_serialization": False}))
    checkpoint_paths(saved)["weights"].write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match=r"m.safetensors: is a pickle \(torch.save\) file renamed .safetensors.*"
                                              r"— convert it where you trust its origin"):
        load_checkpoint(saved)


@pytest.mark.parametrize("text, message", [
    ('{"step": 1,', r"m.json: is not valid JSON \(Expecting property name enclosed in double quotes at line 1, "
                    r"column 12\) — train it again"),
    ("[1, 2]", r"m.json: holds a JSON list, expected an object"),
    ("null", r"m.json: holds a JSON null, expected an object"),
    (b"\xff\xfe{}", r"m.json: is not UTF-8 text"),
])
def test_invalid_json(saved, text, message):
    path = checkpoint_paths(saved)["config"]
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


def test_a_json_that_disagrees_with_the_weights_is_refused_naming_both_values(saved):
    path = checkpoint_paths(saved)["config"]
    edited = dict(CONFIG, step=1, schedule={"kind": "linear", "beta_end": 0.03})
    path.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"m.json: says schedule.beta_end = 0.03, but m.safetensors was saved "
                                              r"with schedule.beta_end = 0.02 — the JSON was edited"):
        load_checkpoint(saved)
    path.write_text(json.dumps(dict(CONFIG, step=1, network_config={"width": 4})))
    with pytest.raises(CheckpointError, match=r"says network_config.width = 4, but .* with network_config.width = 3"):
        load_checkpoint(saved)
    path.write_text(json.dumps(dict(CONFIG, step=1, description="renamed lesson")))  # not part of the model
    assert load_checkpoint(saved)[1]["description"] == "renamed lesson"


def test_weights_without_a_course_config_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(_weights(1.0), str(tmp_path / "raw.safetensors"))
    (tmp_path / "raw.json").write_text(json.dumps(CONFIG))
    with pytest.raises(CheckpointError, match=r"raw.safetensors: has no course_lib config in its metadata"):
        load_checkpoint(tmp_path / "raw")


def test_a_mismatched_training_state_is_refused(saved):
    checkpoint_paths(saved)["state_config"].write_text(json.dumps({"step": 7, "recipe": "test"}))
    with pytest.raises(CheckpointError, match=r"m.state.json: does not match m.state.safetensors — train without "
                                              r"--resume"):
        load_training_state(saved)


def test_a_damaged_shipped_checkpoint_says_how_to_restore_it():
    base = checkpoints.DEFAULT_CHECKPOINT_DIR / "digits-ddpm"
    assert "git checkout -- data/checkpoints/digits-ddpm.*" in checkpoints.repair_hint(base)
    assert checkpoints.repair_hint("/x/run", "digits-cfg") == ("train it again: python -m course_lib train digits-cfg "
                                                            "--out /x/run --overwrite")


# ------------------------------------------------------------------------------ check_state_dict


def test_check_state_dict_names_every_kind_of_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    good = model.state_dict()
    check_state_dict(model, good, "m.safetensors")
    bad = dict(good)
    del bad["0.bias"]
    bad["extra"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(3, 2)
    bad["1.weight"] = torch.ones(2, dtype=torch.int64)
    bad["1.num_batches_tracked"] = torch.tensor(0.0)
    with pytest.raises(CheckpointError) as error:
        check_state_dict(model, bad, "m.safetensors")
    assert str(error.value) == (
        "m.safetensors: the weights do not fit the network (1 keys missing from the file: 0.bias; "
        "1 unexpected keys in the file: extra; 1 keys with another shape: 0.weight (3, 2) in the file, (2, 3) in the "
        "network; 2 tensors of another dtype: 1.num_batches_tracked torch.float32 in the file, torch.int64 in the "
        "network, 1.weight torch.int64 in the file, torch.float32 in the network) — the weights and the config come "
        "from different runs: train the model again to write a matching pair")
    half = {key: value.half() if value.is_floating_point() else value for key, value in good.items()}
    with pytest.raises(CheckpointError, match="tensors of another dtype: 0.bias torch.float16 in the file"):
        check_state_dict(model, half, "sd", fix="use float32 weights")
    check_state_dict(model, half, "sd", cast_floats=True)  # float16 -> float32 allowed when asked
    with torch.device("meta"):
        skeleton = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    check_state_dict(skeleton, good, "m.safetensors")  # a network on the meta device: nothing allocated


@pytest.mark.slow
def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model(torch.randn(4, 3)).square().mean().backward()
    optimizer.step()
    tensors, data = optimizer_to_tensors(optimizer.state_dict())
    restored = optimizer_from_tensors(tensors, json.loads(json.dumps(data)))  # the non-tensor part is JSON
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for param_id, values in original["state"].items():
        for key, value in values.items():
            assert torch.equal(restored["state"][param_id][key], value)
