"""The one training engine: `fit(stage, out)` trains (or resumes) every stage of the harness.

A stage (the UNet with the task or a KD loss, the tiny decoder with its GAN, step distillation) declares what it
trains: its modules, its update phases (which modules, which loss, which learning rate, from which step), its data
and its evaluation. The engine owns everything else, the same way for every stage (edm2's `training_loop`):

- precision: the network body in bf16 under autocast on CUDA, losses, optimizer and EMA in fp32 (STYLE.md 7);
- optional `torch.compile` of the trained modules (saved modules are always the unwrapped ones), DDP under
  `torchrun` or a Ray Train worker group (gloo on CPU, NCCL on GPU), gradient accumulation, linear warm-up, EMA with
  diffusers' warm-up;
- one NaN/inf policy: a phase whose gradient norm is not finite skips its update (AdamW's `found_inf`, so no host
  sync per step) and counts it; past `max_nan_skips` the run stops naming the last good checkpoint; a checkpoint is
  written only from finite weights;
- the time budget, the progress bar, `metrics.jsonl`, atomic checkpoints, exact resume by rerunning the same command
  (all randomness from (seed, micro-batch, step, phase)), the run directory's lock, and the callbacks that live
  tracking (`snapgen.tracking.LiveRun`) and validation use.

Several processes (DDP): every rank builds the same global batch of a step and trains its slice; the noise of each
micro-batch comes from its index in the global batch, so a run depends on the global batch and on world x grad_accum
(the number of micro-batches), not on which process computes which micro-batch: 2 processes with grad_accum=1 train
what 1 process with grad_accum=2 trains, up to float summation order. Logged train metrics are means over all ranks.
Rank 0 alone writes the run directory (lock, config, metrics.jsonl, checkpoints, samples) and calls the callbacks;
every rank resumes from the checkpoint it wrote (the run directory must be on storage every rank sees).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist

from .. import runs
from ..config import save_yaml, stable_hash


# torch.compile's modes (`compile: <mode>`); "max-autotune" and "reduce-overhead" also capture CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


MAX_BATCH = 2**20  # a global batch beyond this is a typo, not a plan (the paper's largest is 1024)


@dataclass(frozen=True)
class EngineOptions:
    """The loop's own options; every stage's config dataclass inherits them (so presets and `--set` reach them)."""

    steps: int = 200                 # optimizer steps in total (one step = every phase once)
    batch_size: int = 32             # global batch, all ranks and accumulation steps together
    grad_accum: int = 1              # micro-batches per optimizer step
    warmup: int = 0                  # steps of linear learning-rate ramp
    grad_clip: float = 1.0           # max global grad norm per phase; 0 = off
    ema_decay: float = 0.999         # supplement G; warmed up as diffusers' EMAModel: min(decay, (1+n)/(10+n))
    precision: str = "auto"          # "bf16" (autocast, CUDA), "fp32", or "auto" = bf16 on CUDA else fp32
    compile: bool | str | None = None  # torch.compile the trained modules' forward; None = on CUDA only (on a CPU it
                                     # only costs compile time); a string is torch.compile's mode (COMPILE_MODES)
    seed: int = 0
    log_every: int = 10              # steps between train-metric records (and NaN-limit checks)
    val_every: int = 50              # steps between validations
    ckpt_every: int = 100            # steps between checkpoints (and always at the end)
    sample_every: int = 0            # steps between sample grids; 0 = at the end only
    max_nan_skips: int = 20          # skipped non-finite updates allowed before the run stops
    time_budget_min: float = 0.0     # stop (checkpoint, validate, sample) after this many minutes; 0 = no limit

    def __post_init__(self):
        """Ranges, checked before any work (in --dry-run too); stage configs extend this with their own fields."""
        for name in ("steps", "batch_size", "grad_accum", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("warmup", "sample_every", "max_nan_skips", "grad_clip", "time_budget_min"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision={self.precision!r}; valid choices: auto, bf16, fp32")
        if isinstance(self.compile, str) and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile={self.compile!r}; valid choices: true, false, null, {', '.join(COMPILE_MODES)}")
        if self.batch_size > MAX_BATCH:
            raise ValueError(f"batch_size={self.batch_size} is beyond {MAX_BATCH:,}: a typo? (the paper's largest is 1024)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")


# Options that decide how fast or how long a run goes, not what it computes (learning rates depend on the step, never
# on the total), so a rerun with another value resumes the same run; more `steps` extends it.
UNHASHED_OPTIONS = ("steps", "time_budget_min", "compile", "log_every")


def hashed_options(options) -> dict[str, Any]:
    """The options that identify a run (its checkpoint's `run_hash`)."""
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in UNHASHED_OPTIONS}


