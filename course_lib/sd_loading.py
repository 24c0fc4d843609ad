"""Where a Stable Diffusion's parts come from: the four ways to get them, and diffusers' configs.

``course_lib.pipeline.StableDiffusion`` runs the sampling loop on five parts (tokenizer, text
encoder, VAE, UNet, noise schedule) and the scheduler settings. This module makes them:

==========================  ===================================================  ================================
function                    from                                                 StableDiffusion's constructor
==========================  ===================================================  ================================
:func:`load_mini_sd`        the course's checkpoints (shapes-vae/-clip/-ldm)      ``from_course("mini-sd")``
:func:`load_sd_folder`      a folder in diffusers' layout, or a hub repo id      ``from_pretrained(path)``
:func:`from_diffusers_pipe` a diffusers ``StableDiffusionPipeline`` in memory     ``from_diffusers(pipe)``
:func:`random_parts`        SD v1.5's architecture (or a tiny one), random       ``with_random_weights("sd15")``
==========================  ===================================================  ================================

and translates diffusers' configs: a ``scheduler_config.json`` into a :class:`NoiseSchedule` and
the settings our samplers implement (:func:`scheduler_settings`, :func:`schedule_from_config`),
a UNet's or VAE's ``config.json`` into course_lib's networks, which load diffusers' weights by
key. Every file is checked before the big reads (a missing file, a folder of pickles, a model
that is not SD); weights that do not fit their network are reported by
``course_lib.checkpoints.check_state_dict``, the one report of every loader. diffusers itself is
never imported here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .checkpoints import check_state_dict
from .checks import check_int_range
from .nn.text import build_caption_tokenizer, load_caption_tokenizer, text_encoder_from_clip
from .nn.unet import UNet2DConditionModel, UNetConfig
from .nn.vae import AutoencoderKL, VAEConfig
from .pretrained import SHAPES_TOKENIZER, load_course_model
from .samplers import TIMESTEP_SPACINGS
from .schedules import NoiseSchedule, make_schedule

__all__ = ["Parts", "load_mini_sd", "load_sd_folder", "from_diffusers_pipe", "random_parts", "scheduler_settings",
           "schedule_from_config", "SD_REPO_ID", "SD_SCHEDULER_CONFIG", "SD15_ARCHITECTURE", "TINY_ARCHITECTURE",
           "ARCHITECTURES", "MINI_SD_CHECKPOINTS", "MINI_SD_TOKENIZER", "SD_PATH_VARIABLE"]

SD_REPO_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD_PATH_VARIABLE = "COURSE_SD_PATH"  # a local copy of SD_REPO_ID in diffusers' layout

# The mini Stable Diffusion of lessons 06-07: part -> checkpoint name, in the order they are trained
# (the latent UNet is trained on the VAE's latents and the CLIP's text states).
MINI_SD_CHECKPOINTS = {"vae": "shapes-vae", "text_encoder": "shapes-clip", "unet": "shapes-ldm"}
MINI_SD_TOKENIZER = SHAPES_TOKENIZER  # a folder, written by the shapes-clip recipe; without it the deterministic build_caption_tokenizer()

# diffusers' beta_schedule names -> course_lib.schedules kinds
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}

# Scheduler config keys whose other values course_lib's samplers do not implement -> the values they do.
SUPPORTED_SCHEDULER_SETTINGS = {
    "prediction_type": ("epsilon",),  # SD 2.x at 768 px predicts v: not supported
    "beta_schedule": tuple(BETA_SCHEDULES),
    "trained_betas": (None,),
    "timestep_spacing": TIMESTEP_SPACINGS,
    "variance_type": ("fixed_small", "fixed_large"),
    "clip_sample": (False,),
    "thresholding": (False,),
    "rescale_betas_zero_snr": (False,),
    "use_karras_sigmas": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),
    "sigma_min": (None,),
    "sigma_max": (None,),
    "algorithm_type": ("dpmsolver++",),
    "solver_order": (2,),
    "solver_type": ("midpoint",),
    "lower_order_final": (True,),
    "final_sigmas_type": ("zero",),
    "euler_at_final": (False,),
}

# Stable Diffusion v1.x's scheduler settings (its scheduler_config.json), used for the mini SD too.
SD_SCHEDULER_CONFIG = {
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
    "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False,
}

# The files load_sd_folder reads from a folder in diffusers' layout (weights: safetensors only).
SD_FILES = {
    "model_index": "model_index.json",
    "scheduler": "scheduler/scheduler_config.json",
    "tokenizer": "tokenizer",
    "text_encoder config": "text_encoder/config.json",
    "text_encoder weights": "text_encoder/model.safetensors",
    "unet config": "unet/config.json",
    "unet weights": "unet/diffusion_pytorch_model.safetensors",
    "vae config": "vae/config.json",
    "vae weights": "vae/diffusion_pytorch_model.safetensors",
}
# what snapshot_download fetches from the hub: these files only (SD v1.5 in float32: about 5.2 GB)
SD_ALLOW_PATTERNS = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*",
                     "text_encoder/config.json", "text_encoder/model.safetensors",
                     "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]

# Stable Diffusion v1.5's architecture, as its published config.json files give it: what
# StableDiffusion.with_random_weights("sd15") builds (benchmarks/sd15_gpu.py, lesson 10)
SD15_ARCHITECTURE = {
    "unet": UNetConfig(cross_attention_dim=768, sample_size=64),  # 859,520,964 parameters
    "vae": VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    # transformers' CLIPTextConfig of openai/clip-vit-large-patch14's text tower
    "text_encoder": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "projection_dim": 768},
}
# the same block layout at a width a CPU runs in seconds (tests, and the benchmark's --size tiny)
TINY_ARCHITECTURE = {
    "unet": UNetConfig(cross_attention_dim=32, sample_size=8, block_out_channels=(32, 32, 64, 64),
                       norm_num_groups=16),
    "vae": VAEConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1, sample_size=64, norm_num_groups=8,
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    "text_encoder": {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "projection_dim": 32},
}
ARCHITECTURES = {"sd15": SD15_ARCHITECTURE, "tiny": TINY_ARCHITECTURE}


class Parts(NamedTuple):
    """StableDiffusion's constructor arguments, in its order: ``StableDiffusion(*parts)``."""

    tokenizer: object
    text_encoder: nn.Module
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    schedule: NoiseSchedule
    scheduler_config: dict


