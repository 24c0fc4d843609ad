"""The text side of lesson 07: a caption tokenizer and a tiny CLIP trained by the course.

Stable Diffusion turns a prompt into the matrix its UNet cross-attends to in two steps:

    prompt "a red circle"
      -> tokenizer      input_ids (B, L): <|startoftext|> a red circle <|endoftext|> [PAD] ...
      -> text encoder   last_hidden_state (B, L, D): one vector per token  (SD v1.x: CLIP ViT-L/14,
                        L = 77, D = 768; here L = 16, D = 64)
      -> UNet           encoder_hidden_states of every cross-attention layer

Here both pieces are small enough to build in a notebook:

* **Tokenizer.** A word-level vocabulary of the 21 words the shapes captions can contain, plus
  four special tokens, made with the ``tokenizers`` library and wrapped as a ``transformers``
  tokenizer (so ``save_pretrained`` / ``from_pretrained`` work on a folder). Why word-level and
  not CLIP's byte-level BPE: the captions come from a template with a closed list of words, so
  one token per word is exact, every id means something a learner can read, and a word the model
  never saw becomes [UNK] -- which ``tokenize_prompts`` reports -- instead of being cut silently
  into sub-word pieces the model never saw either. BPE earns its keep on open text (CLIP: 49,408
  tokens), not on a 21-word language.
* **Text encoder.** ``transformers``' own ``CLIPTextModel`` (never a copy), inside a tiny
  ``CLIPModel`` whose vision tower reads our 64x64 pictures. The two towers are trained together
  with CLIP's contrastive loss (``course_lib.losses.clip_loss``), so that the text vectors come to mean colour,
  shape, size and position before the UNet ever sees them.

Notation (code name -> symbol):

    input_ids, attention_mask   token ids and 1/0 mask, (B, L); L = tokenizer.model_max_length
    last_hidden_state           the text encoder's per-token output, (B, L, D), D = text hidden size
    text_embeds, image_embeds   t_j, v_i: pooled outputs after the projection, L2-normalised, (B, P)
    logit_scale                 log tau^-1: the logits are exp(logit_scale) * v_i . t_j
    pixel_values                images x in [-1, 1], (B, 3, 64, 64)

Images go into the vision tower as they are, in [-1, 1]: our CLIP is trained on exactly that
range, so no ``CLIPImageProcessor`` (resize to 224 and OpenAI's mean/std normalisation) is
needed -- that normalisation belongs to OpenAI's weights, not to the architecture.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from ..captions import COLORS, POSITIONS, SHAPES, SIZES, shape_caption
from ..checks import check_floating, check_int_range
from ..i18n import tr
from .config import MAX_LAYERS, MAX_WIDTH, check_parameter_cap

__all__ = [
    "SPECIAL_TOKENS",
    "caption_vocabulary",
    "build_caption_tokenizer",
    "save_caption_tokenizer",
    "load_caption_tokenizer",
    "tokenize_prompts",
    "tiny_clip_config",
    "build_tiny_clip",
    "encode_text",
    "text_encoder_from_clip",
    "clip_image_embeds",
    "clip_text_embeds",
    "clip_embeddings",
    "clip_score",
    "zero_shot_predict",
]

# Special tokens. Start and end are CLIP's; CLIP has no separate pad or unknown token (SD v1's
# tokenizer pads with <|endoftext|>), ours has both so that a learner sees them in input_ids.
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
# Their order in the vocabulary: after the words, with <|endoftext|> the LAST id, as in CLIP
# (49406 and 49407). CLIPTextModel pools the sequence at the end token; with the legacy
# eos_token_id == 2 it takes argmax(input_ids), otherwise the first position equal to
# eos_token_id. End token = largest id makes both rules pick the same, right position.
SPECIAL_TOKENS = (UNK_TOKEN, PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
DEFAULT_MODEL_MAX_LENGTH = 16  # longest caption: 8 words + 2 specials = 10; room for a few more


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _words(text: str) -> list[str]:
    """The words the tokenizer sees: lowercased, split on whitespace and punctuation as the
    ``Whitespace`` pre-tokenizer does (regex \\w+|[^\\w\\s]+)."""
    from tokenizers import pre_tokenizers

    return [word for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower())]


def _all_caption_forms() -> list[str]:
    """Every caption the shapes data can carry: each shape with each choice (or absence) of
    colour, size and position -- 3 x 7 x 3 x 6 = 378 captions, in a fixed order."""
    return [shape_caption(shape, color, size, position)
            for shape in SHAPES
            for color in (None, *COLORS)
            for size in (None, *SIZES)
            for position in (None, *POSITIONS)]


def _check_prompts(prompts, name: str = "prompts") -> list[str]:
    """A string or a list/tuple of strings -> a list of strings; anything else is a TypeError."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts):
        if not prompts:
            raise ValueError(f"{name} is an empty {type(prompts).__name__}. Give at least one prompt, "
                             f"e.g. [\"a red circle\"]; use \"\" for the unconditional (empty) prompt.")
        return list(prompts)
    if isinstance(prompts, (list, tuple)):
        bad = next(p for p in prompts if not isinstance(p, str))
        raise TypeError(f"{name} must be a string or a list of strings, got a {type(prompts).__name__} "
                        f"holding {bad!r} of type {type(bad).__name__}. Convert each prompt with str(...).")
    raise TypeError(f"{name} must be a string or a list of strings, got {prompts!r} of type "
                    f"{type(prompts).__name__}. Pass \"a red circle\" or [\"a red circle\", \"a square\"].")


