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
``checkpoints.save_checkpoint``) whose config names the network ``"LoRAAdapter"``: the LoRA
weights under ``unet.*`` (and ``vae.*``, see below), the new token's embedding row as
``text_encoder.token_embedding`` (1, D), and under ``network_config`` the settings (rank, alpha,
target modules, the word, the base models). The adapter of a word W is the checkpoint
``shapes-lora-W`` of the checkpoint folder; ``load_adapter(..., "orange")`` finds it there.
The recipe ``shapes-lora-orange`` trains one with the course's training loop: :class:`AdaptedModel`
is the frozen model with its adapter, whose parameters and state are the adapter's alone.

The decoder. A new word also needs pictures the VAE can draw, and the shapes VAE never saw
orange: its encoder maps an orange picture to a latent E(x) that its decoder draws reddish (mean
RGB of the shape about (215, 74, 37) for a target of (235, 130, 30); the 7-colour judge reads 34 %
of them as orange), so a UNet trained on E(x) would be taught reddish latents. Moving the training
latents to ones the decoder draws orange (gradient steps on ||D(z) - x||^2 from E(x)) did not
help: they lie far from the latents the encoder makes (mean |z - E(x)| 0.54, latent std 0.77),
each picture's in its own direction, in a narrow region of the decoder, and UNets trained on them
(LoRA of rank 4 or 8, or the whole UNet) drew red or yellow shapes: orange in at most 49 % of seen
prompts (benchmarks/results/lora_orange_trials-2026-11-30.json). Here the
decoder learns instead: a LoRA update of rank 8 on every convolution of the decoder (about 75,000
numbers, 0.3 MB), trained on orange pictures and on as many six-colour ones (so that it keeps
drawing those), makes D'(E(x)) orange (judge: 98 % of 300 orange pictures), and the UNet learns E(x) of
orange pictures, which is smooth and consistent from picture to picture, like every latent it
knows. So the adapter carries the decoder's update too, and ``load_adapter`` needs the VAE for it
(``vae=``); the encoder is not changed, so img2img and inversion encode as before.

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
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoints import CheckpointError, checkpoint_dir, load_checkpoint, save_checkpoint
from .checks import check_int_range, check_number

