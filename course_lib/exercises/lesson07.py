"""The exercises of lesson 07, text conditioning: cross-attention, CLIP's contrastive loss, and a
prediction about edits of the prompt's token states."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..captions import ATTRIBUTES
from ..i18n import tr, translatable
from ..losses import contrastive_loss
from ..nn.classifier import split_attribute_logits
from ..pipeline import StableDiffusion
from ..pretrained import load_course_model
from .grading import Case, ask_predictions, correct, grade, not_yet, seeded

__all__ = ["check_cross_attention", "check_clip_contrastive_loss", "check_token_state_prediction",
           "token_state_experiment"]


# (batch, heads, N image positions, L prompt tokens, d channels per head). The first case has
# L == d, so Q K (K not transposed) runs and gives a wrong value the check can name; all have
# N != L, so a softmax over the wrong axis is told apart, and the second has L != d (sqrt(L)).
_ATTENTION_CASES = [(2, 4, 16, 8, 8), (1, 1, 6, 5, 4), (3, 2, 64, 16, 8)]
_ATTENTION_FORMULA = "softmax(Q Kᵀ / √d) V: (q @ k.transpose(-2, -1) / d ** 0.5).softmax(dim=-1) @ v"


def _attention_exception_hint(error: BaseException) -> str:
    message = str(error)
    if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
        return tr("your function must take exactly these arguments, in this order: {signature}.",
                  signature="(q, k, v)")
    if any(words in message for words in ("size of tensor", "must match", "mat1", "Expected size", "shapes cannot")):
        return (tr("transpose only the last two axes of K: k.transpose(-2, -1) has shape (B, h, d, L), so "
                   "q @ k.transpose(-2, -1) is (B, h, N, L): one score per image position and prompt token."))
    return tr("compute {formula}.", formula=_ATTENTION_FORMULA)


def check_cross_attention(fn: Callable) -> bool:
    """Check ``fn(q, k, v) -> softmax(Q Kᵀ / √d) V`` per head (lesson 07).

    Cross-attention: the queries come from the image positions, the keys and values from the
    prompt's tokens. The inputs are already split into heads, as inside the UNet's ``attn2``.

    :param fn: the learner's function; ``q`` is (B, h, N, d), ``k`` and ``v`` are (B, h, L, d)
    :return: True if fn agrees with ``torch.nn.functional.scaled_dot_product_attention`` on every case
    """

    cases = []
    for seed, (B, h, N, L, d) in enumerate(_ATTENTION_CASES):
        q = 1.5 * seeded(190 + seed, B, h, N, d)  # scores of a few units: the scaling matters
        k = 1.5 * seeded(200 + seed, B, h, L, d)
        v = seeded(210 + seed, B, h, L, d)

        def mistakes(q=q, k=k, v=v, L=L, d=d):
            scores = q @ k.transpose(-2, -1)  # (B, h, N, L)
            return [
                (tr("you forgot the scaling: divide the scores by √d before the softmax, "
                    "(q @ k.transpose(-2, -1)) / d ** 0.5."), lambda: scores.softmax(-1) @ v),
                (tr("you divided by d; the scores are divided by √d (the square root of the channels per head)."),
                 lambda: (scores / d).softmax(-1) @ v),
                (tr("you multiplied by √d; the scores are divided by it."),
                 lambda: (scores * math.sqrt(d)).softmax(-1) @ v),
                (tr("you divided by √L (L prompt tokens); the scale is √d, d = q.shape[-1], the channels per head."),
                 lambda: (scores / math.sqrt(L)).softmax(-1) @ v),
                (tr("the softmax runs over the wrong axis: each image position (a row of the scores) shares its "
                    "attention among the L prompt tokens, so softmax(dim=-1), over the keys."),
                 lambda: (scores / math.sqrt(d)).softmax(-2) @ v),
                (tr("K is not transposed: the scores are Q Kᵀ, q @ k.transpose(-2, -1), (B, h, N, L)."),
                 lambda: (q @ k / math.sqrt(d)).softmax(-1) @ v),
                (tr("you returned the attention weights softmax(Q Kᵀ / √d), (B, h, N, L); multiply them by V."),
                 lambda: (scores / math.sqrt(d)).softmax(-1)),
                (tr("K and V are swapped: the scores compare Q with K, and the weights average V."),
                 lambda: (q @ v.transpose(-2, -1) / math.sqrt(d)).softmax(-1) @ k),
                (tr("the weights multiply V after the softmax; a softmax of the product mixes things up."),
                 lambda: (scores / math.sqrt(d) @ v).softmax(-1)),
            ]

        cases.append(Case(
            args=(q, k, v),
            expected=F.scaled_dot_product_attention(q, k, v),
            where=tr("for q of shape {query_shape} and k, v of shape {key_shape}", query_shape=(B, h, N, d),
                     key_shape=(B, h, L, d)),
            mistakes=mistakes(),
        ))
    return grade(
        fn, cases, check_name="check_cross_attention", result_name=tr("the attention output"),
        success=tr("softmax(Q Kᵀ / √d) V matches torch's F.scaled_dot_product_attention for 3 batches "
                   "(4, 1 and 2 heads; 8, 5 and 16 prompt tokens)."),
        generic_hint=_ATTENTION_FORMULA + ".",
        shape_hint=tr("the output has one d-vector per head and image position: (B, h, N, d), the shape of q."),
        exception_hint=_attention_exception_hint,
    )


# (B pairs, P channels, logit_scale = log(1 / tau)); CLIP starts at log(1 / 0.07) = 2.6592
_CONTRASTIVE_CASES = [(4, 8, 2.6592), (8, 16, 4.0), (5, 8, 1.0)]
_CONTRASTIVE_FORMULA = translatable("logits = logit_scale.exp() * image_embeds @ text_embeds.T; then the mean of "
                                    "F.cross_entropy(logits, targets) and F.cross_entropy(logits.T, targets), "
                                    "targets = torch.arange(B)")


def check_clip_contrastive_loss(fn: Callable) -> bool:
    """Check ``fn(image_embeds, text_embeds, logit_scale) -> CLIP's symmetric contrastive loss`` (lesson 07).

    With s_ij = exp(logit_scale) v_i · t_j, the loss is the mean of the cross-entropy along the
    rows (each image picks its caption) and along the columns (each caption picks its image),
    the diagonal being the right answers.

    :param fn: the learner's function; the embeddings are unit vectors (B, P), row i of each a
        matching pair; ``logit_scale`` is a scalar tensor, log(1 / τ), as ``CLIPModel.logit_scale``
    :return: True if fn agrees with :func:`course_lib.losses.contrastive_loss` on every case
    """

    cases = []
    for seed, (B, P, scale) in enumerate(_CONTRASTIVE_CASES):
        image_embeds = F.normalize(seeded(220 + seed, B, P), dim=-1)
        # captions that partly match their image, as a half-trained CLIP's do
        text_embeds = F.normalize(image_embeds + 0.8 * seeded(230 + seed, B, P), dim=-1)
        logit_scale = torch.tensor(scale)

        def mistakes(v=image_embeds, t=text_embeds, s=scale, B=B):
            target = torch.arange(B)
            cosines = v @ t.T  # (B, B)
            logits = math.exp(s) * cosines
            rows, columns = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
            return [
                (tr("only one direction: that is each image choosing its caption (the rows). Add the other, each "
                    "caption choosing its image (the columns, logits.T), and average the two."), lambda: rows),
                (tr("only one direction: that is each caption choosing its image (the columns). Add the other, "
                    "each image choosing its caption (the rows), and average the two."), lambda: columns),
                (tr("you added the two directions; CLIP averages them: (loss_rows + loss_columns) / 2."),
                 lambda: rows + columns),
                (tr("the temperature is missing: multiply the cosines by exp(logit_scale) = 1 / τ before the "
                    "cross-entropy."), lambda: (F.cross_entropy(cosines, target) + F.cross_entropy(cosines.T, target)) / 2),
                (tr("logit_scale is log(1 / τ): multiply by logit_scale.exp(), not by logit_scale itself."),
                 lambda: (F.cross_entropy(s * cosines, target) + F.cross_entropy(s * cosines.T, target)) / 2),
                (tr("you divided by exp(logit_scale); exp(logit_scale) = 1 / τ multiplies the cosines."),
                 lambda: (F.cross_entropy(cosines / math.exp(s), target)
                          + F.cross_entropy(cosines.T / math.exp(s), target)) / 2),
                (tr("you summed over the batch; the loss is a mean over the B pairs (cross_entropy's default)."),
                 lambda: (F.cross_entropy(logits, target, reduction="sum")
                          + F.cross_entropy(logits.T, target, reduction="sum")) / 2),
            ]

        cases.append(Case(
            args=(image_embeds, text_embeds, logit_scale),
            expected=contrastive_loss(image_embeds, text_embeds, logit_scale),
            where=tr("for {pairs} pairs of {channels}-dim embeddings, logit_scale = {scale}", pairs=B, channels=P,
                     scale=scale),
            mistakes=mistakes(),
        ))

    def exception_hint(error: BaseException) -> str:
        message = str(error)
        if isinstance(error, TypeError) and ("argument" in message or "positional" in message):
            return tr("your function must take exactly these arguments, in this order: {signature}.",
                      signature="(image_embeds, text_embeds, logit_scale)")
        if "must be real number" in message or "not Tensor" in message:
            return tr("logit_scale is a tensor: use logit_scale.exp() (torch), not math.exp(logit_scale).")
        return tr("compute {formula}.", formula=tr(_CONTRASTIVE_FORMULA))

    return grade(
        fn, cases, check_name="check_clip_contrastive_loss", result_name=tr("the loss"),
        success=tr("the symmetric loss, (CE over rows + CE over columns) / 2 with logits exp(logit_scale)·v·tᵀ, "
                   "matches course_lib.losses.contrastive_loss for 3 batches."),
        generic_hint=tr(_CONTRASTIVE_FORMULA) + ".",
        shape_hint=tr("the loss is one number, a tensor of shape (): F.cross_entropy averages over the batch."),
        exception_hint=exception_hint,
    )


# ---------------------------------------------------------------------------------- predict, then run
PROMPT, OTHER_PROMPT = "a large red circle in the top left", "a large blue circle in the top left"
TOKEN_EDITS = ("swap the states of red and circle", "swap the words red and circle", "blue's state in red's place",
               "blue's states from the colour on")
OUTCOMES = ("the same picture", "a different picture, not blue", "a blue picture")
_WHY = {
    TOKEN_EDITS[0]: translatable(
        "cross-attention is softmax(Q Kᵀ / √d) V over the L tokens: swapping two rows of c swaps two rows of "
        "K and of V together. Does a weighted average over a set change when the set is listed in another "
        "order? (The positions were already used, inside the text encoder.)"),
    TOKEN_EDITS[1]: translatable(
        "the text encoder sees the words in their new order: every state from the swapped words on is "
        "computed again. And does the UNet need the word order to know the colour and the shape?"),
    TOKEN_EDITS[2]: translatable(
        "the text encoder attends causally (section 3): the states of circle, in, the, top, left and of "
        "the end token were computed after reading red, and they are still those of the red prompt. Which "
        "colour do most of the 16 states now carry?"),
    TOKEN_EDITS[3]: translatable(
        "the states before the colour word, <|startoftext|> a large, are the same in both prompts (a causal "
        "encoder has not read the colour yet), so these are the blue prompt's states."),
}


@functools.cache
def token_state_experiment(pictures: int = 3, steps: int = 20, guidance_scale: float = 7.5,
                           seed: int = 0) -> dict[str, dict]:
    """Sample the mini SD with the prompt's text states c edited four ways, and judge the pictures (lesson 07).

    From ``PROMPT``'s states c (L, D): (1) rows of "red" and "circle" swapped; (2) the states of the
    prompt with those two words swapped; (3) the row of "red" replaced by the row of "blue" from
    ``OTHER_PROMPT``; (4) every row from the colour word on taken from ``OTHER_PROMPT``. Each with the
    same ``pictures`` starting noises as c itself, DDIM, classifier-free guidance against "", in one batch.

    :return: {"unedited" or edit: {"images": (pictures, 3, 64, 64) in [-1, 1], "max_difference": the largest
        pixel difference to the unedited pictures, "reads": the judge's "colour shape" of each picture,
        "blue": how many it reads as blue}}
    """
    pipe = StableDiffusion.from_course("mini-sd")
    judge, _ = load_course_model("shapes-judge")
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(PROMPT)["input_ids"])
    colour, shape = tokens.index("red"), tokens.index("circle")
    with torch.no_grad():
        states = {prompt: pipe.encode_prompt(prompt, do_cfg=False)[0][0]   # (L, D)
                  for prompt in (PROMPT, OTHER_PROMPT, "a large circle red in the top left", "")}
    c, other = states[PROMPT], states[OTHER_PROMPT]
    swapped = c.clone()
    swapped[[colour, shape]] = c[[shape, colour]]
    transplanted = c.clone()
    transplanted[colour] = other[colour]
    from_colour_on = c.clone()
    from_colour_on[colour:] = other[colour:]
    variants = {"unedited": c, TOKEN_EDITS[0]: swapped, TOKEN_EDITS[1]: states["a large circle red in the top left"],
                TOKEN_EDITS[2]: transplanted, TOKEN_EDITS[3]: from_colour_on}
    # (V * pictures, L, D): each variant repeated for the same starting noises
    text = torch.cat([v.expand(pictures, -1, -1) for v in variants.values()])
    prompt_embeds = torch.cat([states[""].expand_as(text), text])   # the batch of two: [c_uncond, c]
    sampler = pipe.make_sampler("ddim")
    sampler.set_timesteps(steps)
    size = pipe.default_size
    latents = pipe.prepare_latents(pictures, *size, sampler, torch.Generator().manual_seed(seed))
    latents = latents.repeat(len(variants), 1, 1, 1)
    with torch.no_grad():
        for t in sampler.timesteps:
            latents = pipe.denoise_step(sampler, latents, t, prompt_embeds, guidance_scale, True)
        images = pipe.decode_latents(latents).clamp(-1, 1).float()
        heads = split_attribute_logits(judge(images))
    colours = [ATTRIBUTES["color"][i] for i in heads["color"].argmax(1).tolist()]
    shapes = [ATTRIBUTES["shape"][i] for i in heads["shape"].argmax(1).tolist()]
    result, unedited = {}, images[:pictures]
    for index, name in enumerate(variants):
        part = slice(index * pictures, (index + 1) * pictures)
        result[name] = {"images": images[part], "max_difference": (images[part] - unedited).abs().max().item(),
                        "reads": [f"{c_} {s_}" for c_, s_ in zip(colours[part], shapes[part])],
                        "blue": colours[part].count("blue")}
    return result


def token_state_outcome(measured: dict) -> str:
    """One of ``OUTCOMES`` for an edit's measurement: the same pictures (every pixel within 1e-3), most
    pictures read as blue, or neither."""
    if measured["max_difference"] < 1e-3:
        return OUTCOMES[0]
    if 2 * measured["blue"] > len(measured["reads"]):
        return OUTCOMES[2]
    return OUTCOMES[1]


def check_token_state_prediction(fn: Callable) -> bool:
    """Check a prediction ``fn(edit) -> one of OUTCOMES`` for four edits of a prompt's text states (lesson 07).

    For each of ``TOKEN_EDITS`` of the states of "a large red circle in the top left", the learner
    predicts whether the mini SD draws the same pictures, different pictures that are not blue, or
    blue pictures; the check samples all of them (:func:`token_state_experiment`, a few seconds,
    cached) and compares.

    :param fn: the learner's function of an edit's name
    :return: True if every prediction agrees with the measurement
    """
    predictions = ask_predictions(fn, TOKEN_EDITS, check_name="check_token_state_prediction", name="edit",
                                  answers=OUTCOMES)
    if predictions is None:
        return False
    measured = token_state_experiment()
    for edit in TOKEN_EDITS:
        outcome = token_state_outcome(measured[edit])
        if predictions[edit] != outcome:
            reads = ", ".join(measured[edit]["reads"])
            return not_yet(tr("for {edit!r} you predicted {predicted!r}; the mini SD drew {outcome!r} (the judge reads: "
                              "{reads}; largest pixel change {change:.2g}).", edit=edit, predicted=predictions[edit],
                              outcome=outcome, reads=reads, change=measured[edit]["max_difference"]),
                           tr(_WHY[edit]))
    return correct(tr("cross-attention reads the token states as a set (their order does not matter), and a word's "
                      "meaning is not in its own state alone: a causal encoder writes it into every later state."))
