"""The tiny decoder of Sec. 3.2 (Fig. 4 (b), Table 2) and its architecture registry (profiled by `snapgen.profile`).

`TinyDecoder` maps a 16-channel SD3 latent (f = 8) to RGB, built by the paper's five rules applied to the SD3 decoder
(`snapgen.models.autoencoders.SD3_VAE_CONFIG`: widths 512/512/256/128 from the 128x128 stage up to the 1024x1024
stage, a mid block with self-attention, 3 ResnetBlock2D per stage, GroupNorm before every conv, 1x1 conv shortcuts
where the width changes):

1. no attention (SD3 has one self-attention layer in its mid block);
2. a minimal number of GroupNorms: one per residual block in the lowest-resolution stage only (3 in all, at 128x128,
   where they cost 1/64 of what they would at the output resolution); none at 256-1024 and no `norm_out`;
3. thinner, with SepConvs: the SD3 widths halved, (256, 256, 128, 64), keeping SD3's 4:4:2:1 ratio; every residual
   block is one SepConv (depthwise 3x3 -> pointwise, `snapgen.models.blocks.SepConv`) with a pre-activation;
4. fewer residual blocks in the high-resolution stages: (3, 2, 2, 1) from 128x128 up to 1024x1024 (SD3: 2+3, 3, 3, 3);
5. no conv shortcut in residual blocks (they never change width); the upsampler (nearest x2 then a dense 3x3 conv)
   changes the width from one stage to the next.

Measured (`python -m snapgen.profile decoder --arch tiny`; fvcore as shipped = `gflops_fvcore_default`, the
convention under which the SD3/SDXL decoders give Table 2's 4970 GFLOPs) for a 128x128 latent: **1,381,443 params
(1.38M; paper 1.38M, +0.1%) and 222.3 GFLOPs (paper 224, -0.8%)**.

How the config was chosen (the search; `python -m snapgen.models.decoder search` reruns it). The space: four stages,
widths c_i in multiples of 16 up to 512 and non-increasing towards high resolution; residual blocks per stage b_i in
0..5, non-increasing (rule 4); residual blocks of one or two SepConvs (ResnetBlock2D has two convs); upsampler conv
dense or SepConv. Params and fvcore FLOPs of every point come from closed forms (`analytic_cost`, checked against the
built model and fvcore in tests/test_decoder.py). Findings:
- Both targets together pin down where the compute sits: 224 GFLOPs / 1.38M params = 162k uses per parameter on
  average, i.e. most parameters must run at 512x512 and 1024x1024, which thin SepConv blocks cannot supply. With SD3's
  width ratio and SepConv upsamplers no point comes within 5% of both targets; with dense upsamplers the SD3 widths
  halved, (256, 256, 128, 64), are the only uniform scaling of SD3 that does (the three dense upsamplers are 959k
  params and 193 GFLOPs, 86% of the total: the channel transition of rule 5 carries the decoder's capacity).
- Hundreds of irregular width/block combinations also meet 1%/3% (e.g. (192, 192, 192, 32) x (4, 2, 2, 0)); we do
  not pick among them by the numbers. We keep SD3's topology and ratio (rule 3 says "thinner", not "reshaped") and
  let the residual blocks absorb the remainder: with two-SepConv blocks the choices at halved widths are (1,1,1,1)
  = 1.32M/226 G (-4.5% params) or (2,1,1,1) = 1.45M/228 G (+5.4%); with one-SepConv blocks, (3, 2, 2, 1) gives
  1.381M/222 GFLOPs, within 0.1% and 0.8%. So ours is the halved SD3 decoder, one-SepConv residual blocks
  (3, 2, 2, 1), dense upsamplers, GroupNorm only at the lowest resolution.
- An all-SepConv decoder at the same widths (`tiny_sepconv_upsample`) is 0.54M params and 52 GFLOPs: the paper's
  224 GFLOPs cannot come from SepConvs alone at these widths.
The paper does not publish Fig. 4 (b)'s widths or block counts; these are our reconstruction, and the registry
below holds the variants that ablate each rule.

Latents: the decoder takes the diffusion model's normalised latent (SD3: `(z - 0.0609) * 1.5305`, what the UNet
generates and what TAESD3's encoder outputs); `scaling_factor` / `shift_factor` are kept in the config for callers
that hold raw VAE latents. Output: RGB in about [-1, 1] (diffusers convention), not clamped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .autoencoders import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR
from .blocks import SepConv

LATENT_CHANNELS = 16  # Sec. 3.2: "f, c as 8, 16 in SD3"
UPSAMPLE_CONVS = ("conv", "sepconv")
CHANNEL_TRANSITIONS = ("upsample", "shortcut")

# Table 2 target for ours (paper): 1.38M params, 224 GFLOPs at a 128x128 latent.
PAPER_PARAMS_M = 1.38
PAPER_GFLOPS = 224.0


class SepConvResBlock(nn.Module):
    """One residual block: `x + SepConv(SiLU(norm(x)))`, norm = GroupNorm or identity (rule 2).

    Pre-activation as diffusers' ResnetBlock2D (norm -> act -> conv), with one SepConv in place of its two dense convs
    (rule 3). The shortcut is the identity (rule 5); only the `shortcut` channel-transition ablation gives the first
    block of a stage a different output width and a 1x1 conv shortcut, as SD3's decoder has.

    Args:
        in_channels (`int`), out_channels (`int`): widths; equal except in the `shortcut` ablation.
        expansion (`int`): SepConv pointwise expansion (1 = DW -> PW; > 1 = UIB, see `SepConv`).
        norm_groups (`int` or `None`): GroupNorm groups, or None for no norm.
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int, norm_groups: int | None):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, in_channels, eps=1e-6) if norm_groups else nn.Identity()
        self.conv = SepConv(in_channels, out_channels, expansion)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        return self.shortcut(x) + self.conv(F.silu(self.norm(x)))


