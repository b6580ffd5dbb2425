"""The UNet stage (the task loss of Sec. 3.3 or a KD row of supplement Tab. 3) and its CLI:
`python -m snapgen.train --preset NAME --data cifar10 --scale smoke --out DIR`.

The stage declares its data (class prompts through the text encoder, pixels or cached autoencoder latents), its
network and its one phase; `snapgen.training.fit` runs it (precision, EMA, NaN policy, checkpoints, exact resume by
rerunning the same command). Losses are callables `loss_fn(net, batch, generator) -> dict(loss=scalar, ...)`: the
task loss (`flow`) or a KD row (`distill.kd_loss_fn`), so distillation swaps the loss and keeps the stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import flow, runs, sampling
from .conditioning import PromptConditioning, unet_fn
from .config import UNetConfig, preset_config, public_config
from .models import EfficientUNet
from .models.autoencoders import AUTOENCODERS
from .registry import resolve, shrink
from .training import EngineOptions, Phase, Stage, fit, process_rank
from .training.cli import add_run_arguments, parse_overrides, print_options, run_cli


@dataclass(frozen=True)
class TrainConfig(EngineOptions):
    arch: str = "snapgen-imagenet"   # preset[+delta...] from snapgen.registry
    width: int | None = None         # shrink the architecture to this stage-1 width (smoke scale); None = full size
    data: str = "cifar10"            # "cifar10" (embedded default) or an ImageNet-style image folder
    train_limit: int | None = None   # use only this many training images (tests, overfitting checks)
    resolution: int = 32             # training images are resized to this (pixels)
    autoencoder: str = "none"        # "none": the UNet runs on pixels; "taesd3": on TAESD3's 16-ch SD3 latents (f = 8;
                                     # frozen encoder, latents cached once), sample grids decoded by TAESD3's decoder
    text_encoder: str = "minilm"     # class prompts "a photo of a <name>" go through this encoder (supplement H)
    objective: str = "flow"          # "flow" (Sec. 3.3, Eq. 1-2) or "ddpm" (supplement H ablations)
    lr: float = 1e-3                 # constant, after `warmup` steps of linear ramp
    weight_decay: float = 0.01       # supplement G
    betas: tuple[float, float] = (0.9, 0.999)  # supplement G (ImageNet, supplement H: (0.9, 0.99))
    cond_dropout: float = 0.1        # probability of the null condition (zeros, Sec. 4) for CFG
    grad_checkpointing: bool = False
    val_size: int = 64               # held-out images (test split) for the validation loss
    val_timesteps: int = 8           # fixed t grid of the validation loss (SD3)
    sample_steps: int = 30           # sampler steps for grids
    sample_cfg: float = 2.0          # guidance scale for grids
    samples_per_class: int = 8

    def __post_init__(self):
        super().__post_init__()
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.autoencoder not in AUTOENCODERS:
            raise ValueError(f"autoencoder={self.autoencoder!r}; valid choices: {', '.join(AUTOENCODERS)}")
        if self.resolution % AUTOENCODERS[self.autoencoder][1]:
            raise ValueError(f"resolution={self.resolution} is not divisible by {self.autoencoder}'s factor "
                             f"{AUTOENCODERS[self.autoencoder][1]}")
        if self.objective not in flow.OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}; valid choices: {', '.join(flow.OBJECTIVES)}")
        for name in ("val_size", "val_timesteps", "sample_steps", "samples_per_class", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout={self.cond_dropout} must be in [0, 1)")
        if self.width is not None and self.width < 1:
            raise ValueError(f"width={self.width} must be >= 1 (or null for the full size)")
        resolve(self.arch)  # unknown presets and deltas fail here, with the valid names

    def unet_config(self, text_dim: int) -> UNetConfig:
        cfg = resolve(self.arch)
        if self.width:
            cfg = shrink(cfg, base_width=self.width, context_dim=text_dim)
        channels = AUTOENCODERS[self.autoencoder][0]
        return cfg.replace(in_channels=channels, out_channels=channels, cross_attention_dim=text_dim)


# Presets, then sparse overrides (`--set key=value`). Step counts are budgets, not claims about convergence.
SCALES: dict[str, dict[str, Any]] = {
    # CPU, minutes: the real architecture shrunk to width 32, CIFAR-10 at 16x16.
    "smoke": dict(width=32, resolution=16, batch_size=32, steps=200, lr=1e-3, warmup=20, val_every=50, ckpt_every=100,
                  val_size=64, sample_steps=20, samples_per_class=4),
    # One GPU, about ten minutes: the full-size model on CIFAR-10 at 32x32.
    "small": dict(resolution=32, batch_size=128, steps=6000, lr=2e-4, warmup=200, val_every=500, ckpt_every=1000,
                  val_size=512, log_every=50, sample_every=2000),
    # Supplement H: ImageNet-256, batch 1024, 120 epochs, AdamW 3e-4, betas (0.9, 0.99), DDPM objective, CLIP-L text.
    "paper": dict(resolution=256, batch_size=1024, steps=120 * 1_281_167 // 1024, lr=3e-4, betas=(0.9, 0.99),
                  objective="ddpm", text_encoder="clip-l", warmup=1000, val_every=5000, ckpt_every=5000,
                  val_size=1024, log_every=100, sample_every=20000, grad_checkpointing=True),
}


def make_config(scale: str = "smoke", **overrides: Any) -> TrainConfig:
    return preset_config(TrainConfig, SCALES, scale, overrides, "training options")


# ---- losses and validation -------------------------------------------------------------------------------------------


def task_loss(objective, adapter: Callable = unet_fn) -> Callable:
    """L_task (Eq. 2, or the DDPM ε-loss): `loss_fn(net, batch, generator) -> dict`."""

    def loss_fn(net, batch, generator):
        terms = objective.loss_terms(adapter(net), batch["x0"], batch["cond"], generator)
        return {"loss": terms["loss"].mean(), "loss_per_sample": terms["loss"].detach(), "t": terms["t"]}

    return loss_fn


@torch.no_grad()
def validation_loss(net, objective, x0: torch.Tensor, cond, num_t: int, seed: int = 1234,
                    adapter: Callable = unet_fn) -> dict[str, float]:
    """SD3-style validation: a fixed held-out batch, a fixed t grid and fixed noise, so curves are comparable."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    grid = (torch.arange(num_t) + 0.5) / num_t  # midpoints of num_t equal bins of (0, 1)
    out = {}
    for t in grid.tolist():
        per = objective.loss_at(adapter(net), x0, cond, torch.full((len(x0),), t, device=x0.device), noise)
        out[f"val_loss_t{t:.3f}"] = per.mean().item()
    out["val_loss"] = float(np.mean(list(out.values())))
    return out


