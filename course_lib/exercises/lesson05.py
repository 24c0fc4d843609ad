"""The exercises of lesson 05, classifier-free guidance: the formula, the batch-of-two trick, and a
prediction about both guidances on one λ axis."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..experiments import guidance_sweep
from ..guidance import cfg
from ..i18n import tr, translatable
from ..sample_stats import proportion_interval
from .grading import (
    Case, CountingModel, ask_predictions, call_learner, close, correct, grade, hint_for_exception, is_function,
    not_yet, seeded, stand_in_error, timesteps_text, too_many_calls, wrong_value,
)

__all__ = ["check_cfg", "check_batch_of_two", "check_guidance_comparison"]

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
        u = seeded(110 + seed, *shape)
        c = 0.7 * u + 0.5 * seeded(120 + seed, *shape)  # correlated, as a model's two predictions are

        def mistakes(u=u, c=c, s=s):
            return [
                (tr("you swapped eps_uncond and eps_cond: start from the unconditional prediction and move "
                    "toward the conditional one, eps_uncond + s·(eps_cond - eps_uncond)."),
                 lambda: c + s * (u - c)),
                (tr("you used guidance_scale as Ho & Salimans' w, (1 + w)·eps_cond - w·eps_uncond. Here "
                    "guidance_scale follows diffusers: w = guidance_scale - 1, and scale 1 gives eps_cond."),
                 lambda: c + s * (c - u)),
                (tr("off by one in the scale: with diffusers' convention, guidance_scale = 1 must give eps_cond "
                    "(no guidance): eps_uncond + s·(eps_cond - eps_uncond)."), lambda: u + (s - 1) * (c - u)),
                (tr("check the sign: guidance moves toward the conditional prediction, "
                    "eps_uncond + s·(eps_cond - eps_uncond)."), lambda: u - s * (c - u)),
                (tr("you returned only the guidance term s·(eps_cond - eps_uncond); add it to eps_uncond."),
                 lambda: s * (c - u)),
                (tr("you returned eps_cond unchanged; combine both predictions with the scale."), lambda: c),
                (tr("you returned eps_uncond unchanged; combine both predictions with the scale."), lambda: u),
            ]

        cases.append(Case(
            args=(u, c, s),
            expected=cfg(u, c, s),
            where=tr("for eps of shape {shape}, guidance_scale = {scale}", shape=shape, scale=s),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_cfg", result_name=tr("the guided eps"),
        success=tr("eps_uncond + s·(eps_cond - eps_uncond) matches course_lib.guidance.cfg for scales 7.5, 2 "
                   "and 1 (scale 1 gives eps_cond: no guidance)."),
        generic_hint=tr("ε̃ = eps_uncond + guidance_scale·(eps_cond - eps_uncond) (notes, eq. 8)."),
        shape_hint=tr("the guided eps has the shape of eps_cond."),
        exception_hint=hint_for_exception("(eps_uncond, eps_cond, guidance_scale)",
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
        self.register_buffer("class_embedding", seeded(130, num_class_embeds))

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None):
        B = sample.shape[0]
        if encoder_hidden_states is not None:
            raise stand_in_error("labels by name", tr(
                "This model has no cross-attention, so it cannot use encoder_hidden_states. Pass the labels by "
                "name: model(x, t, class_labels=labels)."))
        if class_labels is None:
            raise stand_in_error("labels by name", tr("This model needs class_labels: model(x, t, class_labels=labels)."))
        timestep = torch.as_tensor(timestep).reshape(-1)
        class_labels = torch.as_tensor(class_labels).reshape(-1)
        for name, value in (("timestep", timestep), ("class_labels", class_labels)):
            if value.numel() not in (1, B):
                raise stand_in_error(f"{name} count", tr("{name} has {count} entries but sample has {images} images.",
                                                         name=name, count=value.numel(), images=B))
        t = timestep.expand(B).to(sample.dtype).reshape(-1, 1, 1, 1)
        y = self.class_embedding[class_labels.long().expand(B)].reshape(-1, 1, 1, 1)
        return torch.tanh(sample + 0.5 * sample.roll(1, dims=-1) + y) * torch.cos(t / 300) + 0.1 * y


_BATCH_OF_TWO_CASES = [((1, 1, 8, 8), [500], [3]), ((3, 1, 16, 16), [900, 400, 20], [0, 7, 3]),
                       ((2, 3, 8, 8), [650, 120], [9, 9])]
_NULL_LABEL = 10
_ONE_PASS = translatable("x_in = torch.cat([x, x]); t_in = torch.cat([t, t]); labels_in = torch.cat([torch.full_like("
                         "labels, null_label), labels]); then eps_uncond, eps_cond = model(x_in, t_in, "
                         "class_labels=labels_in).chunk(2).")


def _batch_of_two_exception_hint(error: BaseException) -> str:
    message, reason = str(error), getattr(error, "stand_in_reason", None)
    if reason == "timestep count":
        return tr("repeat the timesteps for both halves too: t_in = torch.cat([t, t]).")
    if reason == "class_labels count":
        return tr("give one label per image of the batch of two: torch.cat([torch.full_like(labels, null_label), labels]).")
    if reason == "labels by name":
        return tr("pass the labels by name: model(x_in, t_in, class_labels=labels_in).")
    if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
        return tr("your function must take exactly these arguments, in this order: {signature}.",
                  signature="(model, x, t, labels, null_label)")
    return tr(_ONE_PASS)


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
    if not is_function(fn, "check_batch_of_two"):
        return False
    base = _ToyDenoiser(num_class_embeds=_NULL_LABEL + 1)
    for seed, (shape, timesteps, labels) in enumerate(_BATCH_OF_TWO_CASES):
        x = seeded(140 + seed, *shape)
        t, y = torch.tensor(timesteps), torch.tensor(labels)
        with torch.no_grad():
            eps_uncond = base(x, t, class_labels=torch.full_like(y, _NULL_LABEL))
            eps_cond = base(x, t, class_labels=y)
        where = tr("for x of shape {shape}, {timesteps}, labels = {labels}", shape=shape, timesteps=timesteps_text(t),
                   labels=labels)
        model = CountingModel(base)
        ok, got = call_learner(fn, (model, x, t, y, _NULL_LABEL), _batch_of_two_exception_hint)
        if not ok:
            return False
        if isinstance(got, torch.Tensor):
            what = (tr("the whole batch of two; split it with .chunk(2)") if got.shape[:1] == (2 * shape[0],)
                    else tr("one tensor of shape {shape}", shape=tuple(got.shape)))
            return not_yet(tr("your function returned {received}, expected the pair {pair}.", received=what,
                              pair="(eps_uncond, eps_cond)"),
                           tr("return both halves: eps_uncond, eps_cond = out.chunk(2); return eps_uncond, eps_cond."))
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            received = "None" if got is None else (
                tr("a {type_name} of length {length}", type_name=type(got).__name__, length=len(got))
                if isinstance(got, (tuple, list)) else tr("a {type_name}", type_name=type(got).__name__))
            return not_yet(tr("your function returned {received}, expected the pair {pair}.", received=received,
                              pair="(eps_uncond, eps_cond)"),
                           tr("end with `return eps_uncond, eps_cond`."))
        mistakes = [
            (tr("the halves are swapped: chunk(2) returns them in the order of torch.cat, so put the null "
                "labels first: torch.cat([torch.full_like(labels, null_label), labels])."),
             (eps_cond, eps_uncond)),
            (tr("both halves saw the null label: the second half needs the real labels."), (eps_uncond, eps_uncond)),
            (tr("both halves saw the real labels: the first half needs null_label for every image."),
             (eps_cond, eps_cond)),
        ]
        for name, received, expected in (("eps_uncond", got[0], eps_uncond), ("eps_cond", got[1], eps_cond)):
            if close(received, expected):
                continue
            hint = next((h for h, pair in mistakes if close(got[0], pair[0]) and close(got[1], pair[1])), None)
            shape_hint = tr("each half has the shape of x, {shape}: split the output with .chunk(2).", shape=shape)
            lines = wrong_value(received, Case((), expected, where), name, hint or tr(_ONE_PASS), hint or shape_hint)
            print("\n".join(lines))
            return False
        calls = len(model.batch_sizes)
        if calls != 1:
            return too_many_calls(tr("the model"), calls, where,
                                  tr("the batch-of-two trick needs ONE forward pass: {one_pass}", one_pass=tr(_ONE_PASS)))
    return correct(tr("one forward pass over torch.cat([x, x]) gives the same eps_uncond and eps_cond as two "
                      "separate passes (3 batches, one t per image)."))


# ---------------------------------------------------------------------------------- predict, then run
# The sweeps the check reads, with the arguments of lessons 04 and 05 so that they come from the cache
# those lessons filled (experiments.guidance_sweep: 5 samples of each digit, 50 DDIM steps, seed 0).
SWEEP_STRENGTHS = {"classifier": ([0.0, 1.0, 2.0, 5.0, 10.0],), "cfg": ([1.0, 2.0, 3.0, 5.0], [0.0, 10.0])}
COMPARED_SCALES = (0.0, 1.0, 10.0)
_ANSWERS = ("classifier", "cfg", "same")
_WHY = {
    0.0: translatable(
        "at λ = 0 neither method looks at the label: classifier guidance is digits-ddpm alone, and CFG is "
        "cfg(eps_uncond, eps_cond, 0) = eps_uncond, the null label's branch alone. Both are unconditional models, "
        "so how often would the judge read the asked digit?"),
    1.0: translatable(
        "at λ = 1 both target p(x | y) (eq. 5 = eq. 8). CFG's guided eps is cfg(u, c, 1) = eps_cond, the conditional "
        "network itself; classifier guidance builds the conditional score from an unconditional network plus one "
        "unit of a noisy classifier's gradient, which its training never asked to be right. Which approximates "
        "∇log p_t(x_t | y) better?"),
    10.0: translatable(
        "at a large λ both methods push the samples until the judge reads the asked digit nearly always; are "
        "98 % and 100 % of 50 samples told apart by their 90 % intervals?"),
}


def _accuracy_counts() -> dict[str, dict[float, tuple[int, int]]]:
    """(samples read as asked, samples) of each method at each compared λ, from the cached sweeps.

    :return: {"classifier": {λ: (k, n)}, "cfg": {λ: (k, n)}}
    """
    counts: dict[str, dict[float, tuple[int, int]]] = {}
    for method, groups in SWEEP_STRENGTHS.items():
        counts[method] = {}
        for strengths in groups:
            sweep = guidance_sweep(method, strengths, per_class=5, steps=50, progress=False)
            n = 10 * sweep.per_class
            for strength, report in zip(sweep.strengths, sweep.reports):
                if strength in COMPARED_SCALES:
                    counts[method][strength] = (round(report["accuracy"] * n), n)
    return counts


def compare_accuracies(classifier: tuple[int, int], free: tuple[int, int], level: float = 0.9) -> str:
    """Which method the judge reads as asked more often: "classifier", "cfg", or "same" when the two
    Wilson intervals (:func:`course_lib.sample_stats.proportion_interval`) overlap.

    :param classifier: (k, n) of classifier guidance
    :param free: (k, n) of classifier-free guidance
    """
    low_c, high_c = proportion_interval(*classifier, level=level)
    low_f, high_f = proportion_interval(*free, level=level)
    if low_f > high_c:
        return "cfg"
    if low_c > high_f:
        return "classifier"
    return "same"


def check_guidance_comparison(fn: Callable) -> bool:
    """Check a prediction ``fn(scale) -> "classifier" | "cfg" | "same"`` (lesson 05, predict then run).

    For λ = 0, 1 and 10, the learner predicts which guidance the judge reads as the asked digit more
    often on the digits: classifier guidance (digits-ddpm + the noisy classifier) or classifier-free
    guidance (digits-cfg), or "same" when the 90 % intervals of the two rates overlap. The check reads
    the measured rates from the guidance sweeps of lessons 04 and 05 (50 samples per λ; cached) and
    compares.

    :param fn: the learner's function of one number λ
    :return: True if every prediction agrees with the measurement
    """
    predictions = ask_predictions(fn, COMPARED_SCALES, check_name="check_guidance_comparison", name="scale",
                                  answers=_ANSWERS)
    if predictions is None:
        return False
    counts = _accuracy_counts()
    for scale in COMPARED_SCALES:
        measured = compare_accuracies(counts["classifier"][scale], counts["cfg"][scale])
        if predictions[scale] != measured:
            (k_c, n), (k_f, _) = counts["classifier"][scale], counts["cfg"][scale]
            return not_yet(
                tr("at λ = {scale:g} you predicted {predicted!r}; the judge read {classifier_count}/{n} of classifier "
                   "guidance's samples and {cfg_count}/{n} of CFG's as asked, which makes {measured!r}.", scale=scale,
                   predicted=predictions[scale], classifier_count=k_c, cfg_count=k_f, n=n, measured=measured),
                tr(_WHY[scale]))
    return correct(tr("at λ = 0 both are unconditional (chance), at λ = 1 CFG is the conditional network itself and "
                      "beats a classifier's gradient, at λ = 10 both saturate: one λ, two networks."))
