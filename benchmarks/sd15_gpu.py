"""Stable Diffusion v1.5 on one GPU: the course's loop against diffusers', eager and fast (issue 6).

    python benchmarks/sd15_gpu.py                                   # on a CUDA machine, ~8 minutes
    python benchmarks/sd15_gpu.py --size tiny --device cpu --steps 2   # the same code on a CPU, seconds

SD v1.5's architecture with random weights (no download: ``StableDiffusion.with_random_weights``),
512x512, 50 DDIM steps, guidance 7.5 (a UNet batch of two per image), float16 (the VAE too, as
diffusers' SD pipeline runs it). diffusers' ``StableDiffusionPipeline`` gets the very same weights
(loaded by key) and the same text encoder.
In one process, on one GPU, in this order (most important first; a measurement that would not
fit in ``--budget-s`` is skipped and says so; the JSON is rewritten after each one, so a run that
is stopped keeps what it measured):

1. one UNet forward of each in float16 on the same inputs: ``unet_max_abs_diff_fp16``;
2. eager, 1 image per prompt: ``course_eager_s_per_image``, ``diffusers_eager_s_per_image``;
3. fast, 1 image: the course's ``pipe.optimize()`` (``course_fast_s_per_image``) against diffusers
   given the same treatment as its documentation shows (channels_last, ``fuse_qkv_projections``,
   ``torch.compile`` of the UNet and of ``vae.decode`` in the same mode):
   ``diffusers_compiled_s_per_image``; the first call's compile time of each;
4. a guidance sweep, 4 scales for one prompt in one batched call against 4 single calls
   (``sweep_ratio`` = batched / four single; fast mode);
5. the same as 2 and 3 with 4 images per prompt;
6. the technique ladder of lesson 10, 1 image each: float32, float16, no value checks,
   channels_last, fused projections, then optimize() (compiled, CUDA graphs).

Times are the median of ``--repeats`` calls after a warm-up call, wall clock around
``torch.cuda.synchronize()``, ``output_type="np"`` (the images reach the host). Peak memory is
``torch.cuda.max_memory_allocated``. Model FLOP utilisation: FLOPs per image counted by
``course_lib.profiling.count_flops`` (50 UNet passes at batch 2 + one VAE decode) divided by the
time per image and by the GPU's dense float16 peak (989 TFLOP/s for an H100 SXM or an H200).

Results: ``<out>/<gpu>-<date>.json`` (default out: benchmarks/results). diffusers must be
importable (pip install -e ".[test]", or carried as a wheel); the course's code never imports it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.profiling import count_flops  # noqa: E402
from course_lib.pipeline import SD_SCHEDULER_CONFIG, StableDiffusion  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"
SWEEP = [1.5, 3.0, 7.5, 12.0]
# dense float16/bfloat16 tensor-core peak, TFLOP/s (no sparsity), by a substring of the GPU's name
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10": 125.0, "4090": 165.2}


class Bench:
    """The run's settings, its clock and its results; the results file is rewritten after each step."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if args.dtype == "float16" else torch.float32
        self.start = time.perf_counter()
        name = torch.cuda.get_device_name(self.device) if self.cuda else platform.processor() or "cpu"
        self.results = {
            "gpu": name, "torch": torch.__version__, "diffusers": None, "transformers": None,
            "date": datetime.date.today().isoformat(), "architecture": args.size, "steps": args.steps,
            "height": args.height, "width": args.height, "guidance_scale": 7.5, "dtype": args.dtype,
            "repeats": args.repeats, "skipped": {}, "errors": {},
        }
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "device"
        self.path = Path(args.out) / f"{slug}-{self.results['date']}{'-' + args.size if args.size != 'sd15' else ''}.json"

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=2) + "\n")
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file

    def step(self, name: str, needs_s: float, fn) -> None:
        """Run fn() if about needs_s seconds are left; record an error instead of stopping."""
        if self.left() < needs_s:
            self.results["skipped"][name] = f"{self.left():.0f} s left of the budget, about {needs_s:.0f} s needed"
            print(f"[skip] {name}: {self.results['skipped'][name]}", flush=True)
        else:
            began = time.perf_counter()
            print(f"[....] {name}", flush=True)
            try:
                fn()
            except Exception as error:  # noqa: BLE001 - one failed measurement must not lose the others
                self.results["errors"][name] = f"{type(error).__name__}: {error}"[:2000]
                print(f"[fail] {name}: {self.results['errors'][name]}", flush=True)
            print(f"[done] {name} in {time.perf_counter() - began:.1f} s", flush=True)
        self.save()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_call(self, call, repeats: int | None = None) -> dict:
        """Warm-up call (timed apart: it holds any compiling), then the median of ``repeats`` calls."""
        repeats = self.args.repeats if repeats is None else repeats
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        began = time.perf_counter()
        call()
        self.sync()
        first = time.perf_counter() - began
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            call()
            self.sync()
            times.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None
        return {"first_call_s": round(first, 4), "median_s": round(statistics.median(times), 4),
                "times_s": [round(t, 4) for t in times], "peak_memory_gib": peak and round(peak, 3)}


