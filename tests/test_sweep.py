"""ablations.sweep: plans from the specs, and tiny two-trial sweeps through the local executor and Ray.

The trials really train (3 steps at width 32, 16x16) and profile the trained net at an 8x8 input, so the whole path
(train -> evaluate -> profile, tracked live in MLflow) runs; a shared output root lets later tests resume finished
training (their fresh MLflow stores then get the history by the live run's backfill from metrics.jsonl).
"""

import pandas as pd
import pytest
import yaml

from ablations import sweep
from ablations.trial import trial_hash
from snapgen import tracking

TINY_SPEC = {
    "sweep": "unet", "experiment": "unet-ablation", "walk": "fig3", "steps": ["a_baseline", "b_no_sa_high_res"],
    "seeds": 1, "metric_note": "val_loss is a proxy, not FID",
    "scales": {"smoke": {
        "train": {"steps": 3, "val_every": 3, "ckpt_every": 3, "log_every": 1, "val_size": 8, "samples_per_class": 1,
                  "sample_steps": 2},
        "fid": {"enabled": True, "num_samples": 4, "sample_steps": 2, "batch_size": 4},
        "profile": {"architecture": "trained", "flops_latents": [8], "latency_latent": 8, "latency_warmup": 0,
                    "latency_repeats": 1},
    }},
}
SCHEMA_METRICS = {"params_m", "params_m_trained", "gflops", "gflops_8", "latency_ms", "val_loss", "train_loss"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep")


@pytest.fixture
def tiny_trials(workdir):
    spec_file = workdir / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_SPEC))
    spec = sweep.load_spec(spec_file)
    return sweep.plan(spec, "smoke", out_root=workdir / "runs", profile_cache=workdir / "cache", progress=False)


def _runs(uri):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("unet-ablation")
    return c.search_runs([exp.experiment_id]) if exp else []


def _check_schema(run):
    assert set(tracking.REQUIRED_TAGS) <= set(run.data.tags)
    assert run.data.tags["metric_note"] == "val_loss is a proxy, not FID"
    assert run.data.tags["fid_note"]  # a number with its sample count, or "missing: <which file>"
    assert SCHEMA_METRICS <= set(run.data.metrics)
    assert {"flops_latent", "train.steps", "unet.conv", "arch", "seed"} <= set(run.data.params)
    assert run.data.params["flops_latent"] == "8" and run.data.params["train.steps"] == "3"


def test_specs_plan_the_walks():
    unet = sweep.plan(sweep.load_spec("unet"), "smoke")
    assert [t["step"] for t in unet] == ["a_baseline", "b_no_sa_high_res", "c_sepconv_plain", "c_sepconv_expanded",
                                         "d_ffn_trim", "e_mqa", "f_first_stage_ca", "g_qk_rmsnorm_rope"]
    assert unet[2]["parent"] == "b_no_sa_high_res" and unet[2]["arch"] == "baseline+no_sa_high_res+sepconv_plain"
    assert unet[-1]["arch"].count("+") == 6
    assert len({trial_hash(t) for t in sweep.plan(sweep.load_spec("unet"), "small", seeds=2)}) == 16
    assert len(sweep.plan(sweep.load_spec("unet_loo"), "smoke")) == 7
    assert [t["kd_row"] for t in sweep.plan(sweep.load_spec("kd"), "smoke")] == [
        "task", "task+kd", "task+kd+featkd", "task+kd+featkd+t_scaling"]
    # the run location is not part of a trial's identity; its config is
    a, b = unet[0], {**unet[0], "_out_root": "/elsewhere", "_progress": False}
    assert trial_hash(a) == trial_hash(b) != trial_hash({**a, "seed": 1})


def test_spec_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_SPEC, "stepz": []}))
    with pytest.raises(ValueError, match="stepz"):
        sweep.load_spec(bad)
    with pytest.raises(FileNotFoundError, match="unet"):
        sweep.load_spec("no_such_sweep")
    with pytest.raises(KeyError, match="paper"):
        sweep.plan({**TINY_SPEC, "scales": {"smoke": {}}}, "paper")


