"""Train the 7-colour judge (shapes-judge7) that grades lesson 11: the shapes-judge recipe with orange.

    .venv/bin/python benchmarks/lora_judge7.py [--out data/checkpoints/shapes-judge7]

The shapes judge's network (JudgeClassifier, channels 16, 32, 32, 32) and recipe settings (500
steps of batch 64, AdamW lr 2e-3, 30 warmup steps, cosine decay, seed 0), with 17 logits (3 shapes
+ 7 colours + 2 sizes + 5 positions), trained on the six-colour "all" split and 1,800 orange
pictures of all three shapes (``orange.extended_judge_data``), evaluated on pictures it never saw
(``orange.extended_judge_accuracy``). The judge may see orange triangles: only the model under
test must not. One thread; phase 2 registers this as the recipe shapes-judge7.
"""

import argparse
import dataclasses
import json

import torch

from course_lib.orange import (EXTENDED_JUDGE, EXTENDED_JUDGE_HEADS, extended_judge_accuracy, extended_judge_data,
                               extended_judge_loss)
from course_lib.recipes import RECIPES
from course_lib.train import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="checkpoint path (default: the checkpoint folder's shapes-judge7)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = RECIPES["shapes-judge"]
    recipe = dataclasses.replace(
        base, name=EXTENDED_JUDGE,
        description="the shapes judge with a seventh colour, orange (17 logits); grades lesson 11, never guides",
        network_config=dict(base.network_config_dict(), num_classes=sum(EXTENDED_JUDGE_HEADS.values())),
        data=extended_judge_data, loss=extended_judge_loss, evaluate=extended_judge_accuracy)
    result = train(recipe, out=args.out, progress=False,
                   command="python benchmarks/lora_judge7.py (one thread)")
    print(json.dumps(result.config["metrics"], indent=1))


if __name__ == "__main__":
    main()
