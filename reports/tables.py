"""The paper's tables with our numbers beside them.

    python -m reports.tables table1|table2|table3|kd [--format md|csv|tex] [--efficiency-only] [--tracking-uri URI]
    python -m reports.tables fig3 [--scale smoke|small|paper] ...   (after `python -m ablations.sweep unet`)

Each table is built by one function returning a `Table`: a pandas DataFrame with one row per model (the paper's
rows, then ours) and a `source` column saying where each row's numbers come from, plus footnotes. Our rows come from
two places:
- `--efficiency-only`: params/FLOPs measured now by `snapgen.profile` (no MLflow); quality columns left missing;
- otherwise: the latest run of each of our models in MLflow (experiment/run names of ARCHITECTURE.md), read-only.
A value we do not have is rendered "—" and a footnote says why; that is never an error.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from snapgen import paper, tracking

MISSING = "—"

# The experiments read here (snapgen.tracking.EXPERIMENTS, ARCHITECTURE.md "MLflow schema").
EXPERIMENT_IMAGENET = "imagenet"
EXPERIMENT_DECODER = "decoder"
EXPERIMENT_T2I = "t2i-evals"
EXPERIMENT_KD = "kd-ablation"

# Our models as the registry / MLflow run names know them.
OURS_IMAGENET = "snapgen-imagenet"
OURS_T2I = "snapgen-t2i"
OURS_TINY_DECODER = "tiny"

COLUMN_FORMATS = {"gflops_128": ".0f", "clip": ".3f", "dpg": ".1f", "val_loss": ".4f", "val_loss_ema": ".4f", "d_params": "+.1f", "d_gflops": "+.1f",
                  "throughput": ".2f", "x_sdxl": ".2f", "cfg": ".2f", "proxy": ".3f",
                  "d_latency": "+.1f", "paper_d_params": "+.0f", "paper_d_gflops": "+.0f", "paper_d_latency": "+.0f"}  # decimals as the paper prints them; other floats ".2f"
COLUMN_HEADERS = {
    "val_loss_ema": "val loss EMA",
    "params_m": "Param (M)", "params_b": "Param (B)", "gflops": "FLOPs (G)", "fid": "FID", "psnr": "PSNR",
    "ch": "Ch", "latency_ms": "Latency (ms)", "throughput": "Throughput", "geneval": "GenEval", "dpg": "DPG",
    "clip": "CLIP", "image_reward": "ImageReward", "components": "KD components",
    "d_params": "Δparam %", "paper_d_params": "paper Δparam %", "d_gflops": "ΔFLOPs %",
    "paper_d_gflops": "paper ΔFLOPs %", "d_latency": "Δlatency %", "paper_d_latency": "paper Δlatency %",
    "val_loss": "val loss", "paper_fid": "paper FID", "cfg": "CFG", "proxy": "proxy (not FID)",
    "x_sdxl": "× SDXL",
}

def latency_cell(median_ms: float | None, p10: float | None = None, p90: float | None = None) -> str | None:
    """One latency cell: `12.3 (11.9–13.0)` = median (p10–p90) in ms; a bare median only where no spread was
    recorded (marked `(no spread)`); None (rendered MISSING) when not measured."""
    if _is_missing(median_ms):
        return None
    if _is_missing(p10) or _is_missing(p90):
        return f"{median_ms:.1f} (no spread)"
    return f"{median_ms:.1f} ({p10:.1f}–{p90:.1f})"


LATENCY_CELL_NOTE = "our latencies: median (p10–p90) of the timed calls, in ms"


TABLE1_LATENT = 32  # ImageNet 256px through an f=8 AE -> 32x32 latent (Table 1: "one forward pass")
TABLE2_LATENT = 128  # Table 2: "decoding a 128x128 latent into a 1024x1024 image"


@dataclass
class Table:
    """A rendered-to-be table: `frame` (missing = None/NaN) and footnotes explaining the missing values."""

    name: str
    title: str
    key: str  # the column naming each row (footnotes refer to rows by it)
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    footnotes: list[str] = field(default_factory=list)
    marks: dict[str, list[int]] = field(default_factory=dict)  # row name -> its footnote numbers (1-based)
    headers: dict[str, str] = field(default_factory=dict)  # column -> header, over COLUMN_HEADERS
    details: pd.DataFrame | None = None  # every column, for a CSV beside a compact table (fig3)

    def note(self, row: str, text: str) -> None:
        """Footnote `text` on row `row`; rows with the same reason share one footnote."""
        if text not in self.footnotes:
            self.footnotes.append(text)
        number = self.footnotes.index(text) + 1
        if number not in self.marks.setdefault(row, []):
            self.marks[row].append(number)


# --------------------------------------------------------------------------------------------------------------
# MLflow (read-only)


def finished_runs(experiment: str, tracking_uri: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Every FINISHED run of `experiment`, newest first, as {metric: value, "_run_id", "_run_name", "_tag_<tag>"};
    and why the list is empty (None when it is not).

    A sqlite URI whose file does not exist is not created (MLflow would create it): we report it missing instead.
    """
    uri = tracking.tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        db_path = Path(uri.removeprefix("sqlite:///"))
        if not db_path.is_file():
            return [], f"no MLflow database at {db_path} (tracking URI {uri})"
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return [], f"no MLflow experiment {experiment!r} at {uri}"
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=50000)
    except Exception as error:  # noqa: BLE001 - any tracking failure becomes a footnote, not a crash
        return [], f"could not read MLflow at {uri}: {type(error).__name__}: {error}"
    out = [{**dict(run.data.metrics), "_run_id": run.info.run_id, "_run_name": run.info.run_name,
            **{f"_tag_{k}": v for k, v in run.data.tags.items()}}  # e.g. _tag_device, _tag_latency_backend
           for run in runs]
    return out, None if out else f"no finished runs in MLflow experiment {experiment!r} at {uri}"