class UpsampleConv(nn.Module):
    """Nearest x2, then a 3x3 conv (dense or SepConv) that also changes the width (rule 5)."""

    def __init__(self, in_channels: int, out_channels: int, kind: str):
        super().__init__()
        if kind == "conv":
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        else:
            self.conv = SepConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _groups(channels: int, norm_num_groups: int) -> int:
    return norm_num_groups if channels % norm_num_groups == 0 else 1


class TinyDecoder(ModelMixin, ConfigMixin):
    """Sec. 3.2 tiny decoder: `(B, 16, h, w)` normalised SD3 latent -> `(B, 3, 8h, 8w)` RGB in about [-1, 1].

    Args:
        latent_channels (`int`): latent channels (16 for SD3).
        out_channels (`int`): image channels.
        block_out_channels (`tuple[int, ...]`): width of each stage, lowest resolution first; one x2 upsampler
            between consecutive stages, so `len - 1` of them (3 for f = 8).
        layers_per_block (`tuple[int, ...]`): residual blocks per stage, lowest resolution first (0 allowed).
        block_expansion (`int`): SepConv expansion inside residual blocks (1 = plain DW -> PW).
        norm_stages (`tuple[bool, ...]`): whether the residual blocks of each stage start with a GroupNorm.
        norm_out (`bool`): GroupNorm before the output conv (SD3 has one).
        norm_num_groups (`int`): groups of every GroupNorm (1 when the width is not divisible).
        upsample_conv (`str`): 'conv' (dense 3x3) or 'sepconv' for the upsamplers' conv.
        channel_transition (`str`): 'upsample' (rule 5: the upsampler changes the width) or 'shortcut' (ablation:
            the upsampler keeps the width and the first block of the next stage changes it, with a 1x1 shortcut).
        mid_attention (`bool`): ablation of rule 1: a single-head self-attention (SD3's mid block's) after the
            first residual block of the lowest-resolution stage.
        scaling_factor (`float`), shift_factor (`float`): the SD3 latent normalisation the input is in; metadata for
            callers holding raw VAE latents (`normalize_latent`).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = LATENT_CHANNELS,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (256, 256, 128, 64),
        layers_per_block: tuple[int, ...] = (3, 2, 2, 1),
        block_expansion: int = 1,
        norm_stages: tuple[bool, ...] = (True, False, False, False),
        norm_out: bool = False,
        norm_num_groups: int = 32,
        upsample_conv: str = "conv",
        channel_transition: str = "upsample",
        mid_attention: bool = False,
        scaling_factor: float = SD3_SCALING_FACTOR,
        shift_factor: float = SD3_SHIFT_FACTOR,
    ):
        super().__init__()
        widths, blocks, norms = tuple(block_out_channels), tuple(layers_per_block), tuple(norm_stages)
        if not (len(widths) == len(blocks) == len(norms)) or len(widths) < 1:
            raise ValueError(f"block_out_channels {widths}, layers_per_block {blocks} and norm_stages {norms} must "
                             f"have one entry per stage (the same length >= 1)")
        if upsample_conv not in UPSAMPLE_CONVS:
            raise ValueError(f"upsample_conv={upsample_conv!r}; valid choices: {UPSAMPLE_CONVS}")
        if channel_transition not in CHANNEL_TRANSITIONS:
            raise ValueError(f"channel_transition={channel_transition!r}; valid choices: {CHANNEL_TRANSITIONS}")
        if channel_transition == "shortcut" and any(b == 0 for b in blocks[1:]):
            raise ValueError(f"channel_transition='shortcut' needs a residual block in every stage after the first "
                             f"to change the width, got layers_per_block={blocks}")
        if mid_attention and blocks[0] < 1:
            raise ValueError(f"mid_attention needs a residual block in the first stage, got layers_per_block={blocks}")
        if any(w < 1 for w in widths) or any(b < 0 for b in blocks):
            raise ValueError(f"widths must be >= 1 and block counts >= 0, got {widths} / {blocks}")

        self.conv_in = nn.Conv2d(latent_channels, widths[0], 3, padding=1)
        self.stages = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        self.mid_attn = None  # module names differ from config keys: ModelMixin.__getattr__ looks in the config first
        width = widths[0]
        for i, (stage_width, num_blocks, norm) in enumerate(zip(widths, blocks, norms)):
            stage = nn.ModuleList()
            for j in range(num_blocks):
                groups = _groups(width, norm_num_groups) if norm else None
                stage.append(SepConvResBlock(width, stage_width, block_expansion, groups))
                width = stage_width
            self.stages.append(stage)
            if i + 1 < len(widths):
                up_width = widths[i + 1] if channel_transition == "upsample" else width
                self.upsamplers.append(UpsampleConv(width, up_width, upsample_conv))
                width = up_width
        if mid_attention:
            from diffusers.models.attention_processor import Attention

            self.mid_attn = Attention(widths[0], heads=1, dim_head=widths[0], eps=1e-6,
                                      norm_num_groups=_groups(widths[0], norm_num_groups),
                                      residual_connection=True, bias=True, upcast_softmax=True,
                                      _from_deprecated_attn_block=True)
        self.out_norm = nn.GroupNorm(_groups(width, norm_num_groups), width, eps=1e-6) if norm_out else nn.Identity()
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def normalize_latent(self, raw_latent: torch.Tensor) -> torch.Tensor:
        """Raw SD3 VAE latent -> the normalised latent this decoder takes: `(z - shift) * scale`."""
        return (raw_latent - self.config.shift_factor) * self.config.scaling_factor

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode.

        Args:
            latent (`torch.Tensor` of shape `(B, latent_channels, h, w)`): normalised latent; any h, w.

        Returns:
            `torch.Tensor` of shape `(B, out_channels, f*h, f*w)` with f = 2 ** (stages - 1): RGB in about [-1, 1].
        """
        if latent.ndim != 4 or latent.shape[1] != self.config.latent_channels:
            raise ValueError(f"latent must have shape (B, {self.config.latent_channels}, h, w), "
                             f"got {tuple(latent.shape)}")
        x = self.conv_in(latent)  # (B, c0, h, w)
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
                if i == 0 and j == 0 and self.mid_attn is not None:
                    x = self.mid_attn(x)
            if i < len(self.upsamplers):
                x = self.upsamplers[i](x)  # (B, c_{i+1}, 2H, 2W)
        return self.conv_out(F.silu(self.out_norm(x)))


