"""The grading engine of the exercises: run a learner's function, compare, print a verdict.

Every word a verdict prints around a lesson's own text is written here, by the few functions
below, so that translating the verdicts touches this module only:

    ✅ Correct: <what was verified>                                  correct()
    ❌ Not yet: <what differs>  [<where it differs>]  Hint: <hint>   not_yet(), not_yet_lines()
    ❌ Your function raised <error>: <message>  Hint: <hint>         call_learner()
    ⏳ Not done yet: ...                                             NOT_DONE (call_learner())

A lesson's check builds :class:`Case` objects (the arguments, course_lib's answer, the typical
mistakes) and hands them to :func:`grade`; checks that need more (a pair returned, the number of
model calls) use the same pieces one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..i18n import tr, translatable

NOT_DONE = translatable("⏳ Not done yet: replace `raise NotImplementedError()` with your code, run that cell, then this one.")


@dataclass
class Case:
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


# ---------------------------------------------------------------------------------- the verdicts
def correct(what: str) -> bool:
    """Print the success line and return True."""
    print(tr("✅ Correct: {what}", what=what))
    return True


def not_yet_lines(problem: str, hint: str, detail: str | None = None) -> list[str]:
    """The lines of a failed check: the problem, optionally where it shows, and a hint."""
    lines = [tr("❌ Not yet: {problem}", problem=problem)]
    if detail:
        lines.append(f"   {detail}")
    lines.append("   " + tr("Hint: {hint}", hint=hint))
    return lines


def not_yet(problem: str, hint: str, detail: str | None = None) -> bool:
    """Print a failed check's lines (:func:`not_yet_lines`) and return False."""
    print("\n".join(not_yet_lines(problem, hint, detail)))
    return False


def too_many_calls(model_name: str, calls: int, where: str, hint: str) -> bool:
    """Right values from more than one forward pass, where the exercise asks for one."""
    return not_yet(tr("the values are right, but your function called {model_name} {calls} times {where}.",
                      model_name=model_name, calls=calls, where=where), hint)


def _raised(error: BaseException, hint: str) -> None:
    print(tr("❌ Your function raised {error_type}: {message}", error_type=type(error).__name__, message=_short(error)))
    print("   " + tr("Hint: {hint}", hint=hint))


def is_function(fn, check_name: str) -> bool:
    """True for a callable; otherwise print that the check wants the function itself."""
    if callable(fn):
        return True
    print(tr("❌ {check_name} needs your function itself, got a {type_name}.", check_name=check_name,
             type_name=type(fn).__name__))
    print("   " + tr("Hint: {hint}", hint=tr("pass the name without calling it: {check_name}(my_function), no "
                                            "parentheses after it.", check_name=check_name)))
    return False


