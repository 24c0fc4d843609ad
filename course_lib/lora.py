"""LoRA and a new word: teaching the mini-SD "orange" (lesson 11).

Two small things are learned while every weight of the mini-SD stays frozen:

* **a new token** (textual inversion, Gal et al. 2022): the word is added to the caption
  tokenizer, the text encoder's token-embedding table grows by one row, and only that row is
  trained. Every other weight of the text encoder stays bit for bit what it was;
* **LoRA adapters** (Hu et al. 2021) on the UNet's attention projections ``to_q``, ``to_k``,
  ``to_v``, ``to_out.0`` of self- (``attn1``) and cross-attention (``attn2``). A frozen linear
  layer W (d_out x d_in) gets a low-rank update:

      W' = W + (alpha / r) B A,      A: (r, d_in),  B: (d_out, r),  r << min(d_in, d_out)

  A starts random and B at zero, so training starts from the base model exactly; only A and B
  are trained: r (d_in + d_out) numbers per layer instead of d_in d_out.

The LoRA layers are Hugging Face ``peft``'s (the library diffusers uses); :func:`lora_delta`
writes the update out once, and tests/test_lora.py checks it against peft's forward.

An adapter is a course checkpoint (``NAME.safetensors`` + ``NAME.json``, written as one unit by
``checkpoints.save_checkpoint``) whose config has ``"kind": "lora adapter"``: the LoRA weights
under ``unet.*``, the new token's embedding row as ``text_encoder.token_embedding`` (1, D), and
the settings (rank, alpha, target modules, the word, the base models). The adapter of a word W
is the checkpoint ``shapes-lora-W`` of the checkpoint folder; ``load_adapter(..., "orange")``
finds it there.

Fused projections: ``nn.attention.fuse_projections`` (the fast mode) copies W_q, W_k, W_v into
one matrix and would compute with the copies, leaving the adapter out. Adding or loading an
adapter on a fused UNet is refused; unfuse first (``fuse_projections(unet, fuse=False)``).

Notation (code name -> symbol):

    rank, alpha      r, alpha of the LoRA update (alpha / r is its scale)
    lora_A, lora_B   A (r, d_in), B (d_out, r)
    token_id         the new word's id, = the old vocabulary size V
    token_embedding  e_w, the new row of the text encoder's embedding table, (1, D)
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checks import check_int_range, check_number

__all__ = [
    "LORA_TARGET_MODULES",
    "ADAPTER_PREFIX",
    "ADAPTER_KIND",
    "AdapterConfig",
    "LoadedAdapter",
    "lora_delta",
    "add_lora",
    "remove_lora",
    "has_lora",
    "lora_parameters",
    "add_token",
    "remove_token",
    "mask_token_gradient",
    "adapter_state_dict",
    "save_adapter",
    "available_adapters",
    "adapter_path",
    "load_adapter",
    "unload_adapter",
]

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")  # of every attn1 and attn2
ADAPTER_PREFIX = "shapes-lora-"  # the checkpoint of the adapter of word W is shapes-lora-W
ADAPTER_KIND = "lora adapter"  # config["kind"] of an adapter checkpoint
TOKEN_EMBEDDING_KEY = "text_encoder.token_embedding"
UNET_PREFIX = "unet."
PEFT_ADAPTER_NAME = "default"  # peft's name for the (single) adapter of a layer


@dataclass(frozen=True)
class AdapterConfig:
    """What an adapter is: LoRA's rank and scale, the layers it adapts, the word it adds.

    :param rank: r, the rank of each update B A (>= 1)
    :param alpha: alpha; the update is scaled by alpha / r
    :param target_modules: names of the adapted linear layers (peft matches the end of each
        module's name: "to_q" is every ``...attn1.to_q`` and ``...attn2.to_q``)
    :param token: the new word (None: LoRA only, no new token)
    :param init_words: the new row starts as the mean of these words' rows (textual inversion
        starts from a related word; "orange" lies between red and yellow)
    """

    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    token: str | None = "orange"
    init_words: tuple[str, ...] = ("red", "yellow")

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.rank!r}: the update B A has "
                             f"rank r, so r = 0 would change nothing. Use r >= 1, e.g. rank=4.")
        alpha = check_number(self.alpha, "alpha", hint="The LoRA update is scaled by alpha / r; use e.g. alpha = r.")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}: the update is scaled by alpha / r. "
                             f"Use e.g. alpha = r.")
        for name in ("target_modules", "init_words"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise TypeError(f"{name} must be a list of names, got {value!r}. Example: {LORA_TARGET_MODULES}.")
            object.__setattr__(self, name, tuple(value))
        if not self.target_modules:
            raise ValueError(f"target_modules is empty: nothing to adapt. Use e.g. {LORA_TARGET_MODULES}.")
        if self.token is not None and (not isinstance(self.token, str) or not self.token.isalpha()
                                       or self.token != self.token.lower()):
            raise ValueError(f"token must be one lowercase word of letters (the tokenizer lowercases prompts), "
                             f"got {self.token!r}.")

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules),
                "token": self.token, "init_words": list(self.init_words)}

    @classmethod
    def from_dict(cls, config: dict) -> "AdapterConfig":
        return cls(**config)


# ---------------------------------------------------------------------------------------------
# The LoRA update
# ---------------------------------------------------------------------------------------------

def lora_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float) -> torch.Tensor:
    """The change LoRA makes to a weight matrix: ΔW = (alpha / r) B A.

    :param lora_A: A, (r, d_in)
    :param lora_B: B, (d_out, r)
    :param alpha: alpha
    :return: ΔW, (d_out, d_in); the adapted layer computes y = x (W + ΔW)^T + b
    """
    if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_B.shape[1] != lora_A.shape[0]:
        raise ValueError(f"lora_A must be (r, d_in) and lora_B (d_out, r) with the same r, got "
                         f"{tuple(lora_A.shape)} and {tuple(lora_B.shape)}.")
    rank = lora_A.shape[0]
    # ΔW = (α / r) B A
    return (alpha / rank) * (lora_B @ lora_A)


def _peft_config(config: AdapterConfig):
    from peft import LoraConfig

    # init_lora_weights=True: A Kaiming-uniform, B = 0 (the adapted model starts as the base model)
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                      lora_dropout=0.0, bias="none", init_lora_weights=True)


def has_lora(model: nn.Module) -> bool:
    """Whether peft's LoRA layers are in ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def _check_not_fused(unet: nn.Module) -> None:
    fused = [name for name, module in unet.named_modules() if getattr(module, "fused_weight", None) is not None]
    if fused:
        raise ValueError(
            f"{len(fused)} attention layers of the UNet have fused Q/K/V projections (e.g. {fused[0]}), made by "
            f"the fast mode (optimize(), course_lib.nn.attention.fuse_projections). The fused copies would ignore "
            f"the LoRA update. Unfuse first: course_lib.nn.attention.fuse_projections(unet, fuse=False).")


