"""Tests of course_lib.nn.text: the caption tokenizer and the tiny CLIP of lesson 07."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings

import pytest
import torch

from course_lib.datasets import COLORS, POSITIONS, SHAPES, SIZES, shape_caption, shapes_tensors
from course_lib.losses import clip_loss
from course_lib.nn.text import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    build_caption_tokenizer,
    build_tiny_clip,
    caption_vocabulary,
    clip_embeddings,
    clip_score,
    encode_text,
    load_caption_tokenizer,
    save_caption_tokenizer,
    tiny_clip_config,
    tokenize_prompts,
    zero_shot_predict,
)

transformers = pytest.importorskip("transformers")

PROMPTS = ["a large red circle in the bottom right", "a square", "", "a small cyan triangle in the center"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = tiny_clip_config(tokenizer, text_hidden_size=16, text_layers=2, vision_hidden_size=16,
                              vision_layers=1, num_heads=2, patch_size=16, projection_dim=8)
    return build_tiny_clip(config).eval()


def _images(batch, seed=0):
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------------------------
# Tokenizer


def test_vocabulary_is_the_caption_words_then_the_special_tokens(tokenizer):
    words = caption_vocabulary()
    expected = {"a", "in", "the", *SHAPES, *COLORS, *SIZES, *(w for p in POSITIONS for w in p.split())}
    assert words == sorted(expected)
    vocab = tokenizer.get_vocab()
    assert [vocab[w] for w in words] == list(range(len(words)))
    specials = [UNK_TOKEN, PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]
    assert [vocab[s] for s in specials] == list(range(len(words), len(words) + 4))
    assert len(tokenizer) == len(words) + 4
    assert (tokenizer.unk_token, tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == tuple(specials)
    # CLIP's layout: the end token has the largest id (and not the legacy id 2)
    assert tokenizer.eos_token_id == len(tokenizer) - 1 != 2
    assert build_caption_tokenizer().get_vocab() == vocab  # deterministic


@pytest.mark.slow
def test_every_caption_of_every_split_tokenizes_without_unknown_words(tokenizer):
    # every caption form: each shape with or without each colour, size and position (3 x 7 x 3 x 6)
    forms = {shape_caption(s, c, z, p) for s in SHAPES for c in (None, *COLORS) for z in (None, *SIZES)
             for p in (None, *POSITIONS)}
    assert len(forms) == 378
    # the captions the data really carries (shapes_tensors gives the same captions as load_shapes)
    seen = set()
    for split, count in (("train", 2000), ("test", None), ("heldout", None)):
        seen |= set(shapes_tensors(split, num_images=count)[1])
    assert seen <= forms and len(seen) > 360
    for distinct in (sorted(forms), sorted(seen)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no unknown-word or truncation warning
            batch = tokenize_prompts(tokenizer, distinct)
        assert tokenizer.unk_token_id not in batch["input_ids"]
        # decoding the real tokens gives the caption back, word for word
        for caption, ids, mask in zip(distinct, batch["input_ids"], batch["attention_mask"]):
            assert tokenizer.decode(ids[mask.bool()], skip_special_tokens=True) == caption


def test_tokenize_prompts_adds_start_end_and_pads(tokenizer):
    batch = tokenize_prompts(tokenizer, PROMPTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (4, tokenizer.model_max_length) and ids.dtype == torch.long
    for prompt, row, row_mask in zip(PROMPTS, ids, mask):
        n = len(prompt.split()) + 2
        assert row[0] == tokenizer.bos_token_id and row[n - 1] == tokenizer.eos_token_id
        assert (row[n:] == tokenizer.pad_token_id).all()
        assert row_mask.tolist() == [1] * n + [0] * (len(row) - n)
    # one string is a batch of one; case does not matter
    single = tokenize_prompts(tokenizer, "A Square")["input_ids"]
    assert torch.equal(single, ids[1:2])
    # the longest caption fits with room to spare
    longest = max(len(c.split()) for c in (shape_caption(s, c, z, p) for s in SHAPES for c in COLORS
                                            for z in SIZES for p in POSITIONS))
    assert tokenizer.model_max_length >= longest + 2


def test_save_and_load_round_trip(tokenizer, tmp_path):
    save_caption_tokenizer(tokenizer, tmp_path / "tok")
    loaded = load_caption_tokenizer(tmp_path / "tok")
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.model_max_length == tokenizer.model_max_length
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == \
        (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(tokenize_prompts(loaded, PROMPTS)[key], tokenize_prompts(tokenizer, PROMPTS)[key])
    with pytest.raises(FileNotFoundError, match="No tokenizer.json in .*save_caption_tokenizer"):
        load_caption_tokenizer(tmp_path / "missing")


def test_unknown_words_warn_and_become_unk(tokenizer):
    with pytest.warns(UserWarning, match=r"not in the tokenizer's vocabulary.*\['purple', 'hexagon'\]"):
        ids = tokenize_prompts(tokenizer, ["a purple hexagon", "a Purple circle"])["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids[0, 1:5].tolist() == [tokenizer.get_vocab()["a"], unk, unk, tokenizer.eos_token_id]
    assert ids[1, 2] == unk


def test_too_long_prompt_warns_and_keeps_the_end_token(tokenizer):
    length = tokenizer.model_max_length
    words = ["a"] * (length - 2) + ["red", "circle"]  # 2 words too many
    with pytest.warns(UserWarning, match=r"The following part of your input was truncated .* "
                                         rf"{length} tokens: \['red circle'\]"):
        ids = tokenize_prompts(tokenizer, [" ".join(words), "a square"])["input_ids"]
    assert ids.shape == (2, length)
    assert ids[0, -1] == tokenizer.eos_token_id and (ids[0, 1:-1] == tokenizer.get_vocab()["a"]).all()


def test_custom_captions_and_bad_inputs(tokenizer):
    small = build_caption_tokenizer(["a red circle", "a blue square"], model_max_length=6)
    assert caption_vocabulary(["a red circle", "a blue square"]) == ["a", "blue", "circle", "red", "square"]
    assert len(small) == 9 and small.model_max_length == 6
    with pytest.raises(ValueError, match="model_max_length must be between 10 and"):
        build_caption_tokenizer(model_max_length=9)  # the longest caption needs 10 tokens
    with pytest.raises(TypeError, match="prompts must be a string or a list of strings, got 3 of type int"):
        tokenize_prompts(tokenizer, 3)
    with pytest.raises(TypeError, match="prompts must be a string or a list of strings, got a list holding None"):
        tokenize_prompts(tokenizer, ["a square", None])
    with pytest.raises(ValueError, match="prompts is an empty list"):
        tokenize_prompts(tokenizer, [])
    with pytest.raises(TypeError, match="captions must be a string or a list of strings"):
        build_caption_tokenizer(captions=[1, 2])
    with pytest.raises(ValueError, match="contain no words"):
        build_caption_tokenizer(captions=["", " "])


# ----------------------------------------------------------------------------------------------
# Tiny CLIP


def test_config_takes_ids_and_lengths_from_the_tokenizer(tokenizer, model):
    text = model.config.text_config
    assert text.vocab_size == len(tokenizer)
    assert text.max_position_embeddings == tokenizer.model_max_length
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id) == \
        (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    vision = model.config.vision_config
    assert (vision.image_size, vision.num_channels) == (64, 3)
    assert isinstance(model.text_model, transformers.CLIPTextModel)


def test_pooling_is_at_the_end_token(tokenizer, model):
    """CLIPTextModel's pooled output is last_hidden_state at each prompt's <|endoftext|>."""
    batch = tokenize_prompts(tokenizer, PROMPTS)
    with torch.no_grad():
        out = model.text_model(**batch)
    end = [len(p.split()) + 1 for p in PROMPTS]  # positions of the end token: 8, 2, 1, 7
    assert (batch["input_ids"][torch.arange(4), end] == tokenizer.eos_token_id).all()
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(4), end])
    assert not torch.allclose(out.pooler_output, out.last_hidden_state[:, -1])  # not the last (pad) slot


def test_clip_loss_is_the_formula_and_equals_transformers(tokenizer, model):
    batch = tokenize_prompts(tokenizer, PROMPTS)
    pixels = _images(4)
    with torch.no_grad():
        ours = clip_loss(model, pixels, **batch)
        theirs = model(pixel_values=pixels, return_loss=True, **batch).loss
        torch.testing.assert_close(ours, theirs)
        # the formula by hand: mean of the two cross-entropies of the logit matrix
        v, t = clip_embeddings(model, pixels, **batch)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(4))
        logits = model.logit_scale.exp() * v @ t.T
        target = torch.arange(4)
        by_hand = (torch.nn.functional.cross_entropy(logits, target)
                   + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        torch.testing.assert_close(ours, by_hand)
        # a batch whose pairs match perfectly (t_i = v_i) and a huge scale has loss ~ 0
        eye = 100.0 * torch.eye(4)
        assert (-eye.log_softmax(1).diagonal().mean() - eye.log_softmax(0).diagonal().mean()).abs() < 1e-6


def test_encode_text_clip_score_and_zero_shot(tokenizer, model):
    batch = tokenize_prompts(tokenizer, PROMPTS)
    with torch.no_grad():
        hidden = encode_text(model.text_model, **batch)
        assert hidden.shape == (4, tokenizer.model_max_length, model.config.text_config.hidden_size)
        torch.testing.assert_close(encode_text(model, **batch), hidden)  # a CLIPModel works too
        pixels = _images(4)
        score = clip_score(model, pixels, **batch)
        v, t = clip_embeddings(model, pixels, **batch)
        torch.testing.assert_close(score, 100 * torch.nn.functional.cosine_similarity(v, t))
        assert score.shape == (4,) and (score.abs() <= 100 + 1e-4).all()
        prediction = zero_shot_predict(model, pixels[:3], **batch)
        assert prediction.shape == (3,) and torch.equal(prediction, (v[:3] @ t.T).argmax(1))


def test_clip_errors(tokenizer, model):
    batch = tokenize_prompts(tokenizer, PROMPTS)
    with pytest.raises(ValueError, match=r"pixel_values has shape \(4, 3, 32, 32\), expected \(B, 3, 64, 64\)"):
        clip_loss(model, torch.zeros(4, 3, 32, 32), **batch)
    with pytest.raises(ValueError, match="one caption per image, got 3 images and 4 captions"):
        clip_loss(model, _images(3), **batch)
    with pytest.raises(ValueError, match="clip_score scores pairs: got 2 images and 4 captions"):
        clip_score(model, _images(2), **batch)
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor \(B, L\)"):
        encode_text(model.text_model, batch["input_ids"].float())
    with pytest.raises(ValueError, match="attention_mask must be a tensor of the same shape as input_ids"):
        encode_text(model.text_model, batch["input_ids"], batch["attention_mask"][:, :5])
    with pytest.raises(TypeError, match="config must be a transformers.CLIPConfig or its dict, got list"):
        build_tiny_clip([])
    with pytest.raises(ValueError, match="text_hidden_size=30 is not divisible by num_heads=4"):
        tiny_clip_config(tokenizer, text_hidden_size=30)
    with pytest.raises(ValueError, match="image_size=64 is not divisible by patch_size=12"):
        tiny_clip_config(tokenizer, patch_size=12)


class _FakeTokenizer:
    """Only what tiny_clip_config reads from a tokenizer."""

    model_max_length = 8

    def __init__(self, pad, bos, eos, size=30):
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.size = pad, bos, eos, size

    def __len__(self):
        return self.size


def test_config_refuses_tokenizers_that_would_pool_at_the_wrong_token():
    with pytest.raises(ValueError, match="The tokenizer has no pad token"):
        tiny_clip_config(_FakeTokenizer(None, 0, 1))
    with pytest.raises(ValueError, match="end token has id 2: .*argmax"):
        tiny_clip_config(_FakeTokenizer(0, 1, 2))
    assert tiny_clip_config(_FakeTokenizer(0, 1, 2, size=3)).text_config.eos_token_id == 2  # 2 is the largest id
