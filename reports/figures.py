"""Figures: our numbers with the paper's stated values annotated.

    python -m reports.figures fig3 [--efficiency-only] [--latent 128] [--from-json WALK.json] [--out PATH]
    python -m reports.figures pareto [--scale small] [--tracking-uri URI] [--out PATH]

fig3: per step of `snapgen.registry.walk('fig3')`, params and GFLOPs (ours, attention counted) as bars, each
annotated with our delta vs. its parent and the delta Sec. 3.1 states. Without `--efficiency-only` it adds the
quality/latency panels of `WALK_METRIC_PANELS`, filled from the MLflow `unet-ablation` runs named by step (a panel
with no runs says so; with several seeds, bars are means with std error bars). pareto: quality vs. GFLOPs and vs.
latency per walk step, with the Pareto front. `--from-json` reuses the output of `python -m snapgen.profile walk fig3 --json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from snapgen.paper import FIG3_STEPS  # noqa: E402

DEFAULT_FIG3_OUT = Path("reports/figures/fig3.png")
EXPERIMENT_UNET_ABLATION = "unet-ablation"  # ARCHITECTURE.md MLflow schema

# The hook for quality and latency: (MLflow metric, panel title, paper field of Fig3Step giving the stated value,
# whether that field is a delta in percent). Add a tuple here and the panel appears, filled from MLflow.
WALK_METRIC_PANELS: list[tuple[str, str, str | None, bool]] = [
    ("fid", "FID (ImageNet 256, lower is better)", "fid", False),
    ("latency_ms", "latency (ms)", "latency_delta_pct", True),
    ("val_loss", "validation loss (proxy; paper: none)", None, False),
]
# The offline proxy (evals.fid --features cifar10): drawn only when some run has it; never labelled FID.
PROXY_PANELS: list[tuple[str, str, str | None, bool]] = [
    ("fd_cifar", "FD-CIFAR (our CIFAR-10 net's features; proxy, not FID)", None, False),
    ("kid_cifar", "KID-CIFAR (proxy, not FID)", None, False),
    ("class_acc", "class-consistency accuracy (higher is better)", None, False),
]


def _fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0f}%"


def _bar_panel(ax, steps: list[str], values: list[float | None], title: str, ours_delta: list[float | None],
               paper_text: list[str], errors: list[float | None] | None = None) -> None:
    """Bars of `values` (missing ones left empty), each labelled 'ours Δ / paper Δ'; `errors`: the std over seeds,
    drawn as error bars (the label then gives ± std and n)."""
    xs = range(len(steps))
    heights = [v if v is not None else 0.0 for v in values]
    yerr = [e or 0.0 for e in errors] if errors and any(errors) else None
    bars = ax.bar(xs, heights, color=["#4c72b0" if v is not None else "#dddddd" for v in values], yerr=yerr,
                  capsize=3 if yerr else 0)
    top = max(h + (e if yerr else 0) for h, e in zip(heights, yerr or [0] * len(heights))) if any(heights) else 1.0
    for i, (bar, value, delta, paper) in enumerate(zip(bars, values, ours_delta, paper_text)):
        spread = f" ± {errors[i]:.2g}" if errors and errors[i] else ""
        label = "missing" if value is None else f"{value:.4g}{spread}\nours {_fmt_pct(delta)}"
        if paper:
            label += f"\npaper {paper}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + (yerr[i] if yerr else 0) + 0.02 * top, label,
                ha="center", va="bottom", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(list(xs), steps, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, top * 1.45)


def _seed_panel(ax, steps: list[str], seed_values: list[list[float]], title: str, ours_delta: list[float | None],
                paper_text: list[str]) -> None:
    """Quality over seeds: every seed a small grey dot, the mean a marker with a ± std error bar, labelled 'mean ± std,
    ours Δ, paper'. The y-axis spans the data, not 0: the changes of a walk are a few percent of the value."""
    from reports.stats import summarize

    xs = list(range(len(steps)))
    tops, lows = [], []
    for x, values in zip(xs, seed_values):
        if not values:
            continue
        s = summarize(values)
        std = s.std or 0.0
        ax.scatter([x] * len(values), values, s=10, color="#999999", zorder=2)
        ax.errorbar(x, s.mean, yerr=std, fmt="o", color="#4c72b0", capsize=4, zorder=3)
        tops.append(max(max(values), s.mean + std))
        lows.append(min(min(values), s.mean - std))
    if tops:
        low, high = min(lows), max(tops)
        pad = (high - low) or abs(high) or 1.0
        ax.set_ylim(low - 0.15 * pad, high + 0.6 * pad)
        for x, values, delta, paper in zip(xs, seed_values, ours_delta, paper_text):
            label, y = "missing", low
            if values:
                s = summarize(values)
                label = f"{s.mean:.3g}" + (f" ± {s.std:.2g}" if s.std else "") + f"\nours {_fmt_pct(delta)}"
                y = max(max(values), s.mean + (s.std or 0.0))  # above the highest seed and the error bar
            if paper:
                label += f"\npaper {paper}"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", va="bottom",
                        fontsize=6.5)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(xs, steps, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(steps) - 0.4)


