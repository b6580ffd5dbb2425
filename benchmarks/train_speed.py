"""Training speed of the harness's own loop (issue 14): `python -m benchmarks.train_speed --out DIR [--steps N]
[--warmup-steps W] [--batch B] [--models NAME ...] [--settings NAME ...] [--parity-steps N] [--quick]`.

Runs the real `snapgen.training.fit` (phases, fused AdamW with the found_inf NaN policy, EMA, metric read-backs every
`log_every` steps, the end-of-run validation and checkpoint) on a `UNetStage` whose data are synthetic: N = 4 x batch
latents of 16 x 32 x 32 (SD3/TAESD3 latents of 256 px images) kept on the device, and 10 class prompts of 8 tokens x
768 (CLIP-L's width, supplement H's ImageNet condition; random, with padded tokens masked), so the box needs no
CIFAR-10, autoencoder or text encoder. Models: `snapgen-imagenet` (the paper's 373.8M UNet, Table 1) and a
DreamLite-like UNet (diffusers' `UNet2DConditionModel` with `benchmarks.throughput.DREAMLITE_LIKE_CONFIG`, 16 latent
channels, cross-attention at 768 and no SDXL micro-conditioning, since the stage passes no pooled text or size ids)
through the same stage (`net_factory=`, `adapter=`).

Measurement: img/s = batch x steps / seconds between two metric records of the steady state (the record after
`--warmup-steps` steps, which hold compilation and autotuning, and the one `--steps` later; a CUDA synchronise in
the record callback; the end-of-run validation and checkpoint are outside). MFU = 3 x forward FLOPs (fvcore
multiply-adds of one image x 2, counted once per model at the benchmark's shapes; backward ~ 2 x forward) x img/s over
PEAK_FLOPS (989 TFLOP/s, the H100/H200 SXM datasheet's dense bf16), and also over the bf16 matmul rate measured in
the same run. Peak memory: `torch.cuda.max_memory_allocated` over the run. Parity: `--parity-rows EAGER COMPILED`
compares two rows' train_loss curves (the same config and seed; scripts/device/train_speed.sh `concurrent` runs the
benchmark config itself for 200 steps both ways), `--parity-steps` trains a small config both ways. `--gpu-lock`
lets processes run side by side (one compiling on the CPU while another is timed) with their timed steps serialised;
`--merge` joins the JSON of several calls. `--quick`: a tiny CPU run of every code path but torch.compile (its
numbers mean nothing). Writes train_speed.json (`settings`: one entry per `<model> <setting>` with img_per_s, mfu,
max_mem_gib; `parity`; `meta`) and train_speed.md under --out, merging into an existing train_speed.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from snapgen.conditioning import PromptConditioning, unet_fn
from snapgen.data import ClassConditionalData
from snapgen.models import EfficientUNet
from snapgen.train import UNetStage, make_config
from snapgen.training import fit

PEAK_FLOPS = 989e12     # H100/H200 SXM dense bf16, the datasheet's (no sparsity)
LATENT, CHANNELS = 32, 16
PROMPTS, TOKENS, TEXT_DIM = 10, 8, 768
DATA_BATCHES = 4        # synthetic latents: N = 4 x batch

# Each setting states every switch. `compile` is the engine option (False, True or a torch.compile mode: what a
# training run gets); cudnn_benchmark and channels_last are set by this benchmark around `fit`.
SETTINGS: dict[str, dict[str, Any]] = {
    "eager": dict(compile=False, cudnn_benchmark=False),
    "eager+cudnn-benchmark": dict(compile=False, cudnn_benchmark=True),
    "eager+channels-last": dict(compile=False, cudnn_benchmark=False, channels_last=True),
    "+compile": dict(compile=True, cudnn_benchmark=False),
    "+compile+cudnn-benchmark": dict(compile=True, cudnn_benchmark=True),
    "+max-autotune": dict(compile="max-autotune-no-cudagraphs", cudnn_benchmark=True),
    "+max-autotune+cuda-graphs": dict(compile="max-autotune", cudnn_benchmark=True),
    "+compile+cuda-graphs": dict(compile="reduce-overhead", cudnn_benchmark=True),
}
MODELS = ("snapgen-imagenet", "dreamlite-like")


# ---- the stage -------------------------------------------------------------------------------------------------------


class SyntheticConditioning(PromptConditioning):
    """`PromptConditioning` over random token embeddings (P, L, D) with a random number of real tokens per prompt."""

    def __init__(self, prompts: int, length: int, dim: int, device: torch.device, seed: int = 0):
        g = torch.Generator().manual_seed(seed + 1)
        self.hidden = torch.randn(prompts, length, dim, generator=g).to(device)
        lengths = torch.randint(length // 2, length + 1, (prompts,), generator=g).clamp(min=1)
        lengths[0] = length
        self.mask = (torch.arange(length)[None] < lengths[:, None]).to(device)
        self.dim = dim


def dreamlite_config(text_dim: int, quick: bool) -> dict[str, Any]:
    from benchmarks.throughput import DREAMLITE_LIKE_CONFIG, tiny

    cfg = tiny(DREAMLITE_LIKE_CONFIG) if quick else dict(DREAMLITE_LIKE_CONFIG)
    for key in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
        cfg.pop(key, None)
    return {**cfg, "in_channels": CHANNELS, "out_channels": CHANNELS, "cross_attention_dim": text_dim,
            "sample_size": LATENT}


def dreamlite_factory(quick: bool):
    def build(text_dim: int) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**dreamlite_config(text_dim, quick))
    return build


def dreamlite_adapter(net: torch.nn.Module):
    """diffusers' forward(sample, timestep, encoder_hidden_states, encoder_attention_mask) as `net_fn(x, t, cond)`."""
    return lambda x, timestep, cond: net(x, timestep, encoder_hidden_states=cond[0], encoder_attention_mask=cond[1],
                                         return_dict=False)[0]