@dataclass
class Phase:
    """One update of a step: `loss_fn(models, batch, generator) -> dict(loss=scalar, **scalar metrics)` trains the
    parameters of `modules` with AdamW. Records name its metrics `<prefix><key>` (`train_loss`, `d_loss`).

    `batch` is the micro-batch dict; a phase may leave detached tensors in it for a later phase of the same step (the
    decoder's G phase leaves its reconstruction for the D phase)."""

    name: str
    modules: Sequence[str]
    loss_fn: Callable[[Any, dict, torch.Generator], dict]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float | None = None   # None: the stage's options.grad_clip
    start: int = 0                   # first step at which this phase updates (the decoder's GAN from gan_start)
    prefix: str = "train_"


class Stage:
    """What a stage declares; `fit` does the rest. Subclasses set `kind` and `options` and implement `setup`,
    `modules`, `phases`, `batch`; the rest is optional."""

    kind: str = "unet"
    options: EngineOptions
    ema: dict[str, str] = {}          # EMA module name -> the module it averages

    def setup(self, device: torch.device, rank: int, world: int) -> None:
        """Load data and frozen parts, build the trained modules (seeded by options.seed)."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every trained module (diffusers ModelMixins are saved with save_pretrained, others as state dicts)."""
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def batch(self, step: int, generator: torch.Generator) -> dict[str, Any]:
        """The global batch of `step` (tensors with leading dim options.batch_size), a pure function of (seed, step)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What identifies the run beyond the options (architecture, loss, teacher): hashed into run_hash."""
        return {}

    def run_config(self) -> dict[str, Any]:
        """Written to config.yaml (beside kind, options and run_hash): what `snapgen.runs.Run` readers need."""
        return {}

    def evaluate(self, models: "Models", step: int) -> dict[str, float]:
        """Validation metrics (called under no_grad, autocast, eval mode)."""
        return {}

    def write_samples(self, models: "Models", step: int, out: Path) -> Path | None:
        """Write a sample grid under `out/samples/` and return its path."""
        return None

    def flush_metrics(self) -> dict[str, float]:
        """Extra metrics accumulated since the last record (e.g. Fig. 6's per-timestep KD bins)."""
        return {}

    def describe_progress(self, record: dict[str, Any]) -> str:
        return ""


class Models(dict):
    """The stage's modules by name, attribute access too; trained modules are the DDP/compiled wrappers, `raw` the
    unwrapped ones (what is saved and what EMA averages)."""

    def __getattr__(self, name: str) -> torch.nn.Module:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    raw: dict[str, torch.nn.Module]


def step_generator(seed: int, shard: int, step: int, device, phase: str = "") -> torch.Generator:
    """All randomness of a step comes from (seed, shard, step, phase), `shard` being the micro-batch's index in the
    global batch: resume needs no RNG state, and the process that computes a micro-batch does not matter."""
    return torch.Generator(device).manual_seed(int(stable_hash([seed, shard, step, phase]), 16) % 2**63)


