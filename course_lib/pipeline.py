"""Stable Diffusion: prompt -> image, the sampling loop of lesson 08.

``StableDiffusion`` holds the four parts of a latent diffusion model and runs the loop of
diffusers' ``StableDiffusionPipeline.__call__`` in the same order, one readable method per step:

    prompt "a red circle"
      1. check_inputs      refuse bad arguments; check_resources: requests over the caps of course_lib.limits
      2. make_sampler      a course_lib sampler on the model's noise schedule; set_timesteps(n)
      3. prepare_latents   z_T ~ N(0, I) of shape (B, 4, H/f, W/f), scaled by init_noise_sigma
      then run_loop, the part that image-to-image shares:
      4. text_states       tokenizer -> text encoder: c = tau(prompt), (B, L, D); for guidance the batch of
                           two [c_uncond, c], c_uncond = tau(negative prompt or "")
      5. denoise_step      (n times) predict_noise: the batch of two [z_t, z_t] through the UNet with
                           [c_uncond, c], classifier-free guidance; then one sampler step z_t -> z_{t-1}
      6. decode_latents    x = D(z_0 / s), the VAE decoder, s = vae.config.scaling_factor
      7. to_images         [-1, 1] -> PIL images or a float array in [0, 1]

``img2img`` (SDEdit) differs only in where the loop starts: at z_t = the encoded picture, noised to
a timestep chosen by ``strength``; ``run_loop`` takes any start, any run of timesteps and any step
function, so ``invert`` (DDIM inversion, lesson 11) is the same loop with the timesteps ascending
and the DDIM step run backwards. ``load_lora`` / ``unload_lora`` put a LoRA adapter and its new
word on the model (lesson 11).

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

Four ways to build one (their parts come from ``course_lib.sd_loading``)::

    pipe = StableDiffusion.from_course("mini-sd")          # the course's mini SD in data/checkpoints
    pipe = StableDiffusion.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")  # SD v1.x
    pipe = StableDiffusion.from_diffusers(diffusers_pipe)  # the weights of a diffusers pipeline
    pipe = StableDiffusion.with_random_weights("sd15")     # SD v1.5's architecture, random: to time it
    images = pipe("a red circle", num_inference_steps=30, guidance_scale=7.5)

The text encoder is transformers' ``CLIPTextModel`` itself; the UNet and the VAE are course_lib's
(``nn/unet.py``, ``nn/vae.py``), which load diffusers' weights by key. With the same weights,
latents and sampler the images equal diffusers' (tests/test_pipeline.py). diffusers is never imported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_int_range, check_number, check_shape
from .checkpoints import checkpoint_dir
from .guidance import cfg
from .inversion import ddim_inverse_step
from .limits import SamplingEstimate, check_sampling_request
from .lora import LoadedAdapter, load_adapter, unload_adapter
from .nn.attention import fuse_projections as fuse_attention_projections
from .nn.text import encode_text, tokenize_prompts
from .nn.unet import UNet2DConditionModel
from .nn.vae import AutoencoderKL
from .pixels import image_batch, to_uint8, to_unit
from .samplers import SAMPLER_NAMES, Sampler, make_sampler, randn_tensor
from .schedules import NoiseSchedule
from .sd_loading import (
    ARCHITECTURES,
    MINI_SD_CHECKPOINTS,
    MINI_SD_TOKENIZER,
    SD15_ARCHITECTURE,
    SD_REPO_ID,
    SD_SCHEDULER_CONFIG,
    TINY_ARCHITECTURE,
    from_diffusers_pipe,
    load_mini_sd,
    load_sd_folder,
    random_parts,
    scheduler_settings,
)

# the constants from SD15_ARCHITECTURE on live in sd_loading; they are named here too, where learners import them
__all__ = ["StableDiffusion", "OUTPUT_TYPES", "SD15_ARCHITECTURE", "TINY_ARCHITECTURE", "SD_REPO_ID",
           "SD_SCHEDULER_CONFIG", "MINI_SD_CHECKPOINTS", "MINI_SD_TOKENIZER"]

OUTPUT_TYPES = ("pil", "np", "latent")


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
        sampler's own default, which is that of diffusers' scheduler of the same name),
        ``steps_offset``, ``set_alpha_to_one`` (DDIM), ``variance_type`` (DDPM);
        ``prediction_type`` must be "epsilon".

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
        settings = scheduler_settings(SD_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
        self.scheduler_config = settings
        self.timestep_spacing = settings.get("timestep_spacing")  # None: each sampler's own default
        # the defaults of diffusers' schedulers for keys a config leaves out
        self.steps_offset = settings.get("steps_offset", 0)
        self.set_alpha_to_one = settings.get("set_alpha_to_one", True)
        self.variance_type = settings.get("variance_type", "fixed_small")
        self.prediction_type = settings.get("prediction_type", "epsilon")
        self._progress_bar_config: dict = {}
        self.fast: dict | None = None  # what optimize() turned on
        self.checkpoint_folder: Path | None = None  # where load_lora looks for adapters by name (None: the default)
        self.lora: LoadedAdapter | None = None  # the adapter load_lora put on, if any

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
        pipe = cls(*load_mini_sd(folder)).to(device, dtype)
        pipe.checkpoint_folder = folder
        return pipe

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "StableDiffusion":
        """Stable Diffusion v1.x (or 2.x-base) from a folder in diffusers' layout, or a hub repo id.

        The folder holds model_index.json, scheduler/, tokenizer/, text_encoder/, unet/, vae/ with
        safetensors weights. A repo id such as "stable-diffusion-v1-5/stable-diffusion-v1-5" is
        read from the Hugging Face cache (downloading only the files needed, when online).

        :param path_or_repo_id: a local folder, which must exist (a path that is not a folder is an
            error, never replaced by another), or a hub repo id; default: $COURSE_SD_PATH if set,
            else SD v1.5's repo id. $COURSE_SD_PATH names the local copy of SD v1.5, and stands in
            for its repo id only
        :param dtype: torch.float16 on a GPU halves memory and time (the VAE too, as in diffusers'
            StableDiffusionPipeline); default float32
        :param device: e.g. "cuda" (default: the CPU)
        """
        return cls(*load_sd_folder(path_or_repo_id)).to(device, dtype or torch.float32)

    @classmethod
    def from_diffusers(cls, pipe) -> "StableDiffusion":
        """The same model as a diffusers ``StableDiffusionPipeline``: its tokenizer and text encoder
        as they are, its UNet's and VAE's weights loaded into course_lib's networks, its scheduler's config.

        :param pipe: a diffusers StableDiffusionPipeline (diffusers itself is not imported here)
        """
        ours = cls(*from_diffusers_pipe(pipe))
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
        check_choice(architecture, tuple(ARCHITECTURES), "architecture")
        pipe = cls(*random_parts(architecture, device, seed))
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

        The VAE moves to the same dtype, as in diffusers' ``StableDiffusionPipeline``, which decodes
        SD v1.x in float16 (the ``force_upcast`` of a VAE config is read by diffusers' SDXL pipelines
        only: SDXL's VAE overflows float16). To decode in float32 anyway, move the VAE afterwards,
        ``pipe.vae.to(torch.float32)``: the latents are cast to the VAE's dtype before decoding.

        :return: self
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype such as torch.float16, got {dtype}.")
        for module in (self.unet, self.text_encoder, self.vae):
            module.to(device=device, dtype=dtype)
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
        ``XScheduler.from_config(pipe.scheduler.config)`` builds its scheduler: a setting the config
        leaves out (SD v1.x's sets no ``timestep_spacing``) takes the sampler's own default.

        :param name: "ddim", "ddpm", "euler" or "dpmsolver"
        """
        check_choice(name, SAMPLER_NAMES, "sampler")
        kwargs = {"steps_offset": self.steps_offset}
        if self.timestep_spacing is not None:
            kwargs["timestep_spacing"] = self.timestep_spacing
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

        # 1. check the inputs, and the memory of the whole request (nothing is allocated before);
        #    a guidance sweep becomes one prompt repeated with one scale per image
        prompts, scales = self.check_inputs(prompt, negative_prompt, height, width, num_inference_steps,
                                            guidance_scale, sampler, generator, latents, num_images_per_prompt,
                                            output_type, callback)
        self.check_resources(len(prompts) * num_images_per_prompt * len(scales), height, width, max(scales) > 1)

        # 2. the sampler and its timesteps
        sampler = self.make_sampler(sampler)
        sampler.set_timesteps(num_inference_steps)

        # 3. the starting noise z_T, shared by every scale of a sweep
        latents = self.prepare_latents(len(prompts) * num_images_per_prompt, height, width, sampler,
                                       generator, latents)

        # 4.-7. text states, the denoising loop z_T -> z_0, latents -> images
        return self.run_loop(latents, prompts, negative_prompt, scales, sampler, sampler.timesteps,
                             num_images_per_prompt=num_images_per_prompt, generator=generator,
                             callback=callback, output_type=output_type)

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

        :param image: a PIL image or a list of B PIL images; 8-bit pixels 0..255 as a uint8 array
            or tensor, (B, H, W, 3) or (H, W, 3) (a tensor also (B, 3, H, W)); or a float tensor
            (B, 3, H, W) or (3, H, W) with values in [-1, 1] (pictures in [0, 1]: convert with
            ``course_lib.pixels.from_unit``). H and W multiples of ``size_multiple``
        :param prompt: one prompt, or B prompts (one per image)
        :param strength: how much of the image is destroyed, in [0, 1]
        :param negative_prompt, num_inference_steps, guidance_scale, sampler, generator, output_type:
            as in ``__call__`` (no guidance sweep here)
        :return: the images, one per input image
        """
        strength = check_number(strength, "strength", 0.0)
        if strength > 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}: 0 keeps the image, 1 starts from noise.")
        images, prompts, scales = self._image_inputs(image, prompt, negative_prompt, num_inference_steps,
                                                     guidance_scale, sampler, generator, output_type)

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
            return self._output(latents, output_type)

        # 3. z_t: the forward process to the first timestep run
        noise = randn_tensor(latents.shape, generator, device=self.device, dtype=self.dtype)
        latents = sampler.add_noise(latents, noise, timesteps[0])

        # 4. the end of the denoising loop, from z_t
        return self.run_loop(latents, prompts, negative_prompt, scales, sampler, timesteps,
                             generator=generator, output_type=output_type, desc=f"{sampler.name} img2img")

    def _image_inputs(self, image, prompt, negative_prompt, num_inference_steps, guidance_scale, sampler, generator,
                      output_type, callback=None) -> tuple[torch.Tensor, list[str], list[float]]:
        """The checks of a loop that starts from pictures (img2img, invert), before any work.

        :return: (images (B, 3, H, W) float in [-1, 1], B prompts (one given is repeated), [guidance scale])
        """
        checked = {}

        def check(batch_size: int, height: int, width: int) -> None:  # runs before the image is converted
            prompts, scales = self.check_inputs(prompt, negative_prompt, height, width, num_inference_steps,
                                                guidance_scale, sampler, generator, None, 1, output_type, callback)
            if len(scales) != 1:
                raise ValueError("Give one guidance_scale for pictures, not a list. Call it once per scale.")
            if len(prompts) not in (1, batch_size):
                raise ValueError(f"Got {batch_size} images and {len(prompts)} prompts. Pass one prompt for all, "
                                 f"or one per image.")
            self.check_resources(batch_size, height, width, scales[0] > 1, encode=True)
            checked.update(prompts=prompts * (batch_size // len(prompts)), scales=scales)

        images = image_batch(image, check)
        return images, checked["prompts"], checked["scales"]

    @torch.no_grad()
    def invert(self, image, prompt, num_inference_steps: int = 50, guidance_scale: float = 1.0, negative_prompt=None,
               callback=None) -> torch.Tensor:
        """DDIM inversion (lesson 11): the z_T from which DDIM (eta = 0) with this prompt draws the picture.

        The same loop as sampling (``run_loop``), over the same timesteps in ascending order, with the
        DDIM update run backwards (``inversion.ddim_inverse_step``):

            z_0 = s mean(E(x))                                 the picture's latent (no sampling noise)
            for t = t_1 < t_2 < ... < t_n:  ε ≈ ε_θ(z_{t'}, t, c)   (the point we have stands in for z_t)
                z_t = sqrt(ᾱ_t) x̂_0 + sqrt(1 - ᾱ_t) ε,   x̂_0 = (z_{t'} - sqrt(1 - ᾱ_{t'}) ε) / sqrt(ᾱ_{t'})

        ``pipe(prompt, latents=z_T, num_inference_steps=n, guidance_scale=λ)`` (DDIM) then draws the
        picture back, up to the approximation and the VAE's round trip; with another prompt it edits it.

        :param image: as in :meth:`img2img` (PIL images, uint8 pixels, or floats (B, 3, H, W) in [-1, 1])
        :param prompt: one prompt, or one per image: what the pictures show ("" when no caption fits)
        :param num_inference_steps: n; sample from z_T with the same n
        :param guidance_scale: λ; 1 (the default) inverts the conditional model alone, which is what
            reconstructs best (guidance makes ε̃ change faster along the path)
        :param negative_prompt: the unconditional branch's prompt when guidance_scale > 1
        :param callback: ``callback(i, t, latents)`` after each inverse step
        :return: z_T, (B, C_z, H/f, W/f), in the UNet's dtype
        """
        images, prompts, scales = self._image_inputs(image, prompt, negative_prompt, num_inference_steps,
                                                     guidance_scale, "ddim", None, "latent", callback)
        sampler = self.make_sampler("ddim")  # eta = 0: the one sampler that is a one-to-one map
        sampler.set_timesteps(num_inference_steps)
        # z_0 = s * the posterior mean of q(z | x): the picture's latent, deterministic
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(images.to(device=self.device, dtype=vae_dtype))
        latents = (posterior.mean * self.vae.config.scaling_factor).to(self.dtype)
        # the sampling loop over the timesteps low to high (1, 21, ..., 981 for n = 50), each step undone
        return self.run_loop(latents, prompts, negative_prompt, scales, sampler, sampler.timesteps.flip(0),
                             callback=callback, output_type="latent", desc="ddim inversion",
                             step=lambda noise_pred, t, z: ddim_inverse_step(noise_pred, t, z, sampler))

    # ------------------------------------------------------------------------------ LoRA adapters
    def load_lora(self, name_or_path: str | os.PathLike = "orange", folder: str | os.PathLike | None = None
                  ) -> LoadedAdapter:
        """Put a LoRA adapter on the UNet (and on the VAE's decoder when it has one), and its new word in
        the tokenizer and text encoder (lesson 11).

        ``pipe.load_lora("orange")`` loads the adapter ``shapes-lora-orange`` of the checkpoint folder
        (the one ``from_course`` read, else $COURSE_CHECKPOINT_DIR or data/checkpoints); a path loads
        that file. Afterwards prompts may use the word; ``unload_lora()`` restores the model exactly.

        :param name_or_path: a word with an adapter in the folder ("orange"), or an adapter's path
        :param folder: where to look for a name (default: see above)
        :return: the loaded adapter (``course_lib.lora.LoadedAdapter``), also kept as ``pipe.lora``
        :raises ValueError: an unknown name (the message lists the adapters there), an adapter that
            does not fit this model, a second adapter, or a UNet in the fast mode (fused projections)
        """
        if self.lora is not None:
            raise ValueError(f"The adapter {self.lora.name!r} is already loaded. Call pipe.unload_lora() first.")
        loaded = load_adapter(self.unet, self.tokenizer, self.text_encoder, name_or_path,
                              folder=self.checkpoint_folder if folder is None else folder, vae=self.vae)
        self.tokenizer, self.lora = loaded.tokenizer, loaded
        return loaded

    def unload_lora(self) -> None:
        """Take the adapter of :meth:`load_lora` off: the UNet, text encoder and tokenizer as before."""
        if self.lora is None:
            raise ValueError("No LoRA adapter is loaded: nothing to unload. Load one with pipe.load_lora('orange').")
        self.tokenizer = unload_adapter(self.unet, self.text_encoder, self.lora)
        self.lora = None

    @torch.no_grad()
    def run_loop(self, latents: torch.Tensor, prompts: list[str], negative_prompt, scales: list[float],
                 sampler: Sampler, timesteps: torch.Tensor, *, num_images_per_prompt: int = 1,
                 generator: torch.Generator | None = None, callback=None, output_type: str = "latent",
                 step: Callable | None = None, desc: str | None = None):
        """Text states -> batch of two -> the loop over ``timesteps`` -> the result; what ``__call__``
        and ``img2img`` share (inputs already checked).

        :param latents: where the loop starts, (N, C_z, h, w): z_T, a noised picture (img2img), or
            a clean latent for an inversion; N = len(prompts) * num_images_per_prompt (a sweep: n)
        :param prompts: the B prompts, as ``check_inputs`` returns them
        :param negative_prompt: None, one string, or B of them
        :param scales: the guidance scales: one, or a sweep's S (every image repeated once per scale)
        :param sampler: the sampler, after set_timesteps
        :param timesteps: the timesteps to run, in order (``sampler.timesteps`` or a part of it)
        :param num_images_per_prompt: images per prompt
        :param generator: for samplers that add noise (DDPM)
        :param callback: ``callback(i, t, latents)`` after step i
        :param output_type: "latent", "np" or "pil"
        :param step: ``step(noise_pred, t, latents) -> latents``, one update of the loop (default:
            ``sampler.step``); an inversion passes the DDIM update run backwards
        :param desc: the progress bar's label (default: the sampler's name)
        :return: the final latents, or the images
        """
        # 4. the text states c (and c_uncond): one batch of two halves for the UNet, [c_uncond, c]
        do_cfg = max(scales) > 1  # classifier-free guidance only when some scale is above 1 (diffusers: > 1)
        prompt_embeds = self.text_states(prompts, negative_prompt, num_images_per_prompt, do_cfg)
        if len(scales) > 1:  # a sweep: (n, C, h, w) -> (S * n, C, h, w), scale-major, the same noise for all
            latents = latents.repeat(len(scales), 1, 1, 1)
            prompt_embeds = _repeat_halves(prompt_embeds, len(scales), do_cfg)
        guidance = self._per_image_scale(scales, num_images_per_prompt)
        if step is None:
            def step(noise_pred, t, latents):
                return sampler.step(noise_pred, t, latents, generator=generator)

        # 5. the denoising loop
        start = latents
        progress = tqdm(timesteps, **{"desc": desc or sampler.name, **self._progress_bar_config})
        for i, t in enumerate(progress):
            noise_pred = self.predict_noise(sampler, latents, t, prompt_embeds, guidance, do_cfg)
            if self.unet.check_values:  # off in the fast mode: the check makes the host wait for the GPU
                _check_finite_step(noise_pred, "noise prediction", i, t, len(timesteps), scales, start)
            latents = step(noise_pred, t, latents)
            if self.unet.check_values:
                _check_finite_step(latents, "latents", i, t, len(timesteps), scales, start)
            if callback is not None:
                callback(i, t, latents)
        # 6.-7. latents -> images
        return self._output(latents, output_type)

    @torch.no_grad()
    def predict_noise(self, sampler: Sampler, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                      guidance_scale, do_cfg: bool) -> torch.Tensor:
        """The guided noise prediction at one step: the batch of two through the UNet, then guidance.

        :param sampler: the sampler, after set_timesteps (it scales the UNet's input)
        :param latents: z_t, (N, C_z, h, w)
        :param t: the current timestep, one of sampler.timesteps
        :param prompt_embeds: (2N, L, D) = [c_uncond, c] with guidance, else c (N, L, D)
        :param guidance_scale: lambda, a number or a tensor (N,) with one scale per image
        :param do_cfg: classifier-free guidance on
        :return: eps, (N, C_z, h, w)
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
        return noise_pred

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
        noise_pred = self.predict_noise(sampler, latents, t, prompt_embeds, guidance_scale, do_cfg)
        # 4. one sampler step: z_t -> z_{t-1}
        return sampler.step(noise_pred, t, latents, generator=generator)

    @torch.no_grad()
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
            _check_latents_type(latents)
            shape = (len(prompts) * num_images_per_prompt, self.unet.config.in_channels,
                     height // self.vae_scale_factor, width // self.vae_scale_factor)
            check_shape(latents, "latents", shape, hint=(
                f"For {len(prompts)} prompt(s) x {num_images_per_prompt} image(s) of {height}x{width} pixels the "
                f"starting noise is (prompts * images per prompt, latent channels, height / {self.vae_scale_factor}, "
                f"width / {self.vae_scale_factor}); a guidance sweep shares one noise for all scales."))
            if self.unet.check_values and not torch.isfinite(latents).all():
                raise ValueError(f"latents has {int((~torch.isfinite(latents)).sum())} non-finite values (NaN or inf). "
                                 f"The starting noise must be finite: draw it with torch.randn(...).")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function callback(i, t, latents), got {type(callback).__name__}.")
        return prompts, scales

    def check_resources(self, batch_size: int, height: int, width: int, guidance: bool,
                        encode: bool = False) -> SamplingEstimate:
        """Refuse a request whose memory estimate is over the cap, before anything is allocated.

        The estimate and the caps are :mod:`course_lib.limits`' ($COURSE_MAX_MEMORY_GB,
        $COURSE_MAX_LATENT_POSITIONS); the refusal is a ``ResourceLimitError`` (a ValueError) that
        names the estimate, the cap and what to do.

        :param batch_size: the images sampled in one pass (prompts x images per prompt x scales)
        :param height: image height in pixels
        :param width: image width in pixels
        :param guidance: classifier-free guidance (the UNet sees the batch of two)
        :param encode: the images are encoded first (img2img)
        :return: the estimate
        """
        return check_sampling_request(self.unet.config, self.vae.config, height=height, width=width,
                                      batch_size=batch_size, guidance=guidance, dtype=self.dtype,
                                      vae_dtype=next(self.vae.parameters()).dtype, encode=encode, device=self.device)

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

    def text_states(self, prompt, negative_prompt=None, num_images_per_prompt: int = 1,
                    do_cfg: bool = True) -> torch.Tensor:
        """What the UNet cross-attends to: with guidance the batch of two [c_uncond, c], (2 B n, L, D); else c.

        :param prompt, negative_prompt, num_images_per_prompt, do_cfg: as in :meth:`encode_prompt`
        """
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompt, negative_prompt, num_images_per_prompt,
                                                                   do_cfg)
        return torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds

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
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images from the UNet's latents: x = D(z / s), s = vae.config.scaling_factor.

        :param latents: s * z, (N, C_z, h, w)
        :return: images (N, 3, h * f, w * f), roughly in [-1, 1], in the VAE's dtype
        """
        vae_dtype = next(self.vae.parameters()).dtype
        # z = latents / s: the UNet was trained on s * z
        z = latents.to(vae_dtype) / self.vae.config.scaling_factor
        return self.vae.decode(z)

    @staticmethod
    def to_images(images: torch.Tensor, output_type: str = "pil"):
        """Images in [-1, 1] -> what diffusers' image processor returns (course_lib.pixels' conversions).

        :param images: (N, 3, H, W) in about [-1, 1]
        :param output_type: "np" (float32 array (N, H, W, 3) in [0, 1]) or "pil" (list of N PIL images,
            round(255 u) of the same u for float32 images)
        """
        from PIL import Image

        check_choice(output_type, ("pil", "np"), "output_type")
        if output_type == "np":
            # [-1, 1] -> [0, 1] in the images' dtype, as diffusers; (N, 3, H, W) -> (N, H, W, 3)
            return to_unit(images.detach()).cpu().permute(0, 2, 3, 1).float().numpy()
        return [Image.fromarray(image) for image in to_uint8(images)]

    def _output(self, latents: torch.Tensor, output_type: str):
        """The loop's result as asked: the latents themselves, or decoded images."""
        if output_type == "latent":
            return latents
        return self.to_images(self.decode_latents(latents), output_type)

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


def _check_latents_type(latents) -> None:
    """Starting latents must be a real floating-point tensor: complex or integer noise is refused."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}.")
    if latents.is_complex() or not latents.is_floating_point():
        raise TypeError(f"latents must be a real floating-point tensor (the starting noise z_T), got dtype "
                        f"{latents.dtype}. Draw it with torch.randn(shape, generator=generator).")


def _check_finite_step(values: torch.Tensor, what: str, i: int, t, steps: int, scales: list[float],
                       start: torch.Tensor) -> None:
    """At step i: refuse a NaN or inf noise prediction or latents, naming what most likely caused them."""
    if torch.isfinite(values).all():
        return
    finite = start[torch.isfinite(start)]
    seen = (f"from {finite.min().item():.3g} to {finite.max().item():.3g}" if finite.numel() else "none finite")
    scale = max(scales)
    raise ValueError(
        f"The {what} became non-finite (NaN or inf) at step {i + 1} of {steps} (t={float(t):g}). The likely cause "
        f"is the guidance scale ({scale:g}{'' if len(scales) == 1 else ', the largest of the sweep'}): guidance "
        f"multiplies the difference eps(z, c) - eps(z, c_uncond) by it, and a huge scale overflows the latents "
        f"(SD's usual is 7.5; use 1 to about 20); or the starting latents (their values ran {seen}; z_T is "
        f"standard normal noise, torch.randn). In float16, float32 also avoids overflow."
    )
