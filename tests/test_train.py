"""Tests of course_lib.train: the loop, resume bit for bit, no silent overwrite, output checked first,
interrupts. (The checkpoint format: test_checkpoints.py; kills and faults during training: test_train_faults.py.)"""

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import replace

import pytest
import torch

from course_lib import train as train_module
from course_lib.checkpoints import DEFAULT_RUNS_DIR, CheckpointError, checkpoint_paths, load_checkpoint, load_training_state, writing
from course_lib.checks import PathError
from course_lib.losses import class_conditional_eps_loss, eps_prediction_loss
from course_lib.networks import build_network
from course_lib.recipes import RECIPES, get_recipe
from course_lib.runtime import resolve_device, step_generators
from course_lib.schedules import make_schedule
from course_lib.train import train

from _processes import call_in_child
from _tiny import TINY, TINY_UNET, assert_same_weights

def _state(path):
    return load_checkpoint(path)[0]


@pytest.mark.slow
def test_resume_is_bit_for_bit(tmp_path):
    full = train(TINY, out=tmp_path / "full", progress=False)
    train(TINY, out=tmp_path / "split", steps=3, progress=False)
    assert load_checkpoint(tmp_path / "split")[1]["step"] == 3
    resumed = train(TINY, out=tmp_path / "split", resume=True, progress=False)
    assert resumed.step == full.step == 6
    assert resumed.losses == full.losses  # the history includes the steps before the resume
    assert_same_weights(_state(tmp_path / "full"), _state(tmp_path / "split"))
    full_state = load_training_state(tmp_path / "full").tensors
    split_state = load_training_state(tmp_path / "split").tensors
    assert_same_weights(full_state, split_state)  # AdamW moments too


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_the_config(tmp_path):
    result = train(replace(TINY, steps=40, checkpoint_every=100), out=tmp_path / "run", progress=False,
                   command="python -m course_lib train tiny-ddpm")
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    config = json.loads((tmp_path / "run.json").read_text())
    assert config["recipe"] == "tiny-ddpm" and config["step"] == 40 and config["seed"] == 7
    assert config["network"] == "UNet2DConditionModel" and config["network_config"] == TINY_UNET
    assert config["schedule"] == make_schedule(**TINY.schedule).config
    assert config["command"] == "python -m course_lib train tiny-ddpm"
    assert config["train_time_s"] >= 0 and config["metrics"]["loss_last_100_steps"] == pytest.approx(
        sum(result.losses) / 40)
    assert not result.model.training
    model = build_network(config["network"], config["network_config"])
    model.load_state_dict(_state(tmp_path / "run"))  # strict: the config rebuilds this network


def test_periodic_checkpoints_and_resume_past_the_end(tmp_path):
    seen_steps = []
    original = train_module.save_checkpoint

    def spy(path, model, config, *args):
        seen_steps.append(config["step"])
        return original(path, model, config, *args)

    train_module.save_checkpoint = spy
    try:
        train(replace(TINY, steps=5), out=tmp_path / "run", progress=False)
        again = train(replace(TINY, steps=5), out=tmp_path / "run", resume=True, progress=False)
    finally:
        train_module.save_checkpoint = original
    assert seen_steps == [2, 4, 5]  # every checkpoint_every=2 steps and at the end; resume at 5: nothing
    assert again.step == 5 and len(again.losses) == 5 and again.config["step"] == 5


def test_global_random_state_untouched(tmp_path):
    before = torch.random.get_rng_state()
    train(replace(TINY, steps=1), out=tmp_path / "run", progress=False)
    assert torch.equal(before, torch.random.get_rng_state())


def test_step_generators_depend_on_seed_and_step_only():
    draw = lambda g: torch.randn(5, generator=g)
    a_index, a = step_generators(0, 10)
    b_index, b = step_generators(0, 10)
    assert torch.equal(draw(a), draw(b)) and torch.equal(draw(a_index), draw(b_index))
    assert not torch.equal(draw(step_generators(0, 11)[1]), draw(step_generators(0, 10)[1]))
    assert not torch.equal(draw(step_generators(1, 10)[1]), draw(step_generators(0, 10)[1]))
    index_generator, generator = step_generators(0, 10)
    assert not torch.equal(draw(index_generator), draw(generator))  # two independent streams


def test_learning_rate_warmup_formula():
    recipe = replace(TINY, lr=1e-3, warmup_steps=4, lr_decay="constant")
    # lr_k = lr * min(1, (k + 1) / warmup_steps)
    assert [recipe.learning_rate(k) for k in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert replace(TINY, warmup_steps=0, lr_decay="constant").learning_rate(0) == TINY.lr


def test_learning_rate_cosine_formula():
    recipe = replace(TINY, lr=1e-3, warmup_steps=10, lr_decay="cosine")
    total = 110
    # after warmup: lr * (1 + cos(pi * (k - warmup) / (total - warmup))) / 2
    assert recipe.learning_rate(9, total) == pytest.approx(1e-3)
    assert recipe.learning_rate(10, total) == pytest.approx(1e-3)
    assert recipe.learning_rate(60, total) == pytest.approx(0.5e-3)
    assert recipe.learning_rate(110, total) == pytest.approx(0.0, abs=1e-12)
    values = [recipe.learning_rate(k, total) for k in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:])), "cosine decay must not increase"