# ---- the stage -------------------------------------------------------------------------------------------------------


class UNetStage(Stage):
    """One phase: the net (+ any extra modules such as the KD projector ψ, Eq. 5) trained on `loss_fn`.

    Args:
        loss_fn: `loss_fn(net, batch, generator) -> dict(loss=...)`; default: the task loss of `cfg.objective`.
        net_factory: builds the net from the text width (a diffusers ModelMixin); default: the `EfficientUNet` of
            `cfg.unet_config`. With it, `adapter` maps the net to `net_fn(x, timestep, cond)`.
        extra_modules: further trainable modules, optimised and checkpointed with the net.
    """

    kind = "unet"
    ema = {"unet_ema": "unet"}

    def __init__(self, cfg: TrainConfig, loss_fn: Callable | None = None,
                 net_factory: Callable[[int], torch.nn.Module] | None = None, adapter: Callable = unet_fn,
                 extra_modules: dict[str, torch.nn.Module] | None = None):
        self.options = self.cfg = cfg
        self.objective = flow.get_objective(cfg.objective)
        self.loss_fn = loss_fn or task_loss(self.objective, adapter)
        self.net_factory, self.adapter = net_factory, adapter
        self.extra_modules = dict(extra_modules or {})

    def setup(self, device, rank, world):
        from .data import ClassConditionalData, class_conditional_splits, class_prompts

        cfg = self.cfg
        self.device = device
        images, labels, val_images, val_labels, names = class_conditional_splits(
            cfg.data, cfg.resolution, cfg.autoencoder, cfg.val_size, cfg.train_limit, cfg.seed, device)
        self.names = list(names)
        prompts = class_prompts(names)
        if device.type == "cuda":  # the whole data set on the GPU: a step indexes it there, no host copy per batch
            images = torch.as_tensor(images).to(device)
        self.data = ClassConditionalData(images, labels, prompts, cfg.batch_size, cfg.seed, cfg.resolution)
        self.conditioning = PromptConditioning(self.data.prompts, cfg.text_encoder, device)
        val_batch = ClassConditionalData(val_images, val_labels, prompts, len(val_labels), cfg.seed,
                                         cfg.resolution).batch(0)
        self.val_x0 = val_batch["x0"].to(device)
        self.val_cond = self.conditioning(val_batch["prompt_idx"].to(device))
        self.unet_cfg = cfg.unet_config(self.conditioning.dim)
        torch.manual_seed(cfg.seed)  # initial weights: the same for every rank and every rerun
        self.net = self.net_factory(self.conditioning.dim) if self.net_factory else \
            EfficientUNet.from_unet_config(self.unet_cfg)
        if cfg.grad_checkpointing:
            self.net.enable_gradient_checkpointing()
        self.net_config = public_config(self.net.config) if self.net_factory else self.unet_cfg.to_dict()

    def modules(self):
        return {"unet": self.net, **self.extra_modules}

    def phases(self):
        def loss(models, batch, generator):
            cond = self.conditioning(batch["prompt_idx"], batch["drop"])
            return self.loss_fn(models.unet, {"x0": batch["x0"], "cond": cond}, generator)

        return [Phase("unet", ["unet", *self.extra_modules], loss, self.cfg.lr, self.cfg.betas,
                      self.cfg.weight_decay)]

    def batch(self, step, generator):
        batch = self.data.batch(step)
        drop = torch.rand(len(batch["x0"]), generator=generator) < self.cfg.cond_dropout
        return {"x0": batch["x0"], "prompt_idx": batch["prompt_idx"], "drop": drop}

    def identity(self):
        identity = {"net": self.net_config, "net_class": type(self.net).__name__,
                    "extra_modules": sorted(self.extra_modules)}
        if getattr(self.loss_fn, "config", None) is not None:  # e.g. the KD row: a task run never resumes a KD run
            identity["loss"] = self.loss_fn.config
        return identity

    def run_config(self):
        import dataclasses

        return {"train": dataclasses.asdict(self.cfg), "unet": self.net_config, "net_class": type(self.net).__name__,
                "text_len": self.conditioning.hidden.shape[1], "class_names": self.names}

    def evaluate(self, models, step):
        raw = models.raw
        metrics = validation_loss(raw["unet"], self.objective, self.val_x0, self.val_cond, self.cfg.val_timesteps,
                                  adapter=self.adapter)
        metrics["val_loss_ema"] = validation_loss(raw["unet_ema"], self.objective, self.val_x0, self.val_cond,
                                                  self.cfg.val_timesteps, adapter=self.adapter)["val_loss"]
        return metrics

    def describe_progress(self, record):
        if "val_loss" in record:
            return f"val_loss {record['val_loss']:.4f} (ema {record['val_loss_ema']:.4f})"
        return ""

    def flush_metrics(self):
        return self.loss_fn.flush_metrics() if hasattr(self.loss_fn, "flush_metrics") else {}

    def write_samples(self, models, step, out):
        """One row per class (its first prompt), `samples_per_class` samples each, seeded by their index."""
        if not hasattr(self, "_decode"):
            self._decode = runs.latent_decoder(self.cfg.autoencoder, self.device)
        k = self.cfg.samples_per_class
        idx = torch.as_tensor([int(self.data.first_prompt[c]) for c in range(len(self.names))],
                              device=self.device).repeat_interleave(k)
        x = sampling.sample(self.adapter(models.raw["unet_ema"]), self.objective, range(len(idx)),
                            tuple(self.val_x0.shape[1:]), self.conditioning(idx), self.conditioning.null(len(idx)),
                            steps=self.cfg.sample_steps, guidance=self.cfg.sample_cfg, decode=self._decode,
                            device=self.device)
        path = Path(out) / "samples" / f"step_{step:07d}.png"
        path.parent.mkdir(exist_ok=True)
        sampling.grid(sampling.to_uint8(x), k, labels=self.names).save(path)
        return path