def read_mlflow_runs(experiment: str, tracking_uri: str | None) -> tuple[dict[str, dict[str, float]], str | None]:
    """Latest metrics of each run name in `experiment`: ({run_name: {metric: value}}, why empty or None)."""
    runs, why = finished_runs(experiment, tracking_uri)
    latest: dict[str, dict[str, float]] = {}
    for run in runs:  # newest first: keep the first seen per run name
        latest.setdefault(run["_run_name"], run)
    return latest, why


def _fill_from_mlflow(
    table: Table, row: dict, experiment: str, run_name: str, columns: dict[str, str], tracking_uri: str | None,
    cache: dict,
) -> dict | None:
    """Fill `row[column]` from metric `columns[column]` of the latest run `run_name`; footnote what is missing.

    Returns the run's metrics (None when there is no such run)."""
    if experiment not in cache:
        cache[experiment] = read_mlflow_runs(experiment, tracking_uri)
    runs, why = cache[experiment]
    run = runs.get(run_name)
    if run is None:
        table.note(row[table.key], why or f"no finished run named {run_name!r} in {experiment!r}")
        return None
    row["source"] = f"ours: MLflow {experiment}/{run_name} (run {run['_run_id'][:8]})"
    absent = []
    for column, metric in columns.items():
        value = run.get(metric)
        row[column] = value
        if value is None:
            absent.append(metric)
    if absent:
        table.note(row[table.key], f"run {run['_run_id'][:8]} has no metric {', '.join(absent)}")
    return run


def _efficiency_only_note(table: Table, row_name: str, columns: list[str]) -> None:
    table.note(row_name, f"{', '.join(columns)} not read (--efficiency-only measures params/FLOPs only)")


