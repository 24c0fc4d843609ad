"""Train the "orange" adapter with the recipe, or the whole UNet on the same data (lesson 11's comparison).

    .venv/bin/python benchmarks/lora_train.py --mode lora|unet --out runs/NAME [--steps N]

Both run the course's training loop (``course_lib.train.train``) on the recipe ``shapes-lora-orange``:

* ``--mode lora``: the recipe as it is (``python -m course_lib train shapes-lora-orange`` does the
  same): LoRA of rank 4 on the UNet's attention projections, the new word's row, LoRA of rank 8
  on the VAE decoder's convolutions;
* ``--mode unet``: every UNet weight trained instead of the UNet's LoRA (``train_unet``), at the
  learning rate 3e-4, with the same word's row and decoder LoRA, data, steps and seed.

One thread. Prints and writes (``--json``) the wall and CPU time of the whole run (loading the
frozen models, preparing the data, training, saving), the trained parameters and the file's size;
benchmarks/lora_eval.py then measures what each one draws.
"""

import argparse
import dataclasses
import json
import os
import time

import torch

from course_lib.recipes import RECIPES
from course_lib.train import train

UNET_LR = 3e-4  # the whole UNet: the step of the earlier full fine-tune trial (full3, benchmarks/results/lora_orange_trials-*)


def recipe_for(mode: str):
    recipe = RECIPES["shapes-lora-orange"]
    if mode == "lora":
        return recipe
    config = dict(recipe.network_config_dict(), train_unet=True)
    return dataclasses.replace(recipe, name="shapes-unet-orange", network_config=config, lr=UNET_LR,
                               description="the whole mini-SD UNet fine-tuned on the orange data of "
                                           "shapes-lora-orange (lesson 11's comparison; not shipped)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("lora", "unet"), default="lora")
    parser.add_argument("--out", required=True, help="checkpoint path X (writes X.safetensors, X.json, X.state.*)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    recipe = recipe_for(args.mode)
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(recipe, out=args.out, steps=args.steps, overwrite=args.overwrite, progress=False,
                   command=f"python benchmarks/lora_train.py --mode {args.mode} (one thread)")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    weights = result.checkpoint
    measured = {
        "mode": args.mode, "recipe": recipe.name, "steps": result.step, "threads": torch.get_num_threads(),
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "train_loop_wall_s": result.config["train_time_s"],
        "trained_parameters": result.config["metrics"]["num_parameters"],
        "file_bytes": weights.stat().st_size, "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(v, 1) for v in os.getloadavg()],
        "loss_last_100_steps": result.config["metrics"]["loss_last_100_steps"],
    }
    print(json.dumps(measured, indent=1))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(measured, file, indent=1)


if __name__ == "__main__":
    main()
