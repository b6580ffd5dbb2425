"""Ablation sweeps: `python -m ablations.sweep unet|unet_loo|kd|imagenet|adversarial_step_distill|adversarial_decoder
[--scale smoke|small|paper] [--executor ray|local] [--seeds N] [--spec PATH] [--dry-run]` (the sweeps are
`ablations/specs/*.yaml`), and `python -m ablations.sweep ingest --out-root DIR` for a sweep run with `--no-tracking`.

A spec (`ablations/specs/<sweep>.yaml`) names the trials (a registry walk, KD rows, `models`: architectures trained as
they are, e.g. Table 1's `snapgen-imagenet`, or a `stage` (step_distill, decoder) with `arms`: {name: option
overrides}, run by `ablations.stage_trials`), and per scale the training
overrides, the FID settings and the profile settings. `plan` turns it into trial dicts; each trial is a plain function
call (`ablations.trial.run_trial`) wrapped by `run_and_log`, which skips configs MLflow already holds as FINISHED,
retries a failed trial once, then logs it FAILED with its error and goes on. The executors only differ in where
`run_and_log` runs: in this process (`local`), or as Ray Tune trials with one GPU each when GPUs exist (`ray`).

Live tracking: each trial's MLflow run is RUNNING from its first training step, with train/val losses (real step and
time) and sample grids logged as they are produced, so a running sweep can be watched in the MLflow UI; evaluation and
profiling add the final metrics and end it FINISHED (`snapgen.tracking.LiveRun`, created in the process that runs
the trial: the Ray worker, not the driver). `--no-tracking` creates none: results go to disk for `ingest`.

In MLflow each invocation is one parent run (`tracking.start_parent`, tag `sweep_hash` = `plan_hash(trials)`, run
name `sweep-<sweep>-<scale>`): RUNNING while the sweep runs, then FINISHED, or FAILED when a trial failed; every trial
run is nested under it (its id travels in the trial dict as `_parent_run_id`, not part of the trial's identity).

Resume: run the same command again. Finished trials are skipped (their config hash is in MLflow), an interrupted
trial resumes training from its checkpoint in `runs/sweeps/<sweep>/<config_hash>/`, profiles come from
`runs/profile_cache/`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

from ablations.trial import DEFAULT_OUT_ROOT, DEFAULT_PROFILE_CACHE, run_trial, trial_dir, trial_hash
from snapgen import tracking

SPECS_DIR = Path(__file__).resolve().parent / "specs"
SPEC_KEYS = {"sweep", "experiment", "walk", "steps", "arch", "rows", "models", "teacher", "seeds", "metric_note",
             "scales", "description", "stage", "arms"}
SCALE_KEYS = {"train", "fid", "fd_cifar", "profile", "metric_note", "teacher", "student", "eval"}
EXECUTORS = ("local", "ray")
ATTEMPTS = 2  # a failed trial is retried once


def available_sweeps() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> dict[str, Any]:
    """A spec by sweep name (`unet` -> ablations/specs/unet.yaml) or by path; unknown keys are errors."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPECS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"no spec for sweep {str(name_or_path)!r} ({path}); valid sweeps: "
                                    f"{', '.join(available_sweeps())}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown spec keys {unknown}; valid keys: {sorted(SPEC_KEYS)}")
    for key in ("sweep", "experiment", "scales"):
        if key not in spec:
            raise ValueError(f"{path}: spec needs {key!r}")
    if spec["experiment"] not in tracking.EXPERIMENTS:
        raise ValueError(f"{path}: experiment {spec['experiment']!r}; valid: {', '.join(tracking.EXPERIMENTS)}")
    for scale, block in spec["scales"].items():
        bad = sorted(set(block or {}) - SCALE_KEYS)
        if bad:
            raise ValueError(f"{path}: scale {scale!r} has unknown keys {bad}; valid keys: {sorted(SCALE_KEYS)}")
    if sum(key in spec for key in ("walk", "rows", "models", "stage")) != 1:
        raise ValueError(f"{path}: a spec names exactly one of a registry `walk`, KD `rows`, `models` or a `stage` "
                         "with `arms`")
    if "stage" in spec:
        from ablations.stage_trials import STAGES

        if spec["stage"] not in STAGES or not isinstance(spec.get("arms"), dict) or not spec["arms"]:
            raise ValueError(f"{path}: stage {spec['stage']!r} needs `arms` ({{name: option overrides}}); valid "
                             f"stages: {', '.join(STAGES)}")
    spec["_path"] = str(path)
    return spec