def test_label_dropout_rate():
    seen = {}

    def fake_model(x, t, class_labels=None):
        seen["labels"] = class_labels
        return torch.zeros_like(x)

    labels = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    batch = {"images": torch.zeros(4000, 1, 4, 4), "labels": labels}
    class_conditional_eps_loss(fake_model, batch, make_schedule("linear", 10), torch.Generator().manual_seed(1),
                               label_dropout=0.25, null_class=10)
    dropped = seen["labels"] == 10
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(seen["labels"][~dropped], labels[~dropped]), "kept labels must be unchanged"


# ------------------------------------------------------------------------------ interrupts


def _interrupting_recipe(at_call, how):
    calls = {"n": 0}

    def loss(model, batch, schedule, generator):
        value = eps_prediction_loss(model, batch, schedule, generator)
        if calls["n"] == at_call:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the step finishes, then the loop stops
            else:
                raise KeyboardInterrupt  # raised in the middle of the step: that step is dropped
        calls["n"] += 1
        return value

    loss.__name__ = "eps_prediction_loss"
    return replace(TINY, loss=loss)


@pytest.mark.slow
@pytest.mark.parametrize("how, saved_step", [("signal", 3), ("raise", 2)])
def test_interrupt_saves_a_checkpoint_that_resumes_exactly(tmp_path, how, saved_step):
    # the handler before: Python's default, or SIG_IGN when the tests run in the background (nohup, &)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(_interrupting_recipe(2, how), out=tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run")[1]["step"] == saved_step
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    resumed = train(TINY, out=tmp_path / "run", resume=True, progress=False)
    full = train(TINY, out=tmp_path / "full", progress=False)
    assert resumed.losses == full.losses
    assert_same_weights(_state(tmp_path / "run"), _state(tmp_path / "full"))


@pytest.mark.slow
def test_a_second_ctrl_c_inside_the_optimizer_step_saves_nothing(tmp_path, monkeypatch, capsys):
    # Ctrl-C twice while AdamW updates the weights (step 4): they are half of step 3, half of step 4, so
    # nothing is saved; the checkpoint of step 2 (checkpoint_every=2) stays and resumes exactly
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step_with_two_ctrl_c(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # (each signal handled during its sleep: none is merged with the other)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_with_two_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, out=tmp_path / "run", progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert "Interrupted: stopped in the middle of step 4 of 6, not saved; the last checkpoint stays" in \
        capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 2
    resumed = train(TINY, out=tmp_path / "run", resume=True, progress=False)
    full = train(TINY, out=tmp_path / "full", progress=False)
    assert resumed.losses == full.losses
    assert_same_weights(_state(tmp_path / "run"), _state(tmp_path / "full"))


# ------------------------------------------------------------------------------ recipes, errors


@pytest.mark.slow
def test_digits_ddpm_recipe_trains_one_step(tmp_path):
    recipe = RECIPES["digits-ddpm"]
    assert get_recipe("digits-ddpm") is recipe
    assert recipe.network_config["in_channels"] == 1 and recipe.network_config["sample_size"] == 16
    assert recipe.data()["images"].shape == (1497, 1, 16, 16)
    result = train(replace(recipe, batch_size=4), out=tmp_path, steps=1, progress=False)
    assert result.checkpoint == tmp_path / "digits-ddpm.safetensors"  # a folder as out: <folder>/<recipe>
    assert result.config["schedule"] == {"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4,
                                         "beta_end": 0.02}


def test_the_default_output_is_runs_never_the_shipped_checkpoints(tmp_path, monkeypatch):
    repository = DEFAULT_RUNS_DIR.parent
    assert DEFAULT_RUNS_DIR.name == "runs" and (repository / "course_lib").is_dir()
    assert "/runs/" in (repository / ".gitignore").read_text().split()  # git ignores what learners train
    monkeypatch.delenv("COURSE_RUNS_DIR", raising=False)
    assert train_module.output_path("digits-ddpm") == DEFAULT_RUNS_DIR / "digits-ddpm"
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path / "shipped"))  # not where training writes
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "runs"))  # created if missing
    result = train(TINY, steps=1, progress=False)
    assert result.checkpoint == tmp_path / "runs" / "tiny-ddpm.safetensors"
    assert not (tmp_path / "shipped").exists()


