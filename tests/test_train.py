"""Tests of course_lib.train: the loop, resume bit for bit, atomic checkpoints, interrupts."""

import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from course_lib import train as train_module
from course_lib.diffusion import diffusion_training_loss
from course_lib.nn.unet import UNetConfig
from course_lib.schedules import make_schedule
from course_lib.train import (
    RECIPES,
    Recipe,
    build_network,
    checkpoint_paths,
    eps_prediction_loss,
    get_recipe,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    step_generators,
    train,
)

TINY_UNET = UNetConfig(
    sample_size=8, in_channels=1, out_channels=1,
    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2D", block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
).to_dict()


def _tiny_data():
    generator = torch.Generator().manual_seed(0)
    return {"images": torch.rand(40, 1, 8, 8, generator=generator) * 2 - 1, "labels": torch.arange(40) % 10}


TINY = Recipe(
    name="tiny-ddpm", description="a tiny test recipe", network="UNet2DConditionModel", network_config=TINY_UNET,
    data=_tiny_data, loss=eps_prediction_loss,
    schedule={"kind": "linear", "num_train_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02},
    steps=6, batch_size=4, lr=1e-3, warmup_steps=2, seed=7, checkpoint_every=2,
)


def _state(path):
    return load_checkpoint(path)[0]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bit_for_bit(tmp_path):
    full = train(TINY, out=tmp_path / "full", progress=False)
    train(TINY, out=tmp_path / "split", steps=3, progress=False)
    assert load_checkpoint(tmp_path / "split")[1]["step"] == 3
    resumed = train(TINY, out=tmp_path / "split", resume=True, progress=False)
    assert resumed.step == full.step == 6
    assert resumed.losses == full.losses  # the history includes the steps before the resume
    _assert_same_weights(_state(tmp_path / "full"), _state(tmp_path / "split"))
    full_state = load_checkpoint(checkpoint_paths(tmp_path / "full")["state"])[0]
    split_state = load_checkpoint(checkpoint_paths(tmp_path / "split")["state"])[0]
    _assert_same_weights(full_state, split_state)  # AdamW moments too


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

    def spy(path, model, config):
        seen_steps.append(config["step"])
        return original(path, model, config)

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
    from course_lib.train import class_conditional_eps_loss

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


# ------------------------------------------------------------------------------ checkpoints


def _model(seed):
    torch.manual_seed(seed)
    return build_network("UNet2DConditionModel", TINY_UNET)


def test_save_and_load_checkpoint_round_trip(tmp_path):
    model = _model(0)
    written = save_checkpoint(tmp_path / "m.safetensors", model, {"network": "UNet2DConditionModel", "step": 3})
    assert written == tmp_path / "m.safetensors" and (tmp_path / "m.json").is_file()
    for path in (tmp_path / "m", tmp_path / "m.safetensors", tmp_path / "m.json"):
        state_dict, config = load_checkpoint(path)
        _assert_same_weights(state_dict, model.state_dict())
        assert config == {"network": "UNet2DConditionModel", "step": 3}


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "m", _model(0), {"step": 1})
    before = {name: (tmp_path / name).read_bytes() for name in ("m.safetensors", "m.json")}

    def broken(data, path):
        path.write_text("{ half a fi")  # the temporary file is half written, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(train_module, "_write_json", broken)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "m", _model(1), {"step": 2})
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors"]  # no temporary files left


def test_a_save_interrupted_between_the_two_files_is_detected(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "m", _model(0), {"step": 1})
    calls = []
    real_replace = os.replace

    def replace_once(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the weights were renamed, the config was not
        real_replace(source, target)

    monkeypatch.setattr(train_module.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "m", _model(1), {"step": 2})
    monkeypatch.setattr(train_module.os, "replace", real_replace)
    with pytest.raises(ValueError, match="saved at step 2 but m.json says step 1"):
        load_checkpoint(tmp_path / "m")


def test_optimizer_state_flattens_and_comes_back():
    model = _model(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).square().mean().backward()
    optimizer.step()
    tensors, data = train_module._flatten_optimizer(optimizer.state_dict())
    json.dumps(data)  # the non-tensor part is JSON
    restored = train_module._unflatten_optimizer(tensors, json.loads(json.dumps(data)))
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for param_id, values in original["state"].items():
        for key, value in values.items():
            assert torch.equal(restored["state"][param_id][key], value)


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
    _assert_same_weights(_state(tmp_path / "run"), _state(tmp_path / "full"))


# ------------------------------------------------------------------------------ recipes, errors


def test_digits_ddpm_recipe_trains_one_step(tmp_path):
    recipe = RECIPES["digits-ddpm"]
    assert get_recipe("digits-ddpm") is recipe
    assert recipe.network_config["in_channels"] == 1 and recipe.network_config["sample_size"] == 16
    assert recipe.data()["images"].shape == (1497, 1, 16, 16)
    result = train(replace(recipe, batch_size=4), out=tmp_path, steps=1, progress=False)
    assert result.checkpoint == tmp_path / "digits-ddpm.safetensors"  # a folder as out: <folder>/<recipe>
    assert result.config["schedule"] == {"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4,
                                         "beta_end": 0.02}


def test_default_out_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    result = train(TINY, steps=1, progress=False)
    assert result.checkpoint == tmp_path / "tiny-ddpm.safetensors"


def test_train_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown recipe 'digits-gan'"):
        train("digits-gan", out=tmp_path / "x")
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        train(TINY, out=tmp_path / "x", steps=0)
    with pytest.raises(ValueError, match="Cannot resume: no training state"):
        train(TINY, out=tmp_path / "x", resume=True, progress=False)
    train(TINY, out=tmp_path / "y", steps=1, progress=False)
    with pytest.raises(ValueError, match="written by recipe 'tiny-ddpm' with seed 7"):
        train(replace(TINY, seed=8), out=tmp_path / "y", resume=True, progress=False)
    with pytest.raises(ValueError, match="Checkpoint file .*nothing.safetensors does not exist"):
        load_checkpoint(tmp_path / "nothing")
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


def test_a_class_conditional_recipe_needs_no_change_to_the_loop(tmp_path):
    # What a "digits-cfg" recipe will look like: labels in the batch, label dropout drawn from
    # the step's generator, its settings in loss_args (and so in the checkpoint's JSON).
    def label_dropout_loss(model, batch, schedule, generator, label_dropout, null_class):
        labels = batch["labels"]
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < label_dropout
        labels = torch.where(drop, torch.full_like(labels, null_class), labels)
        return diffusion_training_loss(model, batch["images"], schedule, generator=generator, class_labels=labels)

    recipe = replace(TINY, name="tiny-cfg", network_config=dict(TINY_UNET, num_class_embeds=11),
                     loss=label_dropout_loss, loss_args={"label_dropout": 0.5, "null_class": 10})
    full = train(recipe, out=tmp_path / "full", progress=False)
    train(recipe, out=tmp_path / "split", steps=2, progress=False)
    resumed = train(recipe, out=tmp_path / "split", resume=True, progress=False)
    assert resumed.losses == full.losses
    assert full.config["loss_args"] == {"label_dropout": 0.5, "null_class": 10}
    assert full.config["loss"] == "label_dropout_loss" and full.config["network_config"]["num_class_embeds"] == 11
