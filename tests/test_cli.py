"""Tests of the command line, python -m course_lib: info, train, generate, and its error messages."""

import errno
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
from course_lib.checkpoints import save_checkpoint
from course_lib.networks import build_network
from course_lib.recipes import RECIPES

from _minisd import make_mini_sd
from _tiny import TINY

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


@pytest.mark.slow
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
    (["generate", "--model", "mini-sd", "--prompt", "a red circle"],
     r"missing shapes-vae.safetensors.*python -m course_lib train shapes-vae; .*python -m course_lib train shapes-ldm"),
    (["generate", "--model", "mini-sd"], '--model mini-sd needs a prompt: add --prompt "a large red circle'),
    (["generate", "--model", "mini-sd", "--prompt", "a", "--label", "3"], "--label is for --model digits"),
    (["generate", "--model", "mini-sd", "--prompt", "a", "--guidance", "classifier"], "has no noise-aware classifier"),
    (["generate", "--model", "mini-sd", "--prompt", "a", "--guidance", "none", "--guidance-scale", "3"],
     "--guidance-scale has no effect with --guidance none"),
    (["generate", "--model", "mini-sd", "--prompt", "a", "--guidance", "none", "--negative-prompt", "b"],
     "--negative-prompt needs guidance"),
    (["generate", "--model", "mini-sd", "--prompt", "a", "--guidance-scale", "-2"], "--guidance-scale must be at least 0"),
    (["generate", "--model", "mini-sd", "--prompt", "a", "--height", "4"], "--height must be between 8 and 4096, got 4"),
    (["generate", "--height", "32"], "--height and --width are for --model mini-sd"),
    (["generate", "--prompt", "a red circle"], "--prompt and --negative-prompt are for --model mini-sd"),
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
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert " — " in err  # <what is wrong> — <what to do>
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


def test_argparse_errors_are_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--steps", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: argument --steps: invalid int value: 'many' — see python -m course_lib "
                                       "generate --help\n")