def dist_info() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process.

    - A process group someone already set up (a Ray Train worker: `TorchTrainer` initialises gloo or NCCL before the
      training function runs) is used as it is.
    - Under torchrun (`WORLD_SIZE` > 1, `MASTER_ADDR`, ...) the group is initialised here: NCCL on CUDA, else gloo.
    - Otherwise one process: (0, 1, cuda:0 or cpu).

    The CUDA device: the one Ray Train assigned (`ACCELERATE_TORCH_DEVICE`, which it sets from the GPU ids it gave
    the worker, whatever `CUDA_VISIBLE_DEVICES` holds), else `cuda:<LOCAL_RANK>` (torchrun)."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if torch.cuda.is_available():
        assigned = os.environ.get("ACCELERATE_TORCH_DEVICE", "")
        device = torch.device(assigned) if assigned.startswith("cuda") else \
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def process_rank() -> int:
    """This process's rank without touching the process group (0 outside torchrun and Ray Train): what code that
    must run on rank 0 only (MLflow) asks before `fit` starts."""
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int,
               apply: torch.Tensor | None = None) -> float:
    """EMA in fp32 with diffusers' EMAModel warm-up: decay_n = min(decay, (1 + n) / (10 + n)); `apply` (0-dim, 0/1)
    leaves the EMA unchanged on a skipped step without reading it back to the host. Returns decay_n."""
    decay_n = min(decay, (1 + step) / (10 + step))
    ema_params, net_params = list(ema.parameters()), [p.detach() for p in net.parameters()]
    if apply is None:
        torch._foreach_lerp_(ema_params, net_params, 1 - decay_n)
        return decay_n
    delta = torch._foreach_sub(net_params, ema_params)
    torch._foreach_mul_(delta, apply.to(ema_params[0].dtype) * (1 - decay_n))
    torch._foreach_add_(ema_params, delta)
    return decay_n


def _all_finite(modules: Iterable[torch.nn.Module]) -> bool:
    tensors = [p.detach() for m in modules for p in m.parameters()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def _slice(batch: dict[str, Any], part: slice, size: int) -> dict[str, Any]:
    """Tensors (and tuples of tensors) whose leading dim is the batch are sliced; everything else passes through."""
    def cut(v):
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size:
            return v[part]
        if isinstance(v, tuple):
            return tuple(cut(x) for x in v)
        return v
    return {k: cut(v) for k, v in batch.items()}


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, tuple):
            return tuple(move(x) for x in v)
        return v
    return {k: move(v) for k, v in batch.items()}


class _Meter:
    """Device-side sums of a window's scalar metrics, read back to the host once per record, not once per step.
    Terms of a skipped (non-finite) update are left out of the window's means, as if the step had not run."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: torch.Tensor, ok: torch.Tensor) -> None:
        value = torch.where(ok, value.detach().float(), torch.zeros((), device=value.device))
        self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.counts[key] = self.counts[key] + ok.float() if key in self.counts else ok.float()

    def flush(self, world: int = 1) -> dict[str, float]:
        """The window's means; with several ranks, over every rank's micro-batches (one all-reduce per record)."""
        keys = sorted(self.sums)
        if world > 1 and keys:
            packed = torch.stack([self.sums[k] for k in keys] + [self.counts[k] for k in keys])
            dist.all_reduce(packed)
            self.sums = dict(zip(keys, packed[:len(keys)]))
            self.counts = dict(zip(keys, packed[len(keys):]))
        out = {key: float(total) / float(self.counts[key]) for key, total in self.sums.items()
               if float(self.counts[key]) > 0}
        self.sums.clear()
        self.counts.clear()
        return out


def fit(stage: Stage, out: str | Path, *, progress: bool = True, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train (or resume) `stage` in `out`. Returns the last logged metrics with `step`, `out`, `nan_skips` and the
    paths of the last sample grid.

    Args:
        callbacks: objects with any of `on_start(info)`, `on_record(record)`, `on_artifact(path)`,
            `on_end(status, error)` (rank 0 only), e.g. `snapgen.tracking.LiveRun`; a plain callable is called as
            `cb(step, metrics)` with every record (the older hook form).
    """
    out = Path(out)
    o = stage.options
    rank, world, device = dist_info()
    if o.batch_size % (world * o.grad_accum):
        raise ValueError(f"batch_size={o.batch_size} is not divisible by world size {world} x grad_accum="
                         f"{o.grad_accum}; choose a multiple of {world * o.grad_accum}")
    micro = o.batch_size // (world * o.grad_accum)
    stage.setup(device, rank, world)
    torch.manual_seed(o.seed)  # EMA copies and any lazily built parts: the same on every rank and rerun
    raw = dict(stage.modules())
    for module in raw.values():
        module.to(device)
    for name, source in stage.ema.items():
        raw[name] = copy.deepcopy(raw[source]).eval().requires_grad_(False)
    phases = stage.phases()
    identity = {"kind": stage.kind, "options": hashed_options(o), **stage.identity(),
                "phases": [(p.name, list(p.modules), p.lr, list(p.betas), p.weight_decay, p.start) for p in phases]}
    run_hash = stable_hash(identity)
    config = {"kind": stage.kind, **stage.run_config(), "options": dataclasses.asdict(o), "run_hash": run_hash}
    cbs = [cb if not callable(cb) or hasattr(cb, "on_record") else _HookCallback(cb) for cb in callbacks] \
        if rank == 0 else []

    def notify(event: str, *args) -> None:
        for cb in cbs:
            if hasattr(cb, event):
                getattr(cb, event)(*args)

    # A restarted worker group may start while the killed one's rank 0 is still exiting: wait for its lock a while.
    lock = runs.RunLock(out, wait_s=60 if world > 1 else 0) if rank == 0 else None
    if lock is not None:
        lock.__enter__()
    status, error = "FAILED", None
    try:
        result = _fit_locked(stage, out, o, rank, world, device, micro, raw, phases, run_hash, config, progress,
                             notify)
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status, error = "KILLED", "interrupted"
        raise
    except BaseException as e:
        error = "".join(traceback.format_exception_only(type(e), e)).strip()
        raise
    finally:
        notify("on_end", status, error)
        if lock is not None:
            lock.__exit__()


