"""Tests of the command line, python -m course_lib: info, train, generate, and its error messages."""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from course_lib.__main__ import main
from course_lib.train import RECIPES, build_network, save_checkpoint

from test_train import TINY

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _tiny_recipe(monkeypatch):
    monkeypatch.setitem(RECIPES, "tiny-ddpm", replace(TINY, steps=4))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # train --threads changes it


def _save_random(folder, recipe_name, **config_changes):
    recipe = RECIPES[recipe_name]
    network_config = {**recipe.network_config, **config_changes}
    torch.manual_seed(0)
    model = build_network(recipe.network, network_config)
    save_checkpoint(folder / recipe_name, model, {"network": recipe.network, "network_config": network_config,
                                                  "schedule": recipe.schedule, "recipe": recipe_name, "step": 0})


@pytest.fixture
def digits_folder(tmp_path):
    """A folder with a randomly initialised 'digits-ddpm' checkpoint (same network as the recipe)."""
    recipe = RECIPES["digits-ddpm"]
    torch.manual_seed(0)
    model = build_network(recipe.network, recipe.network_config)
    save_checkpoint(tmp_path / "digits-ddpm", model, {"network": recipe.network, "network_config": recipe.network_config,
                                                      "schedule": recipe.schedule, "recipe": "digits-ddpm", "step": 0})
    return tmp_path


def _run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_info_lists_versions_device_and_checkpoints(capsys, digits_folder):
    status, out, _ = _run(capsys, "info", "--checkpoint-dir", str(digits_folder))
    assert status == 0
    for word in ("python", "torch", "transformers", "diffusers", "device", "CPU" if not torch.cuda.is_available() else "CUDA"):
        assert word in out
    assert "digits-ddpm" in out and "step 0" in out


def test_train_then_resume(capsys, tmp_path):
    out_path = tmp_path / "run"
    status, out, _ = _run(capsys, "train", "tiny-ddpm", "--steps", "2", "--out", str(out_path), "--device", "cpu",
                          "--no-progress", "--threads", "1")
    assert status == 0 and "step 2" in out
    config = json.loads((tmp_path / "run.json").read_text())
    assert config["step"] == 2 and config["command"].startswith("python -m course_lib train tiny-ddpm --steps 2")
    status, out, _ = _run(capsys, "train", "tiny-ddpm", "--out", str(out_path), "--resume", "--device", "cpu",
                          "--no-progress")
    assert status == 0 and json.loads((tmp_path / "run.json").read_text())["step"] == 4  # the recipe's steps


def test_train_into_checkpoint_dir(capsys, tmp_path):
    status, _, _ = _run(capsys, "train", "tiny-ddpm", "--steps", "1", "--checkpoint-dir", str(tmp_path),
                        "--device", "cpu", "--no-progress")
    assert status == 0 and (tmp_path / "tiny-ddpm.safetensors").is_file()


def test_generate_grid_and_folder(capsys, digits_folder, tmp_path):
    common = ["generate", "--model", "digits", "--checkpoint-dir", str(digits_folder), "--steps", "3",
              "--num-images", "4", "--device", "cpu", "--no-progress"]
    status, out, _ = _run(capsys, *common, "--out", str(tmp_path / "grid.png"))
    assert status == 0 and "grid.png" in out
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (4 * 35, 4 * 35)  # 2x2 images of 16 px with 1 px padding, enlarged 4 times
    status, _, _ = _run(capsys, *common, "--out-dir", str(tmp_path / "images"))
    assert status == 0
    names = sorted(os.listdir(tmp_path / "images"))
    assert names == ["000.png", "001.png", "002.png", "003.png"]
    first = Image.open(tmp_path / "images" / "000.png")
    assert first.size == (64, 64) and first.mode == "L"
    # the same seed gives the same images
    _run(capsys, *common, "--out", str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "grid.png").read_bytes()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "dpmsolver"])
def test_generate_with_every_sampler(capsys, digits_folder, tmp_path, sampler):
    status, _, err = _run(capsys, "generate", "--checkpoint-dir", str(digits_folder), "--steps", "2",
                          "--num-images", "2", "--sampler", sampler, "--device", "cpu", "--no-progress",
                          "--out", str(tmp_path / "g.png"))
    assert status == 0, err


