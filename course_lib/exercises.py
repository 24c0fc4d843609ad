"""Self-grading exercises: checks of a learner's functions against course_lib (lessons 01-09).

In each exercise the learner writes a function between nbgrader's ``### BEGIN SOLUTION`` and
``### END SOLUTION`` markers, and the next cell checks it:

    exercises.check_q_sample(q_sample_mine)

A check runs the function on a few seeded inputs (several shapes; batches with a different t
per image), compares the result with course_lib's own implementation, and prints a verdict of
two to four lines:

    ✅ Correct: ...        what was verified
    ❌ Not yet: ...        what differs, expected against received, and a hint
    ⏳ Not done yet: ...   the function still raises NotImplementedError (the student version)

It returns True or False and never raises, so a notebook runs to the end either way; an
nbgrader test cell can ``assert exercises.check_q_sample(q_sample_mine)``.

How the hint is chosen: each check also computes what the typical mistakes return (a wrong
sign, ``alpha_bar[t - 1]``, a missing square root, swapped arguments, Ho & Salimans' w for the
guidance scale, ...). When the learner's result equals one of them, the hint names that mistake;
otherwise it restates the formula.

===============================  =============================================  ======
check                            the learner's function                         lesson
===============================  =============================================  ======
``check_q_sample``               fn(x0, t, noise, alpha_bar) -> x_t             01
``check_alpha_bar``              fn(betas) -> alphas_cumprod                    01
``check_pred_x0``                fn(x_t, eps, alpha_bar_t) -> pred_x0           02
``check_ddim_step``              fn(x_t, eps, alpha_bar_t, alpha_bar_prev)      02
``check_classifier_guided_eps``  fn(eps, grad_log_prob, alpha_bar_t, scale)     03
``check_bayes_score``            fn(score_uncond, grad_log_p_y_given_x, scale)  03
``check_cfg``                    fn(eps_uncond, eps_cond, guidance_scale)       04
``check_batch_of_two``           fn(model, x, t, labels, null_label)            04
                                 -> (eps_uncond, eps_cond), one forward pass
``check_kl_diagonal_gaussian``   fn(mean, logvar) -> KL(q(z|x) || N(0, I))      05
                                 per image, shape (B,)
``check_reparameterise``         fn(mean, logvar, eps) -> z = mu + sigma·eps    05
``check_cross_attention``        fn(q, k, v) -> softmax(Q K^T / sqrt(d)) V      06
                                 per head, q (B, h, N, d), k and v (B, h, L, d)
``check_clip_contrastive_loss``  fn(image_embeds, text_embeds, logit_scale)     06
                                 -> CLIP's symmetric loss, a scalar
``check_guided_noise``           fn(unet, latents, t, prompt_embeds,            07
                                 negative_prompt_embeds, guidance_scale) -> eps,
                                 one UNet pass over the batch of two
``check_decode_latents``         fn(vae, latents) -> images in [0, 1]           07
``check_euler_step``             fn(x, eps, sigma, sigma_next) -> x_next,       08
                                 one Euler step of the ODE in sigma
``check_img2img_timesteps``      fn(timesteps, strength) -> the timesteps       08
                                 img2img runs, timesteps[n - int(n strength):]
===============================  =============================================  ======
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .diffusion import pred_x0_from_eps, q_sample, score_from_eps
from .guidance import cfg, classifier_guided_eps, classifier_log_prob_grad
from .nn.vae import DiagonalGaussianDistribution
from .samplers import DDIMSampler
from .schedules import make_schedule

__all__ = [
    "check_q_sample",
    "check_alpha_bar",
    "check_pred_x0",
    "check_ddim_step",
    "check_classifier_guided_eps",
    "check_bayes_score",
    "check_cfg",
    "check_batch_of_two",
    "check_kl_diagonal_gaussian",
    "check_reparameterise",
    "check_cross_attention",
    "check_clip_contrastive_loss",
    "check_guided_noise",
    "check_decode_latents",
    "check_euler_step",
    "check_img2img_timesteps",
]

NOT_DONE = "⏳ Not done yet: replace `raise NotImplementedError()` with your code, run that cell, then this one."


# ============================================================================ the grading engine
@dataclass
class _Case:
    """One call of the learner's function and what it should return.

    :param args: the arguments the learner's function receives (cloned before each call)
    :param expected: course_lib's answer
    :param where: the inputs in words, e.g. "for x0 of shape (3, 1, 16, 16), t = [150, 610, 930]"
    :param mistakes: (hint, thunk): a typical mistake and a function computing what it returns
    """

    args: tuple
    expected: torch.Tensor
    where: str
    mistakes: list[tuple[str, Callable[[], torch.Tensor]]] = field(default_factory=list)


def _seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _per_item(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1): one value per image, broadcasting against (B, C, H, W)."""
    return values.reshape(-1, 1, 1, 1)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


def _short(error: BaseException) -> str:
    """The first line of an exception's message, at most 160 characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
    return text if len(text) <= 160 else text[:157] + "..."


def _fmt(value: float) -> str:
    return f"{value:.5g}"


def _close(got, expected: torch.Tensor) -> bool:
    """Same shape and equal up to float32 rounding (NaN is never close)."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        return False
    got = got.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    atol = 1e-5 * max(1.0, float(expected.abs().max())) if expected.numel() else 1e-5
    return bool(torch.allclose(got, expected, rtol=1e-4, atol=atol))


def _first_difference(got: torch.Tensor, expected: torch.Tensor) -> str:
    """'At index (1, 0, 4, 7): expected 0.42, got 0.44.' for the first element that differs."""
    got64 = got.detach().to("cpu", torch.float64)
    expected64 = expected.detach().to("cpu", torch.float64)
    atol = 1e-5 * max(1.0, float(expected64.abs().max()))
    bad = ~torch.isclose(got64, expected64, rtol=1e-4, atol=atol)
    index = tuple(int(i) for i in bad.nonzero()[0]) if bad.any() else ()
    at = f"At index {index}" if index else "The value"
    return f"{at}: expected {_fmt(expected64[index])}, got {_fmt(got64[index])}."


def _call(fn: Callable, args: tuple, exception_hint: Callable[[BaseException], str]):
    """Run fn(*args); return (True, result), or print why it failed and return (False, None)."""
    try:
        return True, fn(*_clone(args))
    except NotImplementedError:
        print(NOT_DONE)
    except Exception as error:  # a learner's bug: report it in two lines, no traceback
        print(f"❌ Your function raised {type(error).__name__}: {_short(error)}")
        print(f"   Hint: {exception_hint(error)}")
    return False, None


def _wrong_value(got, case: _Case, result_name: str, generic_hint: str, shape_hint: str) -> list[str] | None:
    """None when ``got`` equals ``case.expected``; otherwise the lines that say what is wrong."""
    expected = case.expected
    if got is None:
        return [f"❌ Not yet: your function returned None. Did you forget `return {result_name}`?"]
    if not isinstance(got, torch.Tensor):
        advice = "Convert it with torch.from_numpy(...)." if type(got).__module__ == "numpy" else (
            "Build the result from the input tensors with torch operations.")
        return [
            f"❌ Not yet: your function returned a {type(got).__name__}, expected a torch.Tensor "
            f"of shape {tuple(expected.shape)}.",
            f"   Hint: {advice}",
        ]
    if _close(got, expected):
        return None
    matched = _matching_mistake(got, case)
    if tuple(got.shape) != tuple(expected.shape):
        return [
            f"❌ Not yet: {result_name} has shape {tuple(got.shape)} {case.where}, expected {tuple(expected.shape)}.",
            f"   Hint: {matched or shape_hint}",
        ]
    if torch.isfinite(expected).all() and not torch.isfinite(got).all():
        return [
            f"❌ Not yet: {result_name} contains NaN or inf {case.where}.",
            f"   Hint: {matched or 'a square root of a negative number, or a division by zero? ' + generic_hint}",
        ]
    return [
        f"❌ Not yet: {result_name} is not right {case.where}.",
        f"   {_first_difference(got, expected)}",
        f"   Hint: {matched or generic_hint}",
    ]


def _matching_mistake(got: torch.Tensor, case: _Case) -> str | None:
    """The hint of the first typical mistake whose result equals ``got``, if any."""
    for hint, thunk in case.mistakes:
        try:
            wrong = thunk()
        except Exception:  # a mistake that cannot even be computed for these shapes
            continue
        if _close(got, wrong):
            return hint
    return None


def _is_function(fn, check_name: str) -> bool:
    """True for a callable; otherwise print that the check wants the function itself."""
    if callable(fn):
        return True
    print(f"❌ {check_name} needs your function itself, got a {type(fn).__name__}.")
    print(f"   Hint: pass the name without calling it: {check_name}(my_function), no parentheses after it.")
    return False


def _grade(fn, cases: list[_Case], *, result_name: str, success: str, generic_hint: str,
           shape_hint: str, exception_hint: Callable[[BaseException], str], check_name: str) -> bool:
    """Run every case; print the first failure or the success line; return whether all passed."""
    if not _is_function(fn, check_name):
        return False
    for case in cases:
        ok, got = _call(fn, case.args, exception_hint)
        if not ok:
            return False
        lines = _wrong_value(got, case, result_name, generic_hint, shape_hint)
        if lines:
            print("\n".join(lines))
            return False
    print(f"✅ Correct: {success}")
    return True


def _hint_for_exception(signature: str, formula: str, broadcast: bool = True):
    """The usual exception hint: broadcasting errors, wrong arguments, else the formula."""

    def hint(error: BaseException) -> str:
        message = str(error)
        if broadcast and ("must match the size" in message or "broadcast" in message):
            return ("a tensor with one value per image, shape (B,), must be reshaped to (B, 1, 1, 1) to "
                    "broadcast against images (B, C, H, W): values.view(-1, 1, 1, 1).")
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return f"your function must take exactly these arguments, in this order: {signature}."
        return f"compute {formula} with torch operations on the inputs."

    return hint


def _timesteps_text(t: torch.Tensor) -> str:
    return f"t = {t.tolist()}"


# ============================================================================ lesson 01
_DDPM = make_schedule("linear", 1000, 1e-4, 0.02)  # the DDPM schedule of lesson 01

