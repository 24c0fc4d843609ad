"""The exercises of lesson 01, forward diffusion: the closed form of q(x_t | x_0), the cumulative product ᾱ_t,
and a prediction about the schedules (where the SNR crosses 1, how much signal is left at the end)."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import q_sample
from ..i18n import tr
from ..schedules import make_schedule
from .grading import Case, collect_predictions, correct, grade, hint_for_exception, not_yet, per_item, seeded, timesteps_text

__all__ = ["check_q_sample", "check_alpha_bar", "check_schedule_prediction", "schedule_facts"]

DDPM_SCHEDULE = make_schedule("linear", 1000, 1e-4, 0.02)  # the DDPM schedule of lesson 01

# (shape of x0, timesteps) for the forward-process checks: t away from 0 and T-1, so that the
# off-by-one mistakes alpha_bar[t - 1] and alpha_bar[t + 1] give a (wrong) value, not an error
Q_CASES = [((1, 1, 16, 16), [37]), ((3, 1, 16, 16), [150, 610, 930]), ((4, 3, 8, 8), [5, 480, 777, 998])]


def check_q_sample(fn: Callable) -> bool:
    """Check ``fn(x0, t, noise, alpha_bar) -> x_t``, the closed form of q(x_t | x_0) (lesson 01).

    :param fn: the learner's function; ``x0`` and ``noise`` are (B, C, H, W), ``t`` a LongTensor
        (B,) of timesteps in 0..T-1, ``alpha_bar`` the (T,) tensor of $\\bar\\alpha$
    :return: True if fn agrees with :func:`course_lib.diffusion.q_sample` on every case
    """
    alpha_bar = DDPM_SCHEDULE.alphas_cumprod
    cases = []
    for seed, (shape, timesteps) in enumerate(Q_CASES):
        x0 = seeded(10 + seed, *shape).clamp(-1, 1)
        noise = seeded(20 + seed, *shape)
        t = torch.tensor(timesteps)
        a = per_item(alpha_bar[t])

        def mistakes(x0=x0, noise=noise, t=t, a=a):
            shifted = lambda s: per_item(alpha_bar[t + s])  # noqa: E731
            return [
                (tr("off by one in t: you used alpha_bar[t - 1]. Timesteps count from 0 (as in diffusers), "
                    "so ᾱ_t is alpha_bar[t] itself."),
                 lambda: shifted(-1).sqrt() * x0 + (1 - shifted(-1)).sqrt() * noise),
                (tr("off by one in t: you used alpha_bar[t + 1]. Timesteps count from 0 (as in diffusers), "
                    "so ᾱ_t is alpha_bar[t] itself."),
                 lambda: shifted(1).sqrt() * x0 + (1 - shifted(1)).sqrt() * noise),
                (tr("check the sign: the noise is added, x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε."),
                 lambda: a.sqrt() * x0 - (1 - a).sqrt() * noise),
                (tr("you forgot the square roots: ᾱ_t and 1 - ᾱ_t are variances, the coefficients are "
                    "sqrt(ᾱ_t) and sqrt(1 - ᾱ_t)."), lambda: a * x0 + (1 - a) * noise),
                (tr("you forgot the square root on the noise term: it is sqrt(1 - ᾱ_t)·ε (variance 1 - ᾱ_t)."),
                 lambda: a.sqrt() * x0 + (1 - a) * noise),
                (tr("you forgot the square root on the signal term: it is sqrt(ᾱ_t)·x0."),
                 lambda: a * x0 + (1 - a).sqrt() * noise),
                (tr("the noise coefficient is sqrt(1 - ᾱ_t), not 1 - sqrt(ᾱ_t)."),
                 lambda: a.sqrt() * x0 + (1 - a.sqrt()) * noise),
                (tr("the two coefficients are swapped: x0 keeps sqrt(ᾱ_t) (ᾱ_t near 1 at small t), the noise "
                    "gets sqrt(1 - ᾱ_t)."), lambda: (1 - a).sqrt() * x0 + a.sqrt() * noise),
                (tr("every image used the first t. Each image has its own timestep: alpha_bar[t] with the "
                    "whole tensor t, reshaped with .view(-1, 1, 1, 1)."),
                 lambda: alpha_bar[t[0]].sqrt() * x0 + (1 - alpha_bar[t[0]]).sqrt() * noise),
            ]

        cases.append(Case(
            args=(x0, t, noise, alpha_bar),
            expected=q_sample(x0, t, noise, DDPM_SCHEDULE),
            where=tr("for x0 of shape {shape}, {timesteps}", shape=shape, timesteps=timesteps_text(t)),
            mistakes=mistakes(),
        ))

    def exception_hint(error):
        if isinstance(error, IndexError):
            return tr("t holds timesteps 0..T-1 and alpha_bar has T entries: index it with t itself, "
                      "alpha_bar[t] (alpha_bar[t + 1] runs past the end).")
        return hint_for_exception("(x0, t, noise, alpha_bar)", "sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε")(error)

    return grade(
        fn, cases, check_name="check_q_sample", result_name="x_t",
        success=tr("x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε matches course_lib.diffusion.q_sample on 3 batches, "
                   "with a different t per image."),
        generic_hint=tr("x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε with ᾱ_t = alpha_bar[t].view(-1, 1, 1, 1)."),
        shape_hint=tr("x_t has the shape of x0. Reshape alpha_bar[t], shape (B,), to (B, 1, 1, 1) before "
                      "multiplying: alpha_bar[t].view(-1, 1, 1, 1)."),
        exception_hint=exception_hint,
    )


def check_alpha_bar(fn: Callable) -> bool:
    """Check ``fn(betas) -> alphas_cumprod``: ᾱ_t = ∏_{s<=t} (1 - β_s) (lesson 01).

    :param fn: the learner's function; ``betas`` is a float32 tensor (T,)
    :return: True if fn agrees with ``make_schedule(...).alphas_cumprod`` for three schedules
    """
    schedules = [
        make_schedule("linear", 1000, 1e-4, 0.02),
        make_schedule("scaled_linear", 1000, 0.00085, 0.012),
        make_schedule("cosine", 50),
    ]
    cases = []
    for sched in schedules:
        betas = sched.betas

        def mistakes(betas=betas):
            alphas = 1 - betas
            return [
                (tr("this is α_t = 1 - β_t, one step only. ᾱ_t multiplies all the steps so far: "
                    "torch.cumprod(1 - betas, dim=0)."), lambda: alphas),
                (tr("you multiplied the betas; ᾱ_t is the product of α_s = 1 - β_s."),
                 lambda: torch.cumprod(betas, dim=0)),
                (tr("you subtracted the sum of the betas (1 - Σβ is only a first-order approximation); "
                    "multiply the α's: torch.cumprod(1 - betas, dim=0)."),
                 lambda: 1 - torch.cumsum(betas, dim=0)),
                (tr("off by one: ᾱ_0 = α_0 = 1 - β_0, the product runs over s ≤ t, so index 0 already "
                    "includes the first step (it is not 1)."),
                 lambda: torch.cat([torch.ones(1), torch.cumprod(alphas, dim=0)[:-1]])),
                (tr("off by one: ᾱ_t = α_0·α_1·…·α_t starts at ᾱ_0 = α_0; yours skips the first step."),
                 lambda: torch.cumprod(alphas, dim=0) / alphas[0]),
                (tr("you returned 1 - ᾱ_t (the noise variance); return ᾱ_t itself."),
                 lambda: 1 - torch.cumprod(alphas, dim=0)),
                (tr("you returned sqrt(ᾱ_t); return ᾱ_t itself (no square root here)."),
                 lambda: torch.cumprod(alphas, dim=0).sqrt()),
                (tr("torch.prod gives a single number; you need the running product, one per t: "
                    "torch.cumprod(1 - betas, dim=0)."), lambda: alphas.prod()),
            ]

        cases.append(Case(
            args=(betas,),
            expected=sched.alphas_cumprod,
            where=tr("for the {kind} schedule with T = {steps}", kind=sched.kind, steps=sched.num_train_timesteps),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_alpha_bar", result_name="alphas_cumprod",
        success=tr("ᾱ_t = ∏_{s≤t} (1 - β_s) matches make_schedule(...).alphas_cumprod for the linear, "
                   "scaled_linear and cosine schedules."),
        generic_hint=tr("α_t = 1 - β_t, then ᾱ_t = α_0·α_1·…·α_t: torch.cumprod(1 - betas, dim=0)."),
        shape_hint=tr("return one ᾱ_t per timestep, a tensor of the shape of betas (T,)."),
        exception_hint=hint_for_exception("(betas)", "torch.cumprod(1 - betas, dim=0)", broadcast=False),
    )


# ---------------------------------------------------------------------------------- predict, then run
# lesson 01's three schedules, as make_schedule's arguments
PREDICTION_SCHEDULES = {
    "linear": ("linear", 1000, 1e-4, 0.02),
    "scaled_linear": ("scaled_linear", 1000, 0.00085, 0.012),
    "cosine": ("cosine", 1000),
}
PREDICTION_KEYS = ("snr_crosses_1_at", "signal_left")
T_TOLERANCE = 25  # timesteps: the hand estimate of the hint lands within 2
# sqrt(ᾱ_(T-1)) within 20 % or 0.002, whichever is larger: the hand estimate lands within 4 %, and
# "nothing left" (0) is not right for the linear schedule's 0.006
SIGNAL_RELATIVE, SIGNAL_ABSOLUTE = 0.2, 0.002


def schedule_facts(kind: str) -> dict:
    """What exercise 1.3 predicts, measured on the schedule ``kind`` of lesson 01.

    :return: {"snr_crosses_1_at": the first t with SNR(t) < 1, "signal_left": sqrt(ᾱ_(T-1)),
        "alpha_bar_end": ᾱ_(T-1), "alpha_bar_quarter_at": the first t with ᾱ_t < 1/4}
    """
    schedule = make_schedule(*PREDICTION_SCHEDULES[kind])
    alpha_bar = schedule.alphas_cumprod
    return {
        "snr_crosses_1_at": int((schedule.snr < 1).nonzero()[0]),
        "signal_left": float(alpha_bar[-1].sqrt()),
        "alpha_bar_end": float(alpha_bar[-1]),
        "alpha_bar_quarter_at": int((alpha_bar < 0.25).nonzero()[0]),
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN fails


def _crossing_hint(kind: str, predicted: float, facts: dict) -> str:
    """The hint for a wrong prediction of where SNR(t) = 1."""
    if abs(predicted - facts["alpha_bar_quarter_at"]) <= T_TOLERANCE:
        return tr("that is where sqrt(ᾱ_t) = 1/2. SNR = ᾱ_t / (1 - ᾱ_t) = 1 means ᾱ_t = 1/2: the signal's "
                  "variance equals the noise's.")
    if kind == "cosine":
        return tr("ᾱ_t = f(t)/f(0) with f(t) = cos²((t/T + s)/(1 + s)·π/2): ᾱ_t = 1/2 where the angle is π/4, "
                  "i.e. (t/T + s)/(1 + s) = 1/2.")
    if abs(predicted - 500) <= T_TOLERANCE:
        return tr("the SNR does not fall evenly in t: β_t is small at first, so ᾱ_t stays near 1 for long. "
                  "Use 1 - β ≈ exp(-β): ᾱ_t ≈ exp(-Σ β_s), the sum over s ≤ t, and SNR = 1 where ᾱ_t = 1/2, Σβ = ln 2 ≈ 0.69.")
    return tr("1 - β ≈ exp(-β) gives ᾱ_t ≈ exp(-Σ β_s), the sum over s ≤ t; SNR = 1 where ᾱ_t = 1/2, that is where the sum of "
              "the betas reaches ln 2 ≈ 0.69 (the sum of a linear ramp is its mean times the number of terms).")


def _signal_tolerance(measured: float) -> float:
    return max(SIGNAL_ABSOLUTE, SIGNAL_RELATIVE * measured)


def _signal_hint(kind: str, predicted: float, facts: dict) -> str:
    """The hint for a wrong prediction of sqrt(ᾱ_(T-1))."""
    if kind == "scaled_linear" and abs(predicted) < 1e-3:
        return tr("Stable Diffusion's schedule does not reach zero signal: its betas sum to only about 5.3 over "
                  "the 1000 steps, so ᾱ_(T-1) ≈ exp(-5.3).")
    if kind == "linear" and abs(predicted) < 1e-4:
        return tr("little, but not nothing: the linear schedule's betas sum to about 10 over the 1000 steps, so "
                  "ᾱ_(T-1) ≈ exp(-10) and the signal's coefficient is its square root.")
    if kind != "cosine" and abs(predicted - facts["alpha_bar_end"]) <= 0.2 * facts["alpha_bar_end"]:
        return tr("that is ᾱ_(T-1), the variance of the signal; its coefficient in x_t is the square root, "
                  "sqrt(ᾱ_(T-1)).")
    if kind == "cosine":
        return tr("the cosine schedule is built so that ᾱ_t = f(t)/f(0) reaches f(T) = cos²(π/2) = 0 at the end.")
    return tr("ᾱ_(T-1) ≈ exp(-Σ β_s) over all T steps, and the signal left is its square root, exp(-Σβ / 2).")


def check_schedule_prediction(fn: Callable) -> bool:
    """Check a prediction ``fn(kind) -> {"snr_crosses_1_at": t, "signal_left": sqrt(ᾱ_(T-1))}`` (lesson 01).

    For the schedules "linear" (DDPM), "scaled_linear" (Stable Diffusion) and "cosine", all with
    T = 1000, the learner predicts the first t at which SNR(t) = ᾱ_t / (1 - ᾱ_t) falls below 1, and
    how much of the signal is left at the last step, sqrt(ᾱ_(T-1)). The check then builds the
    schedules and measures both (:func:`schedule_facts`); a prediction is right within 25 steps,
    and within 20 % or 0.002 of sqrt(ᾱ_(T-1)).

    :param fn: the learner's function of one schedule name
    :return: True if every prediction agrees with the measurement
    """
    predictions = collect_predictions(fn, "check_schedule_prediction", "kind", PREDICTION_SCHEDULES,
                                      PREDICTION_KEYS, _is_number, tr("a number"))
    if predictions is None:
        return False
    measured = {kind: schedule_facts(kind) for kind in PREDICTION_SCHEDULES}
    for kind, got in predictions.items():
        facts = measured[kind]
        if abs(got["snr_crosses_1_at"] - facts["snr_crosses_1_at"]) > T_TOLERANCE:
            return not_yet(
                tr("for {kind} you predicted that the SNR crosses 1 at t = {predicted}; the schedule measures "
                   "t = {measured} (a prediction within {tolerance} steps counts).", kind=kind,
                   predicted=got["snr_crosses_1_at"], measured=facts["snr_crosses_1_at"], tolerance=T_TOLERANCE),
                _crossing_hint(kind, got["snr_crosses_1_at"], facts))
        if abs(got["signal_left"] - facts["signal_left"]) > _signal_tolerance(facts["signal_left"]):
            return not_yet(
                tr("for {kind} you predicted sqrt(ᾱ_(T-1)) = {predicted:.4f}; the schedule measures {measured:.4f} "
                   "(a prediction within 20 % or 0.002 counts).", kind=kind, predicted=got["signal_left"],
                   measured=facts["signal_left"]),
                _signal_hint(kind, got["signal_left"], facts))
    return correct(tr(
        "every prediction is within {t_tolerance} steps or 20 % of the measurement: the SNR crosses "
        "1 at t = {linear} (linear), {sd} (scaled_linear), {cosine} (cosine), and sqrt(ᾱ_(T-1)) is {linear_signal:.3f}, "
        "{sd_signal:.3f} and {cosine_signal:.3f}.", t_tolerance=T_TOLERANCE,
        linear=measured["linear"]["snr_crosses_1_at"], sd=measured["scaled_linear"]["snr_crosses_1_at"],
        cosine=measured["cosine"]["snr_crosses_1_at"], linear_signal=measured["linear"]["signal_left"],
        sd_signal=measured["scaled_linear"]["signal_left"], cosine_signal=measured["cosine"]["signal_left"]))
