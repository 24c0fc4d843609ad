"""The forward process q and the four things a denoiser can predict (the training losses: losses.py).

Lesson 01 derives the forward process; lesson 02 the three predictions of the notes (x_0, eps,
score) plus v, and how to turn one into another. With ``a = alpha_bar_t`` (see schedules.py):

==============================  ==================================================================
code name                       formula
==============================  ==================================================================
``q_step``                      x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps        q(x_t | x_{t-1})
``q_sample``                    x_t = sqrt(a) x_0 + sqrt(1 - a) eps                   q(x_t | x_0)
``pred_x0_from_eps``            x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
``eps_from_pred_x0``            eps = (x_t - sqrt(a) x_0) / sqrt(1 - a)
``score_from_eps``              score = grad_{x_t} log q(x_t) = -eps / sqrt(1 - a)
``eps_from_score``              eps = -sqrt(1 - a) score
``v_from_eps``                  v = sqrt(a) eps - sqrt(1 - a) x_0                     (Salimans & Ho 2022)
``eps_from_v``                  eps = sqrt(a) v + sqrt(1 - a) x_t
``pred_x0_from_v``              x_0 = sqrt(a) x_t - sqrt(1 - a) v
==============================  ==================================================================

Every function takes integer timesteps ``t`` (an int, or a LongTensor of shape (B,) or (1,)) and
a :class:`~course_lib.schedules.NoiseSchedule`; tensors are images of shape (B, C, H, W) or any
(B, ...). The coefficients are computed in float32 (float64 for float64 inputs) and the result
is returned in the input's dtype.
"""

from __future__ import annotations

import torch

from .checks import check_finite, check_floating, check_shape, check_timesteps
from .schedules import NoiseSchedule

__all__ = [
    "alpha_bar_at",
    "q_sample",
    "q_step",
    "pred_x0_from_eps",
    "eps_from_pred_x0",
    "score_from_eps",
    "eps_from_score",
    "v_from_eps",
    "eps_from_v",
    "pred_x0_from_v",
]