def _walk_metrics(tracking_uri: str | None) -> tuple[dict[str, dict[str, float]], str | None]:
    from reports.tables import read_mlflow_runs

    return read_mlflow_runs(EXPERIMENT_UNET_ABLATION, tracking_uri)


def _save(fig, out: Path) -> Path:
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the suptitle
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def fig3(rows: list[dict], out: Path, efficiency_only: bool = False, tracking_uri: str | None = None,
         latent: int | None = None) -> Path:
    """Draw Fig. 3 from walk rows (`snapgen.profile.profile_walk('fig3', ...)`) and save it to `out` (PNG)."""
    steps = [r["step"] for r in rows]
    seeded = any(f"{m}_values" in r for r in rows for m in ("val_loss", "fd_cifar"))  # rows of walk_rows_from_mlflow
    proxy = [p for p in PROXY_PANELS if any(r.get(f"{p[0]}_values") for r in rows)]
    panels = [] if efficiency_only else WALK_METRIC_PANELS + proxy
    # Seeded rows are the sweep's own runs: a metric none of them has (FID where Inception weights were absent) gets
    # no empty panel, the title names it instead.
    absent = [p for p in panels if seeded and not any(r.get(p[0]) is not None for r in rows)]
    panels = [p for p in panels if p not in absent]
    n_rows = 1 + (len(panels) + 1) // 2  # params | GFLOPs on the first row, the metric panels two a row below
    fig, grid = plt.subplots(n_rows, 2, figsize=(13, 5.5 * n_rows), squeeze=False)
    axes = grid.flatten()
    for unused in axes[2 + len(panels):]:
        unused.set_visible(False)
    paper = [FIG3_STEPS.get(s) for s in steps]
    _bar_panel(axes[0], steps, [r["params_m"] for r in rows], "params (M)", [r["d_params_pct"] for r in rows],
               [_fmt_pct(p.params_delta_pct) if p and p.params_delta_pct is not None else "" for p in paper])
    flops_title = "GFLOPs (attention counted)" + (f", {latent}x{latent} latent" if latent else "")
    _bar_panel(axes[1], steps, [r["gflops"] for r in rows], flops_title, [r["d_gflops_pct"] for r in rows],
               [_fmt_pct(p.flops_delta_pct) if p and p.flops_delta_pct is not None else "" for p in paper])

    if panels:
        from reports.stats import summarize

        if seeded:  # mean and std over seeds from the rows themselves
            runs = {r["step"]: {m: r.get(m) for m, *_ in panels} for r in rows}
            spread = {r["step"]: {m: summarize(r.get(f"{m}_values") or []).std for m, *_ in panels} for r in rows}
            why = None
        else:
            runs, why = _walk_metrics(tracking_uri)
            spread = {}
        parent_of = {r["step"]: r["parent"] for r in rows}
        for ax, (metric, title, paper_field, is_delta) in zip(axes[2:], panels):
            values = [runs.get(s, {}).get(metric) for s in steps]
            errors = [spread.get(s, {}).get(metric) for s in steps]
            deltas = []
            for s, v in zip(steps, values):
                parent_value = runs.get(parent_of[s], {}).get(metric) if parent_of[s] else None
                deltas.append(100 * (v - parent_value) / parent_value if v is not None and parent_value else None)
            paper_text = []
            for p in paper:
                stated = getattr(p, paper_field, None) if p and paper_field else None
                paper_text.append("" if stated is None else (_fmt_pct(stated) if is_delta else f"{stated:g}"))
            n = max((r.get("seeds") or 0) for r in rows) if seeded else 0
            title_n = title + (f"; mean ± std over {n} seeds" if n > 1 else "")
            per_seed = [list(r.get(f"{metric}_values") or []) for r in rows]
            if seeded and metric != "latency_ms" and any(per_seed):  # quality: points over seeds
                _seed_panel(ax, steps, per_seed, title_n, deltas, paper_text)
            else:  # cost (one latency per architecture), or single values read from MLflow
                _bar_panel(ax, steps, values, title if metric == "latency_ms" else title_n, deltas, paper_text,
                           errors)
            if all(v is None for v in values):
                ax.text(0.5, 0.6, f"no MLflow data yet:\n{why or 'no runs with metric ' + metric}", ha="center",
                        va="center", transform=ax.transAxes, fontsize=8, wrap=True, color="#aa0000")
    suptitle = "Fig. 3 walk: ours with the deltas the paper states (Sec. 3.1)"
    if absent:
        suptitle += "\nnot measured in these runs: " + ", ".join(p[0] for p in absent)
    fig.suptitle(suptitle, fontsize=11)
    return _save(fig, out)


