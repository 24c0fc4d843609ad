"""The command line: ``python -m course_lib info | train | generate``.

    python -m course_lib info                       # versions, device, checkpoints present
    python -m course_lib train digits-ddpm [--out PATH] [--resume | --overwrite] [--steps N]
        [--device auto|cpu|cuda] [--threads N] [--checkpoint-dir DIR]      # default output: runs/digits-ddpm
    python -m course_lib generate --model digits [--label L] [--guidance none|cfg|classifier]
        [--guidance-scale S] [--steps 50] [--sampler ddim] [--seed 0] [--num-images 16] [--device auto]
        [--threads N] (--out grid.png | --out-dir DIR)
    python -m course_lib generate --model mini-sd --prompt "a large red circle in the center"
        [--negative-prompt TEXT] [--guidance-scale 7.5] [--steps 50] [--sampler ddim|ddpm|euler|dpmsolver]
        [--seed 0] [--num-images 16] [--height 64 --width 64] [--lora orange|PATH] [--device auto] [--threads N]
        (--out grid.png | --out-dir DIR)

Every error prints one line, ``error: <path>: <what is wrong> — <what to do>`` (no path part when
no file is concerned), and exits with status 1, without a traceback: bad arguments, missing,
truncated or corrupt files, invalid JSON, an output that cannot be written, a full disk. Output
paths are checked before any model loads. Ctrl-C exits with status 130 (train saves first).
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import os
import platform
import re
import shlex
import sys
import warnings
from pathlib import Path

import torch

from . import __version__
from .checkpoints import read_config
from .checks import check_choice, check_int_range, check_number, check_output_file, check_output_folder
from .files import atomic_write
from .guidance import cfg_denoiser, classifier_guided_denoiser
from .limits import check_sampling_request
from .lora import adapter_path
from .nn.unet import UNetConfig
from .nn.vae import VAEConfig
from .pipeline import StableDiffusion
from .pretrained import available_checkpoints, checkpoint_dir, load_course_model
from .recipes import RECIPES
from .runtime import resolve_device
from .samplers import SAMPLER_NAMES, make_sampler, randn_tensor, sample_loop
from .schedules import make_schedule
from .train import train
from .viz import grid_image, to_pil

MODELS = ("digits", "mini-sd")
GUIDANCE = ("none", "cfg", "classifier")
# (model, guidance) -> the checkpoints it needs
NEEDED_CHECKPOINTS = {
    ("digits", "none"): ("digits-ddpm",),
    ("digits", "cfg"): ("digits-cfg",),
    ("digits", "classifier"): ("digits-ddpm", "digits-noisy-classifier"),
    ("mini-sd", "cfg"): ("shapes-vae", "shapes-clip", "shapes-ldm"),
    ("mini-sd", "none"): ("shapes-vae", "shapes-clip", "shapes-ldm"),
}
# the default guidance scale of each method (lessons 04-05 measure these choices)
DEFAULT_GUIDANCE_SCALE = {"cfg": 3.0, "classifier": 5.0}
MINI_SD_GUIDANCE_SCALE = 7.5  # Stable Diffusion's usual guidance_scale
DISPLAY_SIZE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels
# image files --out may name (what PIL writes); --out-dir writes PNGs
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# generate's default --threads: measured on a 2-core CPU (README, "The command line")
GENERATE_THREADS = 1
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2^64 - 1


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _device_report() -> str:
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"CUDA ({names}; CUDA {torch.version.cuda})"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "MPS (Apple GPU)"
    return "CPU (no CUDA or MPS GPU found; everything in the course runs on the CPU)"


def run_info(args) -> int:
    folder = Path(args.checkpoint_dir) if args.checkpoint_dir else checkpoint_dir()
    lines = [
        f"course_lib    {__version__}",
        f"python        {platform.python_version()}",
        f"torch         {torch.__version__}",
        f"transformers  {_version('transformers')}",
        f"diffusers     {_version('diffusers')} (optional, used by the tests only)",
        f"datasets      {_version('datasets')}",
        f"device        {_device_report()}",
        f"checkpoints   {folder}",
    ]
    names = available_checkpoints(folder)
    for name in names:
        try:
            config = read_config(folder / f"{name}.json")
            loss = (config.get("metrics") or {}).get("loss_last_100_steps")
            details = f"step {config.get('step')}, {config.get('train_time_s')} s" + (
                f", loss {loss:.4f}" if isinstance(loss, float) else "")
        except ValueError as error:
            details = f"unreadable: {error}"
        lines.append(f"  {name:<20} {details}")
    missing = sorted(set(RECIPES) - set(names))
    if missing:
        lines.append("  not present: " + ", ".join(missing) + " (make one with: python -m course_lib train NAME)")
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def run_train(args, argv: list[str]) -> int:
    check_choice(args.recipe, list(RECIPES), "recipe")
    if args.threads is not None:
        # On a shared or small CPU, one or two threads are often faster than torch's default.
        torch.set_num_threads(check_int_range(args.threads, "--threads", 1, 1024))
    out = args.out
    if out is None and args.checkpoint_dir:
        out = Path(args.checkpoint_dir) / args.recipe
    # under torchrun (several processes, DistributedDataParallel), every process runs this function
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node={processes} -m course_lib " if processes > 1 else "python -m course_lib "
    result = train(args.recipe, out=out, steps=args.steps, resume=args.resume, overwrite=args.overwrite,
                   device=args.device, progress=not args.no_progress, command=launcher + shlex.join(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        loss = result.config["metrics"]["loss_last_100_steps"]
        print(f"{args.recipe}: step {result.step}, loss (last 100 steps) {loss:.4f}, "
              f"{result.config['train_time_s']} s of training; wrote {result.checkpoint} and its .json")
    return 0


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def _check_generate_args(args) -> None:
    if (args.out is None) == (args.out_dir is None):
        raise ValueError("Give exactly one of --out grid.png (one grid image) or --out-dir DIR (000.png, 001.png, ...).")
    check_choice(args.model, MODELS, "model")
    if args.guidance is None:  # the default: classifier-free guidance for mini-sd, none for digits
        args.guidance = "cfg" if args.model == "mini-sd" else "none"
    check_choice(args.guidance, GUIDANCE, "guidance")
    check_choice(args.sampler, SAMPLER_NAMES, "sampler")
    check_int_range(args.steps, "--steps", 1, 1000, hint="Use 20 to 50 sampling steps.")
    check_int_range(args.num_images, "--num-images", 1, 1024)
    check_int_range(args.seed, "--seed", 0, SEED_MAX, hint="A seed is a whole number from 0 to 2^64 - 1.")
    if args.threads is not None:
        check_int_range(args.threads, "--threads", 1, 1024)
    # the output first: a path that cannot be written fails now, not after the sampling
    if args.out is not None:
        check_output_file(args.out, IMAGE_SUFFIXES)
    else:
        check_output_folder(args.out_dir, create=True)
    if args.guidance_scale is not None:
        check_number(args.guidance_scale, "--guidance-scale", minimum=0.0,
                     hint="Guidance scales are 0 or more: 1 means no classifier-free guidance, 0 no classifier guidance.")
    if args.model == "mini-sd":
        _check_mini_sd_args(args)
        return
    if args.prompt is not None or args.negative_prompt is not None:
        raise ValueError("--prompt and --negative-prompt are for --model mini-sd; the digits model takes --label.")
    if args.lora is not None:
        raise ValueError("--lora is for --model mini-sd: its adapters (lesson 11) adapt the mini Stable Diffusion's "
                         "UNet and text encoder. Leave it out for the digits model.")
    if args.height is not None or args.width is not None:
        raise ValueError("--height and --width are for --model mini-sd; the digits model makes 16x16 images.")
    if args.guidance == "none":
        if args.label is not None:
            raise ValueError(
                "--label needs guidance: the unconditional model 'digits-ddpm' (--guidance none) cannot be told "
                "which digit to draw. Add --guidance cfg (classifier-free, lesson 05) or --guidance classifier "
                "(lesson 04), or leave out --label."
            )
        if args.guidance_scale is not None:
            raise ValueError("--guidance-scale has no effect with --guidance none. Leave it out, or choose a guidance.")
    elif args.label is not None:
        check_int_range(args.label, "--label", 0, 9, hint="The digits model knows the classes 0 to 9.")


def _check_mini_sd_args(args) -> None:
    if args.prompt is None:
        raise ValueError('--model mini-sd needs a prompt: add --prompt "a large red circle in the center".')
    if args.label is not None:
        raise ValueError("--label is for --model digits; the mini Stable Diffusion takes --prompt.")
    if args.guidance == "classifier":
        raise ValueError("--model mini-sd has no noise-aware classifier: it uses classifier-free guidance "
                         "(--guidance cfg, the default). Set its strength with --guidance-scale (1 = no guidance).")
    if args.guidance == "none":
        if args.guidance_scale is not None:
            raise ValueError("--guidance-scale has no effect with --guidance none. Leave it out, or choose a guidance.")
        if args.negative_prompt is not None:
            raise ValueError("--negative-prompt needs guidance: it replaces the empty prompt in the unconditional "
                             "branch of classifier-free guidance. Leave out --guidance none.")
    for value, name in ((args.height, "--height"), (args.width, "--width")):
        if value is not None:
            check_int_range(value, name, 8, 4096, hint="The mini Stable Diffusion was trained on 64x64 images.")
    if args.lora is not None:  # an unknown name fails now, listing the adapters there, before any model loads
        adapter_path(args.lora, args.checkpoint_dir)


def _save_image(image, path: Path) -> None:
    """Write a PIL image atomically: a file that is there is complete (the format from the name's suffix)."""
    image_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        path.suffix.lower(), path.suffix[1:].upper())
    atomic_write(path, lambda temporary: image.save(temporary, format=image_format))