def _try(table: Table, row_name: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`; on failure leave the values missing and footnote why (e.g. a model not written yet)."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - a missing piece of ours is a footnote, not an error
        table.note(row_name, f"{what} unavailable: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
        return None


# --------------------------------------------------------------------------------------------------------------
# Tables


PAPER_TABLE1_CFG = "varied 1.1→5.4, steps 10-30"  # supplement H: the final model's varied CFG (Table 1's "Ours")


def table1(efficiency_only: bool = False, tracking_uri: str | None = None, metric: str | None = None) -> Table:
    """Table 1 (ImageNet 256, class-conditional): the paper's rows and our `snapgen-imagenet` (`python -m
    ablations.sweep imagenet`, supplement H's protocol: DDPM, Heun 30 steps, the lowest value over CFG 1.3-2.0).

    FID is only FID (clean-fid's Inception); without it the run's offline quality proxy (`metric`, default the run's
    `quality_metric` tag, e.g. FD-CIFAR) goes in its own column, named in a footnote, beside the validation loss."""
    rows = [{**r, "cfg": PAPER_TABLE1_CFG if r["model"] == "Ours" else None, "proxy": None, "val_loss": None,
             "source": f"paper, {r.pop('source')}"} for r in paper.rows_as_dicts(paper.TABLE1)]
    table = Table("table1", "Table 1. Class-conditional ImageNet 256x256; FLOPs for one forward pass", key="model")
    ours = {"model": f"Ours ({OURS_IMAGENET}, this repo)", "params_m": None, "gflops": None, "fid": None,
            "cfg": None, "proxy": None, "val_loss": None, "source": "ours"}
    if efficiency_only:
        from snapgen import profile

        result = _try(table, ours["model"], "params/FLOPs",
                      lambda: profile.profile_unet(OURS_IMAGENET, TABLE1_LATENT))
        if result is not None:
            ours.update(params_m=result["params_m"], gflops=result["gflops"],
                        source=f"ours: snapgen.profile, fvcore + SDPA handler, {TABLE1_LATENT}x{TABLE1_LATENT} latent")
        _efficiency_only_note(table, ours["model"], ["fid"])
    else:
        run = _fill_from_mlflow(table, ours, EXPERIMENT_IMAGENET, OURS_IMAGENET,
                                {"params_m": "params_m", "gflops": "gflops", "val_loss": "val_loss"}, tracking_uri, {})
        if run is not None:
            _table1_quality(table, ours, run, metric)
    table.frame = pd.DataFrame(rows + [ours])
    return table


def _table1_quality(table: Table, ours: dict, run: dict, metric: str | None) -> None:
    """FID (and its CFG) or the named proxy (and its CFG) of our Table 1 run, each missing one footnoted."""
    name, run_id = ours["model"], run["_run_id"][:8]
    if run.get("fid") is not None:
        ours.update(fid=run["fid"], cfg=run.get("fid_best_cfg"))
        table.note(name, f"FID: {run.get('_tag_fid_note') or 'clean-fid'}; CFG = the scale of the lowest FID")
    else:
        table.note(name, f"FID not measured in run {run_id}: {run.get('_tag_fid_note') or 'no fid metric logged'}")
    metric = metric or run.get("_tag_quality_metric")
    if metric and metric != "fid":
        if run.get(metric) is not None:
            ours["proxy"] = run[metric]
            if ours["cfg"] is None:
                ours["cfg"] = run.get(f"{metric}_best_cfg")
            table.note(name, f"proxy = {metric}: {run.get('_tag_quality_note') or metric}; not FID, not comparable "
                             f"with the paper's column")
        else:
            table.note(name, f"proxy {metric} not in run {run_id}: {run.get('_tag_quality_note') or 'not logged'}")
    elif run.get("fid") is None:
        table.note(name, f"no sample-quality proxy in run {run_id}: {run.get('_tag_quality_note') or 'none logged'}")
    if ours["val_loss"] is not None:
        table.note(name, "val loss: the DDPM ε-loss on a fixed held-out batch (CFG-independent; a proxy, not FID)")
    if run.get("_tag_scale") and run.get("_tag_scale") != "paper":
        table.note(name, f"{run['_tag_scale']} scale ({run.get('_tag_data_note') or 'CIFAR-10'}), not the paper's "
                         f"ImageNet-256 after 120/1000 epochs: quality is not comparable with the paper's rows")


def table2(efficiency_only: bool = False, tracking_uri: str | None = None) -> Table:
    """Table 2 (decoders): the paper's rows and ours (SDXL / SD3 decoders as built here, our TinyDecoder)."""
    rows = []
    for r in paper.rows_as_dicts(paper.TABLE2):
        rows.append({"decoder": r["decoder"], "ch": r["latent_channels"], "psnr": r["psnr"],
                     "params_m": r["params_m"], "gflops": r["gflops"],
                     "latency_ms": f"ANE {r['latency_ane_ms'] if r['latency_ane_ms'] is not None else MISSING}, "
                                   f"GPU {r['latency_gpu_ms'] if r['latency_gpu_ms'] is not None else MISSING}",
                     "source": f"paper, {r['source']} (latency: iPhone 15 Pro)"})
    table = Table("table2", f"Table 2. Decoders; FLOPs decoding a {TABLE2_LATENT}x{TABLE2_LATENT} latent "
                  "(fvcore as shipped, attention not counted, as the paper's numbers)", key="decoder")
    ours_rows = [
        {"decoder": "SDXL (ours, diffusers AutoencoderKL)", "ch": 4, "_arch": "sdxl", "_run": "sdxl"},
        {"decoder": "SD3 (ours, diffusers AutoencoderKL)", "ch": 16, "_arch": "sd3", "_run": "sd3"},
        {"decoder": "TAESD3 (peer, madebyollin weights)", "ch": 16, "_arch": "taesd3", "_run": "taesd3"},
        {"decoder": "Ours (TinyDecoder, this repo)", "ch": 16, "_arch": OURS_TINY_DECODER, "_run": OURS_TINY_DECODER},
    ]
    cache: dict = {}
    for ours in ours_rows:
        arch, run_name = ours.pop("_arch"), ours.pop("_run")
        ours.update(psnr=None, params_m=None, gflops=None, latency_ms=None, source="ours")
        if efficiency_only:
            from snapgen import profile

            print(f"counting {arch} decoder FLOPs at {TABLE2_LATENT}x{TABLE2_LATENT} (SDXL / SD3: minutes on CPU)...",
                  file=sys.stderr)
            result = _try(table, ours["decoder"], "params/FLOPs",
                          lambda a=arch: profile.profile_decoder(a, TABLE2_LATENT))
            if result is not None:
                ours.update(params_m=result["params_m"], gflops=result["gflops_fvcore_default"],
                            source=f"ours: snapgen.profile, fvcore default, {TABLE2_LATENT}x{TABLE2_LATENT} latent")
            _efficiency_only_note(table, ours["decoder"], ["psnr", "latency_ms"])
        else:
            run = _fill_from_mlflow(table, ours, EXPERIMENT_DECODER, run_name,
                                    {"psnr": "psnr", "params_m": "params_m", "gflops": "gflops",
                                     "latency_ms": "latency_ms"}, tracking_uri, cache)
            if run:
                ours["latency_ms"] = latency_cell(run.get("latency_ms"), run.get("latency_p10_ms"),
                                                  run.get("latency_p90_ms"))
            for tag, what in (("_tag_eval_set", "PSNR on"), ("_tag_latency", "latency (batch 1):")):
                if run and run.get(tag):  # which images and which backend: never a bare number
                    table.note(ours["decoder"], f"{what} {run[tag]}")
    table.frame = pd.DataFrame(rows + ours_rows)
    if any(r["latency_ms"] for r in ours_rows):
        table.footnotes.append(LATENCY_CELL_NOTE)
    return table


EXPERIMENT_THROUGHPUT = tracking.THROUGHPUT_EXPERIMENT
PAPER_SDXL_THROUGHPUT = next(r.throughput for r in paper.TABLE3 if r.model == "SDXL")  # samples/s, A100
T2I_METRICS = {"geneval": "geneval_overall", "dpg": "dpg_overall", "clip": "clip_score",
               "image_reward": "image_reward"}
T2I_COMMANDS = {"geneval": "evals.geneval", "dpg": "evals.dpg", "clip": "evals.clipscore",
                "image_reward": "evals.imagereward"}


def _ratio_to_sdxl(run: dict, runs: list[dict]) -> tuple[float | None, str]:
    """(our samples/s over SDXL eager's on the same GPU and dtype, where that SDXL number comes from).

    The row's own ratio when its file measured SDXL (benchmarks.throughput's keys, the newest name first); else the
    newest SDXL eager run of the same GPU and dtype in the experiment (another process, same kind of machine)."""
    for key in ("ratio_vs_sdxl_eager", "ratio_to_sdxl_eager", "ratio_to_sdxl"):
        if run.get(key) is not None:
            return run[key], "SDXL eager measured in the same file"
    sdxl = [r for r in runs if r["_run_name"] == "sdxl-unet" and r.get("_tag_backend") == "pytorch eager"
            and r.get("_tag_gpu") == run.get("_tag_gpu") and r.get("_tag_dtype") == run.get("_tag_dtype")]
    if not sdxl:
        return None, f"× SDXL: no SDXL eager run on {run.get('_tag_gpu')} {run.get('_tag_dtype')} in MLflow"
    return run["throughput"] / sdxl[0]["throughput"], (f"× SDXL: over SDXL eager {sdxl[0]['throughput']:.3f} "
                                                       f"samples/s from {sdxl[0].get('_tag_source') or 'MLflow'}")


def table3(efficiency_only: bool = False, tracking_uri: str | None = None) -> Table:
    """Table 3 (T2I benchmarks): the paper's rows, then ours: the `snapgen-t2i` architecture's throughput (MLflow
    `throughput`, logged by `python -m reports.ingest throughput` or the benchmark), eager and the fastest setting
    measured, and one row per evaluated checkpoint (MLflow `t2i-evals`, real judges only) with its benchmarks."""
    rows = [{**r, "x_sdxl": r["throughput"] / PAPER_SDXL_THROUGHPUT if r["throughput"] is not None else None,
             "source": f"paper, {r.pop('source')} (throughput: one A100-80GB)"}
            for r in paper.rows_as_dicts(paper.TABLE3)]
    table = Table("table3", "Table 3. T2I benchmarks (params: UNet/DiT backbone, billions; throughput: samples/s at "
                            "1024px, 28 steps; × SDXL: over SDXL on the same GPU)", key="model")
    empty = {"params_b": None, "throughput": None, "x_sdxl": None, "geneval": None, "dpg": None, "clip": None,
             "image_reward": None}
    if efficiency_only:
        ours = {"model": f"Ours ({OURS_T2I}, this repo)", **empty, "source": "ours"}

        def count() -> float:
            from snapgen import profile
            from snapgen.models import EfficientUNet
            from snapgen.registry import resolve

            return profile.count_params(EfficientUNet.from_unet_config(resolve(OURS_T2I))) / 1e9

        params_b = _try(table, ours["model"], "params", count)
        if params_b is not None:
            ours.update(params_b=params_b, source="ours: snapgen.profile.count_params")
        _efficiency_only_note(table, ours["model"], ["throughput", "geneval", "dpg", "clip", "image_reward"])
        table.frame = pd.DataFrame(rows + [ours])
        return table
    ours_rows = _throughput_rows(table, empty, tracking_uri) + _checkpoint_rows(table, empty, tracking_uri)
    table.frame = pd.DataFrame(rows + ours_rows)
    return table


def _throughput_rows(table: Table, empty: dict, tracking_uri: str | None) -> list[dict]:
    """Our architecture's throughput rows: the newest eager measurement and the fastest setting (if another)."""
    measured, why = finished_runs(EXPERIMENT_THROUGHPUT, tracking_uri)
    measured = [r for r in measured if r.get("_tag_quick") != "True" and r.get("throughput") is not None]
    runs = [r for r in measured if r["_run_name"] == OURS_T2I]
    if not runs:
        row = {"model": f"Ours ({OURS_T2I} throughput)", **empty, "source": "ours"}
        table.note(row["model"], f"{why or f'no {OURS_T2I!r} run in experiment {EXPERIMENT_THROUGHPUT!r}'}: "
                                 f"`python -m reports.ingest throughput` logs the committed GPU results")
        return [row]
    eager = [r for r in runs if r.get("_tag_backend") == "pytorch eager"]
    picked = [("eager", eager[0])] if eager else []
    fastest = max(runs, key=lambda r: r["throughput"])
    if not eager or fastest["_run_id"] != eager[0]["_run_id"]:
        picked.append(("fastest", fastest))
    out = []
    for label, run in picked:
        backend, batch = run.get("_tag_backend", "?"), run.get("_tag_batch", "?")
        row = {"model": f"Ours ({OURS_T2I}, {label})", **empty,
               "params_b": run["params_m"] / 1e3 if run.get("params_m") is not None else None,
               "throughput": run["throughput"],
               "source": f"ours: MLflow {EXPERIMENT_THROUGHPUT}/{OURS_T2I} (run {run['_run_id'][:8]})"}
        row["x_sdxl"], ratio_note = _ratio_to_sdxl(run, measured)
        table.note(row["model"], f"throughput on {run.get('_tag_gpu', '?')}, {backend}, {run.get('_tag_dtype', '?')}, "
                                 f"batch {batch} (random weights; from {run.get('_tag_source') or 'the benchmark'}); "
                                 f"not the paper's A100: compare the × SDXL column")
        if not ratio_note.startswith("SDXL eager measured in the same file"):
            table.note(row["model"], ratio_note)
        table.note(row["model"], "GenEval, DPG, CLIP, ImageReward are per checkpoint: see the checkpoint rows")
        out.append(row)
    return out


def _checkpoint_rows(table: Table, empty: dict, tracking_uri: str | None) -> list[dict]:
    """One row per checkpoint evaluated with real judges (MLflow `t2i-evals`, the newest run per name)."""
    runs, why = finished_runs(EXPERIMENT_T2I, tracking_uri)
    latest: dict[str, dict] = {}
    for run in runs:
        latest.setdefault(run["_run_name"], run)
    real = {n: r for n, r in latest.items() if r.get("_tag_weights") != "tiny-random"}
    if not real:
        row = {"model": f"Ours ({OURS_T2I} checkpoint)", **empty, "source": "ours"}
        skipped = len(latest) - len(real)
        table.note(row["model"], (why or f"no checkpoint evaluated with real judges in {EXPERIMENT_T2I!r}"
                                  + (f" ({skipped} tiny-random-judge runs not shown: they measure nothing)"
                                     if skipped else ""))
                   + ": `make table3 CKPTS=runs/x` runs the four benchmarks on a checkpoint")
        table.note(row["model"], "throughput is of the architecture: see the throughput rows")
        return [row]
    out = []
    for name, run in sorted(real.items()):
        row = {"model": f"Ours ({name})", **empty,
               "params_b": run["params_m"] / 1e3 if run.get("params_m") is not None else None,
               "source": f"ours: MLflow {EXPERIMENT_T2I}/{name} (run {run['_run_id'][:8]})"}
        for column, metric in T2I_METRICS.items():
            row[column] = run.get(metric)
            if row[column] is None:
                table.note(row["model"], f"{metric} not measured on this checkpoint (`python -m "
                                         f"{T2I_COMMANDS[column]} CKPT`; judge weights: `python -m snapgen.weights`)")
        table.note(row["model"], "throughput is of the architecture: see the throughput rows")
        if run.get("_tag_gpu"):
            table.note(row["model"], f"generated on {run['_tag_gpu']}, {run.get('_tag_backend', '?')}, "
                                     f"{run.get('_tag_dtype', '?')}, batch {run.get('_tag_batch', '?')}")
        out.append(row)
    return out