def caption_vocabulary(captions=None) -> list[str]:
    """The words of the captions, sorted: the tokenizer's vocabulary without its special tokens.

    :param captions: a list of captions; ``None`` (default) is every caption form the shapes data
        can produce (all shapes, colours, sizes, positions and the template words "a", "in", "the")
    :return: sorted list of distinct lowercase words, e.g. ["a", "blue", "bottom", ...]
    """
    captions = _all_caption_forms() if captions is None else _check_prompts(captions, "captions")
    words = sorted({word for caption in captions for word in _words(caption)})
    if not words:
        raise ValueError("The captions contain no words, so the vocabulary would be empty. "
                         "Give captions such as [\"a red circle\"], or captions=None for the shapes captions.")
    return words


def build_caption_tokenizer(captions=None, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
    """A word-level tokenizer for the shapes captions, as a ``transformers`` tokenizer.

    The vocabulary is built deterministically from the words (not by a trainer, whose ids would
    depend on word counts): ids 0..V-5 are the sorted words, then [UNK], [PAD], <|startoftext|>
    and <|endoftext|> (the last id, as in CLIP). The pipeline of ``tokenizers``:

        normalizer      lowercase ("A Red Circle" == "a red circle")
        pre-tokenizer   Whitespace: split on spaces and punctuation ("circle," -> "circle", ",")
        model           WordLevel: word -> id, any other word -> [UNK]
        post-processor  <|startoftext|> $A <|endoftext|>

    :param captions: captions to take the words from; ``None`` = every shapes caption form
    :param model_max_length: L, the length every prompt is padded or truncated to (start and end
        tokens included); at least the longest caption's length
    :return: a ``transformers.PreTrainedTokenizerFast``
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    captions = _all_caption_forms() if captions is None else _check_prompts(captions, "captions")
    words = caption_vocabulary(captions)
    longest = max(len(_words(c)) for c in captions) + 2  # + <|startoftext|> and <|endoftext|>
    check_int_range(model_max_length, "model_max_length", longest, 10_000,
                    hint=f"The longest caption needs {longest} tokens (its words plus start and end tokens).")

    vocab = {token: index for index, token in enumerate([*words, *SPECIAL_TOKENS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length,
        bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN,
        padding_side="right",
    )


def save_caption_tokenizer(tokenizer, folder) -> None:
    """Write the tokenizer to a local folder (tokenizer.json + tokenizer_config.json)."""
    tokenizer.save_pretrained(os.fspath(folder))


def load_caption_tokenizer(folder):
    """Read a tokenizer written by ``save_caption_tokenizer`` from a local folder (never a hub).

    :param folder: the folder; a missing folder is a FileNotFoundError that says so
    """
    from transformers import PreTrainedTokenizerFast

    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        raise FileNotFoundError(f"No tokenizer.json in {folder!r}. Save one first with "
                                f"save_caption_tokenizer(tokenizer, {folder!r}).")
    return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)


def tokenize_prompts(tokenizer, prompts) -> dict:
    """Prompts -> input_ids and attention_mask, padded (or truncated) to L = model_max_length.

    As diffusers' StableDiffusionPipeline, every prompt is padded to the same L, and a prompt too
    long for L is cut (its end token kept) with a warning that shows what was cut. Words that are
    not in the vocabulary become the unknown token, with a warning that names them: the text
    encoder cannot know what they mean.

    :param tokenizer: a ``transformers`` fast tokenizer (``build_caption_tokenizer`` or CLIP's)
    :param prompts: a string or a list of B strings ("" is the empty, unconditional prompt)
    :return: {"input_ids": LongTensor (B, L), "attention_mask": LongTensor (B, L)} (1 = token, 0 = pad)
    """
    prompts = _check_prompts(prompts)
    max_length = tokenizer.model_max_length
    if not isinstance(max_length, int) or max_length > 100_000:
        raise ValueError(f"tokenizer.model_max_length is {max_length!r}, not a usable length. Set it, "
                         f"e.g. tokenizer.model_max_length = 16.")

    # 1. the prompts as they are, to find unknown words and what truncation removes
    full = tokenizer(prompts, padding=False, truncation=False, return_offsets_mapping=True, verbose=False)
    unk_id = tokenizer.unk_token_id
    unknown = {}  # lowercase word -> the word as first written; a dict keeps the order
    for prompt, ids, offsets in zip(prompts, full["input_ids"], full["offset_mapping"]):
        for token_id, (start, end) in zip(ids, offsets):
            if unk_id is not None and token_id == unk_id and end > start:  # CLIP: unk is <|endoftext|>, at (0, 0)
                unknown.setdefault(prompt[start:end].lower(), prompt[start:end])
    unknown = list(unknown.values())
    if unknown:
        warnings.warn(tr("These words are not in the tokenizer's vocabulary and became {unk_token}: {words}. The "
                         "text encoder cannot know what they mean; use words from the vocabulary "
                         "(tokenizer.get_vocab()).", unk_token=tokenizer.unk_token, words=unknown), stacklevel=2)
    removed = [tokenizer.decode(ids[max_length - 1:-1]) for ids in full["input_ids"] if len(ids) > max_length]
    if removed:
        # the same message as diffusers' StableDiffusionPipeline._encode_prompt
        warnings.warn(tr("The following part of your input was truncated because the text encoder can only "
                         "handle sequences up to {max_length} tokens: {removed}", max_length=max_length,
                         removed=removed), stacklevel=2)

    # 2. padded and truncated to L; the post-processor keeps <|endoftext|> as the last real token
    batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                      return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


# ----------------------------------------------------------------------------------------------
# Tiny CLIP


def tiny_clip_config(tokenizer, *, text_hidden_size: int = 64, text_layers: int = 2,
                     vision_hidden_size: int = 64, vision_layers: int = 2, num_heads: int = 4,
                     patch_size: int = 16, image_size: int = 64, projection_dim: int = 64,
                     logit_scale_init_value: float = 2.6592):
    """A small ``transformers.CLIPConfig`` for the shapes pictures and the caption tokenizer.

    Both towers are CLIP's pre-LayerNorm transformers with quick-GELU MLPs of width 4 x hidden.
    The defaults (261k parameters) reach over 99% zero-shot accuracy on every attribute of the
    test split after 1,000 steps of batch 256 (about 4.5 minutes on one CPU thread).
    The text tower's vocabulary, length and special ids come from the tokenizer; pad, start and
    end ids are set explicitly because ``CLIPTextModel`` pools at the end token: it takes the
    first position whose id is eos_token_id (or, with the legacy eos_token_id == 2, the largest
    id) -- a wrong eos_token_id would silently pool at the wrong token.

    :param tokenizer: the caption tokenizer (vocab_size = len(tokenizer), L = model_max_length)
    :param text_hidden_size: D, width of the text tower = width of last_hidden_state, the UNet's
        cross_attention_dim
    :param text_layers: transformer layers of the text tower
    :param vision_hidden_size: width of the vision tower
    :param vision_layers: transformer layers of the vision tower
    :param num_heads: attention heads of both towers (must divide both widths)
    :param patch_size: side p of the square patches; the picture becomes (image_size / p)^2 tokens + 1
        (p = 16: 4 x 4 patches + the class token, 2.5x faster to train than p = 8 and as accurate
        on the test split)
    :param image_size: H = W of the pictures
    :param projection_dim: P, width of the shared image-text embedding space
    :param logit_scale_init_value: initial log(1 / tau) (CLIP: log(1 / 0.07) = 2.6592)
    """
    from transformers import CLIPConfig

    for value, name in ((text_hidden_size, "text_hidden_size"), (text_layers, "text_layers"),
                        (vision_hidden_size, "vision_hidden_size"), (vision_layers, "vision_layers"),
                        (num_heads, "num_heads"), (patch_size, "patch_size"), (image_size, "image_size"),
                        (projection_dim, "projection_dim")):
        check_int_range(value, name, 1)
    for width, name in ((text_hidden_size, "text_hidden_size"), (vision_hidden_size, "vision_hidden_size")):
        if width % num_heads:
            raise ValueError(f"{name}={width} is not divisible by num_heads={num_heads}. "
                             f"Pick a width that is a multiple of the number of heads.")
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}. "
                         f"Pick a patch size that tiles the picture, e.g. 8 for 64x64.")
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "bos", "eos")}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"The tokenizer has no {', '.join(missing)} token. Use build_caption_tokenizer(), "
                         f"which defines {PAD_TOKEN}, {BOS_TOKEN} and {EOS_TOKEN}.")
    if ids["eos"] == 2 and ids["eos"] != len(tokenizer) - 1:
        raise ValueError("The tokenizer's end token has id 2: CLIPTextModel would treat it as the legacy "
                         "configuration and pool at argmax(input_ids), not at the end token. Give the end "
                         "token another id (build_caption_tokenizer makes it the last one).")

    text_config = dict(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        hidden_size=text_hidden_size, intermediate_size=4 * text_hidden_size,
        num_hidden_layers=text_layers, num_attention_heads=num_heads, projection_dim=projection_dim,
        pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
    )
    vision_config = dict(
        hidden_size=vision_hidden_size, intermediate_size=4 * vision_hidden_size,
        num_hidden_layers=vision_layers, num_attention_heads=num_heads, num_channels=3,
        image_size=image_size, patch_size=patch_size, projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim,
                      logit_scale_init_value=logit_scale_init_value)


# the sizes of a CLIP config held to the caps of course_lib.nn.config: (tower, key, cap)
_CLIP_SIZE_KEYS = [(tower, key, cap) for tower in ("text_config", "vision_config")
                   for key, cap in (("hidden_size", MAX_WIDTH), ("intermediate_size", 4 * MAX_WIDTH),
                                    ("num_hidden_layers", 4 * MAX_LAYERS), ("num_attention_heads", MAX_WIDTH))]
_CLIP_SIZE_KEYS += [("text_config", "vocab_size", 1_000_000), ("text_config", "max_position_embeddings", MAX_WIDTH),
                    ("vision_config", "image_size", MAX_WIDTH), (None, "projection_dim", MAX_WIDTH)]


def build_tiny_clip(config):
    """A freshly initialised ``transformers.CLIPModel`` (seed torch first for repeatable weights).

    The one builder of the course's CLIP, from a ``CLIPConfig`` (``tiny_clip_config``) or from its
    dict (a checkpoint's JSON). Sizes are held to the caps of ``course_lib.nn.config``: widths to
    MAX_WIDTH (the MLPs to 4 x MAX_WIDTH), layers per tower to 4 x MAX_LAYERS, and the whole model
    to MAX_PARAMETERS, counted on the meta device before any memory is used.
    ``model.text_model`` is a ``CLIPTextModel``: the text encoder the UNet is conditioned on.

    :param config: a ``transformers.CLIPConfig`` or a dict of one (``CLIPConfig.to_dict()``)
    """
    from transformers import CLIPConfig, CLIPModel

    if isinstance(config, dict):
        config = CLIPConfig.from_dict(config)
    if not isinstance(config, CLIPConfig):
        raise TypeError(f"config must be a transformers.CLIPConfig or its dict, got {type(config).__name__}. "
                        f"Make one with tiny_clip_config(tokenizer).")
    for tower, key, cap in _CLIP_SIZE_KEYS:
        value = getattr(getattr(config, tower) if tower else config, key)
        name = f"{tower}.{key}" if tower else key
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"CLIP config {name} must be a positive integer, got {value!r}.")
        if value > cap:
            raise ValueError(f"CLIP config {name}={value} is above the cap of {cap} (course_lib/nn/config.py's caps): "
                             f"the course's CLIP is far smaller. Lower it.")
    with torch.device("meta"):
        count = sum(p.numel() for p in CLIPModel(config).parameters())
    check_parameter_cap(count, "CLIP config", ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "vocab_size"))
    return CLIPModel(config)


def _check_tokens(input_ids, attention_mask) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.ndim != 2:
        shown = f"shape {tuple(input_ids.shape)}, dtype {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) \
            else type(input_ids).__name__
        raise TypeError(f"input_ids must be an integer tensor (B, L), got {shown}. "
                        f"Make it with tokenize_prompts(tokenizer, prompts)[\"input_ids\"].")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                       or attention_mask.shape != input_ids.shape):
        shown = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor of the same shape as input_ids {tuple(input_ids.shape)}, "
                         f"got {shown}. Pass the attention_mask that tokenize_prompts returned with the ids.")


def _check_pixels(pixel_values, model) -> None:
    check_floating(pixel_values, "pixel_values")
    size = model.config.vision_config.image_size
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}, expected (B, 3, {size}, {size}): "
                         f"RGB images in [-1, 1], as shapes_tensors returns them.")


def _text_model(model):
    """The CLIPTextModel of a CLIPModel, or the model itself."""
    return model.text_model if hasattr(model, "text_projection") else model


def text_encoder_from_clip(clip):
    """The text tower of a ``CLIPModel`` as a ``CLIPTextModel`` (what SD's pipelines call the text encoder).

    :param clip: transformers' ``CLIPModel`` (the tiny CLIP of ``shapes-clip``)
    :return: a ``CLIPTextModel`` with the weights of ``clip.text_model`` (copied), in eval mode
    """
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    text_weights = clip.text_model.state_dict()  # embeddings.*, encoder.*, final_layer_norm.*
    if all(key.startswith("text_model.") for key in text_encoder.state_dict()):  # transformers 4.x's names
        text_weights = {f"text_model.{key}": value for key, value in text_weights.items()}
    text_encoder.load_state_dict(text_weights, strict=True)
    return text_encoder.eval()


def encode_text(text_model, input_ids, attention_mask=None) -> torch.Tensor:
    """The text encoder's per-token output: what the UNet's cross-attention reads.

    Stable Diffusion v1.x conditions on CLIP ViT-L/14's last_hidden_state (after the final
    LayerNorm), not on the pooled or projected vector: every token keeps its own vector, so the
    UNet can attend to "red" and to "circle" separately.

    :param text_model: a ``CLIPTextModel`` (or a ``CLIPModel``, whose text tower is used)
    :param input_ids: token ids (B, L)
    :param attention_mask: 1 for tokens, 0 for padding (B, L); with CLIP's causal attention it
        changes only the outputs at the padding positions
    :return: last_hidden_state (B, L, D), D = text hidden size
    """
    _check_tokens(input_ids, attention_mask)
    return _text_model(text_model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def clip_image_embeds(model, pixel_values) -> torch.Tensor:
    """Unit-length image embeddings v_i = W_v pool(vision(x_i)) / ||W_v pool(vision(x_i))|| (pool: the class token).

    :param model: a ``CLIPModel``
    :param pixel_values: images x in [-1, 1], (B, 3, H, W), on the model's device and dtype
    :return: image_embeds (B, P)
    """
    _check_pixels(pixel_values, model)
    image_embeds = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
    return F.normalize(image_embeds, dim=-1)


def clip_text_embeds(model, input_ids, attention_mask=None) -> torch.Tensor:
    """Unit-length text embeddings t_j = W_t pool(text(ids_j)) / ||W_t pool(text(ids_j))|| (pool: the end token).

    :param model: a ``CLIPModel``
    :param input_ids: token ids (B, L)
    :param attention_mask: (B, L)
    :return: text_embeds (B, P)
    """
    _check_tokens(input_ids, attention_mask)
    text_pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return F.normalize(model.text_projection(text_pooled), dim=-1)


def clip_embeddings(model, pixel_values, input_ids, attention_mask=None):
    """Unit-length image and text embeddings v_i, t_j in the shared space (:func:`clip_image_embeds`,
    :func:`clip_text_embeds`).

    :param model: a ``CLIPModel``
    :param pixel_values: images x in [-1, 1], (B_img, 3, H, W)
    :param input_ids: token ids (B_txt, L)
    :param attention_mask: (B_txt, L)
    :return: image_embeds (B_img, P), text_embeds (B_txt, P)
    """
    _check_pixels(pixel_values, model)
    _check_tokens(input_ids, attention_mask)
    return clip_image_embeds(model, pixel_values), clip_text_embeds(model, input_ids, attention_mask)


def clip_score(model, pixel_values, input_ids, attention_mask=None) -> torch.Tensor:
    """CLIP score of each (image, caption) pair: 100 cos(v_i, t_i) (Hessel et al. 2021, as in
    torchmetrics' CLIPScore, which also clamps negative values to 0; here they are kept).

    :param model: a ``CLIPModel``
    :param pixel_values: images in [-1, 1], (B, 3, H, W)
    :param input_ids: their captions' token ids (B, L)
    :param attention_mask: (B, L)
    :return: scores (B,), in [-100, 100]
    """
    image_embeds, text_embeds = clip_embeddings(model, pixel_values, input_ids, attention_mask)
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(f"clip_score scores pairs: got {image_embeds.shape[0]} images and {text_embeds.shape[0]} "
                         f"captions. Pass one caption per image (repeat a prompt B times to score B images).")
    # 100 * cos(v_i, t_i); both are unit vectors, so the cosine is the dot product
    return 100.0 * (image_embeds * text_embeds).sum(dim=-1)


def zero_shot_predict(model, pixel_values, input_ids, attention_mask=None) -> torch.Tensor:
    """Zero-shot classification: for each image, the index of the best-matching of K prompts.

        y_i = argmax_k v_i . t_k

    e.g. prompts ["a circle", "a square", "a triangle"] make CLIP a shape classifier it was
    never trained to be.

    :param model: a ``CLIPModel``
    :param pixel_values: images in [-1, 1], (B, 3, H, W)
    :param input_ids: the K candidate prompts' token ids (K, L)
    :param attention_mask: (K, L)
    :return: LongTensor (B,) of prompt indices in [0, K - 1]
    """
    image_embeds, text_embeds = clip_embeddings(model, pixel_values, input_ids, attention_mask)
    return (image_embeds @ text_embeds.T).argmax(dim=1)  # (B, K) -> (B,)