def test_local_sweep_logs_two_runs_then_none(tiny_trials, mlflow_uri):
    summaries = sweep.run_sweep(tiny_trials, "local", mlflow_uri)
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    runs = _runs(mlflow_uri)
    assert sorted(r.info.run_name for r in runs) == ["a_baseline", "b_no_sa_high_res"]
    for run in runs:
        assert run.info.status == "FINISHED"
        _check_schema(run)
    history = tracking.client(mlflow_uri).get_metric_history(runs[0].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    # a rerun logs nothing
    assert [s["status"] for s in sweep.run_sweep(tiny_trials, "local", mlflow_uri)] == ["skipped", "skipped"]
    assert len(_runs(mlflow_uri)) == 2


def test_interrupted_sweep_finishes_on_rerun(tiny_trials, mlflow_uri):
    def stop(summary):
        raise KeyboardInterrupt  # the sweep is killed after its first trial

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(tiny_trials, "local", mlflow_uri, on_done=stop)
    assert [r.info.run_name for r in _runs(mlflow_uri)] == ["a_baseline"]
    assert [s["status"] for s in sweep.run_sweep(tiny_trials, "local", mlflow_uri)] == ["skipped", "finished"]
    assert sorted(r.info.run_name for r in _runs(mlflow_uri)) == ["a_baseline", "b_no_sa_high_res"]


def test_failing_trial_is_reported_and_sweep_goes_on(tiny_trials, mlflow_uri):
    broken = {**tiny_trials[0], "train": {**tiny_trials[0]["train"], "batch_size": 3, "grad_accum": 2}}
    summaries = sweep.run_sweep([broken, tiny_trials[1]], "local", mlflow_uri)
    assert [s["status"] for s in summaries] == ["failed", "finished"]
    assert "divisible" in summaries[0]["error"] and "attempt 2/2" in summaries[0]["error"]
    by_name = {r.info.run_name: r for r in _runs(mlflow_uri)}
    assert by_name["a_baseline"].info.status == "FAILED" and "divisible" in by_name["a_baseline"].data.tags["error"]
    assert by_name["b_no_sa_high_res"].info.status == "FINISHED"


def test_kd_task_row_runs_through_distill(tiny_trials, mlflow_uri):
    """The kd sweep's 'task' row (no teacher) goes through snapgen.distill.kd_loss_fn, or fails saying it is absent."""
    kd = {**tiny_trials[0], "sweep": "kd", "experiment": "kd-ablation", "step": "task", "kd_row": "task",
          "teacher": "small", "walk": None, "parent": None, "delta": None}
    (summary,) = sweep.run_sweep([kd], "local", mlflow_uri)
    try:
        import snapgen.distill  # noqa: F401
    except ImportError:
        assert summary["status"] == "failed" and "snapgen.distill.kd_loss_fn" in summary["error"]
        return
    assert summary["status"] == "finished", summary["error"]
    (run,) = tracking.client(mlflow_uri).search_runs(
        [tracking.client(mlflow_uri).get_experiment_by_name("kd-ablation").experiment_id])
    assert run.info.run_name == "task" and run.data.params["kd_row"] == "task"


@pytest.mark.slow  # Ray's start-up and two fresh worker processes: ~1-3 min on a shared 2-core CPU
def test_ray_sweep_logs_two_runs(tiny_trials, mlflow_uri):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        summaries = sweep.run_sweep(tiny_trials, "ray", mlflow_uri)
    finally:
        ray.shutdown()
    assert sorted(s["status"] for s in summaries) == ["finished", "finished"]
    runs = _runs(mlflow_uri)
    assert sorted(r.info.run_name for r in runs) == ["a_baseline", "b_no_sa_high_res"]
    for run in runs:
        _check_schema(run)  # logged live by the LiveRun each Ray worker made, history included
        assert sorted(m.step for m in tracking.client(mlflow_uri).get_metric_history(run.info.run_id, "train_loss")) \
            == [1, 2, 3]
    assert [s["status"] for s in sweep.run_sweep(tiny_trials, "ray", mlflow_uri)] == ["skipped", "skipped"]


def test_untracked_sweep_then_ingest_logs_each_trial_once(tmp_path, mlflow_uri, capsys):
    """A bare GPU box runs `--no-tracking`; its trial_result.json files are logged here by `ingest`, once."""
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump({**TINY_SPEC, "scales": {"smoke": {**TINY_SPEC["scales"]["smoke"],
                                                                           "fid": {"enabled": False}}}}))
    root = tmp_path / "runs"
    args = ["unet", "--spec", str(spec_file), "--out-root", str(root), "--profile-cache", str(tmp_path / "cache"),
            "--no-progress", "--tracking-uri", mlflow_uri, "--set", "steps=2", "val_every=2", "ckpt_every=2"]
    assert sweep.main(args + ["--no-tracking", "--only", "b_no_sa_high_res"]) == 0
    capsys.readouterr()
    assert sweep.main(args + ["--no-tracking", "--dry-run"]) == 0  # the plan reads the result files, not MLflow
    plan = {line.split()[0]: line.split()[4] for line in capsys.readouterr().out.splitlines() if " seed " in line}
    assert plan == {"a_baseline": "to", "b_no_sa_high_res": "done"}
    assert sweep.main(args + ["--no-tracking"]) == 0  # the finished trial is skipped, the other runs
    assert len(list(root.rglob(sweep.RESULT_FILE))) == 2
    assert _runs(mlflow_uri) == []
    assert sweep.main(["ingest", "--out-root", str(root), "--tracking-uri", mlflow_uri]) == 0
    runs = _runs(mlflow_uri)
    assert sorted(r.info.run_name for r in runs) == ["a_baseline", "b_no_sa_high_res"]
    for run in runs:
        assert run.data.params["train.steps"] == "2" and "ingested_from" in run.data.tags
    sweep.main(["ingest", "--out-root", str(root), "--tracking-uri", mlflow_uri])
    assert len(_runs(mlflow_uri)) == 2


