"""Attention and the transformer block that lets the UNet look at a text prompt.

The pieces, inner to outer (names and submodule paths are diffusers', so Stable Diffusion's
weights load by key):

    Attention             softmax(Q K^T / sqrt(d)) V over several heads    (attn1, attn2)
    FeedForward           GEGLU: (x W + b) * GELU(x V + c), then a Linear  (ff)
    BasicTransformerBlock self-attention, cross-attention, feed-forward, each with a residual
    Transformer2DModel    (B, C, H, W) feature map -> H*W tokens -> blocks -> feature map

Notation (code name -> symbol):

    hidden_states          x, the image tokens, (B, N, C) with N = H * W
    encoder_hidden_states  c, the prompt tokens (e.g. CLIP's last hidden state), (B, L, D)
    to_q, to_k, to_v       W_Q, W_K, W_V;  Q = x W_Q,  K = c W_K,  V = c W_V
    heads, head_dim        h, d;  inner_dim = h * d

In self-attention K and V come from x itself; in cross-attention they come from the prompt c,
which is how the prompt steers every spatial position of the image (lesson 07).

``record_cross_attention(model)`` watches every cross-attention layer of a model and keeps the
attention probabilities softmax(Q K^T / sqrt(d)): where in the image each word of the prompt is
read (lesson 07 draws the map of "red" over the picture).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "GEGLU", "FeedForward", "BasicTransformerBlock", "Transformer2DModel",
           "attention_probs", "CrossAttentionMaps", "record_cross_attention", "fuse_projections"]


def attention_probs(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The attention weights softmax(Q K^T / sqrt(d)), per head: what SDPA computes and does not return.

    :param query: Q, (B, h, N, d)
    :param key: K, (B, h, L, d)
    :return: (B, h, N, L); each row (one query position) sums to 1 over the L keys
    """
    # A = softmax(Q K^T / sqrt(d)), the softmax over the keys (last axis)
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])  # (B, h, N, L)
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head (cross-)attention computed with ``F.scaled_dot_product_attention``.

    :param query_dim: channels C of the queries x
    :param cross_attention_dim: channels D of the context c; ``None`` for self-attention (D = C)
    :param heads: number of heads h
    :param dim_head: channels per head d
    :param dropout: dropout after the output projection
    :param upcast_attention: compute softmax(Q K^T / sqrt(d)) V in float32 when x is float16 or
        bfloat16 (SD 2.x sets it against overflow; diffusers' SDPA path ignores the flag, and in
        float32 it changes nothing)
    :param bias: give to_q, to_k, to_v a bias (False in the UNet; True in the VAE's mid-block
        attention, see course_lib.nn.vae)
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        upcast_attention: bool = False,
        bias: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.heads = heads
        self.upcast_attention = upcast_attention
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        # a list so that the output projection is "to_out.0" as in diffusers' checkpoints
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim), nn.Dropout(dropout)])
        self.is_self_attention = cross_attention_dim is None
        # fuse_projections(): [W_q; W_k; W_v] (self-attention) or [W_k; W_v] (cross-attention) as
        # one matrix; buffers that are not saved, so the state_dict keeps diffusers' keys
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Compute Q, K and V with one matrix multiply instead of three (inference only).

        Self-attention: [Q | K | V] = x [W_q | W_k | W_v]; cross-attention: [K | V] = c [W_k | W_v]
        (Q comes from x, the others from the prompt). The same arithmetic, in one larger GEMM
        that launches one kernel instead of three. The fused matrix is a copy taken now: after
        changing the weights (training, loading), call it again, or ``unfuse_projections()``.
        """
        layers = (self.to_q, self.to_k, self.to_v) if self.is_self_attention else (self.to_k, self.to_v)
        self.fused_weight = torch.cat([layer.weight for layer in layers])
        self.fused_bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None

    def unfuse_projections(self) -> None:
        """Back to three projections (after training, say); a no-op when not fused."""
        self.fused_weight = None
        self.fused_bias = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) queries; context: (B, L, D) keys and values, ``None`` for self-attention.

        Returns (B, N, C).
        """
        fused = self.fused_weight is not None
        if fused and self.is_self_attention and context is None:
            # one GEMM for Q, K and V (fuse_projections), then split: (B, N, 3*h*d) -> 3 x (B, N, h*d)
            q, k, v = F.linear(x, self.fused_weight, self.fused_bias).chunk(3, dim=-1)
            context = x
        elif fused and not self.is_self_attention and context is not None:
            q = self.to_q(x)
            k, v = F.linear(context, self.fused_weight, self.fused_bias).chunk(2, dim=-1)
        else:
            context = x if context is None else context
            q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)  # (B, N, h*d), (B, L, h*d) x2
        B, N, _ = x.shape
        h = self.heads
        q = q.view(B, -1, h, q.shape[-1] // h).transpose(1, 2)  # (B, h, N, d)
        k = k.view(B, -1, h, k.shape[-1] // h).transpose(1, 2)  # (B, h, L, d)
        v = v.view(B, -1, h, v.shape[-1] // h).transpose(1, 2)  # (B, h, L, d)
        dtype = q.dtype
        if self.upcast_attention and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        # Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V, per head
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        out = out.to(dtype).transpose(1, 2).reshape(B, N, -1)  # (B, N, h*d)
        for layer in self.to_out:  # Linear (B, N, C), then dropout
            out = layer(out)
        return out


class GEGLU(nn.Module):
    """Gated linear unit with a GELU gate (Shazeer 2020): GEGLU(x) = (x W + b) * GELU(x V + c).

    W and V are stored as one ``proj`` Linear of width 2 * dim_out, value half first.

    :param dim_in: input channels
    :param dim_out: output channels
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (..., dim_out) each
        # GEGLU(x) = (x W + b) * GELU(x V + c)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's MLP: GEGLU to ``mult * dim`` channels, dropout, Linear back to ``dim``.

    :param dim: channels C in and out
    :param mult: hidden width multiplier (4 in SD)
    :param dropout: dropout between the two layers
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim * mult
        # net.0.proj, net.1, net.2: the layout of diffusers' checkpoints
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block on image tokens x, optionally reading a context c:

        x = x + SelfAttention(LayerNorm1(x))
        x = x + CrossAttention(LayerNorm2(x), c)      (only when cross_attention_dim is set)
        x = x + FeedForward(LayerNorm3(x))

    :param dim: channels C of the tokens
    :param num_attention_heads: heads h
    :param attention_head_dim: channels per head d (h * d == C in the UNet)
    :param cross_attention_dim: channels D of the context; ``None``: no cross-attention
    :param upcast_attention: see :class:`Attention`
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int | None = None,
        upcast_attention: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, num_attention_heads, attention_head_dim, upcast_attention=upcast_attention)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(
                dim, cross_attention_dim, num_attention_heads, attention_head_dim, upcast_attention=upcast_attention
            )
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C); context: (B, L, D) or ``None``. Returns (B, N, C)."""
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            # with context=None this attends to x itself, as in diffusers (possible only when D == C)
            x = x + self.attn2(self.norm2(x), context)
        x = x + self.ff(self.norm3(x))
        return x


class Transformer2DModel(nn.Module):
    """Transformer blocks applied to a feature map, with a residual around the whole thing.

        h = proj_in(GroupNorm(x))          1x1 conv (or Linear with use_linear_projection)
        h = blocks(h viewed as H*W tokens, context)
        out = x + proj_out(h)

    :param in_channels: channels C of the feature map (also the token width)
    :param num_attention_heads: heads h; each head has C // h channels
    :param cross_attention_dim: channels D of the context, ``None`` for self-attention only
    :param num_layers: number of transformer blocks
    :param norm_num_groups: groups of the GroupNorm
    :param use_linear_projection: proj_in/proj_out as Linear on tokens (SD 2.x) instead of 1x1 convs
        (SD 1.x); the two compute the same function, only the weight shapes differ
    :param upcast_attention: see :class:`Attention`
    """

    def __init__(
        self,
        in_channels: int,
        num_attention_heads: int,
        cross_attention_dim: int | None = None,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        head_dim = in_channels // num_attention_heads
        inner_dim = num_attention_heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)  # eps fixed at 1e-6 as in diffusers
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(inner_dim, num_attention_heads, head_dim, cross_attention_dim, upcast_attention)
                for _ in range(num_layers)
            ]
        )
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W); context: (B, L, D) or ``None``. Returns (B, C, H, W)."""
        B, C, H, W = x.shape
        residual = x
        h = self.norm(x)
        if self.use_linear_projection:
            h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, C, H, W) -> (B, H*W, C)
            h = self.proj_in(h)  # (B, H*W, inner)
        else:
            h = self.proj_in(h)  # (B, inner, H, W)
            h = h.permute(0, 2, 3, 1).reshape(B, H * W, -1)  # (B, inner, H, W) -> (B, H*W, inner)
        for block in self.transformer_blocks:
            h = block(h, context)  # (B, H*W, inner)
        if self.use_linear_projection:
            h = self.proj_out(h)  # (B, H*W, C)
            h = h.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()  # (B, H*W, C) -> (B, C, H, W)
        else:
            h = h.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()  # (B, H*W, inner) -> (B, inner, H, W)
            h = self.proj_out(h)  # (B, C, H, W)
        return h + residual


# ----------------------------------------------------------------------------------------------
# Watching cross-attention: which image positions read which prompt token


class CrossAttentionMaps:
    """The cross-attention weights a model used, averaged over heads and calls, layer by layer.

    Filled by :func:`record_cross_attention`. For each cross-attention layer it keeps the running
    sum of A = softmax(Q K^T / sqrt(d)) averaged over the heads, (B, N, L), and how many calls it
    has seen (a sampling loop calls every layer once per step), so memory does not grow with the
    number of steps. B is the batch the UNet saw: with classifier-free guidance that is the batch
    of two, [unconditional half, conditional half].

    Attributes: ``sums`` {layer name: (B, N, L) float32 on the CPU}, ``calls`` {layer name: count}.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    @property
    def layer_names(self) -> list[str]:
        """The cross-attention layers seen, in the order they first ran."""
        return list(self.sums)

    def add(self, name: str, probs: torch.Tensor) -> None:
        """Add one call's weights (B, h, N, L) of layer ``name``."""
        mean_over_heads = probs.detach().float().mean(dim=1).cpu()  # (B, h, N, L) -> (B, N, L)
        if name in self.sums:
            if self.sums[name].shape != mean_over_heads.shape:
                raise ValueError(
                    f"Layer {name} was called with attention of shape {tuple(mean_over_heads.shape)} (B, N, L) after "
                    f"{tuple(self.sums[name].shape)}: the batch or the image size changed while recording. "
                    f"Record one sampling run per `with record_cross_attention(...)` block.")
            self.sums[name] += mean_over_heads
            self.calls[name] += 1
        else:
            self.sums[name] = mean_over_heads.clone()
            self.calls[name] = 1

    def layer_map(self, name: str) -> torch.Tensor:
        """The mean weights of one layer over its calls and heads, (B, N, L)."""
        if name not in self.sums:
            raise KeyError(f"No cross-attention layer {name!r} was recorded; recorded: {self.layer_names}.")
        return self.sums[name] / self.calls[name]

    def token_map(self, token_index: int, latent_size: tuple[int, int], size: tuple[int, int] | None = None,
                  layers: list[str] | None = None) -> torch.Tensor:
        """How much each image position attended to one prompt token, averaged over layers.

        Each layer works at its own resolution: the latent grid h x w, or h / 2^k x w / 2^k deeper in
        the UNet (N = h w / 4^k positions). Every layer's map is resized (bilinear) to ``size``, then
        the layers are averaged with equal weight.

        :param token_index: position of the token in the prompt's input_ids, e.g. that of "red"
        :param latent_size: (h, w) of the latents the UNet denoised (the grid of the first layer)
        :param size: (H, W) of the maps returned, e.g. the decoded image's (default: latent_size)
        :param layers: names of the layers to average (default: all recorded)
        :return: (B, H, W), each value the share of attention (in [0, 1]) that position gave the token
        """
        if not self.sums:
            raise ValueError("Nothing was recorded. Run the model inside "
                             "`with record_cross_attention(model) as maps:`.")
        height, width = latent_size
        size = tuple(size) if size is not None else (height, width)
        maps = []
        for name in layers if layers is not None else self.layer_names:
            mean = self.layer_map(name)  # (B, N, L)
            B, N, L = mean.shape
            if not -L <= token_index < L:
                raise IndexError(f"token_index {token_index} is outside the prompt's {L} tokens.")
            # the layer's grid: the latent grid shrunk by 2^k with N = (h / 2^k) (w / 2^k)
            shrink = round(math.sqrt(height * width / N))
            grid = (height // max(shrink, 1), width // max(shrink, 1))
            if grid[0] * grid[1] != N:
                raise ValueError(f"Layer {name} has {N} positions, which is no h / 2^k x w / 2^k grid of the "
                                 f"latent_size {latent_size}. Pass the (h, w) of the latents the model denoised.")
            layer = mean[:, :, token_index].reshape(B, 1, *grid)  # (B, N) -> (B, 1, h_k, w_k)
            maps.append(F.interpolate(layer, size=size, mode="bilinear", align_corners=False)[:, 0])
        return torch.stack(maps).mean(dim=0)  # (layers, B, H, W) -> (B, H, W)


def fuse_projections(model: nn.Module, fuse: bool = True) -> int:
    """Call ``fuse_projections()`` (or, with ``fuse=False``, ``unfuse_projections()``) on every
    :class:`Attention` layer of ``model`` (a UNet, a VAE); returns how many layers there were.
    The outputs do not change beyond float rounding (tests/test_attention_fusion.py)."""
    layers = [module for module in model.modules() if isinstance(module, Attention)]
    for layer in layers:
        layer.fuse_projections() if fuse else layer.unfuse_projections()
    return len(layers)


@contextlib.contextmanager
def record_cross_attention(model: nn.Module):
    """Record the attention weights of every cross-attention layer of ``model`` while inside the block.

        with record_cross_attention(pipe.unet) as maps:
            images = pipe("a red circle", guidance_scale=1)
        red = maps.token_map(token_index=2, latent_size=(8, 8), size=(64, 64))   # (1, 64, 64)

    A forward hook on each cross-attention :class:`Attention` (``...attn2``) recomputes
    A = softmax(Q K^T / sqrt(d)) from the layer's own inputs (``F.scaled_dot_product_attention``
    never returns A) and adds it to a :class:`CrossAttentionMaps`. The model's outputs do not
    change; the hooks are removed when the block ends, even after an error.

    :param model: any module holding course_lib ``Attention`` layers used with a context (the UNet)
    :return: (as the ``with`` target) the :class:`CrossAttentionMaps` being filled
    """
    maps = CrossAttentionMaps()

    def hook(name):
        def record(module: Attention, args, output):
            x, context = args[0], args[1] if len(args) > 1 else None
            if context is None:  # attn2 called without a prompt attends to x itself: not cross-attention
                return
            B, h = x.shape[0], module.heads
            with torch.no_grad():  # an observer: no graph, even when the model is being trained
                q = module.to_q(x)  # (B, N, h*d)
                k = module.to_k(context)  # (B, L, h*d)
                q = q.view(B, -1, h, q.shape[-1] // h).transpose(1, 2)  # (B, h, N, d)
                k = k.view(B, -1, h, k.shape[-1] // h).transpose(1, 2)  # (B, h, L, d)
                maps.add(name, attention_probs(q.float(), k.float()))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, Attention) and name.split(".")[-1] == "attn2"]
    if not handles:
        raise ValueError(f"{type(model).__name__} has no cross-attention layers (modules named attn2): nothing "
                         f"to record. Pass a UNet built with cross_attention_dim, such as pipe.unet.")
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
