"""reports: tables (md/csv/tex, missing values marked), the Fig. 3 figure; the paper's values as data (snapgen.paper)."""

import io
import json

import pandas as pd
import pytest

from reports import figures, tables
from snapgen import paper, profile


def test_paper_fig3_keys_are_walk_steps():
    from snapgen.registry import walk

    assert set(paper.FIG3_STEPS) == {step.name for step in walk("fig3")}


def test_paper_values_given_and_absent():
    b = paper.FIG3_STEPS["b_no_sa_high_res"]
    assert (b.flops_delta_pct, b.latency_delta_pct, b.fid_parent, b.fid) == (-17.0, -24.0, 3.76, 3.12)
    assert b.params_delta_pct is None  # the text states no parameter change for SA removal
    expanded = paper.FIG3_STEPS["c_sepconv_expanded"]
    assert (expanded.params_delta_pct, expanded.flops_delta_pct, expanded.speedup) == (-15.0, -27.0, 2.4)
    assert expanded.fid is None and "lower" in expanded.fid_note
    assert paper.FIG3_STEPS["e_mqa"].flops_delta_pct == -6.0
    assert paper.FIG3_STEPS["f_first_stage_ca"].params_delta_pct is None
    assert [r.model for r in paper.TABLE1][-1] == "Ours" and paper.TABLE1[-1].params_m == 372
    sd3 = next(r for r in paper.TABLE2 if r.decoder == "SD3")
    assert (sd3.params_m, sd3.gflops, sd3.latency_gpu_ms) == (49.55, 4970, "OOM")
    assert next(r for r in paper.TABLE2 if r.decoder == "Ours").latency_gpu_ms is None  # "-" in the paper
    assert next(r for r in paper.TABLE3 if r.model == "SD-1.5").throughput is None
    assert [r.name for r in paper.SUPP_TABLE3_KD][-1] == "task+kd+featkd+t_scaling"
    assert len(paper.SUPP_TABLE1_GENEVAL) == len(paper.SUPP_TABLE2_DPG) == len(paper.TABLE3) == 12
    assert all(r.source for r in paper.TABLE1 + paper.TABLE2 + paper.TABLE3)


