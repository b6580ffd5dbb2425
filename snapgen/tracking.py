"""The MLflow schema, in one place (ARCHITECTURE.md "MLflow schema"), and the one adapter that writes it.

- Experiments: `EXPERIMENTS`. Run name: the registry entry or walk step (`c_sepconv_expanded`).
- Tags: `REQUIRED_TAGS` (step, scale, git_sha, config_hash, device, latency_backend), plus seed, sweep, metric_note,
  efficiency_arch, fid_note and, for a failed trial, `error`.
- Params: the flattened trial config (`snapgen.config.flatten`), e.g. `train.steps`, `unet.conv`, `flops_latent`.
- Metrics: `METRICS`; `train_loss` and `val_loss` also per step (history from the run's metrics.jsonl).
- Artifacts: the run's config.yaml, sample grid and metrics.jsonl.
- Tracking URI: `$MLFLOW_TRACKING_URI`, else `sqlite:///mlruns.db` in the working directory. Artifacts of a sqlite
  store go to `mlartifacts/` beside the database file.

A trial is identified by `config_hash`, the hash of its full config: `log_trial` never logs a finished config twice,
and a config whose last attempt failed is logged into that same run when it succeeds (no duplicate runs).
MLflow is only touched here; trials are plain functions (STYLE.md 11).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
EXPERIMENTS = ("unet-ablation", "kd-ablation", "decoder", "imagenet", "t2i-evals")
REQUIRED_TAGS = ("step", "scale", "git_sha", "config_hash", "device", "latency_backend")
METRICS = ("params_m", "gflops", "latency_ms", "fid", "val_loss", "train_loss", "geneval_overall", "dpg_overall",
           "clip_score", "image_reward", "psnr", "lpips")
ERROR_TAG = "error"
MAX_TAG_CHARS = 5000  # MLflow limits tag values (8000 in 3.x); keep the tail of a traceback, where the cause is
MAX_PARAM_CHARS = 500  # long params (lists of 0/1 flags) are cut with a marker; the full config is an artifact

_BATCH_METRICS, _BATCH_PARAMS, _BATCH_TAGS = 1000, 100, 100  # MLflow log_batch limits per call


def tracking_uri(uri: str | None = None) -> str:
    """`uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlruns.db` (relative to the working directory)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str | None = None) -> str:
    """A sqlite URI with an absolute path, so Ray workers (other working directories) write the same database."""
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def git_sha(repo: str | Path | None = None) -> str:
    """`HEAD`'s sha, with `-dirty` when the tree has uncommitted changes to tracked files. Outside git (a GPU box that
    got the working tree only): `$SNAPGEN_GIT_SHA` as the sender recorded it, else `unknown`."""
    repo = Path(repo or Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("SNAPGEN_GIT_SHA", "unknown")
    return sha + ("-dirty" if dirty else "")


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=absolute_uri(uri))


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment `name`, created if needed (sqlite stores keep artifacts in `mlartifacts/` beside the db)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid experiments (ARCHITECTURE.md): {', '.join(EXPERIMENTS)}")
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow_client.tracking_uri
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - another worker created it between our two calls
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(mlflow_client, exp_id: str, config_hash: str):
    """The newest run tagged `config_hash` (FINISHED ones first), or None."""
    runs = mlflow_client.search_runs([exp_id], filter_string=f"tags.config_hash = '{config_hash}'",
                                     order_by=["attributes.start_time DESC"])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return (finished or runs or [None])[0]