def _arch_strings(walk_name: str) -> dict[str, tuple[Any, str]]:
    """{step name: (WalkStep, arch string)}: a preset followed by the step's deltas, resolvable by the registry."""
    from snapgen import registry

    steps = registry.walk(walk_name)
    by_name = {s.name: s for s in steps}
    out = {}
    for step in steps:
        if walk_name == "loo":  # the final model without one delta: rebuild it from the baseline
            left_out = step.delta[1:] if step.delta else None
            kept = [d for d in registry.SNAPGEN_DELTAS if d != left_out]
            arch = "+".join(["baseline", *kept])
        else:
            chain, s = [], step
            while s.delta is not None:
                chain.append(s.delta)
                s = by_name[s.parent]
            arch = "+".join(["baseline", *reversed(chain)])
        resolved = registry.resolve(arch)
        if resolved.replace(cross_attention_dim=step.config.cross_attention_dim) != step.config:
            raise RuntimeError(f"walk {walk_name!r} step {step.name}: {arch!r} does not resolve to the walk's config")
        out[step.name] = (step, arch)
    return out


def plan(spec: dict[str, Any], scale: str, seeds: int | None = None, out_root: str | Path = DEFAULT_OUT_ROOT,
         profile_cache: str | Path = DEFAULT_PROFILE_CACHE, progress: bool = True) -> list[dict[str, Any]]:
    """The trial dicts of `spec` at `scale` (one per step/row and seed), in the spec's order."""
    if scale not in spec["scales"]:
        raise KeyError(f"{spec.get('_path', 'spec')} has no scale {scale!r}; its scales: {', '.join(spec['scales'])}")
    block = spec["scales"][scale] or {}
    n_seeds = int(seeds if seeds is not None else spec.get("seeds", 1))
    common = {
        "sweep": spec["sweep"], "experiment": spec["experiment"], "scale": scale,
        "train": dict(block.get("train") or {}), "fid": dict(block.get("fid") or {"enabled": False}),
        "profile": dict(block.get("profile") or {}),
        "metric_note": block.get("metric_note", spec.get("metric_note", "")),
        "_out_root": str(Path(out_root).resolve()), "_profile_cache": str(Path(profile_cache).resolve()),
        "_progress": progress,
    }
    if block.get("fd_cifar"):  # only where a scale asks for it: other trials keep their identity (config hash)
        common["fd_cifar"] = dict(block["fd_cifar"])
    entries: list[dict[str, Any]] = []
    if "walk" in spec:
        walk = _arch_strings(spec["walk"])
        wanted = spec.get("steps") or list(walk)
        unknown = [s for s in wanted if s not in walk]
        if unknown:
            raise KeyError(f"steps {unknown} are not in walk {spec['walk']!r}; its steps: {', '.join(walk)}")
        for name in wanted:
            step, arch = walk[name]
            entries.append({"walk": spec["walk"], "step": name, "parent": step.parent, "delta": step.delta,
                            "arch": arch, "kd_row": None})
    elif "stage" in spec:  # another stage's arms (ablations.stage_trials): the same trial per arm, its options apart
        for arm, overrides in spec["arms"].items():
            entries.append({"walk": None, "step": arm, "parent": None, "delta": None, "arch": spec["stage"],
                            "kd_row": None, "stage": spec["stage"], "arm": dict(overrides or {}),
                            "student": dict(block.get("student") or {}), "eval": dict(block.get("eval") or {}),
                            "teacher_options": dict(block.get("teacher") or {})})
    elif "models" in spec:  # architectures as they are (Table 1): the run name is the architecture
        for arch in spec["models"]:
            entries.append({"walk": None, "step": arch, "parent": None, "delta": None, "arch": arch,
                            "kd_row": None})
    else:
        from snapgen.registry import KD_ROWS

        unknown = [r for r in spec["rows"] if r not in KD_ROWS]
        if unknown:
            raise KeyError(f"KD rows {unknown} unknown; valid rows (snapgen.registry.KD_ROWS): {', '.join(KD_ROWS)}")
        for row in spec["rows"]:
            entries.append({"walk": None, "step": row, "parent": None, "delta": None,
                            "arch": spec.get("arch", "snapgen-imagenet"), "kd_row": row,
                            "teacher": spec.get("teacher", "small"),
                            "teacher_options": dict(block.get("teacher") or {})})
    return [{**common, **entry, "seed": seed} for entry in entries for seed in range(n_seeds)]


