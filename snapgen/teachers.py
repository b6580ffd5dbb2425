"""Teachers for distillation (Sec. 3.3-3.4): diffusers' `SD3Transformer2DModel`, adapted to our conditioning, with a tap
on its last transformer block's image tokens (the feature target of Eq. 5).

- SD3.5-Large (the KD teacher of Eq. 4-8) and SD3.5-Large-Turbo (the step-distillation discriminator backbone of Eq. 9)
  are loaded from `snapgen.weights.find_dir(...)`; they need SD3's own text conditioning (4096-d tokens, 2048-d pooled).
- So that distillation runs end to end offline, `small_teacher` trains a small DiT of the same class (patch 2, pixel
  space, conditioned on our class-prompt embeddings) on the embedded default data set with the flow objective (Eq. 2)
  through the one training loop (`train(..., net_factory=..., adapter=sd3_fn)`), and caches it by its config hash.
  It is several times larger than the smoke-scale student.

The adapter never copies diffusers' forward: features come from forward hooks on `transformer_blocks[i]`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from . import flow
from .config import stable_hash

# Registry names in snapgen.weights for the pretrained teachers.
PRETRAINED_TEACHERS = {
    "sd35-large": "sd35_large_transformer",              # KD teacher (Sec. 3.3, supplement Tab. 3)
    "sd35-large-turbo": "sd35_large_turbo_transformer",  # step-distillation teacher / discriminator (Sec. 3.4)
}


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of the real tokens: hidden (B, L, D), mask (B, L) bool or None -> (B, D) float."""
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype)[..., None]  # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def sd3_conditioning(config, cond: Any) -> tuple[Tensor, Tensor]:
    """Map `cond` to SD3's (encoder_hidden_states (B, S, joint_attention_dim), pooled_projections (B, P)).

    `cond` is SD3's own dict(encoder_hidden_states, pooled_projections), passed through, or our (hidden (B, L, D),
    mask (B, L)): padded tokens zeroed (SD3 attends to every token) and pooled = the masked mean (needs
    joint_attention_dim = pooled_projection_dim = D).
    """
    if isinstance(cond, dict):
        return cond["encoder_hidden_states"], cond["pooled_projections"]
    hidden, mask = cond
    if hidden.shape[-1] != config.joint_attention_dim or hidden.shape[-1] != config.pooled_projection_dim:
        raise ValueError(f"condition width {hidden.shape[-1]} does not match the teacher's joint_attention_dim="
                         f"{config.joint_attention_dim} / pooled_projection_dim={config.pooled_projection_dim}; pass "
                         f"SD3's own conditioning as a dict(encoder_hidden_states=..., pooled_projections=...) "
                         f"or build the teacher with both set to {hidden.shape[-1]}")
    pooled = masked_mean(hidden, mask)
    if mask is not None:
        hidden = hidden * mask.to(hidden.dtype)[..., None]
    return hidden, pooled


def sd3_fn(net: nn.Module) -> flow.NetFn:
    """Adapt a (trainable, possibly DDP-wrapped) `SD3Transformer2DModel` to `net_fn(x, timestep, cond) -> v`: the
    `adapter` of `snapgen.train.train` for the small teacher."""
    config = getattr(net, "module", net).config

    def net_fn(x: Tensor, timestep: Tensor, cond: Any) -> Tensor:
        hidden, pooled = sd3_conditioning(config, cond)
        timestep = torch.as_tensor(timestep, device=x.device).expand(x.shape[0])
        return net(hidden_states=x, timestep=timestep, encoder_hidden_states=hidden, pooled_projections=pooled,
                   return_dict=False)[0]

    return net_fn


