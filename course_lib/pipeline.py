"""Stable Diffusion: prompt -> image, the sampling loop of lesson 08.

``StableDiffusion`` holds the four parts of a latent diffusion model and runs the loop of
diffusers' ``StableDiffusionPipeline.__call__`` in the same order, one readable method per step:

    prompt "a red circle"
      1. encode_prompt     tokenizer -> text_encoder: c = tau(prompt), (B, L, D); for guidance also
                           the unconditional branch tau(negative prompt or "")
      2. make_sampler      a course_lib sampler on the model's noise schedule; set_timesteps(n)
      3. prepare_latents   z_T ~ N(0, I) of shape (B, 4, H/f, W/f), scaled by init_noise_sigma
      4. denoise_step      (n times) the batch of two [z_t, z_t] through the UNet with [c_uncond, c],
                           classifier-free guidance, one sampler step z_t -> z_{t-1}
      5. decode_latents    x = D(z_0 / s), the VAE decoder, s = vae.config.scaling_factor
      6. to_images         [-1, 1] -> PIL images or a float array in [0, 1]

Notation (code name -> symbol):

=========================  ===========================================================================
code name                  symbol
=========================  ===========================================================================
``prompt_embeds``          $c = \\tau_\\theta(y)$: the text encoder's last hidden state, (B, L, D)
``negative_prompt_embeds`` $c_\\varnothing$: the same for the negative (or empty) prompt
``latents``                $z_t$: the UNet's latents, (B, C_z, H/f, W/f); f = vae_scale_factor (8 in SD)
``noise_pred``             $\\epsilon_\\theta(z_t, t, c)$
``guidance_scale``         $\\lambda$ of classifier-free guidance (1 = no guidance; Ho & Salimans' w = lambda - 1)
``scaling_factor``         $s$: the UNet sees $s z$ with $z \\sim q(z | x)$ (SD v1.x: 0.18215)
=========================  ===========================================================================

Three ways to build one::

    pipe = StableDiffusion.from_course("mini-sd")          # the course's mini SD in data/checkpoints
    pipe = StableDiffusion.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")  # SD v1.x
    pipe = StableDiffusion.from_diffusers(diffusers_pipe)  # the weights of a diffusers pipeline
    images = pipe("a red circle", num_inference_steps=30, guidance_scale=7.5)

The text encoder is transformers' ``CLIPTextModel`` itself; the UNet and the VAE are course_lib's
(``nn/unet.py``, ``nn/vae.py``), which load diffusers' weights by key. With the same weights,
latents and sampler the images equal diffusers' (tests/test_pipeline.py). diffusers is never imported here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import check_choice, check_int_range, check_number, check_shape
from .guidance import cfg
from .nn.attention import fuse_projections as fuse_attention_projections
from .nn.text import build_caption_tokenizer, encode_text, load_caption_tokenizer, tokenize_prompts
from .nn.unet import UNet2DConditionModel, UNetConfig
from .nn.vae import AutoencoderKL, VAEConfig
from .pretrained import SHAPES_TOKENIZER, checkpoint_dir, load_course_model
from .samplers import SAMPLER_NAMES, TIMESTEP_SPACINGS, Sampler, make_sampler, randn_tensor
from .schedules import NoiseSchedule, make_schedule

__all__ = ["StableDiffusion", "SD15_ARCHITECTURE", "TINY_ARCHITECTURE", "SD_REPO_ID", "MINI_SD_CHECKPOINTS", "DEFAULT_TIMESTEP_SPACING", "OUTPUT_TYPES"]

SD_REPO_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
OUTPUT_TYPES = ("pil", "np", "latent")

# The mini Stable Diffusion of lessons 06-07: part -> checkpoint name, in the order they are trained
# (the latent UNet is trained on the VAE's latents and the CLIP's text states).
MINI_SD_CHECKPOINTS = {"vae": "shapes-vae", "text_encoder": "shapes-clip", "unet": "shapes-ldm"}
MINI_SD_TOKENIZER = SHAPES_TOKENIZER  # a folder, written by the shapes-clip recipe; without it the deterministic build_caption_tokenizer()

# The timestep spacing each diffusers scheduler uses when its config does not set one: SD v1.x's
# scheduler config sets none, so DDIMScheduler.from_config(it) lays "leading" timesteps and
# EulerDiscreteScheduler.from_config(it) "linspace" ones. The pipeline does the same.
DEFAULT_TIMESTEP_SPACING = {"ddpm": "leading", "ddim": "leading", "euler": "linspace", "dpmsolver": "linspace"}

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

# The files from_pretrained reads from a folder in diffusers' layout (weights: safetensors only).
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


class StableDiffusion:
    """Text-to-image latent diffusion: tokenizer, text encoder, UNet, VAE and a noise schedule.

    :param tokenizer: a ``transformers`` tokenizer (CLIP's, or the course's caption tokenizer)
    :param text_encoder: a ``transformers.CLIPTextModel``; its last hidden state is c, (B, L, D)
    :param vae: course_lib's :class:`~course_lib.nn.vae.AutoencoderKL`
    :param unet: course_lib's :class:`~course_lib.nn.unet.UNet2DConditionModel` with cross-attention
        to D = text_encoder.config.hidden_size and in_channels = vae.config.latent_channels
    :param schedule: the noise schedule the UNet was trained with
    :param scheduler_config: the settings of the sampling schedulers, as in diffusers'
        scheduler_config.json (default: SD v1.x's). Read: ``timestep_spacing`` (absent: each
        sampler's diffusers default, :data:`DEFAULT_TIMESTEP_SPACING`), ``steps_offset``,
        ``set_alpha_to_one`` (DDIM), ``variance_type`` (DDPM); ``prediction_type`` must be "epsilon".

    Attributes: the components above, ``scheduler_config`` (the settings it was given),
    ``timestep_spacing`` (None: per sampler), ``steps_offset``, ``set_alpha_to_one``,
    ``variance_type``, ``prediction_type``; properties ``device``, ``dtype``, ``vae_scale_factor``.
    """

    def __init__(self, tokenizer, text_encoder, vae: AutoencoderKL, unet: UNet2DConditionModel,
                 schedule: NoiseSchedule, scheduler_config: dict | None = None):
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"unet must be course_lib's UNet2DConditionModel, got {type(unet).__name__}. "
                            f"For a diffusers pipeline use StableDiffusion.from_diffusers(pipe).")
        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"vae must be course_lib's AutoencoderKL, got {type(vae).__name__}. "
                            f"For a diffusers pipeline use StableDiffusion.from_diffusers(pipe).")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}. "
                            f"Build one with course_lib.schedules.make_schedule(...).")
        text_width = text_encoder.config.hidden_size
        if not unet.config.has_cross_attention or unet.config.cross_attention_dim != text_width:
            raise ValueError(
                f"The UNet cross-attends to vectors of width {unet.config.cross_attention_dim} "
                f"(has_cross_attention={unet.config.has_cross_attention}), but the text encoder gives "
                f"width {text_width}. Use the text encoder the UNet was trained with."
            )
        max_positions = getattr(text_encoder.config, "max_position_embeddings", None)
        if max_positions is not None and tokenizer.model_max_length > max_positions:
            raise ValueError(
                f"The tokenizer pads prompts to {tokenizer.model_max_length} tokens, but the text encoder has "
                f"positions for {max_positions}. Use the tokenizer the text encoder was trained with, or set "
                f"tokenizer.model_max_length = {max_positions}."
            )
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"The UNet takes {unet.config.in_channels}-channel latents, but the VAE makes "
                f"{vae.config.latent_channels}-channel ones. Use the VAE the UNet was trained with."
            )
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.vae = vae.eval()
        self.unet = unet.eval()
        self.schedule = schedule
        settings = _scheduler_settings(SD_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
        self.scheduler_config = settings
        self.timestep_spacing = settings.get("timestep_spacing")  # None: each sampler's own default
        # the defaults of diffusers' schedulers for keys a config leaves out
        self.steps_offset = settings.get("steps_offset", 0)
        self.set_alpha_to_one = settings.get("set_alpha_to_one", True)
        self.variance_type = settings.get("variance_type", "fixed_small")
        self.prediction_type = settings.get("prediction_type", "epsilon")
        self._progress_bar_config: dict = {}
        self.fast: dict | None = None  # what optimize() turned on

    def __repr__(self) -> str:
        return (f"StableDiffusion(unet {self.unet.config.block_out_channels}, latents "
                f"{self.unet.config.in_channels} x {self.default_size[0] // self.vae_scale_factor}^2, "
                f"text width {self.text_encoder.config.hidden_size}, {self.schedule!r}, "
                f"device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------------------ building
    @classmethod
    def from_course(cls, name: str = "mini-sd", directory: str | os.PathLike | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "StableDiffusion":
        """The course's mini Stable Diffusion, from the checkpoints that ``python -m course_lib train`` writes.

        Four things in the checkpoint folder: ``shapes-tokenizer/`` (optional; without it the
        deterministic ``build_caption_tokenizer()``), ``shapes-vae`` (the autoencoder, with its
        measured scaling factor), ``shapes-clip`` (a tiny CLIPModel: its text tower becomes the text
        encoder) and ``shapes-ldm`` (the latent UNet and its noise schedule).

        :param name: "mini-sd"
        :param directory: the checkpoint folder (default: $COURSE_CHECKPOINT_DIR or data/checkpoints)
        :param device: where to put the models (default: the CPU)
        :param dtype: their dtype (default: float32)
        """
        check_choice(name, ("mini-sd",), "course pipeline")
        folder = Path(directory) if directory is not None else checkpoint_dir()
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
        from transformers import CLIPTextModel

        tokenizer_folder = folder / MINI_SD_TOKENIZER
        if (tokenizer_folder / "tokenizer.json").is_file():
            tokenizer = load_caption_tokenizer(tokenizer_folder)
        else:
            tokenizer = build_caption_tokenizer()

        vae, _ = load_course_model(MINI_SD_CHECKPOINTS["vae"], directory=folder)
        clip, _ = load_course_model(MINI_SD_CHECKPOINTS["text_encoder"], directory=folder)
        unet, unet_json = load_course_model(MINI_SD_CHECKPOINTS["unet"], directory=folder)
        # the text encoder: a CLIPTextModel with the weights of the CLIPModel's text tower (its keys text_model.*)
        text_encoder = CLIPTextModel(clip.config.text_config)
        text_weights = clip.text_model.state_dict()  # embeddings.*, encoder.*, final_layer_norm.*
        if all(key.startswith("text_model.") for key in text_encoder.state_dict()):  # transformers 4.x's names
            text_weights = {f"text_model.{key}": value for key, value in text_weights.items()}
        text_encoder.load_state_dict(text_weights, strict=True)
        if len(tokenizer) != text_encoder.config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the text encoder {MINI_SD_CHECKPOINTS['text_encoder']} "
                f"was trained with {text_encoder.config.vocab_size}. Use the tokenizer it was trained with "
                f"(delete {tokenizer_folder} to use build_caption_tokenizer()), or retrain: python -m course_lib train "
                f"{MINI_SD_CHECKPOINTS['text_encoder']}"
            )
        if "schedule" not in unet_json or not unet_json["schedule"]:
            raise ValueError(f"{folder / MINI_SD_CHECKPOINTS['unet']}.json has no 'schedule' entry. Retrain it: "
                             f"python -m course_lib train {MINI_SD_CHECKPOINTS['unet']}")
        schedule = make_schedule(**unet_json["schedule"])
        pipe = cls(tokenizer, text_encoder, vae, unet, schedule, scheduler_config=SD_SCHEDULER_CONFIG)
        return pipe.to(device, dtype)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike = SD_REPO_ID, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "StableDiffusion":
        """Stable Diffusion v1.x (or 2.x-base) from a folder in diffusers' layout, or a hub repo id.

        The folder holds model_index.json, scheduler/, tokenizer/, text_encoder/, unet/, vae/ with
        safetensors weights. A repo id such as "stable-diffusion-v1-5/stable-diffusion-v1-5" is
        read from the Hugging Face cache (downloading only the files needed, when online). If
        $COURSE_SD_PATH is set, the folder it names is used instead of a repo id.

        :param path_or_repo_id: a local folder or a hub repo id
        :param dtype: torch.float16 on a GPU halves memory and time (the VAE decodes in float32 when
            its config asks for force_upcast); default float32
        :param device: e.g. "cuda" (default: the CPU)
        """
        folder = _sd_folder(path_or_repo_id)
        _check_sd_folder(folder)
        from transformers import CLIPTextModel, CLIPTokenizer  # after the checks: a wrong path fails at once

        index_path = folder / SD_FILES["model_index"]
        if index_path.is_file():
            pipeline_class = json.loads(index_path.read_text()).get("_class_name")
            if pipeline_class not in (None, "StableDiffusionPipeline"):
                raise ValueError(f"{folder} holds a {pipeline_class}, not a StableDiffusionPipeline (SD v1.x / 2.x). "
                                 f"course_lib runs Stable Diffusion v1.x; use e.g. {SD_REPO_ID}.")
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        # a folder downloaded with variant="fp16" has model.fp16.safetensors only
        variant = None if (folder / SD_FILES["text_encoder weights"]).is_file() else "fp16"
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True,
                                                     use_safetensors=True, variant=variant)
        unet = _load_diffusers_weights(UNet2DConditionModel, UNetConfig, folder / "unet")
        vae = _load_diffusers_weights(AutoencoderKL, VAEConfig, folder / "vae")
        scheduler_config = json.loads((folder / SD_FILES["scheduler"]).read_text())
        pipe = cls(tokenizer, text_encoder, vae, unet, _schedule_from_config(scheduler_config), scheduler_config)
        return pipe.to(device, dtype or torch.float32)

    @classmethod
    def from_diffusers(cls, pipe) -> "StableDiffusion":
        """The same model as a diffusers ``StableDiffusionPipeline``: its tokenizer and text encoder
        as they are, its UNet's and VAE's weights loaded into course_lib's networks, its scheduler's config.

        :param pipe: a diffusers StableDiffusionPipeline (diffusers itself is not imported here)
        """
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
        ours = cls(pipe.tokenizer, pipe.text_encoder, vae, unet, _schedule_from_config(scheduler_config),
                   scheduler_config)
        parameter = next(pipe.unet.parameters())
        return ours.to(parameter.device, parameter.dtype)

    @classmethod
    def with_random_weights(cls, architecture: str = "sd15", device: str | torch.device | None = None,
                            dtype: torch.dtype | None = None, seed: int = 0) -> "StableDiffusion":
        """A pipeline of the given architecture with random weights, to time and count it (no download).

        :param architecture: "sd15" (Stable Diffusion v1.5's shapes: 860M-parameter UNet, 84M VAE,
            123M text encoder) or "tiny" (the same layout, narrow); the course's caption tokenizer
            stands in for CLIP's (77 tokens), the scheduler is SD v1.5's
        :param device: where to build (building on the GPU initialises the weights there, fast);
            "meta" builds without memory, to count FLOPs
        :param dtype: e.g. torch.float16 (the weights are drawn in float32, then cast)
        :param seed: the weights' seed
        """
        from transformers import CLIPTextConfig, CLIPTextModel

        check_choice(architecture, tuple(ARCHITECTURES), "architecture")
        parts = ARCHITECTURES[architecture]
        tokenizer = build_caption_tokenizer(model_max_length=77)
        text_config = CLIPTextConfig(**parts["text_encoder"], pad_token_id=tokenizer.pad_token_id,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            text_encoder = CLIPTextModel(text_config)
            vae = AutoencoderKL(parts["vae"])
            unet = UNet2DConditionModel(parts["unet"])
        pipe = cls(tokenizer, text_encoder, vae, unet, _schedule_from_config(SD_SCHEDULER_CONFIG))
        return pipe.to(dtype) if dtype is not None else pipe

    # ------------------------------------------------------------------------------ device, dtype
    @property
    def device(self) -> torch.device:
        """Where the UNet is (the latents are made there)."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype (the latents' and the text states')."""
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        """f: the VAE turns an H x W image into an H/f x W/f latent (8 in SD)."""
        return self.vae.config.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: f times the UNet's 2 ** num_downsamples (SD: 64)."""
        return self.vae_scale_factor * 2 ** self.unet.config.num_downsamples

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) of the UNet's training samples in pixels: unet.config.sample_size * f."""
        size = self.unet.config.sample_size
        if size is None:
            return (8 * self.size_multiple,) * 2
        height, width = (size, size) if isinstance(size, int) else size
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    def to(self, device: str | torch.device | torch.dtype | None = None,
           dtype: torch.dtype | None = None) -> "StableDiffusion":
        """Move the models (``pipe.to("cuda", torch.float16)``; ``pipe.to(torch.float16)`` works too).

        In float16 a VAE whose config has force_upcast (SD v1.x's) stays in float32: its decoder's
        activations overflow float16's range (65504) and the images come out black or NaN.

        :return: self
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype such as torch.float16, got {dtype}.")
        vae_dtype = dtype
        if dtype == torch.float16 and self.vae.config.force_upcast:
            vae_dtype = torch.float32
        self.unet.to(device=device, dtype=dtype)
        self.text_encoder.to(device=device, dtype=dtype)
        self.vae.to(device=device, dtype=vae_dtype)
        return self

    def optimize(self, dtype: torch.dtype | str | None = "auto", *, channels_last: bool = True,
                 fuse_projections: bool = True, compile: bool | str = "auto", compile_mode: str | None = "reduce-overhead",
                 compile_vae: bool = True, compile_options: dict | None = None) -> "StableDiffusion":
        """The fast mode (lesson 10): the same loop and the same modules, run faster. In place; returns self.

            pipe = StableDiffusion.from_pretrained(path).to("cuda").optimize()
            images = pipe("a photo of an astronaut riding a horse")   # compiles on the first call

        Each step is a technique of lesson 10, measured by benchmarks/sd15_gpu.py; none changes the
        arithmetic beyond float rounding, and ``__call__`` reads exactly as in eager mode.

        :param dtype: "auto" (float16 on CUDA, unchanged on a CPU), a dtype, or None (unchanged).
            Half precision halves the bytes moved and runs the matrix multiplies on tensor cores.
        :param channels_last: store the UNet's and VAE's activations as (B, H, W, C), the layout the
            convolution kernels of cuDNN prefer; ``torch.channels_last`` on the weights and latents
        :param fuse_projections: one matrix multiply for Q, K, V of each self-attention layer and one
            for K, V of each cross-attention layer (``course_lib.nn.attention.fuse_projections``)
        :param compile: compile the UNet's forward with ``torch.compile(fullgraph=True)`` (inductor
            fuses the elementwise operations, GroupNorm and SiLU into fewer kernels); "auto": on CUDA
            only, since compiling on a CPU takes minutes for a few per cent
        :param compile_mode: torch.compile's mode. "reduce-overhead" (the default) also records the
            fixed-shape UNet step as a CUDA graph and replays it, so each of the 50 steps is one launch
            from the host instead of about a thousand; None for torch's default mode
        :param compile_vae: compile the VAE's decoder too (when compiling)
        :param compile_options: more keyword arguments for ``torch.compile`` (e.g. ``backend``)
        :return: self. Changing the weights afterwards needs ``fuse_projections`` again (the fused
            matrices are copies); to go back to the plain eager pipeline, load it again.
        """
        on_cuda = self.device.type == "cuda"
        if dtype == "auto":
            dtype = torch.float16 if on_cuda else None
        if dtype is not None:
            self.to(dtype=dtype)
        # the value checks (NaN in the input) make the host wait for the GPU at every step
        self.unet.check_values = False
        self.vae.check_values = False
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if fuse_projections:
            fuse_attention_projections(self.unet)
            fuse_attention_projections(self.vae)
        if compile == "auto":
            compile = on_cuda
        if compile:
            options = {"fullgraph": True, "mode": compile_mode, **(compile_options or {})}
            self.unet.compile(**options)
            if compile_vae:
                self.vae.decoder.compile(**{**options, "mode": None} if compile_mode == "reduce-overhead" else options)
        self.fast = {"dtype": str(self.dtype), "channels_last": channels_last, "fuse_projections": fuse_projections,
                     "compile": bool(compile), "compile_mode": compile_mode if compile else None,
                     "compile_vae": bool(compile and compile_vae)}
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options of the tqdm progress bar, as diffusers': ``pipe.set_progress_bar_config(disable=True)``."""
        self._progress_bar_config = dict(kwargs)

    def make_sampler(self, name: str) -> Sampler:
        """A course_lib sampler on this model's schedule with the scheduler settings, as diffusers'
        ``XScheduler.from_config(pipe.scheduler.config)`` builds its scheduler.

        :param name: "ddim", "ddpm", "euler" or "dpmsolver"
        """
        check_choice(name, SAMPLER_NAMES, "sampler")
        kwargs = {"timestep_spacing": self.timestep_spacing or DEFAULT_TIMESTEP_SPACING[name],
                  "steps_offset": self.steps_offset}
        if name == "ddim":
            kwargs["set_alpha_to_one"] = self.set_alpha_to_one
        if name == "ddpm":
            kwargs["variance_type"] = self.variance_type
        return make_sampler(name, self.schedule, **kwargs)

    # ------------------------------------------------------------------------------ the loop
    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale=7.5, sampler: str = "ddim",
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 num_images_per_prompt: int = 1, output_type: str = "pil", callback=None):
        """Generate images from prompts, as diffusers' ``StableDiffusionPipeline.__call__``.

        :param prompt: a prompt or a list of B prompts
        :param negative_prompt: what the unconditional branch of guidance is given instead of "":
            one string for all prompts, or a list of B
        :param height: image height in pixels, a multiple of ``size_multiple`` (default: ``default_size``)
        :param width: image width in pixels, likewise
        :param num_inference_steps: n, the number of sampling steps
        :param guidance_scale: lambda (diffusers' meaning: 1 or less = no guidance, the conditional
            model alone; 7.5 is SD's usual). A list of scales with one prompt is a guidance sweep:
            one image per scale, from the same starting noise, in one batched pass (with a deterministic
            sampler each equals a separate run; DDPM draws its step noise for the whole batch)
        :param sampler: "ddim", "ddpm", "euler" or "dpmsolver"
        :param generator: a torch.Generator for the starting noise (and DDPM's noise); a CPU
            generator gives the same images on every device
        :param latents: the starting noise z_T, (B * num_images_per_prompt, C_z, H/f, W/f)
            (a sweep: (num_images_per_prompt, C_z, H/f, W/f), shared by all scales)
        :param num_images_per_prompt: images per prompt
        :param output_type: "pil" (list of PIL images), "np" (float array (N, H, W, 3) in [0, 1])
            or "latent" (the final latents z_0, (N, C_z, H/f, W/f))
        :param callback: called as ``callback(i, t, latents)`` after step i
        :return: the images, in prompt order (a sweep: in scale order), num_images_per_prompt each
        """
        # 0. default height and width: the size the UNet was trained at
        default_height, default_width = self.default_size
        height = default_height if height is None else height
        width = default_width if width is None else width

        # 1. check the inputs; a guidance sweep becomes one prompt repeated with one scale per image
        prompts, scales = self.check_inputs(prompt, negative_prompt, height, width, num_inference_steps,
                                            guidance_scale, sampler, generator, latents, num_images_per_prompt,
                                            output_type, callback)
        # classifier-free guidance only when some scale is above 1 (diffusers: guidance_scale > 1)
        do_cfg = max(scales) > 1

        # 2. encode the prompt: c, and c_uncond of the negative (or empty) prompt
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negative_prompt, num_images_per_prompt,
                                                                   do_cfg)
        if do_cfg:
            # one batch of two halves for the UNet: [c_uncond, c]
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 3. the sampler and its timesteps
        sampler = self.make_sampler(sampler)
        sampler.set_timesteps(num_inference_steps)

        # 4. the starting noise z_T, shared by every scale of a sweep
        latents = self.prepare_latents(len(prompts) * num_images_per_prompt, height, width, sampler,
                                       generator, latents)
        if len(scales) > 1:
            latents = latents.repeat(len(scales), 1, 1, 1)  # (n, C, h, w) -> (S * n, C, h, w), scale-major
            prompt_embeds = _repeat_halves(prompt_embeds, len(scales), do_cfg)
        guidance = self._per_image_scale(scales, num_images_per_prompt)

        # 5. the denoising loop: z_T -> z_0
        progress = tqdm(sampler.timesteps, **{"desc": sampler.name, **self._progress_bar_config})
        for i, t in enumerate(progress):
            latents = self.denoise_step(sampler, latents, t, prompt_embeds, guidance, do_cfg, generator)
            if callback is not None:
                callback(i, t, latents)

        if output_type == "latent":
            return latents
        # 6. latents -> images
        return self.to_images(self.decode_latents(latents), output_type)

    @torch.no_grad()
    def img2img(self, image, prompt, strength: float = 0.8, negative_prompt=None, num_inference_steps: int = 50,
                guidance_scale: float = 7.5, sampler: str = "ddim", generator: torch.Generator | None = None,
                output_type: str = "pil"):
        """Image-to-image (SDEdit, Meng et al. 2022), as diffusers' ``StableDiffusionImg2ImgPipeline``.

        Encode the image, noise its latent to a timestep chosen by ``strength``, then run the end of
        the denoising loop with the new prompt:

            z_0 = s E(x)                                  a sample of q(z | x), scaled
            k = int(n * strength),  t_start = timesteps[n - k]
            z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) eps       (sampler.add_noise)
            then the last k steps of the loop from z_t

        strength 0 returns the image's own round trip; strength 1 starts from (almost) pure noise.

        :param image: a PIL image, a list of B PIL images, or a tensor (B, 3, H, W) in [-1, 1];
            H and W multiples of ``size_multiple``
        :param prompt: one prompt, or B prompts (one per image)
        :param strength: how much of the image is destroyed, in [0, 1]
        :param negative_prompt, num_inference_steps, guidance_scale, sampler, generator, output_type:
            as in ``__call__`` (no guidance sweep here)
        :return: the images, one per input image
        """
        images = self._image_tensor(image)
        height, width = images.shape[-2:]
        strength = check_number(strength, "strength", 0.0)
        if strength > 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}: 0 keeps the image, 1 starts from noise.")
        prompts, scales = self.check_inputs(prompt, negative_prompt, height, width, num_inference_steps,
                                            guidance_scale, sampler, generator, None, 1, output_type, None)
        if len(scales) != 1:
            raise ValueError("img2img takes one guidance_scale, not a list. Call it once per scale.")
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"Got {len(images)} images and {len(prompts)} prompts. Pass one prompt for all, "
                             f"or one per image.")
        do_cfg = scales[0] > 1
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negative_prompt, 1, do_cfg)
        if do_cfg:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 1. the timesteps: only the last k = int(n * strength) of the grid are run
        sampler = self.make_sampler(sampler)
        sampler.set_timesteps(num_inference_steps)
        k = min(int(num_inference_steps * strength), num_inference_steps)
        timesteps = sampler.timesteps[num_inference_steps - k:]

        # 2. z_0 = s * (a sample of q(z | x)), drawn with the generator first, as diffusers does
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(images.to(device=self.device, dtype=vae_dtype))
        latents = (posterior.sample(generator) * self.vae.config.scaling_factor).to(self.dtype)
        if k == 0:  # strength 0: nothing to denoise
            return latents if output_type == "latent" else self.to_images(self.decode_latents(latents), output_type)

        # 3. z_t: the forward process to the first timestep run
        noise = randn_tensor(latents.shape, generator, device=self.device, dtype=self.dtype)
        latents = sampler.add_noise(latents, noise, timesteps[0])

        # 4. the end of the denoising loop
        for t in tqdm(timesteps, **{"desc": f"{sampler.name} img2img", **self._progress_bar_config}):
            latents = self.denoise_step(sampler, latents, t, prompt_embeds, scales[0], do_cfg, generator)
        if output_type == "latent":
            return latents
        return self.to_images(self.decode_latents(latents), output_type)

    def _image_tensor(self, image) -> torch.Tensor:
        """PIL image(s) or a tensor in [-1, 1] -> (B, 3, H, W) float tensor in [-1, 1]."""
        from PIL import Image

        if isinstance(image, Image.Image):
            image = [image]
        if isinstance(image, (list, tuple)) and image and all(isinstance(i, Image.Image) for i in image):
            arrays = [np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0 for i in image]
            if len({a.shape for a in arrays}) != 1:
                raise ValueError(f"The images have different sizes {sorted({a.shape[:2] for a in arrays})}; "
                                 f"resize them to one size first.")
            # [0, 255] -> [-1, 1]; (B, H, W, 3) -> (B, 3, H, W)
            image = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2 - 1
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a PIL image, a list of PIL images or a tensor (B, 3, H, W) in [-1, 1], "
                            f"got {type(image).__name__}.")
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image has shape {tuple(image.shape)}, expected (B, 3, H, W) with values in [-1, 1].")
        return image.float()

    def check_inputs(self, prompt, negative_prompt, height, width, num_inference_steps, guidance_scale,
                     sampler, generator, latents, num_images_per_prompt, output_type, callback):
        """Refuse bad arguments before any work, each with what was wrong and what to do.

        :return: (prompts as a list of B strings (a sweep: the one prompt), guidance scales as a list
            of floats (one, or the sweep's S scales))
        """
        prompts = _prompt_list(prompt, "prompt")
        if negative_prompt is not None:
            negatives = _prompt_list(negative_prompt, "negative_prompt")
            if not isinstance(negative_prompt, str) and len(negatives) != len(prompts):
                raise ValueError(
                    f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}. Give one negative "
                    f"prompt per prompt, or a single string for all of them."
                )
        if isinstance(guidance_scale, (list, tuple)):
            if not guidance_scale:
                raise ValueError("guidance_scale is an empty list. Give a number such as 7.5, or a list of scales "
                                 "such as [1, 3, 7.5] for a sweep.")
            if len(prompts) != 1:
                raise ValueError(
                    f"A list of guidance scales (a sweep) takes one prompt, got {len(prompts)}. Run one sweep per "
                    f"prompt, or give a single guidance_scale for all prompts."
                )
            scales = [check_number(s, "guidance_scale", minimum=0.0, hint="Guidance scales are >= 0 (1 = no guidance).")
                      for s in guidance_scale]
        else:
            scales = [check_number(guidance_scale, "guidance_scale", minimum=0.0,
                                   hint="Guidance scales are >= 0: 1 means no guidance, 7.5 is SD's usual.")]
        check_int_range(num_inference_steps, "num_inference_steps", 1, self.schedule.num_train_timesteps,
                        hint="Use 20 to 50 sampling steps.")
        check_int_range(num_images_per_prompt, "num_images_per_prompt", 1)
        check_choice(sampler, SAMPLER_NAMES, "sampler")
        check_choice(output_type, OUTPUT_TYPES, "output_type")
        multiple = self.size_multiple
        for value, name in ((height, "height"), (width, "width")):
            check_int_range(value, name, 1)
            if value % multiple:
                lower = value // multiple * multiple
                nearest = f"{lower} or {lower + multiple}" if lower else f"{multiple}"
                raise ValueError(
                    f"{name} must be a multiple of {multiple}, got {value}: the VAE shrinks images by "
                    f"{self.vae_scale_factor} and the UNet halves its latents {self.unet.config.num_downsamples} "
                    f"times. Use {nearest}."
                )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}. "
                            f"Use torch.Generator().manual_seed(0).")
        if latents is not None:
            if not isinstance(latents, torch.Tensor):
                raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}.")
            shape = (len(prompts) * num_images_per_prompt, self.unet.config.in_channels,
                     height // self.vae_scale_factor, width // self.vae_scale_factor)
            check_shape(latents, "latents", shape, hint=(
                f"For {len(prompts)} prompt(s) x {num_images_per_prompt} image(s) of {height}x{width} pixels the "
                f"starting noise is (prompts * images per prompt, latent channels, height / {self.vae_scale_factor}, "
                f"width / {self.vae_scale_factor}); a guidance sweep shares one noise for all scales."))
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function callback(i, t, latents), got {type(callback).__name__}.")
        return prompts, scales

    @torch.no_grad()
    def encode_prompt(self, prompt, negative_prompt=None, num_images_per_prompt: int = 1,
                      do_cfg: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text states the UNet cross-attends to: c for the prompts, c_uncond for guidance.

        Tokens are padded to L = tokenizer.model_max_length and encoded without an attention
        mask, as SD v1.x (a text encoder whose config sets use_attention_mask gets the mask).

        :param prompt: a prompt or a list of B prompts
        :param negative_prompt: None (the empty prompt ""), one string, or a list of B
        :param num_images_per_prompt: copies of each prompt's states
        :param do_cfg: also encode the unconditional branch
        :return: (prompt_embeds (B * n, L, D), negative_prompt_embeds (B * n, L, D) or None)
        """
        prompts = _prompt_list(prompt, "prompt")
        prompt_embeds = self._encode_text(prompts)
        negative_prompt_embeds = None
        if do_cfg:
            # the unconditional branch: the negative prompt, or the empty prompt ""
            if negative_prompt is None:
                negatives = [""] * len(prompts)
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * len(prompts)
            else:
                negatives = _prompt_list(negative_prompt, "negative_prompt")
            negative_prompt_embeds = self._encode_text(negatives)
            if negative_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
                raise ValueError(f"negative_prompt has {negative_prompt_embeds.shape[0]} entries but prompt has "
                                 f"{prompt_embeds.shape[0]}. Give one per prompt, or a single string.")
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        # one copy per image: (B, L, D) -> (B * n, L, D), prompt by prompt
        return prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0), negative_prompt_embeds

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> last hidden state (B, L, D) on the UNet's device and dtype."""
        tokens = tokenize_prompts(self.tokenizer, prompts)  # warns about truncated and unknown words
        device = self.text_encoder.device
        mask = tokens["attention_mask"].to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) \
            else None
        states = encode_text(self.text_encoder, tokens["input_ids"].to(device), mask)
        return states.to(device=self.device, dtype=self.dtype)

    def prepare_latents(self, batch_size: int, height: int, width: int, sampler: Sampler,
                        generator: torch.Generator | None = None, latents: torch.Tensor | None = None) -> torch.Tensor:
        """The starting noise z_T, scaled for the sampler.

        :param batch_size: N, the number of images
        :param height: image height in pixels (the latents are height / f)
        :param width: image width in pixels
        :param sampler: the sampler, after set_timesteps (Euler's init_noise_sigma depends on them)
        :param generator: draws the noise (on its own device: a CPU generator gives the same noise anywhere)
        :param latents: noise to use instead of drawing it, (N, C_z, height / f, width / f)
        :return: z_T * init_noise_sigma, (N, C_z, height / f, width / f) on the UNet's device and dtype
        """
        shape = (batch_size, self.unet.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator, device=self.device, dtype=self.dtype)
        else:
            check_shape(latents, "latents", shape)
            latents = latents.to(device=self.device, dtype=self.dtype)
        # z_T ~ N(0, sigma_init^2 I): 1 for samplers in z_t itself, sqrt(sigma_max^2 + 1) or sigma_max for Euler
        return latents * sampler.init_noise_sigma

    @torch.no_grad()
    def denoise_step(self, sampler: Sampler, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                     guidance_scale, do_cfg: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """One step of the loop: predict the noise (with guidance), then z_t -> z_{t-1}.

        :param sampler: the sampler, after set_timesteps
        :param latents: z_t, (N, C_z, h, w)
        :param t: the current timestep, one of sampler.timesteps
        :param prompt_embeds: (2N, L, D) = [c_uncond, c] with guidance, else c (N, L, D)
        :param guidance_scale: lambda, a number or a tensor (N,) with one scale per image
        :param do_cfg: classifier-free guidance on
        :param generator: for samplers that add noise (DDPM)
        :return: z_{t-1}, (N, C_z, h, w)
        """
        # 1. the batch of two: [z_t, z_t] for [c_uncond, c] (2N, C_z, h, w)
        latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
        latent_model_input = sampler.scale_model_input(latent_model_input, t)
        # 2. predict the noise: eps_theta(z_t, t, c) (t copied to the GPU without waiting for it: a
        #    UNet compiled with CUDA graphs takes GPU tensors only, and the sampler keeps t on the host)
        t_unet = t.to(latents.device, non_blocking=True) if isinstance(t, torch.Tensor) else t
        noise_pred = self.unet(latent_model_input, t_unet, encoder_hidden_states=prompt_embeds)
        # 3. classifier-free guidance: eps = eps(z_t, c_uncond) + lambda (eps(z_t, c) - eps(z_t, c_uncond))
        if do_cfg:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = cfg(noise_pred_uncond, noise_pred_text, guidance_scale)
        # 4. one sampler step: z_t -> z_{t-1}
        return sampler.step(noise_pred, t, latents, generator=generator)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images from the UNet's latents: x = D(z / s), s = vae.config.scaling_factor.

        :param latents: s * z, (N, C_z, h, w)
        :return: images (N, 3, h * f, w * f), roughly in [-1, 1], in the VAE's dtype (float32 when upcast)
        """
        vae_dtype = next(self.vae.parameters()).dtype
        # z = latents / s: the UNet was trained on s * z
        z = latents.to(vae_dtype) / self.vae.config.scaling_factor
        return self.vae.decode(z)

    @staticmethod
    def to_images(images: torch.Tensor, output_type: str = "pil"):
        """Images in [-1, 1] -> what diffusers' image processor returns.

        :param images: (N, 3, H, W) in about [-1, 1]
        :param output_type: "np" (float32 array (N, H, W, 3) in [0, 1]) or "pil" (list of N PIL images)
        """
        from PIL import Image

        check_choice(output_type, ("pil", "np"), "output_type")
        # [-1, 1] -> [0, 1]: x / 2 + 0.5, clipped; (N, 3, H, W) -> (N, H, W, 3)
        array = (images.detach() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return array
        return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in array]

    def _per_image_scale(self, scales: list[float], num_images_per_prompt: int):
        """One guidance scale (a float), or a sweep's scales as a tensor (S * n,), scale-major.

        A scale of 1 or less means the conditional model alone, as in diffusers; in a sweep that
        also has larger scales it becomes exactly 1: eps_uncond + 1 (eps_cond - eps_uncond) = eps_cond.
        """
        if len(scales) == 1:
            return scales[0]
        # on the host: cfg checks the scales at every step, which on a GPU tensor would make the host wait
        per_scale = torch.tensor([max(scale, 1.0) for scale in scales])
        return per_scale.repeat_interleave(num_images_per_prompt)


# ----------------------------------------------------------------------------------------------
# Helpers


def _prompt_list(prompt, name: str) -> list[str]:
    """A string or a non-empty list/tuple of strings -> a list of strings; anything else is an error."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise ValueError(f"{name} is an empty list. Give at least one prompt, e.g. [\"a red circle\"].")
    raise TypeError(f"{name} must be a string or a list of strings, got {prompt!r} of type {type(prompt).__name__}. "
                    f"Pass \"a red circle\" or [\"a red circle\", \"a blue square\"].")


def _repeat_halves(prompt_embeds: torch.Tensor, times: int, do_cfg: bool) -> torch.Tensor:
    """Repeat text states for a sweep; with guidance each half [c_uncond, c] is repeated on its own."""
    if not do_cfg:
        return prompt_embeds.repeat(times, 1, 1)
    negative, positive = prompt_embeds.chunk(2)
    return torch.cat([negative.repeat(times, 1, 1), positive.repeat(times, 1, 1)])


def _scheduler_settings(config: dict) -> dict:
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


def _schedule_from_config(config: dict) -> NoiseSchedule:
    """The noise schedule of a diffusers scheduler config (beta_schedule, beta_start, beta_end, T)."""
    settings = _scheduler_settings(config)
    return make_schedule(BETA_SCHEDULES[settings.get("beta_schedule", "linear")],
                         settings.get("num_train_timesteps", 1000),
                         settings.get("beta_start", 0.0001), settings.get("beta_end", 0.02))


def _build_and_load(network_class, config, state_dict: dict, source: str) -> nn.Module:
    """A network built from its config and given these weights (strictly: every key, every shape).

    It is built on the meta device, which allocates nothing and skips the random initialisation
    (SD's UNet has 860 million numbers), then takes the tensors of ``state_dict`` as its own.
    """
    with torch.device("meta"):
        model = network_class(config)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"The weights of {source} do not fit the network its config describes: {error}. "
                         f"The config.json and the weights come from different models.") from None
    return model.eval()


def _load_diffusers_weights(network_class, config_class, folder: Path) -> nn.Module:
    """course_lib's UNet or VAE from a diffusers model folder: config.json and safetensors weights."""
    from safetensors.torch import load_file

    config = config_class.from_dict(json.loads((folder / "config.json").read_text()))
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        weights = folder / "diffusion_pytorch_model.fp16.safetensors"
    return _build_and_load(network_class, config, load_file(weights), str(weights)).float()


def _looks_like_repo_id(name: str) -> bool:
    """'owner/name' or 'name' with the characters the hub allows (a path such as ./sd or /data/sd is not)."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None and ".." not in name


def _where_to_get_weights(repo_id: str) -> str:
    return (
        f"Download them once on a machine with internet (SD v1.5 in float32: about 5.2 GB): "
        f"hf download {repo_id} {' '.join(SD_ALLOW_PATTERNS)} --local-dir stable-diffusion-v1-5 "
        f"(or StableDiffusion.from_pretrained({repo_id!r}) online, which keeps them in the Hugging Face cache). "
        f"Then point the course at the folder: COURSE_SD_PATH=/path/to/stable-diffusion-v1-5, or "
        f"StableDiffusion.from_pretrained('/path/to/stable-diffusion-v1-5')."
    )


def _sd_folder(path_or_repo_id) -> Path:
    """The local folder of the weights: the path itself, $COURSE_SD_PATH, or the hub cache of a repo id."""
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise TypeError(f"path_or_repo_id must be a folder or a hub repo id such as {SD_REPO_ID!r}, "
                        f"got {type(path_or_repo_id).__name__}.")
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    env_path = os.environ.get("COURSE_SD_PATH")
    if env_path:
        if not Path(env_path).expanduser().is_dir():
            raise FileNotFoundError(f"COURSE_SD_PATH is {env_path!r}, which is not a folder. Set it to a folder in "
                                    f"diffusers' layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/).")
        return Path(env_path).expanduser()
    name = os.fspath(path_or_repo_id)
    if isinstance(path_or_repo_id, os.PathLike) or not _looks_like_repo_id(name):
        raise FileNotFoundError(f"No folder {name!r}. Give a folder in diffusers' layout (unet/, vae/, "
                                f"text_encoder/, tokenizer/, scheduler/) or a hub repo id such as {SD_REPO_ID!r}.")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(snapshot_download(name, allow_patterns=SD_ALLOW_PATTERNS, local_files_only=offline))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"The Stable Diffusion weights {name!r} are not in the Hugging Face cache and downloads are off "
            f"({'HF_HUB_OFFLINE=1' if offline else 'no connection to the hub'}). {_where_to_get_weights(name)}"
        ) from None
    except Exception as error:  # the hub's errors (no such repo, gated, HTTP) -> one message with what to do
        raise ValueError(f"Could not get {name!r} from the Hugging Face hub: {error}. {_where_to_get_weights(name)}") \
            from None


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
