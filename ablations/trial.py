"""One ablation trial as a plain function of a config dict: train -> evaluate -> profile (STYLE.md 11).

`run_trial(trial)` knows nothing of Ray and touches MLflow only through `snapgen.tracking.LiveRun`: with
`_tracking_uri` set (what the sweep does) the trial's run is logged live, while it trains; without it (`--no-tracking`)
it returns the metrics, per-step history, tags, params and artifact paths that `snapgen.tracking.log_trial` writes
later (`python -m ablations.sweep ingest`). The trial dict (built by `ablations.sweep.plan`):

    sweep, experiment, walk, step, parent, delta   where the trial comes from (run name = step)
    arch                                           preset[+delta...] for snapgen.registry.resolve
    scale, seed, train                             snapgen.train.make_config(scale, arch=..., seed=..., **train)
    kd_row                                         a snapgen.registry.KD_ROWS name (kd sweep) or None
    fid      {enabled, num_samples, sample_steps, guidance, batch_size}
    fd_cifar {enabled, num_samples, sample_steps, guidance: [scales], batch_size} (optional): the offline proxy
             (evals.fid --features cifar10) at each CFG scale; the best FD-CIFAR is logged with its scale
    profile  {architecture: full|trained, flops_latents, latency_latent, latency_warmup, latency_repeats}
    metric_note                                    what the quality metric is (e.g. "val_loss is a proxy, not FID")
    _out_root, _profile_cache, _progress           where it runs (leading underscore: not part of the identity)
    _tracking_uri, _parent_run_id                  the MLflow store to track it live in, the sweep's parent run

Efficiency columns describe `profile.architecture`: `full` = the real, unshrunk architecture `resolve(arch)` (what
Fig. 3 compares), not the width-32 proxy trained at smoke scale; `params_m_trained` is the trained net's size.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from snapgen.config import flatten, stable_hash

DEFAULT_OUT_ROOT = Path("runs/sweeps")
DEFAULT_PROFILE_CACHE = Path("runs/profile_cache")
HISTORY_KEYS = ("train_loss", "val_loss", "val_loss_ema", "train_grad_norm")  # the post-hoc history (ingest)


def trial_hash(trial: dict[str, Any]) -> str:
    """Hash of the trial's full config (keys starting with `_` say where it runs, not what it is)."""
    return stable_hash({k: v for k, v in trial.items() if not k.startswith("_")})


def trial_dir(trial: dict[str, Any]) -> Path:
    """`<out_root>/<sweep>/<config_hash>/`: a rerun with the same config resumes training there."""
    return Path(trial.get("_out_root") or DEFAULT_OUT_ROOT) / trial["sweep"] / trial_hash(trial)


def train_config(trial: dict[str, Any]):
    from snapgen.train import make_config

    overrides = dict(trial.get("train") or {})
    if "betas" in overrides:
        overrides["betas"] = tuple(overrides["betas"])
    return make_config(trial["scale"], arch=trial["arch"], seed=int(trial["seed"]), **overrides)


def kd_setup(trial: dict[str, Any], cfg) -> dict[str, Any]:
    """The KD sweep's training arguments: `snapgen.distill.kd_loss_fn` for the trial's `registry.KD_ROWS` row.

    Rows with KD terms load the teacher `trial['teacher']` (default 'small': `snapgen.teachers.load_teacher`).
    Returns `train` keyword arguments: loss_fn, extra_modules (the feature projector ψ), hooks (Fig. 6 bins).
    """
    from snapgen.registry import KD_ROWS

    row = trial["kd_row"]
    if row not in KD_ROWS:
        raise KeyError(f"unknown KD row {row!r}; valid rows (snapgen.registry.KD_ROWS): {', '.join(KD_ROWS)}")
    try:
        from snapgen import distill, teachers
    except ImportError as error:
        raise RuntimeError(f"the kd sweep needs snapgen.distill.kd_loss_fn (Eq. 4-8) and snapgen.teachers, which are "
                           f"not available ({error})") from error
    from snapgen import flow

    toggles = KD_ROWS[row]
    teacher, student_channels = None, None
    if toggles["kd"] or toggles["featkd"]:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        spec = trial.get("teacher") or "small"
        # the small teacher sees what the student sees: same pixels, same condition tokens; size from the spec
        options = dict(resolution=cfg.resolution, text_encoder=cfg.text_encoder, **(trial.get("teacher_options") or {})) \
            if spec == "small" else {}
        teacher = teachers.load_teacher(spec, device, **options)
    if toggles["featkd"]:
        student_channels = distill.student_feature_channels(cfg.unet_config(text_dim=0))
    loss_fn = distill.kd_loss_fn(toggles, teacher, objective=flow.get_objective(cfg.objective),
                                 student_channels=student_channels)
    out = {"loss_fn": loss_fn}
    if getattr(loss_fn, "extra_modules", None):
        out["extra_modules"] = loss_fn.extra_modules
    return out