__all__ = [
    "LORA_TARGET_MODULES",
    "ADAPTER_PREFIX",
    "ADAPTER_NETWORK",
    "AdaptedModelConfig",
    "AdaptedModel",
    "AdapterConfig",
    "LoadedAdapter",
    "lora_delta",
    "add_lora",
    "add_decoder_lora",
    "remove_lora",
    "has_lora",
    "lora_parameters",
    "tokenizer_with_word",
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
ADAPTER_NETWORK = "LoRAAdapter"  # config["network"] of an adapter checkpoint (networks.NETWORKS builds it for training)
TOKEN_EMBEDDING_KEY = "text_encoder.token_embedding"
UNET_PREFIX = "unet."
VAE_PREFIX = "vae."
# every convolution of the VAE's decoder (a regular expression peft matches against the whole module name)
DECODER_TARGET_MODULES = r"decoder\.(.*\.)?conv(1|2|_in|_out|_shortcut)?"
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
    :param decoder_rank: also a LoRA update of this rank (alpha = rank) on every convolution of the
        VAE's decoder (None: the VAE is not changed). Why an adapter may need it: see the module's
        docstring, "The decoder"
    """

    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    token: str | None = "orange"
    init_words: tuple[str, ...] = ("red", "yellow")
    decoder_rank: int | None = None

    def __post_init__(self):
        for name in ("rank", "decoder_rank"):
            value = getattr(self, name)
            if name == "decoder_rank" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"LoRA rank r must be a positive integer, got {name}={value!r}: the update B A has "
                                 f"rank r, so r = 0 would change nothing. Use r >= 1, e.g. {name}=4.")
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
                "token": self.token, "init_words": list(self.init_words), "decoder_rank": self.decoder_rank}

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


def _decoder_layers(vae: nn.Module) -> dict[str, nn.Conv2d]:
    """The convolutions of the VAE's decoder that the decoder's LoRA adapts (names as in the VAE)."""
    pattern = re.compile(DECODER_TARGET_MODULES)
    return {name: module for name, module in vae.named_modules()
            if isinstance(module, nn.Conv2d) and pattern.fullmatch(name)}


def add_decoder_lora(vae: nn.Module, rank: int) -> int:
    """Put LoRA layers (peft's) of rank r, alpha = r, on every convolution of the VAE's decoder; freeze the VAE.

    For a convolution the update is the same product, one (k x k) kernel per pair of channels:
    ΔW[o, i] = (alpha / r) sum_j B[o, j] A[j, i], A: (r, C_in, k, k), B: (C_out, r, 1, 1).
    The encoder is not adapted: E(x) stays what the UNet was trained on.

    :param vae: course_lib's AutoencoderKL
    :param rank: r
    :return: the number of trainable LoRA numbers
    """
    from peft import LoraConfig, inject_adapter_in_model

    check_int_range(rank, "rank", 1, hint="The decoder's LoRA rank; use e.g. 8.")
    if has_lora(vae):
        raise ValueError("The VAE already carries a LoRA adapter. Remove it first (remove_lora(vae), or "
                         "unload_adapter) before adding another.")
    if not _decoder_layers(vae):
        raise ValueError("The VAE has no decoder convolutions named like 'decoder.up_blocks.0.resnets.0.conv1': "
                         "give course_lib's AutoencoderKL (or diffusers').")
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=DECODER_TARGET_MODULES, lora_dropout=0.0,
                        bias="none", init_lora_weights=True)
    inject_adapter_in_model(config, vae, adapter_name=PEFT_ADAPTER_NAME)
    return sum(p.numel() for p in lora_parameters(vae))


# ---------------------------------------------------------------------------------------------
# The new token
# ---------------------------------------------------------------------------------------------

def tokenizer_with_word(tokenizer, word: str):
    """A copy of the tokenizer that knows ``word`` as one more token (the tokenizer given is unchanged).

    :return: (the extended tokenizer, the word's id = the old vocabulary size V)
    """
    from tokenizers import AddedToken

    vocabulary = tokenizer.get_vocab()
    if word in vocabulary:
        raise ValueError(f"{word!r} is already in the tokenizer's vocabulary (id {vocabulary[word]}): nothing to "
                         f"add. Pick a new word, or unload the adapter that added it.")
    extended = copy.deepcopy(tokenizer)
    # single_word: "oranges" stays unknown instead of becoming "orange" + "s"
    extended.add_tokens([AddedToken(word, single_word=True, normalized=True)])
    token_id = extended.convert_tokens_to_ids(word)
    if token_id != len(tokenizer):
        raise ValueError(f"The new word got id {token_id}, expected {len(tokenizer)} (the next free id). The "
                         f"tokenizer already has added tokens; start from the course's caption tokenizer.")
    return extended, token_id


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
    vocabulary = tokenizer.get_vocab()
    missing = [w for w in init_words if w not in vocabulary]
    if missing or not init_words:
        raise ValueError(f"init_words {list(init_words)} must be words of the vocabulary (missing: {missing}). "
                         f"Use words such as ('red', 'yellow').")
    embedding = text_encoder.get_input_embeddings()
    old_size = embedding.num_embeddings
    if len(tokenizer) != old_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the text encoder's table has {old_size} "
                         f"rows. Use the tokenizer the text encoder was trained with.")
    extended, token_id = tokenizer_with_word(tokenizer, word)
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

def adapter_state_dict(unet: nn.Module, text_encoder=None, token_id: int | None = None,
                       vae: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors: ``unet.<layer>.lora_A.weight`` (r, d_in), ``unet.<layer>.lora_B.weight``
    (d_out, r) for every adapted layer, ``text_encoder.token_embedding`` (1, D) when a token was added,
    and ``vae.<layer>.lora_A.weight`` (r, C_in, k, k), ``vae.<layer>.lora_B.weight`` (C_out, r, 1, 1)
    when the decoder is adapted."""
    from peft import get_peft_model_state_dict

    if not has_lora(unet):
        raise ValueError("The UNet carries no LoRA adapter: nothing to save. Add one with add_lora(unet, config).")
    tensors = {UNET_PREFIX + key: value.detach().cpu().contiguous()
               for key, value in get_peft_model_state_dict(unet, adapter_name=PEFT_ADAPTER_NAME).items()}
    if vae is not None:
        tensors.update({VAE_PREFIX + key: value.detach().cpu().contiguous()
                        for key, value in get_peft_model_state_dict(vae, adapter_name=PEFT_ADAPTER_NAME).items()})
    if token_id is not None:
        row = text_encoder.get_input_embeddings().weight[token_id:token_id + 1]
        tensors[TOKEN_EMBEDDING_KEY] = row.detach().cpu().contiguous()
    return tensors


def _adapter_checkpoint_config(config: AdapterConfig, tensors: dict, token_id: int | None, base: dict | None,
                               **network_config) -> dict:
    """The JSON of an adapter checkpoint: which network ("LoRAAdapter"), its settings, what it was trained on."""
    return {
        "network": ADAPTER_NETWORK,
        "network_config": {"adapter": config.to_dict(), "base": dict(base or {}), **network_config},
        "token_id": token_id,
        "num_parameters": {"lora": sum(v.numel() for k, v in tensors.items() if k.startswith(UNET_PREFIX)),
                           "decoder_lora": sum(v.numel() for k, v in tensors.items() if k.startswith(VAE_PREFIX)),
                           "token_embedding": tensors[TOKEN_EMBEDDING_KEY].numel() if token_id is not None else 0},
    }


def save_adapter(path: str | os.PathLike, unet: nn.Module, config: AdapterConfig, text_encoder=None,
                 token_id: int | None = None, base: dict | None = None, info: dict | None = None,
                 vae: nn.Module | None = None) -> Path:
    """Save an adapter as a course checkpoint (X.safetensors + X.json, written as one unit).

    The training loop writes the same files for an :class:`AdaptedModel` (recipe shapes-lora-orange);
    this function saves an adapter trained by hand.

    :param path: X, e.g. data/checkpoints/shapes-lora-orange
    :param unet: the UNet with its LoRA layers
    :param config: the adapter's settings
    :param text_encoder: with ``token_id``: the text encoder whose new row is saved
    :param token_id: the new word's id (None when config.token is None)
    :param base: the base models it was trained on, e.g. {"unet": "shapes-ldm", "text_encoder": "shapes-clip"}
    :param info: more JSON-ready facts for the config (training settings, time, metrics)
    :param vae: the VAE with its decoder's LoRA layers (exactly when config.decoder_rank is set)
    :return: the weights file
    """
    if (config.token is None) != (token_id is None):
        raise ValueError(f"config.token is {config.token!r} but token_id is {token_id!r}: give the new word's id "
                         f"exactly when the adapter adds a word.")
    if (config.decoder_rank is None) != (vae is None):
        raise ValueError(f"config.decoder_rank is {config.decoder_rank!r}: give the VAE exactly when the adapter "
                         f"adapts its decoder.")
    tensors = adapter_state_dict(unet, text_encoder, token_id, vae)
    checkpoint = {**_adapter_checkpoint_config(config, tensors, token_id, base), **(info or {})}
    checkpoint.setdefault("step", None)
    return save_checkpoint(path, tensors, checkpoint)


# ---------------------------------------------------------------------------------------------
# Training an adapter with the course's training loop
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdaptedModelConfig:
    """The "network_config" of an :class:`AdaptedModel`: the adapter, the frozen models under it, how it learns.

    :param adapter: rank, alpha, target modules, the new word
    :param base: checkpoint names of the frozen models in the checkpoint folder, {"unet": "shapes-ldm",
        "text_encoder": "shapes-clip", "tokenizer": "shapes-tokenizer"}
    :param token_scale: s of the new row's parametrisation e_w = s theta (theta trained, from e_0 / s):
        with AdamW, whose steps are about lr whatever the gradient's size, the row moves s times as
        fast as the LoRA weights at the same learning rate (textual inversion needs a larger step).
        A power of two, so that e_w / s gives theta back bit for bit (exact ``--resume``)
    :param train_unet: train every weight of the UNet instead of LoRA layers (lesson 11's comparison;
        the "adapter" is then the whole UNet, not loadable by :func:`load_adapter`)
    """

    adapter: AdapterConfig = AdapterConfig()
    base: dict = field(default_factory=dict)
    token_scale: float = 8.0
    train_unet: bool = False

    def __post_init__(self):
        if not isinstance(self.adapter, AdapterConfig):
            raise TypeError(f"adapter must be an AdapterConfig, got {type(self.adapter).__name__}.")
        missing = [key for key in ("unet", "text_encoder", "tokenizer") if key not in self.base]
        if missing:
            raise ValueError(f"base must name the frozen models' checkpoints, missing {missing}. Example: "
                             f"{{'unet': 'shapes-ldm', 'text_encoder': 'shapes-clip', 'tokenizer': 'shapes-tokenizer'}}.")
        scale = check_number(self.token_scale, "token_scale", hint="e.g. token_scale=8.0")
        if scale <= 0 or math.frexp(scale)[0] != 0.5:
            raise ValueError(f"token_scale must be a positive power of two (the row is token_scale * theta, and "
                             f"e_w / token_scale must give theta back exactly), got {scale}. Use e.g. 8.0.")

    def to_dict(self) -> dict:
        return {"adapter": self.adapter.to_dict(), "base": dict(self.base), "token_scale": self.token_scale,
                "train_unet": self.train_unet}

    @classmethod
    def from_dict(cls, config: dict) -> "AdaptedModelConfig":
        config = dict(config)
        return cls(adapter=AdapterConfig.from_dict(config.pop("adapter")), **config)


class AdaptedModel(nn.Module):
    """A frozen UNet and text encoder with an adapter in training: what the training loop trains for an adapter.

    The course's one training loop (``train.train``) optimises ``model.parameters()`` and saves
    ``model.state_dict()``. For an adapter both are the adapter's alone:

    * ``parameters()`` yields only what is trained: the LoRA matrices A, B (or every UNet weight
      with ``train_unet``) and theta, the new row divided by s; the base weights are frozen and belong
      to their own checkpoints;
    * ``state_dict()`` is the adapter file's tensors, ``unet.<layer>.lora_A.weight`` ... and
      ``text_encoder.token_embedding`` = s theta, (1, D); ``load_state_dict`` reads them back
      (``--resume``).

    The new word's row is not a row of the embedding table while training: a forward hook on the
    table puts e_w = s theta at the word's positions, so the table (and every other row of
    the text encoder) is never written.

    :param unet: the base UNet (its own copy: LoRA layers are put into it)
    :param tokenizer: the base caption tokenizer
    :param text_encoder: the base CLIPTextModel (its own copy: its table grows by one row)
    :param config: an :class:`AdaptedModelConfig`
    :param vae: the base VAE (its own copy), when ``config.adapter.decoder_rank`` is set: its
        decoder gets LoRA layers, trained on pictures (``losses.adapter_latent_diffusion_loss``)
    """

    def __init__(self, unet: nn.Module, tokenizer, text_encoder, config: AdaptedModelConfig,
                 vae: nn.Module | None = None):
        super().__init__()
        if (config.adapter.decoder_rank is None) != (vae is None):
            raise ValueError(f"decoder_rank is {config.adapter.decoder_rank!r}: give the VAE exactly when the "
                             f"adapter adapts its decoder.")
        self.config = config
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        text_encoder.requires_grad_(False)
        if vae is not None:
            add_decoder_lora(vae, config.adapter.decoder_rank)  # freezes the VAE's own weights
        self.tokenizer, self.token_id = tokenizer, None
        token = config.adapter.token
        if token is not None:
            self.tokenizer, self.token_id = add_token(tokenizer, text_encoder, token, config.adapter.init_words)
            table = text_encoder.get_input_embeddings()
            start = table.weight[self.token_id:self.token_id + 1].detach().clone()  # e_0, (1, D)
            self.token_theta = nn.Parameter(start / config.token_scale)  # theta, (1, D): e_w = e_0 at the start
            table.register_forward_hook(self._put_new_row)
        if config.train_unet:
            unet.requires_grad_(True)
        else:
            add_lora(unet, config.adapter)  # freezes the UNet's own weights

    def token_embedding(self) -> torch.Tensor:
        """e_w = s theta, (1, D)."""
        # e_w = s θ
        return self.config.token_scale * self.token_theta

    def _put_new_row(self, module, args, output):
        # the table's output (B, L, D) with e_w at the positions of the new word
        is_word = (args[0] == self.token_id)[..., None]
        return torch.where(is_word, self.token_embedding().to(output.dtype), output)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Only the trained parameters (``parameters()`` and the optimizer see these)."""
        for name, parameter in super().named_parameters(prefix, recurse, remove_duplicate):
            if parameter.requires_grad:
                yield name, parameter

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The adapter's tensors (see the class docstring), detached, on the CPU (a skeleton's stay on the meta device)."""
        from peft import get_peft_model_state_dict

        unet = (self.unet.state_dict() if self.config.train_unet
                else get_peft_model_state_dict(self.unet, adapter_name=PEFT_ADAPTER_NAME))
        tensors = {UNET_PREFIX + key: value for key, value in unet.items()}
        if self.vae is not None:
            tensors.update({VAE_PREFIX + key: value for key, value in
                            get_peft_model_state_dict(self.vae, adapter_name=PEFT_ADAPTER_NAME).items()})
        if self.token_id is not None:
            tensors[TOKEN_EMBEDDING_KEY] = self.token_embedding()
        return {key: value.detach() if value.is_meta else value.detach().cpu().contiguous()
                for key, value in tensors.items()}

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Put saved adapter tensors back (the keys of :meth:`state_dict`, checked first)."""
        expected = self.state_dict()
        wrong = sorted(set(expected) ^ set(state_dict)) + sorted(
            key for key in set(expected) & set(state_dict) if expected[key].shape != state_dict[key].shape)
        if wrong:
            raise ValueError(f"These adapter tensors are missing, unexpected or of another shape: {wrong[:3]}"
                             f"{' ...' if len(wrong) > 3 else ''}. Load tensors saved by this recipe's model.")
        with torch.no_grad():
            if self.config.train_unet:
                self.unet.load_state_dict({k[len(UNET_PREFIX):]: v for k, v in state_dict.items()
                                           if k.startswith(UNET_PREFIX)})
            else:
                lora = {UNET_PREFIX + key: p for key, p in _lora_parameters_by_key(self.unet)}
                for key, value in state_dict.items():
                    if key.startswith(UNET_PREFIX):
                        lora[key].copy_(value)
            if self.vae is not None:
                lora = {VAE_PREFIX + key: p for key, p in _lora_parameters_by_key(self.vae)}
                for key, value in state_dict.items():
                    if key.startswith(VAE_PREFIX):
                        lora[key].copy_(value)
            if self.token_id is not None:
                # θ = e_w / s (exact: s is a power of two)
                self.token_theta.copy_(state_dict[TOKEN_EMBEDDING_KEY] / self.config.token_scale)
        return None


def _lora_parameters_by_key(unet: nn.Module):
    """(key of peft's adapter state dict, parameter): "<layer>.lora_A.weight" for "<layer>.lora_A.default.weight"."""
    suffix = f".{PEFT_ADAPTER_NAME}.weight"
    for name, parameter in unet.named_parameters():
        if (".lora_A." in name or ".lora_B." in name) and name.endswith(suffix):
            yield name[:-len(suffix)] + ".weight", parameter


def _checkpoint_folder(folder) -> Path:
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
    vae: nn.Module | None = None  # the VAE whose decoder it adapted (None: the VAE is unchanged)


def _check_adapter_shapes(tensors: dict, expected: dict, path: Path, base: dict) -> None:
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
                 folder: str | os.PathLike | None = None, vae: nn.Module | None = None) -> LoadedAdapter:
    """Put a saved adapter on a UNet and a text encoder: the LoRA layers, and the new word.

    The UNet gets peft's LoRA layers with the saved A and B; the text encoder's table grows by the
    saved row; the returned ``tokenizer`` knows the word (the one passed in is not changed). On any
    error nothing is changed.

    :param unet: the base UNet (no adapter, projections not fused)
    :param tokenizer: the base caption tokenizer
    :param text_encoder: the base text encoder (CLIPTextModel)
    :param name_or_path: a word with an adapter in the checkpoint folder ("orange"), or a path
    :param folder: the checkpoint folder (default: $COURSE_CHECKPOINT_DIR or data/checkpoints)
    :param vae: the base VAE; needed for an adapter that also adapts the decoder (``decoder_rank``),
        ignored otherwise
    :return: a :class:`LoadedAdapter`; use its ``tokenizer`` for prompts
    """
    from peft import set_peft_model_state_dict

    path = adapter_path(name_or_path, folder)
    tensors, info = load_checkpoint(path)
    network_config = info.get("network_config") or {}
    if info.get("network") != ADAPTER_NETWORK or network_config.get("train_unet") or "adapter" not in network_config:
        raise CheckpointError(path.with_name(path.name + ".json"), f"is not a LoRA adapter (its network is "
                              f"{info.get('network')!r}{', a whole UNet' if network_config.get('train_unet') else ''}; "
                              f"an adapter's is {ADAPTER_NETWORK!r} with an 'adapter' entry)",
                              "give the path of an adapter trained by the recipe shapes-lora-orange or saved with "
                              "course_lib.lora.save_adapter")
    config = AdapterConfig.from_dict(network_config["adapter"])  # refuses a rank <= 0
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
    if config.decoder_rank is not None:
        if vae is None:
            raise ValueError(f"The adapter {path} also adapts the VAE's decoder (decoder_rank "
                             f"{config.decoder_rank}): pass the VAE too, load_adapter(..., vae=pipe.vae).")
        if has_lora(vae):
            raise ValueError("The VAE already carries a LoRA adapter. Unload it first (unload_adapter).")
        for layer_name, layer in _decoder_layers(vae).items():
            expected[f"{VAE_PREFIX}{layer_name}.lora_A.weight"] = (config.decoder_rank, layer.in_channels,
                                                                   *layer.kernel_size)
            expected[f"{VAE_PREFIX}{layer_name}.lora_B.weight"] = (layer.out_channels, config.decoder_rank, 1, 1)
    _check_adapter_shapes(tensors, expected, path, network_config.get("base", {}))

    original_size = text_encoder.get_input_embeddings().num_embeddings
    new_tokenizer, token_id = tokenizer, None
    if config.token is not None:
        new_tokenizer, token_id = add_token(tokenizer, text_encoder, config.token, config.init_words)
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[token_id] = tensors[TOKEN_EMBEDDING_KEY][0]
    add_lora(unet, config)
    adapted = [(unet, UNET_PREFIX)]
    if config.decoder_rank is not None:
        add_decoder_lora(vae, config.decoder_rank)
        adapted.append((vae, VAE_PREFIX))
    for model, prefix in adapted:
        lora = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        result = set_peft_model_state_dict(model, lora, adapter_name=PEFT_ADAPTER_NAME)
        if getattr(result, "unexpected_keys", []):  # cannot happen after the shape check: a guard against a peft change
            raise RuntimeError(f"peft did not place {len(result.unexpected_keys)} adapter tensors, e.g. "
                               f"{result.unexpected_keys[0]}.")
    name = path.name[len(ADAPTER_PREFIX):] if path.name.startswith(ADAPTER_PREFIX) else path.name
    return LoadedAdapter(name=name, path=path, config=config, tokenizer=new_tokenizer, original_tokenizer=tokenizer,
                         original_vocab_size=original_size, token_id=token_id, info=info,
                         vae=vae if config.decoder_rank is not None else None)


def unload_adapter(unet: nn.Module, text_encoder, loaded: LoadedAdapter):
    """Take an adapter off again: the UNet's LoRA layers out (and the decoder's, from the VAE it was
    loaded into), the text encoder's table back to V rows.

    :return: the original tokenizer (without the word: it warns as unknown again)
    """
    if not isinstance(loaded, LoadedAdapter):
        raise TypeError(f"loaded must be what load_adapter returned, got {type(loaded).__name__}.")
    remove_lora(unet)
    if loaded.vae is not None:
        remove_lora(loaded.vae)
    if loaded.token_id is not None:
        remove_token(text_encoder, loaded.original_vocab_size)
    return loaded.original_tokenizer
