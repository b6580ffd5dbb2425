"""The one training loop, for every stage: `python -m snapgen.train --preset NAME --data cifar10 --scale smoke --out DIR`.

Resume by running the same command again (edm2): every state object is in one checkpoint, written atomically, and all
randomness is derived from (seed, rank, step), so a resumed run computes exactly the losses of an uninterrupted one.
Losses are callables `loss_fn(net, batch, generator) -> dict(loss=scalar, ...)`, so distillation swaps the loss and
keeps the loop.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import flow
from .config import UNetConfig, preset_config, save_yaml, stable_hash
from .models import EfficientUNet
from .registry import resolve, shrink


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "snapgen-imagenet"   # preset[+delta...] from snapgen.registry
    width: int | None = None         # shrink the architecture to this stage-1 width (smoke scale); None = full size
    data: str = "cifar10"            # "cifar10" (embedded default) or an ImageNet-style image folder
    train_limit: int | None = None   # use only this many training images (tests, overfitting checks)
    resolution: int = 32             # training images are resized to this (pixels)
    autoencoder: str = "none"        # "none": the UNet runs on pixels; "taesd3": on TAESD3's 16-ch SD3 latents (f = 8;
                                     # frozen encoder, latents cached once), sample grids decoded by TAESD3's decoder
    text_encoder: str = "minilm"     # class prompts "a photo of a <name>" go through this encoder (supplement H)
    objective: str = "flow"          # "flow" (Sec. 3.3, Eq. 1-2) or "ddpm" (supplement H ablations)
    batch_size: int = 32             # global batch, all ranks and accumulation steps together
    grad_accum: int = 1              # micro-batches per optimizer step
    steps: int = 200                 # optimizer steps in total
    lr: float = 1e-3                 # constant, after `warmup` steps of linear ramp
    warmup: int = 0                  # steps
    weight_decay: float = 0.01       # supplement G
    betas: tuple[float, float] = (0.9, 0.999)  # supplement G (ImageNet, supplement H: (0.9, 0.99))
    grad_clip: float = 1.0           # max global grad norm; 0 = off
    ema_decay: float = 0.999         # supplement G; warmed up as diffusers' EMAModel: min(decay, (1+n)/(10+n))
    cond_dropout: float = 0.1        # probability of the null condition (zeros, Sec. 4) for CFG
    precision: str = "auto"          # "bf16" (autocast, CUDA), "fp32", or "auto" = bf16 on CUDA else fp32
    grad_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10              # steps between train-loss log lines
    val_every: int = 50              # steps between validation losses
    val_size: int = 64               # held-out images (test split) for the validation loss
    val_timesteps: int = 8           # fixed t grid of the validation loss (SD3)
    ckpt_every: int = 100            # steps between checkpoints (and always at the end)
    sample_every: int = 0            # steps between sample grids; 0 = at the end only
    sample_steps: int = 30           # sampler steps for grids
    sample_cfg: float = 2.0          # guidance scale for grids
    samples_per_class: int = 8
    max_nan_skips: int = 20          # skipped non-finite steps allowed before the run stops
    time_budget_min: float = 0.0     # stop (checkpoint, validate, sample) after this many minutes; 0 = no limit

    def unet_config(self, text_dim: int) -> UNetConfig:
        cfg = resolve(self.arch)
        if self.width:
            cfg = shrink(cfg, base_width=self.width, context_dim=text_dim)
        channels = AUTOENCODERS[self.autoencoder][0]
        return cfg.replace(in_channels=channels, out_channels=channels, cross_attention_dim=text_dim)


# autoencoder -> (latent channels, downsampling factor); "none" = pixel space.
AUTOENCODERS: dict[str, tuple[int, int]] = {"none": (3, 1), "taesd3": (16, 8)}


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
    cfg = preset_config(TrainConfig, SCALES, scale, overrides, "training options")
    if cfg.autoencoder not in AUTOENCODERS:
        raise ValueError(f"autoencoder={cfg.autoencoder!r}; valid choices: {', '.join(AUTOENCODERS)}")
    if cfg.resolution % AUTOENCODERS[cfg.autoencoder][1]:
        raise ValueError(f"resolution={cfg.resolution} is not divisible by {cfg.autoencoder}'s factor "
                         f"{AUTOENCODERS[cfg.autoencoder][1]}")
    return cfg


# ---- latent space ----------------------------------------------------------------------------------------------------


def encode_latents(splits: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], cfg: TrainConfig,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """{split: (uint8 images (N, H, W, 3), labels)} -> {split: latents (N, C, R/f, R/f)} of the frozen
    `cfg.autoencoder` encoder, cached on disk (snapgen.data.latent_cache) under data set, split, resolution and size;
    the encoder loads once, and only on a cache miss."""
    from .data import ImageDataset, latent_cache
    from .models.autoencoders import load_frozen_encoder

    encoder: torch.nn.Module | None = None

    def encode(x: torch.Tensor) -> torch.Tensor:
        nonlocal encoder
        encoder = encoder or load_frozen_encoder(cfg.autoencoder).to(device)
        return encoder(x.to(device)).float().cpu()

    source = cfg.data if cfg.data != "cifar10" else os.environ.get("SNAPGEN_CIFAR10_NPZ") or "cifar10"
    return {split: latent_cache(ImageDataset(images, labels, names, resolution=cfg.resolution), encode,
                                f"{source}:{cfg.train_limit}", split, cfg.autoencoder)["latents"]
            for split, (images, labels) in splits.items()}


def latent_decoder(name: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents -> images in [-1, 1] for sample grids (identity for pixel space)."""
    if name == "none":
        return lambda x: x
    from .models.taesd import TAESDDecoder, load_taesd

    decoder = TAESDDecoder(load_taesd(name, parts=("decoder",))).to(device)
    return lambda x: decoder(x.float())


