"""The MLflow schema, in one place (ARCHITECTURE.md "MLflow schema"), and the one adapter that writes it.

- Experiments: `EXPERIMENTS`. Run name: the registry entry or walk step (`c_sepconv_expanded`).
- Tags: `REQUIRED_TAGS` (step, scale, git_sha, config_hash, device, latency_backend), plus seed, sweep, metric_note,
  efficiency_arch, fid_note, latency_note (the latency with its spread and labels, or why none) and, for a failed
  trial, `error`.
- Params: the flattened trial config (`snapgen.config.flatten`), e.g. `train.steps`, `unet.conv`, `flops_latent`.
- Metrics: `METRICS`; `train_loss` and `val_loss` also per step (history from the run's metrics.jsonl).
- Artifacts: the run's config.yaml, sample grid and metrics.jsonl.
- Tracking URI: `$MLFLOW_TRACKING_URI`, else `sqlite:///mlruns.db` in the working directory. Artifacts of a sqlite
  store go to `mlartifacts/` beside the database file.

A trial is identified by `config_hash`, the hash of its full config: `log_trial` never logs a finished config twice,
and a config whose last attempt failed is logged into that same run when it succeeds (no duplicate runs).
MLflow is only touched here; trials are plain functions (STYLE.md 11).

Live tracking: `LiveRun` is the training engine's callback object; it logs each metrics.jsonl record while the trial
trains (a running sweep can be watched in the UI), never logs a step twice across kills and reruns, and backfills what
a crash kept from MLflow. A sweep invocation is one parent run (`start_parent`, `end_parent`; tag `sweep_hash`), its
trials nested under it (tag `mlflow.parentRunId`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
EXPERIMENTS = ("unet-ablation", "kd-ablation", "decoder", "imagenet", "t2i-evals", "adversarial-ablation", "throughput")
REQUIRED_TAGS = ("step", "scale", "git_sha", "config_hash", "device", "latency_backend")
METRICS = ("params_m", "gflops", "latency_ms", "latency_p10_ms", "latency_p90_ms", "latency_n", "fid", "val_loss",
           "train_loss", "geneval_overall", "dpg_overall", "clip_score", "image_reward", "psnr", "lpips",
           "fd_cifar", "kid_cifar", "class_acc", "cfg_best")  # the last four: the offline proxy (evals.fid --features cifar10)
ERROR_TAG = "error"
MAX_TAG_CHARS = 5000  # MLflow limits tag values (8000 in 3.x); keep the tail of a traceback, where the cause is
MAX_PARAM_CHARS = 500  # long params (lists of 0/1 flags) are cut with a marker; the full config is an artifact

_BATCH_METRICS, _BATCH_PARAMS, _BATCH_TAGS = 1000, 100, 100  # MLflow log_batch limits per call
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs: the UI groups a sweep's trials under it
SWEEP_HASH_TAG = "sweep_hash"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces); "custom_model_development"
# opens it on the runs table (the value MLflow's own UI writes when a user picks "machine learning").
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
RUNTIME_TAGS = ("gpu", "backend", "dtype", "batch")  # where and how a speed or eval number was produced


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
    """`$SNAPGEN_GIT_SHA` when the sender of a working tree recorded it (a GPU box's copy can hold a stale `.git`:
    one recorded `5425295-dirty` for code sent from `b716668`), else `HEAD`'s sha with `-dirty` when the tree has
    uncommitted changes to tracked files, else `unknown`."""
    if os.environ.get("SNAPGEN_GIT_SHA"):
        return os.environ["SNAPGEN_GIT_SHA"]
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

    uri = absolute_uri(uri)
    _create_store_once(uri)
    return MlflowClient(tracking_uri=uri)


_READY_STORES: set[str] = set()  # URIs whose store this process has created or checked
_READY_LOCK = threading.Lock()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _create_store_once(uri: str) -> None:
    """Create or upgrade a sqlite store's tables under an exclusive lock on `<db>.lock`, once per process and URI.

    MLflow creates a fresh database's tables without a lock: two processes starting at once run its migrations
    concurrently and one dies (`No such index: 'index_jobs_function_status_creation_time'`, issue 13). MLflow caches
    the store per URI, so after the first (locked) use here a process never runs the creation again.
    """
    db = _sqlite_path(uri)
    if db is None or uri in _READY_STORES:
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    with _READY_LOCK:
        if uri in _READY_STORES:
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{db}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # builds the store: tables, migrations
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        _READY_STORES.add(uri)


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment `name`, created if needed (sqlite stores keep artifacts in `mlartifacts/` beside the db)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid experiments (ARCHITECTURE.md): {', '.join(EXPERIMENTS)}")
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # a store made before the tag was set here
            mlflow_client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    uri = mlflow_client.tracking_uri
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location,
                                               tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
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
              uri: str | None = None, parent_run_id: str | None = None) -> tuple[str, bool]:
    """Log one trial as one MLflow run. Returns (run_id, logged): logged is False when the config was finished before.

    Args:
        tags: must hold every `REQUIRED_TAGS` key (`config_hash` identifies the trial).
        params: flat {name: value}; values are stringified.
        metrics: final values; None means "not measured" and is not logged (the reason belongs in a tag).
        history: (metric, value, step) triples, e.g. the per-step train_loss; a metric with a history is logged
            from it only (its value at the last step is the final one).
        artifacts: files to attach (missing files are skipped).
        error: set for a failed trial: the run ends FAILED with this text in the `error` tag.
        parent_run_id: the sweep's parent run (`start_parent`): the trial's run is nested under it.
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
    if parent_run_id:
        tag_list.append(RunTag(PARENT_TAG, parent_run_id))
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


