"""A trial campaign against the command line, the loaders and training: bad inputs and faults, each
result classified (issue 12's closing figures).

    .venv/bin/python benchmarks/fault_trials.py [--json results.json] [--only cli,files,train,faults]

Every trial runs in its own process with a time limit, and is classified as one of:

    refused        the expected refusal: exit status 1, one line "error: ...", no traceback, the file
                   named when a file is the problem, and what to do after " — "
    success        it was supposed to work, and did (exit 0; the image or checkpoint is there and loads;
                   after a fault, --resume ends bit-identical to an uninterrupted run)
    data lost      after a fault, the last checkpoint cannot be read, or --resume fails or ends elsewhere
    hung           it ran past the time limit
    silently wrong it succeeded although it should have been refused (an edited JSON used, int64 weights
                   cast), or a refusal was expected and the output was written anyway
    unclear        a traceback, or a message without the file or without what to do

Kill and fault trials use a tiny recipe (an 8x8 UNet saving after every step) in a child process:
SIGKILL at random moments, the fault-injection variable of course_lib.checkpoints (exit at the N-th
write or rename of a save, for every N of one save), two SIGINTs (the second during the save), and
a full disk (a 1 MiB tmpfs when the campaign runs as root).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "checkpoints"
PYTHON = sys.executable
CLASSES = ("refused", "success", "data lost", "hung", "silently wrong", "unclear")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
ENV.pop("COURSE_DEBUG", None)

# the tiny recipe of the training trials, written as a script the children run
TRAINER = r'''
import os, signal, sys, time
from dataclasses import replace
import torch
torch.set_num_threads(1)
from course_lib.losses import eps_prediction_loss
from course_lib.nn.unet import UNetConfig
from course_lib.recipes import Recipe
from course_lib.train import train

def data():
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(40, 1, 8, 8, generator=g) * 2 - 1}

config = UNetConfig(sample_size=8, in_channels=1, out_channels=1, down_block_types=("DownBlock2D",) * 2,
                    up_block_types=("UpBlock2D",) * 2, mid_block_type="UNetMidBlock2D", block_out_channels=(8, 16),
                    layers_per_block=1, norm_num_groups=4).to_dict()
first_step = [True]

def loss(model, batch, schedule, generator):  # eps_prediction_loss, saying "training" at the first step
    if first_step[0]:
        print("training", flush=True)
        first_step[0] = False
    return eps_prediction_loss(model, batch, schedule, generator)

loss.__name__ = "eps_prediction_loss"
recipe = Recipe(name="tiny", description="campaign", network="UNet2DConditionModel", network_config=config,
                data=data, loss=loss, steps=int(sys.argv[2]), batch_size=4, warmup_steps=1, seed=3,
                checkpoint_every=1,
                schedule={"kind": "linear", "num_train_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02})
out, resume = sys.argv[1], sys.argv[3] == "resume"
result = train(recipe, out=out, resume=resume, progress=False)
print("done", result.step, flush=True)
'''


@dataclass
class Trial:
    group: str
    name: str
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Campaign:
    work: Path
    trials: list = field(default_factory=list)

    def add(self, trial: Trial) -> None:
        self.trials.append(trial)
        print(f"[{trial.group}] {trial.name}: {trial.outcome}" + (f" ({trial.detail})" if trial.detail else ""),
              flush=True)


def run(argv: list[str], timeout: float, cwd: Path | None = None, env: dict | None = None) -> tuple[int | None, str, str, float]:
    """(exit status or None if it hung, stdout, stderr, seconds) of a command."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd or REPO, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err, time.perf_counter() - start
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err, time.perf_counter() - start


def classify_refusal(status, err: str, path: str | None) -> tuple[str, str]:
    """A trial that must be refused: refused / hung / silently wrong / unclear."""
    if status is None:
        return "hung", ""
    if status == 0:
        return "silently wrong", "accepted"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if "Traceback" in err or not last.startswith("error: "):
        return "unclear", (last or err.strip())[:160]
    if path is not None and path not in last:
        return "unclear", f"file not named: {last[:160]}"
    if " — " not in last and "usage:" not in err:
        return "unclear", f"no fix: {last[:160]}"
    return "refused", last[:160]


def cli(*args: str) -> list[str]:
    return [PYTHON, "-m", "course_lib", *args]


