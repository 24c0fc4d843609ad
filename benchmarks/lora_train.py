"""Teach the mini-SD "orange": LoRA on the UNet's attention plus a new token (or the whole UNet, to compare).

    .venv/bin/python benchmarks/lora_train.py --out /tmp/shapes-lora-orange [--mode lora|full] [options]

The prototype of the ``shapes-lora-orange`` recipe (issue 16, phase 1). Every weight of the
mini-SD is frozen except what is learned:

* ``--mode lora``: LoRA adapters (peft) of rank r on to_q, to_k, to_v, to_out.0 of every attn1
  and attn2, and the new word's embedding row (textual inversion);
* ``--mode full``: every UNet weight, and the new word's row (the comparison of lesson 11).

Data: orange circles and squares (``orange.orange_tensors``), their latents fitted to the
decoder (``orange.fit_latents``: the shipped VAE encodes orange as a reddish latent), mixed
with six-colour training pictures (replay) so that the model keeps what it knew. The loss is
the latent-diffusion eps-loss with caption dropout of the shapes-ldm recipe
(``losses.latent_diffusion_loss``). Each step's draws come from generators seeded by (seed, step).
Timed on one thread (``torch.set_num_threads(1)``); the JSON records data time and training time,
both as wall time and as the process's CPU time (what one idle core would take: on a machine
shared with other work the wall time is longer). ``--time-limit`` counts CPU seconds of training.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from course_lib.checkpoints import save_checkpoint
from course_lib.datasets import shapes_tensors
from course_lib.lora import AdapterConfig, add_lora, add_token, lora_parameters, mask_token_gradient, save_adapter
from course_lib.losses import latent_diffusion_loss
from course_lib.nn.text import encode_text, tokenize_prompts
from course_lib.orange import fit_latents, orange_tensors
from course_lib.pipeline import MINI_SD_CHECKPOINTS, StableDiffusion
from course_lib.recipes import encode_latents
from course_lib.runtime import step_generators


def build_data(pipe, tokenizer, args) -> dict:
    """Orange latents (fitted) with their token ids; replay latents with their frozen text states."""
    s = pipe.vae.config.scaling_factor
    orange, orange_captions, _ = orange_tensors(args.orange_images, seed=args.seed)
    mean, std = encode_latents(pipe.vae, orange)
    mean = fit_latents(pipe.vae, orange, mean, steps=args.fit_steps, lr=args.fit_lr)
    replay, replay_captions = shapes_tensors("train", num_images=args.replay_images, seed=args.seed)
    replay_mean, replay_std = encode_latents(pipe.vae, replay)
    with torch.no_grad():
        replay_states = encode_text(pipe.text_encoder, tokenize_prompts(tokenizer, replay_captions)["input_ids"])
        null_states = encode_text(pipe.text_encoder, tokenize_prompts(tokenizer, [""])["input_ids"])
    return {
        "orange_mean": s * mean, "orange_std": s * std,
        "orange_ids": tokenize_prompts(tokenizer, orange_captions)["input_ids"],
        "replay_mean": s * replay_mean, "replay_std": s * replay_std, "replay_states": replay_states,
        "null_states": null_states,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="checkpoint path X (writes X.safetensors, X.json)")
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA's (or the full UNet's) learning rate")
    parser.add_argument("--token-lr", type=float, default=1e-2, help="the new token row's learning rate")
    parser.add_argument("--replay-share", type=float, default=0.5, help="share of each batch from the six colours")
    parser.add_argument("--orange-images", type=int, default=600)
    parser.add_argument("--replay-images", type=int, default=2000)
    parser.add_argument("--fit-steps", type=int, default=10, help="Adam steps of orange.fit_latents (0: E(x))")
    parser.add_argument("--fit-lr", type=float, default=0.1)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many training seconds")
    args = parser.parse_args()
    torch.set_num_threads(1)

    clock, cpu_clock = time.perf_counter(), time.process_time()
    pipe = StableDiffusion.from_course("mini-sd")
    config = AdapterConfig(rank=args.rank, alpha=args.alpha)
    base_tokenizer = pipe.tokenizer
    tokenizer, token_id = add_token(base_tokenizer, pipe.text_encoder, config.token, config.init_words)
    data = build_data(pipe, tokenizer, args)
    data_seconds, data_cpu_seconds = time.perf_counter() - clock, time.process_time() - cpu_clock
    print(f"data: {data_seconds:.1f} s wall, {data_cpu_seconds:.1f} s CPU", flush=True)

    unet, text_encoder = pipe.unet, pipe.text_encoder
    if args.mode == "lora":
        add_lora(unet, config)
        trained = lora_parameters(unet)
    else:
        unet.requires_grad_(True)
        trained = list(unet.parameters())
    hook = mask_token_gradient(text_encoder, token_id)
    table = text_encoder.get_input_embeddings().weight
    optimizer = torch.optim.AdamW([{"params": trained, "lr": args.lr, "weight_decay": 0.0},
                                   {"params": [table], "lr": args.token_lr, "weight_decay": 0.0}])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    unet.train()
    batch_orange = round(args.batch_size * (1 - args.replay_share))
    batch_replay = args.batch_size - batch_orange
    losses, train_seconds, train_cpu_seconds, done = [], 0.0, 0.0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        index_generator, generator = step_generators(args.seed, step)
        orange_index = torch.randint(len(data["orange_ids"]), (batch_orange,), generator=index_generator)
        replay_index = torch.randint(len(data["replay_states"]), (batch_replay,), generator=index_generator)
        # tau(caption) of the orange captions, through the new row (the only trainable part of the encoder)
        orange_states = encode_text(text_encoder, data["orange_ids"][orange_index])
        batch = {
            "latent_mean": torch.cat([data["orange_mean"][orange_index], data["replay_mean"][replay_index]]),
            "latent_std": torch.cat([data["orange_std"][orange_index], data["replay_std"][replay_index]]),
            "text_states": torch.cat([orange_states, data["replay_states"][replay_index]]),
            "null_text_states": data["null_states"],
        }
        loss = latent_diffusion_loss(unet, batch, pipe.schedule, generator, caption_dropout=args.caption_dropout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        done = step + 1
        train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        if done % 25 == 0:
            print(f"step {done}: loss {sum(losses[-25:]) / 25:.4f}, {train_seconds:.0f} s wall, "
                  f"{train_cpu_seconds:.0f} s CPU", flush=True)
        if args.time_limit is not None and train_cpu_seconds > args.time_limit:
            break
    hook.remove()
    unet.eval()

    info = {
        "mode": args.mode, "step": done, "steps": args.steps, "training": vars(args),
        "data_time_s": round(data_seconds, 1), "train_time_s": round(train_seconds, 1),
        "total_time_s": round(data_seconds + train_seconds, 1),
        "data_cpu_time_s": round(data_cpu_seconds, 1), "train_cpu_time_s": round(train_cpu_seconds, 1),
        "total_cpu_time_s": round(data_cpu_seconds + train_cpu_seconds, 1), "threads": torch.get_num_threads(),
        "loss_last_50_steps": sum(losses[-50:]) / len(losses[-50:]),
        "trained_unet_parameters": sum(p.numel() for p in trained),
        "base": {"unet": MINI_SD_CHECKPOINTS["unet"], "text_encoder": MINI_SD_CHECKPOINTS["text_encoder"],
                 "vae": MINI_SD_CHECKPOINTS["vae"], "tokenizer": "shapes-tokenizer"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.mode == "lora":
        path = save_adapter(out, unet, config, text_encoder, token_id, base=info.pop("base"), info=info)
    else:
        tensors = {f"unet.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
        tensors["text_encoder.token_embedding"] = table[token_id:token_id + 1].detach().contiguous()
        path = save_checkpoint(out, tensors, {"kind": "full fine-tune", "adapter": config.to_dict(),
                                              "token_id": token_id, **info})
    info["file_bytes"] = path.stat().st_size
    print(json.dumps({k: v for k, v in info.items() if k != "training"}, indent=1), flush=True)


if __name__ == "__main__":
    main()