@pytest.mark.parametrize("name", list(tables.TABLES))
@pytest.mark.parametrize("fmt", ["md", "csv", "tex"])
def test_tables_render_with_ours_missing(name, fmt, tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    table = tables.TABLES[name](efficiency_only=False, tracking_uri=uri)
    body, notes = tables.render(table, fmt)
    assert tables.MISSING in body
    assert "no MLflow database" in notes
    assert not (tmp_path / "absent.db").exists()  # reading never creates a tracking database
    if fmt == "csv":
        frame = pd.read_csv(io.StringIO(body))
        assert "source" in frame.columns
        assert (frame["source"].str.startswith("paper")).any() or name in tables.OURS_ONLY_TABLES
    if fmt == "tex":
        assert "\\begin{tabular}" in body and notes.startswith("% [1]")


def test_table1_reads_mlflow_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(tables.EXPERIMENT_IMAGENET)
        with mlflow.start_run(run_name=tables.OURS_IMAGENET):
            mlflow.log_metrics({"params_m": 373.77, "gflops": 37.98})
    finally:
        mlflow.set_tracking_uri(None)
    table = tables.table1(tracking_uri=uri)
    ours = table.frame.iloc[-1]
    assert ours["params_m"] == pytest.approx(373.77) and ours["gflops"] == pytest.approx(37.98)
    assert pd.isna(ours["fid"])
    assert any(note.startswith("FID not measured") for note in table.footnotes)
    assert ours["source"].startswith("ours: MLflow imagenet/snapgen-imagenet")


def test_table1_efficiency_only_uses_profile(monkeypatch):
    calls = []

    def fake_profile_unet(arch, latent):
        calls.append((arch, latent))
        return {"params_m": 12.5, "gflops": 3.25}

    monkeypatch.setattr(profile, "profile_unet", fake_profile_unet)
    table = tables.table1(efficiency_only=True)
    assert calls == [("snapgen-imagenet", 32)]
    body, notes = tables.render(table, "md")
    assert "12.50" in body and "3.25" in body
    assert "fid not read (--efficiency-only" in notes


def test_table2_efficiency_only_profiles_every_decoder_and_marks_a_failure(monkeypatch):
    calls = []

    def fake_profile_decoder(arch, latent):
        calls.append((arch, latent))
        if arch == "tiny":
            raise RuntimeError("fvcore could not trace it")
        return {"params_m": 49.0, "gflops_fvcore_default": 4970.0}

    monkeypatch.setattr(profile, "profile_decoder", fake_profile_decoder)
    table = tables.table2(efficiency_only=True)
    assert calls == [("sdxl", 128), ("sd3", 128), ("taesd3", 128), ("tiny", 128)]  # one profiler for all
    ours = table.frame[table.frame["decoder"].str.contains("ours|this repo")]
    assert list(ours["gflops"].iloc[:2]) == [4970.0, 4970.0]
    assert pd.isna(ours["gflops"].iloc[2])
    body, notes = tables.render(table, "md")
    assert "params/FLOPs unavailable: RuntimeError: fvcore could not trace it" in notes
    assert "ANE OOM, GPU 9469" in body


def test_tables_cli_scale_is_for_fig3_only(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    assert tables.main(["fig3", "--scale", "small", "--tracking-uri", uri]) == 0
    assert "no MLflow database" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tables.main(["table1", "--scale", "small"])


def test_tables_cli_csv(capsys, tmp_path):
    assert tables.main(["kd", "--format", "csv", "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]) == 0
    captured = capsys.readouterr()
    frame = pd.read_csv(io.StringIO(captured.out))
    assert len(frame) == 8 and "[1]" in captured.err


def _fake_rows():
    return [
        {"step": "a_baseline", "parent": None, "params_m": 600.0, "gflops": 1000.0, "d_params_pct": None,
         "d_gflops_pct": None},
        {"step": "b_no_sa_high_res", "parent": "a_baseline", "params_m": 590.0, "gflops": 830.0,
         "d_params_pct": -1.7, "d_gflops_pct": -17.0},
    ]


@pytest.mark.parametrize("efficiency_only", [True, False])
def test_fig3_png(tmp_path, efficiency_only):
    out = figures.fig3(_fake_rows(), tmp_path / "fig3.png", efficiency_only=efficiency_only,
                       tracking_uri=f"sqlite:///{tmp_path / 'absent.db'}", latent=128)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fig3_cli_from_json(tmp_path):
    walk_json = tmp_path / "walk.json"
    walk_json.write_text(json.dumps({"walk": "fig3", "latent": 128, "steps": _fake_rows()}))
    out = tmp_path / "fig.png"
    assert figures.main(["fig3", "--efficiency-only", "--from-json", str(walk_json), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_ingest_decoder_results_then_table2_reads_them(tmp_path, mlflow_uri):
    """Committed GPU results (eval.json + decoder_latency.json) -> one MLflow run per decoder -> Table 2's rows, with
    the image set and the latency backend footnoted; a second ingest logs nothing."""
    from reports import ingest

    def write_eval(name, psnr_ours, psnr_peer):
        path = tmp_path / name / "eval.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"eval_set": f"set {name}", "encoder": "taesd3", "decoders": {
            "ours": {"psnr": psnr_ours, "ssim": 0.9, "lpips": None, "params_m": 1.38, "gflops": 222.3},
            "taesd3": {"psnr": psnr_peer, "ssim": 0.8, "lpips": None, "params_m": 1.23}}}))
        return path

    latency = tmp_path / "decoder_latency.json"
    latency.write_text(json.dumps([
        {"decoder": d, "batch": b, "median_ms": ms, "params_m": 1.0, "backend": "torch-cuda", "dtype": "bfloat16",
         "device": "GPU-X", "latent": 128, "image": 1024, "repeats": 20, "p10": ms - 0.1, "p90": ms + 0.2}
        for d, b, ms in (("ours (tiny)", 1, 6.0), ("ours (tiny)", 4, 22.0), ("taesd3", 1, 7.0))]))
    evals = [write_eval("photos", 24.0, 32.0), write_eval("cifar", 45.0, 41.0)]
    records = ingest.decoder_records(evals, latency)
    assert records["tiny"]["metrics"] == {"psnr": 24.0, "ssim": 0.9, "psnr_photos": 24.0, "ssim_photos": 0.9,
                                          "psnr_cifar": 45.0, "ssim_cifar": 0.9, "params_m": 1.38,
                                          "gflops": 222.3, "latency_ms": 6.0, "latency_p10_ms": 5.9,
                                          "latency_p90_ms": 6.2, "latency_ms_b4": 22.0}
    assert [logged for _, logged in ingest.ingest_decoder(evals, latency, mlflow_uri)] == [True, True]
    assert [logged for _, logged in ingest.ingest_decoder(evals, latency, mlflow_uri)] == [False, False]
    table = tables.table2(tracking_uri=mlflow_uri)
    ours = table.frame.set_index("decoder").loc["Ours (TinyDecoder, this repo)"]
    assert ours["psnr"] == 24.0 and ours["latency_ms"] == "6.0 (5.9–6.2)" and ours["gflops"] == 222.3
    notes = tables.render(table, "md")[1]
    assert tables.LATENCY_CELL_NOTE in notes
    assert "PSNR on photos: set photos" in notes and "torch-cuda bfloat16, GPU-X" in notes


def test_fewstep_figure_orders_panels_and_refuses_an_empty_run(tmp_path):
    from PIL import Image

    samples = tmp_path / "run" / "samples"
    samples.mkdir(parents=True)
    for name, shade in (("before_28", 30), ("before_4", 10), ("fewstep_4", 200)):
        Image.new("RGB", (20, 40), (shade, shade, shade)).save(samples / f"{name}.png")
    out = figures.fewstep(tmp_path / "run", tmp_path / "fig.png")
    image = Image.open(out).convert("RGB")
    assert image.size == (3 * 28, 40 + 24)
    # panels: before 4, before 28, then distilled 4 (steps ascending within each kind)
    assert [image.getpixel((i * 28 + 10, 50))[0] for i in range(3)] == [10, 30, 200]
    with pytest.raises(FileNotFoundError, match="step_distill"):
        figures.fewstep(tmp_path / "empty", tmp_path / "x.png")


def test_adversarial_table_reads_the_arms(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(tables.EXPERIMENT_ADVERSARIAL)
        with mlflow.start_run(run_name="adv", tags={"scale": "small"}):
            mlflow.log_metrics({"d_acc_balanced_late": 0.71, "g_adv_grad_ratio": 0.2, "fewstep_mse_vs_teacher_4": 0.02,
                                "steps_trained": 108})
        with mlflow.start_run(run_name="no_adv", tags={"scale": "small"}):
            mlflow.log_metrics({"fewstep_mse_vs_teacher_4": 0.03, "steps_trained": 222})
        with mlflow.start_run(run_name="no_gan", tags={"scale": "small"}):
            mlflow.log_metrics({"psnr": 40.5, "steps_trained": 3000})
    finally:
        mlflow.set_tracking_uri(None)
    table = tables.adversarial_table(tracking_uri=uri, scale="small")
    frame = table.frame.set_index("arm")
    # arms a time budget stopped at different steps are flagged; a stage with one finished arm is not
    assert frame.loc["adv", "steps"] == 108 and frame.loc["no_adv", "steps"] == 222
    unequal = [f for f in table.footnotes if "unequal steps" in f]
    assert len(unequal) == 1 and "adv 108, no_adv 222" in unequal[0] and unequal[0].startswith("step distillation")
    assert frame.loc["adv", "d_acc"] == pytest.approx(0.71) and frame.loc["adv", "adv_ratio"] == pytest.approx(0.2)
    assert frame.loc["adv", "mse_4"] == pytest.approx(0.02) and frame.loc["no_gan", "psnr"] == pytest.approx(40.5)
    assert pd.isna(frame.loc["gan", "psnr"])  # no such run: missing, with a footnote
    assert pd.isna(tables.adversarial_table(tracking_uri=uri, scale="smoke").frame.set_index("arm").loc["adv", "d_acc"])


def test_d_accuracy_figure_plots_each_arm_of_a_sweep_root(tmp_path):
    from reports.figures import d_accuracy
    from snapgen.runs import append_metrics

    for sweep, arm, prefix in (("adversarial_decoder", "gan", "train_d_"), ("adversarial_step_distill", "adv", "d_")):
        run = tmp_path / sweep / arm
        run.mkdir(parents=True)
        (run / "trial_result.json").write_text(json.dumps({"trial": {"sweep": sweep, "step": arm}}))
        for step in (10, 20):
            append_metrics(run, {"step": step, prefix + "acc_real": 0.6, prefix + "acc_fake": 0.4 + step / 100})
    (tmp_path / "adversarial_decoder" / "no_gan").mkdir()  # an arm without a discriminator is left out
    append_metrics(tmp_path / "adversarial_decoder" / "no_gan", {"step": 10, "train_loss": 1.0})
    out = d_accuracy(tmp_path, tmp_path / "d.png")
    assert out.is_file() and out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="d_acc_real"):
        d_accuracy(tmp_path / "adversarial_decoder" / "no_gan", tmp_path / "none.png")