def _target_layers(unet: nn.Module, target_modules) -> dict[str, nn.Linear]:
    """The linear layers peft adapts: those whose name is a target or ends with "." + a target."""
    return {name: module for name, module in unet.named_modules() if isinstance(module, nn.Linear)
            and any(name == t or name.endswith("." + t) for t in target_modules)}


def add_lora(unet: nn.Module, config: AdapterConfig) -> int:
    """Put LoRA layers (peft's) on the UNet's attention projections; freeze everything else.

    :param unet: course_lib's UNet2DConditionModel (module names as diffusers': ...attn1.to_q)
    :param config: rank, alpha and the target modules
    :return: the number of trainable LoRA numbers, sum over layers of r (d_in + d_out)
    """
    from peft import inject_adapter_in_model

    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}.")
    _check_not_fused(unet)
    if has_lora(unet):
        raise ValueError("The UNet already carries a LoRA adapter. Remove it first (remove_lora(unet), or "
                         "unload_adapter) before adding another.")
    if not _target_layers(unet, config.target_modules):
        raise ValueError(f"No linear layer of the UNet matches target_modules {list(config.target_modules)}. "
                         f"Its attention projections are named like 'down_blocks.0.attentions.0."
                         f"transformer_blocks.0.attn1.to_q'; use {LORA_TARGET_MODULES}.")
    inject_adapter_in_model(_peft_config(config), unet, adapter_name=PEFT_ADAPTER_NAME)
    # peft freezes the base weights of the model it injects into; the LoRA weights are trainable
    return sum(p.numel() for p in lora_parameters(unet))


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices A and B of every adapted layer."""
    return [p for name, p in unet.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def remove_lora(unet: nn.Module) -> None:
    """Take the LoRA layers out again: each wrapped layer is replaced by its own base layer.

    Afterwards the UNet's modules, keys and weights are the ones it had before :func:`add_lora`
    (the base weights were never changed), and every parameter is trainable again.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, module) for name, module in unet.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, module.get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config
    unet.requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# The new token