def kd_table(efficiency_only: bool = False, tracking_uri: str | None = None) -> Table:
    """Supplement Table 3 (KD ablation): the paper's rows and ours, one per KD toggle set."""
    table = Table("kd", "Supplement Table 3. KD components (GenEval, ImageReward; ours at small scale: validation "
                        "loss, a proxy the paper does not report)", key="components")
    rows, cache = [], {}
    for r in paper.SUPP_TABLE3_KD:
        rows.append({"components": r.name, "geneval": r.geneval, "image_reward": r.image_reward,
                     "val_loss": None, "val_loss_ema": None, "source": f"paper, {r.source}"})
    for r in paper.SUPP_TABLE3_KD:
        ours = {"components": f"{r.name} (ours)", "geneval": None, "image_reward": None, "val_loss": None,
                "val_loss_ema": None, "source": "ours"}
        if efficiency_only:
            _efficiency_only_note(table, ours["components"], ["geneval", "image_reward"])
        else:
            _fill_from_mlflow(table, ours, EXPERIMENT_KD, r.name,
                              {"geneval": "geneval_overall", "image_reward": "image_reward",
                               "val_loss": "val_loss", "val_loss_ema": "val_loss_ema"},
                              tracking_uri, cache)
        rows.append(ours)
    table.frame = pd.DataFrame(rows)
    return table


