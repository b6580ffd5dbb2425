"""A 1-worker Ray Train trial against the local executor's trial: the same trial config, trained by
`ablations.trial.run_trial` in a fresh process (what `--executor local` runs) and by `ablations.distributed
.ray_train_trial` (a `TorchTrainer` of one GPU worker, what `--workers-per-trial 1` runs inside its Tune trial).

Prints a table and writes `<out>/ray_train.json`: train_loss at every logged step of both (max relative difference,
tolerance 2%), and img/s of each from its own metrics.jsonl (batch x steps between the records of steps `--from` and
`--to`, so start-up, compilation, the end-of-run validation and checkpoint are outside; also the median 10-step
window). Target: Ray's img/s within 5% of the local trial's. No MLflow (the trials are untracked).

Protocol: `--repeats R` pairs; pair i runs local then Ray when i is even, Ray then local when odd (so neither side
always runs on a GPU the other has just warmed); the local trial runs in a spawned process, as the Ray worker does,
and this process puts nothing on the GPU. The ratio is reported per pair, with the mean and the range. The first
H200 runs (one pair each, local first inside this process) gave 0.948 and 0.908.

    python -m benchmarks.ray_train_parity --out OUT [--steps 200 --batch 128 --arch snapgen-imagenet --repeats 1]
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


def _local_process(trial: dict) -> None:
    from ablations.trial import run_trial

    run_trial(trial)


def run_local(trial: dict) -> float:
    """The local executor's trial in a fresh (spawned) process, as the Ray worker is; returns its wall time."""
    import multiprocessing

    t0 = time.time()
    proc = multiprocessing.get_context("spawn").Process(target=_local_process, args=(trial,))
    proc.start()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"ray_train_parity: the local trial's process exited with {proc.exitcode}")
    return time.time() - t0


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
    p.add_argument("--repeats", type=int, default=1, help="pairs of (local, Ray) trials, alternating which runs first")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="the Ray worker's CPUs (= its torch threads; default: the sweep's default)")
    p.add_argument("--tiny", action="store_true", help="width 32, 16x16, 64 images: a CPU check of the script")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: must be >= 1")
    args.compile = {"false": False, "true": True, "null": None}.get(args.compile, args.compile)
    stop = args.stop or args.steps - 10
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import ray
    import torch

    from ablations import distributed
    from ablations.trial import trial_dir

    gpus = torch.cuda.device_count()  # counts devices; nothing of this process goes on the GPU
    ray.init(include_dashboard=False, num_gpus=gpus, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT)),
                                       **distributed.RAY_TRAIN_ENV}})
    gpus_per_worker = 1 if gpus else 0
    cluster = ray.cluster_resources()
    cpus_per_worker = args.cpus_per_worker or distributed.default_cpus_per_worker(
        gpus_per_worker, cluster.get("GPU", 0), cluster.get("CPU", 1))
    results = {"meta": {"torch": torch.__version__, "arch": args.arch, "steps": args.steps, "batch": args.batch,
                        "compile": args.compile, "timed_steps": [args.start, stop], "tolerance": args.tolerance,
                        "repeats": args.repeats, "local_torch_threads": torch.get_num_threads(),
                        "ray_cpus_per_worker": cpus_per_worker}, "pairs": []}
    # the worker's torch threads are its reserved CPUs (Ray sets OMP_NUM_THREADS); the local trial's are torch's
    # default in a process like this one (OMP_NUM_THREADS as this process has it)
    for i in range(args.repeats):
        local, remote = make_trial(args, out / f"local_{i}"), make_trial(args, out / f"ray_{i}")
        pair = {"order": "local first" if i % 2 == 0 else "ray first"}
        for side in (("local", "ray") if i % 2 == 0 else ("ray", "local")):
            if side == "local":
                wall = run_local(local)
                pair["local"] = {**throughput(trial_dir(local), args.batch, args.start, stop), "wall_s": wall}
            else:
                t0 = time.time()
                result = distributed.ray_train_trial(remote, workers=1, gpus_per_worker=gpus_per_worker,
                                                     cpus_per_worker=cpus_per_worker)
                pair["ray"] = {**throughput(trial_dir(remote), args.batch, args.start, stop),
                               "wall_s": time.time() - t0, "worker_torch_threads": result["tags"].get("torch_threads")}
        a, b = losses(trial_dir(local)), losses(trial_dir(remote))
        rel = {s: abs(b[s] - a[s]) / abs(a[s]) for s in a if s in b}
        pair.update(img_per_s_ratio=pair["ray"]["img_per_s"] / pair["local"]["img_per_s"],
                    median_window_ratio=pair["ray"]["img_per_s_median_window"] /
                    pair["local"]["img_per_s_median_window"],
                    steps_compared=len(rel), max_rel_diff=max(rel.values()), final_local=a[max(a)],
                    final_ray=b[max(b)], loss_ok=max(rel.values()) <= args.tolerance and sorted(a) == sorted(b),
                    curve_local=a, curve_ray=b)
        results["pairs"].append(pair)
    ray.shutdown()
    results["meta"]["device"] = torch.cuda.get_device_name(0) if gpus else "cpu"

    ratios = [q["img_per_s_ratio"] for q in results["pairs"]]
    mean = statistics.mean(ratios)
    results["parity"] = {"img_per_s_ratio_mean": mean, "img_per_s_ratio_min": min(ratios),
                         "img_per_s_ratio_max": max(ratios), "throughput_ok": mean >= 0.95,
                         "loss_ok": all(q["loss_ok"] for q in results["pairs"]),
                         "max_rel_diff": max(q["max_rel_diff"] for q in results["pairs"])}
    (out / "ray_train.json").write_text(json.dumps(results, indent=1))
    print(f"| pair | order | local img/s (steps {args.start}-{stop}) | Ray img/s | Ray / local | median-window ratio "
          f"| train_loss max rel diff |\n|---|---|---|---|---|---|---|")
    for i, q in enumerate(results["pairs"]):
        print(f"| {i} | {q['order']} | {q['local']['img_per_s']:.1f} | {q['ray']['img_per_s']:.1f} | "
              f"{q['img_per_s_ratio']:.3f} | {q['median_window_ratio']:.3f} | {q['max_rel_diff']:.2e} |")
    par = results["parity"]
    print(f"device {results['meta']['device']}; {args.arch}, batch {args.batch}, {args.steps} steps, "
          f"compile={args.compile}; Ray/local img/s {mean:.3f} mean of {len(ratios)} pair(s) (range "
          f"{min(ratios):.3f}-{max(ratios):.3f}; target >= 0.95); train_loss within {args.tolerance}: "
          f"{par['loss_ok']}; torch threads local {results['meta']['local_torch_threads']}, Ray worker "
          f"{cpus_per_worker:g} CPUs ({results['pairs'][0]['ray']['worker_torch_threads']} torch threads)")
    return 0 if par["loss_ok"] and par["throughput_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
