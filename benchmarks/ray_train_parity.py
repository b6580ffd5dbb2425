"""A 1-worker Ray Train trial against the local executor's trial: the same trial config, trained by
`ablations.trial.run_trial` in a fresh process (what `--executor local` runs) and by `ablations.distributed
.ray_train_trial` (a `TorchTrainer` of one GPU worker, what `--workers-per-trial 1` runs inside its Tune trial).

Prints a table and writes `<out>/ray_train.json`: train_loss at every logged step of each arm against local's
(max relative difference, tolerance 2%), and img/s of each from its own metrics.jsonl (batch x steps between the
records of steps `--from` and `--to`, so start-up, compilation, the end-of-run validation and checkpoint are
outside; also the median 10-step window). Target: Ray's img/s within 5% of the local trial's. No MLflow (the trials
are untracked).

More arms split a gap into its causes (`--arms local,ray,ray_task,ray_task_nice15,local_thread`): `ray_task` runs
`run_trial` as a plain Ray task with the worker's resources (Ray's worker process and environment, no Train),
`ray_task_nice15` the same at Ray's default worker niceness (the sweep sets 0), `local_thread` runs it on a thread of
a spawned process with the worker's thread count (Train V2's thread, no Ray).

Protocol: `--rounds R` rounds of every arm; round i runs the arms in the given order when i is even and reversed
when odd (so no arm always runs on a GPU another has just warmed); every trial runs in a fresh process and this
process puts nothing on the GPU. Ratios are reported per round, with the mean and the range. One device call holds
about one round of four arms: `--first-round 1` starts the second call reversed, and `--merge A.json B.json` joins
the calls' results. The first H200 runs (one pair each, local first inside this process) gave 0.948 and 0.908;
three rounds of this protocol gave 0.966, 1.059 and 0.939 (reports/results/ray_train/run3_protocol/).

    python -m benchmarks.ray_train_parity --out OUT [--steps 200 --batch 128 --arms local,ray --rounds 1]
    python -m benchmarks.ray_train_parity --out OUT --merge call1/ray_train.json call2/ray_train.json
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


def _local_process(trial: dict, threads: int | None, in_thread: bool) -> None:
    if threads:  # before torch is imported: what Ray does for its workers (OMP_NUM_THREADS = reserved CPUs)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from ablations.trial import run_trial

    if not in_thread:
        run_trial(trial)
        return
    import threading

    failed: list[BaseException] = []

    def body() -> None:
        try:
            run_trial(trial)
        except BaseException as e:  # re-raised in the main thread, so the process's exit code says so
            failed.append(e)

    worker = threading.Thread(target=body, name="train_fn")  # as Train V2 runs train_loop_per_worker
    worker.start()
    worker.join()
    if failed:
        raise failed[0]


def run_local(trial: dict, threads: int | None = None, in_thread: bool = False) -> float:
    """The local executor's trial in a fresh (spawned) process, as the Ray worker is; returns its wall time.
    `threads`/`in_thread`: the `local_thread` arm (Train V2's thread and the worker's thread count, without Ray)."""
    import multiprocessing

    t0 = time.time()
    proc = multiprocessing.get_context("spawn").Process(target=_local_process, args=(trial, threads, in_thread))
    proc.start()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"ray_train_parity: the local trial's process exited with {proc.exitcode}")
    return time.time() - t0


def _ray_task_trial(trial: dict) -> dict:
    import torch

    from ablations.trial import run_trial

    run_trial(trial)
    return {"torch_threads": torch.get_num_threads(), "niceness": os.nice(0)}


ARMS = ("local", "ray", "ray_task", "ray_task_nice15", "local_thread")
ARM_HELP = {"local": "run_trial in a spawned process (what --executor local runs)",
            "ray": "a TorchTrainer of 1 worker, Train V2 (what --workers-per-trial 1 runs)",
            "ray_task": "run_trial as a plain Ray task with the worker's resources: Ray's worker process, no Train",
            "ray_task_nice15": "ray_task at Ray's default worker niceness of 15 (the sweep's workers run at 0)",
            "local_thread": "run_trial on a thread of a spawned process with the worker's thread count: no Ray"}


def job_env() -> dict[str, str]:
    """The Ray job's worker environment: the sweep's (ablations.distributed.RAY_WORKER_ENV) and this checkout."""
    from ablations import distributed

    return {"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT)), **distributed.RAY_WORKER_ENV}


def run_arm(arm: str, trial: dict, gpus_per_worker: float, cpus_per_worker: float) -> dict:
    """One trial of one arm; returns its wall time and the torch threads and niceness it ran with."""
    from ablations import distributed

    t0 = time.time()
    if arm in ("local", "local_thread"):  # a spawned child: this process's niceness
        threads = int(cpus_per_worker) if arm == "local_thread" else None
        run_local(trial, threads=threads, in_thread=arm == "local_thread")
        return {"wall_s": time.time() - t0, "niceness": os.nice(0), **({"torch_threads": threads} if threads else {})}
    if arm.startswith("ray_task"):
        import ray

        task = ray.remote(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker, max_retries=0)(_ray_task_trial)
        if arm == "ray_task_nice15":
            task = task.options(runtime_env={"env_vars": {**job_env(), "RAY_worker_niceness": "15"}})
        info = ray.get(task.remote(trial))
        return {"wall_s": time.time() - t0, **info}
    result = distributed.ray_train_trial(trial, workers=1, gpus_per_worker=gpus_per_worker,
                                         cpus_per_worker=cpus_per_worker)
    return {"wall_s": time.time() - t0, "torch_threads": result["tags"].get("torch_threads"),
            "niceness": result["tags"].get("niceness")}


def summarize(rounds: list[dict], tolerance: float) -> dict:
    """Each arm's img/s over local's, per round and as mean and range; train_loss of every arm against local."""
    out: dict = {}
    for arm in sorted({a for r in rounds for a in r["arms"]} - {"local"}):
        ratios = [r["arms"][arm]["img_per_s"] / r["arms"]["local"]["img_per_s"] for r in rounds if arm in r["arms"]]
        medians = [r["arms"][arm]["img_per_s_median_window"] / r["arms"]["local"]["img_per_s_median_window"]
                   for r in rounds if arm in r["arms"]]
        rel = [d for r in rounds if arm in r["arms"] for d in r["arms"][arm]["loss_rel_diff"].values()]
        out[arm] = {"img_per_s_ratio_mean": statistics.mean(ratios), "img_per_s_ratio_min": min(ratios),
                    "img_per_s_ratio_max": max(ratios), "median_window_ratio_mean": statistics.mean(medians),
                    "rounds": len(ratios), "max_rel_diff": max(rel), "loss_ok": max(rel) <= tolerance}
    if "ray" in out:
        out["ray"]["throughput_ok"] = out["ray"]["img_per_s_ratio_mean"] >= 0.95
    return out


def print_table(results: dict) -> None:
    meta = results["meta"]
    start, stop = meta["timed_steps"]
    print(f"| round | order | arm | img/s (steps {start}-{stop}) | / local | median 10-step window / local | "
          f"train_loss max rel diff vs local | torch threads | niceness | wall (s) |\n" + "|---" * 10 + "|")
    for r in results["rounds"]:
        local = r["arms"]["local"]
        for arm in r["order"]:
            a = r["arms"][arm]
            diff = max(a["loss_rel_diff"].values()) if arm != "local" else 0.0
            print(f"| {r['round']} | {' > '.join(r['order'])} | {arm} | {a['img_per_s']:.1f} | "
                  f"{a['img_per_s'] / local['img_per_s']:.3f} | "
                  f"{a['img_per_s_median_window'] / local['img_per_s_median_window']:.3f} | {diff:.2e} | "
                  f"{a.get('torch_threads', meta['local_torch_threads'])} | {a.get('niceness', '')} | "
                  f"{a['wall_s']:.0f} |")
    for arm, s in results["summary"].items():
        print(f"{arm} / local img/s: {s['img_per_s_ratio_mean']:.3f} mean of {s['rounds']} round(s) (range "
              f"{s['img_per_s_ratio_min']:.3f}-{s['img_per_s_ratio_max']:.3f}); train_loss within "
              f"{meta['tolerance']}: {s['loss_ok']}" + ("; target >= 0.95" if arm == "ray" else ""))
    print(f"device {meta['device']}; {meta['arch']}, batch {meta['batch']}, {meta['steps']} steps, "
          f"compile={meta['compile']}; Ray worker {meta['ray_cpus_per_worker']:g} CPUs")


def merge(paths: list[str], out: Path) -> int:
    """Several calls' ray_train.json (one device call holds a round or two) as one: each round keeps its index (the
    calls' --first-round) and names its file; the summary is recomputed; the first file's meta."""
    parts = [json.loads(Path(f).read_text()) for f in paths]
    keys = ("arch", "steps", "batch", "compile", "timed_steps", "device")
    for f, d in zip(paths[1:], parts[1:]):
        if any(d["meta"][k] != parts[0]["meta"][k] for k in keys):
            raise SystemExit(f"ray_train_parity --merge: {f} ran another setting than {paths[0]} ({keys})")
    rounds = [{**r, "source": f} for f, d in zip(paths, parts) for r in d["rounds"]]  # each keeps its index
    results = {"meta": {**parts[0]["meta"], "merged_from": paths}, "rounds": rounds,
               "summary": summarize(rounds, parts[0]["meta"]["tolerance"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_train.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    ray = results["summary"].get("ray", {})
    return 0 if ray.get("loss_ok") and ray.get("throughput_ok") else 1


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
    p.add_argument("--arms", default="local,ray", help="comma-separated, in round 0's order (local is required): "
                   + "; ".join(f"{a}: {h}" for a, h in ARM_HELP.items()))
    p.add_argument("--rounds", type=int, default=1, help="rounds of every arm; odd rounds run the arms in reverse")
    p.add_argument("--first-round", type=int, default=0, help="the first round's index (1: start reversed, for a "
                                                              "second device call)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="the Ray worker's CPUs (= its torch threads; default: the sweep's default)")
    p.add_argument("--tiny", action="store_true", help="width 32, 16x16, 64 images: a CPU check of the script")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge earlier runs' ray_train.json into --out; no trial")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.merge:
        return merge(args.merge, out)
    rounds = args.rounds
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if rounds < 1:
        p.error(f"--rounds {rounds}: must be >= 1")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "local" not in arms or len(set(arms)) < len(arms):
        p.error(f"--arms {args.arms}: each of {', '.join(ARMS)} at most once, local among them")
    args.compile = {"false": False, "true": True, "null": None}.get(args.compile, args.compile)
    stop = args.stop or args.steps - 10
    out.mkdir(parents=True, exist_ok=True)

    import ray
    import torch

    from ablations import distributed
    from ablations.trial import trial_dir
    from snapgen.tracking import git_sha

    gpus = torch.cuda.device_count()  # counts devices; nothing of this process goes on the GPU
    ray.init(include_dashboard=False, num_gpus=gpus, log_to_driver=True, runtime_env={"env_vars": job_env()})
    gpus_per_worker = 1 if gpus else 0
    cluster = ray.cluster_resources()
    cpus_per_worker = args.cpus_per_worker or distributed.default_cpus_per_worker(
        gpus_per_worker, cluster.get("GPU", 0), cluster.get("CPU", 1))
    results = {"meta": {"torch": torch.__version__, "arch": args.arch, "steps": args.steps, "batch": args.batch,
                        "compile": args.compile, "timed_steps": [args.start, stop], "tolerance": args.tolerance,
                        "arms": arms, "local_torch_threads": torch.get_num_threads(),
                        "ray_cpus_per_worker": cpus_per_worker,
                        "device": torch.cuda.get_device_name(0) if gpus else "cpu", "git_sha": git_sha()},
               "rounds": []}
    # the worker's torch threads are its reserved CPUs (Ray sets OMP_NUM_THREADS); the local trial's are torch's
    # default in a process like this one (OMP_NUM_THREADS as this process has it)
    for i in range(args.first_round, args.first_round + rounds):
        order = arms if i % 2 == 0 else arms[::-1]
        done: dict[str, dict] = {}
        for arm in order:
            trial = make_trial(args, out / f"{arm}_{i}")
            done[arm] = {**run_arm(arm, trial, gpus_per_worker, cpus_per_worker), "curve": losses(trial_dir(trial)),
                         **throughput(trial_dir(trial), args.batch, args.start, stop)}
            partial = {**results, "rounds": results["rounds"] + [{"round": i, "order": order, "arms": done}]}
            (out / "ray_train.partial.json").write_text(json.dumps(partial, indent=1))  # kept if the call times out
        base = done["local"]["curve"]
        for arm, a in done.items():
            if sorted(a["curve"]) != sorted(base):
                raise SystemExit(f"ray_train_parity: {arm} logged steps {sorted(a['curve'])}, local {sorted(base)}")
            a["loss_rel_diff"] = {s: abs(a["curve"][s] - base[s]) / abs(base[s]) for s in base}
        results["rounds"].append({"round": i, "order": order, "arms": done})
    ray.shutdown()
    results["summary"] = summarize(results["rounds"], args.tolerance)
    (out / "ray_train.json").write_text(json.dumps(results, indent=1))
    (out / "ray_train.partial.json").unlink(missing_ok=True)
    print_table(results)
    parity = results["summary"].get("ray", {})
    return 0 if parity.get("loss_ok", True) and parity.get("throughput_ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
