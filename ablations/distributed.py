"""Trials that span several processes, GPUs and machines: each Ray Tune trial runs a Ray Train `TorchTrainer`.

`python -m ablations.sweep SWEEP --workers-per-trial N [--gpus-per-worker G]` (`--scale paper`: N = 8 by default)
runs every trial as Ray Train V2 recommends for Tune: the Tune function trainable (`train_driver`) is a light driver
that builds a `TorchTrainer` and waits for it; the trainer starts N workers with G GPUs each (NCCL on GPUs, gloo on
CPUs; Ray Train sets up the process group) and every worker runs `ablations.trial.run_trial`, whose training is the
one engine, `snapgen.training.fit`, under that process group.

- Rank 0 alone opens the trial's MLflow run (`tracking.LiveRun`), writes the run directory (metrics.jsonl,
  checkpoints, samples), evaluates and profiles; the other ranks train and return (the engine and `run_trial` ask
  the rank). Every rank resumes from the run directory's checkpoint, so it must be on storage all nodes see.
- A worker that dies ends the worker group; Ray Train starts a new one (`FailureConfig(max_failures)`), which resumes
  from the last checkpoint, and the new rank 0 reopens the same MLflow run (found by config hash) without logging a
  step twice (`LiveRun`).
- The trial's identity is its config hash (`trial_hash`): the number of workers is not part of it (a run resumes
  with another worker count), and its run directory is `<out_root>/<sweep>/<config_hash>/` on every node.
- Resources: Ray Train's workers reserve their own CPUs and GPUs, outside the Tune trial's placement group, so the
  driver reserves almost nothing and Tune runs at most (cluster GPUs) // (N x G) trials at once (`trial_resources`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ablations.trial import run_trial, trial_hash

DEFAULT_MAX_FAILURES = 2   # worker-group restarts per trial attempt before the attempt fails (the sweep retries once)
PAPER_WORKERS = 8          # --scale paper: 8 GPUs per trial (the paper's nodes have 8 A100s)
DRIVER_CPUS = 0.01         # the Tune trainable only waits on its TorchTrainer; the workers hold the real resources
# The environment of every Ray worker a sweep starts (Tune trials and Train workers): Train V2 (the default in
# Ray >= 2.5x; stated for older Rays), and niceness 0: Ray starts its workers at niceness 15 (a task's or actor's
# os.nice(0) is 15 by default), so a trial's host thread, which feeds the GPU, would yield to every other process on
# the node, Ray's own included. The trials are the job's main work.
RAY_WORKER_ENV = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_worker_niceness": "0"}
RESULT_FILE = "result.json"
TRAIN_SPEED_FILE = Path(__file__).resolve().parents[1] / "reports" / "results" / "train_speed" / "train_speed.json"
SPEED_SETTING = "snapgen-imagenet +compile"  # the measured img/s the plan's GPU-hours come from


def default_cpus_per_worker(gpus_per_worker: float, cluster_gpus: float, cluster_cpus: float) -> float:
    """CPUs a worker reserves when --cpus-per-worker is not given: a GPU worker gets its GPUs' share of the cluster's
    cores (less a whole core, for the trials' drivers and Ray's own processes), a CPU worker one core. Ray sets a
    worker's OMP_NUM_THREADS (so torch's thread count) to the CPUs it reserves, and the data loading and host side of
    the loop share them. On the H200 (reports/results/ray_train/) the 1-worker Ray trial ran at 0.948 of the local
    trial's img/s with 1 CPU and 0.908 with 15 (one pair each, local first), then at 0.988 with 15 (3 rounds of
    alternating order, range 0.939-1.059): the thread count is not what decides it there."""
    if not (gpus_per_worker and cluster_gpus):
        return 1.0
    return float(max(1, int(cluster_cpus / cluster_gpus * gpus_per_worker) - 1))


def trial_resources(workers: int, gpus_per_worker: float, cluster_gpus: float, cluster_cpus: float,
                    cpus_per_worker: float | None = None) -> dict[str, Any]:
    """What one trial holds and how many run at once: {workers, gpus_per_worker, cpus_per_worker, gpus, cpus,
    concurrent}; `cpus_per_worker` None is `default_cpus_per_worker`."""
    if workers < 1:
        raise ValueError(f"--workers-per-trial {workers}: must be >= 1")
    if gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker {gpus_per_worker}: must be >= 0")
    if cpus_per_worker is None:
        cpus_per_worker = default_cpus_per_worker(gpus_per_worker, cluster_gpus, cluster_cpus)
    if cpus_per_worker < 1:  # OMP_NUM_THREADS would be 0
        raise ValueError(f"--cpus-per-worker {cpus_per_worker:g}: must be >= 1")
    gpus, cpus = workers * gpus_per_worker, workers * float(cpus_per_worker)
    concurrent = int(min(cluster_gpus // gpus, cluster_cpus // (cpus + DRIVER_CPUS))) if gpus else \
        int(cluster_cpus // (cpus + DRIVER_CPUS))
    if concurrent < 1:  # Tune would wait forever for resources that never come
        raise ValueError(f"a trial of {workers} workers needs {cpus + DRIVER_CPUS:g} CPUs and {gpus:g} GPUs; the Ray "
                         f"cluster has {cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs (join more nodes: "
                         f"`ray start --address ...`, or lower --workers-per-trial)")
    return {"workers": workers, "gpus_per_worker": gpus_per_worker, "cpus_per_worker": float(cpus_per_worker),
            "gpus": gpus, "cpus": cpus, "concurrent": concurrent}


def measured_img_per_s(path: Path = TRAIN_SPEED_FILE, setting: str = SPEED_SETTING) -> dict[str, Any] | None:
    """The measured training throughput of one GPU ({img_per_s, latent, device, setting}), or None if not committed."""
    try:
        data = json.loads(Path(path).read_text())
        row, meta = data["settings"][setting], data.get("meta", {})
        return {"img_per_s": float(row["img_per_s"]), "latent": int(meta.get("latent", 32)), "batch": row.get("batch"),
                "device": meta.get("device", "unknown"), "setting": setting, "source": str(path)}
    except (OSError, KeyError, ValueError, TypeError):
        return None


def gpu_hours(steps: int, batch_size: int, latent_side: int, speed: dict[str, Any] | None) -> float | None:
    """Estimated GPU-hours of one trial: steps x batch images at the measured img/s of one GPU, scaled by the latent
    area (FLOPs grow with it; attention grows faster, so this is optimistic away from the measured latent) and
    assuming linear scaling over workers (GPU-hours do not depend on the worker count then)."""
    if speed is None or not speed["img_per_s"]:
        return None
    img_per_s = speed["img_per_s"] * (speed["latent"] / latent_side) ** 2
    return steps * batch_size / img_per_s / 3600


def resource_plan(trials: list[dict[str, Any]], workers: int, gpus_per_worker: float,
                  speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `--dry-run` plan: trials x workers x GPUs and the estimated GPU-hours (from `measured_img_per_s`)."""
    from ablations.trial import train_config
    from snapgen.models.autoencoders import AUTOENCODERS

    speed = measured_img_per_s() if speed is None else speed
    per_trial, latents = [], set()
    for t in trials:
        cfg = train_config(t)
        latent = cfg.resolution // AUTOENCODERS[cfg.autoencoder][1]
        latents.add(f"{latent}x{latent} ({cfg.resolution} px, autoencoder {cfg.autoencoder})")
        per_trial.append(gpu_hours(cfg.steps, cfg.batch_size, latent, speed))
    gpus = workers * gpus_per_worker
    known = [h for h in per_trial if h is not None]
    total = sum(known) if known and len(known) == len(per_trial) else None
    return {"trials": len(trials), "workers_per_trial": workers, "gpus_per_worker": gpus_per_worker,
            "gpus_per_trial": gpus, "gpu_hours_per_trial": per_trial, "trained_latents": sorted(latents),
            "gpu_hours_total": total,
            "wall_hours_per_trial": [h / gpus for h in per_trial] if gpus and known else None,
            "throughput_source": speed}