def plan_hash(trials: list[dict[str, Any]]) -> str:
    """The identity of a sweep invocation: the hashes of its trials (order aside). A rerun of the same command reopens
    the same parent run."""
    from snapgen.config import stable_hash

    return stable_hash(sorted(trial_hash(t) for t in trials))


# ---- one trial, logged -------------------------------------------------------------------------------------------------


def run_and_log(trial: dict[str, Any], uri: str | None = None, trial_fn: Callable = run_trial) -> dict[str, Any]:
    """Run `trial` unless MLflow holds it FINISHED; retry once on error; log FINISHED or FAILED. Returns a summary.

    The trial is tracked live, in the process that runs it (a Ray worker too): it gets `_tracking_uri`, and
    `run_trial` logs its MLflow run while it trains and ends it (the result's `run_id`); nothing is logged again
    here. A result without `run_id` (a `trial_fn` that does not track, or live tracking that could not reach MLflow at
    the start) is logged after the fact with `tracking.log_trial`. A trial that failed every attempt is logged FAILED
    with its error (into its live run when it has one, so one run per config hash).
    """
    uri = tracking.absolute_uri(uri)
    config_hash = trial_hash(trial)
    summary = {"step": trial["step"], "seed": trial["seed"], "config_hash": config_hash, "run_id": None,
               "error": None}
    if config_hash in tracking.finished_hashes(trial["experiment"], uri):
        return {**summary, "status": "skipped"}
    trial = {**trial, "_tracking_uri": uri}
    start, error = time.time(), None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            result = trial_fn(trial)
            break
        except tracking.AlreadyFinished as finished:  # another sweep finished it since the check above
            return {**summary, "status": "skipped", "run_id": finished.run_id}
        except Exception as exc:  # noqa: BLE001 - any failure of one trial is reported, the sweep goes on
            error = f"attempt {attempt}/{ATTEMPTS}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(f"[sweep] trial {trial['step']} (seed {trial['seed']}, {config_hash}) failed, {error.splitlines()[0]}",
                  file=sys.stderr)
    else:
        tags = {"step": trial["step"], "scale": trial["scale"], "git_sha": tracking.git_sha(),
                "config_hash": config_hash, "device": "unknown", "latency_backend": "none", "seed": trial["seed"],
                "sweep": trial["sweep"], "metric_note": trial.get("metric_note", "")}
        from snapgen.config import flatten

        params = flatten({k: v for k, v in trial.items() if not k.startswith("_")})
        run_id, _ = tracking.log_trial(trial["experiment"], trial["step"], tags=tags, params=params, metrics={},
                                       error=error, uri=uri, parent_run_id=trial.get("_parent_run_id"))
        return {**summary, "status": "failed", "run_id": run_id, "error": error.splitlines()[0],
                "seconds": time.time() - start}
    summary["val_loss"] = (result.get("metrics") or {}).get("val_loss")
    if result.get("run_id"):  # tracked live: the trial's run is logged and FINISHED
        return {**summary, "status": "finished", "run_id": result["run_id"], "seconds": time.time() - start}
    tags = {**result["tags"], "git_sha": tracking.git_sha()}
    run_id, logged = tracking.log_trial(trial["experiment"], trial["step"], tags=tags, params=result["params"],
                                        metrics=result["metrics"], history=result["history"],
                                        artifacts=result["artifacts"], uri=uri,
                                        parent_run_id=trial.get("_parent_run_id"))
    return {**summary, "status": "finished" if logged else "skipped", "run_id": run_id,
            "seconds": time.time() - start}