# --------------------------------------------------------------------------------------------------------------
# Fig. 3 walk from the sweep's MLflow runs (ablations.sweep unet): one row per step, our deltas beside the paper's.

EXPERIMENT_UNET_ABLATION = "unet-ablation"
WALK_METRICS = ("params_m", "gflops", "latency_ms", "latency_p10_ms", "latency_p90_ms", "val_loss", "fid",
                "params_m_trained", "fd_cifar", "kid_cifar", "class_acc", "cfg_best", "cfg_at_edge")
# Quality metrics of the walk, in the order one is chosen for the sign column (the first any run has), and whether
# lower is better. FID is FID (clean-fid's Inception); fd_cifar/kid_cifar/class_acc are the offline proxy.
WALK_QUALITY = (("fid", True), ("fd_cifar", True), ("val_loss", True))
WALK_DETAIL_QUALITY = (("fid", True), ("fd_cifar", True), ("kid_cifar", True), ("class_acc", False),
                       ("val_loss", True))


def walk_rows_from_mlflow(walk: str = "fig3", scale: str | None = None, tracking_uri: str | None = None,
                          experiment: str = EXPERIMENT_UNET_ABLATION) -> tuple[list[dict], str | None, str | None]:
    """Rows of the walk's steps from FINISHED MLflow runs tagged `walk`: ([row], scale used, why empty or None).

    A row has step, parent, delta, the `WALK_METRICS` (mean over seeds; newest run per seed) with each one's per-seed
    values in `<metric>_values`, `seeds`, `device`, `latency_backend` and `d_<metric>_pct` vs. the parent step.
    `scale` None = the scale of the newest run. Steps without a run are rows with missing values.
    """
    from snapgen.registry import walk as registry_walk

    uri = tracking.tracking_uri(tracking_uri)
    steps = registry_walk(walk)
    empty = [{"step": s.name, "parent": s.parent, "delta": s.delta} for s in steps]
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return empty, scale, f"no MLflow database at {uri.removeprefix('sqlite:///')} (tracking URI {uri})"
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        runs = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string=f"attributes.status = 'FINISHED' and tags.walk = '{walk}'",
            order_by=["attributes.start_time DESC"], max_results=50000)
    except Exception as error:  # noqa: BLE001 - a tracking failure becomes a footnote
        return empty, scale, f"could not read MLflow at {uri}: {type(error).__name__}: {error}"
    if not runs:
        return empty, scale, f"no finished {walk!r} runs in MLflow experiment {experiment!r} at {uri}"
    scale = scale or runs[0].data.tags.get("scale")
    newest: dict[tuple[str, str], Any] = {}
    for run in runs:  # newest first
        tags = run.data.tags
        if tags.get("scale") == scale:
            newest.setdefault((tags.get("step"), tags.get("seed")), run)
    rows: dict[str, dict] = {}
    for step in steps:
        seeds = [r for (name, _), r in sorted(newest.items(), key=lambda kv: str(kv[0][1])) if name == step.name]
        row: dict[str, Any] = {"step": step.name, "parent": step.parent, "delta": step.delta, "seeds": len(seeds)}
        for metric in WALK_METRICS:
            values = [r.data.metrics[metric] for r in seeds if metric in r.data.metrics]
            row[f"{metric}_values"] = values
            row[metric] = sum(values) / len(values) if values else None
        if seeds:
            row.update(device=seeds[0].data.tags.get("device"), latency_backend=seeds[0].data.tags.get(
                "latency_backend"), latency_note=seeds[0].data.tags.get("latency_note"),
                run_ids=[r.info.run_id for r in seeds],
                metric_note=seeds[0].data.tags.get("fd_cifar_note") or seeds[0].data.tags.get("metric_note"))
        parent = rows.get(step.parent) if step.parent else None
        for metric in WALK_METRICS:
            value, base = row[metric], parent.get(metric) if parent else None
            row[f"d_{metric}_pct"] = 100.0 * (value - base) / base if value is not None and base else None
        rows[step.name] = row
    found = sum(r["seeds"] > 0 for r in rows.values())
    return list(rows.values()), scale, None if found else f"no finished {scale!r} runs of walk {walk!r}"


def walk_quality_metric(rows: list[dict]) -> tuple[str, bool]:
    """The walk's quality metric for the sign column: FID where measured, else FD-CIFAR, else val_loss."""
    for metric, lower in WALK_QUALITY:
        if any(r.get(f"{metric}_values") for r in rows):
            return metric, lower
    return "val_loss", True


def _pm(summary) -> str | None:
    if summary.mean is None:
        return None
    return f"{summary.mean:.4g}" + (f" ± {summary.std:.2g}" if summary.std is not None else "")


def _interval(change) -> str | None:
    if change.mean is None:
        return None
    if change.low is None:
        return f"{change.mean:+.3g}"
    return f"{change.mean:+.3g} [{change.low:+.2g}, {change.high:+.2g}]"


def _pct_beside_paper(ours: float | None, stated: float | None) -> str | None:
    if ours is None and stated is None:
        return None
    return f"{'—' if ours is None else format(ours, '+.1f')} ({'—' if stated is None else format(stated, '+.0f')})"


