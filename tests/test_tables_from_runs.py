"""Tables 1 and 3 from runs (issue 15): the imagenet sweep's CFG grid, throughput results into MLflow, Table 3's
per-checkpoint rows, reports attached to a sweep's parent run, the loss-curve artifact."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from snapgen import tracking

pytestmark = pytest.mark.usefixtures("one_thread")
RESULTS = Path(__file__).resolve().parents[1] / "reports" / "results"


def _report(device="NVIDIA H200", sdxl=True, ours=2.0, setting=None):
    """A benchmarks.throughput result of the committed format (one UNet row, optionally SDXL beside it)."""
    row = {"model": "snapgen-t2i", "params_m": 381.4, "batch": 16, "unet_batch": 32, "samples_per_s": ours,
           "mfu": 0.18, "ratio_to_sdxl": (ours / 1.0 if sdxl else None)}
    rows = [row] + ([{"model": "sdxl-unet", "params_m": 2567.5, "batch": 16, "samples_per_s": 1.0, "mfu": 0.5,
                      "ratio_to_sdxl": 1.0}] if sdxl else [])
    report = {"device": device, "dtype": "bf16", "compile": False, "channels_last": False, "cuda_graphs": False,
              "quick": False, "latent": 128, "steps": 28, "unets": rows, "decoders": []}
    if setting:
        report["settings"] = {setting: {"compile": True, "channels_last": True, "cuda_graphs": False}}
        for r in rows:
            r["setting"] = setting
    return report


def test_committed_throughput_json_becomes_tagged_records():
    report = json.loads((RESULTS / "throughput_ablation" / "snapgen_ablation" / "throughput.json").read_text())
    records = tracking.throughput_records(report, "x.json")
    by_setting = {r["tags"]["setting"]: r for r in records}
    assert set(by_setting) == {"eager", "+channels-last", "+compile", "+cuda-graphs"}
    compiled = by_setting["+compile"]
    assert compiled["tags"]["backend"] == "pytorch compile, channels-last"
    assert (compiled["tags"]["gpu"], compiled["tags"]["dtype"], compiled["tags"]["batch"]) == ("NVIDIA H200", "bf16",
                                                                                               "16")
    assert compiled["metrics"]["throughput"] == pytest.approx(report["unets"][2]["samples_per_s"])
    assert "ratio_to_sdxl" not in compiled["metrics"]  # null in the file: not measured, not logged as a number
    assert len({r["tags"]["config_hash"] for r in records}) == len(records)


def test_table3_throughput_and_checkpoint_rows(mlflow_uri, tmp_path):
    from reports import ingest, tables

    tmp_path.joinpath("a").mkdir()
    tmp_path.joinpath("a", "throughput.json").write_text(json.dumps(_report(ours=2.0)))
    tmp_path.joinpath("b").mkdir()  # compiled, in another file: no SDXL beside it
    tmp_path.joinpath("b", "throughput.json").write_text(json.dumps(_report(sdxl=False, ours=5.0,
                                                                            setting="+compile")))
    logged = ingest.ingest_throughput([tmp_path], mlflow_uri)
    assert [name for _, name, new in logged if new] == ["snapgen-t2i", "sdxl-unet", "snapgen-t2i"]
    assert not any(new for _, _, new in ingest.ingest_throughput([tmp_path], mlflow_uri))  # never twice

    table = tables.table3(tracking_uri=mlflow_uri)
    ours = table.frame[table.frame["source"].str.startswith("ours")].set_index("model")
    eager, fastest = ours.loc["Ours (snapgen-t2i, eager)"], ours.loc["Ours (snapgen-t2i, fastest)"]
    assert (eager["throughput"], eager["x_sdxl"]) == (pytest.approx(2.0), pytest.approx(2.0))
    assert (fastest["throughput"], fastest["x_sdxl"]) == (pytest.approx(5.0), pytest.approx(5.0))  # vs a's SDXL
    assert eager["params_b"] == pytest.approx(0.3814) and pd.isna(eager["geneval"])
    assert pd.isna(ours.loc["Ours (snapgen-t2i checkpoint)", "geneval"])  # no evaluated checkpoint yet
    body, notes = tables.render(table)
    assert "NVIDIA H200, pytorch compile, channels-last, bf16, batch 16" in notes
    assert "no MLflow experiment 't2i-evals'" in notes and "make table3 CKPTS=" in notes
    paper_sdxl = table.frame.set_index("model").loc["SnapGen (ours)", "x_sdxl"]
    assert paper_sdxl == pytest.approx(1.04 / 0.18)

    # a checkpoint with two of the four benchmarks; a tiny-random-judge run is never shown as a measurement
    from evals import common

    settings = common.GenerationSettings(checkpoint="/x", ema=True, steps=28, cfg_scale=2.0, seed=0, batch=4,
                                         resolution=64, sampler="euler", per_prompt=1, grid="none")
    common.log_metrics("runA", "geneval", {"geneval_overall": 0.41}, judge="m2f", tiny_random=False, target="/x",
                       settings=settings, uri=mlflow_uri)
    common.log_metrics("runA", "clipscore", {"clip_score": 0.25}, judge="clip", tiny_random=False, target="/x",
                       settings=settings, uri=mlflow_uri)
    common.log_metrics("runB", "geneval", {"geneval_overall": 0.9}, judge="tiny", tiny_random=True, target="/y",
                       settings=settings, uri=mlflow_uri)
    table = tables.table3(tracking_uri=mlflow_uri)
    ours = table.frame[table.frame["source"].str.startswith("ours: MLflow t2i")].set_index("model")
    assert list(ours.index) == ["Ours (runA)"]
    assert (ours.loc["Ours (runA)", "geneval"], ours.loc["Ours (runA)", "clip"]) == (0.41, 0.25)
    _, notes = tables.render(table)
    assert "dpg_overall not measured on this checkpoint (`python -m evals.dpg CKPT`" in notes
    assert "generated on cpu" in notes and "fp32, batch 4" in notes


def test_table1_shows_fid_or_the_named_proxy(mlflow_uri):
    from reports import tables

    tags = {"step": "snapgen-imagenet", "scale": "smoke", "git_sha": "x", "config_hash": "h1", "device": "cpu",
            "latency_backend": "none", "quality_metric": "fd_cifar", "fid_note": "missing: no Inception weights",
            "quality_note": "FD-CIFAR, lowest over CFG 1.3, 2"}
    metrics = {"params_m": 373.8, "gflops": 38.0, "val_loss": 0.31, "fd_cifar": 12.5, "fd_cifar_best_cfg": 1.3}
    tracking.log_trial("imagenet", "snapgen-imagenet", tags=tags, params={}, metrics=metrics, uri=mlflow_uri)
    table = tables.table1(tracking_uri=mlflow_uri)
    ours = table.frame.iloc[-1]
    assert pd.isna(ours["fid"]) and ours["proxy"] == 12.5 and ours["cfg"] == 1.3 and ours["val_loss"] == 0.31
    body, notes = tables.render(table)
    assert "proxy (not FID)" in body
    assert "FID not measured" in notes and "no Inception weights" in notes and "proxy = fd_cifar" in notes
    assert "smoke scale" in notes
    assert pd.isna(tables.table1(tracking_uri=mlflow_uri, metric="fd_other").frame.iloc[-1]["proxy"])


def test_imagenet_spec_plans_the_supplement_h_protocol(tmp_path):
    from ablations import sweep
    from ablations.trial import train_config

    spec = sweep.load_spec("imagenet")
    (trial,) = sweep.plan(spec, "smoke", out_root=tmp_path)
    assert (trial["step"], trial["arch"], trial["experiment"]) == ("snapgen-imagenet", "snapgen-imagenet", "imagenet")
    cfg = train_config(trial)
    assert (cfg.objective, cfg.autoencoder, cfg.sample_steps, cfg.betas) == ("ddpm", "taesd3", 30, (0.9, 0.99))
    assert min(trial["fid"]["cfg_sweep"]) == 1.3 and max(trial["fid"]["cfg_sweep"]) == 2.0
    assert trial["fid"]["metrics"][0] == "fid"
    assert sweep.report_commands(spec, "smoke", "sqlite:///x.db") == [
        "python -m reports.tables table1 --tracking-uri sqlite:///x.db"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from snapgen.train import make_config, train

    run = tmp_path_factory.mktemp("quality") / "run"
    cfg = make_config("smoke", arch="baseline", steps=2, val_every=2, ckpt_every=2, val_size=8, samples_per_class=1,
                      sample_steps=2, resolution=8, objective="ddpm")
    train(cfg, run, progress=False)
    return run


def test_cfg_sweep_reports_the_lowest_value_and_its_scale(tiny_run, tmp_path):
    from evals import fid, quality

    projection = np.random.default_rng(0).standard_normal((8 * 8 * 3, 6))

    def features(images):  # a fixed random projection of the pixels: a real (if meaningless) feature space
        return images.reshape(len(images), -1).astype(np.float64) / 255.0 @ projection

    scales = [1.3, 2.0]
    result = quality.cfg_sweep(tiny_run, {"proj": features}, scales, num_samples=12, sample_steps=2, batch_size=5,
                               varied={"first_step": 1, "last_step": 2, "scale_start": 1.1, "scale_end": 5.4},
                               reference_limit=40, cache_dir=tmp_path)
    m = result["metrics"]
    values = {s: m[f"proj_{quality.cfg_key(s)}"] for s in scales}
    assert values[1.3] != values[2.0] and "proj_varied_cfg" in m
    assert m["proj"] == min(values.values()) and values[m["proj_best_cfg"]] == m["proj"]
    # the value at a scale is the distance of exactly those samples (same noise at every scale, random names)
    images = fid.generate(tiny_run, 12, 2, 2.0, 12, prompt_choice="random")
    reference = fid.cifar10_reference(8, 40)
    assert fid.fid_of_images(images, *reference, features, "proj", tmp_path)["fid"] == pytest.approx(values[2.0])
    assert not np.array_equal(images, fid.generate(tiny_run, 12, 2, 2.0, 12))  # other class names drawn

    metrics, tags = quality.evaluate(tiny_run, {"metrics": ["fid", "fd_cifar"]}, feature_fns={})
    assert metrics == {} and tags["fid_note"].startswith("missing") and "fd_cifar" in tags["quality_note"]
    with pytest.raises(ValueError, match="valid: fid, fd_cifar"):
        quality.load_metrics(["inception-v9"])


def test_loss_curve_is_redrawn_and_logged_at_validation(tmp_path):
    from ablations.trial import LOSS_CURVE_FILE, LossCurve
    from snapgen.runs import append_metrics

    logged = []

    class Recorder:  # the LiveRun side of the callback: what it was asked to log
        def on_artifact(self, path, flush=True):
            logged.append((Path(path), Path(path).stat().st_size, flush))

    curve = LossCurve(Recorder(), "c_sepconv_plain", every_s=3600)
    curve.on_start({"out": tmp_path})
    for step, val in ((10, None), (20, 0.5), (30, None), (40, 0.4)):
        record = {"step": step, "time": 0.0, "train_loss": 1.0 / step, **({"val_loss": val} if val else {})}
        append_metrics(tmp_path, record)
        curve.on_record(record)
    assert len(logged) == 2  # at each validation; train-only records wait for every_s after the first drawing
    assert logged[-1][0] == tmp_path / LOSS_CURVE_FILE and logged[-1][1] > 1000
    assert not any(flush for *_, flush in logged)  # a plot never changes when metrics are sent
    from PIL import Image

    assert Image.open(tmp_path / LOSS_CURVE_FILE).size[0] <= 500  # small enough for the artifact view


def test_report_attached_to_the_sweep_parent_replaces_not_appends(mlflow_uri, tmp_path):
    parent = tracking.start_parent("unet-ablation", "sweep-unet-smoke", "abc", tags={"sweep": "unet",
                                                                                     "scale": "smoke"},
                                   params={}, uri=mlflow_uri)
    tracking.end_parent(parent, "FINISHED", uri=mlflow_uri)
    assert tracking.find_parent("unet-ablation", "unet", "smoke", mlflow_uri).info.run_id == parent
    assert tracking.find_parent("unet-ablation", "unet", "small", mlflow_uri) is None
    figure = tmp_path / "fig3.png"
    figure.write_bytes(b"\x89PNG fake")
    for rows in ([1.0, 2.0], [3.0, 4.0, 5.0]):
        tracking.log_report(parent, pd.DataFrame({"step": [f"s{i}" for i in range(len(rows))], "val_loss": rows}),
                            "fig3_table.json", [figure], uri=mlflow_uri)
    c = tracking.client(mlflow_uri)
    local = Path(c.download_artifacts(parent, "fig3_table.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text())["data"] == [["s0", 3.0], ["s1", 4.0], ["s2", 5.0]]
    assert {a.path for a in c.list_artifacts(parent)} == {"fig3_table.json", "fig3.png"}
    tags = c.get_experiment_by_name("unet-ablation").tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"  # opens on the runs table