# ---------------------------------------------------------------------------------- comparing
def _short(error: BaseException) -> str:
    """The first line of an exception's message, at most 160 characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else tr("(no message)")
    return text if len(text) <= 160 else text[:157] + "..."


def _fmt(value: float) -> str:
    return f"{value:.5g}"


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


def close(got, expected: torch.Tensor) -> bool:
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
    expected_text, got_text = _fmt(expected64[index]), _fmt(got64[index])
    if index:
        return tr("At index {index}: expected {expected}, got {got}.", index=index, expected=expected_text, got=got_text)
    return tr("The value: expected {expected}, got {got}.", expected=expected_text, got=got_text)


def _matching_mistake(got: torch.Tensor, case: Case) -> str | None:
    """The hint of the first typical mistake whose result equals ``got``, if any."""
    for hint, thunk in case.mistakes:
        try:
            wrong = thunk()
        except Exception:  # a mistake that cannot even be computed for these shapes
            continue
        if close(got, wrong):
            return hint
    return None


def wrong_value(got, case: Case, result_name: str, generic_hint: str, shape_hint: str) -> list[str] | None:
    """None when ``got`` equals ``case.expected``; otherwise the lines that say what is wrong."""
    expected = case.expected
    if got is None:
        return [tr("❌ Not yet: your function returned None. Did you forget `return {result_name}`?",
                   result_name=result_name)]
    if not isinstance(got, torch.Tensor):
        advice = tr("Convert it with torch.from_numpy(...).") if type(got).__module__ == "numpy" else (
            tr("Build the result from the input tensors with torch operations."))
        return not_yet_lines(tr("your function returned a {type_name}, expected a torch.Tensor of shape {shape}.",
                                type_name=type(got).__name__, shape=tuple(expected.shape)), advice)
    if close(got, expected):
        return None
    matched = _matching_mistake(got, case)
    if tuple(got.shape) != tuple(expected.shape):
        return not_yet_lines(tr("{result_name} has shape {shape} {where}, expected {expected_shape}.",
                                result_name=result_name, shape=tuple(got.shape), where=case.where,
                                expected_shape=tuple(expected.shape)), matched or shape_hint)
    if torch.isfinite(expected).all() and not torch.isfinite(got).all():
        return not_yet_lines(tr("{result_name} contains NaN or inf {where}.", result_name=result_name, where=case.where),
                             matched or tr("a square root of a negative number, or a division by zero? {hint}",
                                           hint=generic_hint))
    return not_yet_lines(tr("{result_name} is not right {where}.", result_name=result_name, where=case.where),
                         matched or generic_hint,
                         detail=_first_difference(got, expected))


# ---------------------------------------------------------------------------------- running
def call_learner(fn: Callable, args: tuple, exception_hint: Callable[[BaseException], str]):
    """Run fn(*args) on copies of args; return (True, result), or print why it failed and return (False, None)."""
    try:
        return True, fn(*_clone(args))
    except NotImplementedError:
        print(tr(NOT_DONE))
    except Exception as error:  # a learner's bug: report it in two lines, no traceback
        _raised(error, exception_hint(error))
    return False, None


def grade(fn, cases: list[Case], *, result_name: str, success: str, generic_hint: str,
          shape_hint: str, exception_hint: Callable[[BaseException], str], check_name: str) -> bool:
    """Run every case; print the first failure or the success line; return whether all passed."""
    if not is_function(fn, check_name):
        return False
    for case in cases:
        ok, got = call_learner(fn, case.args, exception_hint)
        if not ok:
            return False
        lines = wrong_value(got, case, result_name, generic_hint, shape_hint)
        if lines:
            print("\n".join(lines))
            return False
    return correct(success)


def _replies(fn, inputs, *, check_name: str, name: str, valid: Callable, expected: str, exactly: str) -> dict | None:
    """``fn(value)`` for every input, each reply checked by ``valid``: {input: reply}, or None after printing why not.

    :param expected: what a reply should be, e.g. 'one of "larger" or "smaller"' (for the hints)
    :param exactly: the same, said strictly, for a reply of the wrong form
    """
    if not is_function(fn, check_name):
        return None
    exception_hint = hint_for_exception(f"({name})", expected, broadcast=False)
    replies = {}
    for value in inputs:
        ok, got = call_learner(fn, (value,), exception_hint)
        if not ok:
            return None
        if got is None:
            not_yet(tr("your function returned None for {name} = {value!r}.", name=name, value=value),
                    tr("return {expected}.", expected=expected))
            return None
        if not valid(got):
            not_yet(tr("for {name} = {value!r} your function returned {got!r}.", name=name, value=value, got=got),
                    tr("return {expected}.", expected=exactly))
            return None
        replies[value] = got
    return replies


def collect_predictions(fn, check_name: str, argument: str, inputs, keys: tuple[str, ...], value_ok: Callable,
                        value_words: str) -> dict | None:
    """The predictions of a predict-then-run exercise whose replies are dicts: ``fn(value)`` for each input.

    Each call must return a dict with exactly ``keys``, every value passing ``value_ok``. Returns
    ``{value: dict}``, or None after printing what is wrong (not a function, not done yet, an
    exception, None, or a dict of the wrong form).

    :param argument: the name of fn's argument, for the messages (e.g. "kind")
    :param value_words: what every value must be, for the messages (e.g. "True or False")
    """
    names = tr(" and ").join(repr(key) for key in keys)
    return _replies(fn, inputs, check_name=check_name, name=argument,
                    valid=lambda got: isinstance(got, dict) and set(got) == set(keys) and all(map(value_ok, got.values())),
                    expected=tr("a dict with the keys {names}, each {value_words}", names=names, value_words=value_words),
                    exactly=tr("a dict with exactly the keys {names}, each {value_words}", names=names,
                               value_words=value_words))


def ask_predictions(fn, inputs, *, check_name: str, name: str, answers: tuple[str, ...]) -> dict | None:
    """The first half of a predict-then-run check: ``fn(value)`` for every input, each reply one of ``answers``.

    :param fn: the learner's function of one argument
    :param inputs: the values it is asked about, in order
    :param check_name: the check's name, for the message when ``fn`` is not a function
    :param name: what an input is, for the messages ("scale", "quantity")
    :param answers: the strings a reply may be
    :return: {input: reply}, or None after printing why not (not a function, an exception, None, another reply)
    """
    listed = tr(" or ").join(f'"{answer}"' for answer in answers)
    return _replies(fn, inputs, check_name=check_name, name=name,
                    valid=lambda got: isinstance(got, str) and got in answers,
                    expected=tr("one of {answers}", answers=listed),
                    exactly=tr("exactly one of the strings {answers}", answers=listed))


def hint_for_exception(signature: str, formula: str, broadcast: bool = True):
    """The usual exception hint: broadcasting errors, wrong arguments, else the formula."""

    def hint(error: BaseException) -> str:
        message = str(error)
        if broadcast and ("must match the size" in message or "broadcast" in message):
            return tr("a tensor with one value per image, shape (B,), must be reshaped to (B, 1, 1, 1) to "
                      "broadcast against images (B, C, H, W): values.view(-1, 1, 1, 1).")
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return tr("your function must take exactly these arguments, in this order: {signature}.", signature=signature)
        return tr("compute {formula} with torch operations on the inputs.", formula=formula)

    return hint


# ---------------------------------------------------------------------------------- inputs
def seeded(seed: int, *shape: int) -> torch.Tensor:
    """A standard normal tensor of ``shape`` drawn from its own generator seeded with ``seed``."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def per_item(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1): one value per image, broadcasting against (B, C, H, W)."""
    return values.reshape(-1, 1, 1, 1)


def timesteps_text(t: torch.Tensor) -> str:
    return f"t = {t.tolist()}"


def stand_in_error(reason: str, message: str, **details) -> ValueError:
    """The ValueError a check's stand-in model raises when the learner calls it wrongly.

    The message is shown to the learner, in their language; ``error.stand_in_reason`` (a fixed word,
    e.g. "timestep count") and ``error.details`` (the numbers) tell the check's exception hint which
    rule the call broke without reading the translated message. Other exceptions have no
    ``stand_in_reason``: ``getattr(error, "stand_in_reason", None)``.
    """
    error = ValueError(message)
    error.stand_in_reason, error.details = reason, details
    return error


class CountingModel(nn.Module):
    """Wraps a model and counts its forward calls (and the batch sizes they saw)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.batch_sizes: list[int] = []

    def forward(self, sample, *args, **kwargs):
        self.batch_sizes.append(int(sample.shape[0]) if isinstance(sample, torch.Tensor) else -1)
        return self.model(sample, *args, **kwargs)
