"""snapgen.tracking: the MLflow schema adapter (idempotent logging, failed runs) and the MLflow UI/REST API."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from snapgen import tracking

TAGS = {"step": "a_baseline", "scale": "smoke", "git_sha": "abc", "config_hash": "h1", "device": "cpu",
        "latency_backend": "torch-cpu"}


def _runs(uri, experiment="unet-ablation"):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id]) if exp else []


def test_log_trial_schema_and_idempotence(mlflow_uri, tmp_path):
    artifact = tmp_path / "config.yaml"
    artifact.write_text("a: 1\n")
    run_id, logged = tracking.log_trial(
        "unet-ablation", "a_baseline", tags=TAGS, params={"train.steps": 3, "unet.conv": "conv"},
        metrics={"params_m": 1.5, "gflops": 2.0, "fid": None},
        history=[("train_loss", 0.9, 1), ("train_loss", 0.8, 2)], artifacts=[artifact])
    assert logged
    (run,) = _runs(mlflow_uri)
    assert run.info.run_id == run_id and run.info.run_name == "a_baseline" and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in TAGS} == TAGS
    assert run.data.params == {"train.steps": "3", "unet.conv": "conv"}
    assert run.data.metrics["params_m"] == 1.5 and "fid" not in run.data.metrics  # None = not measured
    history = tracking.client(mlflow_uri).get_metric_history(run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.8)]
    assert [a.path for a in tracking.client(mlflow_uri).list_artifacts(run_id)] == ["config.yaml"]
    # the same config again: nothing logged
    again, logged = tracking.log_trial("unet-ablation", "a_baseline", tags=TAGS, params={}, metrics={"params_m": 9.0})
    assert (again, logged) == (run_id, False) and len(_runs(mlflow_uri)) == 1
    assert tracking.finished_hashes("unet-ablation", mlflow_uri) == {"h1"}


def test_failed_then_finished_is_one_run(mlflow_uri):
    tags = {**TAGS, "config_hash": "h2"}
    run_id, _ = tracking.log_trial("kd-ablation", "task", tags=tags, params={"x": 1}, metrics={}, error="boom")
    (run,) = _runs(mlflow_uri, "kd-ablation")
    assert run.info.status == "FAILED" and run.data.tags["error"] == "boom"
    assert tracking.finished_hashes("kd-ablation", mlflow_uri) == set()
    again, logged = tracking.log_trial("kd-ablation", "task", tags=tags, params={"x": 1}, metrics={"val_loss": 0.5})
    (run,) = _runs(mlflow_uri, "kd-ablation")
    assert logged and again == run_id and run.info.status == "FINISHED" and "error" not in run.data.tags


def test_schema_errors(mlflow_uri):
    with pytest.raises(ValueError, match="latency_backend"):
        tracking.log_trial("unet-ablation", "x", tags={k: v for k, v in TAGS.items() if k != "latency_backend"},
                           params={}, metrics={})
    with pytest.raises(ValueError, match="unet-ablation"):
        tracking.experiment_id(tracking.client(mlflow_uri), "no-such-experiment")


def test_log_eval_run_is_a_new_run_each_time(mlflow_uri, tmp_path):
    artifact = tmp_path / "eval.json"
    artifact.write_text("{}")
    first = tracking.log_eval_run("decoder", "tiny", tags={"eval_set": "cifar"}, params={"latent": 128},
                                  metrics={"psnr": 25.0, "lpips": None}, artifacts=[artifact, tmp_path / "absent"])
    second = tracking.log_eval_run("decoder", "tiny", tags={}, metrics={"psnr": 26.0})
    runs = {r.info.run_id: r for r in _runs(mlflow_uri, "decoder")}
    assert set(runs) == {first, second} and all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[first].data.metrics == {"psnr": 25.0} and runs[first].data.params == {"latent": "128"}
    assert runs[first].data.tags["eval_set"] == "cifar" and runs[second].data.metrics == {"psnr": 26.0}
    assert [a.path for a in tracking.client(mlflow_uri).list_artifacts(first)] == ["eval.json"]
    with pytest.raises(ValueError, match="unknown experiment"):
        tracking.log_eval_run("decoders", "tiny", tags={}, metrics={})


def test_uri_default_and_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == "sqlite:///mlruns.db"
    assert tracking.absolute_uri() == f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/y.db")
    assert tracking.tracking_uri() == "sqlite:////x/y.db"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_serves_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'ui.db'}"
    run_id, _ = tracking.log_trial("unet-ablation", "a_baseline", tags=TAGS, params={}, metrics={"val_loss": 0.7},
                                   uri=uri)
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow_bin), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"mlflow ui did not answer: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        with urllib.request.urlopen(base, timeout=10) as r:  # the UI page itself
            assert r.status == 200
        exp = tracking.client(uri).get_experiment_by_name("unet-ablation")
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                         data=json.dumps({"experiment_ids": [exp.experiment_id]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            runs = json.loads(r.read())["runs"]
        assert [run["info"]["run_id"] for run in runs] == [run_id]
        assert {"key": "val_loss", "value": 0.7} in [{k: m[k] for k in ("key", "value")} for m in
                                                     runs[0]["data"]["metrics"]]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_git_sha_prefers_the_senders_record(monkeypatch):
    """A GPU box's copy of the tree can hold a stale .git: the sha the sender recorded wins."""
    monkeypatch.setenv("SNAPGEN_GIT_SHA", "b716668")
    assert tracking.git_sha() == "b716668"
    monkeypatch.delenv("SNAPGEN_GIT_SHA")
    assert tracking.git_sha() != "b716668"