# ----------------------------------------------------------------------------------------------
# Scheduler configs


def scheduler_settings(config: dict) -> dict:
    """The settings a diffusers scheduler config really sets, checked against what our samplers do.

    As diffusers' from_config does, bookkeeping keys (``_class_name``, ...) and the defaults the
    scheduler filled in itself (listed in ``_use_default_values``) are left out, so another
    sampler uses its own default for them.
    """
    if not isinstance(config, dict):
        raise TypeError(f"scheduler_config must be a dict such as diffusers' scheduler_config.json, "
                        f"got {type(config).__name__}.")
    filled_in = set(config.get("_use_default_values", []))
    settings = {key: value for key, value in config.items() if not key.startswith("_") and key not in filled_in}
    for key, supported in SUPPORTED_SCHEDULER_SETTINGS.items():
        if key in settings and settings[key] not in supported:
            hint = (" Stable Diffusion 2.x at 768 px predicts v; use SD v1.x or SD 2.x-base, which predict eps."
                    if key == "prediction_type" else "")
            raise ValueError(
                f"Scheduler setting {key}={settings[key]!r} is not implemented by course_lib's samplers "
                f"(they implement {key} in {list(supported)}).{hint} Remove it from the scheduler config or "
                f"set one of those values."
            )
    if "steps_offset" in settings:
        check_int_range(settings["steps_offset"], "steps_offset", 0)
    return settings