# ---------------------------------------------------------------------------------------------

def add_token(tokenizer, text_encoder, word: str, init_words=("red", "yellow")):
    """Add ``word`` to a copy of the tokenizer and one row to the text encoder's embedding table.

    The tokenizer given is left as it is (with it, the word stays unknown and warns); the text
    encoder's table grows from V to V + 1 rows in place, the new row set to the mean of the
    ``init_words``' rows, the V old rows unchanged.

    :param tokenizer: the caption tokenizer (a transformers PreTrainedTokenizerFast)
    :param text_encoder: transformers' CLIPTextModel
    :param word: the new word, e.g. "orange"
    :param init_words: words of the vocabulary whose mean row starts the new one
    :return: (the tokenizer with the word, the word's id = V)
    """
    from tokenizers import AddedToken

    vocabulary = tokenizer.get_vocab()
    if word in vocabulary:
        raise ValueError(f"{word!r} is already in the tokenizer's vocabulary (id {vocabulary[word]}): nothing to "
                         f"add. Pick a new word, or unload the adapter that added it.")
    missing = [w for w in init_words if w not in vocabulary]
    if missing or not init_words:
        raise ValueError(f"init_words {list(init_words)} must be words of the vocabulary (missing: {missing}). "
                         f"Use words such as ('red', 'yellow').")
    embedding = text_encoder.get_input_embeddings()
    old_size = embedding.num_embeddings
    if len(tokenizer) != old_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the text encoder's table has {old_size} "
                         f"rows. Use the tokenizer the text encoder was trained with.")
    extended = copy.deepcopy(tokenizer)
    # single_word: "oranges" stays unknown instead of becoming "orange" + "s"
    extended.add_tokens([AddedToken(word, single_word=True, normalized=True)])
    token_id = extended.convert_tokens_to_ids(word)
    if token_id != old_size:
        raise ValueError(f"The new word got id {token_id}, expected {old_size} (the next free id). The tokenizer "
                         f"already has added tokens; start from the course's caption tokenizer.")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # resizing draws the new row; ours is set below
        text_encoder.resize_token_embeddings(old_size + 1, mean_resizing=False)
        table = text_encoder.get_input_embeddings().weight
        init_ids = [vocabulary[w] for w in init_words]
        # e_w = mean of the init words' rows
        table[token_id] = table[init_ids].mean(dim=0)
    return extended, token_id


def remove_token(text_encoder, vocab_size: int) -> None:
    """Shrink the text encoder's embedding table back to its first ``vocab_size`` rows (in place)."""
    check_int_range(vocab_size, "vocab_size", 1, text_encoder.get_input_embeddings().num_embeddings)
    with torch.random.fork_rng(devices=[]):
        text_encoder.resize_token_embeddings(vocab_size, mean_resizing=False)


def mask_token_gradient(text_encoder, token_id: int):
    """Train only row ``token_id`` of the text encoder: freeze the rest, zero the other rows' gradient.

    With the gradient of every other row exactly 0 and no weight decay on the table, AdamW leaves
    those rows bit for bit unchanged (its update is m / (sqrt(v) + eps) with m = v = 0).

    :return: the hook's handle (``handle.remove()`` ends the masking)
    """
    text_encoder.requires_grad_(False)
    weight = text_encoder.get_input_embeddings().weight
    weight.requires_grad_(True)
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[token_id] = 1.0
    # ∂L/∂E <- ∂L/∂E * [row == token_id]
    return weight.register_hook(lambda grad: grad * keep)


# ---------------------------------------------------------------------------------------------
# Saving and loading adapters
# ---------------------------------------------------------------------------------------------

