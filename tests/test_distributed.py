"""Trials over several processes (issue 17): a 2-worker gloo Ray Train trial inside its Tune trial, with its rank 0
killed mid-trial, and `torchrun --nproc-per-node 2 -m snapgen.train`, both against one process with the same global
batch.

The engine draws each micro-batch's noise from its index in the global batch, so 2 processes with grad_accum=1 train
what 1 process with grad_accum=2 trains; only the order of float sums differs (DDP averages two gradients, one
process accumulates two halves). Tolerance: train_loss within rtol 1e-4 at every step (measured on this CPU: equal
to the last bit at all 10 steps, for Ray Train and torchrun).

One Ray cluster for the module; one Ray Train trial (2 workers, rank 0 SIGKILLed after step 5, so Ray restarts the
worker group, which resumes from its last checkpoint, step 4 or 8) serves both Ray tests: a tiny net (width 32, 16x16, batch 8).
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ablations import distributed, sweep
from ablations.trial import train_config, trial_dir, trial_hash
from snapgen import runs

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS, KILL_AFTER, CKPT_EVERY = 10, 5, 4
RTOL = 1e-4
TRAIN = {"steps": STEPS, "batch_size": 8, "val_every": 5, "ckpt_every": CKPT_EVERY, "log_every": 1, "val_size": 8,
         "samples_per_class": 1, "sample_steps": 2, "train_limit": 64}
SPEC = {
    "sweep": "unet", "experiment": "unet-ablation", "walk": "fig3", "steps": ["a_baseline"], "seeds": 1,
    "metric_note": "val_loss is a proxy, not FID",
    "scales": {"smoke": {"train": TRAIN, "fid": {"enabled": False},
                         "profile": {"architecture": "trained", "flops_latents": [8]}}},
}
WORKER_ENV = {**distributed.RAY_WORKER_ENV, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
              "SNAPGEN_ASSETS": os.environ.get("SNAPGEN_ASSETS", ""), "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in runs.read_metrics(out) if "train_loss" in r}


def _single_process(trial: dict, out: Path) -> dict[int, float]:
    """The reference: one process, the same global batch of 8 as two micro-batches of 4 (grad_accum=2)."""
    from snapgen.train import train

    train(train_config({**trial, "train": {**trial["train"], "grad_accum": 2}}), out, progress=False)
    return _losses(out)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    yield ray
    ray.shutdown()


def _kill_rank0_after(out: Path, step: int, killed: dict) -> None:
    """SIGKILL the process holding the run directory's lock (rank 0: `.lock` names its PID) once `step` is logged."""
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [r["step"] for r in runs.read_metrics(out)] if (out / runs.METRICS_FILE).is_file() else []
        if done and max(done) >= step:
            pid = int((out / runs.LOCK_FILE).read_text().split()[1])
            killed.update(pid=pid, time=time.time(), at_step=max(done))
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed_two_worker_trial(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray_trial")
    (tmp / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    (trial,) = sweep.plan(sweep.load_spec(tmp / "spec.yaml"), "smoke", out_root=tmp / "runs",
                          profile_cache=tmp / "profile_cache", progress=False)
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    killed: dict = {}
    killer = threading.Thread(target=_kill_rank0_after, args=(trial_dir(trial), KILL_AFTER, killed), daemon=True)
    killer.start()
    (summary,) = sweep.run_sweep([trial], "ray", uri, workers_per_trial=2, gpus_per_worker=0, max_failures=2)
    killer.join(timeout=1)
    return {"trial": trial, "uri": uri, "summary": summary, "killed": killed, "tmp": tmp}


def _runs_of(uri: str, config_hash: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("unet-ablation")
    return c, c.search_runs([exp.experiment_id], filter_string=f"tags.config_hash = '{config_hash}'")


def test_two_ray_train_workers_match_one_process(killed_two_worker_trial):
    t = killed_two_worker_trial
    assert t["summary"]["status"] == "finished", t["summary"]
    two = _losses(trial_dir(t["trial"]))
    one = _single_process(t["trial"], t["tmp"] / "single")
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=RTOL), (step, two[step], one[step])
    c, found = _runs_of(t["uri"], trial_hash(t["trial"]))
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert found[0].info.run_id == t["summary"]["run_id"]
    # Ray made the worker's torch thread count its reserved CPUs (one, the CPU-cluster default), whatever the host has
    assert found[0].data.tags["torch_threads"] == "1"
    # and ran at niceness 0, not Ray's default of 15, which would put the trial behind every other process on the node
    assert found[0].data.tags["niceness"] == "0"


def test_killed_worker_restarts_resumes_and_logs_each_step_once(killed_two_worker_trial):
    t = killed_two_worker_trial
    killed, out = t["killed"], trial_dir(t["trial"])
    assert killed and KILL_AFTER <= killed["at_step"] < STEPS, killed  # rank 0 died mid-training
    records = runs.read_metrics(out)
    resumed_from = (killed["at_step"] // CKPT_EVERY) * CKPT_EVERY
    # Records up to the checkpoint were kept from before the kill, the rest were written by the restarted group.
    assert all(r["time"] < killed["time"] for r in records if r["step"] <= resumed_from)
    assert all(r["time"] > killed["time"] for r in records if r["step"] > resumed_from)
    c, (run,) = _runs_of(t["uri"], trial_hash(t["trial"]))
    for key in ("train_loss", "val_loss"):
        steps = [m.step for m in c.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == sorted(set(steps)) == sorted(r["step"] for r in records if key in r), key
    assert run.data.metrics.get("params_m_trained") is not None  # rank 0 of the restarted group profiled it


def test_torchrun_two_processes_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not beside this python")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    (trial,) = sweep.plan(sweep.load_spec(tmp_path / "spec.yaml"), "smoke", out_root=tmp_path / "runs",
                          progress=False)
    sets = [f"{k}={v}" for k, v in TRAIN.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "snapgen.train", "--preset", trial["arch"],
                           "--scale", "smoke", "--no-progress", "--out", str(tmp_path / "two"), "--set", *sets],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"run_hash"') == 1, proc.stdout  # rank 0 alone reports
    two = _losses(tmp_path / "two")
    one = _single_process(trial, tmp_path / "one")
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=RTOL), (step, two[step], one[step])


def test_dry_run_prints_the_resource_plan(tmp_path, capsys):
    """trials x workers x GPUs, and GPU-hours = steps x batch / (measured img/s scaled by latent area) / 3600."""
    from ablations import distributed

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    trials = sweep.plan(sweep.load_spec(tmp_path / "spec.yaml"), "smoke", out_root=tmp_path, progress=False)
    speed = {"img_per_s": 100.0, "latent": 8, "device": "test GPU", "setting": "measured"}
    plan = distributed.resource_plan(trials, workers=4, gpus_per_worker=2, speed=speed)
    assert plan["gpus_per_trial"] == 8
    # 16x16 pixels, no autoencoder: a 16x16 UNet input, 4x the measured 8x8 area, so 25 img/s
    assert plan["gpu_hours_total"] == pytest.approx(STEPS * 8 / 25 / 3600)
    assert "1 trials x 4 workers x 2 GPU = 8 GPUs per trial" in distributed.format_plan(plan)
    sweep.main(["unet", "--spec", str(tmp_path / "spec.yaml"), "--workers-per-trial", "2", "--dry-run",
                "--out-root", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert "1 trials x 2 workers x 1 GPU = 2 GPUs per trial" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--executor ray"):
        sweep.main(["unet", "--spec", str(tmp_path / "spec.yaml"), "--executor", "local", "--workers-per-trial", "2",
                    "--dry-run"])


def test_workers_reserve_their_gpus_share_of_cores():
    """A GPU worker reserves its GPUs' share of the cores less one (Ray makes the reservation its torch thread count:
    with one CPU the H200 trial ran 5% slower than the local one); a CPU worker one core; the plan's concurrency
    counts them, and a reservation that cannot be met names the numbers."""
    from ablations import distributed

    node = distributed.trial_resources(1, 1.0, cluster_gpus=1, cluster_cpus=16)
    assert node["cpus_per_worker"] == 15 and node["concurrent"] == 1
    eight = distributed.trial_resources(1, 1.0, cluster_gpus=8, cluster_cpus=128)
    assert eight["cpus_per_worker"] == 15 and eight["concurrent"] == 8  # every GPU busy, the drivers still fit
    wide = distributed.trial_resources(8, 1.0, cluster_gpus=16, cluster_cpus=256)
    assert wide["cpus"] == 8 * 15 and wide["concurrent"] == 2
    assert distributed.trial_resources(2, 0.0, cluster_gpus=0, cluster_cpus=4)["cpus_per_worker"] == 1
    assert distributed.trial_resources(1, 1.0, 1, 16, cpus_per_worker=4)["cpus"] == 4
    with pytest.raises(ValueError, match="--cpus-per-worker 0.5"):
        distributed.trial_resources(1, 1.0, 1, 16, cpus_per_worker=0.5)
    with pytest.raises(ValueError, match="needs 32.01 CPUs"):
        distributed.trial_resources(2, 1.0, 2, 16, cpus_per_worker=16)