class SyntheticUNetStage(UNetStage):
    """`UNetStage` with synthetic latents and text embeddings on the device in place of CIFAR-10 / TAESD3 / a text
    encoder; everything else (its batches, loss, phase, validation) is the stage's own. No sample grids."""

    def __init__(self, cfg, latent: int, tokens: int, text_dim: int, channels_last: bool = False, **kwargs):
        super().__init__(cfg, **kwargs)
        self.latent, self.tokens, self.text_dim, self.channels_last = latent, tokens, text_dim, channels_last

    def setup(self, device, rank, world):
        cfg = self.cfg
        self.device = device
        g = torch.Generator().manual_seed(cfg.seed)
        n = DATA_BATCHES * cfg.batch_size
        latents = torch.randn(n, CHANNELS, self.latent, self.latent, generator=g).to(device)
        labels = torch.randint(0, PROMPTS, (n,), generator=g)
        self.names = [f"class {i}" for i in range(PROMPTS)]
        prompts = [[name] for name in self.names]
        self.data = ClassConditionalData(latents, labels, prompts, cfg.batch_size, cfg.seed)
        self.conditioning = SyntheticConditioning(PROMPTS, self.tokens, self.text_dim, device, cfg.seed)
        val = torch.randn(cfg.val_size, CHANNELS, self.latent, self.latent, generator=g)
        self.val_x0 = val.to(device)
        self.val_cond = self.conditioning(torch.randint(0, PROMPTS, (cfg.val_size,), generator=g).to(device))
        self.unet_cfg = cfg.unet_config(self.conditioning.dim)
        torch.manual_seed(cfg.seed)
        self.net = self.net_factory(self.conditioning.dim) if self.net_factory else \
            EfficientUNet.from_unet_config(self.unet_cfg)
        if cfg.grad_checkpointing:
            self.net.enable_gradient_checkpointing()
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.net_config = {k: v for k, v in self.net.config.items() if not k.startswith("_")} \
            if self.net_factory else self.unet_cfg.to_dict()

    def write_samples(self, models, step, out):
        return None

    gpu_lock: "GpuLock | None" = None
    lock_step = 0

    def batch(self, step, generator):
        if self.gpu_lock is not None and step == self.lock_step:
            self.gpu_lock.acquire()
        return super().batch(step, generator)