def _paper_quality(p) -> str | None:
    if p is None:
        return None
    if p.fid is not None and p.fid_parent is not None:
        return f"{p.fid_parent:g}→{p.fid:g}"
    if p.fid is not None:
        return f"{p.fid:g}"
    return {"better": "better", "worse": "worse", "comparable": "≈"}.get(p.fid_direction or "")


def fig3_table(efficiency_only: bool = False, tracking_uri: str | None = None, scale: str | None = None) -> Table:
    """Fig. 3 walk: per step our GFLOPs (128x128 latent) and quality over seeds (mean ± std), the quality change vs.
    the parent step with its 95% t-interval (Welch), the paper's FID (Sec. 3.1) and the sign verdict: 'as paper',
    'opposite', or 'within noise' when the change's interval covers 0. `table.details` holds every column (params,
    latency, each quality metric's mean/std/interval/change/sign, seeds, run ids) for the CSV beside the table."""
    from reports import stats

    table = Table("fig3", "Fig. 3 walk: ours beside the paper (Sec. 3.1)", key="step")
    if efficiency_only:
        from snapgen.profile import profile_walk

        rows = [{**r, "d_params_m_pct": r["d_params_pct"], "d_gflops_pct": r["d_gflops_pct"]}
                for r in profile_walk("fig3", 128)]
        why, scale = None, None
        for r in rows:
            _efficiency_only_note(table, r["step"], ["quality"])
    else:
        rows, scale, why = walk_rows_from_mlflow("fig3", scale, tracking_uri)
    quality, lower_is_better = walk_quality_metric(rows)
    by_step = {r["step"]: r for r in rows}
    compact, details = [], []
    for r in rows:
        p = paper.FIG3_STEPS.get(r["step"])
        parent = by_step.get(r.get("parent")) if r.get("parent") else None
        detail: dict[str, Any] = {
            "step": r["step"], "parent": r.get("parent"), "seeds": r.get("seeds"),
            "params_m": r.get("params_m"), "d_params": r.get("d_params_m_pct"),
            "paper_d_params": p.params_delta_pct if p else None, "gflops": r.get("gflops"),
            "d_gflops": r.get("d_gflops_pct"), "paper_d_gflops": p.flops_delta_pct if p else None,
            "latency_ms": latency_cell(r.get("latency_ms"), r.get("latency_p10_ms"), r.get("latency_p90_ms")),
            "d_latency": r.get("d_latency_ms_pct"),
            "paper_d_latency": p.latency_delta_pct if p else None, "paper_fid": p.fid if p else None,
            "paper_quality": (p.fid_note or p.fid_direction) if p else None,
        }
        for metric, lower in WALK_DETAIL_QUALITY:
            mine = r.get(f"{metric}_values") or []
            summary = stats.summarize(mine)
            change = stats.difference(mine, (parent or {}).get(f"{metric}_values") or []) if parent else \
                stats.Summary(0, None, None, None, None)
            detail.update({f"{metric}_mean": summary.mean, f"{metric}_std": summary.std,
                           f"{metric}_ci_low": summary.low, f"{metric}_ci_high": summary.high,
                           f"d_{metric}": change.mean, f"d_{metric}_ci_low": change.low,
                           f"d_{metric}_ci_high": change.high,
                           f"sign_{metric}": stats.verdict(change, p.fid_direction if p and parent else None, lower)
                           if mine else None})
        detail.update(cfg_best=" ".join(f"{v:g}" for v in r.get("cfg_best_values") or []) or None,
                      device=r.get("device"), latency_backend=r.get("latency_backend"),
                      run_ids=" ".join(r.get("run_ids") or []) or None, metric_note=r.get("metric_note"))
        details.append(detail)
        summary = stats.summarize(r.get(f"{quality}_values") or [])
        change = stats.difference(r.get(f"{quality}_values") or [], (parent or {}).get(f"{quality}_values") or [])
        compact.append({
            "step": r["step"], "seeds": r.get("seeds"), "gflops_128": r.get("gflops"),
            "d_gflops": _pct_beside_paper(r.get("d_gflops_pct"), p.flops_delta_pct if p else None),
            "quality": _pm(summary),
            "d_quality": _interval(change) if parent else None, "paper_quality": _paper_quality(p),
            "sign": detail[f"sign_{quality}"] or None,
            "source": "paper: Sec. 3.1 text; ours: " + (
                "snapgen.profile (128x128 latent)" if efficiency_only else f"MLflow unet-ablation ({scale} scale)"),
        })
        detail["source"] = compact[-1]["source"]
        if not efficiency_only and not r.get("seeds"):
            table.note(r["step"], why or f"no finished {scale!r} run of this step")
    table.footnotes.append("paper columns: Sec. 3.1 text (FLOPs deltas and FID as stated); ours: " + (
        "snapgen.profile" if efficiency_only else f"MLflow unet-ablation, {scale or 'no'} scale") +
        "; every column, seed interval and run id in the details CSV (--details)")
    if not efficiency_only and any(r.get("seeds") for r in rows):
        device = next((r.get("device") for r in rows if r.get("device")), None)
        label = {"fid": "FID (clean-fid)", "fd_cifar": "FD-CIFAR (our CIFAR-10 net's features; a proxy, not FID)",
                 "val_loss": "validation loss (a proxy, not FID)"}[quality]
        table.footnotes.append(f"quality: {label}, mean ± std over seeds; Δ vs. the parent step with its 95% "
                               f"t-interval (Welch); sign 'within noise' when that interval covers 0")
        table.footnotes.append(f"GFLOPs of the full-size architectures at a 128x128 latent (trained nets may be "
                               f"shrunk proxies); latency (CSV) on {device}, not the paper's iPhone 15 Pro")
    edges = [v for r in rows for v in r.get("cfg_at_edge_values") or []]
    if quality != "val_loss" and any(edges):  # the CFG sweep's best may lie outside its grid
        table.footnotes.append(f"best CFG scale at the edge of the swept grid in {int(sum(edges))} of {len(edges)} "
                               f"trials (cfg_best in the details CSV): a wider grid may score better")
    table.frame = pd.DataFrame(compact)
    table.headers = {"seeds": "n", "gflops_128": "GFLOPs", "d_gflops": "ΔFLOPs (paper)",
                     "quality": quality, "d_quality": "Δ [95% CI]", "paper_quality": "paper FID",
                     "sign": "sign"}
    table.details = pd.DataFrame(details)
    unmeasured = next((r.get("latency_note") for r in rows if r.get("seeds") and r.get("latency_ms") is None), None)
    if any(r.get("latency_ms") for r in rows):
        table.footnotes.append(LATENCY_CELL_NOTE + " (details CSV)")
    if unmeasured:  # why a step's latency (details CSV) is empty: the runs' latency_note tag
        table.footnotes.append(f"latency: {unmeasured}")
    return table