def test_train_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown recipe 'digits-gan'"):
        train("digits-gan", out=tmp_path / "x")
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        train(TINY, out=tmp_path / "x", steps=0)
    with pytest.raises(CheckpointError, match=r"x.state.safetensors: Cannot resume: no training state here — train "
                                              r"without --resume"):
        train(TINY, out=tmp_path / "x", resume=True, progress=False)
    train(TINY, out=tmp_path / "y", steps=1, progress=False)
    with pytest.raises(CheckpointError, match=r"y.state.safetensors: Cannot resume: written by recipe 'tiny-ddpm' with "
                                              r"seed 7, not 'tiny-ddpm' with seed 8 — use another --out path"):
        train(replace(TINY, seed=8), out=tmp_path / "y", resume=True, progress=False)
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        train(TINY, out=tmp_path / "y", resume=True, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="Unknown network 'GAN'"):
        build_network("GAN", {})


def test_a_diverging_loss_stops_without_saving(tmp_path):
    def nan_loss(model, batch, schedule, generator):
        return eps_prediction_loss(model, batch, schedule, generator) * float("nan")

    with pytest.raises(ValueError, match="became nan at step 0. Lower the learning rate"):
        train(replace(TINY, loss=nan_loss), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run.safetensors").exists()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here"):
            resolve_device("cuda")


@pytest.mark.slow
def test_a_class_conditional_recipe_needs_no_change_to_the_loop(tmp_path):
    # The digits-cfg recipe's loss, losses.class_conditional_eps_loss: labels in the batch, label
    # dropout drawn from the step's generator, its settings in loss_args (and so in the checkpoint's JSON).
    recipe = replace(TINY, name="tiny-cfg", network_config=dict(TINY_UNET, num_class_embeds=11),
                     loss=class_conditional_eps_loss, loss_args={"label_dropout": 0.5, "null_class": 10})
    full = train(recipe, out=tmp_path / "full", progress=False)
    train(recipe, out=tmp_path / "split", steps=2, progress=False)
    resumed = train(recipe, out=tmp_path / "split", resume=True, progress=False)
    assert resumed.losses == full.losses
    assert full.config["loss_args"] == {"label_dropout": 0.5, "null_class": 10}
    assert full.config["loss"] == "class_conditional_eps_loss" and full.config["network_config"]["num_class_embeds"] == 11


# ------------------------------------------------------------------------------ never overwrite silently


def test_training_into_an_existing_checkpoint_needs_resume_or_overwrite(tmp_path):
    first = train(TINY, out=tmp_path / "run", steps=2, progress=False)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(CheckpointError, match=r"run.safetensors: a checkpoint is here already, and training would "
                                              r"replace it — continue it with --resume \(resume=True\), start again "
                                              r"in its place with --overwrite \(overwrite=True\)"):
        train(TINY, out=tmp_path / "run", progress=False)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before  # untouched
    again = train(replace(TINY, seed=8), out=tmp_path / "run", steps=2, overwrite=True, progress=False)
    assert again.config["seed"] == 8 and again.losses != first.losses
    assert load_training_state(tmp_path / "run").info["seed"] == 8  # the training state was replaced too


@pytest.mark.parametrize("make_out, message", [
    (lambda tmp: tmp / "missing" / "run", r"missing: this folder does not exist — create it first \(mkdir -p"),
    (lambda tmp: tmp / "a-file" / "run", r"a-file: is a file, not a folder"),
    (lambda tmp: tmp / "a-file" / "deeper" / "run", r"deeper: lies under .*a-file, which is a file, not a folder"),
    (lambda tmp: tmp / "read-only" / "run", r"read-only: cannot be written \((Read-only file system|Permission "
                                            r"denied)\) — choose a folder you can write to"),
])
def test_an_unwritable_output_fails_before_any_data_is_loaded(tmp_path, make_out, message):
    (tmp_path / "a-file").write_text("x")
    out = make_out(tmp_path)

    def data_never_loaded():
        raise AssertionError("the data was loaded before the output was checked")

    with read_only_folder(out.parent) if out.parent.name == "read-only" else contextlib.nullcontext():
        with pytest.raises(PathError, match=message):
            train(replace(TINY, data=data_never_loaded), out=out, progress=False)


@contextlib.contextmanager
def read_only_folder(folder):
    """A folder nobody may write into: no write permission, or for root (who ignores it) a read-only mount."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("root ignores permissions, and this machine does not allow a read-only mount")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_second_run_into_the_same_checkpoint_is_refused(tmp_path):
    with writing(tmp_path / "run"):  # as a training run holds it (another process would be refused alike)
        with pytest.raises(CheckpointError, match="run: another process .* is writing this checkpoint"):
            call_in_child(lambda: train(TINY, out=tmp_path / "run", steps=1, progress=False))