@pytest.mark.parametrize("argv, message", [
    (["train", "nope"], "Unknown recipe 'nope'"),
    (["train", "tiny-ddpm", "--steps", "0"], "steps must be at least 1, got 0"),
    (["train", "tiny-ddpm", "--resume"], "Cannot resume: no training state"),
    (["train", "tiny-ddpm", "--device", "tpu"], "Unknown device 'tpu'"),
    (["generate", "--sampler", "heun"], "Unknown sampler 'heun'"),
    (["generate", "--steps", "0"], "--steps must be between 1 and 1000, got 0"),
    (["generate", "--num-images", "0"], "--num-images must be between 1 and 1024"),
    (["generate", "--model", "dalle"], "Unknown model 'dalle'"),
    (["generate", "--model", "mini-sd", "--prompt", "a red circle"], "--model mini-sd is not available yet"),
    (["generate", "--guidance", "cfg", "--label", "3"], "No checkpoint 'digits-cfg'|digits-cfg.*missing|"
                                                        "python -m course_lib train digits-cfg"),
    (["generate", "--guidance", "cfg", "--label", "10"], "--label must be between 0 and 9, got 10"),
    (["generate", "--guidance", "classifier", "--label", "-1"], "--label must be between 0 and 9, got -1"),
    (["generate", "--guidance", "magic"], "Unknown guidance 'magic'"),
    (["generate", "--label", "3"], "--label needs guidance"),
    (["generate", "--guidance-scale", "2"], "--guidance-scale has no effect with --guidance none"),
    (["generate", "--guidance", "cfg", "--guidance-scale", "-1"], "--guidance-scale must be at least 0"),
])
def test_errors_print_a_message_and_exit_non_zero(capsys, tmp_path, argv, message):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "run"), "--no-progress"]
    else:
        argv = argv + ["--out", str(tmp_path / "g.png"), "--checkpoint-dir", str(tmp_path)]
    status, _, err = _run(capsys, *argv)
    assert status == 1
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_generate_output_arguments(capsys, tmp_path):
    for extra in ([], ["--out", "a.png", "--out-dir", "b"]):
        status, _, err = _run(capsys, "generate", *extra)
        assert status == 1 and "Give exactly one of --out grid.png (one grid image) or --out-dir DIR" in err


@pytest.mark.parametrize("guidance", ["cfg", "classifier"])
def test_generate_with_guidance(capsys, tmp_path, guidance):
    for name in ("digits-ddpm", "digits-cfg", "digits-noisy-classifier"):
        _save_random(tmp_path, name)
    status, out, err = _run(capsys, "generate", "--guidance", guidance, "--label", "7", "--checkpoint-dir", str(tmp_path),
                            "--steps", "2", "--num-images", "3", "--device", "cpu", "--no-progress",
                            "--out", str(tmp_path / "g.png"))
    assert status == 0, err
    default = {"cfg": "3", "classifier": "5"}[guidance]
    assert f"{guidance} guidance at scale {default}" in out


def test_classifier_guidance_needs_the_classifier_checkpoint(capsys, digits_folder, tmp_path):
    status, _, err = _run(capsys, "generate", "--guidance", "classifier", "--checkpoint-dir", str(digits_folder),
                          "--out", str(tmp_path / "g.png"))
    assert status == 1 and "python -m course_lib train digits-noisy-classifier" in err and "Traceback" not in err


@pytest.mark.parametrize("change, message", [
    ({"num_classes": 5}, "knows 5 classes, but the digits need 10"),
    ({"num_train_timesteps": 500}, "trained for 500 timesteps but the diffusion model has 1000"),
])
def test_classifier_that_does_not_match_is_refused(capsys, digits_folder, tmp_path, change, message):
    _save_random(digits_folder, "digits-noisy-classifier", **change)
    status, _, err = _run(capsys, "generate", "--guidance", "classifier", "--checkpoint-dir", str(digits_folder),
                          "--out", str(tmp_path / "g.png"))
    assert status == 1 and message in err and "Traceback" not in err


def test_missing_checkpoint_names_the_train_command(capsys, tmp_path):
    status, _, err = _run(capsys, "generate", "--checkpoint-dir", str(tmp_path), "--out", str(tmp_path / "g.png"))
    assert status == 1 and "python -m course_lib train digits-ddpm" in err and "Traceback" not in err


def test_argparse_errors_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--steps", "many"])
    assert exit_info.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err


def test_as_a_real_process(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), COURSE_CHECKPOINT_DIR=str(tmp_path))
    info = subprocess.run([sys.executable, "-m", "course_lib", "info"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert info.returncode == 0 and "torch" in info.stdout and str(tmp_path) in info.stdout
    error = subprocess.run([sys.executable, "-m", "course_lib", "generate", "--out", "x.png"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
    assert error.returncode == 1 and "Traceback" not in error.stderr
    assert "python -m course_lib train digits-ddpm" in error.stderr