# ---- profile (cached on disk by the architecture's hash) --------------------------------------------------------------


def _cached(cache_dir: Path, key: dict[str, Any], compute, keep=lambda value: True) -> dict[str, Any]:
    """`compute()`'s value, stored in `cache_dir` under the hash of `key`; a value `keep` refuses is returned, not
    stored (a latency whose spread is wide is not a number worth repeating on every rerun)."""
    path = cache_dir / f"{stable_hash(key, length=16)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    if not keep(value):
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({**value, "cache_key": key}, indent=1, default=str))
    tmp.replace(path)
    return value


def profile_architecture(unet_cfg, spec: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    """Params, GFLOPs at each of `spec['flops_latents']` and host latency at `spec['latency_latent']`.

    Each number is cached in `cache_dir` under the hash of (architecture, what, latent[, device]): repeated seeds and
    reruns do not trace the network again (a 128x128 trace takes minutes on a CPU). A latency whose spread is wide
    (`snapgen.profile.WIDE_SPREAD`) is returned flagged (`wide_spread`) but not cached: the next run measures again.
    Without `latency_latent` no latency is measured; `latency_note` (or a default) says why.
    """
    from snapgen import profile
    from snapgen.models import EfficientUNet

    arch_hash = unet_cfg.config_hash()
    net: list[torch.nn.Module] = []  # built on first need

    def get_net() -> torch.nn.Module:
        if not net:
            torch.manual_seed(0)
            net.append(EfficientUNet.from_unet_config(unet_cfg).eval())
        return net[0]

    out: dict[str, Any] = {"arch_hash": arch_hash}
    out["params"] = _cached(cache_dir, {"arch": arch_hash, "what": "params"},
                            lambda: {"params": profile.count_params(get_net())})["params"]
    for latent in spec.get("flops_latents", []):
        flops = _cached(cache_dir, {"arch": arch_hash, "what": "flops", "latent": int(latent)},
                        lambda: {k: v for k, v in profile.count_flops(
                            get_net(), get_net().dummy_inputs(latent=(int(latent), int(latent)))).items()
                            if k in ("gflops", "gflops_fvcore_default", "gflops_attention", "skipped_ops")})
        out[f"gflops_{int(latent)}"] = flops["gflops"]
    latency_latent = spec.get("latency_latent")
    if latency_latent:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        device_name = profile._device_name(torch.device(device))
        repeats, warmup = int(spec.get("latency_repeats", 5)), int(spec.get("latency_warmup", 2))

        def measure() -> dict[str, Any]:
            model = get_net().to(device)
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                      for k, v in model.dummy_inputs(latent=(int(latency_latent),) * 2).items()}

            def forward() -> None:
                with torch.no_grad():
                    model(**inputs)

            result = profile.measure_latency(forward, warmup=warmup, repeats=repeats, device=device,
                                             latent=int(latency_latent))
            model.to("cpu")
            return result

        # "format" 2: results carry n, spread and latent (older cached entries, without them, are measured again)
        out["latency"] = _cached(cache_dir, {"arch": arch_hash, "what": "latency", "latent": int(latency_latent),
                                             "device": device_name, "torch": torch.__version__, "repeats": repeats,
                                             "threads": torch.get_num_threads(), "format": 2}, measure,
                                 keep=lambda result: not result["wide_spread"])
    else:
        out["latency_note"] = spec.get("latency_note") or "not measured (the spec's profile sets no latency_latent)"
    return out


# ---- the loss curve (an artifact of each trial run, redrawn while it trains) -------------------------------------------

LOSS_CURVE_FILE = "loss_curve.png"
CURVE_KEYS = ("train_loss", "val_loss", "val_loss_ema")


