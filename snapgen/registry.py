"""The registry: presets and architecture deltas as plain data (name -> pure function), walks over them, KD toggles.

A delta is a pure function `UNetConfig -> UNetConfig` that sets fields, so applying it twice changes nothing and deltas
compose in any order. Names may carry one argument after a colon: `sepconv:3` (expansion 3), `ffn_trim:2.5`.
An architecture string is a preset followed by deltas: `baseline+no_sa_high_res+sepconv_expanded`.

Open choices (the paper leaves them unstated; each is ours, with the reason):
- Latent space: 16 channels (SD3 autoencoder) for every preset, the T2I model's latent space. The ImageNet ablations of
  supplement H used an unnamed 8-channel AE; channels change only conv_in/conv_out (< 0.1% of params).
- SepConv replaces every 3x3 conv of the residual blocks and of the down/up-samplers, but not conv_in/conv_out (stem and
  head that map to and from latent channels). With this choice the Fig. 3 deltas are reproduced within 2 points.
- MQA shares one K/V head in both self- and cross-attention (the paper says "MHSA with MQA"; cross-attention K/V
  projections dominate at a wide text width, and only sharing them too gives Fig. 3's -16% params).
- First-stage CA: each stage-1 residual block becomes one transformer block (CA + FFN, no SA); on the up path a 1x1
  conv first maps the concatenated skip to the stage width. Like SDXL's transformers they take no time embedding.
- Transformer stacks have no proj_in/proj_out linears (see `SpatialTransformer`): with them the final model is 389M,
  without them 372M as Table 1; every Fig. 3 delta is within tolerance either way.
- QK RMSNorm has a learnable per-channel gain (RMSNorm as in Zhang & Sennrich); RoPE is applied in self-attention only
  (text tokens have no 2-D position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import UNetConfig

# ---- deltas (Fig. 2 (b)-(f)) -----------------------------------------------------------------------------------------


def no_sa_high_res(cfg: UNetConfig) -> UNetConfig:
    """Fig. 2(b): keep self-attention only in the lowest-resolution stage (and the mid block)."""
    n = len(cfg.block_out_channels)
    return cfg.replace(self_attention=(False,) * (n - 1) + (True,))


def sepconv(cfg: UNetConfig, expansion: int = 2) -> UNetConfig:
    """Fig. 2(c): every 3x3 conv becomes DW 3x3 -> PW (x expansion) [-> PW back]. 1 = plain SepConv, 2 = the paper's."""
    return cfg.replace(conv="sepconv", sepconv_expansion=int(expansion))


def ffn_trim(cfg: UNetConfig, ratio: float = 3.0) -> UNetConfig:
    """Fig. 2(d): FFN hidden expansion 4 -> 3 (still gated)."""
    return cfg.replace(ffn_ratio=float(ratio))


def mqa(cfg: UNetConfig) -> UNetConfig:
    """Sec. 3.1 "Replace MHSA with MQA": one shared K/V head in self- and cross-attention."""
    return cfg.replace(attention="mqa")


def first_stage_ca(cfg: UNetConfig) -> UNetConfig:
    """Fig. 2(e): stage-1 residual blocks become transformer blocks with CA and FFN and no SA."""
    return cfg.replace(first_stage_ca=True)


def qk_rmsnorm_rope(cfg: UNetConfig) -> UNetConfig:
    """Fig. 2(f): RMSNorm on queries and keys, and 2-D RoPE in self-attention."""
    return cfg.replace(qk_norm="rmsnorm", rope=True)


DELTAS: dict[str, Callable[..., UNetConfig]] = {
    "no_sa_high_res": no_sa_high_res,
    "sepconv": sepconv,
    "sepconv_plain": lambda cfg: sepconv(cfg, 1),
    "sepconv_expanded": lambda cfg: sepconv(cfg, 2),
    "ffn_trim": ffn_trim,
    "mqa": mqa,
    "first_stage_ca": first_stage_ca,
    "qk_rmsnorm_rope": qk_rmsnorm_rope,
}

# The deltas of the final model, in Fig. 3's order.
SNAPGEN_DELTAS = ("no_sa_high_res", "sepconv_expanded", "ffn_trim", "mqa", "first_stage_ca", "qk_rmsnorm_rope")

# ---- presets ---------------------------------------------------------------------------------------------------------