def format_plan(plan: dict[str, Any]) -> str:
    speed = plan["throughput_source"]
    hours = plan["gpu_hours_total"]
    lines = [f"resource plan: {plan['trials']} trials x {plan['workers_per_trial']} workers x "
             f"{plan['gpus_per_worker']:g} GPU = {plan['gpus_per_trial']:g} GPUs per trial"]
    if hours is None:
        lines.append("estimated GPU-hours: unknown (no measured img/s in reports/results/train_speed/)")
    else:
        per = plan["gpu_hours_per_trial"][0]
        wall = f", ~{per / plan['gpus_per_trial']:.3g} h wall per trial on its GPUs" if plan["gpus_per_trial"] \
            else ""
        lines.append(f"estimated GPU-hours: {hours:,.3g} in total ({per:,.3g} per trial{wall}) at the UNet input "
                     f"{', '.join(plan['trained_latents'])}, from {speed['img_per_s']:.0f} img/s measured on one "
                     f"{speed['device']} ({speed['setting']}, {speed['latent']}x{speed['latent']} latents), scaled by "
                     f"latent area; linear scaling over workers assumed")
    return "\n".join(lines)


# ---- the Ray Train trial ------------------------------------------------------------------------------------------------


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: the trial on this worker (rank 0 logs, evaluates and profiles); rank 0
    reports the trial's result as a tiny Ray checkpoint (Ray keeps metrics only with a checkpoint), the others report
    nothing (every worker must call `report` the same number of times)."""
    import ray.train

    result = run_trial(config["trial"])
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / RESULT_FILE).write_text(json.dumps(result, default=str))
        ray.train.report({"config_hash": trial_hash(config["trial"]), "run_id": result.get("run_id") or ""},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_train_trial(trial: dict[str, Any], workers: int, gpus_per_worker: float = 0.0,
                    max_failures: int = DEFAULT_MAX_FAILURES, storage: str | Path | None = None,
                    cpus_per_worker: float = 1.0) -> dict[str, Any]:
    """Run one trial as a `TorchTrainer` of `workers` workers (each reserving `cpus_per_worker` CPUs, which is also
    its torch thread count) and return rank 0's `run_trial` result. Raises `ray.train.TrainingFailedError` when the
    worker group failed `max_failures + 1` times."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ablations.trial import DEFAULT_OUT_ROOT

    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    root = Path(storage or Path(trial.get("_out_root") or DEFAULT_OUT_ROOT) / "_ray_train").resolve()
    trainer = TorchTrainer(
        train_worker, train_loop_config={"trial": trial},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus_per_worker),
                                     resources_per_worker=resources),
        run_config=RunConfig(name=f"{trial['step']}-s{trial['seed']}-{trial_hash(trial)}", storage_path=str(root),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train trial {trial_hash(trial)} ended without rank 0's result")
    with result.checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / RESULT_FILE).read_text())


