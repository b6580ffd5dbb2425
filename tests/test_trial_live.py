"""Live tracking of real trials (issue 12 item 6): `run_trial` trains through the engine with its `LiveRun`, so the
trial's MLflow run is RUNNING, nested under the sweep's parent and growing while it trains; kills and reruns continue
that one run with every step logged once.

Tiny CPU trials (4 steps at width 32, 16x16, batch 8); a probe callback after the live run's looks at MLflow with a
fresh client, as someone watching the UI would.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ablations import sweep
from snapgen import tracking
from ablations.trial import run_trial, trial_dir, trial_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
TINY_SPEC = {
    "sweep": "unet", "experiment": "unet-ablation", "walk": "fig3", "steps": ["a_baseline"], "seeds": 1,
    "metric_note": "val_loss is a proxy, not FID",
    "scales": {"smoke": {
        "train": {"steps": STEPS, "batch_size": 8, "val_every": 2, "ckpt_every": 2, "log_every": 1, "val_size": 8,
                  "samples_per_class": 1, "sample_steps": 2},
        "fid": {"enabled": False},
        "profile": {"architecture": "trained", "flops_latents": [8], "latency_latent": 8, "latency_warmup": 0,
                    "latency_repeats": 1},
    }},
}


@pytest.fixture(scope="module")
def profile_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("profile_cache")  # shared: the tiny net is traced once for the module


@pytest.fixture
def trial(tmp_path, profile_cache, mlflow_uri):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_SPEC))
    (t,) = sweep.plan(sweep.load_spec(spec_file), "smoke", out_root=tmp_path / "runs", profile_cache=profile_cache,
                      progress=False)
    return t


@pytest.fixture
def flush_every_record(monkeypatch):
    """Tiny steps take milliseconds: send each record at once instead of every `FLUSH_EVERY_S` seconds."""
    monkeypatch.setattr(tracking.LiveRun, "FLUSH_EVERY_S", 0.0)


class Probe:
    """An engine callback that runs after the live run's: `action(step)` at step `at`."""

    def __init__(self, at: int, action):
        self.at, self.action = at, action

    def on_record(self, record):
        if record["step"] == self.at:
            self.action(record["step"])


def _with_probe(monkeypatch, probe: Probe) -> None:
    """`snapgen.train.train` with `probe` appended to its callbacks (run_trial imports train when it runs)."""
    import snapgen.train

    real = getattr(snapgen.train.train, "real", snapgen.train.train)  # a second probe replaces the first

    def train(*args, callbacks=(), **kwargs):
        return real(*args, callbacks=[*callbacks, probe], **kwargs)

    train.real = real
    monkeypatch.setattr(snapgen.train, "train", train)


def _fresh_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking.absolute_uri(uri))


def _runs_of(uri, config_hash):
    c = _fresh_client(uri)
    exp = c.get_experiment_by_name("unet-ablation")
    return c.search_runs([exp.experiment_id], filter_string=f"tags.config_hash = '{config_hash}'") if exp else []


def _steps(uri, run_id, key="train_loss"):
    return sorted(m.step for m in _fresh_client(uri).get_metric_history(run_id, key))


def _file_steps(trial, key="train_loss"):
    lines = (trial_dir(trial) / "metrics.jsonl").read_text().splitlines()
    return sorted(r["step"] for r in map(json.loads, lines) if key in r)


def _artifacts(uri, run_id, path=None):
    return sorted(a.path for a in _fresh_client(uri).list_artifacts(run_id, path))