# (shape of x0, timesteps) for the forward-process checks: t away from 0 and T-1, so that the
# off-by-one mistakes alpha_bar[t - 1] and alpha_bar[t + 1] give a (wrong) value, not an error
_Q_CASES = [((1, 1, 16, 16), [37]), ((3, 1, 16, 16), [150, 610, 930]), ((4, 3, 8, 8), [5, 480, 777, 998])]


def check_q_sample(fn: Callable) -> bool:
    """Check ``fn(x0, t, noise, alpha_bar) -> x_t``, the closed form of q(x_t | x_0) (lesson 01).

    :param fn: the learner's function; ``x0`` and ``noise`` are (B, C, H, W), ``t`` a LongTensor
        (B,) of timesteps in 0..T-1, ``alpha_bar`` the (T,) tensor of $\\bar\\alpha$
    :return: True if fn agrees with :func:`course_lib.diffusion.q_sample` on every case
    """
    alpha_bar = _DDPM.alphas_cumprod
    cases = []
    for seed, (shape, timesteps) in enumerate(_Q_CASES):
        x0 = _seeded(10 + seed, *shape).clamp(-1, 1)
        noise = _seeded(20 + seed, *shape)
        t = torch.tensor(timesteps)
        a = _per_item(alpha_bar[t])

        def mistakes(x0=x0, noise=noise, t=t, a=a):
            shifted = lambda s: _per_item(alpha_bar[t + s])  # noqa: E731
            return [
                ("off by one in t: you used alpha_bar[t - 1]. Timesteps count from 0 (as in diffusers), "
                 "so ᾱ_t is alpha_bar[t] itself.",
                 lambda: shifted(-1).sqrt() * x0 + (1 - shifted(-1)).sqrt() * noise),
                ("off by one in t: you used alpha_bar[t + 1]. Timesteps count from 0 (as in diffusers), "
                 "so ᾱ_t is alpha_bar[t] itself.",
                 lambda: shifted(1).sqrt() * x0 + (1 - shifted(1)).sqrt() * noise),
                ("check the sign: the noise is added, x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε.",
                 lambda: a.sqrt() * x0 - (1 - a).sqrt() * noise),
                ("you forgot the square roots: ᾱ_t and 1 - ᾱ_t are variances, the coefficients are "
                 "sqrt(ᾱ_t) and sqrt(1 - ᾱ_t).", lambda: a * x0 + (1 - a) * noise),
                ("you forgot the square root on the noise term: it is sqrt(1 - ᾱ_t)·ε (variance 1 - ᾱ_t).",
                 lambda: a.sqrt() * x0 + (1 - a) * noise),
                ("you forgot the square root on the signal term: it is sqrt(ᾱ_t)·x0.",
                 lambda: a * x0 + (1 - a).sqrt() * noise),
                ("the noise coefficient is sqrt(1 - ᾱ_t), not 1 - sqrt(ᾱ_t).",
                 lambda: a.sqrt() * x0 + (1 - a.sqrt()) * noise),
                ("the two coefficients are swapped: x0 keeps sqrt(ᾱ_t) (ᾱ_t near 1 at small t), the noise "
                 "gets sqrt(1 - ᾱ_t).", lambda: (1 - a).sqrt() * x0 + a.sqrt() * noise),
                ("every image used the first t. Each image has its own timestep: alpha_bar[t] with the "
                 "whole tensor t, reshaped with .view(-1, 1, 1, 1).",
                 lambda: alpha_bar[t[0]].sqrt() * x0 + (1 - alpha_bar[t[0]]).sqrt() * noise),
            ]

        cases.append(_Case(
            args=(x0, t, noise, alpha_bar),
            expected=q_sample(x0, t, noise, _DDPM),
            where=f"for x0 of shape {shape}, {_timesteps_text(t)}",
            mistakes=mistakes(),
        ))

    def exception_hint(error):
        if isinstance(error, IndexError):
            return ("t holds timesteps 0..T-1 and alpha_bar has T entries: index it with t itself, "
                    "alpha_bar[t] (alpha_bar[t + 1] runs past the end).")
        return _hint_for_exception("(x0, t, noise, alpha_bar)", "sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε")(error)

    return _grade(
        fn, cases, check_name="check_q_sample", result_name="x_t",
        success="x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε matches course_lib.diffusion.q_sample on 3 batches, "
                "with a different t per image.",
        generic_hint="x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε with ᾱ_t = alpha_bar[t].view(-1, 1, 1, 1).",
        shape_hint="x_t has the shape of x0. Reshape alpha_bar[t], shape (B,), to (B, 1, 1, 1) before "
                   "multiplying: alpha_bar[t].view(-1, 1, 1, 1).",
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
                ("this is α_t = 1 - β_t, one step only. ᾱ_t multiplies all the steps so far: "
                 "torch.cumprod(1 - betas, dim=0).", lambda: alphas),
                ("you multiplied the betas; ᾱ_t is the product of α_s = 1 - β_s.",
                 lambda: torch.cumprod(betas, dim=0)),
                ("you subtracted the sum of the betas (1 - Σβ is only a first-order approximation); "
                 "multiply the α's: torch.cumprod(1 - betas, dim=0).",
                 lambda: 1 - torch.cumsum(betas, dim=0)),
                ("off by one: ᾱ_0 = α_0 = 1 - β_0, the product runs over s ≤ t, so index 0 already "
                 "includes the first step (it is not 1).",
                 lambda: torch.cat([torch.ones(1), torch.cumprod(alphas, dim=0)[:-1]])),
                ("off by one: ᾱ_t = α_0·α_1·…·α_t starts at ᾱ_0 = α_0; yours skips the first step.",
                 lambda: torch.cumprod(alphas, dim=0) / alphas[0]),
                ("you returned 1 - ᾱ_t (the noise variance); return ᾱ_t itself.",
                 lambda: 1 - torch.cumprod(alphas, dim=0)),
                ("you returned sqrt(ᾱ_t); return ᾱ_t itself (no square root here).",
                 lambda: torch.cumprod(alphas, dim=0).sqrt()),
                ("torch.prod gives a single number; you need the running product, one per t: "
                 "torch.cumprod(1 - betas, dim=0).", lambda: alphas.prod()),
            ]

        cases.append(_Case(
            args=(betas,),
            expected=sched.alphas_cumprod,
            where=f"for the {sched.kind} schedule with T = {sched.num_train_timesteps}",
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_alpha_bar", result_name="alphas_cumprod",
        success="ᾱ_t = ∏_{s≤t} (1 - β_s) matches make_schedule(...).alphas_cumprod for the linear, "
                "scaled_linear and cosine schedules.",
        generic_hint="α_t = 1 - β_t, then ᾱ_t = α_0·α_1·…·α_t: torch.cumprod(1 - betas, dim=0).",
        shape_hint="return one ᾱ_t per timestep, a tensor of the shape of betas (T,).",
        exception_hint=_hint_for_exception("(betas)", "torch.cumprod(1 - betas, dim=0)", broadcast=False),
    )


# ============================================================================ lesson 02
_SD = make_schedule("scaled_linear", 1000, 0.00085, 0.012)  # Stable Diffusion's schedule


def check_pred_x0(fn: Callable) -> bool:
    """Check ``fn(x_t, eps, alpha_bar_t) -> pred_x0``, x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t) (lesson 02).

    :param fn: the learner's function; ``x_t`` and ``eps`` are (B, C, H, W), ``alpha_bar_t`` is
        $\\bar\\alpha_t$ per image, shape (B, 1, 1, 1)
    :return: True if fn agrees with :func:`course_lib.diffusion.pred_x0_from_eps` on every case
    """
    cases = []
    for seed, (shape, timesteps) in enumerate(_Q_CASES):
        t = torch.tensor(timesteps)
        noise = _seeded(30 + seed, *shape)
        x_t = q_sample(_seeded(40 + seed, *shape).clamp(-1, 1), t, noise, _SD)
        eps = noise + 0.3 * _seeded(50 + seed, *shape)  # an imperfect prediction of the noise
        a = _per_item(_SD.alphas_cumprod[t])

        def mistakes(x_t=x_t, eps=eps, a=a):
            return [
                ("check the sign: solve x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε for x0, which subtracts "
                 "the noise term: x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t).",
                 lambda: (x_t + (1 - a).sqrt() * eps) / a.sqrt()),
                ("you forgot the square roots: the coefficients are sqrt(1 - ᾱ_t) and sqrt(ᾱ_t).",
                 lambda: (x_t - (1 - a) * eps) / a),
                ("you forgot the square root on the noise term: sqrt(1 - ᾱ_t)·ε.",
                 lambda: (x_t - (1 - a) * eps) / a.sqrt()),
                ("you forgot the square root in the division: divide by sqrt(ᾱ_t).",
                 lambda: (x_t - (1 - a).sqrt() * eps) / a),
                ("divide by sqrt(ᾱ_t), do not multiply: x_t = sqrt(ᾱ_t)·x0 + ..., so x0 = (...) / sqrt(ᾱ_t).",
                 lambda: (x_t - (1 - a).sqrt() * eps) * a.sqrt()),
                ("you subtracted the noise but did not divide by sqrt(ᾱ_t).",
                 lambda: x_t - (1 - a).sqrt() * eps),
                ("ᾱ_t and 1 - ᾱ_t are swapped: the noise term is sqrt(1 - ᾱ_t)·ε and you divide by "
                 "sqrt(ᾱ_t).",
                 lambda: (x_t - a.sqrt() * eps) / (1 - a).sqrt()),
            ]

        cases.append(_Case(
            args=(x_t, eps, a),
            expected=pred_x0_from_eps(x_t, eps, t, _SD),
            where=f"for x_t of shape {shape}, {_timesteps_text(t)}",
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_pred_x0", result_name="pred_x0",
        success="x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t) matches course_lib.diffusion.pred_x0_from_eps "
                "on 3 batches, with a different t per image.",
        generic_hint="solve x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε for x0: "
                     "x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t).",
        shape_hint="pred_x0 has the shape of x_t; alpha_bar_t is already shaped (B, 1, 1, 1) to broadcast.",
        exception_hint=_hint_for_exception("(x_t, eps, alpha_bar_t)", "(x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t)"),
    )


# (shape, number of sampling steps n, timesteps on the grid of n steps); t = 1 is the last step
_DDIM_CASES = [((1, 4, 8, 8), 50, [981]), ((3, 1, 16, 16), 50, [501, 41, 1]), ((2, 3, 8, 8), 10, [601, 101])]


def check_ddim_step(fn: Callable) -> bool:
    """Check one deterministic DDIM step ``fn(x_t, eps, alpha_bar_t, alpha_bar_prev) -> x_prev`` (lesson 02).

    DDIM eq. 12 with σ_t = 0 (η = 0): x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1}) ε.

    :param fn: the learner's function; ``x_t`` and ``eps`` are (B, C, H, W), ``alpha_bar_t`` and
        ``alpha_bar_prev`` are $\\bar\\alpha_t$ and $\\bar\\alpha_{t-1}$ per image, shape (B, 1, 1, 1)
    :return: True if fn agrees with ``DDIMSampler(schedule, eta=0).step`` on every case
    """
    cases = []
    for seed, (shape, steps, timesteps) in enumerate(_DDIM_CASES):
        sampler = DDIMSampler(_SD, eta=0.0)
        sampler.set_timesteps(steps)
        grid = sampler.timesteps.tolist()
        x_t = _seeded(60 + seed, *shape)
        eps = 0.8 * x_t + 0.6 * _seeded(70 + seed, *shape)
        # ᾱ_{t-1}: at the next timestep of the sampling grid, or the sampler's final ᾱ after the last step
        prev = [_SD.alphas_cumprod[grid[grid.index(t) + 1]] if grid.index(t) + 1 < len(grid)
                else sampler.final_alpha_bar for t in timesteps]
        a = _per_item(_SD.alphas_cumprod[torch.tensor(timesteps)])
        p = _per_item(torch.stack(prev))
        expected = torch.cat([sampler.step(eps[i:i + 1], t, x_t[i:i + 1]) for i, t in enumerate(timesteps)])

        def mistakes(x_t=x_t, eps=eps, a=a, p=p):
            pred_x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
            alpha_t = a / p  # the one-step α_t between the two timesteps
            return [
                ("alpha_bar_t and alpha_bar_prev are swapped: x̂0 uses ᾱ_t (the level x_t is at), the step "
                 "then moves to ᾱ_prev.",
                 lambda: a.sqrt() * (x_t - (1 - p).sqrt() * eps) / p.sqrt() + (1 - a).sqrt() * eps),
                ("the 'direction pointing to x_t' goes to the new noise level: sqrt(1 - ᾱ_prev)·ε, "
                 "not sqrt(1 - ᾱ_t)·ε.", lambda: p.sqrt() * pred_x0 + (1 - a).sqrt() * eps),
                ("x̂0 is rescaled to the new noise level: sqrt(ᾱ_prev)·x̂0, not sqrt(ᾱ_t)·x̂0.",
                 lambda: a.sqrt() * pred_x0 + (1 - p).sqrt() * eps),
                ("you forgot the square roots: x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε.",
                 lambda: p * pred_x0 + (1 - p) * eps),
                ("you forgot the square roots (in x̂0 and in the step): every coefficient is a square root.",
                 lambda: p * (x_t - (1 - a) * eps) / a + (1 - p) * eps),
                ("check the sign: x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε (plus).",
                 lambda: p.sqrt() * pred_x0 - (1 - p).sqrt() * eps),
                ("check the sign in x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t) (minus).",
                 lambda: p.sqrt() * (x_t + (1 - a).sqrt() * eps) / a.sqrt() + (1 - p).sqrt() * eps),
                ("you dropped the 'direction pointing to x_t', sqrt(1 - ᾱ_prev)·ε: with η = 0 DDIM puts "
                 "the predicted noise back at the new level.", lambda: p.sqrt() * pred_x0),
                ("you returned x̂0; the step goes on to the next noise level: "
                 "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε.",
                 lambda: pred_x0),
                ("that is DDPM's mean, with the one-step α_t = ᾱ_t / ᾱ_prev. DDIM uses ᾱ (alpha_bar) only: "
                 "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε.",
                 lambda: (x_t - (1 - alpha_t) / (1 - a).sqrt() * eps) / alpha_t.sqrt()),
            ]

        cases.append(_Case(
            args=(x_t, eps, a, p),
            expected=expected,
            where=f"for x_t of shape {shape}, {_timesteps_text(torch.tensor(timesteps))} ({steps} sampling steps)",
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_ddim_step", result_name="x_prev",
        success="x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε matches DDIMSampler(eta=0).step at 6 "
                "timesteps, the last step included.",
        generic_hint="x̂0 = (x_t - sqrt(1 - ᾱ_t)·ε) / sqrt(ᾱ_t), then x_prev = sqrt(ᾱ_prev)·x̂0 + "
                     "sqrt(1 - ᾱ_prev)·ε (DDIM eq. 12 with σ_t = 0).",
        shape_hint="x_prev has the shape of x_t; alpha_bar_t and alpha_bar_prev are already (B, 1, 1, 1).",
        exception_hint=_hint_for_exception("(x_t, eps, alpha_bar_t, alpha_bar_prev)",
                                           "sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev)·ε"),
    )


# ============================================================================ lesson 04
# (shape, timesteps, scale λ, target labels y); t mid-range, where ᾱ_t is far from 0 and 1
_GUIDANCE_CASES = [
    ((1, 1, 8, 8), [300], 2.0, [3]),
    ((3, 1, 16, 16), [100, 450, 700], 3.5, [0, 7, 3]),
    ((2, 3, 8, 8), [250, 600], 0.5, [9, 1]),
]


def _toy_classifier(seed: int, shape: tuple, num_classes: int = 10):
    """A seeded noise-aware classifier p(y | x_t, t): classifier(x, t) -> logits (B, K)."""
    features = shape[1] * shape[2] * shape[3]
    weight = 0.5 * _seeded(seed, features, num_classes)
    time_weight = _seeded(seed + 1, 1, num_classes)

    def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).reshape(-1, 1)  # (B, 1)
        return torch.tanh(x.flatten(1)) @ weight + (t / 1000) @ time_weight  # (B, K)

    return classifier


def _guidance_inputs(seed: int, shape, timesteps, labels):
    """x_t, eps, t, y, the classifier and its gradient ∇_{x_t} log p(y | x_t) for one case."""
    t, y = torch.tensor(timesteps), torch.tensor(labels)
    x_t = _seeded(80 + seed, *shape)
    eps = _seeded(90 + seed, *shape)
    classifier = _toy_classifier(100 + 10 * seed, shape)
    grad = classifier_log_prob_grad(classifier, x_t, t, y)
    return x_t, eps, t, y, classifier, grad


def check_classifier_guided_eps(fn: Callable) -> bool:
    """Check ``fn(eps, grad_log_prob, alpha_bar_t, scale) -> eps_hat`` (lesson 04).

    ε̂ = ε - sqrt(1 - ᾱ_t)·λ·∇_{x_t} log p(y | x_t) (Dhariwal & Nichol 2021, Algorithm 2).

    :param fn: the learner's function; ``eps`` and ``grad_log_prob`` are (B, C, H, W),
        ``alpha_bar_t`` is (B, 1, 1, 1), ``scale`` a number λ
    :return: True if fn agrees with :func:`course_lib.guidance.classifier_guided_eps` on every case
    """
    cases = []
    for seed, (shape, timesteps, scale, labels) in enumerate(_GUIDANCE_CASES):
        x_t, eps, t, y, classifier, grad = _guidance_inputs(seed, shape, timesteps, labels)
        alpha_bar = _SD.alphas_cumprod[t]
        a = _per_item(alpha_bar)

        def mistakes(eps=eps, grad=grad, a=a, s=scale):
            return [
                ("check the sign: the score is -ε / sqrt(1 - ᾱ_t), so adding λ·∇log p(y|x_t) to the score "
                 "subtracts sqrt(1 - ᾱ_t)·λ·∇log p(y|x_t) from ε.", lambda: eps + (1 - a).sqrt() * s * grad),
                ("you forgot the square root: the factor is sqrt(1 - ᾱ_t), the noise level of x_t.",
                 lambda: eps - (1 - a) * s * grad),
                ("the factor is sqrt(1 - ᾱ_t), not sqrt(ᾱ_t): it converts a score into ε "
                 "(ε = -sqrt(1 - ᾱ_t)·score).", lambda: eps - a.sqrt() * s * grad),
                ("multiply the gradient by sqrt(1 - ᾱ_t) to turn it from a score into ε units.",
                 lambda: eps - s * grad),
                ("multiply by sqrt(1 - ᾱ_t), do not divide: ε = -sqrt(1 - ᾱ_t)·score.",
                 lambda: eps - s * grad / (1 - a).sqrt()),
                ("you forgot the guidance scale λ (scale) on the classifier term.",
                 lambda: eps - (1 - a).sqrt() * grad),
            ]

        cases.append(_Case(
            args=(eps, grad, a, scale),
            expected=classifier_guided_eps(eps, x_t, t, y, classifier, scale, alpha_bar),
            where=f"for eps of shape {shape}, {_timesteps_text(t)}, scale = {scale}",
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_classifier_guided_eps", result_name="eps_hat",
        success="ε̂ = ε - sqrt(1 - ᾱ_t)·λ·∇log p(y|x_t) matches course_lib.guidance.classifier_guided_eps "
                "on 3 batches, scales 0.5 to 3.5.",
        generic_hint="ε̂ = ε - sqrt(1 - ᾱ_t)·scale·grad_log_prob (the score is -ε / sqrt(1 - ᾱ_t)).",
        shape_hint="eps_hat has the shape of eps; alpha_bar_t is already (B, 1, 1, 1).",
        exception_hint=_hint_for_exception("(eps, grad_log_prob, alpha_bar_t, scale)",
                                           "ε - sqrt(1 - ᾱ_t)·scale·grad_log_prob"),
    )


def check_bayes_score(fn: Callable) -> bool:
    """Check ``fn(score_uncond, grad_log_p_y_given_x, scale) -> conditional score`` (lesson 04).

    Bayes' rule with a weight λ on the classifier (notes, eq. 3-5):
    ∇log p(x_t | y) = ∇log p(x_t) + λ·∇log p(y | x_t).

    :param fn: the learner's function; the two gradients are (B, C, H, W), ``scale`` a number λ
    :return: True if fn agrees with course_lib on every case
    """
    cases = []
    for seed, (shape, timesteps, scale, labels) in enumerate(_GUIDANCE_CASES):
        x_t, eps, t, y, classifier, grad = _guidance_inputs(seed, shape, timesteps, labels)
        score = score_from_eps(eps, t, _SD)
        # course_lib implements eq. 5 in ε form (guidance.classifier_guided_eps); the score of the
        # guided ε̂ is the conditional score, ∇log p(x_t) + λ ∇log p(y | x_t)
        eps_hat = classifier_guided_eps(eps, x_t, t, y, classifier, scale, _SD.alphas_cumprod[t])
        expected = score_from_eps(eps_hat, t, _SD)

        def mistakes(score=score, grad=grad, s=scale):
            return [
                ("check the sign: Bayes' rule adds the log-probabilities, log p(x_t|y) = log p(x_t) + "
                 "log p(y|x_t) - log p(y), so the gradients add.", lambda: score - s * grad),
                ("you forgot the weight λ (scale) on the classifier gradient.", lambda: score + grad),
                ("λ weighs only the classifier gradient, not the unconditional score: "
                 "score_uncond + scale·grad.", lambda: s * (score + grad)),
                ("λ multiplies the classifier gradient, not the unconditional score.",
                 lambda: s * score + grad),
                ("that is the mix of classifier-free guidance (eq. 8). Here λ only weighs the classifier "
                 "gradient (eq. 5): score_uncond + scale·grad.", lambda: (1 - s) * score + s * grad),
            ]

        cases.append(_Case(
            args=(score, grad, scale),
            expected=expected,
            where=f"for scores of shape {shape}, scale = {scale}",
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_bayes_score", result_name="the conditional score",
        success="∇log p(x_t|y) = ∇log p(x_t) + λ·∇log p(y|x_t) (notes, eq. 5) matches course_lib's "
                "classifier guidance on 3 batches, scales 0.5 to 3.5.",
        generic_hint="by Bayes' rule the gradients add, with the weight λ on the classifier term: "
                     "score_uncond + scale·grad_log_p_y_given_x.",
        shape_hint="the conditional score has the shape of score_uncond.",
        exception_hint=_hint_for_exception("(score_uncond, grad_log_p_y_given_x, scale)",
                                           "score_uncond + scale·grad_log_p_y_given_x"),
    )


# ============================================================================ lesson 05
_CFG_CASES = [((1, 4, 8, 8), 7.5), ((3, 1, 16, 16), 2.0), ((2, 3, 8, 8), 1.0)]


def check_cfg(fn: Callable) -> bool:
    """Check ``fn(eps_uncond, eps_cond, guidance_scale) -> guided eps`` (lesson 05).

    Diffusers' convention: ε̃ = ε_uncond + s·(ε_cond - ε_uncond); s = 1 is no guidance, and
    Ho & Salimans' weight is w = s - 1.

    :param fn: the learner's function; both predictions are (B, C, H, W), the scale a number
    :return: True if fn agrees with :func:`course_lib.guidance.cfg` on every case
    """
    cases = []
    for seed, (shape, s) in enumerate(_CFG_CASES):
        u = _seeded(110 + seed, *shape)
        c = 0.7 * u + 0.5 * _seeded(120 + seed, *shape)  # correlated, as a model's two predictions are

        def mistakes(u=u, c=c, s=s):
            return [
                ("you swapped eps_uncond and eps_cond: start from the unconditional prediction and move "
                 "toward the conditional one, eps_uncond + s·(eps_cond - eps_uncond).",
                 lambda: c + s * (u - c)),
                ("you used guidance_scale as Ho & Salimans' w, (1 + w)·eps_cond - w·eps_uncond. Here "
                 "guidance_scale follows diffusers: w = guidance_scale - 1, and scale 1 gives eps_cond.",
                 lambda: c + s * (c - u)),
                ("off by one in the scale: with diffusers' convention, guidance_scale = 1 must give eps_cond "
                 "(no guidance): eps_uncond + s·(eps_cond - eps_uncond).", lambda: u + (s - 1) * (c - u)),
                ("check the sign: guidance moves toward the conditional prediction, "
                 "eps_uncond + s·(eps_cond - eps_uncond).", lambda: u - s * (c - u)),
                ("you returned only the guidance term s·(eps_cond - eps_uncond); add it to eps_uncond.",
                 lambda: s * (c - u)),
                ("you returned eps_cond unchanged; combine both predictions with the scale.", lambda: c),
                ("you returned eps_uncond unchanged; combine both predictions with the scale.", lambda: u),
            ]

        cases.append(_Case(
            args=(u, c, s),
            expected=cfg(u, c, s),
            where=f"for eps of shape {shape}, guidance_scale = {s}",
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_cfg", result_name="the guided eps",
        success="eps_uncond + s·(eps_cond - eps_uncond) matches course_lib.guidance.cfg for scales 7.5, 2 "
                "and 1 (scale 1 gives eps_cond: no guidance).",
        generic_hint="ε̃ = eps_uncond + guidance_scale·(eps_cond - eps_uncond) (notes, eq. 8).",
        shape_hint="the guided eps has the shape of eps_cond.",
        exception_hint=_hint_for_exception("(eps_uncond, eps_cond, guidance_scale)",
                                           "eps_uncond + guidance_scale·(eps_cond - eps_uncond)"),
    )


class _ToyDenoiser(nn.Module):
    """A class-conditional stand-in with the course UNet's signature and argument checks.

    model(sample, timestep, encoder_hidden_states=None, class_labels=None) -> eps of sample's
    shape; images do not interact, so one pass over a batch equals passes over its parts.
    """

    def __init__(self, num_class_embeds: int = 11):
        super().__init__()
        self.num_class_embeds = num_class_embeds
        self.register_buffer("class_embedding", _seeded(130, num_class_embeds))

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None):
        B = sample.shape[0]
        if encoder_hidden_states is not None:
            raise ValueError("This model has no cross-attention, so it cannot use encoder_hidden_states. "
                             "Pass the labels by name: model(x, t, class_labels=labels).")
        if class_labels is None:
            raise ValueError("This model needs class_labels: model(x, t, class_labels=labels).")
        timestep = torch.as_tensor(timestep).reshape(-1)
        class_labels = torch.as_tensor(class_labels).reshape(-1)
        for name, value in (("timestep", timestep), ("class_labels", class_labels)):
            if value.numel() not in (1, B):
                raise ValueError(f"{name} has {value.numel()} entries but sample has {B} images.")
        t = timestep.expand(B).to(sample.dtype).reshape(-1, 1, 1, 1)
        y = self.class_embedding[class_labels.long().expand(B)].reshape(-1, 1, 1, 1)
        return torch.tanh(sample + 0.5 * sample.roll(1, dims=-1) + y) * torch.cos(t / 300) + 0.1 * y


class _CountingModel(nn.Module):
    """Wraps a model and counts its forward calls (and the batch sizes they saw)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.batch_sizes: list[int] = []

    def forward(self, sample, *args, **kwargs):
        self.batch_sizes.append(int(sample.shape[0]) if isinstance(sample, torch.Tensor) else -1)
        return self.model(sample, *args, **kwargs)


_BATCH_OF_TWO_CASES = [((1, 1, 8, 8), [500], [3]), ((3, 1, 16, 16), [900, 400, 20], [0, 7, 3]),
                       ((2, 3, 8, 8), [650, 120], [9, 9])]
_NULL_LABEL = 10
_ONE_PASS = ("x_in = torch.cat([x, x]); t_in = torch.cat([t, t]); labels_in = torch.cat([torch.full_like("
             "labels, null_label), labels]); then eps_uncond, eps_cond = model(x_in, t_in, "
             "class_labels=labels_in).chunk(2).")


def _batch_of_two_exception_hint(error: BaseException) -> str:
    message = str(error)
    if "timestep has" in message:
        return "repeat the timesteps for both halves too: t_in = torch.cat([t, t])."
    if "class_labels has" in message:
        return "give one label per image of the batch of two: torch.cat([torch.full_like(labels, null_label), labels])."
    if "class_labels" in message or "encoder_hidden_states" in message:
        return "pass the labels by name: model(x_in, t_in, class_labels=labels_in)."
    if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
        return "your function must take exactly these arguments, in this order: (model, x, t, labels, null_label)."
    return _ONE_PASS


def check_batch_of_two(fn: Callable) -> bool:
    """Check ``fn(model, x, t, labels, null_label) -> (eps_uncond, eps_cond)``, the batch-of-two trick (lesson 05).

    The function must call the model once, on ``torch.cat([x, x])`` with the null label for the
    first half, and split the output with ``chunk(2)``; the check counts the model's calls and
    compares with two separate passes.

    :param fn: the learner's function; ``model(sample, timestep, class_labels=...)`` has the
        course UNet's signature, ``x`` is (B, C, H, W), ``t`` and ``labels`` LongTensors (B,),
        ``null_label`` an int
    :return: True if the values are right and the model was called once per case
    """
    if not _is_function(fn, "check_batch_of_two"):
        return False
    base = _ToyDenoiser(num_class_embeds=_NULL_LABEL + 1)
    for seed, (shape, timesteps, labels) in enumerate(_BATCH_OF_TWO_CASES):
        x = _seeded(140 + seed, *shape)
        t, y = torch.tensor(timesteps), torch.tensor(labels)
        with torch.no_grad():
            eps_uncond = base(x, t, class_labels=torch.full_like(y, _NULL_LABEL))
            eps_cond = base(x, t, class_labels=y)
        where = f"for x of shape {shape}, {_timesteps_text(t)}, labels = {labels}"
        model = _CountingModel(base)
        ok, got = _call(fn, (model, x, t, y, _NULL_LABEL), _batch_of_two_exception_hint)
        if not ok:
            return False
        if isinstance(got, torch.Tensor):
            what = ("the whole batch of two; split it with .chunk(2)" if got.shape[:1] == (2 * shape[0],)
                    else f"one tensor of shape {tuple(got.shape)}")
            print(f"❌ Not yet: your function returned {what}, expected the pair (eps_uncond, eps_cond).")
            print("   Hint: return both halves: eps_uncond, eps_cond = out.chunk(2); return eps_uncond, eps_cond.")
            return False
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            received = "None" if got is None else (
                f"a {type(got).__name__} of length {len(got)}" if isinstance(got, (tuple, list)) else
                f"a {type(got).__name__}")
            print(f"❌ Not yet: your function returned {received}, expected the pair (eps_uncond, eps_cond).")
            print("   Hint: end with `return eps_uncond, eps_cond`.")
            return False
        mistakes = [
            ("the halves are swapped: chunk(2) returns them in the order of torch.cat, so put the null "
             "labels first: torch.cat([torch.full_like(labels, null_label), labels]).",
             (eps_cond, eps_uncond)),
            ("both halves saw the null label: the second half needs the real labels.", (eps_uncond, eps_uncond)),
            ("both halves saw the real labels: the first half needs null_label for every image.",
             (eps_cond, eps_cond)),
        ]
        for name, received, expected in (("eps_uncond", got[0], eps_uncond), ("eps_cond", got[1], eps_cond)):
            if _close(received, expected):
                continue
            hint = next((h for h, pair in mistakes if _close(got[0], pair[0]) and _close(got[1], pair[1])), None)
            lines = _wrong_value(received, _Case((), expected, where), name, _ONE_PASS,
                                 shape_hint=f"each half has the shape of x, {shape}: split the output with .chunk(2).")
            if hint:
                lines[-1] = f"   Hint: {hint}"
            print("\n".join(lines))
            return False
        calls = len(model.batch_sizes)
        if calls != 1:
            print(f"❌ Not yet: the values are right, but your function called the model {calls} times {where}.")
            print(f"   Hint: the batch-of-two trick needs ONE forward pass: {_ONE_PASS}")
            return False
    print("✅ Correct: one forward pass over torch.cat([x, x]) gives the same eps_uncond and eps_cond as two "
          "separate passes (3 batches, one t per image).")
    return True


# ============================================================================ lesson 06
# (shape of mu and log sigma^2, seed): a batch of 2 first, so that a per-batch number differs from a per-image one
_POSTERIOR_CASES = [((2, 4, 8, 8), 0), ((3, 4, 8, 8), 1), ((1, 2, 4, 6), 2)]


def _posterior_inputs(shape: tuple, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mu ~ 1.5 N(0, 1) and log sigma^2 in [-4, 1): an encoder's output, away from the [-30, 20] clamp."""
    mean = 1.5 * _seeded(160 + seed, *shape)
    logvar = -4.0 + 5.0 * torch.rand(shape, generator=torch.Generator().manual_seed(170 + seed))
    return mean, logvar


def _shape_text(shape: tuple) -> str:
    return f"for mean and logvar of shape {shape}"


def check_kl_diagonal_gaussian(fn: Callable) -> bool:
    """Check ``fn(mean, logvar) -> KL(N(mu, sigma^2) || N(0, I))`` per image (lesson 06).

    KL = 1/2 Σ_{c,h,w} (μ² + σ² - 1 - log σ²), summed over the latent's C, H, W, one number per
    image: what ``DiagonalGaussianDistribution.kl()`` returns and the VAE's loss weights by 1e-6.

    :param fn: the learner's function; ``mean`` μ and ``logvar`` log σ² are (B, C, H, W)
    :return: True if fn agrees with :meth:`course_lib.nn.vae.DiagonalGaussianDistribution.kl` on every case
    """
    cases = []
    for shape, seed in _POSTERIOR_CASES:
        mean, logvar = _posterior_inputs(shape, seed)
        expected = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()  # (B,)

        def mistakes(m=mean, lv=logvar):
            var = lv.exp()
            dims = [1, 2, 3]
            terms = m.pow(2) + var - 1 - lv  # (B, C, H, W), twice the KL of each coordinate
            one_number = ("you returned one number for the whole batch; the KL is one number per image: "
                          "sum over dims [1, 2, 3] only, giving shape (B,).")
            return [
                ("you forgot the 1/2: KL = 1/2 Σ (μ² + σ² - 1 - log σ²).", lambda: terms.sum(dims)),
                ("you took the mean over C, H, W; the KL of independent coordinates adds up: "
                 ".sum(dim=[1, 2, 3]), not .mean(...).", lambda: 0.5 * terms.mean(dims)),
                (one_number, lambda: 0.5 * terms.sum()),
                (one_number, lambda: 0.5 * terms.sum(dims).mean()),
                ("keep one number per image, shape (B,): sum over dims [1, 2, 3] without keepdim=True.",
                 lambda: 0.5 * terms.sum(dims, keepdim=True)),
                ("you used σ where σ² belongs: the second term is the variance σ² = exp(logvar), "
                 "not σ = exp(logvar / 2).", lambda: 0.5 * (m.pow(2) + (0.5 * lv).exp() - 1 - lv).sum(dims)),
                ("the last term is log σ² = logvar itself; you used log σ = logvar / 2.",
                 lambda: 0.5 * (m.pow(2) + var - 1 - 0.5 * lv).sum(dims)),
                ("logvar is log σ² (the log-variance), not log σ: σ² = exp(logvar) and log σ² = logvar.",
                 lambda: 0.5 * (m.pow(2) + (2 * lv).exp() - 1 - 2 * lv).sum(dims)),
                ("check the sign: a KL divergence is never negative, KL = +1/2 Σ (μ² + σ² - 1 - log σ²).",
                 lambda: -0.5 * terms.sum(dims)),
                ("check the sign of the log term: it is - log σ² (the entropy of q lowers the KL).",
                 lambda: 0.5 * (m.pow(2) + var - 1 + lv).sum(dims)),
                ("you forgot the - 1 in each coordinate: KL = 1/2 Σ (μ² + σ² - 1 - log σ²), which is 0 "
                 "when μ = 0 and σ = 1.", lambda: 0.5 * (m.pow(2) + var - lv).sum(dims)),
                ("you forgot μ²: a posterior whose mean is far from 0 costs 1/2 μ² per coordinate.",
                 lambda: 0.5 * (var - 1 - lv).sum(dims)),
                ("that is the KL the other way round, KL(N(0, I) || q); the VAE's term is KL(q || N(0, I)) "
                 "= 1/2 Σ (μ² + σ² - 1 - log σ²).",
                 lambda: 0.5 * ((1 + m.pow(2)) / var - 1 + lv).sum(dims)),
            ]

        cases.append(_Case(args=(mean, logvar), expected=expected, where=_shape_text(shape), mistakes=mistakes()))

    return _grade(
        fn, cases, check_name="check_kl_diagonal_gaussian", result_name="the KL",
        success="KL = 1/2 Σ_{c,h,w} (μ² + σ² - 1 - log σ²), one number per image, matches "
                "DiagonalGaussianDistribution.kl() on 3 batches.",
        generic_hint="σ² = exp(logvar) (logvar may be negative: never take its log or square root), and "
                     "KL = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=[1, 2, 3]).",
        shape_hint="the KL is one number per image, shape (B,): sum over dims [1, 2, 3].",
        exception_hint=_hint_for_exception("(mean, logvar)", "0.5 * (mean**2 + logvar.exp() - 1 - logvar)",
                                           broadcast=False),
    )


def check_reparameterise(fn: Callable) -> bool:
    """Check ``fn(mean, logvar, eps) -> z = μ + σ·ε`` with σ = exp(logvar / 2) (lesson 06).

    The reparameterisation trick: a sample of q(z | x) = N(μ, σ²) written as a function of μ, σ
    and noise ε ~ N(0, I) drawn apart from them, so gradients reach μ and σ. The check draws ε
    as ``DiagonalGaussianDistribution.sample(generator)`` does and compares with its sample.

    :param fn: the learner's function; ``mean``, ``logvar`` and ``eps`` are (B, C, H, W)
    :return: True if fn agrees with :meth:`course_lib.nn.vae.DiagonalGaussianDistribution.sample`
    """
    cases = []
    for shape, seed in _POSTERIOR_CASES:
        mean, logvar = _posterior_inputs(shape, seed)
        posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
        # the noise that sample(generator) draws from the same seed (randn_tensor on the CPU)
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(180 + seed))
        expected = posterior.sample(torch.Generator().manual_seed(180 + seed))

        def mistakes(m=mean, lv=logvar, e=eps):
            std = (0.5 * lv).exp()
            return [
                ("logvar is log σ², not σ: the noise is scaled by σ = exp(logvar / 2), "
                 "z = mean + exp(0.5 * logvar) * eps.", lambda: m + lv * e),
                ("exp(logvar) is the variance σ²; the noise is scaled by the standard deviation "
                 "σ = exp(logvar / 2).", lambda: m + lv.exp() * e),
                ("check the sign: z = μ + σ·ε. (μ - σ·ε has the same distribution, but the course and "
                 "diffusers add, so a seed gives the same z everywhere.)", lambda: m - std * e),
                ("you returned μ, the mode of q(z | x) (what posterior.mode() gives); a sample adds the "
                 "noise σ·ε.", lambda: m),
                ("you forgot the mean: z = μ + σ·ε.", lambda: std * e),
                ("μ and σ are swapped: the noise is scaled by σ and shifted by μ, z = μ + σ·ε.",
                 lambda: std + m * e),
                ("you added the noise without scaling it by σ: z = μ + σ·ε.", lambda: m + e),
            ]

        cases.append(_Case(args=(mean, logvar, eps), expected=expected, where=_shape_text(shape),
                           mistakes=mistakes()))

    def exception_hint(error):
        return _hint_for_exception("(mean, logvar, eps)", "mean + exp(0.5 * logvar) * eps", broadcast=False)(error)

    return _grade(
        fn, cases, check_name="check_reparameterise", result_name="z",
        success="z = μ + exp(logvar / 2)·ε matches DiagonalGaussianDistribution.sample on 3 batches "
                "(with the same noise ε).",
        generic_hint="σ = exp(0.5 * logvar) (logvar may be negative: no square root of it), then "
                     "z = mean + σ * eps with the eps you are given (do not draw new noise).",
        shape_hint="z has the shape of mean: every coordinate gets its own μ, σ and ε.",
        exception_hint=exception_hint,
    )


# ============================================================================ lesson 07
# (batch, heads, N image positions, L prompt tokens, d channels per head). The first case has
# L == d, so Q K (K not transposed) runs and gives a wrong value the check can name; all have
# N != L, so a softmax over the wrong axis is told apart, and the second has L != d (sqrt(L)).
_ATTENTION_CASES = [(2, 4, 16, 8, 8), (1, 1, 6, 5, 4), (3, 2, 64, 16, 8)]
_ATTENTION_FORMULA = "softmax(Q Kᵀ / √d) V: (q @ k.transpose(-2, -1) / d ** 0.5).softmax(dim=-1) @ v"


def _attention_exception_hint(error: BaseException) -> str:
    message = str(error)
    if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
        return "your function must take exactly these arguments, in this order: (q, k, v)."
    if any(words in message for words in ("size of tensor", "must match", "mat1", "Expected size", "shapes cannot")):
        return ("transpose only the last two axes of K: k.transpose(-2, -1) has shape (B, h, d, L), so "
                "q @ k.transpose(-2, -1) is (B, h, N, L): one score per image position and prompt token.")
    return f"compute {_ATTENTION_FORMULA}."


def check_cross_attention(fn: Callable) -> bool:
    """Check ``fn(q, k, v) -> softmax(Q Kᵀ / √d) V`` per head (lesson 07).

    Cross-attention: the queries come from the image positions, the keys and values from the
    prompt's tokens. The inputs are already split into heads, as inside the UNet's ``attn2``.

    :param fn: the learner's function; ``q`` is (B, h, N, d), ``k`` and ``v`` are (B, h, L, d)
    :return: True if fn agrees with ``torch.nn.functional.scaled_dot_product_attention`` on every case
    """
    import math

    import torch.nn.functional as F

    cases = []
    for seed, (B, h, N, L, d) in enumerate(_ATTENTION_CASES):
        q = 1.5 * _seeded(190 + seed, B, h, N, d)  # scores of a few units: the scaling matters
        k = 1.5 * _seeded(200 + seed, B, h, L, d)
        v = _seeded(210 + seed, B, h, L, d)

        def mistakes(q=q, k=k, v=v, L=L, d=d):
            scores = q @ k.transpose(-2, -1)  # (B, h, N, L)
            return [
                ("you forgot the scaling: divide the scores by √d before the softmax, "
                 "(q @ k.transpose(-2, -1)) / d ** 0.5.", lambda: scores.softmax(-1) @ v),
                ("you divided by d; the scores are divided by √d (the square root of the channels per head).",
                 lambda: (scores / d).softmax(-1) @ v),
                ("you multiplied by √d; the scores are divided by it.",
                 lambda: (scores * math.sqrt(d)).softmax(-1) @ v),
                ("you divided by √L (L prompt tokens); the scale is √d, d = q.shape[-1], the channels per head.",
                 lambda: (scores / math.sqrt(L)).softmax(-1) @ v),
                ("the softmax runs over the wrong axis: each image position (a row of the scores) shares its "
                 "attention among the L prompt tokens, so softmax(dim=-1), over the keys.",
                 lambda: (scores / math.sqrt(d)).softmax(-2) @ v),
                ("K is not transposed: the scores are Q Kᵀ, q @ k.transpose(-2, -1), (B, h, N, L).",
                 lambda: (q @ k / math.sqrt(d)).softmax(-1) @ v),
                ("you returned the attention weights softmax(Q Kᵀ / √d), (B, h, N, L); multiply them by V.",
                 lambda: (scores / math.sqrt(d)).softmax(-1)),
                ("K and V are swapped: the scores compare Q with K, and the weights average V.",
                 lambda: (q @ v.transpose(-2, -1) / math.sqrt(d)).softmax(-1) @ k),
                ("the weights multiply V after the softmax; a softmax of the product mixes things up.",
                 lambda: (scores / math.sqrt(d) @ v).softmax(-1)),
            ]

        cases.append(_Case(
            args=(q, k, v),
            expected=F.scaled_dot_product_attention(q, k, v),
            where=f"for q of shape {(B, h, N, d)} and k, v of shape {(B, h, L, d)}",
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_cross_attention", result_name="the attention output",
        success="softmax(Q Kᵀ / √d) V matches torch's F.scaled_dot_product_attention for 3 batches "
                "(4, 1 and 2 heads; 8, 5 and 16 prompt tokens).",
        generic_hint=_ATTENTION_FORMULA + ".",
        shape_hint="the output has one d-vector per head and image position: (B, h, N, d), the shape of q.",
        exception_hint=_attention_exception_hint,
    )


# (B pairs, P channels, logit_scale = log(1 / tau)); CLIP starts at log(1 / 0.07) = 2.6592
_CONTRASTIVE_CASES = [(4, 8, 2.6592), (8, 16, 4.0), (5, 8, 1.0)]
_CONTRASTIVE_FORMULA = ("logits = logit_scale.exp() * image_embeds @ text_embeds.T; then the mean of "
                        "F.cross_entropy(logits, targets) and F.cross_entropy(logits.T, targets), "
                        "targets = torch.arange(B)")


def check_clip_contrastive_loss(fn: Callable) -> bool:
    """Check ``fn(image_embeds, text_embeds, logit_scale) -> CLIP's symmetric contrastive loss`` (lesson 07).

    With s_ij = exp(logit_scale) v_i · t_j, the loss is the mean of the cross-entropy along the
    rows (each image picks its caption) and along the columns (each caption picks its image),
    the diagonal being the right answers.

    :param fn: the learner's function; the embeddings are unit vectors (B, P), row i of each a
        matching pair; ``logit_scale`` is a scalar tensor, log(1 / τ), as ``CLIPModel.logit_scale``
    :return: True if fn agrees with :func:`course_lib.nn.text.contrastive_loss` on every case
    """
    import math

    import torch.nn.functional as F

    from .nn.text import contrastive_loss

    cases = []
    for seed, (B, P, scale) in enumerate(_CONTRASTIVE_CASES):
        image_embeds = F.normalize(_seeded(220 + seed, B, P), dim=-1)
        # captions that partly match their image, as a half-trained CLIP's do
        text_embeds = F.normalize(image_embeds + 0.8 * _seeded(230 + seed, B, P), dim=-1)
        logit_scale = torch.tensor(scale)

        def mistakes(v=image_embeds, t=text_embeds, s=scale, B=B):
            target = torch.arange(B)
            cosines = v @ t.T  # (B, B)
            logits = math.exp(s) * cosines
            rows, columns = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
            return [
                ("only one direction: that is each image choosing its caption (the rows). Add the other, each "
                 "caption choosing its image (the columns, logits.T), and average the two.", lambda: rows),
                ("only one direction: that is each caption choosing its image (the columns). Add the other, "
                 "each image choosing its caption (the rows), and average the two.", lambda: columns),
                ("you added the two directions; CLIP averages them: (loss_rows + loss_columns) / 2.",
                 lambda: rows + columns),
                ("the temperature is missing: multiply the cosines by exp(logit_scale) = 1 / τ before the "
                 "cross-entropy.", lambda: (F.cross_entropy(cosines, target) + F.cross_entropy(cosines.T, target)) / 2),
                ("logit_scale is log(1 / τ): multiply by logit_scale.exp(), not by logit_scale itself.",
                 lambda: (F.cross_entropy(s * cosines, target) + F.cross_entropy(s * cosines.T, target)) / 2),
                ("you divided by exp(logit_scale); exp(logit_scale) = 1 / τ multiplies the cosines.",
                 lambda: (F.cross_entropy(cosines / math.exp(s), target)
                          + F.cross_entropy(cosines.T / math.exp(s), target)) / 2),
                ("you summed over the batch; the loss is a mean over the B pairs (cross_entropy's default).",
                 lambda: (F.cross_entropy(logits, target, reduction="sum")
                          + F.cross_entropy(logits.T, target, reduction="sum")) / 2),
            ]

        cases.append(_Case(
            args=(image_embeds, text_embeds, logit_scale),
            expected=contrastive_loss(image_embeds, text_embeds, logit_scale),
            where=f"for {B} pairs of {P}-dim embeddings, logit_scale = {scale}",
            mistakes=mistakes(),
        ))

    def exception_hint(error: BaseException) -> str:
        message = str(error)
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return ("your function must take exactly these arguments, in this order: "
                    "(image_embeds, text_embeds, logit_scale).")
        if "must be real number" in message or "not Tensor" in message:
            return "logit_scale is a tensor: use logit_scale.exp() (torch), not math.exp(logit_scale)."
        return f"compute {_CONTRASTIVE_FORMULA}."

    return _grade(
        fn, cases, check_name="check_clip_contrastive_loss", result_name="the loss",
        success="the symmetric loss, (CE over rows + CE over columns) / 2 with logits exp(logit_scale)·v·tᵀ, "
                "matches course_lib.nn.text.contrastive_loss for 3 batches.",
        generic_hint=_CONTRASTIVE_FORMULA + ".",
        shape_hint="the loss is one number, a tensor of shape (): F.cross_entropy averages over the batch.",
        exception_hint=exception_hint,
    )


# ============================================================================ lesson 08
class _ToyTextDenoiser(nn.Module):
    """A text-conditioned stand-in with the course UNet's signature and argument checks.

    model(sample, timestep, encoder_hidden_states) -> eps of sample's shape; images do not
    interact, so one pass over a batch equals passes over its parts.
    """

    def __init__(self, channels: int, text_width: int):
        super().__init__()
        self.register_buffer("text_projection", 0.5 * _seeded(240, text_width, channels))

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None):
        if encoder_hidden_states is None:
            raise ValueError("This UNet cross-attends to the prompt: pass encoder_hidden_states=... (B, L, D).")
        B = sample.shape[0]
        if encoder_hidden_states.shape[0] != B:
            raise ValueError(f"encoder_hidden_states has {encoder_hidden_states.shape[0]} items but sample has {B}.")
        timestep = torch.as_tensor(timestep).reshape(-1)
        if timestep.numel() not in (1, B):
            raise ValueError(f"timestep has {timestep.numel()} entries but sample has {B} images.")
        t = timestep.expand(B).to(sample.dtype).reshape(-1, 1, 1, 1)
        # each image reads its own text states: (B, L, D) -> (B, D) -> (B, C, 1, 1)
        text = (encoder_hidden_states.mean(dim=1) @ self.text_projection)[:, :, None, None]
        return torch.tanh(sample + 0.5 * sample.roll(1, dims=-1) + text) * torch.cos(t / 300) + 0.1 * text


# ((B, C_z, h, w), L tokens, D text width, t, guidance_scale)
_GUIDED_NOISE_CASES = [((1, 4, 8, 8), 6, 8, 801, 7.5), ((3, 4, 8, 8), 6, 8, 401, 3.0),
                       ((2, 4, 4, 6), 5, 12, 21, 1.0)]
_GUIDED_NOISE_RECIPE = ("latent_model_input = torch.cat([latents] * 2); states = torch.cat([negative_prompt_embeds, "
                        "prompt_embeds]); noise_pred = unet(latent_model_input, t, encoder_hidden_states=states); "
                        "noise_pred_uncond, noise_pred_text = noise_pred.chunk(2); return noise_pred_uncond + "
                        "guidance_scale * (noise_pred_text - noise_pred_uncond).")


def _guided_noise_exception_hint(error: BaseException) -> str:
    message = str(error)
    if "encoder_hidden_states has" in message:
        found = [int(word) for word in message.replace(".", " ").split() if word.isdigit()]
        if len(found) == 2 and found[0] < found[1]:
            return ("the text states must be a batch of two as well: torch.cat([negative_prompt_embeds, "
                    "prompt_embeds]), one per copy of the latents.")
        return "the latents must be a batch of two as well: torch.cat([latents] * 2), one copy per text state."
    if "timestep has" in message:
        return ("t is one timestep for every image of the batch of two: pass it as it is, unet(latent_model_input, "
                "t, encoder_hidden_states=states).")
    if "pass encoder_hidden_states" in message:
        return "give the UNet the text states by name: unet(latent_model_input, t, encoder_hidden_states=states)."
    if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
        return ("your function must take exactly these arguments, in this order: "
                "(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale).")
    return _GUIDED_NOISE_RECIPE


def check_guided_noise(fn: Callable) -> bool:
    """Check ``fn(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale) -> eps`` (lesson 08).

    The heart of ``StableDiffusionPipeline.__call__``: one UNet pass over the batch of two,
    latents ``[z_t, z_t]`` with text states ``[c_neg, c]`` (the negative prompt first), the output
    split with ``chunk(2)`` and combined with classifier-free guidance. The check counts the
    UNet's calls and compares with two separate passes.

    :param fn: the learner's function; ``unet(sample, timestep, encoder_hidden_states=...)`` has
        the course UNet's signature, ``latents`` is (B, C_z, h, w), ``t`` an int, both text states
        (B, L, D), ``guidance_scale`` a number (1 = no guidance)
    :return: True if the values are right and the UNet was called once per case
    """
    if not _is_function(fn, "check_guided_noise"):
        return False
    for seed, (shape, L, D, t, s) in enumerate(_GUIDED_NOISE_CASES):
        base = _ToyTextDenoiser(shape[1], D)
        latents = _seeded(250 + seed, *shape)
        prompt_embeds, negative_prompt_embeds = _seeded(260 + seed, shape[0], L, D), _seeded(270 + seed, shape[0], L, D)
        with torch.no_grad():
            u = base(latents, t, encoder_hidden_states=negative_prompt_embeds)  # eps(z_t, c_neg)
            c = base(latents, t, encoder_hidden_states=prompt_embeds)  # eps(z_t, c)
        where = f"for latents of shape {shape}, text states of shape {(shape[0], L, D)}, t = {t}, guidance_scale = {s}"
        case = _Case(
            args=(latents, t, prompt_embeds, negative_prompt_embeds, s), expected=cfg(u, c, s), where=where,
            mistakes=[
                ("the halves are swapped: chunk(2) returns them in the order of torch.cat, and the pipeline puts "
                 "the negative prompt first, so noise_pred_uncond, noise_pred_text = noise_pred.chunk(2).",
                 lambda: c + s * (u - c)),
                ("you used guidance_scale as Ho & Salimans' w; in diffusers' convention the formula is "
                 "noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond).",
                 lambda: c + s * (c - u)),
                ("off by one in the scale: guidance_scale = 1 must give noise_pred_text (no guidance).",
                 lambda: u + (s - 1) * (c - u)),
                ("check the sign: guidance moves away from the negative prompt, toward the prompt.",
                 lambda: u - s * (c - u)),
                ("the scale multiplies the difference (noise_pred_text - noise_pred_uncond), not "
                 "noise_pred_uncond: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond).",
                 lambda: s * u + (c - u)),
                ("the parentheses are missing: guidance_scale * noise_pred_text - noise_pred_uncond + "
                 "noise_pred_uncond is only guidance_scale * noise_pred_text; scale the difference.",
                 lambda: s * c),
                ("you returned the guidance term alone; add it to noise_pred_uncond.", lambda: s * (c - u)),
                ("you returned the prediction for the prompt alone: did both halves see prompt_embeds? The "
                 "first half must see negative_prompt_embeds, and the two halves are combined with the scale.",
                 lambda: c),
                ("you returned the prediction for the negative prompt alone: the second half must see "
                 "prompt_embeds, and the two halves are combined with the scale.", lambda: u),
            ],
        )
        model = _CountingModel(base)
        ok, got = _call(fn, (model, *case.args), _guided_noise_exception_hint)
        if not ok:
            return False
        if isinstance(got, (tuple, list)):
            print(f"❌ Not yet: your function returned a {type(got).__name__} of {len(got)} items {where}, "
                  f"expected one tensor of shape {shape}.")
            print("   Hint: return the guided noise, noise_pred_uncond + guidance_scale * (noise_pred_text - "
                  "noise_pred_uncond), not the two halves.")
            return False
        shape_hint = (f"the guided noise has the shape of the latents, {shape}: split the UNet's output of the "
                      f"batch of two with .chunk(2) and combine the halves.")
        lines = _wrong_value(got, case, "the guided noise", _GUIDED_NOISE_RECIPE, shape_hint)
        if lines:
            print("\n".join(lines))
            return False
        calls = len(model.batch_sizes)
        if calls != 1:
            print(f"❌ Not yet: the values are right, but your function called the UNet {calls} times {where}.")
            print(f"   Hint: the batch of two needs ONE UNet pass: {_GUIDED_NOISE_RECIPE}")
            return False
    print("✅ Correct: one UNet pass over [latents, latents] with [negative_prompt_embeds, prompt_embeds], split "
          "with chunk(2) and combined as uncond + s·(text - uncond), equals the two separate passes "
          "(3 batches, scales 7.5, 3 and 1).")
    return True


class _ToyVAE(nn.Module):
    """A stand-in for the VAE: ``config.scaling_factor``, ``config.latent_channels`` and ``decode(z)``.

    decode: (B, 4, h, w) -> (B, 3, 2h, 2w), a little beyond [-1, 1] as a real decoder's output can be.
    """

    def __init__(self, scaling_factor: float, seed: int):
        from types import SimpleNamespace

        super().__init__()
        self.config = SimpleNamespace(scaling_factor=scaling_factor, latent_channels=4)
        self.register_buffer("mixing", 0.6 * _seeded(280 + seed, 3, 4))
        self.register_buffer("bias", 0.3 * _seeded(290 + seed, 3))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"decode takes latents (B, {self.config.latent_channels}, h, w), got {got}.")
        x = torch.einsum("oc,bchw->bohw", self.mixing, z) + self.bias[:, None, None]  # (B, 3, h, w)
        x = 1.25 * torch.tanh(x)
        return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # (B, 3, 2h, 2w)


# ((B, 4, h, w) latents, the VAE's scaling factor)
_DECODE_CASES = [((1, 4, 4, 4), 0.18215), ((3, 4, 8, 8), 0.871), ((2, 4, 6, 4), 0.5)]
_DECODE_RECIPE = ("images = vae.decode(latents / vae.config.scaling_factor); "
                  "return (images / 2 + 0.5).clamp(0, 1)")


def check_decode_latents(fn: Callable) -> bool:
    """Check ``fn(vae, latents) -> images in [0, 1]``, steps 8 and 10 of the pipeline (lesson 08).

    The UNet works on s·z (s = ``vae.config.scaling_factor``, lesson 06), so the loop's latents are
    divided by s before the decoder, and the decoder's [-1, 1] is mapped to [0, 1] and clipped.

    :param fn: the learner's function; ``vae`` has ``config.scaling_factor`` and ``decode(z)``,
        ``latents`` is (B, 4, h, w)
    :return: True if fn returns (vae.decode(latents / s) / 2 + 0.5).clamp(0, 1), (B, 3, H, W), on every case
    """
    cases = []
    for seed, (shape, s) in enumerate(_DECODE_CASES):
        vae = _ToyVAE(s, seed)
        latents = 1.2 * _seeded(300 + seed, *shape) * s / 0.5  # s·z with z of a few units, as the UNet's latents

        def mistakes(vae=vae, latents=latents, s=s):
            decoded = vae.decode(latents / s)
            return [
                ("you forgot to divide by the scaling factor: the UNet's latents are s·z, and the decoder "
                 "wants z = latents / vae.config.scaling_factor.",
                 lambda: (vae.decode(latents) / 2 + 0.5).clamp(0, 1)),
                ("you multiplied by the scaling factor; divide: z = latents / vae.config.scaling_factor.",
                 lambda: (vae.decode(latents * s) / 2 + 0.5).clamp(0, 1)),
                ("use this VAE's own vae.config.scaling_factor; 0.18215 is SD v1.x's, and the course's VAE "
                 "measured its own in lesson 06.",
                 lambda: (vae.decode(latents / 0.18215) / 2 + 0.5).clamp(0, 1)),
                ("the decoder gives images in [-1, 1]; map them to [0, 1] with images / 2 + 0.5.", lambda: decoded),
                ("the decoder gives images in [-1, 1]; map them to [0, 1] with images / 2 + 0.5 (then clamp).",
                 lambda: decoded.clamp(-1, 1)),
                ("a decoder can overshoot [-1, 1] a little: clip after mapping, .clamp(0, 1).",
                 lambda: decoded / 2 + 0.5),
                ("return floats in [0, 1], as the pipeline's output_type='np'; 0..255 comes only when "
                 "making PIL images.", lambda: ((decoded / 2 + 0.5).clamp(0, 1) * 255)),
                ("return floats in [0, 1], as the pipeline's output_type='np'; 0..255 comes only when "
                 "making PIL images.", lambda: ((decoded / 2 + 0.5).clamp(0, 1) * 255).round()),
                ("clamp after mapping to [0, 1], not before: (images / 2 + 0.5).clamp(0, 1).",
                 lambda: decoded.clamp(0, 1) / 2 + 0.5),
                ("(images + 1) / 2 is right, but the result must be clipped to [0, 1] as well.",
                 lambda: (decoded + 1) / 2),
            ]

        cases.append(_Case(args=(vae, latents), expected=(vae.decode(latents / s) / 2 + 0.5).clamp(0, 1),
                           where=f"for latents of shape {shape} and scaling_factor = {s}", mistakes=mistakes()))

    def exception_hint(error: BaseException) -> str:
        message = str(error)
        if "decode takes latents" in message:
            return "give vae.decode the latents themselves, (B, 4, h, w), divided by vae.config.scaling_factor."
        if isinstance(error, AttributeError) and "scaling_factor" in message:
            return "the scaling factor is in the VAE's config: vae.config.scaling_factor."
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return "your function must take exactly these arguments, in this order: (vae, latents)."
        return _DECODE_RECIPE + "."

    return _grade(
        fn, cases, check_name="check_decode_latents", result_name="the images",
        success="(vae.decode(latents / s) / 2 + 0.5).clamp(0, 1) matches for scaling factors 0.18215, 0.871 "
                "and 0.5.",
        generic_hint=_DECODE_RECIPE + ".",
        shape_hint="keep the decoder's layout (B, 3, H, W): the pipeline moves the channels last only when it "
                   "makes PIL images.",
        exception_hint=exception_hint,
    )


# ============================================================================ lesson 09
# (shape, sampling steps n, timestep spacing, grid positions i of the steps checked); the last
# position of each grid is the final step, down to σ_next = 0
_EULER_CASES = [((1, 4, 8, 8), 50, "leading", [10]), ((3, 4, 8, 8), 20, "linspace", [0, 9, 19]),
                ((2, 3, 8, 8), 10, "leading", [4, 9])]


def check_euler_step(fn: Callable) -> bool:
    """Check one Euler step on the probability-flow ODE in σ, ``fn(x, eps, sigma, sigma_next) -> x_next`` (lesson 09).

    In the variable x = x_t / sqrt(ᾱ_t) = x_0 + σ ε the ODE is dx/dσ = ε_θ, so Euler's method steps
    x_next = x + (σ_next - σ) ε (Karras et al. 2022, Algorithm 1 without its second-order correction).

    :param fn: the learner's function; ``x`` and ``eps`` are (B, C, H, W), ``sigma`` and
        ``sigma_next`` are σ and the next σ of the grid per image, shape (B, 1, 1, 1)
    :return: True if fn agrees with ``EulerSampler(schedule).step`` on every case
    """
    from .samplers import EulerSampler

    cases = []
    for seed, (shape, steps, spacing, positions) in enumerate(_EULER_CASES):
        sampler = EulerSampler(_SD, timestep_spacing=spacing)
        sampler.set_timesteps(steps)
        sigma = _per_item(sampler.sigmas[positions])
        sigma_next = _per_item(sampler.sigmas[[i + 1 for i in positions]])
        x = _seeded(240 + seed, *shape).clamp(-1, 1) + sigma * _seeded(250 + seed, *shape)  # x = x_0 + σ ε
        eps = 0.8 * (x - _seeded(240 + seed, *shape).clamp(-1, 1)) / sigma + 0.3 * _seeded(260 + seed, *shape)
        timesteps = sampler.timesteps[positions]
        expected = torch.cat([sampler.step(eps[b:b + 1], t, x[b:b + 1]) for b, t in enumerate(timesteps)])

        def mistakes(x=x, eps=eps, s=sigma, n=sigma_next):
            return [
                ("check the sign: σ decreases along the sampling, so the step σ_next - σ is negative; "
                 "x_next = x + (σ_next - σ)·ε, not x + (σ - σ_next)·ε.", lambda: x + (s - n) * eps),
                ("you used σ_next alone; Euler's step multiplies the derivative ε by the change in σ, "
                 "σ_next - σ.", lambda: x + n * eps),
                ("you used σ_next alone; Euler's step multiplies the derivative ε by the change in σ, "
                 "σ_next - σ.", lambda: x - n * eps),
                ("you returned x̂0 = x - σ·ε, a jump all the way to σ = 0; step only to σ_next: "
                 "x + (σ_next - σ)·ε.", lambda: x - s * eps),
                ("the derivative dx/dσ is ε itself (x = x0 + σ·ε); you divided it by σ once more.",
                 lambda: x + (n - s) * eps / s),
                ("σ is a standard deviation and the ODE is in σ itself: use σ_next - σ, not σ_next² - σ².",
                 lambda: x + (n ** 2 - s ** 2) * eps),
                ("you scaled x by 1 / sqrt(σ² + 1): that is what the UNet is given (scale_model_input); "
                 "the step itself works on x = x0 + σ·ε: x + (σ_next - σ)·ε.",
                 lambda: x / (s ** 2 + 1) ** 0.5 + (n - s) * eps),
                ("every image used the first σ; each image has its own σ and σ_next, already shaped "
                 "(B, 1, 1, 1): x + (sigma_next - sigma) * eps.", lambda: x + (n[0] - s[0]) * eps),
            ]

        cases.append(_Case(
            args=(x, eps, sigma, sigma_next),
            expected=expected,
            where=(f"for x of shape {shape}, σ = {[round(v, 4) for v in sigma.flatten().tolist()]} -> "
                   f"σ_next = {[round(v, 4) for v in sigma_next.flatten().tolist()]} ({steps} {spacing} steps)"),
            mistakes=mistakes(),
        ))
    return _grade(
        fn, cases, check_name="check_euler_step", result_name="x_next",
        success="x_next = x + (σ_next - σ)·ε matches EulerSampler.step on 3 grids, the last step (σ_next = 0) "
                "included.",
        generic_hint="x = x0 + σ·ε, so dx/dσ = ε and Euler's step is x_next = x + (σ_next - σ)·ε.",
        shape_hint="x_next has the shape of x; sigma and sigma_next are already (B, 1, 1, 1).",
        exception_hint=_hint_for_exception("(x, eps, sigma, sigma_next)", "x + (σ_next - σ)·ε"),
    )


# (sampler, timestep spacing, n, strength): n·strength 30 (whole), 3.3 (round() keeps 3, rounding up
# gives 4), 37.5 (round() gives 38), 3.5 on a fractional Euler grid, and the ends 1 and 0
_IMG2IMG_CASES = [("ddim", "leading", 50, 0.6), ("dpmsolver", "linspace", 10, 0.33), ("ddim", "leading", 50, 0.75),
                  ("euler", "linspace", 7, 0.5), ("ddim", "leading", 10, 1.0), ("ddim", "leading", 10, 0.0)]


def check_img2img_timesteps(fn: Callable) -> bool:
    """Check ``fn(timesteps, strength) -> the timesteps img2img runs`` (lesson 09).

    As diffusers' ``StableDiffusionImg2ImgPipeline`` (and ``StableDiffusion.img2img``): of the n
    timesteps, the last k = int(n · strength) are run, from position n - k on; the image is noised
    to the first of them.

    :param fn: the learner's function; ``timesteps`` is a sampler's grid of n timesteps, high to
        low (a tensor (n,)), ``strength`` a float in [0, 1]
    :return: True if fn returns ``timesteps[n - int(n * strength):]`` on every case
    """
    from .samplers import make_sampler

    cases = []
    for name, spacing, n, strength in _IMG2IMG_CASES:
        sampler = make_sampler(name, _SD, timestep_spacing=spacing)
        sampler.set_timesteps(n)
        timesteps = sampler.timesteps
        k = min(int(n * strength), n)  # as StableDiffusion.img2img and diffusers' get_timesteps

        def mistakes(ts=timesteps, n=n, s=strength, k=k):
            import math

            return [
                ("you rounded n·strength; diffusers truncates it: k = int(n·strength), then timesteps[n - k:].",
                 lambda: ts[n - min(round(n * s), n):]),
                ("you rounded n·strength up (a start at int(n·(1 - strength)) does the same); diffusers first "
                 "truncates the number of steps, k = int(n·strength), then starts at n - k.",
                 lambda: ts[n - min(math.ceil(n * s), n):]),
                ("off by one: you run one step too many (k + 1). Run exactly k = int(n·strength) steps: "
                 "timesteps[n - k:].", lambda: ts[max(n - k - 1, 0):]),
                ("off by one: you run one step too few (k - 1). Run exactly k = int(n·strength) steps: "
                 "timesteps[n - k:].", lambda: ts[n - k + 1:]),
                ("for strength 0, k = 0 and timesteps[-0:] is the whole grid (-0 is 0); slice from n - k: "
                 "timesteps[len(timesteps) - k:].", lambda: ts[-k:]),
                ("those are the first k timesteps, the noisiest ones, where sampling from noise starts. img2img "
                 "runs the END of the loop: the last k, timesteps[n - k:].", lambda: ts[:k]),
                ("you started at position k; start at n - k, so that k = int(n·strength) steps are run.",
                 lambda: ts[k:]),
                ("the timesteps must stay high to low, as the sampler runs them: timesteps[n - k:], not flipped.",
                 lambda: ts[n - k:].flip(0)),
            ]

        cases.append(_Case(
            args=(timesteps, strength),
            expected=timesteps[n - k:],
            where=f"for {name}'s {n} {spacing} timesteps and strength = {strength}",
            mistakes=mistakes(),
        ))

    def exception_hint(error: BaseException) -> str:
        message = str(error)
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return "your function must take exactly these arguments, in this order: (timesteps, strength)."
        if isinstance(error, TypeError) and ("slice" in message or "integer" in message or "index" in message):
            return "slice positions must be whole numbers: k = int(n * strength)."
        return "k = int(len(timesteps) * strength), then return timesteps[len(timesteps) - k:]."

    return _grade(
        fn, cases, check_name="check_img2img_timesteps", result_name="the timesteps run",
        success="the last k = int(n·strength) timesteps, timesteps[n - k:], match StableDiffusion.img2img "
                "for 6 grids and strengths, strength 0 and 1 included.",
        generic_hint="k = int(n * strength) steps are run, the last k of the grid: timesteps[n - k:].",
        shape_hint="return k = int(n * strength) timesteps, the last k of the grid: timesteps[n - k:].",
        exception_hint=exception_hint,
    )