# ---- closed-form cost (for the design-space search; checked against the model and fvcore in tests) -----------------


def analytic_cost(cfg: dict[str, Any], latent: tuple[int, int] = (128, 128)) -> dict[str, float]:
    """Params and fvcore-default FLOPs of `TinyDecoder(**cfg)` without building it (no attention).

    fvcore counts one multiply-add as one FLOP for convs (bias not counted), 5 per element for an affine GroupNorm
    and 1 per output element for nearest upsampling; activations and residual adds are not counted.

    Returns:
        `dict(params, gflops)`.
    """
    full = {**default_config(), **cfg}
    if full["mid_attention"]:
        raise ValueError("analytic_cost does not model mid_attention; count that variant with fvcore")
    widths, blocks, norms = full["block_out_channels"], full["layers_per_block"], full["norm_stages"]
    e, lat_c = full["block_expansion"], full["latent_channels"]
    pixels = [latent[0] * latent[1] * 4 ** i for i in range(len(widths))]
    params = 9 * lat_c * widths[0] + widths[0]
    flops = 9 * lat_c * widths[0] * pixels[0]

    def sepconv(c_in: int, c_out: int, expansion: int) -> tuple[int, int]:
        hidden = c_out * expansion
        p = 10 * c_in + c_in * hidden + hidden + (hidden * c_out + c_out if expansion > 1 else 0)
        f = 9 * c_in + c_in * hidden + (hidden * c_out if expansion > 1 else 0)
        return p, f

    width = widths[0]
    for i, (w, b, norm) in enumerate(zip(widths, blocks, norms)):
        for _ in range(b):
            p, f = sepconv(width, w, e)
            if norm:
                p, f = p + 2 * width, f + 5 * width
            if width != w:  # the `shortcut` ablation's 1x1 conv
                p, f = p + width * w + w, f + width * w
            params, flops, width = params + p, flops + f * pixels[i], w
        if i + 1 < len(widths):
            out = widths[i + 1] if full["channel_transition"] == "upsample" else width
            if full["upsample_conv"] == "conv":
                p, f = 9 * width * out + out, 9 * width * out
            else:
                p, f = sepconv(width, out, 1)
            params, flops, width = params + p, flops + (f + width) * pixels[i + 1], out
    params += 9 * width * full["out_channels"] + full["out_channels"]
    flops += 9 * width * full["out_channels"] * pixels[-1]
    if full["norm_out"]:
        params, flops = params + 2 * width, flops + 5 * width * pixels[-1]
    return {"params": params, "gflops": flops / 1e9}


