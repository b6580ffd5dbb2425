"""A shared tracking server (issue 17): PostgreSQL behind `mlflow server` (what `make mlflow-server` starts with
`MLFLOW_BACKEND_STORE_URI=postgresql://...`), and 4 trial processes logging through `MLFLOW_TRACKING_URI=http://...` at
once, each as a sweep trial does (`tracking.LiveRun`: open, per-step records, final metrics, FINISHED).

PostgreSQL is Debian's `postgresql` package (`.ci/run` installs it), started here with initdb/pg_ctl in a temp dir on a
loopback port (as the `postgres` user when the tests run as root: initdb refuses root). Skipped, with the reason,
where it or psycopg2 is missing.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TRIALS, STEPS = 4, 8


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg2", reason="psycopg2-binary (test extras) is not installed: mlflow's postgres driver")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to drop to the postgres user")
    root = Path(tempfile.mkdtemp(prefix="snapgen-pg-"))
    if os.geteuid() == 0:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, port = root / "data", _free_port()
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]),
                   check=True, capture_output=True, timeout=120)
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                 f"-h 127.0.0.1 -p {port} -k {root} -F", "start"]),
                   check=True, capture_output=True, timeout=120)
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"  # SQLAlchemy 2.1: bare postgresql:// means psycopg 3
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True,
                   timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL store, artifacts proxied into a temp dir; its http:// URI."""
    port, artifacts = _free_port(), tmp_path_factory.mktemp("mlartifacts")
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", postgres, "--artifacts-destination",
                               str(artifacts), "--workers", "2"], stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not come up: {Path(log.name).read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)
    log.close()


# One trial's logging, as `run_trial` does it on rank 0: a LiveRun through the engine's callbacks, then finish.
TRIAL_PROCESS = textwrap.dedent("""
    import sys, time
    from snapgen import tracking

    index, steps = int(sys.argv[1]), int(sys.argv[2])
    tracking.LiveRun.FLUSH_EVERY_S = 0.0  # every record its own request: the most concurrent writes
    tags = {"step": f"trial{index}", "scale": "smoke", "git_sha": "test", "config_hash": f"cfg{index}",
            "device": "cpu", "latency_backend": "none"}
    live = tracking.LiveRun("unet-ablation", f"trial{index}", tags=tags, params={"index": index}, terminate=False)
    live.on_start({"out": None, "step": 0, "run_hash": f"run{index}", "config": {"seed": index}})
    for step in range(1, steps + 1):
        live.on_record({"step": step, "time": time.time(), "train_loss": 1.0 / step + index})
    live.on_end("FINISHED")
    live.finish({"params_m": 1.0 + index, "val_loss": 0.5 + index})
    print(live.run_id)
""")


def test_four_trials_log_at_once_through_a_postgres_backed_server(tracking_server):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": tracking_server}
    procs = [subprocess.Popen([sys.executable, "-c", TRIAL_PROCESS, str(i), str(STEPS)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(TRIALS)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=tracking_server)
    exp = c.get_experiment_by_name("unet-ablation")  # created by 4 processes at once: one experiment
    found = c.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in found) == sorted(run_ids)  # none lost, none duplicated
    by_hash = {r.data.tags["config_hash"]: r for r in found}
    assert sorted(by_hash) == [f"cfg{i}" for i in range(TRIALS)]
    for i in range(TRIALS):
        run = by_hash[f"cfg{i}"]
        assert run.info.status == "FINISHED"
        history = c.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # every step, each once
        assert {m.step: m.value for m in history}[STEPS] == pytest.approx(1.0 / STEPS + i)
        assert run.data.metrics["params_m"] == pytest.approx(1.0 + i)
        assert run.data.params["index"] == str(i)
