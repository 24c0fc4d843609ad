"""Measure the "orange" adapter (or a whole-UNet fine-tune, or the base model) with the 7-colour judge.

    .venv/bin/python benchmarks/lora_eval.py --model PATH|base [--per-prompt 5] [--sets seen,triangles,six,decoder]

Sets of prompts (all full prompts, "a small orange circle in the top left"), sampled with 50 DDIM
steps at guidance 7.5 (``--steps``, ``--guidance``), read by the 7-colour judge (shapes-judge7):

- ``seen``: orange circles and squares, 20 prompts x ``--per-prompt`` pictures;
- ``triangles``: orange triangles (never trained on), 10 prompts x ``--triangle-per-prompt``;
- ``six``: the 160 six-colour prompts of seen pairs (``metrics.shapes_prompt_grid``), x ``--six-per-prompt``;
- ``decoder``: no sampling: 300 orange pictures of all three shapes (seed 1, never trained on)
  through the frozen encoder and the (adapted) decoder, z = mu + sigma eps; the judge's colour share.

Each share comes with its 95 % Wilson interval. ``--model`` is a checkpoint written by the recipe
shapes-lora-orange (``python -m course_lib train shapes-lora-orange``): an adapter, loaded with
``lora.load_adapter`` as ``pipe.load_lora`` does, or its whole-UNet variant (``train_unet``, see
benchmarks/lora_train.py), rebuilt as the training loop built it; or ``base`` (the shipped mini-SD,
which cannot be asked for orange). One thread.
"""

import argparse
import json
import time

import torch

from course_lib.checkpoints import load_checkpoint
from course_lib.lora import ADAPTER_NETWORK, load_adapter
from course_lib.metrics import shapes_prompt_grid
from course_lib.networks import build_network
from course_lib.orange import EXTENDED_JUDGE, ORANGE, extended_judge_report, orange_prompt_grid, orange_tensors
from course_lib.pipeline import StableDiffusion
from course_lib.pretrained import load_course_model
from course_lib.recipes import encode_latents


def load_model(pipe, model: str) -> str:
    """Put the adapter or the fine-tuned weights on the pipeline; return what was loaded."""
    if model == "base":
        return "base"
    tensors, info = load_checkpoint(model)
    if info.get("network") != ADAPTER_NETWORK:
        raise ValueError(f"{model} is not a checkpoint of the recipe shapes-lora-orange (network "
                         f"{info.get('network')!r}).")
    if not info["network_config"].get("train_unet"):
        pipe.tokenizer = load_adapter(pipe.unet, pipe.tokenizer, pipe.text_encoder, model, vae=pipe.vae).tokenizer
        return "lora"
    adapted = build_network(ADAPTER_NETWORK, info["network_config"])  # the frozen parts of the checkpoint folder
    adapted.load_state_dict(tensors)
    adapted.eval()
    pipe.unet, pipe.text_encoder, pipe.tokenizer = adapted.unet, adapted.text_encoder, adapted.tokenizer
    if adapted.vae is not None:
        pipe.vae = adapted.vae
    return "whole UNet"


def sample(pipe, grid, steps, guidance, seed, batch=80):
    prompts = [w["prompt"] for w in grid]
    images = []
    for i in range(0, len(prompts), batch):
        generator = torch.Generator().manual_seed(seed + i)
        array = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance,
                     generator=generator, output_type="np")
        images.append(torch.from_numpy(array).permute(0, 3, 1, 2) * 2 - 1)
    return torch.cat(images)


@torch.no_grad()
def decoder_round_trip(vae, seed: int = 1, count: int = 300):
    """Orange pictures of every shape through the encoder and the decoder: (pictures, wanted attributes)."""
    images, _, attributes = orange_tensors(count, seed=seed, shapes=("circle", "square", "triangle"))
    mean, std = encode_latents(vae, images)
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return vae.decode(z).clamp(-1, 1), attributes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sets", default="seen,triangles,six,decoder")
    parser.add_argument("--per-prompt", type=int, default=5)
    parser.add_argument("--triangle-per-prompt", type=int, default=10)
    parser.add_argument("--six-per-prompt", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--save-images", default=None, help="write the pictures (uint8) as a safetensors file")
    parser.add_argument("--train-json", default=None, help="the measurements of benchmarks/lora_train.py --json, "
                                                           "copied into --out as 'training'")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_course_model(EXTENDED_JUDGE)
    kind = load_model(pipe, args.model)
    grids = {"seen": orange_prompt_grid(("circle", "square")) * args.per_prompt,
             "triangles": orange_prompt_grid(("triangle",)) * args.triangle_per_prompt,
             "six": shapes_prompt_grid(False) * args.six_per_prompt}
    results = {"model": args.model, "kind": kind, "steps": args.steps, "guidance": args.guidance, "threads": 1,
               "seed": args.seed}
    if args.train_json:
        with open(args.train_json) as file:
            results["training"] = json.load(file)
    pictures = {}
    for name in args.sets.split(","):
        start = time.perf_counter()
        if name == "decoder":
            images, wanted = decoder_round_trip(pipe.vae)
            report = extended_judge_report(judge, images, wanted)
            report = {"color": report["color"], "color_interval": report["color_interval"], "count": report["count"],
                      "what": f"{ORANGE} pictures (seed 1) through the encoder and the decoder"}
        else:
            images = sample(pipe, grids[name], args.steps, args.guidance, args.seed)
            report = extended_judge_report(judge, images, grids[name])
        report["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = report
        pictures[name] = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        print(f"{name}: {json.dumps(report)}", flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)
    if args.save_images:
        from safetensors.torch import save_file

        save_file(pictures, args.save_images)


if __name__ == "__main__":
    main()
