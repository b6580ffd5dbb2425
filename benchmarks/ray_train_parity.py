"""A 1-worker Ray Train trial against the local executor's trial: the same trial config, trained by
`ablations.trial.run_trial` in this process (what `--executor local` runs) and by `ablations.distributed
.ray_train_trial` (a `TorchTrainer` of one GPU worker, what `--workers-per-trial 1` runs inside its Tune trial).

Prints a table and writes `<out>/ray_train.json`: train_loss at every logged step of both (max relative difference,
tolerance 2%), and img/s of each from its own metrics.jsonl (batch x steps between the records of steps `--from` and
`--to`, so start-up, compilation, the end-of-run validation and checkpoint are outside; also the median 10-step
window). Target: Ray's img/s within 5% of the local trial's. No MLflow (the trials are untracked).

    python -m benchmarks.ray_train_parity --out OUT [--steps 200 --batch 128 --arch snapgen-imagenet]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_trial(args, out_root: Path) -> dict:
    from ablations import sweep

    spec = sweep.load_spec("unet")
    spec["scales"]["small"] = {
        "train": {"steps": args.steps, "batch_size": args.batch, "compile": args.compile, "log_every": 10,
                  "val_every": 10 * args.steps, "ckpt_every": 10 * args.steps, "val_size": 256, "sample_every": 0,
                  "samples_per_class": 2},
        "fid": {"enabled": False}, "profile": {"architecture": "trained"}}
    if args.tiny:  # the CPU proof of the script: the architecture shrunk, a few images
        spec["scales"]["small"]["train"].update(width=32, resolution=16, val_size=8, train_limit=64,
                                                samples_per_class=1, sample_steps=2)
    trial = sweep.plan(spec, "small", out_root=out_root, profile_cache=out_root / "profile_cache", progress=False)[0]
    return {**trial, "arch": args.arch, "step": args.arch}


def throughput(out: Path, batch: int, start: int, stop: int) -> dict:
    from snapgen import runs

    times = {r["step"]: r["time"] for r in runs.read_metrics(out) if "train_loss" in r}
    steps = sorted(s for s in times if start <= s <= stop)
    if len(steps) < 2:  # the trial logs every 10 steps
        raise SystemExit(f"ray_train_parity: steps {start}-{stop} hold {len(steps)} logged step(s) of {sorted(times)}; "
                         f"widen --from/--to or raise --steps")
    windows = [(b - a) * batch / (times[b] - times[a]) for a, b in zip(steps, steps[1:])]
    return {"img_per_s": (steps[-1] - steps[0]) * batch / (times[steps[-1]] - times[steps[0]]),
            "img_per_s_median_window": statistics.median(windows), "timed_steps": [steps[0], steps[-1]]}


def losses(out: Path) -> dict[int, float]:
    from snapgen import runs

    return {r["step"]: r["train_loss"] for r in runs.read_metrics(out) if "train_loss" in r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_train_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="snapgen-imagenet")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--compile", default="false", help="the trials' `compile` option (eager by default: two compiles "
                                                      "would not fit one device call)")
    p.add_argument("--from", dest="start", type=int, default=20)
    p.add_argument("--to", dest="stop", type=int, default=None, help="default: steps - 10 (the last record includes "
                                                                     "validation)")
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="the Ray worker's CPUs (= its torch threads; default: the sweep's default)")
    p.add_argument("--tiny", action="store_true", help="width 32, 16x16, 64 images: a CPU check of the script")
    args = p.parse_args(argv)
    args.compile = {"false": False, "true": True, "null": None}.get(args.compile, args.compile)
    stop = args.stop or args.steps - 10
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from ablations import distributed
    from ablations.trial import run_trial, trial_dir

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results = {"meta": {"device": device, "torch": torch.__version__, "arch": args.arch, "steps": args.steps,
                        "batch": args.batch, "compile": args.compile, "timed_steps": [args.start, stop],
                        "tolerance": args.tolerance}}
    local = make_trial(args, out / "local")
    t0 = time.time()
    run_trial(local)
    results["local"] = {**throughput(trial_dir(local), args.batch, args.start, stop), "wall_s": time.time() - t0}

    import ray

    ray.init(include_dashboard=False, num_gpus=torch.cuda.device_count(), log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT)),
                                       **distributed.RAY_TRAIN_ENV}})
    remote = make_trial(args, out / "ray")
    gpus_per_worker = 1 if torch.cuda.is_available() else 0
    cluster = ray.cluster_resources()
    cpus_per_worker = args.cpus_per_worker or distributed.default_cpus_per_worker(
        gpus_per_worker, cluster.get("GPU", 0), cluster.get("CPU", 1))
    # the worker's torch threads are its reserved CPUs (Ray sets OMP_NUM_THREADS); the local trial's are torch's default
    results["meta"].update(local_torch_threads=torch.get_num_threads(), ray_cpus_per_worker=cpus_per_worker)
    t0 = time.time()
    remote_result = distributed.ray_train_trial(remote, workers=1, gpus_per_worker=gpus_per_worker,
                                                cpus_per_worker=cpus_per_worker)
    results["ray_train_1_worker"] = {**throughput(trial_dir(remote), args.batch, args.start, stop),
                                     "wall_s": time.time() - t0,
                                     "worker_torch_threads": remote_result["tags"].get("torch_threads")}
    ray.shutdown()

    a, b = losses(trial_dir(local)), losses(trial_dir(remote))
    rel = {s: abs(b[s] - a[s]) / abs(a[s]) for s in a if s in b}
    ratio = results["ray_train_1_worker"]["img_per_s"] / results["local"]["img_per_s"]
    results["parity"] = {"steps_compared": len(rel), "max_rel_diff": max(rel.values()),
                         "final_local": a[max(a)], "final_ray": b[max(b)], "loss_ok": max(rel.values()) <= args.tolerance
                         and sorted(a) == sorted(b), "img_per_s_ratio": ratio, "throughput_ok": ratio >= 0.95,
                         "curve_local": a, "curve_ray": b}
    (out / "ray_train.json").write_text(json.dumps(results, indent=1))
    print(f"| trial | img/s (steps {args.start}-{stop}) | median 10-step window | wall (s) |\n|---|---|---|---|")
    for name in ("local", "ray_train_1_worker"):
        r = results[name]
        print(f"| {name} | {r['img_per_s']:.1f} | {r['img_per_s_median_window']:.1f} | {r['wall_s']:.0f} |")
    par = results["parity"]
    print(f"device {device}; {args.arch}, batch {args.batch}, {args.steps} steps, compile={args.compile}; "
          f"train_loss max rel diff {par['max_rel_diff']:.2e} over {par['steps_compared']} records "
          f"(tolerance {args.tolerance}); Ray/local img/s {ratio:.3f} (target >= 0.95); torch threads local "
          f"{results['meta']['local_torch_threads']}, Ray worker {cpus_per_worker:g} CPUs "
          f"({results['ray_train_1_worker']['worker_torch_threads']} torch threads)")
    return 0 if par["loss_ok"] and par["throughput_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