def adapter_state_dict(unet: nn.Module, text_encoder=None, token_id: int | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors: ``unet.<layer>.lora_A.weight`` (r, d_in), ``unet.<layer>.lora_B.weight``
    (d_out, r) for every adapted layer, and ``text_encoder.token_embedding`` (1, D) when a token was added."""
    from peft import get_peft_model_state_dict

    if not has_lora(unet):
        raise ValueError("The UNet carries no LoRA adapter: nothing to save. Add one with add_lora(unet, config).")
    tensors = {UNET_PREFIX + key: value.detach().cpu().contiguous()
               for key, value in get_peft_model_state_dict(unet, adapter_name=PEFT_ADAPTER_NAME).items()}
    if token_id is not None:
        row = text_encoder.get_input_embeddings().weight[token_id:token_id + 1]
        tensors[TOKEN_EMBEDDING_KEY] = row.detach().cpu().contiguous()
    return tensors


def save_adapter(path: str | os.PathLike, unet: nn.Module, config: AdapterConfig, text_encoder=None,
                 token_id: int | None = None, base: dict | None = None, info: dict | None = None) -> Path:
    """Save an adapter as a course checkpoint (X.safetensors + X.json, written as one unit).

    :param path: X, e.g. data/checkpoints/shapes-lora-orange
    :param unet: the UNet with its LoRA layers
    :param config: the adapter's settings
    :param text_encoder: with ``token_id``: the text encoder whose new row is saved
    :param token_id: the new word's id (None when config.token is None)
    :param base: the base models it was trained on, e.g. {"unet": "shapes-ldm", "text_encoder": "shapes-clip"}
    :param info: more JSON-ready facts for the config (training settings, time, metrics)
    :return: the weights file
    """
    from .checkpoints import save_checkpoint

    if (config.token is None) != (token_id is None):
        raise ValueError(f"config.token is {config.token!r} but token_id is {token_id!r}: give the new word's id "
                         f"exactly when the adapter adds a word.")
    tensors = adapter_state_dict(unet, text_encoder, token_id)
    checkpoint = {
        "kind": ADAPTER_KIND,
        "adapter": config.to_dict(),
        "token_id": token_id,
        "base": dict(base or {}),
        "num_parameters": {"lora": sum(v.numel() for k, v in tensors.items() if k.startswith(UNET_PREFIX)),
                           "token_embedding": tensors[TOKEN_EMBEDDING_KEY].numel() if token_id is not None else 0},
        **(info or {}),
    }
    checkpoint.setdefault("step", None)
    return save_checkpoint(path, tensors, checkpoint)


def _checkpoint_folder(folder) -> Path:
    from .checkpoints import checkpoint_dir

    return Path(folder) if folder is not None else checkpoint_dir()


def available_adapters(folder: str | os.PathLike | None = None) -> list[str]:
    """The adapters in the checkpoint folder, by word: checkpoints shapes-lora-W (with their JSON) -> W."""
    folder = _checkpoint_folder(folder)
    if not folder.is_dir():
        return []
    return sorted(path.name[len(ADAPTER_PREFIX):-len(".safetensors")]
                  for path in folder.glob(f"{ADAPTER_PREFIX}*.safetensors")
                  if not path.name.endswith(".state.safetensors")
                  and path.with_name(path.name[:-len(".safetensors")] + ".json").is_file())


def adapter_path(name_or_path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint X of an adapter given by word ("orange" -> folder/shapes-lora-orange) or by path.

    :raises ValueError: an unknown name, listing the adapters that are there
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"adapter must be a name such as 'orange' or a path, got {type(name_or_path).__name__}.")
    path = Path(name_or_path)
    for suffix in (".safetensors", ".json"):
        if path.name.endswith(suffix):
            path = path.with_name(path.name[:-len(suffix)])
    if path.with_name(path.name + ".safetensors").is_file():
        return path
    folder = _checkpoint_folder(folder)
    name = os.fspath(name_or_path)
    if name in available_adapters(folder):
        return folder / f"{ADAPTER_PREFIX}{name}"
    present = available_adapters(folder)
    raise ValueError(
        f"Unknown adapter {name!r}: no file {path}.safetensors, and no adapter of that name in {folder}. "
        + (f"Adapters there: {', '.join(repr(a) for a in present)}. " if present else "There are none there. ")
        + "Give one of those names, or the path of an adapter saved with save_adapter.")


@dataclass
class LoadedAdapter:
    """An adapter put on a model by :func:`load_adapter`: what :func:`unload_adapter` needs to take it off."""

    name: str  # the word, or the file's name
    path: Path
    config: AdapterConfig
    tokenizer: object  # the tokenizer with the new word (the original one when no word is added)
    original_tokenizer: object
    original_vocab_size: int
    token_id: int | None
    info: dict = field(default_factory=dict)  # the adapter's JSON config


def _check_adapter_shapes(tensors: dict, expected: dict, path: Path, base: dict) -> None:
    from .checkpoints import CheckpointError

    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{key} {tuple(tensors[key].shape)} in the file, {tuple(expected[key])} for this model"
             for key in sorted(set(tensors) & set(expected)) if tuple(tensors[key].shape) != tuple(expected[key])]
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for keys, what in ((missing, "tensors missing"), (unexpected, "unexpected tensors"),
                                    (wrong, "tensors of another shape")) if keys]
        trained_on = ", ".join(f"{k} {v}" for k, v in base.items()) or "another model"
        raise CheckpointError(path, f"the adapter does not fit this model ({'; '.join(parts)})",
                              f"it was trained on {trained_on}; load it into that model, or train an adapter "
                              f"for this one")


def load_adapter(unet: nn.Module, tokenizer, text_encoder, name_or_path: str | os.PathLike = "orange",
                 folder: str | os.PathLike | None = None) -> LoadedAdapter:
    """Put a saved adapter on a UNet and a text encoder: the LoRA layers, and the new word.

    The UNet gets peft's LoRA layers with the saved A and B; the text encoder's table grows by the
    saved row; the returned ``tokenizer`` knows the word (the one passed in is not changed). On any
    error nothing is changed.

    :param unet: the base UNet (no adapter, projections not fused)
    :param tokenizer: the base caption tokenizer
    :param text_encoder: the base text encoder (CLIPTextModel)
    :param name_or_path: a word with an adapter in the checkpoint folder ("orange"), or a path
    :param folder: the checkpoint folder (default: $COURSE_CHECKPOINT_DIR or data/checkpoints)
    :return: a :class:`LoadedAdapter`; use its ``tokenizer`` for prompts
    """
    from peft import set_peft_model_state_dict

    from .checkpoints import CheckpointError, load_checkpoint

    path = adapter_path(name_or_path, folder)
    tensors, info = load_checkpoint(path)
    if info.get("kind") != ADAPTER_KIND:
        raise CheckpointError(path.with_name(path.name + ".json"), f"is not a LoRA adapter (its kind is "
                              f"{info.get('kind')!r}, not {ADAPTER_KIND!r})", "give the path of an adapter "
                              "saved with course_lib.lora.save_adapter")
    config = AdapterConfig.from_dict(info["adapter"])  # refuses a rank <= 0
    _check_not_fused(unet)
    if has_lora(unet):
        raise ValueError("The UNet already carries a LoRA adapter. Unload it first (unload_adapter).")

    # the shapes this model needs: A (r, d_in) and B (d_out, r) for every target layer, named as peft names them
    expected = {}
    for layer_name, layer in _target_layers(unet, config.target_modules).items():
        expected[f"{UNET_PREFIX}{layer_name}.lora_A.weight"] = (config.rank, layer.in_features)
        expected[f"{UNET_PREFIX}{layer_name}.lora_B.weight"] = (layer.out_features, config.rank)
    if config.token is not None:
        expected[TOKEN_EMBEDDING_KEY] = (1, text_encoder.get_input_embeddings().embedding_dim)
    _check_adapter_shapes(tensors, expected, path, info.get("base", {}))

    original_size = text_encoder.get_input_embeddings().num_embeddings
    new_tokenizer, token_id = tokenizer, None
    if config.token is not None:
        new_tokenizer, token_id = add_token(tokenizer, text_encoder, config.token, config.init_words)
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[token_id] = tensors[TOKEN_EMBEDDING_KEY][0]
    add_lora(unet, config)
    lora = {k[len(UNET_PREFIX):]: v for k, v in tensors.items() if k.startswith(UNET_PREFIX)}
    result = set_peft_model_state_dict(unet, lora, adapter_name=PEFT_ADAPTER_NAME)
    if getattr(result, "unexpected_keys", []):  # cannot happen after the shape check: a guard against a peft change
        raise RuntimeError(f"peft did not place {len(result.unexpected_keys)} adapter tensors, e.g. "
                           f"{result.unexpected_keys[0]}.")
    name = path.name[len(ADAPTER_PREFIX):] if path.name.startswith(ADAPTER_PREFIX) else path.name
    return LoadedAdapter(name=name, path=path, config=config, tokenizer=new_tokenizer, original_tokenizer=tokenizer,
                         original_vocab_size=original_size, token_id=token_id, info=info)


def unload_adapter(unet: nn.Module, text_encoder, loaded: LoadedAdapter):
    """Take an adapter off again: the UNet's LoRA layers out, the text encoder's table back to V rows.

    :return: the original tokenizer (without the word: it warns as unknown again)
    """
    if not isinstance(loaded, LoadedAdapter):
        raise TypeError(f"loaded must be what load_adapter returned, got {type(loaded).__name__}.")
    remove_lora(unet)
    if loaded.token_id is not None:
        remove_token(text_encoder, loaded.original_vocab_size)
    return loaded.original_tokenizer
