"""Configuration dataclasses. Every architecture delta of the paper is a field of `UNetConfig`.

A config is plain data: the registry (`snapgen.registry`) maps names to pure functions of a config, the model
(`snapgen.models.EfficientUNet`) realises any config, and runs log `to_dict()` as params and save it beside checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONV_KINDS = ("conv", "sepconv")
ATTENTION_KINDS = ("mhsa", "mqa")
QK_NORMS = (None, "rmsnorm")


@dataclass(frozen=True)
class UNetConfig:
    """The efficient UNet (Sec. 3.1, Fig. 2). Defaults are the thinned SDXL baseline of Fig. 2(a).

    Stage `i` has `block_out_channels[i]` channels. Down stages have `layers_per_block` residual blocks, up stages one
    more (SDXL). Where a stage has `transformer_layers_per_block[i] > 0`, each residual block is followed by a transformer
    of that depth; the mid block is residual → transformer (`mid_transformer_layers`) → residual.
    """

    in_channels: int = 16  # SD3 autoencoder latents (the T2I latent space; TAESD3 offline)
    out_channels: int = 16
    block_out_channels: tuple[int, ...] = (256, 512, 896)  # Sec. 3.1: SDXL's (320, 640, 1280) thinned
    layers_per_block: int = 2  # residual blocks per down stage (up stages: +1), as SDXL
    transformer_layers_per_block: tuple[int, ...] = (0, 2, 4)  # Sec. 3.1: SDXL's (0, 2, 10) shortened
    mid_transformer_layers: int = 4  # SDXL's mid block has the depth of its last stage
    self_attention: tuple[bool, ...] = (True, True, True)  # per stage; Fig. 2(b) keeps it in the last only
    cross_attention_dim: int = 768  # width of the condition tokens (CLIP-L for ImageNet, Sec. H)
    attention_head_dim: int = 64  # SDXL: heads = channels / 64
    attention: str = "mhsa"  # "mhsa" | "mqa" (one shared K/V head, self- and cross-attention)
    conv: str = "conv"  # "conv" | "sepconv" (every 3x3 conv, down/up-sampling included: Fig. 2(c))
    sepconv_expansion: int = 1  # channels after the first pointwise conv = expansion * out (2 in the paper)
    ffn_ratio: float = 4.0  # hidden width of the gated FFN (GEGLU) = ratio * channels; Fig. 2(d) trims it to 3
    first_stage_ca: bool = False  # Fig. 2(e): stage-1 residual blocks become transformer blocks (CA + FFN, no SA)
    qk_norm: str | None = None  # "rmsnorm" after the Q/K projections (Fig. 2(f))
    rope: bool = False  # 2-D rotary position embedding in self-attention (Fig. 2(f))
    norm_num_groups: int = 32
    time_embed_dim: int | None = None  # None: 4 x block_out_channels[0], as SDXL
    pooled_projection_dim: int = 0  # >0: a pooled text embedding of this width is added to the time embedding

    def __post_init__(self) -> None:
        # Lists (from YAML/JSON) become tuples so configs hash and compare as values.
        for name in ("block_out_channels", "transformer_layers_per_block", "self_attention"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        n = len(self.block_out_channels)
        for name in ("transformer_layers_per_block", "self_attention"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{name}={getattr(self, name)} has {len(getattr(self, name))} entries but "
                    f"block_out_channels={self.block_out_channels} has {n}"
                )
        if self.conv not in CONV_KINDS:
            raise ValueError(f"conv={self.conv!r}; valid: {CONV_KINDS}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={self.attention!r}; valid: {ATTENTION_KINDS}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm={self.qk_norm!r}; valid: {QK_NORMS}")
        if self.sepconv_expansion < 1:
            raise ValueError(f"sepconv_expansion={self.sepconv_expansion} must be >= 1")
        if self.ffn_ratio <= 0:
            raise ValueError(f"ffn_ratio={self.ffn_ratio} must be > 0")
        for c in self.block_out_channels:
            if c % self.attention_head_dim:
                raise ValueError(f"channels {c} not divisible by attention_head_dim={self.attention_head_dim}")
            if c % self.norm_num_groups:
                raise ValueError(f"channels {c} not divisible by norm_num_groups={self.norm_num_groups}")
        if self.rope and self.attention_head_dim % 4:
            raise ValueError(f"2-D RoPE needs attention_head_dim divisible by 4, got {self.attention_head_dim}")

    def replace(self, **changes: Any) -> "UNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    def config_hash(self) -> str:
        return stable_hash(self.to_dict())


def preset_config(cls: type, presets: dict[str, dict[str, Any]], preset: str, overrides: dict[str, Any],
                  what: str = "options") -> Any:
    """`cls(**presets[preset], **overrides)` (edm2: a preset, then sparse overrides), each override coerced to its
    field's type (lists to tuples, ints to floats) and checked, with errors that name the option, its value and the
    valid names."""
    if preset not in presets:
        raise KeyError(f"unknown scale {preset!r}; valid scales: {', '.join(presets)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise KeyError(f"unknown {what} {unknown}; valid options: {sorted(fields)}")
    values = {**presets[preset], **{k: coerce_option(k, v, fields[k]) for k, v in overrides.items()}}
    return cls(**values)


def coerce_option(name: str, value: Any, field: dataclasses.Field) -> Any:
    """An override as the type of its field's default: `lr=abc` and `steps=1.5` are errors that say so."""
    default = field.default if field.default is not dataclasses.MISSING else None
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    else:
        return value
    raise ValueError(f"{name}={value!r} is not a {kind.__name__} (default {default!r})")


def public_config(config: Any) -> dict[str, Any]:
    """A diffusers config without its private keys (`_name_or_path`, `_use_default_values`: a list built from a set,
    whose order changes with PYTHONHASHSEED): what a model is, fit to hash."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-able object that does not depend on key order (identifies runs and caches)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'unet': {'conv': 'sepconv'}}` -> `{'unet.conv': 'sepconv'}` (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def save_yaml(obj: dict[str, Any], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(obj, sort_keys=False))


def load_yaml(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text()) or {}


__all__ = ["UNetConfig", "preset_config", "coerce_option", "public_config", "stable_hash", "flatten", "save_yaml", "load_yaml"]