# ---------------------------------------------------------------------------------------------
# 1. Bad arguments and bad output paths on the command line
# ---------------------------------------------------------------------------------------------


def cli_trials(campaign: Campaign) -> None:
    work = campaign.work / "cli"
    work.mkdir()
    (work / "a-file").write_text("x")
    (work / "a-folder.png").mkdir()
    read_only = _read_only_folder(work / "read-only")
    out = ["--out", str(work / "g.png")]
    fast = ["--steps", "1", "--num-images", "1", "--device", "cpu", "--no-progress"]
    mini = ["--model", "mini-sd", "--prompt", "a red circle"]
    refusals = [  # (name, argv, file the message must name)
        ("train unknown recipe", cli("train", "digits-gan", "--out", str(work / "t")), None),
        ("train --steps 0", cli("train", "digits-judge", "--steps", "0", "--out", str(work / "t")), None),
        ("train --steps -5", cli("train", "digits-judge", "--steps", "-5", "--out", str(work / "t")), None),
        ("train --steps abc", cli("train", "digits-judge", "--steps", "abc"), None),
        ("train --steps 1e3", cli("train", "digits-judge", "--steps", "1e3"), None),
        ("train --threads 0", cli("train", "digits-judge", "--threads", "0", "--out", str(work / "t")), None),
        ("train --threads 99999", cli("train", "digits-judge", "--threads", "99999", "--out", str(work / "t")), None),
        ("train --device tpu", cli("train", "digits-judge", "--device", "tpu", "--out", str(work / "t")), None),
        ("train --device cuda (none here)", cli("train", "digits-judge", "--device", "cuda", "--out", str(work / "t")),
         None),
        ("train --out in a missing folder", cli("train", "digits-judge", "--out", str(work / "missing" / "t")),
         str(work / "missing")),
        ("train --out under a file", cli("train", "digits-judge", "--out", str(work / "a-file" / "t")),
         str(work / "a-file")),
        ("train --out in a read-only folder", cli("train", "digits-judge", "--out", str(read_only / "t")),
         str(read_only)),
        ("train --resume with nothing there", cli("train", "digits-judge", "--resume", "--out", str(work / "t")),
         str(work / "t")),
        ("train --resume --overwrite", cli("train", "digits-judge", "--resume", "--overwrite", "--out",
                                           str(work / "t")), None),
        ("train --checkpoint-dir a file", cli("train", "digits-judge", "--checkpoint-dir", str(work / "a-file")),
         str(work / "a-file")),
        ("train into a shipped checkpoint without --overwrite",
         cli("train", "digits-judge", "--out", str(SHIPPED / "digits-judge")), str(SHIPPED / "digits-judge")),
        ("train --checkpoint-dir data/checkpoints without --overwrite",
         cli("train", "digits-judge", "--checkpoint-dir", str(SHIPPED)), str(SHIPPED / "digits-judge")),
        ("generate --steps 0", cli("generate", *out, "--steps", "0"), None),
        ("generate --steps -1", cli("generate", *out, "--steps", "-1"), None),
        ("generate --steps 100000", cli("generate", *out, "--steps", "100000"), None),
        ("generate --steps abc", cli("generate", *out, "--steps", "abc"), None),
        ("generate --num-images 0", cli("generate", *out, "--num-images", "0"), None),
        ("generate --num-images 100000", cli("generate", *out, "--num-images", "100000"), None),
        ("generate --seed -1", cli("generate", *out, "--seed", "-1"), None),
        ("generate --seed 2^64", cli("generate", *out, "--seed", str(2**64)), None),
        ("generate --seed 10^30", cli("generate", *out, "--seed", str(10**30)), None),
        ("generate --seed 1.5", cli("generate", *out, "--seed", "1.5"), None),
        ("generate --guidance-scale nan", cli("generate", *out, "--guidance", "cfg", "--guidance-scale", "nan"), None),
        ("generate --guidance-scale inf", cli("generate", *out, "--guidance", "cfg", "--guidance-scale", "inf"), None),
        ("generate --guidance-scale -1", cli("generate", *out, "--guidance", "cfg", "--guidance-scale", "-1"), None),
        ("generate --label 10", cli("generate", *out, "--guidance", "cfg", "--label", "10"), None),
        ("generate --label -1", cli("generate", *out, "--guidance", "cfg", "--label", "-1"), None),
        ("generate --label without guidance", cli("generate", *out, "--label", "3"), None),
        ("generate --sampler heun", cli("generate", *out, "--sampler", "heun"), None),
        ("generate --model dalle", cli("generate", *out, "--model", "dalle"), None),
        ("generate --guidance magic", cli("generate", *out, "--guidance", "magic"), None),
        ("generate --threads 0", cli("generate", *out, "--threads", "0"), None),
        ("generate --threads -3", cli("generate", *out, "--threads", "-3"), None),
        ("generate --device tpu", cli("generate", *out, "--device", "tpu"), None),
        ("generate mini-sd without a prompt", cli("generate", *out, "--model", "mini-sd"), None),
        ("generate mini-sd --height 4", cli("generate", *out, *mini, "--height", "4"), None),
        ("generate mini-sd --height 18", cli("generate", *out, *mini, "--height", "18", *fast), None),
        ("generate mini-sd --width 100000", cli("generate", *out, *mini, "--width", "100000"), None),
        ("generate mini-sd 4096x4096", cli("generate", *out, *mini, "--height", "4096", "--width", "4096", *fast),
         None),
        ("generate mini-sd 2048x2048, 1024 images", cli("generate", *out, *mini, "--height", "2048", "--width", "2048",
                                                       "--num-images", "1024", "--steps", "1", "--device", "cpu"),
         None),
        ("generate mini-sd --guidance classifier", cli("generate", *out, *mini, "--guidance", "classifier"), None),
        ("generate digits --height 32", cli("generate", *out, "--height", "32"), None),
        ("generate with no output", cli("generate"), None),
        ("generate --out and --out-dir", cli("generate", *out, "--out-dir", str(work / "d")), None),
        ("generate --out in a missing folder", cli("generate", "--out", str(work / "missing" / "g.png")),
         str(work / "missing")),
        ("generate --out under a file", cli("generate", "--out", str(work / "a-file" / "g.png")),
         str(work / "a-file")),
        ("generate --out unknown extension", cli("generate", "--out", str(work / "g.xyz")), str(work / "g.xyz")),
        ("generate --out without extension", cli("generate", "--out", str(work / "grid")), str(work / "grid")),
        ("generate --out naming a folder", cli("generate", "--out", str(work / "a-folder.png")),
         str(work / "a-folder.png")),
        ("generate --out-dir naming a file", cli("generate", "--out-dir", str(work / "a-file")), str(work / "a-file")),
        ("generate --out in a read-only folder", cli("generate", "--out", str(read_only / "g.png")), str(read_only)),
        ("generate --out-dir in a read-only folder", cli("generate", "--out-dir", str(read_only / "d")),
         str(read_only)),
        ("generate --checkpoint-dir missing", cli("generate", *out, "--checkpoint-dir", str(work / "nowhere")),
         str(work / "nowhere")),
        ("generate --checkpoint-dir a file", cli("generate", *out, "--checkpoint-dir", str(work / "a-file")),
         str(work / "a-file")),
        ("no command", cli(), None),
        ("unknown command", cli("paint"), None),
    ]
    for name, argv, path in refusals:
        status, _, err, seconds = run(argv, timeout=90)
        outcome, detail = classify_refusal(status, err, path)
        if outcome == "refused" and (work / "g.png").exists():
            outcome, detail = "silently wrong", "refused, but the image was written"
        campaign.add(Trial("cli", name, outcome, detail, round(seconds, 1)))
    successes = [
        ("generate digits, seed 2^64-1", cli("generate", *out, *fast, "--seed", str(2**64 - 1)), work / "g.png"),
        ("generate digits --out .jpg", cli("generate", "--out", str(work / "g.jpg"), *fast), work / "g.jpg"),
        ("generate digits --out-dir new folder", cli("generate", "--out-dir", str(work / "new"), *fast),
         work / "new" / "000.png"),
        ("generate mini-sd, unicode prompt", cli("generate", "--out", str(work / "u.png"), "--model", "mini-sd",
                                                 "--prompt", "un cercle rouge ☃ 赤い", *fast), work / "u.png"),
        ("generate mini-sd, empty prompt", cli("generate", "--out", str(work / "e.png"), "--model", "mini-sd",
                                               "--prompt", "", *fast), work / "e.png"),
        ("generate mini-sd, 3000-word prompt", cli("generate", "--out", str(work / "l.png"), "--model", "mini-sd",
                                                   "--prompt", "red " * 3000, *fast), work / "l.png"),
        ("info", cli("info"), None),
    ]
    for name, argv, product in successes:
        status, _, err, seconds = run(argv, timeout=120)
        if status is None:
            outcome, detail = "hung", ""
        elif status != 0:
            outcome, detail = classify_refusal(status, err, None)
            outcome = "unclear" if outcome != "refused" else "silently wrong"
            detail = f"expected to work: {detail}"
        else:
            outcome, detail = ("success", "") if product is None or product.is_file() else ("silently wrong",
                                                                                             "no image written")
        campaign.add(Trial("cli", name, outcome, detail, round(seconds, 1)))