@pytest.mark.slow
def test_as_a_real_process(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), COURSE_CHECKPOINT_DIR=str(tmp_path))
    info = subprocess.run([sys.executable, "-m", "course_lib", "info"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert info.returncode == 0 and "torch" in info.stdout and str(tmp_path) in info.stdout
    error = subprocess.run([sys.executable, "-m", "course_lib", "generate", "--out", "x.png"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
    assert error.returncode == 1 and "Traceback" not in error.stderr
    assert "python -m course_lib train digits-ddpm" in error.stderr


# ---------------------------------------------------------------------------------------------
# generate --model mini-sd: the StableDiffusion pipeline on tiny random mini-SD checkpoints


@pytest.fixture(scope="module")
def mini_sd_folder(tmp_path_factory):
    return make_mini_sd(tmp_path_factory.mktemp("mini-sd"))


@pytest.mark.slow
def test_generate_mini_sd_grid_and_folder(capsys, mini_sd_folder, tmp_path):
    common = ["generate", "--model", "mini-sd", "--prompt", "a large red circle in the center", "--checkpoint-dir",
              str(mini_sd_folder), "--steps", "2", "--num-images", "4", "--device", "cpu", "--no-progress"]
    status, out, err = _run(capsys, *common, "--out", str(tmp_path / "grid.png"))
    assert status == 0, err
    assert "grid.png (4 images of 'a large red circle in the center' from mini-sd, guidance scale 7.5, ddim with 2 " \
           "steps)" in out
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (4 * 35, 4 * 35) and grid.mode == "RGB"  # 2x2 images of 16 px with 1 px padding, enlarged 4x
    status, out, _ = _run(capsys, *common, "--out-dir", str(tmp_path / "images"))
    assert status == 0 and "000.png ... 003.png" in out
    assert sorted(os.listdir(tmp_path / "images")) == ["000.png", "001.png", "002.png", "003.png"]
    first = Image.open(tmp_path / "images" / "000.png")
    assert first.size == (64, 64) and first.mode == "RGB"

    # the same images as the pipeline with the same seed
    from course_lib.pipeline import StableDiffusion

    pipe = StableDiffusion.from_course("mini-sd", directory=mini_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    want = pipe("a large red circle in the center", num_inference_steps=2, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(0), num_images_per_prompt=4, output_type="pil")
    got = [Image.open(tmp_path / "images" / f"{i:03d}.png").resize((16, 16), Image.NEAREST) for i in range(4)]
    for a, b in zip(got, want):
        assert abs(torch.tensor(list(a.getdata())) - torch.tensor(list(b.getdata()))).max() <= 1

    # the same seed gives the same grid, another seed another one
    _run(capsys, *common, "--out", str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "grid.png").read_bytes()
    _run(capsys, *common, "--seed", "1", "--out", str(tmp_path / "other.png"))
    assert (tmp_path / "other.png").read_bytes() != (tmp_path / "grid.png").read_bytes()


@pytest.mark.parametrize("sampler", ["ddpm", "euler", "dpmsolver"])
def test_generate_mini_sd_options(capsys, mini_sd_folder, tmp_path, sampler):
    status, out, err = _run(capsys, "generate", "--model", "mini-sd", "--prompt", "a blue square",
                            "--negative-prompt", "a circle", "--guidance-scale", "3", "--sampler", sampler,
                            "--height", "32", "--width", "16", "--num-images", "2", "--steps", "2",
                            "--checkpoint-dir", str(mini_sd_folder), "--device", "cpu", "--no-progress",
                            "--out-dir", str(tmp_path))
    assert status == 0, err
    assert f"negative prompt 'a circle', guidance scale 3, {sampler} with 2 steps" in out
    assert Image.open(tmp_path / "001.png").size == (32, 64)  # 16 x 32 enlarged twice


def test_generate_mini_sd_without_guidance_and_with_unknown_words(capsys, mini_sd_folder, tmp_path):
    status, out, err = _run(capsys, "generate", "--model", "mini-sd", "--prompt", "a purple circle", "--guidance",
                            "none", "--steps", "1", "--num-images", "1", "--checkpoint-dir", str(mini_sd_folder),
                            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "g.png"))
    assert status == 0, err
    assert "from mini-sd, no guidance, ddim with 1 steps" in out
    assert "warning: These words are not in the tokenizer's vocabulary" in err and "'purple'" in err
    assert "Traceback" not in err and "UserWarning" not in err


def test_generate_mini_sd_pipeline_errors_print_a_message(capsys, mini_sd_folder, tmp_path):
    status, _, err = _run(capsys, "generate", "--model", "mini-sd", "--prompt", "a red circle", "--height", "18",
                          "--checkpoint-dir", str(mini_sd_folder), "--device", "cpu", "--out", str(tmp_path / "g.png"))
    assert status == 1 and err.startswith("error: height must be a multiple of 4, got 18") and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Nothing overwritten silently, outputs checked first, every error one line that names the file


def _one_line_error(status, err):
    assert status == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1, err  # one line
    return err


def test_train_refuses_to_replace_a_checkpoint_without_resume_or_overwrite(capsys, tmp_path):
    common = ["train", "tiny-ddpm", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert _run(capsys, *common, "--steps", "2")[0] == 0
    before = (tmp_path / "run.safetensors").read_bytes()
    err = _one_line_error(*_run(capsys, *common)[::2])
    assert f"error: {tmp_path / 'run.safetensors'}: a checkpoint is here already" in err
    assert "--resume" in err and "--overwrite" in err
    assert (tmp_path / "run.safetensors").read_bytes() == before
    assert _run(capsys, *common, "--overwrite")[0] == 0
    assert json.loads((tmp_path / "run.json").read_text())["step"] == 4
    err = _one_line_error(*_run(capsys, *common, "--resume", "--overwrite")[::2])
    assert "resume and overwrite exclude each other" in err


def test_train_writes_to_runs_by_default(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "runs"))
    status, out, _ = _run(capsys, "train", "tiny-ddpm", "--steps", "1", "--no-progress", "--device", "cpu")
    assert status == 0 and f"wrote {tmp_path / 'runs' / 'tiny-ddpm.safetensors'}" in out


@pytest.mark.parametrize("make_argv, message", [
    (lambda t: ["generate", "--out", str(t / "missing" / "g.png")], r"missing: this folder does not exist — create it"),
    (lambda t: ["generate", "--out", str(t / "file.txt" / "g.png")], r"file.txt: is a file, not a folder"),
    (lambda t: ["generate", "--out", str(t / "g.gif89")], r"g.gif89: unknown file type '.gif89' — end the name with one "
                                                          r"of .png, .jpg"),
    (lambda t: ["generate", "--out", str(t / "grid")], r"grid: unknown file type '\(no extension\)'"),
    (lambda t: ["generate", "--out", str(t / "folder.png")], r"folder.png: is a folder, not a file"),
    (lambda t: ["generate", "--out-dir", str(t / "file.txt")], r"file.txt: is a file, not a folder"),
    (lambda t: ["generate", "--out-dir", str(t / "missing" / "deeper")], r"deeper: this folder does not exist"),
    (lambda t: ["train", "tiny-ddpm", "--out", str(t / "file.txt" / "run")], r"file.txt: is a file, not a folder"),
    (lambda t: ["train", "tiny-ddpm", "--out", str(t / "missing" / "run")], r"missing: this folder does not exist"),
])
def test_an_output_that_cannot_be_written_fails_before_any_model_loads(capsys, tmp_path, make_argv, message):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder.png").mkdir()
    # no checkpoint in --checkpoint-dir: an error about the output proves it came first
    status, _, err = _run(capsys, *make_argv(tmp_path), "--no-progress", "--device", "cpu",
                          *(["--checkpoint-dir", str(tmp_path / "empty")] if make_argv(tmp_path)[0] == "generate" else []))
    assert re.search(message, _one_line_error(status, err)), err


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:1000]), r"digits-ddpm.safetensors: is not a readable safetensors "
                                                              r"file .* truncated or corrupt — "),
    (lambda path: path.write_bytes(b"\x80\x04\x95" + bytes(100)), r"digits-ddpm.safetensors: is a pickle"),
    (lambda path: path.with_suffix(".json").write_text("{oops"), r"digits-ddpm.json: is not valid JSON"),
    (lambda path: path.unlink(), r"checkpoint 'digits-ddpm' not found: digits-ddpm.safetensors missing"),
    (lambda path: path.with_suffix(".json").write_text(path.with_suffix(".json").read_text().replace(
        '"beta_end": 0.02', '"beta_end": 0.03')), r"digits-ddpm.json: says schedule.beta_end = 0.03, but "
                                                  r"digits-ddpm.safetensors was saved with schedule.beta_end = 0.02"),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(capsys, digits_folder, tmp_path, damage, message):
    damage(digits_folder / "digits-ddpm.safetensors")
    status, _, err = _run(capsys, "generate", "--checkpoint-dir", str(digits_folder), "--out", str(tmp_path / "g.png"),
                          "--steps", "1", "--num-images", "1", "--device", "cpu", "--no-progress")
    assert re.search(message, _one_line_error(status, err)), err
    assert not (tmp_path / "g.png").exists()


def test_a_full_disk_while_training_says_what_to_do(capsys, tmp_path, monkeypatch):
    from course_lib import checkpoints

    def full_disk(data):
        def write(temporary):
            raise OSError(errno.ENOSPC, "No space left on device", str(temporary))
        return write

    monkeypatch.setattr(checkpoints, "_write_and_count", full_disk)
    status, _, err = _run(capsys, "train", "tiny-ddpm", "--out", str(tmp_path / "run"), "--no-progress", "--device",
                          "cpu")
    assert _one_line_error(status, err) == (
        f"error: {tmp_path / 'run.safetensors'}: No space left on device while saving the checkpoint (the one before "
        f"is intact) — free some space on that disk or write elsewhere (--out), then continue with --resume\n")


@pytest.mark.parametrize("seed, ok", [("-1", False), (str(2**64), False), ("99999999999999999999999", False),
                                      (str(2**64 - 1), True), ("0", True)])
def test_seeds_outside_0_to_2_64_are_refused(capsys, digits_folder, tmp_path, seed, ok):
    status, _, err = _run(capsys, "generate", "--seed", seed, "--checkpoint-dir", str(digits_folder), "--steps", "1",
                          "--num-images", "1", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "g.png"))
    if ok:
        assert status == 0, err
    else:
        assert "--seed must be between 0 and 18446744073709551615" in _one_line_error(status, err)


