"""The one sampler. Every consumer (training grids, `snapgen.sample`, `SnapGenPipeline`, `evals.*`, step
distillation) draws samples here.

Each sample is seeded by its global index (DiT's `sample_ddp.py`): sample i starts from the noise of generator
`seed * NOISE_SEED_STRIDE + i`, so an image does not depend on the batch it was drawn in, the batch size or the
number of GPUs. What the net generates (pixels, or an autoencoder's latents) is decoded by the run's own autoencoder.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import flow
from .conditioning import PromptConditioning, unet_fn

# torch's CPU generator keeps only the low 32 bits of a seed, so (seed, index) -> seed * stride + index (mod 2^32):
# distinct for every index below the stride within a seed.
NOISE_SEED_STRIDE = 1_000_003
MIN_TILE = 256  # grid tiles are upscaled (nearest, by an integer) to at least this many pixels: a 16 px sample is
MAX_GRID_WIDTH = 2048  # viewable; a row of many tiles is kept within this width (smaller tiles, never below 1x)
MAX_LABEL_CHARS = 40  # longer row labels (prompts) are cut with an ellipsis


def initial_noise(indices: Sequence[int], shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """(N, *shape) float32 unit Gaussian noise on the CPU, sample k from the generator of (seed, indices[k])."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed((seed * NOISE_SEED_STRIDE + i) % 2**32))
                        for i in indices])


def _rows(cond: Any, part: slice) -> Any:
    if isinstance(cond, torch.Tensor):
        return cond[part]
    if isinstance(cond, (tuple, list)):
        return type(cond)(_rows(c, part) for c in cond)
    return cond


@torch.no_grad()
def sample(net_fn: flow.NetFn, objective, indices: Sequence[int], shape: Sequence[int], cond: Any, uncond: Any, *,
           steps: int, guidance: float | flow.GuidanceSchedule = 1.0, seed: int = 0, batch_size: int | None = None,
           decode: Callable[[torch.Tensor], torch.Tensor] | None = None, noise: torch.Tensor | None = None,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Samples of `net_fn` from the noise of global `indices` under `objective`'s sampler.

    Args:
        cond, uncond: per-sample conditions (tensors or tuples of tensors with leading dim len(indices)).
        shape: (C, h, w) of what the net generates. decode: that -> images in [-1, 1] (None: keep it as it is).
        noise: the initial noise (N, *shape) instead of the seeded noise of `indices`.
    Returns:
        (N, ...) float32 on the CPU: decoded images (clamped to [-1, 1]), or the raw samples without `decode`.
    """
    indices = list(indices)
    if not indices:
        raise ValueError("no samples asked for (0 indices)")
    batch_size = batch_size or len(indices)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    out = []
    for start in range(0, len(indices), batch_size):
        part = slice(start, start + batch_size)
        x0 = noise[part] if noise is not None else initial_noise(indices[part], shape, seed)
        x = objective.sample(net_fn, x0.to(device), _rows(cond, part), _rows(uncond, part), steps=steps,
                             guidance=guidance)
        if decode is not None:
            x = decode(x).float().clamp(-1, 1)
        out.append(x.float().cpu())
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid_scale(height: int, width: int, columns: int, min_tile: int = MIN_TILE,
               max_width: int = MAX_GRID_WIDTH) -> int:
    """The integer (nearest) upscale of a grid's tiles: tiles of >= `min_tile` px, unless `columns` of them would
    pass `max_width`; never below 1."""
    return max(1, min(-(-min_tile // min(height, width)), max_width // (columns * width)))


def grid(images: np.ndarray, columns: int, labels: Sequence[str] | None = None, min_tile: int = MIN_TILE,
         max_width: int = MAX_GRID_WIDTH):
    """uint8 (N, H, W, 3) -> a PIL image for people: rows of `columns` tiles, each upscaled (nearest, `grid_scale`)
    to >= `min_tile` px, with one label per row on its left when `labels` is given (cut at `MAX_LABEL_CHARS`)."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = images.shape
    scale = grid_scale(h, w, columns, min_tile, max_width)
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w, 3), np.uint8)
    padded[:n] = images
    body = padded.reshape(rows, columns, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, 3)
    body = Image.fromarray(body).resize((columns * w * scale, rows * h * scale), Image.NEAREST)
    if not labels:
        return body
    texts = [str(label) if len(str(label)) <= MAX_LABEL_CHARS else str(label)[:MAX_LABEL_CHARS - 1] + "…"
             for label in labels[:rows]]
    size = max(12, min(28, h * scale // 8))  # readable beside a tile of this size
    font = ImageFont.load_default(size=size)  # Pillow without FreeType: its bitmap font, size ignored
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = size // 2
    margin = int(max(measure.textlength(text, font=font) for text in texts)) + 2 * pad
    canvas = Image.new("RGB", (margin + body.width, body.height), "white")
    canvas.paste(body, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(texts):
        draw.text((pad, r * h * scale + h * scale // 2), text, fill="black", font=font, anchor="lm")
    return canvas


def prompt_conditions(prompts: Sequence[str], text_encoder: str, per_prompt: int, device, text_len: int = 0):
    """(cond, uncond) for `per_prompt` samples of each prompt, prompt-major."""
    conditioning = PromptConditioning(list(prompts), text_encoder, device, length=text_len)
    idx = torch.arange(len(prompts), device=device).repeat_interleave(per_prompt)
    return conditioning(idx), conditioning.null(len(idx))


def generate(run, prompts: Sequence[str], per_prompt: int = 1, *, steps: int = 30, guidance: float = 2.0,
             seed: int = 0, first_index: int = 0, sampler: str = "euler", batch_size: int = 16, ema: bool = True,
             device: torch.device | str | None = None, net: torch.nn.Module | None = None) -> np.ndarray:
    """`per_prompt` images of each prompt from a run (`snapgen.runs.Run`), sample j of prompt p with global index
    `first_index + p * per_prompt + j`. Returns uint8 (len(prompts), per_prompt, R, R, 3)."""
    if per_prompt < 1:
        raise ValueError(f"per_prompt={per_prompt} must be >= 1")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net if net is not None else run.net(ema=ema, device=device)
    kwargs = {"sampler": sampler} if run.objective == "flow" else {}
    objective = flow.get_objective(run.objective, **kwargs)
    cond, uncond = prompt_conditions(prompts, run.text_encoder, per_prompt, device, run.text_len)
    n = len(prompts) * per_prompt
    bf16 = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        x = sample(unet_fn(net), objective, range(first_index, first_index + n), run.latent_shape, cond, uncond,
                   steps=steps, guidance=guidance, seed=seed, batch_size=batch_size, decode=run.decode_fn(device),
                   device=device)
    images = to_uint8(x)
    return images.reshape(len(prompts), per_prompt, *images.shape[1:])


__all__ = ["NOISE_SEED_STRIDE", "initial_noise", "sample", "to_uint8", "grid_scale", "grid", "prompt_conditions",
           "generate"]