def train(cfg: TrainConfig, out: str | Path, loss_fn: Callable | None = None,
          hooks: Sequence[Callable[[int, dict], None]] = (), progress: bool = True,
          net_factory: Callable[[int], torch.nn.Module] | None = None, adapter: Callable = unet_fn,
          extra_modules: dict[str, torch.nn.Module] | None = None, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train (or resume) a UNet run in `out` through the engine. Returns the final metrics and paths, with
    `unet_config` (None for a `net_factory` net). `hooks` are called as `hook(step, metrics)` with every record."""
    stage = UNetStage(cfg, loss_fn, net_factory, adapter, extra_modules)
    result = fit(stage, out, progress=progress, callbacks=[*hooks, *callbacks])
    return {**result, "unet_config": None if net_factory else stage.unet_cfg}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m snapgen.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="snapgen-imagenet", help="architecture: preset[+delta...] (snapgen.registry)")
    p.add_argument("--data", default="cifar10", help="cifar10 (embedded default) or an ImageNet-style folder")
    p.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out (a rerun resumes "
                                                         "anyway)")
    add_run_arguments(p, SCALES)
    args = p.parse_args(argv)
    cfg = make_config(args.scale, arch=args.preset, data=args.data, **parse_overrides(args.set))
    out = Path(args.out or f"runs/{args.preset}-{args.scale}")
    if args.dry_run:
        print_options(cfg, unet=cfg.unet_config(text_dim=384).to_dict(), note="unet at MiniLM's text width 384")
        return 0
    if args.resume and runs.find_checkpoint(out) is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    t0 = time.time()
    result = train(cfg, out, progress=not args.no_progress)
    if process_rank() != 0:  # under torchrun every rank trains; rank 0 reports
        return 0
    print(json.dumps({k: v for k, v in result.items() if k != "unet_config"} | {"minutes": (time.time() - t0) / 60},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