# ---- executors ---------------------------------------------------------------------------------------------------------


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def run_local(trials: list[dict[str, Any]], uri: str | None = None, trial_fn: Callable = run_trial,
              on_done: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Every trial in this process, in order, with one line as each starts and ends (time, val loss, ETA).
    `on_done(summary)` after each (tests interrupt the sweep there)."""
    summaries, spent = [], []
    for i, trial in enumerate(trials, 1):
        label = f"[{i}/{len(trials)}] {trial['step']} (seed {trial['seed']})"
        print(f"{label}: started", file=sys.stderr, flush=True)
        summary = run_and_log(trial, uri, trial_fn)
        summaries.append(summary)
        print(f"{label}: {progress_line(summary, spent, len(trials) - i)}", file=sys.stderr, flush=True)
        if on_done is not None:
            on_done(summary)
    return summaries


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.0f}s"


def progress_line(summary: dict[str, Any], spent: list[float], remaining: int) -> str:
    """`finished in 2m41s, val_loss 0.2552, ETA 14m20s` (ETA from the mean time of the trials that ran so far)."""
    if summary["status"] == "skipped":
        return "skipped (finished before)"
    seconds = summary.get("seconds") or 0.0
    spent.append(seconds)
    text = f"{summary['status']} in {_minutes(seconds)}"
    if summary.get("val_loss") is not None:
        text += f", val_loss {summary['val_loss']:.4f}"
    if summary.get("error"):
        text += f" ({summary['error']})"
    if remaining:
        text += f", ETA {_minutes(remaining * sum(spent) / len(spent))}"
    return text


def _ray_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    summary = run_and_log(config["trial"], config["uri"])
    tune.report({k: ("" if v is None else v) for k, v in summary.items()})


def watch_cluster(probe: Callable[[], bool], on_dead: Callable[[str], None], interval_s: float = 20.0,
                  grace_s: float = 90.0, stop: Any = None) -> None:
    """Call `on_dead(message)` once `probe()` (is the Ray cluster alive?) has failed for `grace_s` seconds. A dead raylet
    otherwise leaves Tune's driver waiting forever ("Cluster resources cannot be detected or are 0")."""
    import threading

    stop = stop or threading.Event()
    dead_since = None
    while not stop.wait(interval_s):
        try:
            alive = bool(probe())
        except Exception:  # noqa: BLE001 - a GCS that does not answer is a dead cluster too
            alive = False
        if alive:
            dead_since = None
            continue
        dead_since = dead_since if dead_since is not None else time.monotonic()
        if time.monotonic() - dead_since >= grace_s:
            on_dead(f"the Ray cluster has had no live node with CPUs for {grace_s:.0f} s (raylet dead?); stopping the "
                    f"sweep. Finished trials are in MLflow; rerun the same command to run the rest.")
            return


def _ray_alive() -> bool:
    import ray

    return any(n.get("Alive") for n in ray.nodes()) and ray.cluster_resources().get("CPU", 0) > 0


def _exit_dead_cluster(message: str) -> None:
    print(f"[sweep] error: {message}", file=sys.stderr, flush=True)
    os._exit(3)  # Tune's driver loop cannot be interrupted from another thread; the trials' own runs are already logged


def run_ray(trials: list[dict[str, Any]], uri: str | None = None, storage: str | Path | None = None,
            name: str = "sweep", workers_per_trial: int | None = None, gpus_per_worker: float = 1.0,
            max_failures: int | None = None, cpus_per_worker: float | None = None) -> list[dict[str, Any]]:
    """The same trials as Ray Tune trials: one GPU each where GPUs exist, else one CPU, one at a time on CPU. With
    `workers_per_trial`, each trial is a Ray Train trial of that many workers (`ablations.distributed`)."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise RuntimeError(f"--executor ray needs ray[tune] ({error}); use --executor local") from error
    if not trials:
        return []
    from ablations import distributed

    gpus = _gpu_count()
    if not ray.is_initialized():  # `ray start --head` on a cluster: RAY_ADDRESS or address="auto" joins it
        repo = str(Path(__file__).resolve().parents[1])
        ray.init(include_dashboard=False, num_gpus=None if os.environ.get("RAY_ADDRESS") else gpus,
                 log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": repo, **distributed.RAY_WORKER_ENV}})
    uri = tracking.absolute_uri(uri)
    resources = {"cpu": 1, "gpu": 1} if gpus else {"cpu": 1}
    trainable, space, concurrent = _ray_trainable, {"trial": tune.grid_search(trials), "uri": uri}, max(1, gpus)
    if workers_per_trial:  # a light driver per trial; its TorchTrainer's workers reserve the CPUs and GPUs
        cluster = ray.cluster_resources()
        per_worker = gpus_per_worker if cluster.get("GPU", 0) else 0.0
        plan = distributed.trial_resources(workers_per_trial, per_worker, cluster.get("GPU", 0), cluster.get("CPU", 1),
                                           cpus_per_worker)
        trainable, resources, concurrent = distributed.train_driver, {"cpu": distributed.DRIVER_CPUS}, plan["concurrent"]
        space.update(workers=workers_per_trial, gpus_per_worker=per_worker, cpus_per_worker=plan["cpus_per_worker"],
                     max_failures=distributed.DEFAULT_MAX_FAILURES if max_failures is None else max_failures)
    label = {trial_hash(t): f"{t['step']}-s{t['seed']}-{trial_hash(t)}" for t in trials}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent,  # CPU trials would only fight over the same cores
            trial_name_creator=lambda t: label[trial_hash(t.config["trial"])],
            trial_dirname_creator=lambda t: label[trial_hash(t.config["trial"])],
        ),
        run_config=tune.RunConfig(name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(Path(storage or Path(trials[0].get("_out_root") or
                                                                        DEFAULT_OUT_ROOT) / "_ray").resolve()),
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0),
    )
    import threading

    stop = threading.Event()
    threading.Thread(target=watch_cluster, args=(_ray_alive, _exit_dead_cluster), kwargs={"stop": stop},
                     daemon=True).start()
    try:
        grid = tuner.fit()
    finally:
        stop.set()
    summaries = []
    for result in grid:
        trial = result.config["trial"]
        if result.error is not None:  # the worker itself died twice (e.g. killed for memory): log it from here
            tags = {"step": trial["step"], "scale": trial["scale"], "git_sha": tracking.git_sha(),
                    "config_hash": trial_hash(trial), "device": "unknown", "latency_backend": "none"}
            run_id, _ = tracking.log_trial(trial["experiment"], trial["step"], tags=tags, params={}, metrics={},
                                           error=f"ray trial error: {result.error}", uri=uri,
                                           parent_run_id=trial.get("_parent_run_id"))
            summaries.append({"step": trial["step"], "seed": trial["seed"], "config_hash": trial_hash(trial),
                              "status": "failed", "run_id": run_id, "error": str(result.error).splitlines()[0]})
        else:
            summaries.append({k: (None if v == "" else v) for k, v in result.metrics.items()
                              if k in ("step", "seed", "config_hash", "status", "run_id", "error", "seconds")})
    return summaries


def run_sweep(trials: list[dict[str, Any]], executor: str = "local", uri: str | None = None,
              **kwargs: Any) -> list[dict[str, Any]]:
    """Run the trials MLflow does not hold as FINISHED; return one summary per trial (skipped ones included)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r}; valid: {', '.join(EXECUTORS)}")
    uri = tracking.absolute_uri(uri)
    done: dict[str, set[str]] = {}
    todo, skipped = [], []
    for trial in trials:
        exp = trial["experiment"]
        if exp not in done:
            done[exp] = tracking.finished_hashes(exp, uri)
        if trial_hash(trial) in done[exp]:
            skipped.append({"step": trial["step"], "seed": trial["seed"], "config_hash": trial_hash(trial),
                            "status": "skipped", "run_id": None, "error": None})
        else:
            todo.append(trial)
    if executor == "local":
        ran = run_local(todo, uri, **kwargs)
    else:
        ran = run_ray(todo, uri, **kwargs)
    return skipped + ran


