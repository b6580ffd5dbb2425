"""Log committed GPU results into MLflow, so the tables read them like any run:
`python -m reports.ingest decoder [--eval FILE ...] [--latency FILE] [--tracking-uri URI]` and
`python -m reports.ingest throughput [DIR_OR_JSON ...] [--tracking-uri URI]`.

Throughput results (Table 3's column) are the throughput.json files `python -m benchmarks.throughput` writes; every
one found under the given folders (default: the committed `reports/results/throughput*/`) is logged by
`snapgen.tracking.log_throughput`: one run per UNet/decoder row in the experiment `throughput`, tagged with its GPU,
backend, dtype and batch; a row logged before is not logged again.

Decoder results (Table 2) come from two commands run on a GPU box that has no MLflow:
`python -m snapgen.train_decoder eval ... --out DIR` (DIR/eval.json: PSNR/SSIM/LPIPS per decoder on one image set)
and `python -m benchmarks.decoder_latency` (decoder_latency.json: median ms per decoder and batch). One MLflow run per
decoder in the experiment `decoder` (run names `tiny`, `taesd3`, `sd3`, as `reports.tables.table2` reads them):
- `psnr`, `ssim`, `lpips` from the first `--eval` file (the headline set), and `psnr_<set>` etc. from every file,
  `<set>` being the name of the file's directory;
- `latency_ms` (batch 1, with `latency_p10_ms` / `latency_p90_ms`) and `latency_ms_b<N>` from the latency file, tagged with its backend, device and dtype;
- `params_m`, `gflops` where the files carry them.
Idempotent: a run whose inputs (file contents) were logged before is not logged again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_EVALS = (RESULTS / "decoder_small" / "eval_natural512" / "eval.json",
                 RESULTS / "decoder_small" / "eval_natural256" / "eval.json",
                 RESULTS / "decoder_small" / "eval_cifar256" / "eval.json")
DEFAULT_LATENCY = RESULTS / "decoder_latency" / "decoder_latency.json"
# names in eval.json / decoder_latency.json -> MLflow run names (reports.tables.table2)
DECODER_RUNS = {"ours": "tiny", "ours (tiny)": "tiny", "taesd3": "taesd3", "sd3": "sd3"}


def decoder_records(evals: list[Path], latency: Path | None) -> dict[str, dict]:
    """{run name: {"metrics": {...}, "tags": {...}}} from eval.json files (the first is the headline set) and a
    decoder_latency.json."""
    records: dict[str, dict] = {}

    def record(name: str) -> dict:
        return records.setdefault(DECODER_RUNS.get(name, name), {"metrics": {}, "tags": {}})

    for i, path in enumerate(evals):
        report = json.loads(Path(path).read_text())
        set_name = Path(path).parent.name
        for name, values in report["decoders"].items():
            r = record(name)
            for key in ("psnr", "ssim", "lpips"):
                if values.get(key) is not None:
                    r["metrics"][f"{key}_{set_name}"] = values[key]
                    if i == 0:
                        r["metrics"][key] = values[key]
            for key in ("params_m", "gflops"):
                if values.get(key) is not None:
                    r["metrics"][key] = values[key]
            if i == 0:
                r["tags"]["eval_set"] = f"{set_name}: {report['eval_set']}; latents from {report['encoder']}"
    if latency is not None:
        for row in json.loads(Path(latency).read_text()):
            r = record(row["decoder"])
            key = "latency_ms" if row["batch"] == 1 else f"latency_ms_b{row['batch']}"
            r["metrics"][key] = row["median_ms"]
            if row["batch"] == 1 and "p10" in row:  # its spread, shown beside it (reports.tables.latency_cell)
                r["metrics"].update(latency_p10_ms=row["p10"], latency_p90_ms=row["p90"])
            r["metrics"].setdefault("params_m", row["params_m"])
            r["tags"]["latency"] = (f"{row['backend']} {row['dtype']}, {row['device']}, {row['latent']}^2 latent -> "
                                    f"{row['image']}^2, median of {row['repeats']}")
            r["tags"]["device"], r["tags"]["latency_backend"] = row["device"], f"{row['backend']} {row['dtype']}"
    return records


def ingest_decoder(evals: list[Path], latency: Path | None, tracking_uri: str | None = None) -> list[tuple[str, bool]]:
    """Log `decoder_records` to MLflow. Returns [(run name, logged now)]."""
    from snapgen.tracking import git_sha, log_trial

    inputs = [Path(p) for p in evals] + ([Path(latency)] if latency else [])
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in inputs)).hexdigest()[:16]
    out = []
    for name, r in decoder_records(evals, latency).items():
        tags = {"step": "table2", "scale": "small", "git_sha": git_sha(), "config_hash": f"{name}-{digest}",
                "device": "n/a", "latency_backend": "n/a", **r["tags"],
                "sources": ", ".join(str(p) for p in inputs)}
        _, logged = log_trial("decoder", name, tags=tags, params={"decoder": name}, metrics=r["metrics"],
                              artifacts=inputs, uri=tracking_uri)
        out.append((name, logged))
    return out


def throughput_files(paths: list[Path]) -> list[Path]:
    """The throughput.json files: the given files, and every one under the given folders (sorted)."""
    found = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(path.rglob("throughput.json"))
        else:
            raise FileNotFoundError(f"{path}: neither a throughput.json nor a folder holding one")
    return found


def ingest_throughput(paths: list[Path], tracking_uri: str | None = None) -> list[tuple[str, str, bool]]:
    """Log every throughput.json under `paths`. Returns [(file, run name, logged now)]."""
    from snapgen.tracking import log_throughput

    out = []
    for path in throughput_files(paths):
        try:
            report = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path}: not JSON ({error})") from error
        if not isinstance(report, dict) or not ("unets" in report or "decoders" in report):
            raise ValueError(f"{path}: not a benchmarks.throughput result (no 'unets' or 'decoders')")
        try:  # the tag names the committed file as the repository knows it, not this machine's checkout
            source = str(path.resolve().relative_to(RESULTS.parents[1]))
        except ValueError:
            source = str(path)
        for name, _, logged in log_throughput(report, source=source, uri=tracking_uri):
            out.append((str(path), name, logged))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.ingest", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    d = sub.add_parser("decoder", help="decoder eval.json + decoder_latency.json -> MLflow experiment 'decoder'")
    d.add_argument("--eval", nargs="*", type=Path, default=list(DEFAULT_EVALS),
                   help="eval.json files; the first is the headline PSNR (default: the committed decoder_small sets)")
    d.add_argument("--latency", type=Path, default=DEFAULT_LATENCY)
    d.add_argument("--tracking-uri", default=None)
    t = sub.add_parser("throughput", help="benchmarks.throughput's throughput.json -> MLflow experiment 'throughput'")
    t.add_argument("paths", nargs="*", type=Path, default=sorted(RESULTS.glob("throughput*/")),
                   help="throughput.json files or folders searched for them (default: reports/results/throughput*/)")
    t.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)
    if args.kind == "throughput":
        missing = [str(f) for f in args.paths if not Path(f).exists()]
        if missing:
            p.error(f"not found: {', '.join(missing)}")
        rows = ingest_throughput(args.paths, args.tracking_uri)
        if not rows:
            p.error(f"no throughput.json under {', '.join(map(str, args.paths))}")
        for path, name, logged in rows:
            print(f"throughput/{name} ({path}): {'logged' if logged else 'already in MLflow'}")
        return 0
    missing = [str(f) for f in [*args.eval, args.latency] if f and not Path(f).is_file()]
    if missing:
        p.error(f"not found: {', '.join(missing)}")
    for name, logged in ingest_decoder(args.eval, args.latency, args.tracking_uri):
        print(f"decoder/{name}: {'logged' if logged else 'already in MLflow'}")
    return 0


if __name__ == "__main__":
    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