def _gather(values: torch.Tensor, t, x: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """values[t] reshaped to (B, 1, ..., 1) so that it broadcasts against x of shape (B, ...)."""
    check_floating(x, "x")
    if x.ndim < 1:
        raise ValueError("x must be a batch of shape (B, ...), got a 0-dimensional tensor. Add a batch dimension.")
    t = check_timesteps(t, num_train_timesteps)
    if t.numel() != 1 and tuple(t.shape) != (x.shape[0],):
        raise ValueError(
            f"t has shape {tuple(t.shape)} but the batch has {x.shape[0]} items. "
            f"Give one timestep per item, shape ({x.shape[0]},), or a single timestep for all."
        )
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # non_blocking: copies from the host that do not make it wait for the GPU's queue (a sampler's step
    # then never stalls the loop)
    out = values.to(device=x.device, dtype=dtype, non_blocking=True)[t.to(x.device, non_blocking=True).reshape(-1)]
    return out.reshape(-1, *([1] * (x.ndim - 1)))  # (B,) -> (B, 1, 1, 1)


def alpha_bar_at(schedule: NoiseSchedule, t, x: torch.Tensor) -> torch.Tensor:
    """$\\bar\\alpha_t$ gathered at timesteps ``t`` and shaped to broadcast against ``x``.

    :param schedule: the noise schedule
    :param t: timesteps, an int or a LongTensor of shape (B,) or (1,)
    :param x: a tensor of shape (B, ...) whose device (and float64-ness) the result follows
    :return: shape (B, 1, ..., 1) (or (1, 1, ..., 1) for a single timestep), float32 or float64
    """
    return _gather(schedule.alphas_cumprod, t, x, schedule.num_train_timesteps)


def _check_pair(a: torch.Tensor, name_a: str, b: torch.Tensor, name_b: str) -> None:
    check_finite(a, name_a)
    check_finite(b, name_b)
    check_shape(b, name_b, a.shape, hint=f"{name_b} must have the same shape as {name_a}.")


def q_sample(x0: torch.Tensor, t, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Sample x_t from x_0 in one go: the closed form of q(x_t | x_0) (lesson 01).

    :param x0: clean images $x_0$, (B, C, H, W)
    :param t: timesteps $t$, LongTensor (B,) (or an int for the whole batch)
    :param noise: $\\epsilon \\sim N(0, I)$, same shape as x0
    :param schedule: the noise schedule ($\\bar\\alpha_t$)
    :return: $x_t$, same shape and dtype as x0
    """
    _check_pair(x0, "x0", noise, "noise")
    alpha_bar = alpha_bar_at(schedule, t, x0)
    # x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε                      q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    return x_t.to(x0.dtype)


def q_step(x_prev: torch.Tensor, t, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """One step of the forward process, q(x_t | x_{t-1}) (lesson 01).

    Index 0 applies beta_0 to the clean image, so ``t + 1`` calls (t = 0, 1, ..., t) give
    an x_t distributed exactly like ``q_sample(x0, t, ...)``.

    :param x_prev: $x_{t-1}$ (the clean image when t = 0), (B, C, H, W)
    :param t: timesteps $t$, LongTensor (B,) or an int
    :param noise: $\\epsilon \\sim N(0, I)$, same shape as x_prev
    :param schedule: the noise schedule ($\\beta_t$)
    :return: $x_t$
    """
    _check_pair(x_prev, "x_prev", noise, "noise")
    beta = _gather(schedule.betas, t, x_prev, schedule.num_train_timesteps)
    # x_t = sqrt(1 - β_t) x_{t-1} + sqrt(β_t) ε                   q(x_t | x_{t-1}) = N(sqrt(α_t) x_{t-1}, β_t I)
    x_t = (1 - beta).sqrt() * x_prev + beta.sqrt() * noise
    return x_t.to(x_prev.dtype)


def pred_x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """The x_0 that a noise prediction implies, by solving q_sample for x_0.

    :param x_t: noisy images $x_t$, (B, C, H, W)
    :param eps: predicted noise $\\epsilon_\\theta(x_t, t)$, same shape
    :param t: timesteps $t$
    :param schedule: the noise schedule
    :return: $\\hat x_0$
    """
    _check_pair(x_t, "x_t", eps, "eps")
    alpha_bar = alpha_bar_at(schedule, t, x_t)
    # x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)                    (DDPM eq. 15, DDIM eq. 9)
    return ((x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).to(x_t.dtype)


def eps_from_pred_x0(x_t: torch.Tensor, pred_x0: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """The noise that a prediction of x_0 implies.

    :param x_t: noisy images $x_t$, (B, C, H, W)
    :param pred_x0: predicted clean images $\\hat x_0$, same shape
    :param t: timesteps $t$
    :param schedule: the noise schedule
    :return: $\\hat\\epsilon$
    """
    _check_pair(x_t, "x_t", pred_x0, "pred_x0")
    alpha_bar = alpha_bar_at(schedule, t, x_t)
    # ε̂ = (x_t - sqrt(ᾱ_t) x̂_0) / sqrt(1 - ᾱ_t)
    return ((x_t - alpha_bar.sqrt() * pred_x0) / (1 - alpha_bar).sqrt()).to(x_t.dtype)


def score_from_eps(eps: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """The score grad_{x_t} log q(x_t) that a noise prediction implies.

    For q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I) the score is -(x_t - sqrt(a) x_0) / (1 - a)
    = -eps / sqrt(1 - a); averaging over x_0 given x_t (Tweedie) turns eps into its prediction.

    :param eps: predicted noise $\\epsilon_\\theta(x_t, t)$, (B, C, H, W)
    :param t: timesteps $t$
    :param schedule: the noise schedule
    :return: $s_\\theta(x_t, t) \\approx \\nabla_{x_t} \\log p(x_t)$
    """
    check_finite(eps, "eps")
    alpha_bar = alpha_bar_at(schedule, t, eps)
    # s = ∇_{x_t} log p(x_t) = -ε / sqrt(1 - ᾱ_t)
    return (-eps / (1 - alpha_bar).sqrt()).to(eps.dtype)


def eps_from_score(score: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """The noise prediction that a score implies (inverse of :func:`score_from_eps`).

    :param score: $\\nabla_{x_t} \\log p(x_t)$, (B, C, H, W)
    :param t: timesteps $t$
    :param schedule: the noise schedule
    :return: $\\epsilon$
    """
    check_finite(score, "score")
    alpha_bar = alpha_bar_at(schedule, t, score)
    # ε = -sqrt(1 - ᾱ_t) s
    return (-(1 - alpha_bar).sqrt() * score).to(score.dtype)


def v_from_eps(x_t: torch.Tensor, eps: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """The velocity v that a noise prediction implies (Salimans & Ho 2022, "v-prediction").

    :param x_t: noisy images $x_t$, (B, C, H, W)
    :param eps: predicted noise, same shape
    :param t: timesteps $t$
    :param schedule: the noise schedule
    :return: $v$
    """
    pred_x0 = pred_x0_from_eps(x_t, eps, t, schedule)
    alpha_bar = alpha_bar_at(schedule, t, x_t)
    # v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0
    return (alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * pred_x0).to(x_t.dtype)


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """The noise that a v prediction implies.

    :param x_t: noisy images $x_t$, (B, C, H, W)
    :param v: predicted velocity $v$, same shape
    :param t: timesteps $t$
    :param schedule: the noise schedule
    :return: $\\epsilon$
    """
    _check_pair(x_t, "x_t", v, "v")
    alpha_bar = alpha_bar_at(schedule, t, x_t)
    # ε = sqrt(ᾱ_t) v + sqrt(1 - ᾱ_t) x_t
    return (alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * x_t).to(x_t.dtype)


def pred_x0_from_v(x_t: torch.Tensor, v: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """The x_0 that a v prediction implies.

    :param x_t: noisy images $x_t$, (B, C, H, W)
    :param v: predicted velocity $v$, same shape
    :param t: timesteps $t$
    :param schedule: the noise schedule
    :return: $\\hat x_0$
    """
    _check_pair(x_t, "x_t", v, "v")
    alpha_bar = alpha_bar_at(schedule, t, x_t)
    # x̂_0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v
    return (alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v).to(x_t.dtype)