# ---- without MLflow (a GPU box with only torch): results to disk, logged here later ------------------------------------

RESULT_FILE = "trial_result.json"


def run_untracked(trials: list[dict[str, Any]], trial_fn: Callable = run_trial) -> list[dict[str, Any]]:
    """Run each trial whose directory holds no result yet; write `<trial dir>/trial_result.json` (paths relative to
    the trial dir) for `ingest` to log. No MLflow, no Ray: what a bare GPU machine can run."""
    summaries = []
    for trial in trials:
        out = trial_dir(trial)
        if (out / RESULT_FILE).is_file():
            summaries.append({"step": trial["step"], "seed": trial["seed"], "status": "skipped"})
            continue
        start = time.time()
        result = trial_fn({k: v for k, v in trial.items() if k != "_tracking_uri"})  # no MLflow here
        result["artifacts"] = [str(Path(a).resolve().relative_to(out.resolve())) for a in result["artifacts"]]
        result["tags"]["git_sha"] = tracking.git_sha()  # the code that ran, recorded where it ran
        record = {"trial": {k: v for k, v in trial.items() if not k.startswith("_")}, "config_hash": trial_hash(trial),
                  **{k: result[k] for k in ("metrics", "history", "tags", "params", "artifacts")}}
        (out / RESULT_FILE).write_text(json.dumps(record, default=str))
        summaries.append({"step": trial["step"], "seed": trial["seed"], "status": "finished",
                          "seconds": time.time() - start})
        print(f"[sweep] {trial['step']} seed {trial['seed']}: finished in {time.time() - start:.0f} s "
              f"(val_loss {result['metrics'].get('val_loss')})", file=sys.stderr)
    return summaries