def fig3_from_mlflow(out: Path, tracking_uri: str | None = None, scale: str | None = None) -> Path:
    """Fig. 3 entirely from the sweep's MLflow runs (params/GFLOPs logged by `ablations.sweep unet`, no profiling)."""
    from reports.tables import walk_rows_from_mlflow

    rows, _, _ = walk_rows_from_mlflow("fig3", scale, tracking_uri)
    rows = [{**r, "params_m": r.get("params_m"), "gflops": r.get("gflops"), "d_params_pct": r.get("d_params_m_pct"),
             "d_gflops_pct": r.get("d_gflops_pct")} for r in rows]
    return fig3(rows, out, tracking_uri=tracking_uri, latent=128)


def pareto(rows: list[dict], out: Path, title: str = "") -> Path:
    """Quality vs. GFLOPs and vs. latency, one point per walk step (mean over seeds, error bars = std), with the
    Pareto front (no other step both cheaper and better) drawn through it; quality is the walk's sign metric (FID,
    else FD-CIFAR, else val loss; lower is better)."""
    from reports.stats import summarize
    from reports.tables import walk_quality_metric

    metric, _ = walk_quality_metric(rows)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, cost, label in ((axes[0], "gflops", "GFLOPs (full-size, 128x128 latent)"),
                            (axes[1], "latency_ms", "latency (ms; device in the table)")):
        points = []
        for r in rows:
            s = summarize(r.get(f"{metric}_values") or ([r[metric]] if r.get(metric) is not None else []))
            if r.get(cost) is not None and s.mean is not None:
                points.append((r[cost], s.mean, s.std or 0.0, r["step"]))
        if not points:
            ax.text(0.5, 0.5, f"no runs with {cost} and {metric}", ha="center", transform=ax.transAxes)
        for x, y, err, step in points:
            ax.errorbar(x, y, yerr=err, fmt="o", color="#4c72b0", capsize=3)
            ax.annotate(step, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front, best = [], float("inf")
        for x, y, _, _ in sorted(points):  # cheapest first: a point is on the front when it beats every cheaper one
            if y < best:
                front.append((x, y))
                best = y
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#dd8452", label="Pareto front")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (lower is better)" + ("; a proxy, not FID" if metric != "fid" else ""))
    fig.suptitle(title or f"Fig. 3 walk: {metric} vs. cost (mean ± std over seeds)", fontsize=11)
    return _save(fig, out)


def pareto_from_mlflow(out: Path, tracking_uri: str | None = None, scale: str | None = None) -> Path:
    from reports.tables import walk_rows_from_mlflow

    rows, scale, _ = walk_rows_from_mlflow("fig3", scale, tracking_uri)
    return pareto(rows, out, f"Fig. 3 walk ({scale} scale): quality vs. GFLOPs and latency, mean ± std over seeds")


def fig6(run: str | Path | None, out: Path) -> str:
    """Fig. 6 (mean L_task and L_kd per timestep bin) from the bins a KD run logged in its metrics.jsonl."""
    from snapgen.distill import plot_fig6, read_fig6

    if run is None:
        candidates = sorted(Path("runs/sweeps/kd").glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
        with_bins = [p.parent for p in candidates if read_fig6(p.parent) and any(
            k.startswith("fig6_kd") for r in read_fig6(p.parent) for k in r)]
        if not with_bins:
            raise SystemExit("no KD run with Fig. 6 bins under runs/sweeps/kd: run `make ablation-kd`, or pass a run dir")
        run = with_bins[-1]
    records = read_fig6(run)
    if not records:
        raise SystemExit(f"{run}/metrics.jsonl has no Fig. 6 bins (fig6_*): is it a KD run with kd_loss_fn?")
    out.parent.mkdir(parents=True, exist_ok=True)
    return plot_fig6(records, str(out))


def fewstep(run: str | Path, out: Path) -> Path:
    """Step distillation's grids side by side: the student before (4/8/28 steps) and after (4/8 steps), from the
    `samples/before_<n>.png` and `samples/fewstep_<n>.png` that `snapgen.step_distill` writes (same noise)."""
    from PIL import Image, ImageDraw

    samples = Path(run) / "samples"
    panels = sorted(samples.glob("before_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    panels += sorted(samples.glob("fewstep_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if not panels:
        raise FileNotFoundError(f"no before_*/fewstep_* grids under {samples}: run `python -m snapgen.step_distill`")
    images = [Image.open(p).convert("RGB") for p in panels]
    width, height = max(im.width for im in images), max(im.height for im in images)
    canvas = Image.new("RGB", (len(images) * (width + 8), height + 24), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (path, image) in enumerate(zip(panels, images)):
        kind, steps = path.stem.split("_")
        canvas.paste(image, (i * (width + 8), 24))
        draw.text((i * (width + 8) + 4, 6), f"{'student' if kind == 'before' else 'distilled'}, {steps} steps",
                  fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    return out


def d_accuracy(root: str | Path, out: Path) -> Path:
    """The discriminators' accuracy curves of an adversarial sweep's trials (`ablations.sweep adversarial_*
    --out-root ROOT`): per arm, (acc_real + acc_fake) / 2 against the step (solid) with acc_real and acc_fake (thin),
    one panel per stage; 0.5 is chance. Reads each trial's metrics.jsonl and, for its name, trial_result.json."""
    from snapgen.runs import read_metrics

    panels: dict[str, list[tuple[str, list[dict]]]] = {}
    for metrics in sorted(Path(root).rglob("metrics.jsonl")):
        result = metrics.parent / "trial_result.json"
        trial = json.loads(result.read_text())["trial"] if result.is_file() else {}
        records = read_metrics(metrics.parent)
        prefix = next((p for p in ("d_", "train_d_") if any(p + "acc_real" in r for r in records)), None)
        if prefix is not None:
            points = [(r["step"], r[prefix + "acc_real"], r[prefix + "acc_fake"]) for r in records
                      if prefix + "acc_real" in r]
            panels.setdefault(trial.get("sweep", prefix), []).append((trial.get("step", metrics.parent.name), points))
    if not panels:
        raise FileNotFoundError(f"no run under {root} logged a discriminator's accuracy (d_acc_real / "
                                f"train_d_acc_real): run an adversarial sweep with --out-root {root}")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, arms) in zip(axes[0], sorted(panels.items())):
        for label, points in arms:
            steps, real, fake = zip(*points)
            line, = ax.plot(steps, [(r + f) / 2 for r, f in zip(real, fake)], label=f"{label} (balanced)")
            ax.plot(steps, real, color=line.get_color(), lw=0.6, ls="--")
            ax.plot(steps, fake, color=line.get_color(), lw=0.6, ls=":")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set(title=f"{name}: D accuracy (-- real, : fake)", xlabel="step", ylabel="accuracy", ylim=(0, 1))
        ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["fig3", "pareto", "fig6", "fewstep", "d_accuracy"])
    parser.add_argument("run", nargs="?", default=None,
                        help="fig6: a KD training run directory (default: the newest under runs/sweeps/kd with bins); "
                             "fewstep: a step-distillation run directory; d_accuracy: an adversarial sweep's "
                             "--out-root")
    parser.add_argument("--efficiency-only", action="store_true", help="params/FLOPs panels only (no MLflow)")
    parser.add_argument("--latent", type=int, default=128, help="latent side for FLOPs (paper: 128)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="walk rows from `python -m snapgen.profile walk fig3 --json` instead of profiling now")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--from-mlflow", action="store_true",
                        help="params/GFLOPs too from the sweep's MLflow runs (ablations.sweep unet), no profiling")
    parser.add_argument("--scale", default=None, help="with --from-mlflow: the sweep scale (default: the newest run's)")
    parser.add_argument("--out", type=Path, default=None, help=f"PNG (default {DEFAULT_FIG3_OUT}, fig6.png beside it)")
    parser.add_argument("--log-to-sweep", action="store_true",
                        help="with --from-mlflow: attach the PNG to the newest `unet` sweep parent run of the scale")
    args = parser.parse_args(argv)
    if args.figure == "fewstep":
        if args.run is None:
            parser.error("fewstep needs the step-distillation run directory")
        print(fewstep(args.run, args.out or Path(args.run) / "fewstep_vs_before.png"))
        return 0
    if args.figure == "pareto":  # always from the sweep's MLflow runs
        print(pareto_from_mlflow(args.out or DEFAULT_FIG3_OUT.with_name("pareto.png"), args.tracking_uri, args.scale))
        return 0
    if args.figure == "d_accuracy":
        if args.run is None:
            parser.error("d_accuracy needs the adversarial sweep's --out-root directory")
        print(d_accuracy(args.run, args.out or Path(args.run) / "d_accuracy.png"))
        return 0
    if args.figure == "fig6":
        print(fig6(args.run, args.out or DEFAULT_FIG3_OUT.with_name("fig6.png")))
        return 0
    args.out = args.out or DEFAULT_FIG3_OUT
    if args.from_mlflow:
        path = fig3_from_mlflow(args.out, args.tracking_uri, args.scale)
        print(path)
        if args.log_to_sweep:
            from reports.tables import log_to_sweep

            log_to_sweep("unet-ablation", "unet", args.scale, figures=[path], tracking_uri=args.tracking_uri)
        return 0
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        rows, latent = data["steps"], data.get("latent")
    else:
        from snapgen.profile import profile_walk

        rows, latent = profile_walk("fig3", args.latent), args.latent
    path = fig3(rows, args.out, efficiency_only=args.efficiency_only, tracking_uri=args.tracking_uri, latent=latent)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
