"""The course's pipeline against diffusers' on the same components, on this CPU.

    .venv/bin/python benchmarks/cpu_pipeline_speed.py [--repeats 5] [--threads 1] [--out results.json]

SD v1.5's block structure at reduced width (three CrossAttnDownBlock2D + DownBlock2D, UpBlock2D +
three CrossAttnUpBlock2D, two ResNets per level, 8 heads), a four-level VAE (factor 8) and a CLIP
text encoder, all with random weights (no download). diffusers' StableDiffusionPipeline and the
course's StableDiffusion.from_diffusers(pipe) (the same weights) generate 4 images of 128x128 for
one prompt with 25 DDIM steps at guidance 7.5, alternately, ``--repeats`` times each, from the
same noise. Prints the median time of each and the ratio course / diffusers (target: at most 1.0),
and checks that the images agree.

diffusers is needed (``pip install -e ".[test]"``); the course's own code never imports it.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

UNET = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(64, 128, 128, 128), layers_per_block=2, norm_num_groups=32, cross_attention_dim=128,
    attention_head_dim=8,
)
VAE = dict(
    block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, sample_size=128,
    layers_per_block=1,
)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 clip_sample=False, set_alpha_to_one=False)


def _clip_tokenizer(folder: Path):
    """A tiny byte-level BPE CLIPTokenizer (a few words), written to folder: no download."""
    from transformers import CLIPTokenizer

    words = ["a", "red", "circle", "blue", "square", "in", "the", "center"]
    byte_chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab = {}
    for token in byte_chars + [c + "</w>" for c in byte_chars] + [w + "</w>" for w in words]:
        vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = ["#version: 0.2"]
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            merged = pieces[0] + pieces[1]
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def build_pair():
    import diffusers
    import transformers

    from course_lib.pipeline import StableDiffusion

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer(Path(tempfile.mkdtemp()))
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_attention_heads=4,
        num_hidden_layers=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    theirs = diffusers.StableDiffusionPipeline(
        unet=diffusers.UNet2DConditionModel(**UNET).eval(), vae=diffusers.AutoencoderKL(**VAE).eval(),
        text_encoder=text_encoder, tokenizer=tokenizer, scheduler=diffusers.DDIMScheduler(**SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    ours = StableDiffusion.from_diffusers(theirs)
    ours.set_progress_bar_config(disable=True)
    ours.unet.check_values = False  # the NaN check makes a GPU wait; keep both loops doing the same work
    ours.vae.check_values = False
    return theirs, ours


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    theirs, ours = build_pair()
    latents = torch.randn((args.images, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt="a red circle in the center", num_inference_steps=args.steps, guidance_scale=7.5,
                  num_images_per_prompt=args.images, latents=latents, output_type="np")

    def run_theirs():
        return theirs(**kwargs).images

    def run_ours():
        return ours(**kwargs)

    run_theirs(), run_ours()  # warm-up
    times = {"course": [], "diffusers": []}
    for _ in range(args.repeats):  # alternate, so a busy moment hits both
        for name, run in (("diffusers", run_theirs), ("course", run_ours)):
            start = time.perf_counter()
            images = run()
            times[name].append(time.perf_counter() - start)
            if name == "diffusers":
                reference = images
            else:
                difference = float(np.abs(images - reference).max())
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)",
        "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
        "images": args.images, "steps": args.steps, "guidance_scale": 7.5,
        "unet_parameters": sum(p.numel() for p in ours.unet.parameters()),
        "course_median_s": round(median["course"], 3), "diffusers_median_s": round(median["diffusers"], 3),
        "ratio_course_over_diffusers": round(median["course"] / median["diffusers"], 3),
        "max_abs_difference_of_images": difference,
        "all_times_s": {name: [round(v, 3) for v in values] for name, values in times.items()},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