# ---- registry: decoder_arch name -> config (pure functions) --------------------------------------------------------


def default_config() -> dict[str, Any]:
    """`tiny`: ours (see the module docstring), every constructor argument written out."""
    return dict(latent_channels=LATENT_CHANNELS, out_channels=3, block_out_channels=(256, 256, 128, 64),
                layers_per_block=(3, 2, 2, 1), block_expansion=1, norm_stages=(True, False, False, False),
                norm_out=False, norm_num_groups=32, upsample_conv="conv", channel_transition="upsample",
                mid_attention=False, scaling_factor=SD3_SCALING_FACTOR, shift_factor=SD3_SHIFT_FACTOR)


def _set(**fields: Any) -> Callable[[dict], dict]:
    return lambda cfg: {**cfg, **fields}


# Deltas: pure `dict -> dict`, each undoing or varying one of the five rules.
DECODER_DELTAS: dict[str, Callable[[dict], dict]] = {
    "no_gn": _set(norm_stages=(False,) * 4, norm_out=False),                        # rule 2: no GroupNorm at all
    "gn_all": _set(norm_stages=(True,) * 4, norm_out=True),                         # rule 2 undone: GN as SD3
    "mid_attention": _set(mid_attention=True),                                      # rule 1 undone
    "wide": lambda cfg: {**cfg, "block_out_channels": tuple(int(c * 1.5) for c in cfg["block_out_channels"])},
    "sepconv_upsample": _set(upsample_conv="sepconv"),                              # rule 3 to the end
    "sd3_blocks": _set(layers_per_block=(5, 3, 3, 3)),                              # rule 4 undone (SD3's counts)
    "uniform_blocks": _set(layers_per_block=(2, 2, 2, 2)),                          # rule 4: same total, flat
    "shortcut_transition": _set(channel_transition="shortcut"),                     # rule 5 undone
    "expanded": _set(block_expansion=2),                                            # UIB blocks as the UNet's
}