def _read_only_folder(folder: Path) -> Path:
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: a read-only mount
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]).returncode == 0:
            return folder
    folder.chmod(0o500)
    return folder


# ---------------------------------------------------------------------------------------------
# 2. Damaged checkpoint files, through the command line and through the API
# ---------------------------------------------------------------------------------------------


def _damages() -> list[tuple[str, str, object, bool]]:
    """(name, file suffix, damage(path), refusal expected) for the digits-ddpm checkpoint."""
    import torch

    def truncate(length):
        return lambda path: path.write_bytes(path.read_bytes()[:length] if length >= 0 else path.read_bytes()[:length])

    def pickle_file(**options):
        def damage(path):
            torch.save({"conv_in.weight": torch.zeros(3)}, path, **options)
        return damage

    def edit_json(change):
        def damage(path):
            config = json.loads(path.read_text())
            change(config)
            path.write_text(json.dumps(config))
        return damage

    def retype(dtype):
        def damage(path):
            from safetensors import safe_open
            from safetensors.torch import save_file
            with safe_open(str(path), "pt") as file:
                metadata = file.metadata()
                tensors = {key: file.get_tensor(key) for key in file.keys()}
            key = sorted(tensors)[0]
            tensors[key] = (tensors[key] * 100).to(dtype)
            save_file(tensors, str(path), metadata=metadata)
        return damage

    def set_key(key, value):
        def change(config):
            node = config
            for part in key.split(".")[:-1]:
                node = node[part]
            node[key.split(".")[-1]] = value
        return change

    return [
        ("weights emptied", ".safetensors", truncate(0), True),
        ("weights cut to 7 bytes", ".safetensors", truncate(7), True),
        ("weights cut to 100 bytes", ".safetensors", truncate(100), True),
        ("weights cut in half", ".safetensors", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), True),
        ("weights missing their last byte", ".safetensors", truncate(-1), True),
        ("weights of random bytes", ".safetensors", lambda p: p.write_bytes(random.Random(0).randbytes(5000)), True),
        ("weights: a zip pickle renamed", ".safetensors", pickle_file(), True),
        ("weights: a protocol-2 pickle renamed", ".safetensors",
         pickle_file(pickle_protocol=2, _use_new_zipfile_serialization=False), True),
        ("weights: a header that claims 10^15 bytes", ".safetensors",
         lambda p: p.write_bytes((10**15).to_bytes(8, "little") + p.read_bytes()[8:]), True),
        ("weights: one tensor int64", ".safetensors", retype(torch.int64), True),
        ("weights: one tensor float16", ".safetensors", retype(torch.float16), True),
        ("weights: one tensor float64", ".safetensors", retype(torch.float64), True),
        ("weights file missing", ".safetensors", lambda p: p.unlink(), True),
        ("weights file is a folder", ".safetensors", lambda p: (p.unlink(), p.mkdir()), True),
        ("JSON emptied", ".json", truncate(0), True),
        ("JSON cut in half", ".json", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), True),
        ("JSON of binary bytes", ".json", lambda p: p.write_bytes(bytes(range(256))), True),
        ("JSON is a list", ".json", lambda p: p.write_text("[1, 2, 3]"), True),
        ("JSON is null", ".json", lambda p: p.write_text("null"), True),
        ("JSON of 20 MB", ".json", lambda p: p.write_text(" " * 20_000_000 + "{}"), True),
        ("JSON file missing", ".json", lambda p: p.unlink(), True),
        ("JSON: schedule beta_end edited", ".json", edit_json(set_key("schedule.beta_end", 0.03)), True),
        ("JSON: schedule kind edited", ".json", edit_json(set_key("schedule.kind", "cosine")), True),
        ("JSON: num_train_timesteps edited", ".json", edit_json(set_key("schedule.num_train_timesteps", 500)), True),
        ("JSON: channels edited", ".json", edit_json(set_key("network_config.block_out_channels", [16, 32, 128])),
         True),
        ("JSON: channels huge", ".json", edit_json(set_key("network_config.block_out_channels", [10**6] * 3)), True),
        ("JSON: network renamed", ".json", edit_json(set_key("network", "GAN")), True),
        ("JSON: network removed", ".json", edit_json(lambda c: c.pop("network")), True),
        ("JSON: step edited", ".json", edit_json(set_key("step", 1)), True),
        ("JSON: NaN in the schedule", ".json",
         lambda p: p.write_text(p.read_text().replace('"beta_end": 0.02', '"beta_end": NaN')), True),
        ("JSON: description edited", ".json", edit_json(set_key("description", "renamed lesson")), False),
        ("JSON: metrics edited", ".json", edit_json(set_key("metrics.loss_last_100_steps", 0.5)), False),
    ]