# ---- conditioning ----------------------------------------------------------------------------------------------------


class LazyTextEncoder:
    """Loads the encoder only if the embedding cache misses (a GPU box can run on a carried cache alone)."""

    def __init__(self, name: str):
        self.name, self._encoder = name, None

    def encode(self, prompts: list[str]):
        if self._encoder is None:
            from .models.text import load_text_encoder

            self._encoder = load_text_encoder(self.name)
        return self._encoder.encode(prompts)


class ClassPromptConditioning:
    """Class prompts encoded once (cached on disk), truncated to the longest prompt; zeros are the null condition."""

    def __init__(self, prompts: list[str], encoder_name: str, device: torch.device):
        from .data import text_embedding_cache

        emb = text_embedding_cache(prompts, LazyTextEncoder(encoder_name))
        length = int(emb["mask"].sum(1).max())  # drop padding that no prompt uses
        self.hidden = emb["hidden"][:, :length].to(device)  # (P, L, D)
        self.mask = emb["mask"][:, :length].to(device)  # (P, L)
        self.dim = self.hidden.shape[-1]

    def __call__(self, prompt_idx: torch.Tensor, drop: torch.Tensor | None = None):
        """(B,) prompt indices [and (B,) bool drop] -> (hidden (B, L, D), mask (B, L))."""
        hidden, mask = self.hidden[prompt_idx], self.mask[prompt_idx]
        if drop is not None:
            hidden = torch.where(drop[:, None, None], torch.zeros_like(hidden), hidden)
            mask = torch.where(drop[:, None], torch.ones_like(mask), mask)
        return hidden, mask

    def null(self, n: int):
        return self(torch.zeros(n, dtype=torch.long, device=self.hidden.device),
                    torch.ones(n, dtype=torch.bool, device=self.hidden.device))


