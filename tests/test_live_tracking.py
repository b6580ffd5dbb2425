"""snapgen.tracking live path: LiveRun driven by a fake training loop, kills and reruns, nested sweep runs, and the
first use of a fresh sqlite store by two processes at once (issue 13)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from snapgen import tracking

REPO_ROOT = Path(__file__).resolve().parents[1]
TAGS = {"step": "a_baseline", "scale": "smoke", "git_sha": "abc", "config_hash": "live1", "device": "cpu",
        "latency_backend": "none"}
T0 = 1_700_000_000.0  # record times: a fixed clock, so logged timestamps can be checked


def _loss(step: int) -> float:
    return 1.0 / step  # deterministic, as the engine's resumed steps are


def _record(step: int, started: float = T0) -> dict:
    record = {"step": step, "time": started + step, "train_loss": _loss(step), "grad_norm": 2.0}
    if step % 5 == 0:
        record["val_loss"] = 0.5 + _loss(step)
    return record


def _append(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _start(live: tracking.LiveRun, out: Path, step: int = 0) -> None:
    live.on_start({"out": out, "step": step, "run_hash": "rh1",
                   "config": {"train": {"steps": 20, "lr": 0.001}, "unet": {"conv": "sepconv"}}})


def _train(live: tracking.LiveRun, out: Path, steps, started: float = T0) -> None:
    """The engine's rank-0 side: append each record to metrics.jsonl, then hand it to the callback."""
    for step in steps:
        _append(out, _record(step, started))
        live.on_record(_record(step, started))


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracking.client(uri).get_metric_history(run_id, key))


def _runs(uri: str, config_hash: str) -> list:
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("unet-ablation")
    return c.search_runs([exp.experiment_id], filter_string=f"tags.config_hash = '{config_hash}'")