def train_driver(config: dict[str, Any]) -> None:
    """The Tune function trainable of a multi-worker trial: `run_and_log` (skip if finished, retry once, log FAILED)
    around `ray_train_trial`, then one `tune.report` of the summary."""
    from functools import partial

    from ray import tune

    from ablations.sweep import run_and_log

    trial_fn = partial(ray_train_trial, workers=config["workers"], gpus_per_worker=config["gpus_per_worker"],
                       cpus_per_worker=config.get("cpus_per_worker", 1.0),
                       max_failures=config.get("max_failures", DEFAULT_MAX_FAILURES))
    summary = run_and_log(config["trial"], config["uri"], trial_fn=trial_fn)
    tune.report({k: ("" if v is None else v) for k, v in summary.items()})


def default_workers(scale: str, executor: str | None) -> int | None:
    """`--workers-per-trial` when not given: 8 at `--scale paper` (on Ray), else None (one process per trial)."""
    return PAPER_WORKERS if scale == "paper" and executor in (None, "ray") else None


def check_workers(workers: int | None, executor: str | None) -> None:
    if workers is not None and executor == "local":
        raise ValueError(f"--workers-per-trial {workers} runs each trial as a Ray Train trial; use --executor ray "
                         f"(or leave --executor out)")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers-per-trial {workers}: must be >= 1")


__all__ = ["default_cpus_per_worker", "trial_resources", "measured_img_per_s", "gpu_hours", "resource_plan",
           "format_plan", "train_worker", "ray_train_trial", "train_driver", "default_workers", "check_workers",
           "PAPER_WORKERS", "DEFAULT_MAX_FAILURES", "RAY_WORKER_ENV"]