CLIP_L_WIDTH = 768  # CLIP ViT-L/14 text encoder, the class-prompt encoder of supplement H
# The T2I text stack fused the SD3 way: CLIP-L (768) and CLIP-G (1280) token features concatenated on channels (2048),
# zero-padded to the language model's width and concatenated with its tokens on the sequence axis. SD3 pads to T5's
# 4096; SnapGen's language model is Gemma-2-2b, whose hidden width is 2304.
T2I_CONTEXT_WIDTH = 2304
T2I_POOLED_WIDTH = 0  # SD3 also adds pooled CLIP-L+G (2048) to the time embedding; we leave it out: see snapgen_t2i


def baseline() -> UNetConfig:
    """Fig. 2(a): SDXL's UNet thinned to channels (256, 512, 896) and transformer depths (0, 2, 4)."""
    return UNetConfig()


def snapgen_imagenet() -> UNetConfig:
    """Table 1's model (372M): the baseline with every delta, conditioned on CLIP-L (768) class-prompt tokens."""
    return apply(baseline(), SNAPGEN_DELTAS).replace(cross_attention_dim=CLIP_L_WIDTH)


def snapgen_t2i() -> UNetConfig:
    """The 379M text-to-image UNet: `snapgen-imagenet` with the fused text embedding's width for cross-attention.

    The 7M over Table 1's model is what the wider context costs in the K/V projections of MQA cross-attention
    (39 blocks x 2 x 64 x (2304 - 768) = 7.7M); adding SD3's pooled-text MLP as well would give ~384M, outside the
    paper's 379M, so the pooled embedding is left out.
    """
    return snapgen_imagenet().replace(cross_attention_dim=T2I_CONTEXT_WIDTH, pooled_projection_dim=T2I_POOLED_WIDTH)


def shrink(cfg: UNetConfig, base_width: int = 32, head_dim: int = 16, context_dim: int = 32) -> UNetConfig:
    """The same architecture at a tiny width, for CPU tests and smoke runs (structure and deltas are kept)."""
    scale = base_width / cfg.block_out_channels[0]
    chans = tuple(max(head_dim, int(round(c * scale / head_dim)) * head_dim) for c in cfg.block_out_channels)
    return cfg.replace(block_out_channels=chans, attention_head_dim=head_dim, norm_num_groups=8,
                       cross_attention_dim=context_dim,
                       transformer_layers_per_block=tuple(min(d, 1) for d in cfg.transformer_layers_per_block),
                       mid_transformer_layers=min(cfg.mid_transformer_layers, 1), layers_per_block=1,
                       pooled_projection_dim=min(cfg.pooled_projection_dim, 16))


PRESETS: dict[str, Callable[[], UNetConfig]] = {
    "baseline": baseline,
    "snapgen-imagenet": snapgen_imagenet,
    "snapgen-t2i": snapgen_t2i,
    "tiny": lambda: shrink(snapgen_imagenet()),
}

# ---- resolving names -------------------------------------------------------------------------------------------------


# The deltas that take one argument after a colon: (what it is, its type, an example).
DELTA_ARGUMENTS: dict[str, tuple[str, type, str]] = {
    "sepconv": ("expansion, an integer >= 1", int, "sepconv:3"),
    "ffn_trim": ("FFN ratio, a number > 0", float, "ffn_trim:2.5"),
}


def _delta_argument(name: str, base: str, arg: str) -> int | float:
    what, kind, example = DELTA_ARGUMENTS[base]
    try:
        value = float(arg)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError
    except ValueError:
        raise ValueError(f"delta {name!r}: argument {arg!r} is not a number; {base} takes one argument ({what}), "
                         f"e.g. {example}") from None
    if kind is int:
        if not value.is_integer():
            raise ValueError(f"delta {name!r}: argument {arg!r} is not an integer; {base} takes one argument ({what}), "
                             f"e.g. {example}")
        return int(value)
    return value


