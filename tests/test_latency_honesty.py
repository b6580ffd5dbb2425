"""Latency honesty: every latency carries its spread and labels; a wide spread is flagged and never cached; tables
show median (p10–p90)."""

import itertools

import pytest

from ablations import trial
from reports import tables
from snapgen import profile


def fake_clock(monkeypatch, durations_ms):
    """`time.perf_counter` as snapgen.profile reads it (once before, once after each timed call): timed call k takes
    durations_ms[k]."""

    def readings():
        now = 0.0
        for duration in durations_ms:
            yield now
            now += duration / 1e3
            yield now

    clock = readings()
    monkeypatch.setattr(profile.time, "perf_counter", lambda: next(clock))


def test_steady_latency_is_labelled_and_not_flagged(monkeypatch):
    fake_clock(monkeypatch, [10.0, 10.5, 11.0, 10.2, 10.8])
    result = profile.measure_latency(lambda: None, warmup=0, repeats=5, latent=32)
    assert result["n"] == 5 and result["latent"] == 32 and result["backend"] == "torch-cpu"
    assert result["median_ms"] == pytest.approx(10.5) and 10.0 <= result["p10"] < result["p90"] <= 11.0
    assert not result["wide_spread"]
    text = profile.format_latency(result)
    assert text.startswith("10.5 ms (p10 ") and "n=5" in text and "32x32 latent" in text and "WIDE" not in text


def test_wide_spread_is_flagged(monkeypatch):
    fake_clock(monkeypatch, [10.0, 40.0, 10.0, 40.0, 10.0])
    result = profile.measure_latency(lambda: None, warmup=0, repeats=5)
    assert result["spread"] > profile.WIDE_SPREAD and result["wide_spread"]
    assert "WIDE SPREAD" in profile.format_latency(result)


def test_wide_spread_latency_is_not_cached(monkeypatch, tmp_path):
    from snapgen.registry import resolve

    spec = {"flops_latents": [], "latency_latent": 8, "latency_warmup": 0, "latency_repeats": 3}
    spreads = iter([(2.0, 9.0), (4.9, 5.1)])  # the first measurement is noisy, the second steady
    calls = []

    def measure(fn, warmup, repeats, device, latent):
        calls.append(latent)
        p10, p90 = next(spreads)
        return {"median_ms": 5.0, "p10": p10, "p90": p90, "n": repeats, "spread": p90 / p10,
                "wide_spread": p90 / p10 > profile.WIDE_SPREAD, "backend": "torch-cpu", "device": "cpu",
                "dtype": "float32", "latent": latent}

    monkeypatch.setattr(profile, "measure_latency", measure)
    assert trial.profile_architecture(resolve("tiny"), spec, tmp_path)["latency"]["wide_spread"]
    second = trial.profile_architecture(resolve("tiny"), spec, tmp_path)["latency"]  # not cached: measured again
    assert calls == [8, 8] and not second["wide_spread"]
    third = trial.profile_architecture(resolve("tiny"), spec, tmp_path)["latency"]  # the steady one was cached
    assert calls == [8, 8] and third["p10"] == 4.9


def test_no_latency_latent_gives_a_note(tmp_path):
    from snapgen.registry import resolve

    out = trial.profile_architecture(resolve("tiny"), {"latency_note": "not at smoke scale"}, tmp_path)
    assert "latency" not in out and out["latency_note"] == "not at smoke scale"


def test_latency_cell():
    assert tables.latency_cell(12.34, 11.9, 13.04) == "12.3 (11.9–13.0)"
    assert tables.latency_cell(12.34) == "12.3 (no spread)"
    assert tables.latency_cell(None, 1.0, 2.0) is None and tables.latency_cell(float("nan")) is None


def test_fig3_table_shows_median_with_spread_or_why_not(mlflow_uri):
    from snapgen import tracking

    def log(step, config_hash, metrics, note):
        tracking.log_trial("unet-ablation", step, tags={
            "step": step, "scale": "small", "git_sha": "abc", "config_hash": config_hash, "device": "GPU-X",
            "latency_backend": "torch-cuda", "walk": "fig3", "seed": 0, "latency_note": note},
            params={}, metrics={"params_m": 10.0, "gflops": 5.0, "val_loss": 0.3, **metrics}, uri=mlflow_uri)

    log("a_baseline", "h1", {"latency_ms": 12.34, "latency_p10_ms": 11.9, "latency_p90_ms": 13.04},
        "12.3 ms (p10 11.9-p90 13.0, n=10), torch-cuda on GPU-X")
    log("b_no_sa_high_res", "h2", {}, "not measured at smoke scale (reason)")
    table = tables.fig3_table(tracking_uri=mlflow_uri, scale="small")
    cells = table.details.set_index("step")["latency_ms"]  # the compact table leaves latency to the details CSV
    assert cells["a_baseline"] == "12.3 (11.9–13.0)" and tables._is_missing(cells["b_no_sa_high_res"])
    notes = tables.render(table, "md")[1]
    assert tables.LATENCY_CELL_NOTE in notes and "latency: not measured at smoke scale (reason)" in notes
