"""Generate images: `python -m snapgen.generate CKPT --prompt TEXT [--prompt TEXT ...] --steps N --out img.png`.

CKPT is a saved `SnapGenPipeline` directory (model_index.json) or a `snapgen.train` run directory (the pipeline is built
from its config.yaml and EMA weights). 28 steps with CFG by default; `--steps 4` or `8` for step-distilled models
(guidance off unless `--cfg` is given). Image i of a prompt uses noise from `seed + i`, so a seed gives the same images
on every run and batch size. The images are generated at the run's (or pipeline's) resolution and decoded by its
autoencoder; they are written as one grid for people (one labelled row per prompt, tiles upscaled nearest to >= 256
px, `snapgen.sampling.grid`), or with `--plain` at their own pixels, tiled without labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from . import sampling
from .pipeline import DEFAULT_STEPS, images_to_grid, load_pipeline
from .training.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m snapgen.generate", description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="saved pipeline directory or snapgen.train run directory")
    p.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: 4 at >= 9 steps, else 1)")
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the pipeline's)")
    p.add_argument("--encoders", default=None, help="comma-separated subset of the text stack's encoders")
    p.add_argument("--raw", action="store_true", help="run directories: the raw weights instead of the EMA")
    p.add_argument("--plain", action="store_true", help="the images at their own pixels, no upscaling or labels")
    p.add_argument("--out", default="img.png")
    p.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = p.parse_args(argv)
    for name in ("steps", "n"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: must be >= 1")
    if args.size is not None and args.size < 1:
        p.error(f"--size {args.size}: must be >= 1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(args.ckpt, device=device, ema=not args.raw)
    use = tuple(args.encoders.split(",")) if args.encoders else None
    images = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.cfg, height=args.size,
                  width=args.size, num_images_per_prompt=args.n, seed=args.seed, use_encoders=use,
                  output_type="np").images
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.plain:
        picture = Image.fromarray(images_to_grid(images, columns=args.n))
    else:
        picture = sampling.grid((images * 255).round().astype("uint8"), args.n, labels=args.prompt)
    picture.save(out)
    side = images.shape[1]
    print(f"wrote {out}: {len(args.prompt)} prompt(s) x {args.n} images of {side}x{side} px"
          + ("" if args.plain else f" (shown at {picture.height // len(args.prompt)} px, labelled)")
          + f", {args.steps} steps, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
