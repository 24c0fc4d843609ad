"""train() unchanged under torchrun: two processes (DistributedDataParallel, gloo on the CPU)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.checkpoints import load_checkpoint
from course_lib.networks import build_network

from _tiny import TINY

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow,  # starts two processes under torchrun
              pytest.mark.skipif(
                  not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                  reason="this torch has no torch.distributed with the gloo backend: several processes cannot train on the CPU",
              )]

# Run by each of the two processes: the tiny recipe of _tiny.py for 4 steps, then 2 steps and
# a resume to 4; each process writes a hash of its final weights and its loss history. The loss
# calls a method of the network, not model(...), as the VAE's loss calls model.encode and
# model.decode: DistributedDataParallel must average those gradients too.
SCRIPT = """
import hashlib, json, os, sys
from dataclasses import replace
sys.path.insert(0, {tests!r})
from _tiny import TINY
from course_lib.losses import eps_prediction_loss
from course_lib.train import train

def method_loss(model, batch, schedule, generator):
    return eps_prediction_loss(model.forward, batch, schedule, generator)

recipe = replace(TINY, loss=method_loss)
folder = sys.argv[1]
report = {{}}
for name, steps, resume in (("full", 4, False), ("split", 2, False), ("split", 4, True)):
    result = train(recipe, out=os.path.join(folder, name), steps=steps, resume=resume, progress=False)
    state = result.model.state_dict()
    weights = b"".join(state[key].numpy().tobytes() for key in sorted(state))
    report[name] = {{"step": result.step, "losses": result.losses, "sha256": hashlib.sha256(weights).hexdigest()}}
with open(os.path.join(folder, "rank" + os.environ["RANK"] + ".json"), "w") as file:
    json.dump(report, file)
"""


def _sha256(state_dict):
    return hashlib.sha256(b"".join(state_dict[key].numpy().tobytes() for key in sorted(state_dict))).hexdigest()


def test_two_processes_train_the_same_model_and_resume(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    folder = tmp_path / "runs"
    folder.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(folder)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # one checkpoint pair (and its training state) per run, written once: no copy per process, no temporary file
    assert sorted(path.name for path in folder.iterdir()) == [
        "full.json", "full.safetensors", "full.state.json", "full.state.safetensors", "rank0.json", "rank1.json",
        "split.json", "split.safetensors", "split.state.json", "split.state.safetensors",
    ]
    weights, config = load_checkpoint(folder / "full")
    assert config["step"] == 4 and config["processes"] == 2

    with torch.random.fork_rng(devices=[]):  # the initial weights, as train() builds them
        torch.manual_seed(TINY.seed)
        initial = build_network(TINY.network, TINY.network_config).state_dict()
    assert any(not torch.equal(initial[key], weights[key]) for key in weights)

    ranks = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]  # the same weights and the same (global) loss history on both processes
    full, split = ranks[0]["full"], ranks[0]["split"]
    assert full["sha256"] == _sha256(weights)  # rank 0 saved what both hold
    assert split["step"] == 4 and split["losses"] == full["losses"] and len(full["losses"]) == 4
    assert split["sha256"] == full["sha256"]  # 2 steps + resume to 4 = 4 steps, bit for bit