# ---- retries: tracking must never kill a training run ----------------------------------------------------------------

RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # a locked sqlite database ("database is locked") clears within seconds
_CLIENT_ERRORS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                  "INVALID_STATE"}  # MLflow refused the request itself: waiting does not change the answer


class AlreadyFinished(RuntimeError):
    """`LiveRun.on_start` found the config's run FINISHED: the sweep skips such trials, so training it is a bug."""

    def __init__(self, run_id: str, config_hash: str):
        super().__init__(f"MLflow run {run_id} of config {config_hash} is FINISHED; a finished trial is not trained "
                         f"again (the sweep skips it)")
        self.run_id, self.config_hash = run_id, config_hash


def _retriable(error: BaseException) -> bool:
    if isinstance(error, AlreadyFinished) or not isinstance(error, Exception):
        return False
    return getattr(error, "error_code", None) not in _CLIENT_ERRORS


def _retrying(fn, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, tried again after each of `RETRY_DELAYS_S` while it fails with a retriable error."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - sqlite/SQLAlchemy/REST errors all look different
            if delay is None or not _retriable(error):
                raise
            time.sleep(delay)


def _warn(what: str, error: BaseException) -> None:
    print(f"[tracking] MLflow {what} failed ({type(error).__name__}: {str(error)[:300]}); training goes on, "
          f"records MLflow missed are backfilled from metrics.jsonl on the next start", file=sys.stderr)


def _open_run(c, exp_id: str, previous, run_name: str, tags: dict[str, Any], params: dict[str, Any]) -> str:
    """Create a RUNNING run, or reopen `previous` (an earlier attempt) as RUNNING; log `tags` and the params it lacks
    (MLflow refuses to change a param). Safe to repeat: the new run carries its identifying tags from creation."""
    from mlflow.entities import Param, RunTag

    tag_values = {k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items()}
    if previous is None:
        run_id = c.create_run(exp_id, run_name=run_name, tags=tag_values).info.run_id
        known_params: set[str] = set()
    else:
        run_id = previous.info.run_id
        if ERROR_TAG in previous.data.tags:
            c.delete_tag(run_id, ERROR_TAG)
        c.update_run(run_id, status="RUNNING", name=run_name)
        known_params = set(previous.data.params)
        for chunk in _chunks([RunTag(k, v) for k, v in tag_values.items()], _BATCH_TAGS):
            c.log_batch(run_id, tags=chunk)
    param_list = [Param(k, _param_value(v)) for k, v in params.items() if k not in known_params]
    for chunk in _chunks(param_list, _BATCH_PARAMS):
        c.log_batch(run_id, params=chunk)
    return run_id


def _final_metrics(metrics: dict[str, float | None], skip: Iterable[str] = ()) -> list:
    from mlflow.entities import Metric

    now, skip = int(time.time() * 1000), set(skip)
    return [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and k not in skip]


def _metric_key(key: str) -> str:
    """A metrics.jsonl key as a valid MLflow metric name (one bad name would fail its whole batch)."""
    return re.sub(r"[^\w./\- :]", "_", str(key))[:250]


def _is_metric(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ---- live tracking: the training engine's callbacks ------------------------------------------------------------------


class LiveRun:
    """One trial's MLflow run, logged while it trains: the engine calls `on_start`, `on_record`, `on_artifact` and
    `on_end` on rank 0.

    - The run is found by `tags['config_hash']` (an earlier failed or killed attempt is reopened) or created; a
      FINISHED one raises `AlreadyFinished`.
    - Metrics carry their record's step and time; they are buffered and sent with `log_batch` at most every
      `FLUSH_EVERY_S` seconds, and always at `on_artifact` and `on_end`.
    - No step is logged twice: a record's metric whose step is at or below the highest step MLflow holds for it is
      dropped (a resumed run recomputes steps since its checkpoint; the engine is deterministic, so the values are the
      ones logged before). At `on_start` the records of `<out>/metrics.jsonl` MLflow misses are backfilled.
    - MLflow errors are retried (`RETRY_DELAYS_S`), then warned about on stderr: training goes on.

    With `terminate=False`, `on_end('FINISHED')` leaves the run RUNNING for the caller's `finish(metrics, ...)`.
    """

    FLUSH_EVERY_S = 2.0  # a sweep can be watched without a sqlite write per step
    RETRY_AFTER_S = 30.0  # after a flush failed for good: training does not wait on a locked store at every record
    MAX_BUFFERED = 100_000  # beyond this, the oldest wait for the next start's backfill instead of memory

    def __init__(self, experiment: str, run_name: str, *, tags: dict[str, Any], params: dict[str, Any],
                 parent_run_id: str | None = None, uri: str | None = None, terminate: bool = True):
        missing = [k for k in REQUIRED_TAGS if k not in tags]
        if missing:
            raise ValueError(f"tags miss {missing}; the schema requires {list(REQUIRED_TAGS)}")
        if experiment not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {experiment!r}; valid experiments: {', '.join(EXPERIMENTS)}")
        self.experiment, self.run_name = experiment, run_name
        self.tags, self.params = dict(tags), dict(params)
        self.parent_run_id, self.uri, self.terminate = parent_run_id, absolute_uri(uri), terminate
        self.run_id: str | None = None  # None until on_start succeeded: the other callbacks do nothing
        self.out: Path | None = None
        self._client = None
        self._logged_step: dict[str, int] = {}  # per metric, the highest step MLflow holds or is about to get
        self._buffer: list = []
        self._next_flush = 0.0

    # -- callbacks (never raise, except AlreadyFinished and a bad on_end status: those are bugs of the caller)

    def on_start(self, info: dict[str, Any]) -> None:
        """Training starts or resumes. `info`: out (run dir), step (resumed step, 0 fresh), run_hash, config."""
        self.out = Path(info["out"]) if info.get("out") else None
        try:
            self._client = client(self.uri)
            self.run_id = _retrying(self._open, info)
        except AlreadyFinished:
            raise
        except Exception as error:  # noqa: BLE001
            self.run_id = None
            _warn("on_start", error)
            return
        if self.out is not None:
            self._backfill(self.out / "metrics.jsonl")
        self.flush()

    def on_record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: `step`, `time` (unix seconds) and scalar metrics."""
        if self.run_id is None:
            return
        try:
            self._add(record)
            if time.time() >= self._next_flush:
                self.flush()
        except Exception as error:  # noqa: BLE001
            _warn("on_record", error)

    def on_artifact(self, path: str | Path, flush: bool = True) -> None:
        """A file the engine wrote: logged under the artifact dir of its folder in the run dir (`samples/grid.png` ->
        `samples/`; files directly in the run dir, like config.yaml, at the root). The buffered metrics go first,
        unless `flush=False` (a plot redrawn while training must not change when metrics are sent)."""
        if self.run_id is None:
            return
        if flush:
            self.flush()
        path = Path(path)
        try:
            if path.is_file():
                _retrying(self._client.log_artifact, self.run_id, str(path), self._artifact_dir(path))
        except Exception as error:  # noqa: BLE001
            _warn(f"log_artifact({path.name})", error)

    def on_end(self, status: str, error: str | None = None) -> None:
        """Training ended: flush, attach metrics.jsonl, tag `error`; end the run, unless FINISHED with terminate=False
        (the caller's `finish` ends it)."""
        if status not in END_STATUSES:
            raise ValueError(f"status={status!r}; valid: {', '.join(END_STATUSES)}")
        if self.run_id is None:
            return
        if self.out is not None and (self.out / "metrics.jsonl").is_file():
            self.on_artifact(self.out / "metrics.jsonl")  # flushes first
        else:
            self.flush()
        try:
            if error:
                _retrying(self._client.set_tag, self.run_id, ERROR_TAG, error[-MAX_TAG_CHARS:])
            if self.terminate or status != "FINISHED":
                _retrying(self._client.set_terminated, self.run_id, status)
        except Exception as exc:  # noqa: BLE001
            _warn(f"on_end({status})", exc)

    # -- after training

    def finish(self, metrics: dict[str, float | None], artifacts: Iterable[str | Path] = (),
               status: str = "FINISHED", error: str | None = None, tags: dict[str, Any] | None = None,
               params: dict[str, Any] | None = None) -> None:
        """Log the final metrics (efficiency, FID; None = not measured) and artifacts, then end the run with `status`.

        A metric MLflow already holds (one with a per-step history, like val_loss) keeps its logged values. `tags` set
        or update tags (e.g. `device` and `latency_backend`, provisional while training); `params` adds the params the
        run lacks (MLflow refuses to change one). Unlike the callbacks this raises when MLflow keeps failing: a run
        left RUNNING is retrained (resumed) by the next sweep.
        """
        from mlflow.entities import Param, RunTag

        if status not in END_STATUSES:
            raise ValueError(f"status={status!r}; valid: {', '.join(END_STATUSES)}")
        if self.run_id is None:
            raise RuntimeError("LiveRun.finish before a successful on_start: there is no MLflow run to finish")
        if not self.flush():
            raise RuntimeError(f"MLflow run {self.run_id}: buffered metrics could not be logged")
        if tags:
            self.tags.update(tags)
            for chunk in _chunks([RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()], _BATCH_TAGS):
                _retrying(self._client.log_batch, self.run_id, tags=chunk)
        if params:
            known = set(_retrying(self._client.get_run, self.run_id).data.params)
            new = [Param(k, _param_value(v)) for k, v in params.items() if k not in known]
            for chunk in _chunks(new, _BATCH_PARAMS):
                _retrying(self._client.log_batch, self.run_id, params=chunk)
        final = _final_metrics(metrics, skip=self._logged_step)
        for chunk in _chunks(final, _BATCH_METRICS):
            _retrying(self._client.log_batch, self.run_id, metrics=chunk)
        self._logged_step.update({m.key: 0 for m in final})
        for path in artifacts:
            if path and Path(path).is_file():
                _retrying(self._client.log_artifact, self.run_id, str(path), self._artifact_dir(Path(path)))
        if error:
            _retrying(self._client.set_tag, self.run_id, ERROR_TAG, error[-MAX_TAG_CHARS:])
        _retrying(self._client.set_terminated, self.run_id, status)

    def flush(self) -> bool:
        """Send the buffered metrics now. False when MLflow failed: after a retriable failure they stay buffered (and
        `on_record` waits `RETRY_AFTER_S` before trying again); the rest wait for the next start's backfill."""
        if self.run_id is None or not self._buffer:
            self._next_flush = time.time() + self.FLUSH_EVERY_S
            return self.run_id is not None
        sent = 0
        try:
            for chunk in _chunks(self._buffer, _BATCH_METRICS):
                _retrying(self._client.log_batch, self.run_id, metrics=chunk)
                sent += len(chunk)
        except Exception as error:  # noqa: BLE001
            del self._buffer[:sent]
            if not _retriable(error):
                self._buffer.clear()
            del self._buffer[:-self.MAX_BUFFERED]
            self._next_flush = time.time() + self.RETRY_AFTER_S
            _warn("log_batch", error)
            return False
        self._buffer.clear()
        self._next_flush = time.time() + self.FLUSH_EVERY_S
        return True

    # -- internals

    def _open(self, info: dict[str, Any]) -> str:
        """Find or create the run, reopen it RUNNING, log tags and params; read the highest logged step per metric."""
        c = self._client
        exp_id = experiment_id(c, self.experiment)
        config_hash = str(self.tags["config_hash"])
        previous = find_run(c, exp_id, config_hash)
        if previous is not None and previous.info.status == "FINISHED":
            raise AlreadyFinished(previous.info.run_id, config_hash)
        tags = dict(self.tags)
        if info.get("run_hash"):
            tags["run_hash"] = info["run_hash"]
        if self.parent_run_id:
            tags[PARENT_TAG] = self.parent_run_id
        params = dict(self.params)
        if isinstance(info.get("config"), dict):  # the engine's resolved config; the trial's own params win
            from snapgen.config import flatten

            params = {**flatten(info["config"]), **params}
        run_id = _open_run(c, exp_id, previous, self.run_name, tags, params)
        logged: dict[str, int] = {}
        for key in c.get_run(run_id).data.metrics:
            steps = [m.step for m in c.get_metric_history(run_id, key)]
            if steps:
                logged[key] = max(steps)
        self._logged_step = logged
        return run_id

    def _add(self, record: dict[str, Any]) -> None:
        """Buffer the record's metrics at steps above what MLflow holds for them."""
        try:
            step = int(record["step"])
        except (KeyError, TypeError, ValueError):
            return
        stamp = record.get("time")
        timestamp = int(float(stamp) * 1000) if _is_metric(stamp) and math.isfinite(stamp) else int(time.time() * 1000)
        from mlflow.entities import Metric

        for key, value in record.items():
            if key in ("step", "time") or not _is_metric(value):
                continue
            key = _metric_key(key)
            if step <= self._logged_step.get(key, -1):
                continue  # logged before a kill, recomputed after the resume
            self._logged_step[key] = step
            self._buffer.append(Metric(key, float(value), timestamp, step))

    def _backfill(self, path: Path) -> None:
        """Buffer the records of metrics.jsonl that MLflow misses (written before a crash or a failed flush)."""
        if not path.is_file():
            return
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-write
            if isinstance(record, dict):
                self._add(record)

    def _artifact_dir(self, path: Path) -> str | None:
        if self.out is not None:
            try:
                folder = path.resolve().parent.relative_to(self.out.resolve())
            except ValueError:
                pass
            else:
                return None if folder == Path(".") else folder.as_posix()
        return path.parent.name or None


# ---- the sweep's parent run ------------------------------------------------------------------------------------------


def start_parent(experiment: str, run_name: str, sweep_hash: str, tags: dict[str, Any], params: dict[str, Any],
                 uri: str | None = None) -> str:
    """The RUNNING parent run of one sweep invocation: found by tag `sweep_hash` (a rerun of the same plan reopens
    it) or created. Trials nest under it through `parent_run_id`. It carries no `config_hash`: it is not a trial."""
    c = client(uri)
    exp_id = experiment_id(c, experiment)

    def open_parent() -> str:
        runs = c.search_runs([exp_id], filter_string=f"tags.{SWEEP_HASH_TAG} = '{sweep_hash}'",
                             order_by=["attributes.start_time DESC"], max_results=1)
        return _open_run(c, exp_id, runs[0] if runs else None, run_name, {**tags, SWEEP_HASH_TAG: sweep_hash}, params)

    return _retrying(open_parent)


def end_parent(run_id: str, status: str, metrics: dict[str, float | None] | None = None,
               artifacts: Iterable[str | Path] = (), uri: str | None = None) -> None:
    """End the sweep's parent run with `status` (FINISHED, FAILED if a trial failed, KILLED), after logging the
    sweep's summary metrics and artifacts (e.g. the figure)."""
    if status not in END_STATUSES:
        raise ValueError(f"status={status!r}; valid: {', '.join(END_STATUSES)}")
    c = client(uri)
    for chunk in _chunks(_final_metrics(metrics or {}), _BATCH_METRICS):
        _retrying(c.log_batch, run_id, metrics=chunk)
    for path in artifacts:
        if path and Path(path).is_file():
            _retrying(c.log_artifact, run_id, str(path))
    _retrying(c.set_terminated, run_id, status)


# ---- reports onto the sweep's parent run -----------------------------------------------------------------------------


def find_parent(experiment: str, sweep: str, scale: str | None = None, uri: str | None = None):
    """The newest parent run (tag `sweep_hash`) of `sweep` at `scale` (None: any) in `experiment`, or None."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    where = f"tags.sweep = '{sweep}'" + (f" and tags.scale = '{scale}'" if scale else "")
    runs = c.search_runs([exp.experiment_id], filter_string=where, order_by=["attributes.start_time DESC"],
                         max_results=1000)
    return next((r for r in runs if SWEEP_HASH_TAG in r.data.tags), None)


def log_report(run_id: str, table=None, table_file: str = "table.json", figures: Iterable[str | Path] = (),
               uri: str | None = None) -> None:
    """Attach a report to a run (the sweep's parent): `table` (a DataFrame) through `MlflowClient.log_table` as
    `table_file`, and figure files. A rerun replaces the table rather than appending to it (log_table appends to an
    existing file): the second time the same split-JSON file is written over it."""
    import tempfile

    c = client(uri)
    if table is not None:
        existing = {f.path for f in _retrying(c.list_artifacts, run_id)}
        if table_file not in existing:
            _retrying(c.log_table, run_id, table, table_file)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / table_file
                table.to_json(path, orient="split", index=False, date_format="iso")
                _retrying(c.log_artifact, run_id, str(path))
    for path in figures:
        if path and Path(path).is_file():
            _retrying(c.log_artifact, run_id, str(path))


# ---- throughput results (benchmarks.throughput's JSON) ---------------------------------------------------------------

THROUGHPUT_EXPERIMENT = "throughput"


def runtime_tags(gpu: str, backend: str, dtype: str, batch: int | str) -> dict[str, str]:
    """The `RUNTIME_TAGS` of a speed or eval number: the device name, the backend (e.g. 'pytorch eager',
    'pytorch compile channels-last'), the dtype and the batch it ran with."""
    return dict(zip(RUNTIME_TAGS, (str(gpu), str(backend), str(dtype), str(batch))))


def _backend(flags: dict[str, Any]) -> str:
    """'pytorch eager', 'pytorch compile, channels-last, cuda-graphs', ... from a throughput run's switches."""
    extras = [name for key, name in (("channels_last", "channels-last"), ("cuda_graphs", "cuda-graphs"))
              if flags.get(key)]
    return ", ".join([f"pytorch {'compile' if flags.get('compile') else 'eager'}", *extras])


def throughput_records(report: dict[str, Any], source: str = "") -> list[dict[str, Any]]:
    """One record per UNet or decoder row of a `benchmarks.throughput` JSON: {run_name, tags, params, metrics}.

    Rows of an `--ablation` file carry a `setting` whose flags are in `report['settings']`; a plain file's flags are
    its top-level `compile` / `channels_last` / `cuda_graphs`. `throughput` is samples/s (UNets; 28 steps with CFG)
    or images/s (decoders); every other number of the row is logged under its own key (`mfu`, `ratio_to_sdxl`,
    `ratio_to_sdxl_eager`, `ratio_vs_sdxl_eager`, `ratio_same_setting`, ...)."""
    from snapgen.config import stable_hash

    header = {k: v for k, v in report.items() if k not in ("unets", "decoders")}
    records = []
    for kind, key in (("unet", "unets"), ("decoder", "decoders")):
        for row in report.get(key) or []:
            setting = row.get("setting")
            flags = (report.get("settings") or {}).get(setting) if setting else None
            flags = flags if flags is not None else report
            backend = _backend(flags)
            batch = row.get("batch", report.get("batch_fixed", "?"))
            tags = {**runtime_tags(report.get("device", "unknown"), backend, report.get("dtype", "unknown"), batch),
                    "step": "throughput", "scale": "quick (CPU smoke, not a measurement)" if report.get("quick")
                    else f"{int(report.get('latent', 128)) * 8}px", "config_hash": stable_hash({"row": row, **header}),
                    "device": report.get("device", "unknown"), "latency_backend": backend,
                    "git_sha": report.get("git_sha") or "not recorded in the JSON", "kind": kind,
                    "setting": setting or backend.removeprefix("pytorch "), "source": source,
                    "torch": report.get("torch", ""), "latent": report.get("latent", ""),
                    "steps": report.get("steps", ""), "quick": bool(report.get("quick"))}
            metrics = {k: float(v) for k, v in row.items() if _is_metric(v) and k != "batch"}
            metrics["throughput"] = row.get("samples_per_s", row.get("images_per_s"))
            params = {"model": row.get("model"), "batch": batch, **{k: v for k, v in flags.items()
                                                                     if k in ("compile", "channels_last",
                                                                              "cuda_graphs")}}
            records.append({"run_name": row.get("model", "?"), "tags": tags, "params": params, "metrics": metrics})
    return records


def log_throughput(report: dict[str, Any], source: str = "", uri: str | None = None) -> list[tuple[str, str, bool]]:
    """Log a `benchmarks.throughput` result (the dict it writes as throughput.json) into the `throughput` experiment,
    one FINISHED run per row; a row logged before (same numbers and header) is not logged again.
    Returns [(run name, run id, logged now)]."""
    out = []
    for record in throughput_records(report, source):
        run_id, logged = log_trial(THROUGHPUT_EXPERIMENT, record["run_name"], tags=record["tags"],
                                   params=record["params"], metrics=record["metrics"], uri=uri)
        out.append((record["run_name"], run_id, logged))
    return out


__all__ = ["DEFAULT_TRACKING_URI", "EXPERIMENTS", "REQUIRED_TAGS", "METRICS", "ERROR_TAG", "tracking_uri",
           "absolute_uri", "git_sha", "client", "experiment_id", "find_run", "finished_hashes", "log_trial",
           "PARENT_TAG", "SWEEP_HASH_TAG", "AlreadyFinished", "LiveRun", "start_parent", "end_parent", "log_eval_run",
           "find_parent", "log_report", "runtime_tags", "throughput_records", "log_throughput", "RUNTIME_TAGS"]
