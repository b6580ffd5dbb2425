"""Sample from a training run: `python -m snapgen.sample RUN_DIR [--class NAME | --prompt TEXT] --steps N --cfg S --out grid.png`.

Without --class or --prompt, one row per class of the run's dataset. Samples are seeded by their index in the grid, so
a grid does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import flow
from .config import load_yaml
from .data import class_prompts, text_embedding_cache
from .models import EfficientUNet
from .train import AUTOENCODERS, LazyTextEncoder, latent_decoder, unet_fn


def load_run(run: str | Path, ema: bool = True, device: str | torch.device = "cpu"):
    """A run directory (or its `checkpoint/`) -> (net, run config dict)."""
    run = Path(run)
    if run.name == "checkpoint":
        run = run.parent
    cfg_path, weights = run / "config.yaml", run / "checkpoint" / ("unet_ema" if ema else "unet")
    for path in (cfg_path, weights):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: {run} is not a run directory of `python -m snapgen.train`")
    return EfficientUNet.from_pretrained(weights).to(device).eval(), load_yaml(cfg_path)


@functools.lru_cache(maxsize=2)
def _text_encoder(name: str) -> LazyTextEncoder:
    return LazyTextEncoder(name)  # once per process: the evals call `generate` once per batch of prompts


@torch.no_grad()
def generate(net, run_cfg: dict, prompts: list[str], per_prompt: int, steps: int, cfg_scale: float, seed: int = 0,
             sampler: str = "euler") -> np.ndarray:
    """Rows of `per_prompt` samples for each prompt -> uint8 grid (rows*R, per_prompt*R, 3)."""
    train_cfg, device = run_cfg["train"], net.device
    # through the on-disk embedding cache: the encoder loads only on a miss (a GPU box can run on carried embeddings)
    emb = text_embedding_cache(prompts, _text_encoder(train_cfg["text_encoder"]))
    hidden, mask = emb["hidden"], emb["mask"]
    length = max(run_cfg["text_len"], int(mask.sum(1).max()))
    hidden = hidden[:, :length].to(device).repeat_interleave(per_prompt, 0)
    mask = mask[:, :length].to(device).repeat_interleave(per_prompt, 0)
    res, n = train_cfg["resolution"], len(prompts) * per_prompt
    autoencoder = train_cfg.get("autoencoder", "none")
    channels, factor = AUTOENCODERS[autoencoder]
    shape = (channels, res // factor, res // factor)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])
    kwargs = {"sampler": sampler} if train_cfg["objective"] == "flow" else {}
    objective = flow.get_objective(train_cfg["objective"], **kwargs)
    null = (torch.zeros_like(hidden), torch.ones_like(mask))
    x = objective.sample(unet_fn(net), noise.to(device), (hidden, mask), null, steps=steps, guidance=cfg_scale)
    x = latent_decoder(autoencoder, x.device)(x)
    img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    img = img.view(len(prompts), per_prompt, 3, res, res).permute(0, 3, 1, 4, 2)
    return img.reshape(len(prompts) * res, per_prompt * res, 3).numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="run directory of `python -m snapgen.train`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_name", help="one class of the run's dataset")
    which.add_argument("--prompt", help="any text (the model only knows its training prompts)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="euler", choices=["euler", "heun"])
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", default="grid.png")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, run_cfg = load_run(args.run, ema=not args.raw, device=device)
    names = run_cfg["class_names"]
    if args.class_name is not None and args.class_name not in names:
        p.error(f"unknown class {args.class_name!r}; this run's classes: {', '.join(names)}")
    chosen = [args.class_name] if args.class_name else names
    prompts = [args.prompt] if args.prompt else [ps[0] for ps in class_prompts(chosen)]
    grid = generate(net, run_cfg, prompts, args.n, args.steps, args.cfg, args.seed, args.sampler)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out}: {len(prompts)} prompt(s) x {args.n} samples, {args.steps} steps, cfg {args.cfg}")


if __name__ == "__main__":
    main()
