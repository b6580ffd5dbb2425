"""Table 3 for checkpoints: `python -m evals.table3 CKPT [CKPT...] [--captions F] [--csv F] [--limit N]`.

Runs GenEval, DPG-Bench, CLIP score and ImageReward on each checkpoint (each logs into MLflow `t2i-evals`, run name =
the checkpoint's name), skipping a benchmark with a clear message where its judge weights or its user-supplied file
(`--csv` for DPG-Bench, `--captions` for CLIP score) are missing; then prints what was measured. Table 3 itself is
`python -m reports.tables table3` (which shows the run named `snapgen-t2i`); `make table3 CKPTS=...` runs both.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from . import clipscore, common, dpg, geneval, imagereward

BENCHMARKS = {"geneval": geneval, "dpg": dpg, "clipscore": clipscore, "imagereward": imagereward}
HEADLINE = {"geneval": "geneval_overall", "dpg": "dpg_overall", "clipscore": "clip_score", "imagereward": "image_reward"}


def run_benchmark(name: str, argv: list[str]) -> tuple[dict | None, str]:
    """(summary, '') when it ran, (None, why) when it was skipped."""
    from snapgen.weights import WeightsNotFoundError

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return BENCHMARKS[name].main(argv), ""
    except WeightsNotFoundError as error:
        missing = ", ".join(getattr(error, "missing", [])) or str(error).splitlines()[0]
        return None, f"weights missing: {missing} (`python -m snapgen.weights {name}` lists them and the fetch command)"
    except SystemExit as exit_:  # argparse's parser.error: a required user file is missing
        if exit_.code in (0, None):
            raise
        lines = stderr.getvalue().strip().splitlines()
        return None, lines[-1].split("error: ", 1)[-1] if lines else f"exit {exit_.code}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evals.table3", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run directories of `python -m snapgen.train`")
    parser.add_argument("--out", default="evals_out", help="outputs go to <out>/<benchmark>/<checkpoint name>")
    parser.add_argument("--captions", help="COCO captions JSON for CLIP score")
    parser.add_argument("--csv", help="dpg_bench.csv for DPG-Bench")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts of GenEval, DPG-Bench, ImageReward")
    parser.add_argument("--clip-num", type=int, default=clipscore.DEFAULT_SUBSET_SIZE, help="CLIP-score captions")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tiny-random-judges", action="store_true", help="tiny random judges (plumbing demo only)")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)

    measured: dict[str, dict[str, object]] = {}
    for ckpt in args.checkpoints:
        name = common.target_name(ckpt)
        for bench in args.only:
            argv_b = [ckpt, "--out", str(Path(args.out) / bench / name), "--steps", str(args.steps), "--cfg",
                      str(args.cfg), "--seed", str(args.seed)]
            argv_b += ["--device", args.device] if args.device else []
            argv_b += ["--tiny-random-judges"] if args.tiny_random_judges else []
            argv_b += ["--no-mlflow"] if args.no_mlflow else []
            if bench in ("geneval", "dpg", "imagereward") and args.limit:
                argv_b += ["--limit", str(args.limit)]
            if bench == "dpg" and args.csv:
                argv_b += ["--csv", args.csv]
            if bench == "clipscore":
                argv_b += ["--num", str(args.clip_num)] + (["--captions", args.captions] if args.captions else [])
            print(f"--- {name}: {bench}", flush=True)
            summary, why = run_benchmark(bench, argv_b)
            if summary is None:
                print(f"SKIPPED {bench} for {name}: {why}", flush=True)
            measured.setdefault(name, {})[bench] = summary[HEADLINE[bench]] if summary else f"skipped ({why[:60]})"

    print(("\n!!! tiny-random judges: these numbers measure nothing !!!\n" if args.tiny_random_judges else "\n")
          + "| checkpoint | " + " | ".join(HEADLINE[b] for b in args.only) + " |")
    print("|---" * (len(args.only) + 1) + "|")
    for name, row in measured.items():
        cells = [f"{row[b]:.4g}" if isinstance(row[b], float) else str(row[b]) for b in args.only]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if not args.no_mlflow:  # Table 3 is built by reports, a layer above evals (`make table3` runs both)
        print("\nTable 3 with these runs: python -m reports.tables table3")
    return measured


if __name__ == "__main__":
    main()
