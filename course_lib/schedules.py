"""Noise schedules: beta_t, alpha_t and alpha_bar_t (lesson 01).

The forward process adds a little Gaussian noise at every step,

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I),

and the schedule is the list of variances beta_t. Everything else follows from it:

    alpha_t     = 1 - beta_t
    alpha_bar_t = prod_{s <= t} alpha_s                  (so q(x_t | x_0) has a closed form)
    snr_t       = alpha_bar_t / (1 - alpha_bar_t)        (signal-to-noise ratio of x_t)
    sigma_t     = sqrt((1 - alpha_bar_t) / alpha_bar_t)  (the noise level of x_t / sqrt(alpha_bar_t),
                                                          used by the Euler and DPM-Solver samplers)

Indexing follows diffusers: timesteps are integers 0 .. T-1 and index ``t`` here is step
``t + 1`` of the DDPM paper (whose steps run 1 .. T). ``alphas_cumprod[0]`` is already a little
noisy (alpha_bar = 1 - beta_0); the clean image comes before index 0.

Three kinds, each equal (bit for bit, same float32 arithmetic) to diffusers' schedule of the
same name:

=================  ==========================================================  ====================
kind               beta_t                                                      diffusers name
=================  ==========================================================  ====================
``linear``         evenly spaced from beta_start to beta_end (DDPM)            ``linear``
``scaled_linear``  (evenly spaced from sqrt(beta_start) to sqrt(beta_end))^2   ``scaled_linear``
``cosine``         1 - f(t+1)/f(t), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2,    ``squaredcos_cap_v2``
                   s = 0.008, capped at 0.999 (Nichol & Dhariwal 2021, eq. 17)
=================  ==========================================================  ====================

Stable Diffusion v1.x uses ``scaled_linear`` with beta_start = 0.00085, beta_end = 0.012.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_choice, check_int_range, check_number

__all__ = ["NoiseSchedule", "make_schedule", "SCHEDULE_KINDS"]

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")


@dataclass(frozen=True, eq=False, repr=False)
class NoiseSchedule:
    """A noise schedule of ``T = num_train_timesteps`` steps. Build it with :func:`make_schedule`.

    :param kind: ``"linear"``, ``"scaled_linear"`` or ``"cosine"``
    :param num_train_timesteps: number of diffusion steps, $T$
    :param beta_start: $\\beta$ at the first step (not used by ``"cosine"``)
    :param beta_end: $\\beta$ at the last step (not used by ``"cosine"``)
    :param betas: $\\beta_t$, float32, shape (T,)
    :param alphas: $\\alpha_t = 1 - \\beta_t$, float32, shape (T,)
    :param alphas_cumprod: $\\bar\\alpha_t = \\prod_{s \\le t} \\alpha_s$, float32, shape (T,)
    """

    kind: str
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio of x_t, shape (T,): SNR_t = alpha_bar_t / (1 - alpha_bar_t)."""
        # SNR_t = ᾱ_t / (1 - ᾱ_t)
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @property
    def sigmas(self) -> torch.Tensor:
        """Noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) = 1 / sqrt(SNR_t), shape (T,).

        ``x_t / sqrt(alpha_bar_t) = x_0 + sigma_t * eps``: the "variance exploding" view of x_t
        that the Euler and DPM-Solver samplers step in (computed exactly as diffusers does).
        """
        # σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    @property
    def config(self) -> dict:
        """The arguments of :func:`make_schedule` that rebuild this schedule: ``make_schedule(**s.config)``."""
        return {
            "kind": self.kind,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(kind={self.kind!r}, num_train_timesteps={self.num_train_timesteps}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end})"
        )


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), as diffusers computes them."""

    # f(t) = cos(((t + s) / (1 + s)) * π/2)², with t in [0, 1] and s = 0.008; ᾱ_t = f(t) / f(0)
    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_train_timesteps):
        t1 = i / num_train_timesteps
        t2 = (i + 1) / num_train_timesteps
        # β_t = 1 - ᾱ_{t+1} / ᾱ_t, capped at max_beta so that the last steps do not diverge
        betas.append(min(1 - f(t2) / f(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def make_schedule(
    kind: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> NoiseSchedule:
    """Build a noise schedule.

    :param kind: ``"linear"`` (DDPM), ``"scaled_linear"`` (Stable Diffusion) or ``"cosine"``
        (improved DDPM; diffusers' ``"squaredcos_cap_v2"``)
    :param num_train_timesteps: number of diffusion steps, $T$
    :param beta_start: $\\beta_0$, in (0, 1); ignored by ``"cosine"``
    :param beta_end: $\\beta_{T-1}$, in (0, 1) and at least ``beta_start``; ignored by ``"cosine"``

    >>> s = make_schedule("scaled_linear", 1000, 0.00085, 0.012)   # Stable Diffusion v1.x
    >>> s.alphas_cumprod.shape
    torch.Size([1000])
    """
    check_choice(kind, SCHEDULE_KINDS, "schedule kind")
    check_int_range(num_train_timesteps, "num_train_timesteps", 1, hint="A schedule needs at least one step.")
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        value = check_number(value, name)
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"{name} must lie strictly between 0 and 1 (it is a variance of added noise), got {value}. "
                f"Typical values: beta_start=1e-4, beta_end=0.02 (DDPM) or 0.00085, 0.012 (Stable Diffusion)."
            )
    if beta_start > beta_end:
        raise ValueError(
            f"beta_start ({beta_start}) is larger than beta_end ({beta_end}): noise must not shrink "
            f"along the forward process. Swap the two values."
        )

    if kind == "linear":
        # β_t evenly spaced from β_start to β_end (Ho et al. 2020, section 4)
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif kind == "scaled_linear":
        # sqrt(β_t) evenly spaced from sqrt(β_start) to sqrt(β_end) (latent diffusion / Stable Diffusion)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        betas = _cosine_betas(num_train_timesteps)

    # α_t = 1 - β_t
    alphas = 1.0 - betas
    # ᾱ_t = ∏_{s=0}^{t} α_s
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    return NoiseSchedule(
        kind=kind,
        num_train_timesteps=num_train_timesteps,
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
    )
