"""Measure the "orange" adapter (or a full fine-tune, or the base model) with the 7-colour judge.

    .venv/bin/python benchmarks/lora_eval.py --model PATH|base [--per-prompt 5] [--sets seen,triangles,six]

Sets of prompts (all full prompts, "a small orange circle in the top left"), sampled with 50 DDIM
steps at guidance 7.5 (``--steps``, ``--guidance``), read by the 7-colour judge (shapes-judge7):

- ``seen``: orange circles and squares, 20 prompts x ``--per-prompt`` pictures;
- ``triangles``: orange triangles (never trained on), 10 prompts x ``--triangle-per-prompt``;
- ``six``: the 160 six-colour prompts of seen pairs (``metrics.shapes_prompt_grid``), x ``--six-per-prompt``.

Each share comes with its 95 % Wilson interval. ``--model`` is an adapter checkpoint (kind "lora
adapter", loaded with ``lora.load_adapter``), a full fine-tune written by lora_train.py --mode full
(its UNet weights and token row), or ``base`` (the shipped mini-SD; it cannot be asked for orange).
"""

import argparse
import json
import time

import torch

from course_lib.checkpoints import load_checkpoint
from course_lib.lora import ADAPTER_KIND, add_token, load_adapter
from course_lib.metrics import shapes_prompt_grid
from course_lib.orange import EXTENDED_JUDGE, extended_judge_report, orange_prompt_grid
from course_lib.pipeline import StableDiffusion
from course_lib.pretrained import load_course_model


def load_model(pipe, model: str) -> str:
    """Put the adapter or the fine-tuned weights on the pipeline; return what was loaded."""
    if model == "base":
        return "base"
    tensors, info = load_checkpoint(model)
    if info.get("kind") == ADAPTER_KIND:
        loaded = load_adapter(pipe.unet, pipe.tokenizer, pipe.text_encoder, model)
        pipe.tokenizer = loaded.tokenizer
        return "lora"
    pipe.unet.load_state_dict({k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")})
    pipe.tokenizer, token_id = add_token(pipe.tokenizer, pipe.text_encoder, info["adapter"]["token"])
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[token_id] = tensors["text_encoder.token_embedding"][0]
    return info["kind"]


def sample(pipe, grid, steps, guidance, seed, batch=80):
    prompts = [w["prompt"] for w in grid]
    images = []
    for i in range(0, len(prompts), batch):
        generator = torch.Generator().manual_seed(seed + i)
        array = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance,
                     generator=generator, output_type="np")
        images.append(torch.from_numpy(array).permute(0, 3, 1, 2) * 2 - 1)
    return torch.cat(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sets", default="seen,triangles,six")
    parser.add_argument("--per-prompt", type=int, default=5)
    parser.add_argument("--triangle-per-prompt", type=int, default=10)
    parser.add_argument("--six-per-prompt", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--save-images", default=None, help="write the pictures (uint8) as a safetensors file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_course_model(EXTENDED_JUDGE)
    kind = load_model(pipe, args.model)
    grids = {"seen": orange_prompt_grid(("circle", "square")) * args.per_prompt,
             "triangles": orange_prompt_grid(("triangle",)) * args.triangle_per_prompt,
             "six": shapes_prompt_grid(False) * args.six_per_prompt}
    results = {"model": args.model, "kind": kind, "steps": args.steps, "guidance": args.guidance, "threads": 1}
    pictures = {}
    for name in args.sets.split(","):
        start = time.perf_counter()
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