class _HookCallback:
    def __init__(self, hook):
        self.hook = hook

    def on_record(self, record: dict[str, Any]) -> None:
        self.hook(record["step"], {k: v for k, v in record.items() if k not in ("step", "time")})


def _fit_locked(stage, out, o, rank, world, device, micro, raw, phases, run_hash, config, progress, notify):
    from tqdm import tqdm

    bf16 = o.precision == "bf16" or (o.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    trained = {name for p in phases for name in p.modules}
    fused = device.type in ("cuda", "cpu")
    optimizers = {p.name: torch.optim.AdamW([q for m in p.modules for q in raw[m].parameters()], lr=p.lr,
                                            betas=tuple(p.betas), weight_decay=p.weight_decay, fused=fused)
                  for p in phases}

    step, nan_skips = 0, 0
    out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.barrier()  # rank 0 holds the run directory's lock: no writer of an earlier attempt is left
    ckpt = runs.find_checkpoint(out)
    diffusers_modules = {k: m for k, m in raw.items() if hasattr(m, "save_pretrained")}
    if ckpt is not None:
        state = runs.load_checkpoint(ckpt, diffusers_modules, run_hash)
        for name, sd in state["modules"].items():
            raw[name].load_state_dict(sd)
        for name, sd in state["optimizers"].items():
            optimizers[name].load_state_dict(sd)
        step, nan_skips = int(state["step"]), int(state["nan_skips"])
        if rank == 0:
            print(f"resuming {out} at step {step}", file=sys.stderr)
    if world > 1:  # every rank must resume from the same step: a rank that sees another checkpoint is an error
        steps = [torch.zeros((), dtype=torch.long, device=device) for _ in range(world)]
        dist.all_gather(steps, torch.tensor(step, device=device))
        if len({int(s) for s in steps}) > 1:
            raise runs.RunError(f"ranks found checkpoints of different steps in {out} ({[int(s) for s in steps]}): "
                                f"the run directory must be on storage that every rank sees")
    last_good = ckpt if ckpt is not None else None
    if rank == 0:
        save_yaml(config, out / runs.CONFIG_FILE)
        runs.truncate_metrics(out, step)  # records past the checkpoint will be written again, identically
        notify("on_start", {"out": out, "step": step, "run_hash": run_hash, "config": config})

    # Wrappers for the forward passes: DDP for the diffusers modules a phase trains, then torch.compile.
    models = Models(raw)
    models.raw = raw
    ddp = set()
    for name in sorted(trained):
        module = raw[name]
        if world > 1 and name in diffusers_modules:
            module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device] if device.type == "cuda" else None)
            ddp.add(name)
        if o.compile or (o.compile is None and device.type == "cuda"):
            module = torch.compile(module, mode=o.compile if isinstance(o.compile, str) else None)
        models[name] = module
    manual_sync = {p.name: [q for m in p.modules if m not in ddp for q in raw[m].parameters()] for p in phases}

    def phase_params(p: Phase) -> list[torch.nn.Parameter]:
        return [q for m in p.modules for q in raw[m].parameters()]

    def evaluate(step: int) -> dict[str, float]:
        for m in raw.values():
            m.eval()
        with torch.no_grad(), autocast:
            metrics = stage.evaluate(models, step)
        for name in trained:
            raw[name].train()
        return metrics

    def write_samples(step: int) -> Path | None:
        for m in raw.values():
            m.eval()
        with torch.no_grad(), autocast:
            path = stage.write_samples(models, step, out)
        for name in trained:
            raw[name].train()
        if path is not None:
            notify("on_artifact", Path(path))
        return path

    def checkpoint(step: int) -> None:
        nonlocal last_good
        if rank == 0:
            if not _all_finite(raw.values()):  # never replace the last good checkpoint with broken weights
                print(f"step {step}: weights are not finite; checkpoint not written (last good: "
                      f"{last_good or 'none'})", file=sys.stderr)
            else:
                last_good = runs.save_checkpoint(out, diffusers_modules, {
                    "step": step, "nan_skips": nan_skips, "run_hash": run_hash,
                    "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                    "modules": {k: m.state_dict() for k, m in raw.items() if k not in diffusers_modules}})
        if world > 1:
            dist.barrier()

    def check_nan_limit(step: int) -> None:
        if nan_skips > o.max_nan_skips:
            where = f"the last good checkpoint is {last_good} (step {runs.read_state(last_good)['step']})" \
                if last_good is not None else "no checkpoint was written yet"
            raise FloatingPointError(f"{nan_skips} non-finite losses or gradients (by step {step}); limit "
                                     f"max_nan_skips={o.max_nan_skips}. Lower the learning rate or check the data; "
                                     f"{where}")

    for name in trained:
        raw[name].train()
    meter = _Meter()
    skips_window = torch.zeros((), device=device)
    bar = tqdm(total=o.steps, initial=step, disable=not (progress and rank == 0), dynamic_ncols=True,
               desc=stage.kind)
    last: dict[str, Any] = {}
    for record in runs.read_metrics(out):  # a rerun of a finished run still returns its last metrics
        last.update(record)
    sample_path: Path | None = None
    started, end = time.time(), o.steps
    while step < end:
        batch = stage.batch(step, step_generator(o.seed, 0, step, "cpu", "batch"))
        size = o.batch_size
        mine = _slice(batch, slice(rank * micro * o.grad_accum, (rank + 1) * micro * o.grad_accum), size)
        micros = [_to(_slice(mine, slice(i * micro, (i + 1) * micro), micro * o.grad_accum), device)
                  for i in range(o.grad_accum)]
        lr_scale = min(1.0, (step + 1) / o.warmup) if o.warmup else 1.0
        for p in phases:
            if step < p.start:
                continue
            opt = optimizers[p.name]
            for group in opt.param_groups:
                group["lr"] = p.lr * lr_scale
            for name in trained:  # only this phase's parameters collect gradients
                raw[name].requires_grad_(name in p.modules)
            logged: list[tuple[str, torch.Tensor]] = []
            loss_sum = torch.zeros((), device=device)
            for i, mb in enumerate(micros):
                last_micro = i == len(micros) - 1
                g = step_generator(o.seed, rank * o.grad_accum + i, step, device, p.name)  # the micro-batch's index
                with contextlib.nullcontext() if last_micro else _no_sync([models[m] for m in p.modules if m in ddp]):
                    with autocast:
                        terms = p.loss_fn(models, mb, g)
                    loss = terms["loss"].float()
                    (loss / o.grad_accum).backward()
                loss_sum = loss_sum + loss.detach()
                logged += [(p.prefix + k, v) for k, v in terms.items() if isinstance(v, torch.Tensor) and v.dim() == 0]
            if world > 1 and manual_sync[p.name]:  # DDP averages its modules; the others (heads, ψ) here
                grads = [q.grad for q in manual_sync[p.name] if q.grad is not None]
                if grads:
                    flat = torch._utils._flatten_dense_tensors(grads)
                    dist.all_reduce(flat)
                    flat /= world
                    for gr, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                        gr.copy_(synced)
            clip = o.grad_clip if p.grad_clip is None else p.grad_clip
            grad_norm = torch.nn.utils.clip_grad_norm_(phase_params(p), clip if clip else float("inf"))
            ok = torch.isfinite(grad_norm) & torch.isfinite(loss_sum)
            opt.found_inf = (~ok).float()  # fused AdamW skips the update (and its step count) when set
            opt.step()
            opt.zero_grad(set_to_none=True)
            for key, value in logged + [(p.prefix + "grad_norm", grad_norm)]:
                meter.add(key, value, ok)
            skips_window = skips_window + (~ok).float()
            for ema_name, source in stage.ema.items():
                if source in p.modules:
                    ema_update(raw[ema_name], raw[source], o.ema_decay, step, ok.float())
        for name in trained:
            raw[name].requires_grad_(True)
        step += 1
        bar.update(1)
        if o.time_budget_min and end == o.steps and (world == 1 or step % o.log_every == 0) and \
                _out_of_time(started, o.time_budget_min, world, device):
            end = step  # out of time: this step is the last (a rerun continues towards options.steps)
        logging = step % o.log_every == 0 or step % o.ckpt_every == 0 or step == end  # a resume starts a window
        if logging or step % o.ckpt_every == 0:
            window_skips = int(skips_window)  # the one host read-back of a window
            skips_window.zero_()
            nan_skips += window_skips
            check_nan_limit(step)
        record: dict[str, Any] = {"step": step}
        if logging:
            record.update(meter.flush(world), nan_skips=nan_skips, **stage.flush_metrics())
        if (step % o.val_every == 0 or step == end) and rank == 0:
            record.update(evaluate(step))
        if rank == 0 and len(record) > 1:
            record = {"step": step, "time": time.time(), **{k: v for k, v in record.items() if k != "step"}}
            runs.append_metrics(out, record)
            notify("on_record", record)
            last.update(record)
            summary = stage.describe_progress(record)
            if "train_loss" in record:
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
            if summary:
                bar.write(f"step {step}: {summary}")
        if o.sample_every and step % o.sample_every == 0 and step < end and rank == 0:
            sample_path = write_samples(step)
        if step % o.ckpt_every == 0 or step == end:
            checkpoint(step)
    bar.close()
    result = {**last, "step": step, "out": str(out), "nan_skips": nan_skips, "run_hash": run_hash}
    if rank == 0:
        grid = out / "samples" / f"step_{step:07d}.png"
        if grid.exists():  # written at this step already (a rerun of a finished run): still report it
            sample_path = grid
            notify("on_artifact", grid)
        else:
            sample_path = write_samples(step)
        if sample_path is not None:
            result["sample_grid"] = str(sample_path)
        notify("on_artifact", out / runs.CONFIG_FILE)
    return result


def _out_of_time(started: float, budget_min: float, world: int, device: torch.device) -> bool:
    """Past the time budget? With several ranks rank 0's clock decides for all (a broadcast every log_every steps),
    so every rank stops at the same step."""
    over = (time.time() - started) / 60 > budget_min
    if world == 1:
        return over
    flag = torch.tensor(int(over), device=device)
    dist.broadcast(flag, 0)
    return bool(flag)


class _no_sync:
    """DDP's `no_sync` for several wrappers at once: accumulate micro-batches without an all-reduce each."""

    def __init__(self, wrappers: list[torch.nn.Module]):
        self.contexts = [w.no_sync() for w in wrappers if hasattr(w, "no_sync")]

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)


__all__ = ["EngineOptions", "UNHASHED_OPTIONS", "hashed_options", "Phase", "Stage", "Models", "fit",
           "step_generator", "dist_info", "process_rank", "ema_update"]
