"""Sample from a training run: `python -m snapgen.sample RUN_DIR [--class NAME | --prompt TEXT] --steps N --cfg S --out grid.png`.

Without --class or --prompt, one row per class of the run's dataset, labelled. Pixel or latent runs are decoded by the
run's own autoencoder. Samples are seeded by their global index (`snapgen.sampling`), so a grid does not depend on the
batch it was drawn in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import sampling
from .data import class_prompts
from .runs import open_run
from .training.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m snapgen.sample", description=__doc__.split("\n")[0])
    p.add_argument("run", help="run directory of `python -m snapgen.train` or `snapgen.step_distill`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_name", help="one class of the run's dataset")
    which.add_argument("--prompt", help="any text (the model only knows its training prompts)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="samples per sampler call (does not change any image)")
    p.add_argument("--sampler", default="euler", choices=["euler", "heun"])
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", default="grid.png")
    p.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = p.parse_args(argv)
    for name in ("steps", "n", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: must be >= 1")
    run = open_run(args.run)
    names = run.class_names
    if args.class_name is not None and args.class_name not in names:
        p.error(f"unknown class {args.class_name!r}; this run's classes: {', '.join(names)}")
    chosen = [args.class_name] if args.class_name else names
    prompts = [args.prompt] if args.prompt else [ps[0] for ps in class_prompts(chosen)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = sampling.generate(run, prompts, args.n, steps=args.steps, guidance=args.cfg, seed=args.seed,
                               sampler=args.sampler, batch_size=args.batch, ema=not args.raw, device=device)
    labels = [args.prompt[:24]] if args.prompt else chosen
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sampling.grid(images.reshape(-1, *images.shape[2:]), args.n, labels=labels).save(args.out)
    print(f"wrote {args.out}: {len(prompts)} prompt(s) x {args.n} samples, {args.steps} steps, cfg {args.cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
