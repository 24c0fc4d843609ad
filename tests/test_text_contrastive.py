"""Tests of course_lib.losses.contrastive_loss: CLIP's symmetric loss from the embeddings (lesson 07).

Checked against an independent form (two torch cross-entropies over the logit matrix) and against
clip_loss, which test_text.py checks against transformers' CLIPModel(return_loss=True).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.losses import clip_loss, contrastive_loss
from course_lib.nn.text import build_caption_tokenizer, build_tiny_clip, clip_embeddings, tiny_clip_config, tokenize_prompts


def unit(seed, *shape):
    return F.normalize(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_it_is_the_mean_of_two_cross_entropies():
    v, t = unit(0, 6, 8), unit(1, 6, 8)
    logit_scale = math.log(1 / 0.07)
    logits = math.exp(logit_scale) * v @ t.T
    target = torch.arange(6)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(contrastive_loss(v, t, logit_scale), expected)
    torch.testing.assert_close(contrastive_loss(v, t, torch.tensor(logit_scale)), expected)
    # symmetric: swapping the roles of images and captions changes nothing
    torch.testing.assert_close(contrastive_loss(t, v, logit_scale), expected)


def test_perfect_pairs_give_a_small_loss_and_the_gradient_reaches_the_temperature():
    v = unit(2, 4, 8)
    assert contrastive_loss(v, v, math.log(100)).item() < 0.05 * contrastive_loss(v, unit(3, 4, 8), 0.0).item()
    logit_scale = torch.tensor(2.0, requires_grad=True)
    contrastive_loss(v, unit(4, 4, 8), logit_scale).backward()
    assert logit_scale.grad is not None and logit_scale.grad != 0


def test_clip_loss_is_the_contrastive_loss_of_the_embeddings():
    tokenizer = build_caption_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_clip(tiny_clip_config(tokenizer, text_layers=1, vision_layers=1))
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    batch = tokenize_prompts(tokenizer, ["a red circle", "a large square", "a triangle in the center"])
    with torch.no_grad():
        v, t = clip_embeddings(model, pixels, **batch)
        torch.testing.assert_close(clip_loss(model, pixels, **batch), contrastive_loss(v, t, model.logit_scale))


def test_errors():
    with pytest.raises(ValueError, match=r"one caption per image.*got \(3, 8\) and \(4, 8\)"):
        contrastive_loss(unit(0, 3, 8), unit(1, 4, 8), 1.0)
    with pytest.raises(ValueError, match="one caption per image"):
        contrastive_loss(unit(0, 3, 8)[0], unit(1, 3, 8)[0], 1.0)