def file_trials(campaign: Campaign) -> None:
    for name, suffix, damage, refuse in _damages():
        folder = campaign.work / "files" / name.replace(" ", "_").replace("/", "_")
        folder.mkdir(parents=True)
        for shipped in SHIPPED.glob("digits-ddpm.*"):
            shutil.copy(shipped, folder / shipped.name)
        target = folder / f"digits-ddpm{suffix}"
        damage(target)
        image = folder / "g.png"
        # through the command line
        status, _, err, seconds = run(cli("generate", "--checkpoint-dir", str(folder), "--out", str(image), "--steps",
                                          "2", "--num-images", "2", "--device", "cpu", "--no-progress"), timeout=120)
        if refuse:
            outcome, detail = classify_refusal(status, err, str(folder / "digits-ddpm"))
            if outcome == "refused" and image.exists():
                outcome, detail = "silently wrong", "refused but wrote the image"
        else:
            outcome = "success" if status == 0 and image.exists() else ("hung" if status is None else "unclear")
            detail = "" if outcome == "success" else err.strip()[-160:]
        campaign.add(Trial("files (CLI)", name, outcome, detail, round(seconds, 1)))
        # through the API
        code = ("from course_lib.pretrained import load_course_model\n"
                "try:\n"
                f"    load_course_model('digits-ddpm', directory={str(folder)!r})\n"
                "    print('LOADED')\n"
                "except ValueError as error:\n"
                "    print('REFUSED', type(error).__name__, error)\n")
        status, out, err, seconds = run([PYTHON, "-c", code], timeout=120)
        if status is None:
            outcome, detail = "hung", ""
        elif status != 0 or "Traceback" in err:
            outcome, detail = "unclear", (err.strip().splitlines() or [""])[-1][:160]
        elif out.startswith("LOADED"):
            outcome, detail = ("silently wrong", "loaded") if refuse else ("success", "")
        elif not refuse:
            outcome, detail = "unclear", out.strip()[:160]
        elif str(folder / "digits-ddpm") in out and " — " in out:
            outcome, detail = "refused", out.strip()[:160]
        else:
            outcome, detail = "unclear", out.strip()[:160]
        campaign.add(Trial("files (API)", name, outcome, detail, round(seconds, 1)))


