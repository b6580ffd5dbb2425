"""Convolutional and transformer stages of the efficient UNet (Fig. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import TransformerBlock


class SepConv(nn.Module):
    """Separable 3x3 conv (Fig. 2(c)): depthwise 3x3 -> pointwise to `expansion * out` -> [SiLU -> pointwise to `out`].

    `expansion == 1` is the plain SepConv (DW + PW). With `expansion > 1` the first pointwise conv widens the channels and
    a second one projects them back, which makes the residual block a Universal Inverted Bottleneck (UIB, MobileNetV4).
    The SiLU between the two pointwise convs is our choice: without a non-linearity they would collapse into one linear
    map, and UIB places its activation there.
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int = 1, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels)
        hidden = out_channels * expansion
        self.pointwise = nn.Conv2d(in_channels, hidden, 1)
        self.project = nn.Sequential(nn.SiLU(), nn.Conv2d(hidden, out_channels, 1)) if expansion > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.pointwise(self.depthwise(x)))


def conv3x3(in_channels: int, out_channels: int, kind: str, expansion: int, stride: int = 1) -> nn.Module:
    if kind == "sepconv":
        return SepConv(in_channels, out_channels, expansion, stride)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ResnetBlock(nn.Module):
    """SDXL's ResnetBlock2D: GN -> SiLU -> conv -> + time -> GN -> SiLU -> conv, with a 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int, conv: str, expansion: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv1 = conv3x3(in_channels, out_channels, conv, expansion)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-5)
        self.conv2 = conv3x3(out_channels, out_channels, conv, expansion)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class SpatialTransformer(nn.Module):
    """A stack of transformer blocks on a feature map: GN -> tokens -> blocks -> feature map, plus a residual.

    Unlike SDXL's Transformer2DModel there is no proj_in/proj_out linear around the stack (as in DiT and PixArt): our
    choice, which puts the final model at Table 1's 372M (with them it is 389M); the Fig. 3 deltas hold either way.
    `in_channels != channels` happens only for the first-stage blocks of Fig. 2(e) that replace residual blocks on the
    up path (their input is the concatenated skip): a 1x1 conv maps it to `channels` first, as a residual shortcut does.
    """

    def __init__(self, in_channels: int, channels: int, depth: int, context_dim: int, head_dim: int, groups: int,
                 multi_query: bool, self_attention: bool, ffn_ratio: float, qk_norm: str | None, rope: bool):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, channels, 1) if in_channels != channels else nn.Identity()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, context_dim, head_dim, multi_query, self_attention, ffn_ratio, qk_norm, rope)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C_in, H, W); context: (B, S, context_dim) -> (B, C, H, W)."""
        x = self.shortcut(x)
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        for block in self.blocks:
            h = block(h, context, context_mask, (H, W))
        return x + h.transpose(1, 2).unflatten(2, (H, W))  # (B, C, H, W)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (separable when the config says so: the pre-study replaced these too)."""

    def __init__(self, channels: int, conv: str, expansion: int):
        super().__init__()
        self.conv = conv3x3(channels, channels, conv, expansion, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling to the skip's size, then a 3x3 conv."""

    def __init__(self, channels: int, conv: str, expansion: int):
        super().__init__()
        self.conv = conv3x3(channels, channels, conv, expansion)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