def apply_delta(cfg: UNetConfig, name: str) -> UNetConfig:
    """Apply one delta by name; `name:arg` passes one argument (`sepconv:3`, `ffn_trim:2.5`)."""
    base, colon, arg = name.partition(":")
    if base not in DELTAS:
        raise KeyError(f"unknown delta {base!r}; valid deltas: {', '.join(DELTAS)}")
    if not colon:
        return DELTAS[base](cfg)
    if base not in DELTA_ARGUMENTS:
        takes = ", ".join(f"{k}:<{v[0].split(',')[0]}>" for k, v in DELTA_ARGUMENTS.items())
        raise ValueError(f"delta {name!r}: {base} takes no argument; write {base!r} (only {takes} take one)")
    value = _delta_argument(name, base, arg.strip())
    try:
        return DELTAS[base](cfg, value)
    except ValueError as error:  # the config's own check, e.g. sepconv_expansion must be >= 1
        raise ValueError(f"delta {name!r}: {error}; {base} takes {DELTA_ARGUMENTS[base][0]}") from None


def apply(cfg: UNetConfig, deltas) -> UNetConfig:
    for name in deltas:
        cfg = apply_delta(cfg, name)
    return cfg


def resolve(arch: str) -> UNetConfig:
    """`'snapgen-imagenet'` or `'baseline+no_sa_high_res+mqa'` -> the config."""
    preset, *deltas = [part.strip() for part in arch.split("+")]
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return apply(PRESETS[preset](), deltas)


# ---- walks -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalkStep:
    name: str  # run name, e.g. "c_sepconv_expanded"
    parent: str | None  # the step this one is compared with
    delta: str | None  # the delta applied to the parent
    config: UNetConfig


# Fig. 3's order. The plain SepConv is a side branch from (b): the paper reports it and then expands it instead.
FIG3 = (
    ("a_baseline", None, None),
    ("b_no_sa_high_res", "a_baseline", "no_sa_high_res"),
    ("c_sepconv_plain", "b_no_sa_high_res", "sepconv_plain"),
    ("c_sepconv_expanded", "b_no_sa_high_res", "sepconv_expanded"),
    ("d_ffn_trim", "c_sepconv_expanded", "ffn_trim"),
    ("e_mqa", "d_ffn_trim", "mqa"),
    ("f_first_stage_ca", "e_mqa", "first_stage_ca"),
    ("g_qk_rmsnorm_rope", "f_first_stage_ca", "qk_rmsnorm_rope"),
)


def _fig3(base: UNetConfig) -> list[WalkStep]:
    configs: dict[str, UNetConfig] = {}
    steps = []
    for name, parent, delta in FIG3:
        configs[name] = base if parent is None else apply_delta(configs[parent], delta)
        steps.append(WalkStep(name, parent, delta, configs[name]))
    return steps


def _leave_one_out(full: UNetConfig) -> list[WalkStep]:
    """The final model, and the final model without each delta in turn (beyond the paper)."""
    steps = [WalkStep("snapgen", None, None, full)]
    for left_out in SNAPGEN_DELTAS:
        kept = [d for d in SNAPGEN_DELTAS if d != left_out]
        cfg = apply(baseline(), kept).replace(cross_attention_dim=full.cross_attention_dim)
        steps.append(WalkStep(f"snapgen_minus_{left_out}", "snapgen", f"-{left_out}", cfg))
    return steps


WALKS: dict[str, Callable[[], list[WalkStep]]] = {
    "fig3": lambda: _fig3(baseline()),
    "loo": lambda: _leave_one_out(snapgen_imagenet()),
}


def walk(name: str, shrink_to_tiny: bool = False) -> list[WalkStep]:
    """The steps of a named walk; `shrink_to_tiny` keeps every step's structure at a tiny width (smoke scale)."""
    if name not in WALKS:
        raise KeyError(f"unknown walk {name!r}; valid walks: {', '.join(WALKS)}")
    steps = WALKS[name]()
    if shrink_to_tiny:
        steps = [WalkStep(s.name, s.parent, s.delta, shrink(s.config)) for s in steps]
    return steps


# ---- knowledge-distillation toggles (supplement Tab. 3) --------------------------------------------------------------

KD_ROWS: dict[str, dict[str, bool]] = {
    "task": {"task": True, "kd": False, "featkd": False, "t_scaling": False},
    "task+kd": {"task": True, "kd": True, "featkd": False, "t_scaling": False},
    "task+kd+featkd": {"task": True, "kd": True, "featkd": True, "t_scaling": False},
    "task+kd+featkd+t_scaling": {"task": True, "kd": True, "featkd": True, "t_scaling": True},
}