@pytest.mark.slow
def test_generate_threads(capsys, digits_folder, tmp_path):
    common = ["generate", "--checkpoint-dir", str(digits_folder), "--steps", "1", "--num-images", "1", "--device",
              "cpu", "--no-progress", "--out", str(tmp_path / "g.png")]
    assert _run(capsys, *common, "--threads", "2")[0] == 0 and torch.get_num_threads() == 2
    assert _run(capsys, *common)[0] == 0 and torch.get_num_threads() == 1  # the default, measured (README)
    assert "--threads must be between 1 and 1024, got 0" in _one_line_error(*_run(capsys, *common, "--threads", "0")[::2])


def test_an_unexpected_error_is_one_line_unless_debugging(capsys, monkeypatch):
    from course_lib import __main__ as cli

    monkeypatch.setattr(cli, "run_info", lambda args: 1 / 0)
    err = _one_line_error(*_run(capsys, "info")[::2])
    assert err.startswith("error: internal error (ZeroDivisionError: division by zero) — this is a bug in course_lib")
    monkeypatch.setenv("COURSE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["info"])


def test_a_request_over_the_memory_caps_is_refused_before_any_model_loads(capsys, mini_sd_folder, digits_folder,
                                                                         tmp_path, monkeypatch):
    from course_lib import __main__ as cli

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the request was checked")

    monkeypatch.setattr(cli.StableDiffusion, "from_course", never)
    monkeypatch.setattr(cli, "load_course_model", never)
    err = _one_line_error(*_run(capsys, "generate", "--model", "mini-sd", "--prompt", "a red circle", "--height",
                                "4096", "--width", "4096", "--checkpoint-dir", str(mini_sd_folder), "--out",
                                str(tmp_path / "g.png"))[::2])
    assert re.search(r"error: 4096x4096 pixels are \d+ latent positions per image, over the cap of 16384", err)
    assert "— use a smaller height and width" in err
    monkeypatch.setenv("COURSE_MAX_MEMORY_GB", "0.01")
    err = _one_line_error(*_run(capsys, "generate", "--num-images", "1024", "--checkpoint-dir", str(digits_folder),
                                "--out", str(tmp_path / "g.png"))[::2])
    assert "error: Sampling 1024 image(s) of 16x16 pixels needs about" in err and "over the cap of 0.01 GiB" in err


def test_messages_become_what_is_wrong_and_what_to_do():
    from course_lib.__main__ import _what_and_fix

    assert _what_and_fix("--steps must be between 1 and 1000, got 0. Use 20 to 50 sampling steps.", "generate") == \
        "--steps must be between 1 and 1000, got 0 — use 20 to 50 sampling steps."
    assert _what_and_fix("x.png: is a folder — give a file name", "generate") == "x.png: is a folder — give a file name"
    assert _what_and_fix("scale 0.5 is too small.", "generate") == \
        "scale 0.5 is too small — see python -m course_lib generate --help"
    assert _what_and_fix("got 2.5. CUDA is missing.", "train") == "got 2.5 — CUDA is missing."
    assert _what_and_fix("got -1. A seed is a whole number.", "generate") == "got -1 — a seed is a whole number."