def schedule_from_config(config: dict) -> NoiseSchedule:
    """The noise schedule of a diffusers scheduler config (beta_schedule, beta_start, beta_end, T)."""
    settings = scheduler_settings(config)
    return make_schedule(BETA_SCHEDULES[settings.get("beta_schedule", "linear")],
                         settings.get("num_train_timesteps", 1000),
                         settings.get("beta_start", 0.0001), settings.get("beta_end", 0.02))


# ----------------------------------------------------------------------------------------------
# The course's mini SD


def load_mini_sd(folder: Path) -> Parts:
    """The mini Stable Diffusion from the course's checkpoints in ``folder`` (see ``from_course``)."""
    missing = [f"{checkpoint}{suffix}" for checkpoint in MINI_SD_CHECKPOINTS.values()
               for suffix in (".safetensors", ".json") if not (folder / f"{checkpoint}{suffix}").is_file()]
    if missing:
        commands = [f"python -m course_lib train {checkpoint}" for checkpoint in MINI_SD_CHECKPOINTS.values()
                    if any(file.startswith(checkpoint + ".") for file in missing)]
        raise ValueError(
            f"The mini Stable Diffusion needs checkpoints that are not in {folder}: missing "
            f"{', '.join(missing)}. Make them, in this order: {'; '.join(commands)} "
            f"(or point $COURSE_CHECKPOINT_DIR at a folder that has them)."
        )
    tokenizer_folder = folder / MINI_SD_TOKENIZER
    if (tokenizer_folder / "tokenizer.json").is_file():
        tokenizer = load_caption_tokenizer(tokenizer_folder)
    else:
        tokenizer = build_caption_tokenizer()

    vae, _ = load_course_model(MINI_SD_CHECKPOINTS["vae"], directory=folder)
    clip, _ = load_course_model(MINI_SD_CHECKPOINTS["text_encoder"], directory=folder)
    unet, unet_json = load_course_model(MINI_SD_CHECKPOINTS["unet"], directory=folder)
    text_encoder = text_encoder_from_clip(clip)  # a CLIPTextModel with the text tower's weights
    if len(tokenizer) != text_encoder.config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the text encoder {MINI_SD_CHECKPOINTS['text_encoder']} "
            f"was trained with {text_encoder.config.vocab_size}. Use the tokenizer it was trained with "
            f"(delete {tokenizer_folder} to use build_caption_tokenizer()), or retrain: python -m course_lib train "
            f"{MINI_SD_CHECKPOINTS['text_encoder']}"
        )
    if not unet_json.get("schedule"):
        raise ValueError(f"{folder / MINI_SD_CHECKPOINTS['unet']}.json has no 'schedule' entry. Retrain it: "
                         f"python -m course_lib train {MINI_SD_CHECKPOINTS['unet']}")
    return Parts(tokenizer, text_encoder, vae, unet, make_schedule(**unet_json["schedule"]), SD_SCHEDULER_CONFIG)


# ----------------------------------------------------------------------------------------------
# Real Stable Diffusion weights in diffusers' layout


def load_sd_folder(path_or_repo_id: str | os.PathLike | None = None) -> Parts:
    """Stable Diffusion v1.x (or 2.x-base) from a folder in diffusers' layout, or a hub repo id.

    :param path_or_repo_id: a folder (it must exist), a hub repo id (read from the Hugging Face
        cache; downloaded when online), or None: $COURSE_SD_PATH if set, else SD v1.5's repo id.
        $COURSE_SD_PATH names the local copy of SD v1.5: it stands in for ``SD_REPO_ID`` too,
        never for another path or repo id
    """
    folder = _sd_folder(path_or_repo_id)
    _check_sd_folder(folder)
    from transformers import CLIPTextModel, CLIPTokenizer  # after the checks: a wrong path fails at once

    index_path = folder / SD_FILES["model_index"]
    if index_path.is_file():
        pipeline_class = _read_json(index_path).get("_class_name")
        if pipeline_class not in (None, "StableDiffusionPipeline"):
            raise ValueError(f"{folder} holds a {pipeline_class}, not a StableDiffusionPipeline (SD v1.x / 2.x). "
                             f"course_lib runs Stable Diffusion v1.x; use e.g. {SD_REPO_ID}.")
    scheduler_config = _read_json(folder / SD_FILES["scheduler"])
    schedule = schedule_from_config(scheduler_config)  # an unsupported scheduler is refused before the weights load
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    # a folder downloaded with variant="fp16" has model.fp16.safetensors only
    variant = None if (folder / SD_FILES["text_encoder weights"]).is_file() else "fp16"
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True,
                                                 use_safetensors=True, variant=variant)
    unet = _load_diffusers_weights(UNet2DConditionModel, UNetConfig, folder / "unet")
    vae = _load_diffusers_weights(AutoencoderKL, VAEConfig, folder / "vae")
    return Parts(tokenizer, text_encoder, vae, unet, schedule, scheduler_config)