def test_trial_run_is_running_and_growing_while_it_trains(trial, mlflow_uri, monkeypatch, flush_every_record):
    parent = tracking.start_parent("unet-ablation", "sweep-unet-smoke", "plan1", tags={"sweep": "unet"}, params={},
                                   uri=mlflow_uri)
    seen = []

    def look(step):
        (run,) = _runs_of(mlflow_uri, trial_hash(trial))
        history = _fresh_client(mlflow_uri).get_metric_history(run.info.run_id, "train_loss")
        seen.append({"status": run.info.status, "tags": run.data.tags, "params": run.data.params,
                     "history": sorted((m.step, m.timestamp) for m in history),
                     "val_steps": _steps(mlflow_uri, run.info.run_id, "val_loss")})

    _with_probe(monkeypatch, Probe(2, look))
    (summary,) = sweep.run_sweep([{**trial, "_parent_run_id": parent}], "local", mlflow_uri)
    assert summary["status"] == "finished", summary["error"]

    # at step 2 of 4: RUNNING, nested under the sweep, train_loss at steps 1 and 2 with their records' times
    (mid,) = seen
    assert mid["status"] == "RUNNING"
    assert mid["tags"][tracking.PARENT_TAG] == parent
    assert mid["tags"]["config_hash"] == trial_hash(trial) and mid["tags"]["step"] == "a_baseline"
    assert mid["tags"]["device"] == "pending" and mid["tags"]["latency_backend"] == "pending"
    assert set(tracking.REQUIRED_TAGS) <= set(mid["tags"])
    assert mid["params"]["train.steps"] == str(STEPS) and mid["params"]["flops_latent"] == "8"
    records = [json.loads(line) for line in (trial_dir(trial) / "metrics.jsonl").read_text().splitlines()]
    times = {r["step"]: int(r["time"] * 1000) for r in records if "train_loss" in r}
    assert mid["history"] == [(1, times[1]), (2, times[2])]
    assert mid["val_steps"] == [2]

    # at the end: FINISHED, the whole history once, final metrics and tags from evaluation and profiling
    (run,) = _runs_of(mlflow_uri, trial_hash(trial))
    assert run.info.run_id == summary["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags[tracking.PARENT_TAG] == parent
    assert _steps(mlflow_uri, run.info.run_id) == _file_steps(trial) == list(range(1, STEPS + 1))
    assert _steps(mlflow_uri, run.info.run_id, "val_loss") == [2, 4]
    assert {"params_m", "params_m_trained", "gflops", "gflops_8", "latency_ms", "val_loss", "train_loss"} \
        <= set(run.data.metrics)
    assert run.data.tags["device"] not in ("pending", "unknown") and run.data.tags["latency_backend"] != "pending"
    assert run.data.tags["fid_note"].startswith("not computed") and "arch_hash" in run.data.tags
    assert {"unet.conv", "latency_dtype", "arch", "seed"} <= set(run.data.params)
    assert {"config.yaml", "metrics.jsonl", "samples"} <= set(_artifacts(mlflow_uri, run.info.run_id))
    assert _artifacts(mlflow_uri, run.info.run_id, "samples") == [f"samples/step_{STEPS:07d}.png"]

    # the sweep skips the finished config before dispatch; nothing is logged again
    _with_probe(monkeypatch, Probe(1, lambda step: pytest.fail("a finished trial was trained again")))
    assert [s["status"] for s in sweep.run_sweep([{**trial, "_parent_run_id": parent}], "local", mlflow_uri)] \
        == ["skipped"]
    assert len(_runs_of(mlflow_uri, trial_hash(trial))) == 1


class Crash(Exception):
    pass


def test_crash_then_rerun_continues_one_run_with_each_step_once(trial, mlflow_uri, monkeypatch):
    """A crash at step 3 (after the checkpoint at step 2); the rerun resumes from step 2, recomputes step 3."""
    live_trial = {**trial, "_tracking_uri": mlflow_uri}

    def crash(step):
        raise Crash(f"crashed at step {step}")

    _with_probe(monkeypatch, Probe(3, crash))
    with pytest.raises(Crash):
        run_trial(live_trial)
    (failed,) = _runs_of(mlflow_uri, trial_hash(trial))
    assert failed.info.status == "FAILED" and "crashed at step 3" in failed.data.tags[tracking.ERROR_TAG]
    assert _steps(mlflow_uri, failed.info.run_id) == [1, 2, 3]  # flushed when training ended

    _with_probe(monkeypatch, Probe(0, None))  # no crash this time
    result = run_trial(live_trial)
    (run,) = _runs_of(mlflow_uri, trial_hash(trial))
    assert run.info.run_id == failed.info.run_id == result["run_id"]
    assert run.info.status == "FINISHED" and tracking.ERROR_TAG not in run.data.tags
    history = _fresh_client(mlflow_uri).get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == _file_steps(trial) == list(range(1, STEPS + 1))  # each step once
    jsonl = {r["step"]: r["train_loss"] for r in map(json.loads, (trial_dir(trial) / "metrics.jsonl").read_text()
                                                       .splitlines()) if "train_loss" in r}
    assert {m.step: m.value for m in history} == pytest.approx(jsonl, rel=1e-4)  # the resumed run is deterministic
    assert _steps(mlflow_uri, run.info.run_id, "val_loss") == [2, 4]


KILLED_TRIAL = textwrap.dedent("""
    import json, os, signal, sys

    import snapgen.train
    from snapgen import tracking
    from ablations.trial import run_trial

    tracking.LiveRun.FLUSH_EVERY_S = float(sys.argv[2])
    real = snapgen.train.train

    class Kill:
        def on_record(self, record):
            if record["step"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # no on_end, no flush: a power cut, an OOM kill

    def train(*args, callbacks=(), **kwargs):
        return real(*args, callbacks=[*callbacks, Kill()], **kwargs)

    snapgen.train.train = train
    run_trial(json.loads(open(sys.argv[1]).read()))
""")


@pytest.mark.parametrize("flush_every_s", [0.0, 1e9], ids=["logged-before-kill", "backfilled-after-kill"])
def test_hard_kill_then_rerun_logs_each_step_once(trial, mlflow_uri, tmp_path, flush_every_s):
    """SIGKILL at step 3 leaves the run RUNNING. Either step 3 reached MLflow before the kill (the rerun recomputes
    it and must not log it again) or nothing after the start did (the rerun backfills steps 1-2 from metrics.jsonl)."""
    live_trial = {**trial, "_tracking_uri": mlflow_uri}
    (tmp_path / "trial.json").write_text(json.dumps(live_trial))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_TRIAL, str(tmp_path / "trial.json"), str(flush_every_s)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (killed,) = _runs_of(mlflow_uri, trial_hash(trial))
    assert killed.info.status == "RUNNING"
    assert _steps(mlflow_uri, killed.info.run_id) == ([1, 2, 3] if flush_every_s == 0 else [])

    result = run_trial(live_trial)
    (run,) = _runs_of(mlflow_uri, trial_hash(trial))
    assert run.info.run_id == killed.info.run_id == result["run_id"] and run.info.status == "FINISHED"
    assert _steps(mlflow_uri, run.info.run_id) == _file_steps(trial) == list(range(1, STEPS + 1))
    assert _steps(mlflow_uri, run.info.run_id, "val_loss") == _file_steps(trial, "val_loss") == [2, 4]


def test_untracked_trial_creates_no_run(trial, mlflow_uri, monkeypatch):
    """Without `_tracking_uri` (`--no-tracking`) no LiveRun is created: the result is for `ingest`."""
    import ablations.trial

    monkeypatch.setattr(ablations.trial, "live_run", lambda *a: pytest.fail("an untracked trial made a LiveRun"))
    (summary,) = sweep.run_untracked([{**trial, "_tracking_uri": mlflow_uri}])
    assert summary["status"] == "finished"
    assert _runs_of(mlflow_uri, trial_hash(trial)) == []
    record = json.loads((trial_dir(trial) / sweep.RESULT_FILE).read_text())
    assert sorted(s for k, _, s in record["history"] if k == "train_loss") == list(range(1, STEPS + 1))
