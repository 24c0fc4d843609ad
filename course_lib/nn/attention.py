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
which is how the prompt steers every spatial position of the image (lesson 06).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "GEGLU", "FeedForward", "BasicTransformerBlock", "Transformer2DModel"]


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

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) queries; context: (B, L, D) keys and values, ``None`` for self-attention.

        Returns (B, N, C).
        """
        context = x if context is None else context
        B, N, _ = x.shape
        h = self.heads
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)  # (B, N, h*d), (B, L, h*d) x2
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