def ingest(root: str | Path, uri: str | None = None) -> list[dict[str, Any]]:
    """Log every `trial_result.json` under `root` to MLflow (the schema of `tracking.log_trial`); a trial MLflow
    already holds as FINISHED is not logged again."""
    uri = tracking.absolute_uri(uri)
    summaries = []
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        record = json.loads(path.read_text())
        trial = record["trial"]
        if record["config_hash"] in tracking.finished_hashes(trial["experiment"], uri):
            summaries.append({"step": trial["step"], "status": "skipped"})
            continue
        artifacts = [str(path.parent / a) for a in record["artifacts"] if (path.parent / a).exists()]
        run_id, logged = tracking.log_trial(trial["experiment"], trial["step"],
                                            tags={**record["tags"], "ingested_from": str(path.parent)},
                                            params=record["params"], metrics=record["metrics"],
                                            history=[tuple(h) for h in record["history"]], artifacts=artifacts,
                                            uri=uri)
        summaries.append({"step": trial["step"], "status": "finished" if logged else "skipped", "run_id": run_id})
    return summaries


def prune_checkpoint(out: Path) -> None:
    """Keep only `checkpoint/unet_ema` (evaluation) of a finished trial: a later rerun skips it, so nothing resumes."""
    import shutil

    ckpt = Path(out) / "checkpoint"
    (ckpt / "training_state.pt").unlink(missing_ok=True)
    shutil.rmtree(ckpt / "unet", ignore_errors=True)


# ---- CLI ---------------------------------------------------------------------------------------------------------------