# ---------------------------------------------------------------------------------------------
# 3. Training: kills, faults at every file operation, two Ctrl-C, a full disk; then --resume
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Runs the tiny recipe of TRAINER in child processes; compares resumed runs with a reference."""

    def __init__(self, work: Path, steps: int):
        work.mkdir(exist_ok=True)
        self.script = work / "trainer.py"
        self.script.write_text(TRAINER)
        self.steps = steps
        reference = work / "reference"
        reference.mkdir()
        status, _, err, _ = run(self.command(reference / "run", False), timeout=600)
        assert status == 0, err
        self.reference = self.digest(reference / "run")

    def command(self, out: Path, resume: bool) -> list[str]:
        return [PYTHON, str(self.script), str(out), str(self.steps), "resume" if resume else "new"]

    @staticmethod
    def digest(out: Path) -> tuple:
        """(weights, training-state tensors, losses) as bytes, to compare runs bit for bit."""
        from course_lib.checkpoints import load_checkpoint, load_training_state

        weights, config = load_checkpoint(out)
        state = load_training_state(out)
        as_bytes = lambda tensors: b"".join(tensors[k].numpy().tobytes() for k in sorted(tensors))  # noqa: E731
        return config["step"], as_bytes(weights), as_bytes(state.tensors)

    def resume_and_judge(self, out: Path) -> tuple[str, str]:
        """After a fault: resume to the end and compare with the reference: success or data lost."""
        from course_lib.checkpoints import checkpoint_files

        try:
            resume = checkpoint_files(out)["state"]
        except ValueError as error:
            return "data lost", f"unreadable after the fault: {error}"
        status, _, err, _ = run(self.command(out, resume), timeout=300)
        if status is None:
            return "hung", "the resume"
        if status != 0:
            return "data lost", f"--resume failed: {err.strip().splitlines()[-1][:160]}"
        if self.digest(out) != self.reference:
            return "data lost", "resumed, but not bit-identical to the uninterrupted run"
        return "success", ""


def training_trials(campaign: Campaign, kills: int) -> None:
    work = campaign.work / "train"
    work.mkdir()
    trainer = Trainer(work, steps=20)
    generator = random.Random(0)
    # random SIGKILLs, each followed by a resume that is itself killed again, until `kills` landed; a run of
    # 60 steps (killer.steps), started again from nothing once it has saved its last step
    killer = Trainer(work / "long", steps=60)
    out, landed = work / "killed" / "run", 0
    out.parent.mkdir()
    while landed < kills:
        from course_lib.checkpoints import checkpoint_files

        process = subprocess.Popen(killer.command(out, checkpoint_files(out)["state"]), cwd=REPO, env=ENV,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        process.stdout.readline()  # "training": the first step has begun (or the process ended)
        time.sleep(generator.uniform(0.0, 2.0))
        process.kill()
        _, err = process.communicate()
        if process.returncode == 0:  # it finished before the kill: start again to keep killing
            shutil.rmtree(out.parent)
            out.parent.mkdir()
            continue
        landed += 1
        if process.returncode != -signal.SIGKILL:  # it failed by itself: the resume of the last kill
            campaign.add(Trial("train: SIGKILL", f"kill {landed}", "data lost",
                               f"--resume failed: {err.strip().splitlines()[-1][:160]}"))
            continue
        mid_save = any(p.name.startswith(".") and not p.name.endswith(".lock") for p in out.parent.iterdir())
        try:
            step = killer.digest(out)[0] if checkpoint_files(out)["weights"] else None
            where = "before the first save" if step is None else f"{'mid-save' if mid_save else 'between saves'}, " \
                                                                f"step {step} readable"
            campaign.add(Trial("train: SIGKILL", f"kill {landed}", "success", where))
        except ValueError as error:
            campaign.add(Trial("train: SIGKILL", f"kill {landed}", "data lost", str(error)[:160]))
            continue
        if step == killer.steps:  # killed after its last save: judge this run, then start a new one
            outcome, detail = killer.resume_and_judge(out)
            campaign.add(Trial("train: SIGKILL", f"run ended by kill {landed}", outcome, detail))
            shutil.rmtree(out.parent)
            out.parent.mkdir()
    outcome, detail = killer.resume_and_judge(out)
    campaign.add(Trial("train: SIGKILL", "resume after the last kill", outcome, detail))
    # the fault-injection variable: exit at every write and rename of the second save, one by one
    per_save = 4 * 2 + 2 + 4 + 1
    for fault_at in range(per_save + 1, 2 * per_save + 1):
        out = work / f"fault{fault_at}" / "run"
        out.parent.mkdir()
        env = dict(ENV, COURSE_CHECKPOINT_FAULT_AT=str(fault_at))
        status, _, _, _ = run(trainer.command(out, False), timeout=300, env=env)
        outcome, detail = trainer.resume_and_judge(out) if status == 86 else ("unclear", f"exit status {status}")
        campaign.add(Trial("train: fault injection", f"exit at file operation {fault_at}", outcome, detail))
    # two Ctrl-C: the second at a random moment of the save the first one started
    for trial in range(5):
        out = work / f"sigint{trial}" / "run"
        out.parent.mkdir()
        process = subprocess.Popen(trainer.command(out, False), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        process.stdout.readline()  # "training"
        time.sleep(generator.uniform(0.3, 1.0))
        process.send_signal(signal.SIGINT)
        time.sleep(generator.uniform(0.0, 0.03))
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            campaign.add(Trial("train: two Ctrl-C", f"trial {trial}", "hung", ""))
            continue
        outcome, detail = trainer.resume_and_judge(out)
        campaign.add(Trial("train: two Ctrl-C", f"trial {trial} (exit {process.returncode})", outcome, detail))
    # a full disk: a 1 MiB tmpfs with room for one checkpoint and a half
    disk = work / "disk"
    disk.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode == 0:
        try:
            unit = sum(p.stat().st_size for p in (work / "reference").iterdir() if p.name.startswith("run."))
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            (disk / "filler").write_bytes(bytes(free - int(1.5 * unit)))
            status, _, err, _ = run(trainer.command(disk / "run", False), timeout=300)
            said = (err.strip().splitlines() or [""])[-1]
            full = "No space left on device" in err
            (disk / "filler").unlink()
            outcome, detail = trainer.resume_and_judge(disk / "run")
            campaign.add(Trial("train: full disk", "1 MiB tmpfs", outcome if full else "unclear",
                               f"{said[:120]}; resume: {detail or 'identical'}"))
        finally:
            subprocess.run(["umount", str(disk)])
    # the command line: training into the same checkpoint twice, interrupted and resumed
    out = work / "cli" / "digits-judge"
    out.parent.mkdir()
    common = ["--out", str(out), "--device", "cpu", "--no-progress", "--threads", "1"]
    run(cli("train", "digits-judge", "--steps", "2", *common), timeout=300)
    before = (out.parent / "digits-judge.safetensors").read_bytes()
    status, _, err, _ = run(cli("train", "digits-judge", "--steps", "4", *common), timeout=300)
    outcome, detail = classify_refusal(status, err, str(out))
    if (out.parent / "digits-judge.safetensors").read_bytes() != before:
        outcome, detail = "data lost", "the first run's weights were replaced"
    campaign.add(Trial("train: CLI", "second run into the same --out without --resume", outcome, detail))
    status, _, err, _ = run(cli("train", "digits-judge", "--steps", "4", "--resume", *common), timeout=300)
    campaign.add(Trial("train: CLI", "--resume", "success" if status == 0 else "unclear", err.strip()[-160:]))


def write_report(campaign: Campaign, path: str | None) -> None:
    counts = collections.Counter(trial.outcome for trial in campaign.trials)
    by_group = collections.defaultdict(collections.Counter)
    for trial in campaign.trials:
        by_group[trial.group][trial.outcome] += 1
    print(f"\n{len(campaign.trials)} trials: " + ", ".join(f"{counts[c]} {c}" for c in CLASSES))
    for group, group_counts in by_group.items():
        print(f"  {group:24s} " + ", ".join(f"{n} {c}" for c, n in group_counts.items()))
    for trial in campaign.trials:
        if trial.outcome not in ("refused", "success"):
            print(f"  ! [{trial.group}] {trial.name}: {trial.outcome} -- {trial.detail}")
    if path:  # without this machine's paths
        text = json.dumps({"counts": {c: counts[c] for c in CLASSES},
                           "trials": [trial.__dict__ for trial in campaign.trials]}, indent=1, ensure_ascii=False)
        Path(path).write_text(text.replace(str(campaign.work), "<work>").replace(str(REPO), "<repo>") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every trial and the counts here")
    parser.add_argument("--only", default="cli,files,train", help="comma-separated groups: cli, files, train")
    parser.add_argument("--kills", type=int, default=25, help="random SIGKILLs during training")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    groups = args.only.split(",")
    with tempfile.TemporaryDirectory() as folder:
        campaign = Campaign(Path(folder))
        try:
            if "cli" in groups:
                cli_trials(campaign)
            if "files" in groups:
                file_trials(campaign)
            if "train" in groups:
                training_trials(campaign, args.kills)
        finally:
            for mount in (Path(folder) / "cli" / "read-only",):
                if os.path.ismount(mount):
                    subprocess.run(["umount", str(mount)])
        write_report(campaign, args.json)


if __name__ == "__main__":
    main()
