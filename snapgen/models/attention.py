"""Attention for the efficient UNet: MHSA or MQA, optional QK RMSNorm and 2-D RoPE (Sec. 3.1, Fig. 2(f))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROPE_THETA = 10_000.0  # RoFormer's base frequency


def rope_2d_angles(height: int, width: int, head_dim: int, device=None, theta: float = ROPE_THETA) -> torch.Tensor:
    """Rotation angles of 2-D RoPE for a `height x width` token grid (row-major, as `x.flatten(2)` orders tokens).

    RoPE (Su et al.) rotates pairs of channels by position x frequency. We extend it to two dimensions by giving the
    first half of each head's channels the row index and the second half the column index, so q·k depends only on the
    (row, column) offset between the two tokens and works for any latent size, square or not.

    Returns:
        angles: (height * width, head_dim // 2) float32.
    """
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float32, device=device) / quarter)  # (d/4,)
    rows = torch.arange(height, dtype=torch.float32, device=device)
    cols = torch.arange(width, dtype=torch.float32, device=device)
    row_angles = (rows[:, None] * freqs)[:, None, :].expand(height, width, quarter)  # (H, W, d/4)
    col_angles = (cols[:, None] * freqs)[None, :, :].expand(height, width, quarter)  # (H, W, d/4)
    return torch.cat([row_angles, col_angles], dim=-1).reshape(height * width, head_dim // 2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of `x` (B, heads, L, d) by `angles` (L, d/2). Computed in fp32."""
    dtype = x.dtype
    x = x.float().unflatten(-1, (-1, 2))  # (B, h, L, d/2, 2)
    cos, sin = angles.cos(), angles.sin()  # (L, d/2)
    x0, x1 = x[..., 0], x[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(dtype)


class Attention(nn.Module):
    """Self- or cross-attention.

    `kv_heads == heads` is multi-head attention; `kv_heads == 1` is multi-query attention (Shazeer 2019): one key and
    one value head shared by every query head, which removes most of the K/V projection weights (Sec. 3.1, MQA).

    Args:
        query_dim: width of the image tokens.
        context_dim: width of the condition tokens for cross-attention; None for self-attention.
        heads: number of query heads; head_dim: channels per head.
        kv_heads: number of key/value heads (heads or 1).
        qk_norm: "rmsnorm" to normalise queries and keys per head after projection, or None.
        rope: rotate queries and keys with 2-D RoPE (self-attention only: text tokens have no 2-D position).
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int, kv_heads: int,
                 qk_norm: str | None = None, rope: bool = False):
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
        if rope and context_dim is not None:
            raise ValueError("2-D RoPE applies to self-attention only")
        self.heads, self.head_dim, self.kv_heads, self.rope = heads, head_dim, kv_heads, rope
        kv_in = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, heads * head_dim, bias=False)
        self.to_k = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        self.to_v = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, query_dim)
        self.norm_q = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm == "rmsnorm" else nn.Identity()
        self.norm_k = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm == "rmsnorm" else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, L, query_dim) image tokens, row-major over `grid` = (height, width).
            context: (B, S, context_dim) condition tokens, or None for self-attention.
            context_mask: (B, S) bool, True where a condition token is real.
        Returns:
            (B, L, query_dim)
        """
        B, L, _ = x.shape
        kv_src = x if context is None else context
        q = self.to_q(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, h, L, d)
        k = self.to_k(kv_src).unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)  # (B, kvh, S, d)
        v = self.to_v(kv_src).unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)  # (B, kvh, S, d)
        q, k = self.norm_q(q), self.norm_k(k)
        if self.rope:
            angles = rope_2d_angles(*grid, self.head_dim, device=x.device)
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        if self.kv_heads != self.heads:
            # A broadcast view, not a copy: MQA's saving is in weights and K/V memory traffic.
            k = k.expand(B, self.heads, *k.shape[2:]) if self.kv_heads == 1 else k.repeat_interleave(self.heads // self.kv_heads, 1)
            v = v.expand(B, self.heads, *v.shape[2:]) if self.kv_heads == 1 else v.repeat_interleave(self.heads // self.kv_heads, 1)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, S)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, L, d)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLUFeedForward(nn.Module):
    """Gated FFN of SDXL's transformer blocks: Linear(C, 2rC) -> a * GELU(g) -> Linear(rC, C). r = `ratio` (Fig. 2(d))."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        inner = int(dim * ratio)
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: [self-attention] -> cross-attention -> gated FFN (SDXL's BasicTransformerBlock)."""

    def __init__(self, dim: int, context_dim: int, head_dim: int, multi_query: bool, self_attention: bool,
                 ffn_ratio: float, qk_norm: str | None, rope: bool):
        super().__init__()
        heads = dim // head_dim
        kv_heads = 1 if multi_query else heads
        self.norm1 = nn.LayerNorm(dim) if self_attention else None
        self.attn1 = Attention(dim, None, heads, head_dim, kv_heads, qk_norm, rope) if self_attention else None
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, head_dim, kv_heads, qk_norm, rope=False)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, ffn_ratio)

    def forward(self, x, context, context_mask, grid):
        if self.attn1 is not None:
            x = x + self.attn1(self.norm1(x), grid=grid)
        x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))