# --------------------------------------------------------------------------------------------------------------
# Issue 19: the adversarial terms with and without (ablations/specs/adversarial_*.yaml), no paper numbers exist.

EXPERIMENT_ADVERSARIAL = "adversarial-ablation"
OURS_ONLY_TABLES = ("adversarial",)  # tables without paper rows
ADVERSARIAL_SPECS = (("step distillation", "adversarial_step_distill"), ("decoder", "adversarial_decoder"))


def adversarial_arms() -> list[tuple[str, str]]:
    """(stage, arm) of every arm of the two adversarial specs (the arms live there only), in the specs' order but
    with each stage's baseline (`no_*`, no discriminator) last, below the arms it is compared with."""
    from ablations.sweep import load_spec

    return [(stage, arm) for stage, name in ADVERSARIAL_SPECS
            for arm in sorted(load_spec(name)["arms"], key=lambda a: a.startswith("no_"))]


ADVERSARIAL_COLUMNS = {"steps": "steps_trained", "d_acc": "d_acc_balanced_late", "adv_ratio": None,
                       "mse_4": "fewstep_mse_vs_teacher_4", "mse_8": "fewstep_mse_vs_teacher_8",
                       "fd_cifar_4": "fd_cifar_4", "fd_cifar_8": "fd_cifar_8", "psnr": "psnr",
                       "psnr_photos": "psnr_photos", "lpips": "lpips", "fd_cifar_rec": "fd_cifar_rec"}
COLUMN_FORMATS.update({"steps": ".0f", "d_acc": ".3f", "adv_ratio": ".3f", "mse_4": ".4f", "mse_8": ".4f",
                       "lpips": ".4f"})
COLUMN_HEADERS.update({"arm": "arm", "steps": "steps", "d_acc": "D balanced acc (last 1/4)",
                       "adv_ratio": "|∇adv| / |∇task|",
                       "mse_4": "MSE vs teacher, 4 steps", "mse_8": "MSE vs teacher, 8 steps",
                       "fd_cifar_4": "FD-CIFAR 4 steps", "fd_cifar_8": "FD-CIFAR 8 steps",
                       "psnr_photos": "PSNR photos", "lpips": "LPIPS", "fd_cifar_rec": "FD-CIFAR rec. vs originals"})


def adversarial_table(efficiency_only: bool = False, tracking_uri: str | None = None, scale: str | None = None) -> Table:
    """Step distillation with/without L_adv^G and the decoder with/without its PatchGAN, from the MLflow experiment
    `adversarial-ablation` (`python -m ablations.sweep adversarial_step_distill|adversarial_decoder`)."""
    table = Table("adversarial", "Adversarial terms, with vs without (ours; the paper reports no such ablation)",
                  key="arm")
    runs, why = read_mlflow_runs(EXPERIMENT_ADVERSARIAL, tracking_uri)
    rows, arms = [], adversarial_arms()
    for stage, arm in arms:
        row = {"stage": stage, "arm": arm, **{c: None for c in ADVERSARIAL_COLUMNS}, "source": "ours"}
        run = runs.get(arm)
        if efficiency_only or run is None or (scale and run.get("_tag_scale") != scale):
            table.note(arm, "efficiency only: no quality read" if efficiency_only else
                       why or f"no finished run {arm!r}" + (f" at scale {scale}" if scale else ""))
        else:
            row["source"] = f"ours: MLflow {EXPERIMENT_ADVERSARIAL}/{arm} ({run.get('_tag_scale')}, run " \
                            f"{run['_run_id'][:8]})"
            for column, metric in ADVERSARIAL_COLUMNS.items():
                row[column] = run.get(metric)
            row["adv_ratio"] = run.get("g_adv_grad_ratio", run.get("train_adv_grad_ratio"))
        rows.append(row)
    for stage in dict.fromkeys(stage for stage, _ in arms):
        steps = {r["arm"]: r["steps"] for r in rows if r["stage"] == stage and r["steps"] is not None}
        if len(set(steps.values())) > 1:  # a time budget stopped the arms at different steps
            table.footnotes.append(f"{stage}: the arms trained unequal steps ("
                                   + ", ".join(f"{a} {s:.0f}" for a, s in steps.items())
                                   + "): their difference mixes the term's effect with the budget's")
    table.frame = pd.DataFrame(rows)
    table.footnotes.append("MSE vs teacher: to the teacher's 30-step samples from the same noise, [-1, 1] pixels "
                           "(a proxy, not FID); D balanced acc: (acc_real + acc_fake) / 2, 0.5 = chance; PSNR on "
                           "held-out CIFAR-10 upsampled to the spec's eval resolution (256^2 at small; the run's "
                           "eval_set tag) and the photos of $SNAPGEN_PHOTOS; FD-CIFAR: our "
                           "CIFAR-10 net's features (a proxy, not FID), of the few-step samples vs. CIFAR-10 train, and "
                           "of the decoder's reconstructions vs. the originals they reconstruct")
    return table