class GpuLock:
    """An exclusive flock that serialises the timed GPU work of benchmark processes run side by side (so one compiles
    on the CPU while another is timed); a compiled run takes it after its compile step, emptying its cache first."""

    def __init__(self, path: str | None):
        self.path, self.file, self.waited_s = path, None, 0.0

    def acquire(self) -> None:
        import fcntl

        if self.path is None or self.file is not None:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        started = time.perf_counter()
        self.file = open(self.path, "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        self.waited_s += time.perf_counter() - started

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock
            self.file = None


class StepTimer:
    """fit callback: (step, seconds since on_start, has validation, train_loss) of every record, after a device sync."""

    def __init__(self, device: torch.device, window_end: int | None = None, on_window=None,
                 profile_steps: int = 0):
        self.device, self.marks, self.start = device, [], None
        self.window_end, self.on_window, self.stamps = window_end, on_window, {}
        # --profile: torch.profiler over the `profile_steps` steps right after the timed window (so the window's
        # timing is not disturbed), summarised by benchmarks.kernel_profile.
        self.profile_steps, self.profiler, self.kernel_profile = profile_steps, None, None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_start(self, info):
        self.start = self._now()

    def on_record(self, record):
        self.marks.append((record["step"], self._now() - self.start, any(k.startswith("val_") for k in record),
                           record.get("train_loss")))
        self.stamps[record["step"]] = time.time()
        if self.profiler is not None and record["step"] == self.window_end + self.profile_steps:
            from benchmarks.kernel_profile import summarise

            self.profiler.__exit__(None, None, None)
            self.kernel_profile = summarise(self.profiler, self.device.type == "cuda", self.profile_steps)
            self.kernel_profile["unit"] = "ms per training step"
            self.profiler = None
        if self.on_window is not None and record["step"] == self.window_end:
            self.on_window(self)  # the row is saved before the end-of-run validation and checkpoint
        if self.profile_steps and record["step"] == self.window_end:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()


# ---- measurement -----------------------------------------------------------------------------------------------------


def count_gmacs(model: str, net: torch.nn.Module, device: torch.device, latent: int, tokens: int,
                text_dim: int) -> float | None:
    """fvcore multiply-adds (G) of one forward at batch 1 at the benchmark's shapes (mask included); None without
    fvcore."""
    try:
        from snapgen.profile import count_flops
    except ImportError:
        return None
    net = net.to(device)
    g = torch.Generator().manual_seed(0)
    inputs = {"sample": torch.randn(1, CHANNELS, latent, latent, generator=g).to(device),
              "timestep": torch.full((1,), 500.0, device=device),
              "encoder_hidden_states": torch.randn(1, tokens, text_dim, generator=g).to(device),
              "encoder_attention_mask": torch.ones(1, tokens, dtype=torch.bool, device=device)}
    try:
        return float(count_flops(net, inputs)["gflops"])
    except Exception as error:  # noqa: BLE001 - MFU is then missing, with the reason printed
        print(f"fvcore could not count {model}: {error}", file=sys.stderr)
        return None


def scratch_dir() -> Path:
    """Run directories (a checkpoint of the 788M UNet with EMA and Adam is ~13 GB): RAM-backed where there is room."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 40 * 2**30:
        return Path(tempfile.mkdtemp(prefix="train_speed_", dir=shm))
    return Path(tempfile.mkdtemp(prefix="train_speed_"))


def train_config(args, steps: int, compile_, batch: int | None = None, width: int | None = None, **extra):
    quick = args.quick
    return make_config(
        "small", arch="snapgen-imagenet", width=16 if quick else width, autoencoder="taesd3",
        resolution=8 * args.latent, text_encoder="clip-l", batch_size=batch or args.batch, steps=steps,
        log_every=args.log_every, val_every=10**9, ckpt_every=10**9, sample_every=0, warmup=0,
        val_size=4 if quick else 64, val_timesteps=1 if quick else 8, compile=compile_, **extra)


def make_stage(model: str, cfg, args, channels_last: bool = False) -> SyntheticUNetStage:
    kwargs = dict(net_factory=dreamlite_factory(args.quick), adapter=dreamlite_adapter) \
        if model == "dreamlite-like" else dict(adapter=unet_fn)
    return SyntheticUNetStage(cfg, args.latent, args.tokens, args.text_dim, channels_last, **kwargs)


def release(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_fit(stage, device, timer: StepTimer | None = None) -> tuple[dict[str, Any], StepTimer, float]:
    timer = timer or StepTimer(device)
    out = scratch_dir()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        result = fit(stage, out, progress=False, callbacks=[timer])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return result, timer, time.perf_counter() - started


def measure(model: str, setting: str, args, device: torch.device, gmacs: dict[str, float | None],
            peak_measured: float | None, save_row=None, lock: GpuLock | None = None) -> dict[str, Any]:
    """One setting: the row (img/s, MFU, peak memory, ...); `save_row(row)` is also called as soon as the timed
    window ends (before the end-of-run validation and checkpoint)."""
    opts = SETTINGS[setting]
    profile_steps = args.log_every if args.profile else 0
    # +1: the last record (with validation) is outside the window and the profile
    steps = args.warmup_steps + args.steps + profile_steps + 1
    compile_ = False if args.quick else opts["compile"]
    cfg = train_config(args, steps, compile_)
    stage = make_stage(model, cfg, args, opts.get("channels_last", False))
    stage.gpu_lock, stage.lock_step = lock, 1 if compile_ else 0  # a compiled run compiles in step 0
    a, b = args.warmup_steps, args.warmup_steps + args.steps
    params_m = None

    def make_row(timer: StepTimer, result: dict[str, Any] | None = None) -> dict[str, Any]:
        marks = {step: t for step, t, val, _ in timer.marks if not val}
        if a not in marks or b not in marks:
            raise RuntimeError(f"records at steps {a} and {b} are needed (log_every={args.log_every}); got "
                               f"{sorted(marks)}")
        seconds = marks[b] - marks[a]
        img_per_s = args.batch * (b - a) / seconds
        steps_in = sorted(k for k in marks if a <= k <= b)
        windows = [args.batch * (s2 - s1) / (marks[s2] - marks[s1]) for s1, s2 in zip(steps_in, steps_in[1:])]
        row: dict[str, Any] = {
            "model": model, "setting": setting, "options": opts, "compile": cfg.compile, "batch": args.batch,
            "params_m": params_m, "img_per_s": img_per_s, "step_ms": 1e3 * seconds / (b - a),
            "img_per_s_windows": windows, "img_per_s_median_window": statistics.median(windows),
            "timed_steps": [a, b], "warmup_s": marks[a], "window_unix_s": [timer.stamps[a], timer.stamps[b]],
            "lock_wait_s": lock.waited_s if lock else 0.0,
            "loss_curve": {step: loss for step, _, _, loss in timer.marks if loss is not None},
            "gmacs_forward": gmacs.get(model)}
        if timer.kernel_profile is not None:
            row["kernel_profile"] = timer.kernel_profile
        if result is not None:
            row.update(wall_s=result["wall_s"], train_loss=result.get("train_loss"), val_loss=result.get("val_loss"),
                       nan_skips=result.get("nan_skips"))
        if gmacs.get(model) is not None:
            flops_per_img = 3 * 2 * gmacs[model] * 1e9
            row["mfu"] = flops_per_img * img_per_s / PEAK_FLOPS
            row["mfu_vs_measured_peak"] = flops_per_img * img_per_s / peak_measured if peak_measured else None
            row["tflops"] = flops_per_img * img_per_s / 1e12
        else:
            row["mfu"] = None
        row["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        row["max_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
        return row

    def window_done(timer: StepTimer) -> None:
        if save_row is not None:
            save_row({**make_row(timer), "partial": "saved at the end of the timed window"})

    cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(opts.get("cudnn_benchmark", False))
    try:
        timer = StepTimer(device, b, window_done, profile_steps)
        result, timer, wall = run_fit(stage, device, timer)
    finally:
        torch.backends.cudnn.benchmark = cudnn
    params_m = sum(p.numel() for p in stage.net.parameters()) / 1e6
    if model not in gmacs:
        gmacs[model] = count_gmacs(model, stage.net, device, args.latent, args.tokens, args.text_dim)
    row = make_row(timer, {**result, "wall_s": wall})
    del stage
    release(device)
    return row


def parity_of_rows(eager: dict[str, Any], compiled: dict[str, Any], tol: float) -> dict[str, Any]:
    """Eager vs compiled run of the same config and seed: relative difference of train_loss at the last record both
    have (the mean of its log window) and the largest over all common records."""
    ce = {int(k): v for k, v in eager["loss_curve"].items()}
    cc = {int(k): v for k, v in compiled["loss_curve"].items()}
    common = sorted(set(ce) & set(cc))
    full = [k for k in common if k % 10 == 0]  # a full log window (the run's last record may hold one step)
    last = (full or common)[-1]
    rel = abs(cc[last] - ce[last]) / abs(ce[last])
    return {"config": f"{eager['model']} at batch {eager['batch']}, the benchmark's own config "
                      f"({eager['setting']} vs {compiled['setting']})",
            "steps": last, "batch": eager["batch"], "train_loss_eager": ce[last], "train_loss_compiled": cc[last],
            "rel_diff_final": rel,
            "max_rel_diff_any_record": max(abs(cc[s] - ce[s]) / abs(ce[s]) for s in common),
            "tolerance": tol, "passed": rel <= tol, "curve_eager": ce, "curve_compiled": cc}


def parity(args, device: torch.device) -> dict[str, Any]:
    """One small config (snapgen-imagenet shrunk to width 64 at the same latents, batch 64) trained for
    `--parity-steps` steps eagerly and compiled from the same seed: the final train_loss (mean of the last log
    window) and the largest relative difference over all records."""
    losses = {}
    curves = {}
    for name, compile_ in (("eager", False), ("compiled", not args.quick)):
        cfg = train_config(args, args.parity_steps, compile_, batch=args.parity_batch, width=64, lr=1e-3)
        stage = make_stage("snapgen-imagenet", cfg, args)
        result, timer, wall = run_fit(stage, device)
        losses[name] = result["train_loss"]
        curves[name] = {step: loss for step, _, _, loss in timer.marks if loss is not None}
        print(f"parity {name}: final train_loss {losses[name]:.5f} ({wall:.0f} s)", file=sys.stderr, flush=True)
        del stage
        release(device)
    rel = abs(losses["compiled"] - losses["eager"]) / abs(losses["eager"])
    common = sorted(set(curves["eager"]) & set(curves["compiled"]))
    max_rel = max(abs(curves["compiled"][s] - curves["eager"][s]) / abs(curves["eager"][s]) for s in common)
    return {"config": f"snapgen-imagenet shrunk to width {cfg.width} ({CHANNELS}x{args.latent}x{args.latent} latents, "
                      f"{args.tokens} tokens x {args.text_dim}, flow loss, lr {cfg.lr:g})",
            "steps": args.parity_steps, "batch": args.parity_batch, "train_loss_eager": losses["eager"],
            "train_loss_compiled": losses["compiled"], "rel_diff_final": rel, "max_rel_diff_any_record": max_rel,
            "tolerance": args.parity_tol, "passed": rel <= args.parity_tol,
            "curve_eager": curves["eager"], "curve_compiled": curves["compiled"]}


# ---- report ----------------------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"Training speed of `snapgen.training.fit`, {meta['latent']}x{meta['latent']}x{CHANNELS} latents, "
             f"{meta['tokens']} tokens x {meta['text_dim']}, {meta['device']}, PyTorch {meta['torch']}; MFU = "
             f"3 x fvcore forward FLOPs x img/s / {PEAK_FLOPS / 1e12:.0f} TFLOP/s (datasheet dense bf16)"
             + (f"; measured bf16 matmul {meta['peak_measured_tflops']:.0f} TFLOP/s"
                if meta.get("peak_measured_tflops") else "")
             + (" (QUICK CPU SMOKE: numbers mean nothing)" if meta.get("quick") else ""), "",
             "| model | setting | batch | img/s | img/s (median window) | step (ms) | MFU | MFU (measured peak) | "
             "peak mem (GiB) | warm-up (s) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(x):
        return f"{100 * x:.1f}%" if x is not None else "n/a"

    for key, row in result["settings"].items():
        row = {**row, "setting": key[len(row["model"]):].strip() if key.startswith(row["model"]) else row["setting"]}
        mem = f"{row['max_mem_gib']:.1f}" if row.get("max_mem_gib") is not None else "n/a"
        if "error" in row:
            lines.append(f"| {row['model']} | {row['setting']} | {row['batch']} | failed: {row['error'][:80]} "
                         "| | | | | | |")
            continue
        median = f"{row['img_per_s_median_window']:.0f}" if row.get("img_per_s_median_window") else "n/a"
        lines.append(f"| {row['model']} | {row['setting']} | {row['batch']} | {row['img_per_s']:.0f} | {median} | "
                     f"{row['step_ms']:.1f} | {pct(row.get('mfu'))} | {pct(row.get('mfu_vs_measured_peak'))} | {mem} | "
                     f"{row['warmup_s']:.0f} |")
    for key, row in result["settings"].items():
        if row.get("kernel_profile"):
            from benchmarks.kernel_profile import markdown as profile_markdown

            lines += ["", profile_markdown(f"Profile of `{key}` ({row['kernel_profile']['iters']} training steps "
                                           "after the timed window)", row["kernel_profile"], kernels=8).rstrip()]
    p = result.get("parity")
    if p:
        lines += ["", f"Parity ({p['config']}, batch {p['batch']}, {p['steps']} steps): final train_loss eager "
                      f"{p['train_loss_eager']:.5f}, compiled {p['train_loss_compiled']:.5f}, relative difference "
                      f"{100 * p['rel_diff_final']:.3f}% (largest over all records "
                      f"{100 * p['max_rel_diff_any_record']:.3f}%); "
                      f"tolerance {100 * p['tolerance']:.0f}%: {'pass' if p['passed'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=30, help="timed steps (after --warmup-steps)")
    p.add_argument("--warmup-steps", type=int, default=20, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--models", nargs="*", default=["snapgen-imagenet"], choices=MODELS)
    p.add_argument("--settings", nargs="*", default=["eager", "+compile"], choices=sorted(SETTINGS))
    p.add_argument("--profile", action="store_true",
                   help="also profile the --log-every steps after each timed window (kernel time by category)")
    p.add_argument("--parity-steps", type=int, default=0, help="also the eager-vs-compiled check (0 = skip)")
    p.add_argument("--parity-batch", type=int, default=64)
    p.add_argument("--parity-tol", type=float, default=0.02, help="allowed relative difference of final train_loss")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run (seconds): every code path but "
                                                        "torch.compile, which it leaves off")
    p.add_argument("--fresh", action="store_true", help="do not merge into an existing train_speed.json")
    p.add_argument("--tag", default="", help="appended to every row's key, e.g. '(200 steps)'")
    p.add_argument("--gmacs", nargs="*", default=[], metavar="MODEL=GMACS",
                   help="forward multiply-adds already counted (skips the fvcore count)")
    p.add_argument("--gpu-lock", default=None, help="flock file serialising timed GPU work across processes")
    p.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                   help="no training: merge the rows of these train_speed.json files (later ones win) into --out")
    p.add_argument("--parity-rows", nargs=2, default=None, metavar=("EAGER_KEY", "COMPILED_KEY"),
                   help="the parity check from two rows' loss curves (same config and seed)")
    args = p.parse_args(argv)
    if args.merge is not None:
        return merge(args)
    args.latent, args.tokens, args.text_dim = (8, 4, 32) if args.quick else (LATENT, TOKENS, TEXT_DIM)
    if args.quick:  # seconds on a CPU: compilation is left out there (minutes on two cores)
        args.batch, args.steps, args.warmup_steps, args.log_every = 4, 2, 1, 1
        args.parity_batch, args.parity_steps = 4, min(args.parity_steps, 3)
    if args.warmup_steps % args.log_every or args.steps % args.log_every:
        p.error("--warmup-steps and --steps must be multiples of --log-every")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if device.type == "cuda":
        from benchmarks.throughput import measure_peak_flops

        peak = measure_peak_flops(device, torch.bfloat16)
    else:
        peak = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train_speed.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() and not args.fresh else {}
    result["meta"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "latent": args.latent, "channels": CHANNELS, "tokens": args.tokens, "text_dim": args.text_dim,
        "peak_flops_mfu": PEAK_FLOPS, "peak_measured_tflops": peak / 1e12 if peak else None, "quick": args.quick,
        "timing": "img/s between the records after --warmup-steps and --steps later (CUDA sync in the callback)",
        "mfu": "3 x 2 x fvcore forward GMACs per image x img/s / peak_flops_mfu"}
    result.setdefault("settings", {})
    gmacs: dict[str, float | None] = {k: float(v) for k, v in (item.split("=") for item in args.gmacs)}
    lock = GpuLock(args.gpu_lock) if args.gpu_lock else None

    def save():
        if args.parity_rows and all(k in result["settings"] for k in args.parity_rows):
            result["parity"] = parity_of_rows(*(result["settings"][k] for k in args.parity_rows), args.parity_tol)
        path.write_text(json.dumps(result, indent=2))
        (out / "train_speed.md").write_text(markdown(result))

    for model in args.models:
        for setting in args.settings:
            key = f"{model} {setting}" + ("" if args.batch == 256 or args.quick else f" @{args.batch}") + \
                (f" {args.tag}" if args.tag else "")

            def save_row(row, key=key):
                result["settings"][key] = row
                save()

            print(f"== {key}", file=sys.stderr, flush=True)
            for attempt in (1, 2):
                try:
                    row = measure(model, setting, args, device, gmacs, peak, save_row, lock)
                    break
                except (RuntimeError, torch.cuda.OutOfMemoryError) as error:  # OOM at a batch: a row saying so
                    if "out of memory" not in str(error).lower():
                        raise
                    release(device)
                    row = {"model": model, "setting": setting, "batch": args.batch, "error": "out of memory",
                           "img_per_s": None, "mfu": None, "max_mem_gib": None}
                    if lock is None:
                        break
                    print(f"{key}: out of memory beside another process; again, holding the GPU lock",
                          file=sys.stderr, flush=True)
                    lock.acquire()
            if lock is not None:
                lock.release()
            print(json.dumps({k: v for k, v in row.items() if k not in ("img_per_s_windows", "loss_curve")}),
                  file=sys.stderr, flush=True)
            save_row(row)
    if args.parity_steps:
        result["parity"] = parity(args, device)
        save()
    print(markdown(result))
    return 0


def merge(args) -> int:
    """Rows of several runs (e.g. one device call each) in one train_speed.json / .md."""
    result: dict[str, Any] = {"settings": {}}
    for file in args.merge:
        part = json.loads(Path(file).read_text())
        result["meta"] = {**result.get("meta", {}), **part.get("meta", {})}
        result["settings"].update(part.get("settings", {}))
        if "parity" in part:
            result["parity"] = part["parity"]
    order = list(SETTINGS)
    result["settings"] = dict(sorted(result["settings"].items(), key=lambda kv: (
        MODELS.index(kv[1]["model"]) if kv[1]["model"] in MODELS else len(MODELS),
        order.index(kv[1]["setting"]) if kv[1]["setting"] in order else len(order), kv[0])))
    if args.parity_rows:
        result["parity"] = parity_of_rows(*(result["settings"][k] for k in args.parity_rows), args.parity_tol)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(result, indent=2))
    (out / "train_speed.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