def from_diffusers_pipe(pipe) -> Parts:
    """The parts of a diffusers ``StableDiffusionPipeline``: its tokenizer and text encoder as they
    are, copies of its UNet's and VAE's weights in course_lib's networks, its scheduler's config."""
    for part in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
        if getattr(pipe, part, None) is None:
            raise TypeError(f"pipe has no {part}: expected a diffusers StableDiffusionPipeline, "
                            f"got {type(pipe).__name__}.")
    # copies of the weights (clone), so that changing one pipeline's weights leaves the other's alone
    unet = _build_and_load(UNet2DConditionModel, UNetConfig.from_dict(dict(pipe.unet.config)),
                           {key: value.clone() for key, value in pipe.unet.state_dict().items()},
                           "the diffusers pipeline's unet")
    vae = _build_and_load(AutoencoderKL, VAEConfig.from_dict(dict(pipe.vae.config)),
                          {key: value.clone() for key, value in pipe.vae.state_dict().items()},
                          "the diffusers pipeline's vae")
    scheduler_config = dict(pipe.scheduler.config)
    return Parts(pipe.tokenizer, pipe.text_encoder, vae, unet, schedule_from_config(scheduler_config),
                 scheduler_config)


def random_parts(architecture: str, device: str | torch.device | None = None, seed: int = 0) -> Parts:
    """SD v1.5's architecture ("sd15") or a narrow one ("tiny") with random weights (see ``with_random_weights``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    parts = ARCHITECTURES[architecture]
    tokenizer = build_caption_tokenizer(model_max_length=77)
    text_config = CLIPTextConfig(**parts["text_encoder"], pad_token_id=tokenizer.pad_token_id,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        text_encoder = CLIPTextModel(text_config)
        vae = AutoencoderKL(parts["vae"])
        unet = UNet2DConditionModel(parts["unet"])
    return Parts(tokenizer, text_encoder, vae, unet, schedule_from_config(SD_SCHEDULER_CONFIG), SD_SCHEDULER_CONFIG)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as JSON ({error}) — download the folder again.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a {type(data).__name__}, not a JSON object — download the folder again.")
    return data


def _build_and_load(network_class, config, state_dict: dict, source: str | os.PathLike) -> nn.Module:
    """A network built from its config and given these weights (strictly: every key, every shape).

    It is built on the meta device, which allocates nothing and skips the random initialisation
    (SD's UNet has 860 million numbers), checked against the weights by ``check_state_dict``,
    then takes the tensors of ``state_dict`` as its own.
    """
    with torch.device("meta"):
        model = network_class(config)
    check_state_dict(model, state_dict, source, cast_floats=True,
                     fix="the config.json and the weights come from different models: download the folder again")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def _load_diffusers_weights(network_class, config_class, folder: Path) -> nn.Module:
    """course_lib's UNet or VAE from a diffusers model folder: config.json and safetensors weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = config_class.from_dict(_read_json(folder / "config.json"))
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        weights = folder / "diffusion_pytorch_model.fp16.safetensors"
    try:
        state_dict = load_file(weights)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights}: not a readable safetensors file ({error}) — download it again.") from None
    return _build_and_load(network_class, config, state_dict, weights).float()