def loss_curve_png(records: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """train/val loss against step from metrics.jsonl records, as a small PNG; None when there is nothing to draw."""
    series = {k: [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))] for k in CURVE_KEYS}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    for key, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if key != "train_loss" else None, markersize=3, label=key)
    ax.set(xlabel="step", ylabel="loss", title=f"{title}: step {max(s for v in series.values() for s, _ in v)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


class LossCurve:
    """An engine callback: redraws `<out>/loss_curve.png` at every validation record (and, after the first, at most
    every `every_s` seconds between them) and hands it to `live.on_artifact` without flushing its metrics, so a
    RUNNING trial's run shows its curve."""

    def __init__(self, live, title: str, every_s: float = 60.0):
        self.live, self.title, self.every_s = live, title, every_s
        self.out: Path | None = None
        self._next = 0.0

    def on_start(self, info: dict[str, Any]) -> None:
        self.out = Path(info["out"]) if info.get("out") else None

    def on_record(self, record: dict[str, Any]) -> None:
        import time

        if self.out is None or not ("val_loss" in record or (self._next and time.time() >= self._next)):
            return  # drawn at validations, and between them at most every `every_s` once the first is drawn
        self._next = time.time() + self.every_s
        try:
            from snapgen.runs import read_metrics

            path = loss_curve_png(read_metrics(self.out), self.out / LOSS_CURVE_FILE, self.title)
        except Exception as error:  # noqa: BLE001 - a plot never stops training
            warnings.warn(f"loss curve not drawn: {type(error).__name__}: {error}")
            return
        if path is not None:
            self.live.on_artifact(path, flush=False)


# ---- the trial ---------------------------------------------------------------------------------------------------------


def trial_tags(trial: dict[str, Any]) -> dict[str, Any]:
    """The tags that say which trial a run is (known before it trains)."""
    return {"step": trial["step"], "scale": trial["scale"], "config_hash": trial_hash(trial), "seed": trial["seed"],
            "sweep": trial["sweep"], "walk": trial.get("walk") or "", "parent": trial.get("parent") or "",
            "delta": trial.get("delta") or "", "metric_note": trial.get("metric_note", "")}


def trial_params(trial: dict[str, Any], cfg) -> dict[str, Any]:
    """The params known before training: the trial's config, the resolved training options, the profile's inputs."""
    prof_spec = trial.get("profile") or {}
    latents = [int(n) for n in prof_spec.get("flops_latents", [])]
    params = flatten({k: v for k, v in trial.items() if not k.startswith("_") and k != "train"})
    params.update(flatten({"train": _asdict(cfg)}))
    params["flops_latent"] = latents[0] if latents else None
    params["latency_latent"] = prof_spec.get("latency_latent")
    return params


def live_run(trial: dict[str, Any], cfg):
    """The trial's `tracking.LiveRun` (MLflow store `trial['_tracking_uri']`, nested under `trial['_parent_run_id']`):
    RUNNING from the first training step; `device` and `latency_backend` are 'pending' until profiling sets them."""
    from snapgen import tracking

    tags = {**trial_tags(trial), "git_sha": tracking.git_sha(), "device": "pending", "latency_backend": "pending"}
    return tracking.LiveRun(trial["experiment"], trial["step"], tags=tags, params=trial_params(trial, cfg),
                            parent_run_id=trial.get("_parent_run_id"), uri=trial["_tracking_uri"], terminate=False)


def run_trial(trial: dict[str, Any], callbacks=()) -> dict[str, Any]:
    """Train, evaluate and profile one config. Returns {metrics, history, tags, params, artifacts, out}, and `run_id`
    when the trial was tracked live.

    Live tracking: with `trial['_tracking_uri']` set (the sweep sets it; `--no-tracking` does not) the trial's MLflow
    run (`live_run`) is the training engine's callback: RUNNING from the start, train/val losses logged as they are
    produced, sample grids and config.yaml when written. After evaluation and profiling `LiveRun.finish` logs the
    final metrics, tags and params and ends it FINISHED; a failure ends it FAILED with the `error` tag (KILLED on
    Ctrl-C) and raises. A rerun resumes training from the checkpoint and continues the same run, no step logged twice.
    Without `_tracking_uri` nothing is logged: the caller writes the result (`log_trial`, `ingest`).

    `callbacks`: further engine callbacks (`snapgen.training.fit`), called after the live run's.
    Raises whatever training raises (the sweep retries once, then logs the trial as FAILED).
    """
    import traceback

    from snapgen.train import train
    from snapgen.training import process_rank

    if trial.get("stage"):  # a step-distillation or decoder arm (specs with `stage` and `arms`)
        from ablations.stage_trials import run_stage_trial

        return run_stage_trial(trial, callbacks)
    out = trial_dir(trial)
    cfg = train_config(trial)
    rank = process_rank()  # a Ray Train worker or torchrun rank: only rank 0 touches MLflow, evaluates, profiles
    live = live_run(trial, cfg) if trial.get("_tracking_uri") and rank == 0 else None
    try:
        train_kwargs = kd_setup(trial, cfg) if trial.get("kd_row") else {}
        # train (resumes from out/checkpoint when rerun)
        tracked = [live, LossCurve(live, trial["step"])] if live is not None else []
        trained = train(cfg, out, progress=bool(trial.get("_progress", True)) and rank == 0,
                        callbacks=[*tracked, *callbacks], **train_kwargs)
        if rank != 0:
            return {"rank": rank, "out": str(out), "metrics": {}}
        result = _evaluate_and_profile(trial, cfg, out, trained)
    except BaseException as error:
        if live is not None and live.run_id is not None:
            interrupted = isinstance(error, KeyboardInterrupt)
            try:
                live.finish({}, status="KILLED" if interrupted else "FAILED",
                            error="interrupted" if interrupted else traceback.format_exc())
            except Exception as exc:  # noqa: BLE001 - the trial's own error is the one to raise
                print(f"[trial] could not end MLflow run {live.run_id}: {type(exc).__name__}: {exc}")
        raise
    if live is not None and live.run_id is not None:
        live.finish(result["metrics"], result["artifacts"], tags=result["tags"], params=result["params"])
        result["run_id"] = live.run_id
    return result


def _evaluate_and_profile(trial: dict[str, Any], cfg, out: Path, trained: dict[str, Any]) -> dict[str, Any]:
    """Evaluation (validation loss from the run's records, FID when its weights are found) and profiling of a trained
    trial: the result `run_trial` returns."""
    from snapgen.models import EfficientUNet
    from snapgen.profile import format_latency
    from snapgen.registry import resolve
    from snapgen.runs import read_metrics

    trained_cfg = trained["unet_config"]
    records = read_metrics(out)
    last: dict[str, Any] = {}
    for rec in records:  # the run's last value of each metric (a resumed, already trained run logs no record now)
        last.update(rec)

    metrics: dict[str, float | None] = {k: last.get(k) for k in ("val_loss", "val_loss_ema", "train_loss")}
    tags: dict[str, Any] = {}
    fid_spec = trial.get("fid") or {}
    if fid_spec.get("enabled") and (fid_spec.get("cfg_sweep") or fid_spec.get("metrics")):
        from evals import quality  # supplement H: the lowest value over a CFG grid, per named metric

        quality_metrics, quality_tags = quality.evaluate(out, fid_spec)
        metrics.update(quality_metrics)
        tags.update(quality_tags)
    elif fid_spec.get("enabled"):
        from evals import fid as fid_eval

        try:
            fid = fid_eval.fid_of_run(out, num_samples=int(fid_spec.get("num_samples", 1000)),
                                      sample_steps=int(fid_spec.get("sample_steps", cfg.sample_steps)),
                                      guidance=float(fid_spec.get("guidance", cfg.sample_cfg)),
                                      batch_size=int(fid_spec.get("batch_size", 100)))
            metrics["fid"] = fid["fid"]
            tags["fid_note"] = (f"clean-fid ({fid['mode']}) of {fid['num_samples']} samples vs. {fid['reference']}"
                                + ("" if fid["num_samples"] >= 50_000 else "; the paper uses 50k samples"))
        except fid_eval.FIDWeightsMissing as error:
            warnings.warn(str(error))
            metrics["fid"] = None
            tags["fid_note"] = f"missing: {str(error).splitlines()[0][:300]}"
    else:
        tags["fid_note"] = "not computed at this scale (spec fid.enabled: false)"
    metrics_file = _fd_cifar(trial, cfg, out, metrics, tags)


    # profile: the real architecture unless the spec says "trained"
    prof_spec = trial.get("profile") or {}
    which = prof_spec.get("architecture", "full")
    if which not in ("full", "trained"):
        raise ValueError(f"profile.architecture={which!r}; valid: 'full', 'trained'")
    profiled_cfg = resolve(trial["arch"]) if which == "full" else trained_cfg
    cache = Path(trial.get("_profile_cache") or DEFAULT_PROFILE_CACHE)
    prof = profile_architecture(profiled_cfg, prof_spec, cache)
    trained_params = sum(p.numel() for p in EfficientUNet.from_unet_config(trained_cfg).parameters())
    latents = [int(n) for n in prof_spec.get("flops_latents", [])]
    metrics.update(params_m=prof["params"] / 1e6, params_m_trained=trained_params / 1e6,
                   gflops=prof.get(f"gflops_{latents[0]}") if latents else None)
    metrics.update({f"gflops_{n}": prof[f"gflops_{n}"] for n in latents})
    latency = prof.get("latency")
    metrics.update(latency_ms=latency["median_ms"] if latency else None,
                   latency_p10_ms=latency["p10"] if latency else None,
                   latency_p90_ms=latency["p90"] if latency else None,
                   latency_n=latency["n"] if latency else None)
    tags["latency_note"] = format_latency(latency) if latency else prof["latency_note"]
    tags.update(
        device=latency["device"] if latency else ("cuda" if torch.cuda.is_available() else "cpu"),
        latency_backend=latency["backend"] if latency else "none",
        torch_threads=str(torch.get_num_threads()),  # a Ray worker's are its reserved CPUs (OMP_NUM_THREADS)
        niceness=str(os.nice(0)),  # a Ray worker's is RAY_worker_niceness (ablations.distributed.RAY_WORKER_ENV)
        efficiency_arch=("params_m, gflops and latency_ms are of the full-size architecture resolve(arch) "
                         f"(hash {prof['arch_hash']}), not the trained proxy; params_m_trained is the trained net"
                         if which == "full" else "params_m, gflops and latency_ms are of the trained (shrunk) net"),
    )
    tags.update(trial_tags(trial), arch_hash=prof["arch_hash"])

    history = [(k, float(rec[k]), int(rec["step"])) for rec in records for k in HISTORY_KEYS if k in rec]
    params = trial_params(trial, cfg)
    params.update(flatten({"unet": trained_cfg.to_dict()}))
    params["latency_dtype"] = latency["dtype"] if latency else None
    artifacts = [out / "config.yaml", out / "metrics.jsonl", trained.get("sample_grid"), metrics_file,
                 loss_curve_png(records, out / LOSS_CURVE_FILE, trial["step"])]
    return {"metrics": metrics, "history": history, "tags": tags, "params": params,
            "artifacts": [str(a) for a in artifacts if a], "out": str(out)}


def _fd_cifar(trial: dict[str, Any], cfg, out: Path, metrics: dict, tags: dict) -> Path | None:
    """The offline proxy of the spec's `fd_cifar` block into `metrics` (`fd_cifar`, `kid_cifar`, `class_acc` at the
    best CFG scale, `cfg_best`) and the tag `fd_cifar_note`; every scale's numbers in `<out>/fd_cifar.json`."""
    spec = trial.get("fd_cifar") or {}
    if not spec.get("enabled"):
        return None
    from evals import fid as fid_eval
    from evals.feature_net import FeatureNetMissing

    guidances = spec.get("guidance", [cfg.sample_cfg])
    guidances = [float(g) for g in (guidances if isinstance(guidances, (list, tuple)) else [guidances])]
    try:
        result = fid_eval.cifar_metrics_of_run(out, num_samples=int(spec.get("num_samples", 1000)),
                                               sample_steps=int(spec.get("sample_steps", cfg.sample_steps)),
                                               guidances=guidances, batch_size=int(spec.get("batch_size", 250)))
    except FeatureNetMissing as error:
        warnings.warn(str(error))
        metrics.update(fd_cifar=None, kid_cifar=None, class_acc=None, cfg_best=None, cfg_at_edge=None)
        tags["fd_cifar_note"] = f"missing: {str(error)[:300]}"
        return None
    metrics.update({k: result[k] for k in ("fd_cifar", "kid_cifar", "class_acc", "cfg_best")})
    metrics["cfg_at_edge"] = float(result["cfg_at_edge"])  # 1: the best scale is the grid's end (see the table)
    edge = ", the grid's edge" if result["cfg_at_edge"] else ""
    tags["fd_cifar_note"] = (f"{fid_eval.PROXY_NOTE}; {result['num_samples']} samples per CFG scale "
                             f"({', '.join(f'{g:g}' for g in guidances)}; best {result['cfg_best']:g}{edge}), "
                             f"{result['sample_steps']} sampler steps, vs. {result['reference']}; features "
                             f"{result['feature_extractor']}")
    path = out / "fd_cifar.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def _asdict(cfg) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


__all__ = ["trial_hash", "trial_dir", "train_config", "kd_setup", "profile_architecture", "trial_tags",
           "trial_params", "live_run", "run_trial"]