class Clock:
    """tracking's clock, moved by hand: which record flushes is then certain."""

    def __init__(self):
        self.now = 2_000_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_running_trial_is_visible_while_it_trains(mlflow_uri, tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "samples").mkdir(parents=True)
    clock = Clock()
    monkeypatch.setattr(tracking, "time", clock)
    live = tracking.LiveRun("unet-ablation", "a_baseline", tags=TAGS, params={"train.steps": 20})
    _start(live, out)
    watcher = tracking.client(mlflow_uri)  # another reader, as the MLflow UI is
    run = watcher.get_run(live.run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "a_baseline"
    assert {k: run.data.tags[k] for k in TAGS} == TAGS and run.data.tags["run_hash"] == "rh1"
    assert run.data.params["train.steps"] == "20"  # the trial's own value wins over the engine config's
    assert run.data.params["unet.conv"] == "sepconv"  # the engine's resolved config, flattened

    _train(live, out, range(1, 4))
    assert _history(mlflow_uri, live.run_id, "train_loss") == []  # buffered: no sqlite write per record
    clock.now += live.FLUSH_EVERY_S
    _train(live, out, [4])  # the first record after FLUSH_EVERY_S sends the buffer
    assert [s for s, _ in _history(mlflow_uri, live.run_id, "train_loss")] == [1, 2, 3, 4]
    _train(live, out, range(5, 8))
    live.flush()
    run = watcher.get_run(live.run_id)
    assert run.info.status == "RUNNING"
    assert _history(mlflow_uri, live.run_id, "train_loss") == [(s, _loss(s)) for s in range(1, 8)]
    (metric,) = [m for m in watcher.get_metric_history(live.run_id, "val_loss")]
    assert (metric.step, metric.timestamp) == (5, int((T0 + 5) * 1000))  # the record's own step and time

    grid = out / "samples" / "grid_7.png"
    grid.write_bytes(b"png")
    (out / "config.yaml").write_text("train: {}\n")
    live.on_artifact(grid)
    live.on_artifact(out / "config.yaml")
    live.on_end("FINISHED", None)
    run = watcher.get_run(live.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(a.path for a in watcher.list_artifacts(live.run_id)) == ["config.yaml", "metrics.jsonl", "samples"]
    assert [a.path for a in watcher.list_artifacts(live.run_id, "samples")] == ["samples/grid_7.png"]
    assert tracking.finished_hashes("unet-ablation", mlflow_uri) == {"live1"}


def test_kill_then_rerun_logs_every_step_once(mlflow_uri, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    first = tracking.LiveRun("unet-ablation", "a_baseline", tags=TAGS, params={})
    first.FLUSH_EVERY_S = 3600.0
    _start(first, out)
    _train(first, out, range(1, 11))
    first.flush()
    _train(first, out, [11, 12])  # handed over, still buffered when the kill comes
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "train_lo')  # torn mid-write
    run_id = first.run_id
    del first  # killed: no on_end
    assert [s for s, _ in _history(mlflow_uri, run_id, "train_loss")] == list(range(1, 11))
    assert tracking.client(mlflow_uri).get_run(run_id).info.status == "RUNNING"

    # the rerun resumes from its step-8 checkpoint: 11 and 12 come from metrics.jsonl, 9 and 10 are not logged again
    second = tracking.LiveRun("unet-ablation", "a_baseline", tags=TAGS, params={})
    _start(second, out, step=8)
    assert second.run_id == run_id
    lines = (out / "metrics.jsonl").read_text().splitlines()[:8]  # the engine drops the lines past its checkpoint
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    _train(second, out, range(9, 21), started=T0 + 3600)  # an hour later: MLflow would keep both 9s
    second.on_end("FINISHED", None)

    assert _history(mlflow_uri, run_id, "train_loss") == [(s, _loss(s)) for s in range(1, 21)]
    assert [s for s, _ in _history(mlflow_uri, run_id, "val_loss")] == [5, 10, 15, 20]
    assert [s for s, _ in _history(mlflow_uri, run_id, "grad_norm")] == list(range(1, 21))
    stamps = {m.step: m.timestamp for m in tracking.client(mlflow_uri).get_metric_history(run_id, "train_loss")}
    assert stamps[12] == int((T0 + 12) * 1000) and stamps[13] == int((T0 + 3600 + 13) * 1000)  # 12: backfilled
    (run,) = _runs(mlflow_uri, "live1")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"


def test_mlflow_errors_do_not_stop_training_and_are_backfilled(mlflow_uri, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.0, 0.0))
    live = tracking.LiveRun("unet-ablation", "a_baseline", tags=TAGS, params={})
    live.FLUSH_EVERY_S = 0.0  # every record is due: only the back-off after a failure holds them
    _start(live, out)
    calls = []

    def locked(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(live._client, "log_batch", locked)
    _train(live, out, range(1, 6))
    assert len(calls) == 3  # record 1's flush, tried 3 times; records 2-5 wait out RETRY_AFTER_S
    assert live.flush() is False and len(calls) == 6
    live.on_end("FAILED", "Interrupted")
    assert "database is locked" in capsys.readouterr().err
    run = tracking.client(mlflow_uri).get_run(live.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "Interrupted"
    assert _history(mlflow_uri, live.run_id, "train_loss") == []

    rerun = tracking.LiveRun("unet-ablation", "a_baseline", tags=TAGS, params={})
    _start(rerun, out, step=5)
    assert rerun.run_id == live.run_id
    assert [s for s, _ in _history(mlflow_uri, live.run_id, "train_loss")] == [1, 2, 3, 4, 5]
    assert "error" not in tracking.client(mlflow_uri).get_run(live.run_id).data.tags


def test_sweep_parent_and_nested_trials(mlflow_uri, tmp_path):
    parent_id = tracking.start_parent("unet-ablation", "sweep-unet-smoke", "plan1", tags={"sweep": "unet"},
                                      params={"seeds": 1})
    c = tracking.client(mlflow_uri)
    assert c.get_run(parent_id).info.status == "RUNNING"
    children = []
    for i, terminate in enumerate((True, False)):
        out = tmp_path / f"run{i}"
        out.mkdir()
        live = tracking.LiveRun("unet-ablation", f"trial{i}", tags={**TAGS, "config_hash": f"child{i}"}, params={},
                                parent_run_id=parent_id, terminate=terminate)
        _start(live, out)
        _train(live, out, range(1, 6))
        live.on_end("FINISHED", None)
        children.append(live)
    # terminate=False: the caller logs the final metrics, then ends the run
    assert c.get_run(children[1].run_id).info.status == "RUNNING"
    children[1].finish({"fid": 12.5, "val_loss": 9.9, "latency_ms": None})
    run = c.get_run(children[1].run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["fid"] == 12.5 and "latency_ms" not in run.data.metrics
    assert _history(mlflow_uri, children[1].run_id, "val_loss") == [(5, 0.7)]  # its per-step history stands
    logged_id, _ = tracking.log_trial("unet-ablation", "trial2", tags={**TAGS, "config_hash": "child2"}, params={},
                                      metrics={"val_loss": 0.5}, parent_run_id=parent_id)
    for run_id in [live.run_id for live in children] + [logged_id]:
        assert c.get_run(run_id).data.tags[tracking.PARENT_TAG] == parent_id

    tracking.end_parent(parent_id, "FINISHED", metrics={"trials_finished": 3})
    parent = c.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == 3
    assert "config_hash" not in parent.data.tags  # not a trial: never among the finished configs
    assert tracking.finished_hashes("unet-ablation", mlflow_uri) == {"child0", "child1", "child2"}
    # the same plan again reopens its parent; another plan gets its own
    assert tracking.start_parent("unet-ablation", "sweep-unet-smoke", "plan1", tags={}, params={"seeds": 2}) == \
        parent_id
    assert c.get_run(parent_id).info.status == "RUNNING" and c.get_run(parent_id).data.params["seeds"] == "1"
    assert tracking.start_parent("unet-ablation", "sweep-unet-smoke", "plan2", tags={}, params={}) != parent_id


def test_finished_config_raises_already_finished(mlflow_uri, tmp_path):
    run_id, _ = tracking.log_trial("unet-ablation", "a_baseline", tags=TAGS, params={}, metrics={"val_loss": 0.5})
    live = tracking.LiveRun("unet-ablation", "a_baseline", tags=TAGS, params={})
    with pytest.raises(tracking.AlreadyFinished, match=run_id) as caught:
        _start(live, tmp_path)
    assert caught.value.run_id == run_id and live.run_id is None
    with pytest.raises(ValueError, match="config_hash"):
        tracking.LiveRun("unet-ablation", "x", tags={k: v for k, v in TAGS.items() if k != "config_hash"}, params={})


FIRST_USE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    uri, me, other = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    import mlflow.store.tracking.sqlalchemy_store  # the slow imports first, so both processes reach the store at once
    from snapgen import tracking
    me.touch()
    deadline = time.time() + 120
    while not other.exists() and time.time() < deadline:
        time.sleep(0.01)
    print(tracking.experiment_id(tracking.client(uri), "unet-ablation"))
""")


def test_two_processes_create_a_fresh_store_at_once(tmp_path):
    """Issue 13: without the lock one of them dies in MLflow's table creation (migrations run twice at once)."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, uri, str(ready[i]), str(ready[1 - i])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    assert len({stdout.strip().splitlines()[-1] for stdout, _ in results}) == 1  # one experiment, seen by both
    assert (tmp_path / "mlruns.db.lock").is_file()


def test_sweep_main_nests_trials_under_one_parent(mlflow_uri, tmp_path, monkeypatch):
    import yaml

    from ablations import sweep
    from ablations.trial import trial_hash

    spec = {"sweep": "unet", "experiment": "unet-ablation", "walk": "fig3", "steps": ["a_baseline", "b_no_sa_high_res"],
            "scales": {"smoke": {"train": {"steps": 2}}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    failing: set[str] = set()

    def fake_trial(trial):  # no training: the shape run_trial returns
        if trial["step"] in failing:
            raise RuntimeError("boom")
        tags = {"step": trial["step"], "scale": trial["scale"], "config_hash": trial_hash(trial), "device": "cpu",
                "latency_backend": "none"}
        return {"metrics": {"val_loss": 0.5}, "history": [("train_loss", 1.0, 1)], "tags": tags, "params": {},
                "artifacts": []}

    monkeypatch.setattr(sweep, "run_sweep", lambda trials, executor, uri: sweep.run_local(trials, uri, fake_trial))
    args = ["unet", "--spec", str(tmp_path / "tiny.yaml"), "--out-root", str(tmp_path / "runs"), "--tracking-uri",
            mlflow_uri]
    failing.add("b_no_sa_high_res")
    assert sweep.main(args) == 1
    c = tracking.client(mlflow_uri)
    exp_id = c.get_experiment_by_name("unet-ablation").experiment_id
    (parent,) = c.search_runs([exp_id], filter_string="attributes.run_name = 'sweep-unet-smoke'")
    assert parent.info.status == "FAILED" and parent.data.metrics["trials_failed"] == 1
    trials = sweep.plan(sweep.load_spec(tmp_path / "tiny.yaml"), "smoke")
    assert parent.data.tags[tracking.SWEEP_HASH_TAG] == sweep.plan_hash(trials)
    children = c.search_runs([exp_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}'")
    assert sorted((r.info.run_name, r.info.status) for r in children) == [("a_baseline", "FINISHED"),
                                                                         ("b_no_sa_high_res", "FAILED")]
    # the rerun reopens the same parent: it ends FINISHED once every trial is
    failing.clear()
    assert sweep.main(args) == 0
    (again,) = c.search_runs([exp_id], filter_string="attributes.run_name = 'sweep-unet-smoke'")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.metrics["trials_skipped"] == 1 and again.data.metrics["trials_finished"] == 1
