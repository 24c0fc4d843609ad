"""Self-grading exercises: checks of a learner's functions against course_lib (lessons 01-04).

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
===============================  =============================================  ======
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .diffusion import pred_x0_from_eps, q_sample, score_from_eps
from .guidance import cfg, classifier_guided_eps, classifier_log_prob_grad
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


# ============================================================================ lesson 03
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
    """Check ``fn(eps, grad_log_prob, alpha_bar_t, scale) -> eps_hat`` (lesson 03).

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
    """Check ``fn(score_uncond, grad_log_p_y_given_x, scale) -> conditional score`` (lesson 03).

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


# ============================================================================ lesson 04
_CFG_CASES = [((1, 4, 8, 8), 7.5), ((3, 1, 16, 16), 2.0), ((2, 3, 8, 8), 1.0)]


def check_cfg(fn: Callable) -> bool:
    """Check ``fn(eps_uncond, eps_cond, guidance_scale) -> guided eps`` (lesson 04).

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
    """Check ``fn(model, x, t, labels, null_label) -> (eps_uncond, eps_cond)``, the batch-of-two trick (lesson 04).

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