def log_to_sweep(experiment: str, sweep: str, scale: str | None, table: Table | None = None,
                 figures: list[Path] = (), tracking_uri: str | None = None) -> str | None:
    """Attach a report to the newest parent run of `sweep` at `scale` (`snapgen.tracking.log_report`): the table's
    numbers as an MLflow table (`<name>_table.json`, sortable in the UI), its rendering with footnotes
    (`<name>_table.md`) and figure files. Returns the parent's run id, or None (printed) when there is none."""
    import tempfile

    parent = tracking.find_parent(experiment, sweep, scale, tracking_uri)
    if parent is None:
        print(f"no {sweep!r} sweep parent run at scale {scale!r} in {experiment!r}: nothing attached", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(f) for f in figures]
        if table is not None:
            body, notes = render(table, "md")
            rendered = Path(tmp) / f"{table.name}_table.md"
            rendered.write_text(body + "\n\n" + notes + "\n")
            files.append(rendered)
        tracking.log_report(parent.info.run_id, table.frame if table is not None else None,
                            f"{table.name}_table.json" if table is not None else "table.json", files, tracking_uri)
    print(f"attached to MLflow run {parent.info.run_id} ({parent.info.run_name})", file=sys.stderr)
    return parent.info.run_id


TABLES: dict[str, Callable[..., Table]] = {"table1": table1, "table2": table2, "table3": table3, "kd": kd_table,
                                        "fig3": fig3_table, "adversarial": adversarial_table}


# --------------------------------------------------------------------------------------------------------------
# Rendering


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _display_frame(table: Table) -> pd.DataFrame:
    """Numbers formatted, missing values as MISSING, a footnote mark on rows that have footnotes; `source` last."""

    def fmt(value: Any, column: str, is_paper: bool) -> str:
        if _is_missing(value):
            return MISSING
        if isinstance(value, float):
            if is_paper and value.is_integer():
                return f"{value:.0f}"  # as the paper prints it (400, 4970)
            return format(value, COLUMN_FORMATS.get(column, ".2f"))
        return str(value)

    frame = table.frame.astype(object).copy()
    if "source" in frame:
        frame = frame[[c for c in frame.columns if c != "source"] + ["source"]]
    is_paper = [str(source).startswith("paper") for source in frame["source"]] if "source" in frame else \
        [False] * len(frame)
    for column in frame.columns:
        frame[column] = [fmt(v, column, p) for v, p in zip(frame[column], is_paper)]
    key, marks = table.key, table.marks
    frame[key] = [f"{name} [{','.join(map(str, marks[name]))}]" if name in marks else name for name in frame[key]]
    return frame.rename(columns={**COLUMN_HEADERS, **table.headers})


def render(table: Table, fmt: str = "md") -> tuple[str, str]:
    """(table text, footnote text) in `fmt` ('md' | 'csv' | 'tex')."""
    frame = _display_frame(table)
    notes = [f"[{i}] {text}" for i, text in enumerate(table.footnotes, 1)]
    if fmt == "md":
        import tabulate

        padding = tabulate.MIN_PADDING
        if table.details is not None:  # a compact table (its details go to a CSV): no padding beyond the widest cell
            tabulate.MIN_PADDING = 0
        try:
            shown = frame.drop(columns=["source"]) if table.details is not None else frame  # it is a footnote there
            body = f"**{table.title}**\n\n" + shown.to_markdown(index=False, disable_numparse=True)
        finally:
            tabulate.MIN_PADDING = padding
        if table.details is not None:
            import textwrap

            notes = [textwrap.fill(n, 120, subsequent_indent="    ") for n in notes]
        return body, "\n".join(notes)
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n"), "\n".join(notes)
    if fmt == "tex":
        body = frame.to_latex(index=False, escape=True, caption=table.title, label=f"tab:{table.name}")
        return body.rstrip("\n"), "\n".join(f"% {n}" for n in notes)
    raise ValueError(f"unknown format {fmt!r}; valid: md, csv, tex")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=list(TABLES))
    parser.add_argument("--format", default="md", choices=["md", "csv", "tex"])
    parser.add_argument("--efficiency-only", action="store_true",
                        help="measure params/FLOPs now instead of reading MLflow; quality columns stay missing")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"MLflow tracking URI (default $MLFLOW_TRACKING_URI or {tracking.DEFAULT_TRACKING_URI})")
    parser.add_argument("--scale", default=None, help="fig3, adversarial: the sweep scale to read (default: the "
                                                      "newest run's)")
    parser.add_argument("--details", default=None, metavar="CSV",
                        help="fig3: also write every column (params, latency, each quality metric's mean, std, 95%% "
                             "interval, change and sign, seeds, run ids) to this CSV")
    parser.add_argument("--metric", default=None,
                        help="table1: the quality proxy to show beside FID (default: the run's quality_metric tag, "
                             "e.g. fd_cifar)")
    parser.add_argument("--log-to-sweep", action="store_true",
                        help="fig3: also attach the table to the newest `unet` sweep parent run of the scale (MLflow)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = parser.parse_args(argv)
    if args.scale is not None and args.table not in ("fig3", "adversarial"):
        parser.error("--scale applies to fig3 and adversarial only")
    if args.details is not None and args.table != "fig3":
        parser.error("--details applies to fig3 only")
    if args.log_to_sweep and (args.table != "fig3" or args.efficiency_only):
        parser.error("--log-to-sweep applies to fig3 read from MLflow only")
    if args.metric is not None and args.table != "table1":
        parser.error("--metric applies to table1 only")
    extra = {"scale": args.scale} if args.table in ("fig3", "adversarial") else \
        {"metric": args.metric} if args.table == "table1" else {}
    table = TABLES[args.table](efficiency_only=args.efficiency_only, tracking_uri=args.tracking_uri, **extra)
    body, notes = render(table, args.format)
    print(body)
    if args.details is not None and table.details is not None:
        Path(args.details).parent.mkdir(parents=True, exist_ok=True)
        table.details.to_csv(args.details, index=False)
        print(f"details: {args.details}", file=sys.stderr)
    if notes:
        # CSV stays machine-readable: its footnotes go to stderr.
        print(("" if args.format == "csv" else "\n") + notes, file=sys.stderr if args.format == "csv" else sys.stdout)
    if args.log_to_sweep:
        log_to_sweep("unet-ablation", "unet", args.scale, table, tracking_uri=args.tracking_uri)
    return 0


if __name__ == "__main__":
    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