class TeacherAdapter(nn.Module):
    """A frozen `SD3Transformer2DModel` called like our nets: `v = teacher(x, timestep, cond)`.

    `cond` is either our `(hidden (B, L, D), mask (B, L))` pair, mapped to SD3's inputs as encoder_hidden_states =
    hidden with padded tokens zeroed (SD3 has no text mask) and pooled_projections = the masked mean of hidden (this
    needs joint_attention_dim = pooled_projection_dim = D, as `small_teacher_config` sets), or a dict with SD3's own
    `encoder_hidden_states` (B, S, joint_attention_dim) and `pooled_projections` (B, pooled_projection_dim) (the
    pretrained SD3.5 teachers, with SD3's text encoders).

    The parameters never get gradients and the module stays in eval mode (`train(True)` is ignored), but inputs may
    carry gradients: the step-distillation discriminator back-propagates through the frozen teacher into the student.
    """

    def __init__(self, transformer: nn.Module, frozen: bool = True):
        super().__init__()
        self.transformer = transformer
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> "TeacherAdapter":
        # frozen: dropout and friends stay off whatever the caller's loop does
        return super().train(False if self.frozen else mode)

    @property
    def config(self):
        return self.transformer.config

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def feature_dim(self) -> int:
        """D_T: width of the transformer's image tokens."""
        cfg = self.transformer.config
        return int(cfg.num_attention_heads * cfg.attention_head_dim)

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    def sd3_inputs(self, cond: Any) -> tuple[Tensor, Tensor]:
        """Our conditioning -> (encoder_hidden_states (B, S, joint_attention_dim), pooled_projections (B, P))."""
        return sd3_conditioning(self.transformer.config, cond)

    def forward(self, sample: Tensor, timestep: Tensor, cond: Any,
                feature_layers: Sequence[int] = (-1,)) -> dict[str, Any]:
        """
        Args:
            sample: (B, in_channels, H, W) noisy input x_t (H, W multiples of the patch size).
            timestep: (B,) in [0, 1000) (= 1000 σ, SD3's convention, as flow.FlowObjective).
            cond: see the class docstring.
            feature_layers: indices of transformer blocks whose image-token outputs to return (-1 = last).
        Returns:
            dict(v (B, C, H, W) velocity, features (B, N, D_T) the last requested block's image tokens,
            layer_features list of (B, N, D_T) in `feature_layers` order, grid (H/p, W/p) the token grid).
        """
        blocks = self.transformer.transformer_blocks
        taps: dict[int, Tensor] = {}

        def tap(index: int):
            def hook(module, args, output):
                # JointTransformerBlock returns (encoder_hidden_states, hidden_states); the last block's first
                # element is None (context_pre_only). hidden_states (B, N, D_T) are the image tokens.
                taps[index] = output[1] if isinstance(output, tuple) else output
            return hook

        indices = [i % len(blocks) for i in feature_layers]
        handles = [blocks[i].register_forward_hook(tap(i)) for i in sorted(set(indices))]
        try:
            hidden, pooled = self.sd3_inputs(cond)
            dtype = next(self.transformer.parameters()).dtype
            timestep = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])
            v = self.transformer(hidden_states=sample.to(dtype), timestep=timestep,
                                 encoder_hidden_states=hidden.to(dtype), pooled_projections=pooled.to(dtype),
                                 return_dict=False)[0]
        finally:
            for h in handles:
                h.remove()
        p = self.patch_size
        layer_features = [taps[i] for i in indices]
        return dict(v=v, features=layer_features[-1], layer_features=layer_features,
                    grid=(sample.shape[-2] // p, sample.shape[-1] // p))


def teacher_fn(teacher: TeacherAdapter) -> flow.NetFn:
    """Adapt a teacher to the objectives' `net_fn(x, timestep, cond) -> v` (validation, sampling)."""
    return lambda x, timestep, cond: teacher(x, timestep, cond)["v"]


def load_pretrained_teacher(name: str, dtype: torch.dtype = torch.bfloat16,
                            device: str | torch.device = "cpu") -> TeacherAdapter:
    """SD3.5-Large ('sd35-large') or SD3.5-Large-Turbo ('sd35-large-turbo'), found by snapgen.weights (no download
    when HF_HUB_OFFLINE=1; the error says where to put the files)."""
    from diffusers import SD3Transformer2DModel

    from .weights import find_dir

    if name not in PRETRAINED_TEACHERS:
        raise KeyError(f"unknown teacher {name!r}; valid: {sorted(PRETRAINED_TEACHERS)} (or train one with "
                       f"small_teacher)")
    path = find_dir(PRETRAINED_TEACHERS[name])
    return TeacherAdapter(SD3Transformer2DModel.from_pretrained(path, torch_dtype=dtype).to(device))


# ---- the small teacher the harness trains itself ----------------------------------------------------------------------


@dataclass(frozen=True)
class SmallTeacherConfig:
    """A small SD3 MMDiT in pixel space, trained by `snapgen.train.train` with Eq. 2 on class prompts. Defaults:
    ~10M parameters, 5x the smoke-scale student (1.9M). `transformer_config` gives the diffusers config,
    `train_config` the loop's."""

    data: str = "cifar10"           # as TrainConfig.data
    resolution: int = 16            # pixels; must match the student's
    text_encoder: str = "minilm"    # must match the student's (the teacher reads the same condition tokens)
    autoencoder: str = "none"       # the student's space: pixels, or this autoencoder's latents (TrainConfig's)
    patch_size: int = 2
    num_layers: int = 8
    num_attention_heads: int = 6
    attention_head_dim: int = 32    # D_T = 6 x 32 = 192
    batch_size: int = 32
    steps: int = 2000               # optimizer steps
    lr: float = 5e-4
    warmup: int = 100
    seed: int = 0
    train_overrides: tuple[tuple[str, Any], ...] = ()  # further TrainConfig fields, as (name, value) pairs

    def transformer_config(self, text_dim: int) -> dict[str, Any]:
        """diffusers `SD3Transformer2DModel` kwargs; joint_attention_dim = pooled_projection_dim = the text width."""
        from .models.autoencoders import AUTOENCODERS

        channels, factor = AUTOENCODERS[self.autoencoder]
        size = self.resolution // factor  # what the teacher sees: pixels, or latents of side R / f
        if size % self.patch_size:
            raise ValueError(f"input side {size} (resolution {self.resolution} / f {factor}) is not a multiple of "
                             f"patch_size={self.patch_size}")
        inner = self.num_attention_heads * self.attention_head_dim
        return dict(sample_size=size, patch_size=self.patch_size, in_channels=channels, out_channels=channels,
                    num_layers=self.num_layers, attention_head_dim=self.attention_head_dim,
                    num_attention_heads=self.num_attention_heads, joint_attention_dim=text_dim,
                    caption_projection_dim=inner, pooled_projection_dim=text_dim,
                    pos_embed_max_size=size // self.patch_size)

    def train_config(self):
        """The `snapgen.train.TrainConfig` of the teacher's run (objective 'flow', Eq. 2)."""
        from .train import make_config

        overrides = dict(data=self.data, resolution=self.resolution, text_encoder=self.text_encoder,
                         autoencoder=self.autoencoder, objective="flow", batch_size=self.batch_size, steps=self.steps, lr=self.lr,
                         warmup=self.warmup, seed=self.seed, val_every=max(self.steps // 4, 1),
                         ckpt_every=max(self.steps // 4, 1), log_every=max(min(self.steps // 20, 100), 1))
        return make_config("smoke", **{**overrides, **dict(self.train_overrides)})

    def cache_key(self) -> str:
        return stable_hash(dataclasses.asdict(self))


def build_small_teacher(cfg: SmallTeacherConfig, text_dim: int, seed: int | None = None) -> TeacherAdapter:
    """A randomly initialised, frozen small teacher (tests)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(cfg.seed if seed is None else seed)
    return TeacherAdapter(SD3Transformer2DModel(**cfg.transformer_config(text_dim)))


def teacher_cache_dir(cfg: SmallTeacherConfig, cache_dir: str | Path | None = None) -> Path:
    """`<snapgen cache>/teachers/sd3-small-<config hash>`: a snapgen.train run directory."""
    from .data import cache_root

    return cache_root(cache_dir) / "teachers" / f"sd3-small-{cfg.cache_key()}"


def _finished_step(out: Path) -> int:
    from .runs import find_checkpoint, read_state

    ckpt = find_checkpoint(out)
    return int(read_state(ckpt)["step"]) if ckpt is not None else 0


def train_small_teacher(cfg: SmallTeacherConfig, out: str | Path | None = None, progress: bool = True) -> Path:
    """Train the small teacher with the one loop (`snapgen.train.train` with `net_factory` = the SD3 config and
    `adapter` = `sd3_fn`), or resume it; a finished run is not touched. Returns the EMA weights' directory
    (diffusers layout, `<out>/checkpoint/unet_ema`). `out` defaults to the cache, keyed by the config hash."""
    from diffusers import SD3Transformer2DModel

    from .train import train

    out = Path(out) if out is not None else teacher_cache_dir(cfg)
    if _finished_step(out) < cfg.steps:
        train(cfg.train_config(), out, progress=progress, adapter=sd3_fn,
              net_factory=lambda text_dim: SD3Transformer2DModel(**cfg.transformer_config(text_dim)))
        (out / "small_teacher.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1, default=str))
    return out / "checkpoint" / "unet_ema"


def small_teacher(cfg: SmallTeacherConfig | None = None, device: str | torch.device = "cpu",
                  progress: bool = True) -> TeacherAdapter:
    """The cached small teacher for `cfg` (trained on first use), frozen, on `device`."""
    from diffusers import SD3Transformer2DModel

    path = train_small_teacher(cfg or SmallTeacherConfig(), progress=progress)
    return TeacherAdapter(SD3Transformer2DModel.from_pretrained(path).to(device))


def load_teacher(spec: str, device: str | torch.device = "cpu", **small_overrides: Any) -> TeacherAdapter:
    """'sd35-large' | 'sd35-large-turbo' (pretrained) | 'small' (trained here, `SmallTeacherConfig` overrides)."""
    if spec == "small":
        return small_teacher(SmallTeacherConfig(**small_overrides), device=device)
    if small_overrides:
        raise ValueError(f"options {sorted(small_overrides)} apply only to spec='small', not {spec!r}")
    return load_pretrained_teacher(spec, device=device)