def report_commands(spec: dict[str, Any], scale: str, uri: str) -> list[str]:
    """The commands that print (and attach to the sweep's parent run) a sweep's table beside the paper (ablations
    imports nothing from reports)."""
    if spec.get("experiment") == "imagenet":
        return [f"python -m reports.tables table1 --tracking-uri {uri}"]
    if spec.get("walk") != "fig3":
        return []
    where = f"--scale {scale} --tracking-uri {uri}"
    return [f"python -m reports.tables fig3 {where} --details reports/figures/fig3_sweep_details.csv --log-to-sweep",
            f"python -m reports.figures fig3 --from-mlflow {where} --out reports/figures/fig3_sweep.png --log-to-sweep",
            f"python -m reports.figures pareto {where} --out reports/figures/fig3_sweep_pareto.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help=f"sweep name ({', '.join(available_sweeps())}); its spec is "
                                      f"ablations/specs/<sweep>.yaml unless --spec is given")
    parser.add_argument("--scale", default="smoke", choices=["smoke", "small", "paper"])
    parser.add_argument("--executor", default=None, choices=EXECUTORS,
                        help="default: local, or ray with --workers-per-trial (and at --scale paper)")
    parser.add_argument("--workers-per-trial", type=int, default=None, metavar="N",
                        help="run each trial as a Ray Train trial of N workers (DDP; default 8 at --scale paper)")
    parser.add_argument("--gpus-per-worker", type=float, default=1.0, metavar="G",
                        help="GPUs per Ray Train worker where the cluster has GPUs (default 1)")
    parser.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                        help="CPUs a Ray Train worker reserves, which Ray also makes its torch thread count (default: "
                             "its GPUs' share of the cluster's cores less one; 1 on a CPU cluster)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per trial (default: the spec's)")
    parser.add_argument("--spec", default=None, help="a spec file instead of ablations/specs/<sweep>.yaml")
    parser.add_argument("--out-root", default=str(DEFAULT_OUT_ROOT), help="trial directories go under here")
    parser.add_argument("--profile-cache", default=str(DEFAULT_PROFILE_CACHE))
    parser.add_argument("--tracking-uri", default=None, help=f"default $MLFLOW_TRACKING_URI or "
                                                             f"{tracking.DEFAULT_TRACKING_URI}")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--prune-checkpoints", action="store_true",
                        help="after a trial is logged FINISHED, delete its optimizer state and raw weights, keeping "
                             "checkpoint/unet_ema (full-size trials take ~6 GB each otherwise)")
    parser.add_argument("--dry-run", action="store_true", help="print the trials and which would run, then exit")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override the scale's training options (part of each trial's identity)")
    parser.add_argument("--only", nargs="*", default=None, metavar="STEP", help="run only these steps/rows")
    parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    parser.add_argument("--no-tracking", action="store_true",
                        help="no MLflow: write <trial dir>/trial_result.json; log them later with "
                             "`python -m ablations.sweep ingest --out-root DIR` (DIR: this sweep's --out-root)")
    args = parser.parse_args(argv)
    from ablations import distributed

    workers = args.workers_per_trial if args.workers_per_trial is not None else \
        distributed.default_workers(args.scale, args.executor)
    distributed.check_workers(workers, args.executor)
    args.executor = args.executor or ("ray" if workers else "local")
    uri = tracking.absolute_uri(args.tracking_uri)
    if args.sweep == "ingest":  # `python -m ablations.sweep ingest --out-root DIR` of an untracked sweep
        summaries = ingest(args.out_root, uri)
        print(f"[sweep] ingested {sum(s['status'] == 'finished' for s in summaries)} run(s), "
              f"skipped {sum(s['status'] == 'skipped' for s in summaries)} into {uri}", file=sys.stderr)
        return 0

    spec = load_spec(args.spec or args.sweep)
    if args.set:
        from snapgen.training.cli import parse_overrides

        overrides = parse_overrides(args.set)
        for block in spec["scales"].values():
            if block is not None:
                block["train"] = {**(block.get("train") or {}), **overrides}
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: must be >= 1")
    trials = plan(spec, args.scale, args.seeds, args.out_root, args.profile_cache, progress=not args.no_progress)
    from ablations.stage_trials import stage_config
    from ablations.trial import train_config

    for trial in trials:  # every trial's options are checked before the first trains (a bad --set fails here)
        stage_config(trial) if trial.get("stage") else train_config(trial)
    if args.only is not None:
        unknown = sorted(set(args.only) - {t["step"] for t in trials})
        if unknown:
            raise SystemExit(f"--only {unknown}: not in this sweep; its steps: {', '.join(t['step'] for t in trials)}")
        trials = [t for t in trials if t["step"] in args.only]
    if args.dry_run:
        if args.no_tracking:  # what `run_untracked` would skip: the trials whose directory holds a result
            done = {trial_hash(t) for t in trials if (trial_dir(t) / RESULT_FILE).is_file()}
        else:
            done = tracking.finished_hashes(spec["experiment"], uri) if Path(
                uri.removeprefix("sqlite:///")).is_file() or not uri.startswith("sqlite") else set()
        for t in trials:
            state = "done" if trial_hash(t) in done else "to run"
            print(f"{t['step']:24s} seed {t['seed']}  {trial_hash(t)}  {state:7s} {t['arch']}")
        print(json.dumps({k: v for k, v in trials[0].items() if k not in ("step", "parent", "delta", "arch")},
                         indent=1, default=str) if trials else "no trials")
        print(distributed.format_plan(distributed.resource_plan(trials, workers or 1, args.gpus_per_worker)))
        return 0
    if args.no_tracking:
        summaries = run_untracked(trials)
        print(f"[sweep] untracked: {[(s['step'], s['status']) for s in summaries]}", file=sys.stderr)
        return 0
    print(f"[sweep] {spec['sweep']} at {args.scale}: {len(trials)} trials, executor {args.executor}, MLflow {uri}",
          file=sys.stderr)
    start = time.time()
    parent_id = tracking.start_parent(
        spec["experiment"], f"sweep-{spec['sweep']}-{args.scale}", plan_hash(trials),
        tags={"sweep": spec["sweep"], "scale": args.scale, "git_sha": tracking.git_sha(), "executor": args.executor,
              "trials": len(trials)},
        params={"spec": spec["_path"], "seeds": args.seeds if args.seeds is not None else spec.get("seeds", 1),
                "only": ",".join(args.only) if args.only is not None else "", "set": " ".join(args.set)},
        uri=uri)
    trials = [{**t, "_parent_run_id": parent_id} for t in trials]
    try:
        summaries = run_sweep(trials, args.executor, uri, **(
            {"workers_per_trial": workers, "gpus_per_worker": args.gpus_per_worker,
             "cpus_per_worker": args.cpus_per_worker} if workers else {}))
        if args.prune_checkpoints:
            status = {s["config_hash"]: s["status"] for s in summaries}
            for trial in trials:
                if status.get(trial_hash(trial)) in ("finished", "skipped"):
                    prune_checkpoint(trial_dir(trial))
    except BaseException as error:  # interrupted (Ctrl-C) or broken: the parent run says so
        tracking.end_parent(parent_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", uri=uri)
        raise
    counts = {s: sum(x["status"] == s for x in summaries) for s in ("finished", "skipped", "failed")}
    tracking.end_parent(parent_id, "FAILED" if counts["failed"] else "FINISHED",
                        metrics={**{f"trials_{k}": v for k, v in counts.items()},
                                 "minutes": (time.time() - start) / 60}, uri=uri)
    print(f"[sweep] done in {(time.time() - start) / 60:.1f} min: {counts}", file=sys.stderr)
    for s in summaries:
        if s["status"] == "failed":
            print(f"[sweep] FAILED {s['step']} seed {s['seed']}: {s['error']}", file=sys.stderr)
    for command in report_commands(spec, args.scale, uri):
        print(f"[sweep] report: {command}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