def _save_images(args, images: torch.Tensor, scale: int) -> Path:
    """Write (N, C, H, W) images in [-1, 1] as one grid (--out) or one PNG each (--out-dir); return the path."""
    if args.out is not None:
        path = Path(args.out)
        _save_image(grid_image(images, scale=scale), path)
        return path
    folder = Path(args.out_dir)
    for index, image in enumerate(images):
        _save_image(to_pil(image, scale=scale), folder / f"{index:03d}.png")
    return folder


def _generate_mini_sd(args, device: torch.device) -> int:
    """--model mini-sd: the course's StableDiffusion pipeline (lesson 08) on the mini SD checkpoints."""
    pipe = StableDiffusion.from_course("mini-sd", directory=args.checkpoint_dir, device=device)
    pipe.set_progress_bar_config(disable=args.no_progress)
    if args.lora is not None:  # a name ("orange") in the checkpoint folder, or a path; an unknown name lists them
        pipe.load_lora(args.lora)
    if args.guidance == "none":
        scale = 1.0  # the conditional model alone
    else:
        scale = MINI_SD_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
    # a CPU generator: the same seed gives the same images on every device
    generator = torch.Generator().manual_seed(args.seed)
    with warnings.catch_warnings(record=True) as caught:  # unknown or truncated words: one line each
        warnings.simplefilter("always")
        images = pipe(args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                      num_inference_steps=args.steps, guidance_scale=scale, sampler=args.sampler,
                      generator=generator, num_images_per_prompt=args.num_images, output_type="np")
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    # (N, H, W, 3) in [0, 1] -> (N, 3, H, W) in [-1, 1]
    images = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    path = _save_images(args, images, scale=max(1, DISPLAY_SIZE // max(images.shape[-2:])))
    guidance = "no guidance" if scale <= 1 else f"guidance scale {scale:g}"
    negative = f", negative prompt {args.negative_prompt!r}" if args.negative_prompt else ""
    adapter = f" with the LoRA adapter {pipe.lora.name!r}" if pipe.lora is not None else ""
    where = path if args.out is not None else f"{path}/000.png ... {args.num_images - 1:03d}.png"
    print(f"wrote {where} ({args.num_images} images of {args.prompt!r} from mini-sd{adapter}{negative}, {guidance}, "
          f"{args.sampler} with {args.steps} steps)")
    return 0


def _digits_denoiser(args, model, config, sampler, labels, device):
    """denoise(x, t) for the digits model and the chosen guidance."""
    scale = DEFAULT_GUIDANCE_SCALE.get(args.guidance) if args.guidance_scale is None else args.guidance_scale
    if args.guidance == "none":
        return lambda x, t: model(x, t), None
    if args.guidance == "cfg":
        null_class = config["network_config"]["num_class_embeds"] - 1  # the last class embedding is "no label"
        return cfg_denoiser(model, labels, scale, null_label=null_class), scale
    classifier, classifier_config = load_course_model("digits-noisy-classifier", device=device,
                                                      directory=args.checkpoint_dir)
    num_classes = classifier_config["network_config"]["num_classes"]
    if num_classes != 10:
        raise ValueError(
            f"The classifier 'digits-noisy-classifier' knows {num_classes} classes, but the digits need 10. "
            f"Retrain it with: python -m course_lib train digits-noisy-classifier"
        )
    if classifier_config["network_config"]["num_train_timesteps"] != config["schedule"]["num_train_timesteps"]:
        raise ValueError(
            f"The classifier was trained for {classifier_config['network_config']['num_train_timesteps']} timesteps "
            f"but the diffusion model has {config['schedule']['num_train_timesteps']}: it cannot read this model's "
            f"noisy images. Retrain it with: python -m course_lib train digits-noisy-classifier"
        )
    return classifier_guided_denoiser(model, classifier, labels, scale, sampler), scale


def _check_resources(args, device: torch.device) -> None:
    """Refuse at once a request over course_lib.limits' caps, from the checkpoints' JSON alone (no model loaded)."""
    folder = Path(args.checkpoint_dir) if args.checkpoint_dir else checkpoint_dir()
    names = NEEDED_CHECKPOINTS[(args.model, args.guidance)]
    unet_name = "shapes-ldm" if args.model == "mini-sd" else names[0]
    unet_json, vae_json = folder / f"{unet_name}.json", folder / "shapes-vae.json"
    if not unet_json.is_file() or (args.model == "mini-sd" and not vae_json.is_file()):
        return  # loading names the missing files and how to make them
    try:
        unet = UNetConfig.from_dict(read_config(unet_json).get("network_config"))
        vae = VAEConfig.from_dict(read_config(vae_json).get("network_config")) if args.model == "mini-sd" else None
    except (ValueError, TypeError):
        return  # loading refuses these files, naming them
    factor = vae.downsample_factor if vae is not None else 1
    size = unet.sample_size if isinstance(unet.sample_size, int) else unet.sample_size[0]
    check_sampling_request(unet, vae, height=args.height or size * factor, width=args.width or size * factor,
                           batch_size=args.num_images, guidance=args.guidance != "none", device=device)


def run_generate(args) -> int:
    _check_generate_args(args)
    # Sampling small models on a small CPU: one thread beat torch's default there (GENERATE_THREADS).
    torch.set_num_threads(GENERATE_THREADS if args.threads is None else args.threads)
    device = resolve_device(args.device)
    _check_resources(args, device)
    if args.model == "mini-sd":
        return _generate_mini_sd(args, device)
    name = NEEDED_CHECKPOINTS[(args.model, args.guidance)][0]
    model, config = load_course_model(name, device=device, directory=args.checkpoint_dir)
    schedule = make_schedule(**config["schedule"])
    sampler = make_sampler(args.sampler, schedule)
    sampler.set_timesteps(args.steps)
    network = config["network_config"]
    size = network.get("sample_size") or 16
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    # The starting noise x_T comes from a CPU generator: the same seed gives the same images on every device.
    generator = torch.Generator().manual_seed(args.seed)
    x_T = randn_tensor((args.num_images, network["in_channels"], height, width), generator=generator, device=device)

    # the digit each image is asked to be: --label, or 0 1 2 ... 9 0 1 ... across the images
    if args.label is not None:
        labels = torch.full((args.num_images,), args.label, device=device)
    else:
        labels = torch.arange(args.num_images, device=device) % 10
    denoise, guidance_scale = _digits_denoiser(args, model, config, sampler, labels, device)
    images = sample_loop(denoise, sampler, x_T, generator=generator, progress=not args.no_progress)
    images = images.clamp(-1, 1).cpu()
    scale = max(1, DISPLAY_SIZE // max(height, width))
    path = _save_images(args, images, scale)
    if args.out is not None:
        guidance = "no guidance" if guidance_scale is None else f"{args.guidance} guidance at scale {guidance_scale:g}"
        print(f"wrote {path} ({args.num_images} images from {name}, {guidance}, {args.sampler} with {args.steps} steps)")
    else:
        print(f"wrote {args.num_images} images to {path}/ (000.png ...) from {name}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's one-line errors (exit status 2, as argparse's own)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} — see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m course_lib", description="Stable Diffusion course: tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{info,train,generate}")
    folder_help = "folder of the checkpoints (default: $COURSE_CHECKPOINT_DIR or data/checkpoints)"

    info = commands.add_parser("info", help="versions, device, which checkpoints are present")
    info.add_argument("--checkpoint-dir", help=folder_help)

    train_parser = commands.add_parser("train", help="train a recipe's model and save its checkpoint")
    train_parser.add_argument("recipe", help=f"one of: {', '.join(RECIPES)}")
    train_parser.add_argument("--out", help="checkpoint path X, writes X.safetensors, X.json, X.state.* "
                                             "(default: runs/<recipe>, git-ignored)")
    train_parser.add_argument("--resume", action="store_true", help="continue the checkpoint at --out")
    train_parser.add_argument("--overwrite", action="store_true",
                              help="start again where a checkpoint is (without it, that is refused)")
    train_parser.add_argument("--steps", type=int, help="total steps to reach (default: the recipe's)")
    train_parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    train_parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    train_parser.add_argument("--checkpoint-dir", help="write to DIR/<recipe> (as --out DIR/<recipe>)")
    train_parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    generate = commands.add_parser("generate", help="sample images from a course model")
    generate.add_argument("--model", default="digits", help=f"one of: {', '.join(MODELS)} (default: digits)")
    generate.add_argument("--label", type=int,
                          help="the digit to draw, 0-9 (needs --guidance cfg or classifier; default: 0, 1, ..., 9 in turn)")
    generate.add_argument("--guidance",
                          help=f"one of: {', '.join(GUIDANCE)} (default: none for digits, cfg for mini-sd)")
    generate.add_argument("--guidance-scale", type=float,
                          help="cfg: diffusers' guidance_scale, 1 = no guidance (default 3 for digits, 7.5 for "
                               "mini-sd); classifier: lambda, 0 = no guidance (default 5)")
    generate.add_argument("--prompt", help="text prompt (--model mini-sd)")
    generate.add_argument("--negative-prompt", help="negative prompt (--model mini-sd)")
    generate.add_argument("--lora", help="a LoRA adapter for --model mini-sd: a name in the checkpoint folder "
                                         "(orange: the word 'orange', lesson 11) or an adapter's path")
    generate.add_argument("--height", type=int, help="image height in pixels (--model mini-sd; default: 64)")
    generate.add_argument("--width", type=int, help="image width in pixels (--model mini-sd; default: 64)")
    generate.add_argument("--steps", type=int, default=50, help="sampling steps (default: 50)")
    generate.add_argument("--sampler", default="ddim", help=f"one of: {', '.join(SAMPLER_NAMES)} (default: ddim)")
    generate.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default: 0)")
    generate.add_argument("--num-images", type=int, default=16, help="how many images (default: 16)")
    generate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    generate.add_argument("--threads", type=int,
                          help=f"CPU threads for torch (default: {GENERATE_THREADS}, measured fastest for the "
                               f"course's small models on a 2-core CPU)")
    generate.add_argument("--out", help=f"write all images as one grid image ({', '.join(IMAGE_SUFFIXES)})")
    generate.add_argument("--out-dir", help="write one PNG per image: DIR/000.png, DIR/001.png, ...")
    generate.add_argument("--checkpoint-dir", help=folder_help)
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _os_error_fix(error: OSError, command: str) -> str:
    """What to do about an operating-system error (a full disk, a missing permission, ...)."""
    then = " then continue with --resume" if command == "train" else ""
    fixes = {
        errno.ENOSPC: f"free some space on that disk or write elsewhere (--out),{then}".rstrip(","),
        errno.EDQUOT: f"free some space within your quota or write elsewhere (--out),{then}".rstrip(","),
        errno.EACCES: "choose a path you can write to (--out), or change its permissions",
        errno.EPERM: "choose a path you can write to (--out), or change its permissions",
        errno.EROFS: "that file system is read-only: choose another path (--out)",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
        errno.EISDIR: "that is a folder: give a file name",
    }
    return fixes.get(error.errno, "check the path and the disk, then try again")


def _what_and_fix(message: str, command: str) -> str:
    """"<what is wrong> — <what to do>": a message of the form "What. Fix." split at its first sentence."""
    message = " ".join(message.split())  # one line
    if " — " in message:
        return message
    parts = re.split(r"(?<=[^.\s])\.\s+(?=[A-Z(`'\"-])", message, maxsplit=1)
    if len(parts) == 2:
        first_word = parts[1].split()[0]
        # "Use ..." -> "use ...", "A seed ..." -> "a seed ...", but "CUDA ..." stays
        fix = parts[1][0].lower() + parts[1][1:] if len(first_word) == 1 or first_word[1].islower() else parts[1]
        return f"{parts[0]} — {fix}"
    return f"{message.rstrip('.')} — see python -m course_lib {command} --help"


def _report(error: BaseException, command: str) -> str:
    """The one line printed for an error: ``error: <path>: <what is wrong> — <what to do>``."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return (f"error: out of memory ({str(error).splitlines()[0] if str(error) else 'MemoryError'}) — ask for "
                f"fewer or smaller images (--num-images, --height, --width), or use another device")
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        what = error.strerror or str(error)
        return f"error: {where}{what} — {_os_error_fix(error, command)}"
    return f"error: {_what_and_fix(str(error), command)}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 an error, 130 interrupted).

    Every error is one line without a traceback (set COURSE_DEBUG=1 to see the traceback of an
    unexpected one, a bug in course_lib).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            return run_info(args)
        if args.command == "train":
            return run_train(args, argv)
        return run_generate(args)
    except (ValueError, TypeError, OSError, MemoryError, torch.OutOfMemoryError) as error:
        print(_report(error, args.command), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: say so in one line, keep the traceback for whoever asks
        if os.environ.get("COURSE_DEBUG"):
            raise
        print(f"error: internal error ({type(error).__name__}: {error}) — this is a bug in course_lib; run again "
              f"with COURSE_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
