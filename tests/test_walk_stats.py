"""Seeds and intervals: the t-interval and Welch interval of reports.stats, the sign verdict, and the Fig. 3 table from
MLflow runs of several seeds (compact table within 120 columns, sign column, details CSV), its error-bar figure and
the Pareto plot."""

import pandas as pd
import pytest

from reports import stats


def test_t_interval_and_welch_difference():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == pytest.approx(1.0)
    assert s.high - s.mean == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)  # t_{0.975, 2} = 4.3027
    assert stats.summarize([5.0]).low is None and stats.summarize([]).mean is None
    d = stats.difference([10.0, 10.2, 9.8], [11.0, 11.1, 10.9])  # clearly lower
    assert d.mean == pytest.approx(-1.0) and d.high < 0
    from scipy.stats import ttest_ind

    p = ttest_ind([10.0, 10.2, 9.8], [11.0, 11.1, 10.9], equal_var=False).pvalue
    assert p < 0.05  # Welch's test agrees that the interval excludes 0
    assert stats.difference([1.0, 3.0], [2.0, 2.5]).low < 0 < stats.difference([1.0, 3.0], [2.0, 2.5]).high


@pytest.mark.parametrize("step, parent, direction, expected", [
    ([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "better", "as paper"),
    ([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "worse", "opposite"),
    ([1.0, 3.0, 2.0], [2.0, 2.2, 1.8], "better", "within noise"),
    ([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "comparable", "better (paper: ~)"),
    ([1.0], [2.0], "better", "n/a (1 seed)"),
    ([1.0, 1.1], [2.0, 2.1], None, ""),
])
def test_verdict(step, parent, direction, expected):
    assert stats.verdict(stats.difference(step, parent), direction) == expected


GFLOPS = {"a_baseline": 1248.0, "b_no_sa_high_res": 1033.0, "c_sepconv_plain": 634.0}
FD = {"a_baseline": [40.0, 41.0, 39.0], "b_no_sa_high_res": [30.0, 31.0, 29.5], "c_sepconv_plain": [30.0, 33.0, 27.0]}


@pytest.fixture
def walk_store(mlflow_uri):
    from snapgen import tracking

    for step, values in FD.items():
        for seed, value in enumerate(values):
            tags = {"step": step, "scale": "small", "git_sha": "x", "config_hash": f"{step}-{seed}", "device": "gpu",
                    "latency_backend": "eager", "walk": "fig3", "seed": seed, "fd_cifar_note": "proxy, not FID"}
            metrics = {"fd_cifar": value, "kid_cifar": value / 1000, "class_acc": 0.5, "val_loss": 0.3,
                       "gflops": GFLOPS[step], "params_m": 500.0, "latency_ms": 40.0 + seed,
                       "cfg_best": 2.0 if (step, seed) == ("a_baseline", 0) else 1.65,
                       "cfg_at_edge": float((step, seed) == ("a_baseline", 0))}
            tracking.log_trial("unet-ablation", step, tags=tags, params={}, metrics=metrics, uri=mlflow_uri)
    return mlflow_uri


def test_fig3_table_over_seeds(walk_store, tmp_path, capsys):
    from reports import tables

    table = tables.fig3_table(tracking_uri=walk_store, scale="small")
    rows = table.frame.set_index("step")
    assert rows.loc["a_baseline", "quality"] == "40 ± 1" and rows.loc["a_baseline", "seeds"] == 3
    assert rows.loc["b_no_sa_high_res", "sign"] == "as paper"         # -9.8 [CI < 0]; paper 3.76 -> 3.12
    assert rows.loc["c_sepconv_plain", "sign"] == "within noise"      # parent b; the seeds spread over +-3
    assert rows.loc["b_no_sa_high_res", "d_quality"].startswith("-9.83 [")
    body, notes = tables.render(table, "md")
    assert max(len(line) for line in body.splitlines()) <= 120, body
    assert "fd_cifar" in body and "FID" not in body.replace("paper FID", "")  # the proxy is never called FID
    assert any("edge of the swept grid in 1 of 9 trials" in note for note in table.footnotes)
    details = tmp_path / "fig3_details.csv"
    assert tables.main(["fig3", "--scale", "small", "--tracking-uri", walk_store, "--details", str(details)]) == 0
    frame = pd.read_csv(details)
    b = frame.set_index("step").loc["b_no_sa_high_res"]
    assert b["fd_cifar_mean"] == pytest.approx(30.1666, rel=1e-4) and b["d_fd_cifar_ci_high"] < 0
    assert {"kid_cifar_std", "sign_class_acc", "latency_ms", "run_ids", "cfg_best"} <= set(frame.columns)
    assert "sign" in capsys.readouterr().out


def test_fig3_figure_error_bars_and_pareto(walk_store, tmp_path):
    from reports import figures

    out = figures.fig3_from_mlflow(tmp_path / "fig3.png", walk_store, "small")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pareto = figures.pareto_from_mlflow(tmp_path / "pareto.png", walk_store, "small")
    assert pareto.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures.main(["pareto", "--tracking-uri", walk_store, "--scale", "small",
                         "--out", str(tmp_path / "p2.png")]) == 0


def test_fig3_figure_shows_seeds_and_names_missing_metrics(walk_store, tmp_path, monkeypatch):
    """Quality panels plot every seed on an axis that spans the data; FID, which no run has, gets no empty panel."""
    from matplotlib.collections import PathCollection

    from reports import figures

    seen = {}
    save = figures._save

    def capture(fig, out):
        seen["suptitle"] = fig._suptitle.get_text()
        seen["axes"] = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
        fd_axis = seen["axes"][next(t for t in seen["axes"] if t.startswith("FD-CIFAR"))]
        seen["fd_points"] = [c.get_offsets() for c in fd_axis.collections if isinstance(c, PathCollection)]
        seen["fd_ylim"] = seen["axes"][next(t for t in seen["axes"] if t.startswith("FD-CIFAR"))].get_ylim()
        return save(fig, out)

    monkeypatch.setattr(figures, "_save", capture)
    figures.fig3_from_mlflow(tmp_path / "fig3.png", walk_store, "small")
    assert "not measured in these runs: fid" in seen["suptitle"]
    assert not any(title.startswith("FID") for title in seen["axes"])
    assert seen["fd_ylim"][0] > 20  # not from 0: the values are 27..41
    plotted = sorted(float(y) for offsets in seen["fd_points"] for _, y in offsets)
    assert sorted(v for values in FD.values() for v in values) == pytest.approx(plotted)
