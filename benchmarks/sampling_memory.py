"""course_lib.limits' memory estimate against the peak resident memory measured on this machine.

For each size and part, a fresh process loads the mini-SD, warms up at the smallest size, resets
its peak resident set size (Linux: /proc/self/clear_refs) and runs the part once:

    unet      one UNet call on the batch of two (one image, classifier-free guidance)
    vae       decoding one image's latents
    pipeline  pipe(prompt, num_inference_steps=2): the whole request

and reports the peak above the resident memory before the call, next to the estimate (the part's
term plus the fixed overhead; the whole ``peak`` for the pipeline)::

    .venv/bin/python benchmarks/sampling_memory.py --sizes 256 512 1024 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PARTS = ("unet", "vae", "pipeline")


def _resident(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux.")


def measure(part: str, size: int, images: int, threads: int) -> dict:
    """In this process: the peak resident memory above the baseline of one part at one size."""
    import torch

    from course_lib import limits
    from course_lib.pipeline import StableDiffusion

    torch.set_num_threads(threads)
    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    f = pipe.vae_scale_factor
    prompt_embeds = torch.cat(pipe.encode_prompt(["a red circle"] * images))  # [c_uncond, c]

    def run(pixels: int) -> None:
        latents = torch.randn(2 * images, pipe.unet.config.in_channels, pixels // f, pixels // f)
        with torch.no_grad():
            if part == "unet":
                pipe.unet(latents, torch.tensor(500), encoder_hidden_states=prompt_embeds)
            elif part == "vae":
                pipe.vae.decode(latents[:images])
            else:
                pipe("a red circle", height=pixels, width=pixels, num_inference_steps=2,
                     num_images_per_prompt=images, output_type="np")

    run(pipe.size_multiple)  # warm up: libraries, oneDNN's kernels
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from the current resident size
    before = _resident("VmRSS")
    run(size)
    measured = _resident("VmHWM") - before
    estimate = limits.estimate_sampling_memory(pipe.unet.config, pipe.vae.config, height=size, width=size,
                                               batch_size=images)
    term = {"unet": estimate.unet, "vae": estimate.vae_decode}
    estimated = limits.OVERHEAD_BYTES + term[part] if part in term else estimate.peak
    return {"part": part, "size": size, "images": images, "threads": threads, "measured_bytes": measured,
            "estimated_bytes": estimated, "ratio": round(estimated / measured, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--worker", nargs=2, metavar=("PART", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args.images, args.threads)))
        return 0
    rows = []
    for size in args.sizes:
        for part in args.parts:
            command = [sys.executable, __file__, "--worker", part, str(size), "--images", str(args.images),
                       "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if not args.json:
                row = rows[-1]
                print(f"{part:8s} {size:5d} px x {args.images}: measured {row['measured_bytes'] / 2**20:8.1f} MiB, "
                      f"estimated {row['estimated_bytes'] / 2**20:8.1f} MiB, estimate / measured {row['ratio']:.2f}",
                      flush=True)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