def unet_fn(net: torch.nn.Module) -> flow.NetFn:
    """Adapt the UNet to the objectives' `net_fn(x, timestep, cond)` with cond = (hidden, mask)."""
    return lambda x, timestep, cond: net(x, timestep, cond[0], cond[1])


def task_loss(objective, adapter: Callable = unet_fn) -> Callable:
    """L_task (Eq. 2, or the DDPM ε-loss): `loss_fn(net, batch, generator) -> dict`."""

    def loss_fn(net, batch, generator):
        terms = objective.loss_terms(adapter(net), batch["x0"], batch["cond"], generator)
        return {"loss": terms["loss"].mean(), "loss_per_sample": terms["loss"].detach(), "t": terms["t"]}

    return loss_fn


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> float:
    """EMA in fp32 with diffusers' EMAModel warm-up: decay_n = min(decay, (1 + n) / (10 + n)). Returns decay_n."""
    decay_n = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay_n)
    return decay_n


# ---- checkpoints -----------------------------------------------------------------------------------------------------


# Options that decide when a run stops, not what it computes: a rerun with another value resumes the same run.
UNHASHED_OPTIONS = ("time_budget_min",)


def hashed_options(cfg) -> dict[str, Any]:
    """The training options that identify a run (its checkpoint's `run_hash`)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNHASHED_OPTIONS}


def step_generator(seed: int, rank: int, step: int, device) -> torch.Generator:
    """All randomness of a step comes from (seed, rank, step): resume needs no RNG state."""
    return torch.Generator(device).manual_seed(int(stable_hash([seed, rank, step]), 16) % 2**63)


def save_checkpoint(out: Path, models: dict[str, torch.nn.Module], state: dict[str, Any]) -> None:
    """Write `out/checkpoint/{<name>/ for each model (save_pretrained), training_state.pt}` atomically: the new
    directory is complete before it replaces the last good one. Every loop of the harness checkpoints through this."""
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    for name, model in models.items():
        model.save_pretrained(tmp / name)
    torch.save(state, tmp / "training_state.pt")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a crash between the two renames above
        if (out / name / "training_state.pt").is_file():
            return out / name
    return None


def load_checkpoint(ckpt: Path, models: dict[str, torch.nn.Module], run_hash: str) -> dict[str, Any]:
    """Load the models saved by `save_checkpoint` in place and return the training state (checked against run_hash)."""
    try:
        state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False)
        for name, model in models.items():
            model.load_state_dict(type(model).from_pretrained(ckpt / name).state_dict())
    except Exception as e:  # a truncated or foreign file: say which and what to do
        raise RuntimeError(f"cannot read checkpoint {ckpt}: {e}. Delete {ckpt} to start over, or point --out "
                           f"elsewhere.") from e
    if state["run_hash"] != run_hash:
        raise RuntimeError(f"checkpoint {ckpt} was written by a run with another config (hash {state['run_hash']}, "
                           f"this run {run_hash}); use another --out, or delete {ckpt.parent} to start over")
    return state


# ---- evaluation ------------------------------------------------------------------------------------------------------


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


@torch.no_grad()
def sample_grid(net, objective, conditioning, class_prompt_idx: list[int], per_class: int, shape: tuple[int, ...],
                steps: int, cfg: float, seed: int = 0, adapter: Callable = unet_fn,
                decode: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> np.ndarray:
    """One row per class, `per_class` samples each, from fixed noise of `shape` (C, h, w), decoded to pixels by
    `decode`. Returns uint8 (rows*R, per_class*R, 3)."""
    device = conditioning.hidden.device
    idx = torch.tensor(class_prompt_idx, device=device).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(idx), *shape, generator=g).to(device)
    x = decode(objective.sample(adapter(net), noise, conditioning(idx), conditioning.null(len(idx)), steps=steps,
                                guidance=cfg))
    img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()  # (N, 3, R, R)
    res = img.shape[-1]
    img = img.view(len(class_prompt_idx), per_class, 3, res, res).permute(0, 3, 1, 4, 2)
    return img.reshape(len(class_prompt_idx) * res, per_class * res, 3).numpy()


# ---- the loop --------------------------------------------------------------------------------------------------------


def _dist_info() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def log_record(out: Path, record: dict[str, Any], hooks: Sequence[Callable[[int, dict], None]]) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    for hook in hooks:
        hook(record["step"], {k: v for k, v in record.items() if k != "step"})


def train(cfg: TrainConfig, out: str | Path, loss_fn: Callable | None = None,
          hooks: Sequence[Callable[[int, dict], None]] = (), progress: bool = True,
          net_factory: Callable[[int], torch.nn.Module] | None = None, adapter: Callable = unet_fn,
          extra_modules: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """Train (or resume) a run in `out`. Returns the final metrics and paths.

    Args:
        hooks: called as `hook(step, metrics)` on rank 0 with every logged record (train and validation): the sweep
            logs them to MLflow.
        loss_fn: `loss_fn(net, batch, generator) -> dict(loss=...)`; defaults to the task loss of `cfg.objective`.
        net_factory: builds the trained network from the text width (a diffusers ModelMixin); default: the
            `EfficientUNet` of `cfg.unet_config`. With it, `adapter` maps the net to `net_fn(x, timestep, cond)`.
        extra_modules: further trainable modules (e.g. the KD projector ψ, Eq. 5), optimised and checkpointed with
            the net; `loss_fn` is expected to use them.
    """
    from PIL import Image

    from .data import ClassConditionalData, ImageDataset, class_prompts, load_cifar10

    out = Path(out)
    rank, world, device = _dist_info()
    objective = flow.get_objective(cfg.objective)
    loss_fn = loss_fn or task_loss(objective, adapter)
    extra_modules = extra_modules or {}

    if cfg.data == "cifar10":
        images, labels, names = load_cifar10("train", limit=cfg.train_limit)
        val_images, val_labels, _ = load_cifar10("test", limit=cfg.val_size)
    else:
        train_set = ImageDataset.image_folder(cfg.data, resolution=cfg.resolution)
        n = min(len(train_set), cfg.train_limit or len(train_set))
        images, labels, names = train_set.uint8(np.arange(n)), np.asarray(train_set.labels)[:n], train_set.class_names
        pick = np.random.default_rng(cfg.seed).choice(len(images), cfg.val_size, replace=False)  # held out below
        keep = np.setdiff1d(np.arange(len(images)), pick)
        val_images, val_labels, images, labels = images[pick], labels[pick], images[keep], labels[keep]
    prompts = class_prompts(names)
    if cfg.autoencoder != "none":  # the UNet learns on the frozen encoder's latents, encoded once and cached
        latents = encode_latents({"train": (images, labels), "val": (val_images, val_labels)}, names, cfg, device)
        images, val_images = latents["train"], latents["val"]
    data = ClassConditionalData(images, labels, prompts, cfg.batch_size, cfg.seed, cfg.resolution)
    conditioning = ClassPromptConditioning(data.prompts, cfg.text_encoder, device)
    val_data = ClassConditionalData(val_images, val_labels, prompts, len(val_labels), cfg.seed, cfg.resolution)
    val_batch = val_data.batch(0)
    val_x0, val_cond = val_batch["x0"].to(device), conditioning(val_batch["prompt_idx"].to(device))

    unet_cfg = cfg.unet_config(conditioning.dim)
    torch.manual_seed(cfg.seed)  # initial weights: the same for every rank and every rerun
    net = (net_factory(conditioning.dim) if net_factory else EfficientUNet.from_unet_config(unet_cfg)).to(device)
    for module in extra_modules.values():
        module.to(device)
    # diffusers adds private keys (`_name_or_path`, ...) to a loaded model's config: not part of what it is.
    net_config = {k: v for k, v in net.config.items() if not k.startswith("_")} if net_factory else unet_cfg.to_dict()
    identity = {"train": hashed_options(cfg), "net": net_config, "net_class": type(net).__name__,
                "extra_modules": sorted(extra_modules)}
    if getattr(loss_fn, "config", None) is not None:  # e.g. the KD row: a task run never resumes a KD run
        identity["loss"] = loss_fn.config
    run_hash = stable_hash(identity)
    if cfg.grad_checkpointing:
        net.enable_gradient_checkpointing()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    trainable = list(net.parameters()) + [p for m in extra_modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    step, nan_skips = 0, 0
    out.mkdir(parents=True, exist_ok=True)
    ckpt = find_checkpoint(out)
    if ckpt is not None:
        state = load_checkpoint(ckpt, {"unet": net, "unet_ema": ema}, run_hash)
        opt.load_state_dict(state["optimizer"])
        for name, module in extra_modules.items():
            module.load_state_dict(state["extra_modules"][name])
        step, nan_skips = state["step"], state["nan_skips"]
        if rank == 0:
            print(f"resuming {out} at step {step}", file=sys.stderr)
    if rank == 0:
        save_yaml({"train": dataclasses.asdict(cfg), "unet": net_config, "net_class": type(net).__name__,
                   "run_hash": run_hash,
                   "text_len": conditioning.hidden.shape[1], "class_names": list(names)}, out / "config.yaml")
        truncate_log(out / "metrics.jsonl", step)  # lines past the checkpoint will be written again
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else net
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    micro = cfg.batch_size // (world * cfg.grad_accum)
    if micro * world * cfg.grad_accum != cfg.batch_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by world_size={world} x "
                         f"grad_accum={cfg.grad_accum}")

    def evaluate(step: int) -> dict[str, float]:
        net.eval()
        with autocast:
            metrics = validation_loss(net, objective, val_x0, val_cond, cfg.val_timesteps, adapter=adapter)
            metrics["val_loss_ema"] = validation_loss(ema, objective, val_x0, val_cond, cfg.val_timesteps,
                                                      adapter=adapter)["val_loss"]
        net.train()
        return metrics

    decode = None

    def write_grid(step: int) -> Path:
        nonlocal decode
        decode = decode or latent_decoder(cfg.autoencoder, device)
        first_prompts = [int(data.first_prompt[k]) for k in range(len(names))]
        with autocast:
            grid = sample_grid(ema, objective, conditioning, first_prompts, cfg.samples_per_class,
                               tuple(val_x0.shape[1:]), cfg.sample_steps, cfg.sample_cfg, adapter=adapter,
                               decode=decode)
        path = out / "samples" / f"step_{step:07d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
        return path

    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and rank == 0), dynamic_ncols=True)
    last: dict[str, Any] = {}
    net.train()
    started, end = time.time(), cfg.steps
    while step < end:
        g = step_generator(cfg.seed, rank, step, device)
        batch = data.batch(step)
        sl = slice(rank * micro * cfg.grad_accum, (rank + 1) * micro * cfg.grad_accum)
        x0, prompt_idx = batch["x0"][sl].to(device), batch["prompt_idx"][sl].to(device)
        drop = torch.rand(len(x0), generator=g, device=device) < cfg.cond_dropout
        cond = conditioning(prompt_idx, drop)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
        losses, finite = [], True
        for i in range(cfg.grad_accum):
            mb = slice(i * micro, (i + 1) * micro)
            with autocast:
                terms = loss_fn(model, {"x0": x0[mb], "cond": (cond[0][mb], cond[1][mb])}, g)
            loss = terms["loss"].float()
            if not torch.isfinite(loss):
                finite = False
                break
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
        if world > 1:  # DDP averages the net's gradients; modules outside it (the KD projector) are averaged here
            for p in (p for m in extra_modules.values() for p in m.parameters() if p.grad is not None):
                dist.all_reduce(p.grad)
                p.grad /= world
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip else float("inf"))
        if not finite or not torch.isfinite(grad_norm):
            # NaN guard: skip the update, keep count, stop past the limit with the step where it happened.
            opt.zero_grad(set_to_none=True)
            nan_skips += 1
            if nan_skips > cfg.max_nan_skips:
                raise FloatingPointError(f"{nan_skips} non-finite losses or gradients (last at step {step}); "
                                         f"limit max_nan_skips={cfg.max_nan_skips}. Lower lr (now {cfg.lr}) or check "
                                         f"the data; the last good checkpoint is in {out}")
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema_update(ema, net, cfg.ema_decay, step)
        step += 1
        bar.update(1)
        if cfg.time_budget_min and (time.time() - started) / 60 > cfg.time_budget_min and end == cfg.steps:
            end = step  # out of time: this step is the last (a rerun continues towards cfg.steps)
        if rank == 0:
            record: dict[str, Any] = {"step": step}
            if losses and (step % cfg.log_every == 0 or step == end):
                record.update(train_loss=float(np.mean(losses)), grad_norm=float(grad_norm), nan_skips=nan_skips)
                if hasattr(loss_fn, "flush_metrics"):  # e.g. Fig. 6's per-timestep-bin KD losses
                    record.update(loss_fn.flush_metrics())
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
            if step % cfg.val_every == 0 or step == end:
                record.update(evaluate(step))
                bar.write(f"step {step}: val_loss {record['val_loss']:.4f} (ema {record['val_loss_ema']:.4f})")
            if len(record) > 1:
                log_record(out, record, hooks)
                last.update(record)
            if cfg.sample_every and step % cfg.sample_every == 0 and step < end:
                write_grid(step)
        if step % cfg.ckpt_every == 0 or step == end:
            if rank == 0:
                save_checkpoint(out, {"unet": net, "unet_ema": ema}, {
                    "optimizer": opt.state_dict(), "step": step, "nan_skips": nan_skips, "run_hash": run_hash,
                    "extra_modules": {name: m.state_dict() for name, m in extra_modules.items()}})
            if world > 1:
                dist.barrier()
    bar.close()
    result = {**last, "step": step, "out": str(out), "unet_config": None if net_factory else unet_cfg,
              "nan_skips": nan_skips}
    if rank == 0:
        grid = out / "samples" / f"step_{step:07d}.png"
        result["sample_grid"] = str(grid if grid.exists() else write_grid(step))
    return result


def truncate_log(path: Path, step: int) -> None:
    if path.exists():
        lines = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
        path.write_text("".join(l + "\n" for l in lines))


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l] if path.exists() else []


def parse_value(text: str) -> Any:
    """`--set` values: YAML scalars and lists, with numbers YAML 1.1 leaves as strings (`3e-4`) made floats."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="snapgen-imagenet", help="architecture: preset[+delta...] (snapgen.registry)")
    p.add_argument("--data", default="cifar10", help="cifar10 (embedded default) or an ImageNet-style folder")
    p.add_argument("--scale", default="smoke", choices=sorted(SCALES))
    p.add_argument("--out", default=None, help="run directory (default runs/<preset>-<scale>)")
    p.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out (a rerun resumes "
                                                         "anyway)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any training option")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: parse_value(v) for k, v in overrides.items()}
    if "betas" in overrides:
        overrides["betas"] = tuple(overrides["betas"])
    cfg = make_config(args.scale, arch=args.preset, data=args.data, **overrides)
    out = Path(args.out or f"runs/{args.preset}-{args.scale}")
    if args.dry_run:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return
    if args.resume and find_checkpoint(out) is None:
        sys.exit(f"--resume: no checkpoint in {out}")
    t0 = time.time()
    result = train(cfg, out, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in result.items() if k != "unet_config"} | {"minutes": (time.time() - t0) / 60},
                     indent=2))


if __name__ == "__main__":
    main()