def test_progress_line_says_time_loss_and_eta():
    from ablations.sweep import progress_line

    spent = []
    line = progress_line({"status": "finished", "seconds": 161.0, "val_loss": 0.25523, "error": None}, spent, 5)
    assert line == "finished in 2m41s, val_loss 0.2552, ETA 13m25s"
    assert progress_line({"status": "skipped", "error": None}, spent, 4) == "skipped (finished before)"
    assert progress_line({"status": "failed", "seconds": 39.0, "error": "boom"}, spent, 0) == "failed in 39s (boom)"


def test_adversarial_specs_plan_one_trial_per_arm_of_another_stage(tmp_path):
    """Issue 19: specs with `stage` + `arms` (ablations.stage_trials) plan the with/without arms of step distillation
    and of the decoder, checked up front by the stage's own options."""
    from ablations.stage_trials import stage_config, student_config

    for scale in ("smoke", "small"):
        distill = sweep.plan(sweep.load_spec("adversarial_step_distill"), scale)
        assert [t["step"] for t in distill] == ["adv", "no_adv", "adv_clean"]
        assert {t["stage"] for t in distill} == {"step_distill"}
        assert [(stage_config(t).adv_weight, stage_config(t).d_noise) for t in distill] == [
            (1.0, "next"), (0.0, "next"), (1.0, "clean")]
        assert student_config(distill[0]) == student_config(distill[1])  # both arms distil the same student
        decoder = sweep.plan(sweep.load_spec("adversarial_decoder"), scale)
        assert [(stage_config(t).gan_weight, stage_config(t).gan_adaptive, stage_config(t).spectral_norm)
                for t in decoder] == [(0.1, False, False), (0.5, True, False), (0.0, False, False), (0.5, True, True)]
    assert student_config(sweep.plan(sweep.load_spec("adversarial_step_distill"), "small")[0]).autoencoder == "taesd3"
    with pytest.raises(ValueError, match="d_noise"):
        stage_config({**distill[0], "arm": {"d_noise": "loud"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sweep": "x", "experiment": "adversarial-ablation", "stage": "decoder",
                                   "scales": {"smoke": {}}}))
    with pytest.raises(ValueError, match="arms"):
        sweep.load_spec(bad)


def test_adversarial_smoke_sweeps_run_end_to_end_and_tabulate(tmp_path, mlflow_uri, monkeypatch):
    """Both adversarial specs run through the sweep at smoke scale (the stage trials: a shared student and teacher,
    the PatchGAN arms), log to MLflow, and tabulate: equal steps per arm, D diagnostics where a D exists, FD-CIFAR of
    the 4- and 8-step students, PSNR of the decoders."""
    from evals import feature_net
    from reports import tables

    if not feature_net.DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"{feature_net.DEFAULT_WEIGHTS} is not committed")
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(tmp_path / "no_weights"))  # no LPIPS backbone: MSE + GAN
    root = tmp_path / "runs"
    for name, arms in (("adversarial_step_distill", ["adv", "no_adv"]),
                       ("adversarial_decoder", ["gan_adaptive", "no_gan"])):
        assert sweep.main([name, "--scale", "smoke", "--no-progress", "--out-root", str(root), "--tracking-uri",
                           mlflow_uri, "--only", *arms]) == 0
    table = tables.adversarial_table(tracking_uri=mlflow_uri, scale="smoke")
    frame = table.frame.set_index("arm")
    assert list(frame.loc[["adv", "no_adv", "gan_adaptive", "no_gan"], "steps"]) == [4, 4, 4, 4]
    assert not [f for f in table.footnotes if "unequal steps" in f]
    assert 0 <= frame.loc["adv", "d_acc"] <= 1 and pd.isna(frame.loc["no_adv", "d_acc"])
    assert frame.loc["gan_adaptive", "adv_ratio"] == pytest.approx(0.5, rel=1e-3)  # the adaptive weight's balance
    for arm in ("adv", "no_adv"):
        assert frame.loc[arm, "fd_cifar_4"] > 0 and frame.loc[arm, "fd_cifar_8"] > 0 and frame.loc[arm, "mse_4"] > 0
    assert frame.loc["gan_adaptive", "psnr"] > 0 and frame.loc["no_gan", "psnr"] > 0
    assert frame.loc["gan_adaptive", "fd_cifar_rec"] > 0 and frame.loc["no_gan", "fd_cifar_rec"] > 0