def run_ours(bench, pipe, images: int = 1, guidance_scale=7.5):
    def call():
        return pipe(PROMPT, num_inference_steps=bench.args.steps, guidance_scale=guidance_scale,
                    num_images_per_prompt=images, height=bench.args.height, width=bench.args.height,
                    generator=torch.Generator().manual_seed(0), output_type="np")
    return call


def run_diffusers(bench, pipe, images: int = 1):
    def call():
        return pipe(PROMPT, num_inference_steps=bench.args.steps, guidance_scale=7.5, num_images_per_prompt=images,
                    height=bench.args.height, width=bench.args.height, generator=torch.Generator().manual_seed(0),
                    output_type="np").images
    return call


def diffusers_copy(diffusers, ours: StableDiffusion, device, dtype):
    """diffusers' pipeline with the same weights (loaded by key) and the same tokenizer and text encoder."""
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel.from_config(ours.unet.config.to_dict())
        vae = diffusers.AutoencoderKL.from_config(ours.vae.config.to_dict())
    unet.load_state_dict(ours.unet.state_dict())
    vae.load_state_dict(ours.vae.state_dict())
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet.to(dtype).eval(), vae=vae.to(dtype).eval(), text_encoder=ours.text_encoder, tokenizer=ours.tokenizer,
        scheduler=diffusers.DDIMScheduler.from_config(SD_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flops_per_image(bench, pipe: StableDiffusion) -> dict:
    """FLOPs of one image: steps x one UNet pass at batch 2 + one VAE decode (counted on the meta device)."""
    meta = StableDiffusion.with_random_weights(bench.args.size, device="meta")
    h = bench.args.height // meta.vae_scale_factor
    latents = torch.zeros(2, 4, h, h, device="meta")
    context = torch.zeros(2, 77, meta.text_encoder.config.hidden_size, device="meta")
    unet = count_flops(meta.unet, latents, torch.tensor([500, 500], device="meta"), encoder_hidden_states=context)
    vae = count_flops(meta.vae.decode, latents[:1])
    return {"unet_batch2_flops": unet, "vae_decode_flops": vae, "per_image_flops": bench.args.steps * unet + vae}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["sd15", "tiny"], default="sd15", help="architecture (tiny: for a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float16", "float32"], default=None,
                        help="default: float16 on CUDA, float32 on a CPU")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--height", type=int, default=None, help="default: 512 (sd15), 64 (tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip what would not fit in this many seconds")
    parser.add_argument("--compile", choices=["auto", "yes", "no"], default="auto", help="auto: on CUDA only")
    parser.add_argument("--compile-backend", default="inductor", help="'eager' traces without code generation (CPU tests)")
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--no-diffusers", action="store_true", help="time the course's pipeline alone")
    args = parser.parse_args(argv)
    args.height = args.height or (512 if args.size == "sd15" else 64)
    args.dtype = args.dtype or ("float16" if torch.device(args.device).type == "cuda" else "float32")
    bench = Bench(args)
    results = bench.results
    compile_on = args.compile == "yes" or (args.compile == "auto" and bench.cuda)
    compile_kwargs = {"mode": args.compile_mode if args.compile_backend == "inductor" else None,
                      "backend": args.compile_backend, "fullgraph": True}
    import transformers
    results["transformers"] = transformers.__version__
    diffusers = None
    if not args.no_diffusers:
        import diffusers
        results["diffusers"] = diffusers.__version__
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 rows mean float32

    def build():
        """The course's pipeline and diffusers' copy of it, with the same weights (the same seed each time)."""
        ours = StableDiffusion.with_random_weights(args.size, device=args.device, dtype=bench.dtype)
        # the VAE decodes in the pipeline's dtype, as in diffusers' StableDiffusionPipeline: the same work
        ours.set_progress_bar_config(disable=True)
        return ours, diffusers_copy(diffusers, ours, args.device, bench.dtype) if diffusers else None

    began = time.perf_counter()
    ours, theirs = build()
    results["build_s"] = round(time.perf_counter() - began, 2)
    results["vae_dtype"] = str(next(ours.vae.parameters()).dtype)
    results.update(flops_per_image(bench, ours))
    peak = next((value for key, value in PEAK_TFLOPS.items() if key in results["gpu"]), None) if bench.cuda else None
    results["peak_tflops"] = peak

    def per_image(timing: dict, images: int) -> float:
        return round(timing["median_s"] / images, 4)

    def utilisation(seconds_per_image: float) -> dict:
        achieved = results["per_image_flops"] / seconds_per_image / 1e12
        return {"achieved_tflops": round(achieved, 1), "mfu": round(achieved / peak, 3) if peak else None}

    # 1. one UNet forward, same weights, same inputs
    def unet_diff():
        h = args.height // ours.vae_scale_factor
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, h, h, generator=g).to(args.device, bench.dtype)
        c = torch.randn(2, 77, ours.text_encoder.config.hidden_size, generator=g).to(args.device, bench.dtype)
        t = torch.tensor([500, 500], device=args.device)
        with torch.no_grad():
            a = ours.unet(x, t, encoder_hidden_states=c).float()
            b = theirs.unet(x, t, encoder_hidden_states=c).sample.float()
        results["unet_max_abs_diff_fp16" if bench.dtype == torch.float16 else "unet_max_abs_diff_fp32"] = \
            float((a - b).abs().max())
        results["unet_output_abs_mean"] = float(b.abs().mean())
    if theirs is not None:
        bench.step("unet_diff", 20, unet_diff)

    # 2. eager, 1 image
    images_seen = {}  # the eager images, to compare the fast ones with
    eager_s = 12 * args.steps / 50 * (args.repeats + 1) if bench.cuda else 0

    def eager(images: int):
        def measure():
            timing = bench.time_call(run_ours(bench, ours, images))
            results[f"course_eager_{images}img"] = timing
            key = "course_eager_s_per_image" if images == 1 else f"course_eager_s_per_image_{images}img"
            results[key] = per_image(timing, images)
            if theirs is not None:
                timing = bench.time_call(run_diffusers(bench, theirs, images))
                results[f"diffusers_eager_{images}img"] = timing
                key = "diffusers_eager_s_per_image" if images == 1 else f"diffusers_eager_s_per_image_{images}img"
                results[key] = per_image(timing, images)
                theirs_image = run_diffusers(bench, theirs, images)()
                images_seen[f"diffusers_eager_{images}"] = theirs_image
            ours_image = run_ours(bench, ours, images)()
            images_seen[f"course_eager_{images}"] = ours_image
            if theirs is not None:
                results[f"image_max_abs_diff_eager_{images}img"] = float(abs(ours_image - theirs_image).max())
        return measure
    bench.step("eager_1img", eager_s, eager(1))

    # 3. fast, 1 image: the course's optimize() against diffusers given the same treatment
    state = {}

    def make_fast():
        began = time.perf_counter()
        ours.optimize(dtype=None, compile=compile_on, compile_mode=compile_kwargs["mode"],
                      compile_options={"backend": args.compile_backend})
        results["course_fast_settings"] = ours.fast
        state["ours_fast"] = True
        if theirs is not None:
            theirs.unet.to(memory_format=torch.channels_last)
            theirs.vae.to(memory_format=torch.channels_last)
            theirs.fuse_qkv_projections()
            if compile_on:
                theirs.unet = torch.compile(theirs.unet, **compile_kwargs)
                theirs.vae.decode = torch.compile(theirs.vae.decode, **{**compile_kwargs, "mode": None})
            results["diffusers_compiled_settings"] = {"channels_last": True, "fuse_qkv_projections": True,
                                                      "compile": compile_on, **(compile_kwargs if compile_on else {})}
        results["fast_setup_s"] = round(time.perf_counter() - began, 2)

    def fast(images: int):
        def measure():
            if not state.get("ours_fast"):
                make_fast()
            timing = bench.time_call(run_ours(bench, ours, images))
            results[f"course_fast_{images}img"] = timing
            key = "course_fast_s_per_image" if images == 1 else f"course_fast_s_per_image_{images}img"
            results[key] = per_image(timing, images)
            results[f"course_fast_{images}img"].update(utilisation(results[key]))
            if f"course_eager_{images}" in images_seen:  # the fast mode changes rounding only
                results[f"course_fast_vs_eager_image_max_abs_diff_{images}img"] = float(
                    abs(run_ours(bench, ours, images)() - images_seen[f"course_eager_{images}"]).max())
            if theirs is not None:
                timing = bench.time_call(run_diffusers(bench, theirs, images))
                results[f"diffusers_compiled_{images}img"] = timing
                key = "diffusers_compiled_s_per_image" if images == 1 else f"diffusers_compiled_s_per_image_{images}img"
                results[key] = per_image(timing, images)
                results[f"diffusers_compiled_{images}img"].update(utilisation(results[key]))
                if f"diffusers_eager_{images}" in images_seen:
                    results[f"diffusers_compiled_vs_eager_image_max_abs_diff_{images}img"] = float(
                        abs(run_diffusers(bench, theirs, images)() - images_seen[f"diffusers_eager_{images}"]).max())
        return measure
    compile_s = 150 if compile_on and bench.cuda else 0
    bench.step("fast_1img", compile_s + eager_s / 2, fast(1))
    for key in ("course_eager_s_per_image", "diffusers_eager_s_per_image"):
        if key in results:
            results[key.replace("_s_per_image", "_utilisation")] = utilisation(results[key])

    # 4. guidance sweep: 4 scales batched (one call, UNet batch 8) against 4 single calls
    def sweep():
        batched = bench.time_call(run_ours(bench, ours, 1, guidance_scale=SWEEP))
        singles = [bench.time_call(run_ours(bench, ours, 1, guidance_scale=scale), repeats=1) for scale in SWEEP]
        four = sum(timing["median_s"] for timing in singles)
        results["sweep"] = {"scales": SWEEP, "batched_s": batched["median_s"], "four_single_s": round(four, 4),
                            "batched_first_call_s": batched["first_call_s"], "mode": "fast" if state else "eager"}
        results["sweep_ratio"] = round(batched["median_s"] / four, 3)
    bench.step("sweep", compile_s / 2 + eager_s, sweep)

    # 5. 4 images per prompt, fast then eager (eager needs the eager modules: rebuilt from the same seed)
    bench.step("fast_4img", compile_s + 2 * eager_s, fast(4))

    def eager_again(images: int):
        def measure():
            nonlocal ours, theirs
            torch._dynamo.reset()
            del ours, theirs
            if bench.cuda:
                torch.cuda.empty_cache()
            ours, theirs = build()
            state.clear()
            eager(images)()
        return measure
    bench.step("eager_4img", 4 * eager_s + 30, eager_again(4))

    # 6. the ladder of lesson 10, 1 image each, on a freshly built pipeline
    def ladder():
        nonlocal ours
        torch._dynamo.reset()
        rows = []
        pipe = StableDiffusion.with_random_weights(args.size, device=args.device, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)

        def row(name: str):
            timing = bench.time_call(run_ours(bench, pipe, 1), repeats=max(1, args.repeats - 1))
            rows.append({"technique": name, "s_per_image": timing["median_s"], "first_call_s": timing["first_call_s"],
                         "peak_memory_gib": timing["peak_memory_gib"]})
            results["ladder"] = rows
            bench.save()
        row("eager, float32")
        pipe.to(bench.dtype)
        row(f"eager, {args.dtype}")
        pipe.unet.check_values = pipe.vae.check_values = False
        row("+ no value checks (no host sync per step)")
        pipe.optimize(dtype=None, channels_last=True, fuse_projections=False, compile=False)
        row("+ channels_last")
        pipe.optimize(dtype=None, channels_last=True, fuse_projections=True, compile=False)
        row("+ fused QKV projections")
        if compile_on:
            pipe.optimize(dtype=None, compile=True, compile_mode=compile_kwargs["mode"],
                          compile_options={"backend": args.compile_backend})
            row(f"+ torch.compile ({compile_kwargs['mode']}), VAE decoder compiled")
        ours = pipe
    bench.step("ladder", 6 * eager_s + compile_s, ladder)

    results["total_s"] = round(time.perf_counter() - bench.start, 1)
    bench.save()
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (dict, list))}, indent=1))
    print(f"results: {bench.path}")
    return results


if __name__ == "__main__":
    main()