def finished_hashes(experiment: str, uri: str | None = None) -> set[str]:
    """`config_hash` tags of the FINISHED runs of `experiment` (what a rerun skips)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = c.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=50000)
    return {r.data.tags["config_hash"] for r in runs if "config_hash" in r.data.tags}


def log_eval_run(experiment: str, run_name: str, tags: dict[str, Any], metrics: dict[str, float | None],
                 params: dict[str, Any] | None = None, artifacts: Iterable[str | Path] = (),
                 uri: str | None = None) -> str:
    """Log one result that is not a trial (a decoder eval, a Core ML benchmark) as a new FINISHED run; its run id.

    No config hash, so no deduplication: every call is a run, and readers take the newest run of a name. Metrics
    None are not logged, tags and params are cut as `log_trial` cuts them, missing artifact files are skipped. One
    `log_batch`: such runs hold a handful of values, far below MLflow's per-call limits.
    """
    from mlflow.entities import Metric, Param, RunTag

    c = client(uri)
    run_id = c.create_run(experiment_id(c, experiment), run_name=run_name).info.run_id
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
                params=[Param(k, _param_value(v)) for k, v in (params or {}).items()],
                tags=[RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()])
    for path in artifacts:
        if path and Path(path).is_file():
            c.log_artifact(run_id, str(path))
    c.set_terminated(run_id, "FINISHED")
    return run_id


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 20] + "...(cut; see config)"


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def log_trial(experiment: str, run_name: str, *, tags: dict[str, Any], params: dict[str, Any],
              metrics: dict[str, float | None], history: Iterable[tuple[str, float, int]] = (),
              artifacts: Iterable[str | Path] = (), error: str | None = None,
              uri: str | None = None) -> tuple[str, bool]:
    """Log one trial as one MLflow run. Returns (run_id, logged): logged is False when the config was finished before.

    Args:
        tags: must hold every `REQUIRED_TAGS` key (`config_hash` identifies the trial).
        params: flat {name: value}; values are stringified.
        metrics: final values; None means "not measured" and is not logged (the reason belongs in a tag).
        history: (metric, value, step) triples, e.g. the per-step train_loss; a metric with a history is logged
            from it only (its value at the last step is the final one).
        artifacts: files to attach (missing files are skipped).
        error: set for a failed trial: the run ends FAILED with this text in the `error` tag.
    """
    from mlflow.entities import Metric, Param, RunTag

    missing = [k for k in REQUIRED_TAGS if k not in tags]
    if missing:
        raise ValueError(f"tags miss {missing}; the schema requires {list(REQUIRED_TAGS)}")
    c = client(uri)
    exp_id = experiment_id(c, experiment)
    previous = find_run(c, exp_id, str(tags["config_hash"]))
    if previous is not None and previous.info.status == "FINISHED":
        return previous.info.run_id, False
    if previous is not None:  # an earlier failed or interrupted attempt of this config: log into it
        run_id = previous.info.run_id
        if ERROR_TAG in previous.data.tags:
            c.delete_tag(run_id, ERROR_TAG)
        c.update_run(run_id, status="RUNNING", name=run_name)
        known_params = set(previous.data.params)
    else:
        run_id = c.create_run(exp_id, run_name=run_name).info.run_id
        known_params = set()

    now = int(time.time() * 1000)
    tag_list = [RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
    if error is not None:
        tag_list.append(RunTag(ERROR_TAG, error[-MAX_TAG_CHARS:]))
    param_list = [Param(k, _param_value(v)) for k, v in params.items() if k not in known_params]
    history = list(history)
    in_history = {k for k, _, _ in history}  # their last step is the final value: not logged twice
    metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and k not in in_history]
    metric_list += [Metric(k, float(v), now, int(step)) for k, v, step in history]
    for chunk in _chunks(tag_list, _BATCH_TAGS):
        c.log_batch(run_id, tags=chunk)
    for chunk in _chunks(param_list, _BATCH_PARAMS):
        c.log_batch(run_id, params=chunk)
    for chunk in _chunks(metric_list, _BATCH_METRICS):
        c.log_batch(run_id, metrics=chunk)
    for path in artifacts:
        if path and Path(path).is_file():
            c.log_artifact(run_id, str(path))
    c.set_terminated(run_id, "FAILED" if error is not None else "FINISHED")
    return run_id, True


__all__ = ["DEFAULT_TRACKING_URI", "EXPERIMENTS", "REQUIRED_TAGS", "METRICS", "ERROR_TAG", "tracking_uri",
           "absolute_uri", "git_sha", "client", "experiment_id", "find_run", "finished_hashes", "log_trial"]
