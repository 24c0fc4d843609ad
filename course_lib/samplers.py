"""Samplers: DDPM, DDIM, Euler and DPM-Solver++(2M) (lessons 02 and 09).

A sampler turns a noise prediction eps_theta(x_t, t) into the next, less noisy sample. All four
share one interface, the one of diffusers' schedulers (so a learner can read
``StableDiffusionPipeline.__call__`` with this file open), and each matches the diffusers
scheduler of the same name step for step (tests/test_samplers.py checks it):

    sampler.set_timesteps(50)                           # sampler.timesteps: high -> low
    x = x_T * sampler.init_noise_sigma
    for t in sampler.timesteps:
        eps = model(sampler.scale_model_input(x, t), t)
        x = sampler.step(eps, t, x, generator=g)         # returns the new sample

Notation (code name -> symbol; papers cited by the steps below):

=====================  ============================================================================
code name              symbol
=====================  ============================================================================
``t``, ``prev_t``      current timestep t and the next one on the sampling grid ("t-1" in the papers)
``alpha_bar_t``        $\\bar\\alpha_t$ (``alphas_cumprod[t]``; DDIM paper writes it $\\alpha_t$)
``alpha_bar_prev``     $\\bar\\alpha_{t-1}$ (1 or $\\bar\\alpha_0$ after the last step)
``beta_bar_t``         $1 - \\bar\\alpha_t$
``model_output``       $\\epsilon_\\theta(x_t, t)$, the predicted noise
``pred_x0``            $\\hat x_0 = f_\\theta(x_t, t)$, the clean image the prediction implies
``std_dev_t``          $\\sigma_t(\\eta)$ of DDIM eq. 16; the std of the noise added by DDPM
``sigma``              Euler: $\\sigma = \\sqrt{(1 - \\bar\\alpha_t)/\\bar\\alpha_t}$, noise level of $x_t/\\sqrt{\\bar\\alpha_t}$
``alpha_s, sigma_s``   DPM-Solver: $\\alpha_s = \\sqrt{\\bar\\alpha_s}$, $\\sigma_s = \\sqrt{1 - \\bar\\alpha_s}$
``lambda_s``           DPM-Solver: half log-SNR $\\lambda_s = \\log(\\alpha_s / \\sigma_s)$
``h``                  DPM-Solver: step in $\\lambda$, $h = \\lambda_t - \\lambda_s$
=====================  ============================================================================

Papers: DDPM = Ho et al. 2020; DDIM = Song et al. 2021; Karras et al. 2022 = "Elucidating the
Design Space of Diffusion-Based Generative Models"; Lu et al. 2022b = "DPM-Solver++".

Defaults: ``XSampler(schedule)`` is diffusers' ``XScheduler.from_config(config)`` for Stable
Diffusion v1.x's scheduler_config.json (tests/test_samplers.py checks it timestep for timestep).
That config sets ``steps_offset=1``, DDIM's ``set_alpha_to_one=False`` and no clipping of pred_x0,
and no ``timestep_spacing``, so each scheduler keeps its own default, and so does each sampler here:

=====================  ====================  ==============================================
sampler                timestep_spacing      diffusers' class (its default spacing)
=====================  ====================  ==============================================
``DDPMSampler``        ``"leading"``         ``DDPMScheduler``
``DDIMSampler``        ``"leading"``         ``DDIMScheduler``
``EulerSampler``       ``"linspace"``        ``EulerDiscreteScheduler``
``DPMSolverSampler``   ``"linspace"``        ``DPMSolverMultistepScheduler``
=====================  ====================  ==============================================

DDPM's ``variance_type`` is ``"fixed_small"``, diffusers' default.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_floating, check_int_range, check_number, check_shape, check_timesteps
from .diffusion import pred_x0_from_eps, q_sample
from .schedules import NoiseSchedule

__all__ = [
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "EulerSampler",
    "DPMSolverSampler",
    "make_sampler",
    "sample_loop",
    "randn_tensor",
    "SAMPLER_NAMES",
    "TIMESTEP_SPACINGS",
]

SAMPLER_NAMES = ("ddpm", "ddim", "euler", "dpmsolver")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


def randn_tensor(shape, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
    """Standard Gaussian noise, drawn exactly as diffusers' ``randn_tensor`` draws it.

    A CPU generator with a GPU ``device`` draws on the CPU and moves the result, so a seed gives
    the same numbers on every machine (and the same as a diffusers pipeline with that generator).

    :param shape: shape of the noise, e.g. (B, C, H, W)
    :param generator: a torch.Generator, or None for torch's global one
    :param device: device of the result (default: CPU)
    :param dtype: dtype of the result (default: torch's default dtype)
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if generator is not None and generator.device.type != device.type:
        if generator.device.type != "cpu":
            raise ValueError(
                f"Cannot draw a {device.type} tensor from a generator on {generator.device.type}. "
                f"Use a CPU generator (torch.Generator().manual_seed(seed)) or one on {device.type}."
            )
        rand_device = torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


class Sampler:
    """What all samplers share: the timestep grid, the lookup of a timestep, the interface.

    :param schedule: the noise schedule the model was trained with
    :param timestep_spacing: how the grid of ``n`` sampling timesteps is laid on 0..T-1:
        ``"leading"`` (i * (T // n) + steps_offset), ``"linspace"`` (evenly from 0 to T-1) or
        ``"trailing"`` (ends at T-1; Lin et al. 2024, Table 2); None: the class's
        ``default_timestep_spacing``, that of diffusers' scheduler of the same name
    :param steps_offset: added to every timestep by ``"leading"`` spacing (Stable Diffusion: 1)
    """

    name = "sampler"
    default_timestep_spacing = "leading"  # the default of diffusers' scheduler of the same name

    def __init__(self, schedule: NoiseSchedule, *, timestep_spacing: str | None = None, steps_offset: int = 1):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"schedule must be a NoiseSchedule, got {type(schedule).__name__}. "
                f"Build one with course_lib.schedules.make_schedule(...)."
            )
        self.schedule = schedule
        if timestep_spacing is None:
            timestep_spacing = self.default_timestep_spacing
        self.timestep_spacing = check_choice(timestep_spacing, TIMESTEP_SPACINGS, "timestep_spacing")
        self.steps_offset = check_int_range(steps_offset, "steps_offset", 0)
        self.num_inference_steps: int | None = None
        self._timesteps: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r}, num_inference_steps={self.num_inference_steps})"

    # ----------------------------------------------------------------------------- timesteps
    def _timestep_grid(self, n: int) -> np.ndarray:
        """The n sampling timesteps, high to low, as diffusers' DDPM/DDIM/Euler schedulers lay them."""
        T = self.schedule.num_train_timesteps
        if self.timestep_spacing == "leading":
            # t_i = i * floor(T / n) + steps_offset, i = n-1, ..., 0
            return (np.arange(0, n) * (T // n)).round()[::-1] + self.steps_offset
        if self.timestep_spacing == "trailing":
            # t_i = round(T - i * T / n) - 1, i = 0, ..., n-1: starts at T - 1
            return np.round(np.arange(T, 0, -T / n)) - 1
        # "linspace": n evenly spaced points from 0 to T - 1, rounded
        return np.linspace(0, T - 1, n).round()[::-1]

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the number of sampling steps, n; fills ``self.timesteps`` (n values, high to low).

        :param num_inference_steps: number of sampling steps, between 1 and T
        """
        T = self.schedule.num_train_timesteps
        n = check_int_range(
            num_inference_steps, "num_inference_steps", 1, T,
            hint=f"The model was trained on {T} timesteps, so a sampler can take at most {T} steps.",
        )
        grid = np.asarray(self._timestep_grid(n), dtype=np.float64).copy()
        problem = None
        if len(grid) != n:
            problem = f"{len(grid)} timesteps instead of {n}"
        elif grid.min() < 0 or grid.max() > T - 1:
            problem = f"timesteps from {grid.min():g} to {grid.max():g}, outside 0..{T - 1}"
        elif n > 1 and not (np.diff(grid) < 0).all():
            problem = "repeated timesteps"
        if problem:
            raise ValueError(
                f"set_timesteps({n}) with timestep_spacing={self.timestep_spacing!r} and "
                f"steps_offset={self.steps_offset} gives {problem}. Use fewer steps, steps_offset=0, "
                f"or another timestep_spacing."
            )
        if (grid == grid.round()).all():
            self._timesteps = torch.from_numpy(grid.astype(np.int64))
        else:  # only Euler with "linspace" spacing has fractional timesteps
            self._timesteps = torch.from_numpy(grid.astype(np.float32))
        self.num_inference_steps = n

    @property
    def timesteps(self) -> torch.Tensor:
        """The sampling timesteps, high to low: a LongTensor (n,) on the CPU (float32 only for
        Euler with ``"linspace"`` spacing, whose timesteps are fractional as in diffusers)."""
        if self._timesteps is None:
            raise ValueError(
                f"{type(self).__name__} has no timesteps yet. Call sampler.set_timesteps(num_inference_steps) first."
            )
        return self._timesteps

    def index_of(self, t) -> int:
        """Position of timestep ``t`` in ``self.timesteps``."""
        t_value = t.item() if isinstance(t, torch.Tensor) and t.numel() == 1 else t
        if not isinstance(t_value, (int, float)) or isinstance(t_value, bool):
            raise TypeError(f"t must be one timestep (an int or a 0-d tensor), got {t!r}.")
        matches = (self.timesteps == t_value).nonzero()
        if len(matches) == 0:
            shown = ", ".join(f"{v:g}" for v in self.timesteps[:4].tolist())
            raise ValueError(
                f"t={t_value:g} is not one of this sampler's timesteps ({shown}, ...). "
                f"Loop over sampler.timesteps after sampler.set_timesteps(n)."
            )
        return int(matches[0])

    def _next_timestep(self, i: int) -> int:
        """The timestep after position i of the grid, or -1 after the last one."""
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    # ----------------------------------------------------------------------------- interface
    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the starting noise x_T (1 for samplers that step in x_t itself)."""
        return 1.0

    def scale_model_input(self, sample: torch.Tensor, t) -> torch.Tensor:
        """What the denoiser sees at timestep t; the sample itself for DDPM, DDIM and DPM-Solver."""
        return sample

    def alpha_bar(self, t) -> torch.Tensor:
        """$\\bar\\alpha_t$ at one timestep, a 0-d float32 tensor (guidance needs it)."""
        t = check_timesteps(t, self.schedule.num_train_timesteps)
        if t.numel() != 1:
            raise ValueError(f"alpha_bar takes one timestep, got {t.numel()}.")
        return self.schedule.alphas_cumprod[int(t.reshape(()))]

    def step(self, model_output: torch.Tensor, t, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """One sampling step from x_t to the next sample; returns the new sample."""
        raise NotImplementedError

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Noise clean samples to timestep t of the grid, in this sampler's variable (img2img).

            x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) eps      (the forward process, q_sample)

        :param original: x_0, (B, C, H, W)
        :param noise: eps, same shape
        :param t: one of ``self.timesteps``
        :return: the sample the loop continues from at t
        """
        self.index_of(t)  # t must be on the grid
        t_batch = torch.full((original.shape[0],), int(t), dtype=torch.long, device=original.device)
        return q_sample(original, t_batch, noise, self.schedule)

    @staticmethod
    def _check_step_inputs(model_output: torch.Tensor, sample: torch.Tensor) -> None:
        check_floating(sample, "sample")
        check_floating(model_output, "model_output")
        check_shape(model_output, "model_output", sample.shape,
                    hint="The denoiser must return eps of the sample's shape.")


class DDPMSampler(Sampler):
    """Ancestral sampling of DDPM (Ho et al. 2020, Algorithm 2), on a grid of n <= T steps.

    :param schedule: the noise schedule
    :param variance_type: $\\sigma_t^2$ of the added noise: ``"fixed_small"`` ($\\tilde\\beta_t$, the
        variance of the true posterior q(x_{t-1} | x_t, x_0)) or ``"fixed_large"`` ($\\beta_t$)
    :param timestep_spacing: see :class:`Sampler` (default ``"leading"``, as diffusers')
    :param steps_offset: see :class:`Sampler`
    """

    name = "ddpm"

    def __init__(self, schedule: NoiseSchedule, variance_type: str = "fixed_small", *,
                 timestep_spacing: str | None = None, steps_offset: int = 1):
        super().__init__(schedule, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
        self.variance_type = check_choice(variance_type, ("fixed_small", "fixed_large"), "variance_type")

    def step(self, model_output: torch.Tensor, t, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """x_{t-1} ~ N(mu(x_t, pred_x0), sigma_t^2 I) (DDPM eq. 6, 7).

        :param model_output: $\\epsilon_\\theta(x_t, t)$, (B, C, H, W)
        :param t: the current timestep, one of ``self.timesteps``
        :param sample: $x_t$, (B, C, H, W)
        :param generator: random generator for the added noise
        :return: $x_{t-1}$
        """
        self._check_step_inputs(model_output, sample)
        i = self.index_of(t)
        t = int(self.timesteps[i])
        prev_t = self._next_timestep(i)
        alphas_cumprod = self.schedule.alphas_cumprod

        # 1. ᾱ_t, ᾱ_{t-1} and the one-step α_t, β_t between them (the grid may skip timesteps)
        alpha_bar_t = alphas_cumprod[t]
        alpha_bar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        beta_bar_t = 1 - alpha_bar_t
        beta_bar_prev = 1 - alpha_bar_prev
        current_alpha_t = alpha_bar_t / alpha_bar_prev
        current_beta_t = 1 - current_alpha_t

        # 2. predicted x_0: x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)                     (DDPM eq. 15)
        pred_x0 = pred_x0_from_eps(sample, model_output, t, self.schedule)

        # 3. mean of q(x_{t-1} | x_t, x̂_0):                                            (DDPM eq. 7)
        #    μ = sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t) x̂_0 + sqrt(α_t) (1 - ᾱ_{t-1}) / (1 - ᾱ_t) x_t
        pred_x0_coeff = alpha_bar_prev ** 0.5 * current_beta_t / beta_bar_t
        sample_coeff = current_alpha_t ** 0.5 * beta_bar_prev / beta_bar_t
        prev_sample = pred_x0_coeff * pred_x0 + sample_coeff * sample

        # 4. add noise σ_t z, z ~ N(0, I), except at t = 0                              (DDPM Algorithm 2)
        if t > 0:
            noise = randn_tensor(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
            prev_sample = prev_sample + self.variance(t) ** 0.5 * noise
        return prev_sample

    def variance(self, t) -> torch.Tensor:
        """σ_t², the variance of the noise that the step from timestep ``t`` adds: the Σ of
        classifier guidance's mean shift (Dhariwal & Nichol 2021, Algorithm 1; lesson 04).

        :param t: one of ``self.timesteps``
        :return: a 0-d float32 tensor (0 at t = 0, which adds no noise)
        """
        i = self.index_of(t)
        t = int(self.timesteps[i])
        if t == 0:
            return torch.tensor(0.0)
        prev_t = self._next_timestep(i)
        alpha_bar_t = self.schedule.alphas_cumprod[t]
        alpha_bar_prev = self.schedule.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        current_beta_t = 1 - alpha_bar_t / alpha_bar_prev
        if self.variance_type == "fixed_small":
            # σ_t² = β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t   (clamped: it is 0 when ᾱ_{t-1} = 1)
            return torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar_t) * current_beta_t, min=1e-20)
        # σ_t² = β_t
        return current_beta_t


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): eta = 0 is deterministic, eta = 1 is DDPM-like ancestral sampling.

    :param schedule: the noise schedule
    :param eta: $\\eta$ of DDIM eq. 16, the amount of fresh noise per step (>= 0)
    :param set_alpha_to_one: after the last step use $\\bar\\alpha = 1$ (a clean image) instead of
        $\\bar\\alpha_0$ (Stable Diffusion: False)
    :param timestep_spacing: see :class:`Sampler` (default ``"leading"``, as diffusers')
    :param steps_offset: see :class:`Sampler`
    """

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0, *, set_alpha_to_one: bool = False,
                 timestep_spacing: str | None = None, steps_offset: int = 1):
        super().__init__(schedule, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
        self.eta = check_number(eta, "eta", minimum=0.0, hint="eta = 0 is deterministic DDIM, eta = 1 is DDPM-like.")
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.final_alpha_bar = torch.tensor(1.0) if set_alpha_to_one else schedule.alphas_cumprod[0]

    def step(self, model_output: torch.Tensor, t, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε + σ_t z (DDIM eq. 12).

        :param model_output: $\\epsilon_\\theta(x_t, t)$, (B, C, H, W)
        :param t: the current timestep, one of ``self.timesteps``
        :param sample: $x_t$, (B, C, H, W)
        :param generator: random generator for the added noise (used only when eta > 0)
        :return: $x_{t-1}$
        """
        self._check_step_inputs(model_output, sample)
        t = int(self.timesteps[self.index_of(t)])

        # 1. previous timestep t - T // n, as diffusers computes it (with "leading" spacing this
        #    is the next timestep on the grid)
        prev_t = t - self.schedule.num_train_timesteps // self.num_inference_steps

        # 2. ᾱ_t and ᾱ_{t-1}
        alpha_bar_t = self.schedule.alphas_cumprod[t]
        alpha_bar_prev = self.schedule.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_bar
        beta_bar_t = 1 - alpha_bar_t

        # 3. "predicted x_0": x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)                  (DDIM eq. 12)
        pred_x0 = pred_x0_from_eps(sample, model_output, t, self.schedule)

        # 4. σ_t(η) = η sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1})        (DDIM eq. 16)
        variance = (1 - alpha_bar_prev) / beta_bar_t * (1 - alpha_bar_t / alpha_bar_prev)
        std_dev_t = self.eta * variance ** 0.5

        # 5. "direction pointing to x_t": sqrt(1 - ᾱ_{t-1} - σ_t²) ε                    (DDIM eq. 12)
        direction = (1 - alpha_bar_prev - std_dev_t ** 2) ** 0.5 * model_output

        # 6. x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + direction + σ_t z                            (DDIM eq. 12)
        prev_sample = alpha_bar_prev ** 0.5 * pred_x0 + direction
        if self.eta > 0:
            noise = randn_tensor(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
            prev_sample = prev_sample + std_dev_t * noise
        return prev_sample


class EulerSampler(Sampler):
    """Euler's method on the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 1
    without its second-order correction, no churn); diffusers' ``EulerDiscreteScheduler``.

    It steps in the "variance exploding" variable x = x_t / sqrt(ᾱ_t) = x_0 + sigma eps, whose
    ODE is dx/dsigma = eps. So x_T is scaled up by ``init_noise_sigma`` and the denoiser is given
    ``scale_model_input(x, t) = x / sqrt(sigma^2 + 1)``, which is x_t again. (In these variables
    deterministic DDIM is exactly this Euler step; only the last step differs: Euler ends at
    sigma = 0.)

    :param schedule: the noise schedule
    :param timestep_spacing: see :class:`Sampler` (default ``"linspace"``, as diffusers'); ``"linspace"``
        gives fractional timesteps (as in diffusers), the only case where ``timesteps`` is a float tensor
    :param steps_offset: see :class:`Sampler`
    """

    name = "euler"
    default_timestep_spacing = "linspace"  # EulerDiscreteScheduler's

    def __init__(self, schedule: NoiseSchedule, *, timestep_spacing: str | None = None, steps_offset: int = 1):
        super().__init__(schedule, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
        self.sigmas: torch.Tensor | None = None  # σ at each sampling timestep, then 0: (n + 1,)

    def _timestep_grid(self, n: int) -> np.ndarray:
        if self.timestep_spacing == "linspace":
            # not rounded, in float32: diffusers' Euler interpolates sigma between timesteps
            T = self.schedule.num_train_timesteps
            return np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
        return super()._timestep_grid(n)

    def set_timesteps(self, num_inference_steps: int) -> None:
        super().set_timesteps(num_inference_steps)
        # σ at the sampling timesteps (linear interpolation for fractional ones), then σ = 0 at the end
        train_sigmas = self.schedule.sigmas.numpy()
        sigmas = np.interp(self.timesteps.numpy(), np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))

    def _sigmas(self) -> torch.Tensor:
        self.timesteps  # raises the "call set_timesteps" error when needed
        return self.sigmas

    @property
    def init_noise_sigma(self) -> float:
        sigma_max = self._sigmas().max()
        if self.timestep_spacing == "leading":
            # std of x_T / sqrt(ᾱ_T) = x_0 + σ ε for data of unit variance: sqrt(σ_max² + 1)
            return float((sigma_max ** 2 + 1) ** 0.5)
        return float(sigma_max)  # diffusers' choice for "linspace" and "trailing"

    def scale_model_input(self, sample: torch.Tensor, t) -> torch.Tensor:
        sigma = self._sigmas()[self.index_of(t)]
        # x_t = x / sqrt(σ² + 1), since sqrt(ᾱ_t) = 1 / sqrt(σ² + 1)
        return sample / (sigma ** 2 + 1) ** 0.5

    def alpha_bar(self, t) -> torch.Tensor:
        sigma = self._sigmas()[self.index_of(t)]
        # ᾱ_t = 1 / (1 + σ²)
        return 1 / (1 + sigma ** 2)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x = x_0 + σ_t eps: the forward process in sigma variables (x = x_t / sqrt(ᾱ_t))."""
        sigma = self._sigmas()[self.index_of(t)]
        return original + sigma.to(original.dtype) * noise

    def step(self, model_output: torch.Tensor, t, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """x_next = x + (sigma_next - sigma) dx/dsigma, with dx/dsigma = (x - x̂_0) / sigma.

        :param model_output: $\\epsilon_\\theta(x_t, t)$ (computed on ``scale_model_input(x, t)``)
        :param t: the current timestep, one of ``self.timesteps``
        :param sample: x in sigma variables, (B, C, H, W)
        :param generator: unused (this Euler sampler adds no noise)
        :return: x at the next sigma
        """
        self._check_step_inputs(model_output, sample)
        i = self.index_of(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.to(torch.float32)

        # 1. predicted x_0: x̂_0 = x - σ ε                       (x = x_0 + σ ε)
        pred_x0 = sample - sigma * model_output
        # 2. derivative of the probability-flow ODE: dx/dσ = (x - x̂_0) / σ      (Karras et al. 2022, eq. 3)
        derivative = (sample - pred_x0) / sigma
        # 3. Euler step: x_next = x + (σ_next - σ) dx/dσ          (Karras et al. 2022, Algorithm 1, first order)
        prev_sample = sample + derivative * (sigma_next - sigma)
        return prev_sample.to(model_output.dtype)


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2); diffusers' ``DPMSolverMultistepScheduler``
    with ``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``,
    ``lower_order_final=True`` and a final sigma of 0.

    A second-order multistep method on the ODE in lambda (half log-SNR): it reuses the x_0
    prediction of the previous step, so it costs one model call per step. The first step and
    the last (down to x_0) are first-order steps, which are exactly DDIM steps.

    :param schedule: the noise schedule
    :param timestep_spacing: see :class:`Sampler` (default ``"linspace"``, as diffusers')
    :param steps_offset: see :class:`Sampler`
    """

    name = "dpmsolver"
    default_timestep_spacing = "linspace"  # DPMSolverMultistepScheduler's

    def __init__(self, schedule: NoiseSchedule, *, timestep_spacing: str | None = None, steps_offset: int = 1):
        super().__init__(schedule, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
        self._previous: tuple[int, torch.Tensor] | None = None  # (grid position, x̂_0) of the last step

    def _timestep_grid(self, n: int) -> np.ndarray:
        # diffusers' DPM-Solver lays n + 1 points and drops the last (t = 0) for "leading" and "linspace"
        T = self.schedule.num_train_timesteps
        if self.timestep_spacing == "leading":
            return (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + self.steps_offset
        if self.timestep_spacing == "linspace":
            return np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        return super()._timestep_grid(n)

    def set_timesteps(self, num_inference_steps: int) -> None:
        super().set_timesteps(num_inference_steps)
        self._previous = None

    def _alpha_sigma(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t) in DPM-Solver's notation."""
        alpha_bar = self.schedule.alphas_cumprod[t]
        return alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5

    def step(self, model_output: torch.Tensor, t, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """One DPM-Solver++ step from timestep s = t to the next grid timestep.

        :param model_output: $\\epsilon_\\theta(x_s, s)$, (B, C, H, W)
        :param t: the current timestep, one of ``self.timesteps``
        :param sample: $x_s$, (B, C, H, W)
        :param generator: unused (the solver is deterministic)
        :return: the sample at the next timestep ($x_0$ after the last step)
        """
        self._check_step_inputs(model_output, sample)
        i = self.index_of(t)
        s0 = int(self.timesteps[i])
        previous = self._previous  # (i - 1, x̂_0 there) when the previous step was taken just before

        # 1. DPM-Solver++ integrates the data prediction x̂_0 = (x_s - σ_s ε) / α_s  (Lu et al. 2022b, sec. 3)
        pred_x0 = pred_x0_from_eps(sample, model_output, s0, self.schedule)
        self._previous = (i, pred_x0)
        if i == len(self.timesteps) - 1:
            # 2'. last step, down to σ = 0: the first-order update below gives x̂_0 exactly
            return pred_x0.to(model_output.dtype)

        # 2. α, σ and λ = log(α / σ) at s0 (now), t (next) and h = λ_t - λ_s0
        t_next = int(self.timesteps[i + 1])
        alpha_s0, sigma_s0 = self._alpha_sigma(s0)
        alpha_t, sigma_t = self._alpha_sigma(t_next)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        h = lambda_t - lambda_s0
        sample = sample.to(torch.float32)

        if previous is None or previous[0] != i - 1:
            # 3a. first order (first step): x_t = (σ_t / σ_s) x_s - α_t (e^{-h} - 1) x̂_0
            #     (DPM-Solver++(1), Lu et al. 2022b, section 4; the same as a DDIM step)
            prev_sample = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * pred_x0
        else:
            # 3b. second order, multistep: with s1 the previous timestep, h_0 = λ_s0 - λ_s1, r = h_0 / h,
            #     D = (1 + 1/(2r)) x̂_0(s0) - 1/(2r) x̂_0(s1)            (Lu et al. 2022b, Algorithm 2)
            #     x_t = (σ_t / σ_s0) x_s0 - α_t (e^{-h} - 1) D
            #     written as diffusers does, with D0 = x̂_0(s0), D1 = (x̂_0(s0) - x̂_0(s1)) / r, D = D0 + D1 / 2
            s1 = int(self.timesteps[i - 1])
            alpha_s1, sigma_s1 = self._alpha_sigma(s1)
            lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
            r0 = (lambda_s0 - lambda_s1) / h
            D0, D1 = pred_x0, (1.0 / r0) * (pred_x0 - previous[1])
            prev_sample = (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
            )
        return prev_sample.to(model_output.dtype)


_SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "euler": EulerSampler, "dpmsolver": DPMSolverSampler}


def make_sampler(name: str, schedule: NoiseSchedule, **kwargs) -> Sampler:
    """Build a sampler by name.

    :param name: ``"ddpm"``, ``"ddim"``, ``"euler"`` or ``"dpmsolver"``
    :param schedule: the noise schedule the model was trained with
    :param kwargs: passed to the sampler's constructor (e.g. ``eta=`` for DDIM)
    """
    check_choice(name, SAMPLER_NAMES, "sampler")
    return _SAMPLERS[name](schedule, **kwargs)


def sample_loop(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sampler: Sampler,
    x_T: torch.Tensor,
    generator: torch.Generator | None = None,
    progress: bool = True,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the sampling loop from noise x_T to a sample (the loop of ``StableDiffusionPipeline``).

    Runs under ``torch.no_grad()`` (guidance functions turn gradients back on where they need them).

    :param denoise: ``denoise(x_in, t) -> eps``, the noise prediction at timestep t
        (t: a 0-d tensor from ``sampler.timesteps``)
    :param sampler: a sampler on which ``set_timesteps(n)`` has been called
    :param x_T: standard Gaussian noise, (B, C, H, W); scaled by ``sampler.init_noise_sigma``
    :param generator: random generator for samplers that add noise (DDPM, DDIM with eta > 0)
    :param progress: show a progress bar
    :param callback: called as ``callback(i, t, x)`` after step i
    :return: the sample $x_0$
    """
    check_floating(x_T, "x_T")
    timesteps = sampler.timesteps
    with torch.no_grad():
        x = x_T * sampler.init_noise_sigma
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc=sampler.name)):
            # 1. predict the noise in x_t (the sampler decides what the denoiser sees)
            model_output = denoise(sampler.scale_model_input(x, t), t)
            # 2. step to the next, less noisy sample
            x = sampler.step(model_output, t, x, generator=generator)
            if callback is not None:
                callback(i, t, x)
    return x