DECODER_ARCHS: dict[str, Callable[[], dict[str, Any]]] = {"tiny": default_config}
DECODER_ARCHS.update({f"tiny_{name}": (lambda d=delta: d(default_config())) for name, delta in DECODER_DELTAS.items()})


def decoder_config(arch: str = "tiny") -> dict[str, Any]:
    """Resolve a decoder arch: a registered name (`tiny`, `tiny_no_gn`, ...) or `name+delta+...` (`tiny+no_gn+wide`).

    Returns:
        the `TinyDecoder` constructor kwargs.
    """
    base, *deltas = arch.split("+")
    if base not in DECODER_ARCHS:
        raise KeyError(f"unknown decoder arch {base!r}; valid: {sorted(DECODER_ARCHS)} (optionally "
                       f"+delta with deltas {sorted(DECODER_DELTAS)})")
    cfg = DECODER_ARCHS[base]()
    for delta in deltas:
        if delta not in DECODER_DELTAS:
            raise KeyError(f"unknown decoder delta {delta!r} in {arch!r}; valid: {sorted(DECODER_DELTAS)}")
        cfg = DECODER_DELTAS[delta](cfg)
    return cfg


def build_decoder(arch: str = "tiny") -> TinyDecoder:
    return TinyDecoder(**decoder_config(arch))


# ---- the design-space search (documented in the module docstring) -------------------------------------------------


def search_design_space(params_m: float = PAPER_PARAMS_M, gflops: float = PAPER_GFLOPS, params_tol: float = 0.01,
                        gflops_tol: float = 0.03, width_step: int = 16, max_width: int = 512,
                        max_blocks: int = 5) -> list[dict[str, Any]]:
    """Every point of the space (module docstring) within tolerance of both targets, as dicts with their cost.

    Uses `analytic_cost` with a one- or two-SepConv block (a two-SepConv block is costed as two one-SepConv blocks,
    without the norm of the second, i.e. diffusers' ResnetBlock2D with its second GN removed).
    """
    hits = []
    widths = range(width_step, max_width + 1, width_step)
    block_sets = [b for b in itertools.product(range(max_blocks + 1), repeat=4)
                  if b[0] >= 1 and all(b[i] >= b[i + 1] for i in range(3))]
    for up in UPSAMPLE_CONVS:
        for c in itertools.product(widths, repeat=4):
            if not all(c[i] >= c[i + 1] for i in range(3)):
                continue
            for convs_per_block in (1, 2):
                for b in block_sets:
                    cfg = {**default_config(), "block_out_channels": c, "upsample_conv": up,
                           "layers_per_block": tuple(n * convs_per_block for n in b)}
                    cost = analytic_cost(cfg)
                    if convs_per_block == 2:  # the second conv of a block has no GN of its own
                        cost["params"] -= 2 * c[0] * b[0]
                    if abs(cost["params"] / (params_m * 1e6) - 1) <= params_tol and \
                            abs(cost["gflops"] / gflops - 1) <= gflops_tol:
                        hits.append({"block_out_channels": c, "blocks": b, "convs_per_block": convs_per_block,
                                     "upsample_conv": up, **cost})
    return hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapgen.models.decoder", description=__doc__.split("\n")[0])
    # params / GFLOPs of an arch: python -m snapgen.profile decoder --arch NAME (models import nothing from profile)
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="the design-space search of the module docstring (several minutes on one core)")
    search.add_argument("--sd3-ratio-only", action="store_true", help="only widths (4w, 4w, 2w, w)")
    args = parser.parse_args(argv)
    hits = search_design_space()
    if args.sd3_ratio_only:
        hits = [h for h in hits if h["block_out_channels"][0] == h["block_out_channels"][1]
                == 2 * h["block_out_channels"][2] == 4 * h["block_out_channels"][3]]
    print(f"{len(hits)} configs within 1% params / 3% GFLOPs of {PAPER_PARAMS_M}M / {PAPER_GFLOPS:g} G")
    for h in hits:
        print(json.dumps(h))
    return 0


if __name__ == "__main__":
    sys.exit(main())