def _looks_like_repo_id(name: str) -> bool:
    """'owner/name' or 'name' with the characters the hub allows (a path such as ./sd or /data/sd is not)."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None and ".." not in name


def _where_to_get_weights(repo_id: str) -> str:
    return (
        f"Download them once on a machine with internet (SD v1.5 in float32: about 5.2 GB): "
        f"hf download {repo_id} {' '.join(SD_ALLOW_PATTERNS)} --local-dir stable-diffusion-v1-5 "
        f"(or StableDiffusion.from_pretrained({repo_id!r}) online, which keeps them in the Hugging Face cache). "
        f"Then point the course at the folder: {SD_PATH_VARIABLE}=/path/to/stable-diffusion-v1-5, or "
        f"StableDiffusion.from_pretrained('/path/to/stable-diffusion-v1-5')."
    )


def _sd_folder(path_or_repo_id) -> Path:
    """The local folder of the weights: the folder given, $COURSE_SD_PATH for SD v1.5, or the hub cache."""
    if path_or_repo_id is not None and not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise TypeError(f"path_or_repo_id must be a folder or a hub repo id such as {SD_REPO_ID!r}, "
                        f"got {type(path_or_repo_id).__name__}.")
    env_path = os.environ.get(SD_PATH_VARIABLE)
    if env_path and path_or_repo_id in (None, SD_REPO_ID):
        if not Path(env_path).expanduser().is_dir():
            raise FileNotFoundError(f"{SD_PATH_VARIABLE} is {env_path!r}, which is not a folder. Set it to a folder "
                                    f"in diffusers' layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/).")
        return Path(env_path).expanduser()
    name = os.fspath(path_or_repo_id if path_or_repo_id is not None else SD_REPO_ID)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if isinstance(path_or_repo_id, os.PathLike) or not _looks_like_repo_id(name):
        raise FileNotFoundError(f"No folder {name!r}. Give a folder in diffusers' layout (unet/, vae/, "
                                f"text_encoder/, tokenizer/, scheduler/) or a hub repo id such as {SD_REPO_ID!r}.")
    return _hub_folder(name)


def _hub_folder(repo_id: str) -> Path:
    """The hub cache's copy of a repo id (downloading the needed files when online)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    not_a_folder = f"There is no folder {repo_id!r} here, and the" if repo_id != SD_REPO_ID else "The"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=SD_ALLOW_PATTERNS, local_files_only=offline))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{not_a_folder} Stable Diffusion weights {repo_id!r} are not in the Hugging Face cache and downloads are "
            f"off ({'HF_HUB_OFFLINE=1' if offline else 'no connection to the hub'}). {_where_to_get_weights(repo_id)}"
        ) from None
    except Exception as error:  # the hub's errors (no such repo, gated, HTTP) -> one message with what to do
        raise ValueError(f"Could not get {repo_id!r} from the Hugging Face hub: {error}. "
                         f"{_where_to_get_weights(repo_id)}") from None


def _check_sd_folder(folder: Path) -> None:
    """Raise a FileNotFoundError that lists every file of diffusers' layout missing in ``folder``."""
    missing = []
    for what, relative in SD_FILES.items():
        if what == "model_index":
            continue  # optional: only checked when present
        path = folder / relative
        if what.endswith("weights"):
            present = path.is_file() or path.with_name(path.name.replace(".safetensors", ".fp16.safetensors")).is_file()
        else:
            present = path.exists()
        if not present:
            missing.append(relative)
    if missing:
        pickles = [p.name for p in folder.glob("*/*.bin")]
        raise FileNotFoundError(
            f"{folder} is not a complete Stable Diffusion folder in diffusers' layout: missing {', '.join(missing)}."
            + (f" It has PyTorch pickles ({', '.join(sorted(pickles)[:3])}): course_lib loads only safetensors "
               f"weights; convert them or download the .safetensors files." if pickles else "")
            + f" {_where_to_get_weights(SD_REPO_ID)}"
        )
