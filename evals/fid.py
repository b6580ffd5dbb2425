"""FID with clean-fid (Parmar et al. 2022, "clean" mode): `python -m evals.fid CKPT_OR_IMAGE_DIR [--out DIR] [--n N]`.

The Inception network is clean-fid's own TorchScript port of the TF FID Inception, found through `snapgen.weights`
(entry `cleanfid_inception`): clean-fid alone only looks in a fixed temp directory and downloads. Without the file
`FIDWeightsMissing` says which file and where to put it, and the sweep logs the FID as missing.

Protocol (STYLE.md 9): reference statistics first (computed once per reference set and cached by content hash), then
generation, each sample seeded by its global index, then the Fréchet distance. CIFAR-10 runs are compared with the
CIFAR-10 train split at the run's resolution (the images it was trained on). The paper uses 50k samples; fewer give
a biased, higher FID, so the sample count is always reported with the number.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

FID_WEIGHTS = "cleanfid_inception"  # snapgen.weights entry: clean_fid/inception-2015-12-05.pt
CLEANFID_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W loads from its directory
MODE = "clean"  # clean-fid mode: PIL bicubic resize to 299 outside the network
FEATURE_DIM = 2048
PAPER_NUM_SAMPLES = 50_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> float (N, FEATURE_DIM)


class FIDWeightsMissing(RuntimeError):
    """The FID Inception weights were not found; the message names the file and where to put it."""


# ---- features and statistics ---------------------------------------------------------------------------------------


def make_feature_fn(model_fn: Callable[[torch.Tensor], torch.Tensor], device: str | torch.device = "cpu",
                    batch_size: int = 50) -> FeatureFn:
    """Wrap an Inception (`model_fn((B, 3, 299, 299) float in [0, 255]) -> (B, 2048)`) with clean-fid's resizer."""
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    resize = build_resizer(MODE)

    def feature_fn(images: np.ndarray) -> np.ndarray:
        feats = []
        for i in range(0, len(images), batch_size):
            batch = np.stack([resize(img) for img in images[i: i + batch_size]])  # (B, 299, 299, 3) float 0..255
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()  # (B, 3, 299, 299)
            feats.append(get_batch_features(x, model_fn, device))
        return np.concatenate(feats).astype(np.float64)

    return feature_fn


def inception_feature_fn(device: str | torch.device | None = None, batch_size: int = 50) -> FeatureFn:
    """clean-fid's Inception (TorchScript) with weights from `snapgen.weights`; `FIDWeightsMissing` if absent."""
    from snapgen import weights

    try:
        path = Path(weights.find(FID_WEIGHTS))
    except weights.WeightsNotFoundError as error:
        raise FIDWeightsMissing(f"FID needs clean-fid's Inception weights; {error}") from error
    if path.name != CLEANFID_FILE:
        raise FIDWeightsMissing(f"found {path}, but clean-fid loads a file named {CLEANFID_FILE}: link it as "
                                f"{path.parent / CLEANFID_FILE}")
    from cleanfid.inception_torchscript import InceptionV3W

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
    return make_feature_fn(model, device, batch_size)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D)."""
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative round-off eigenvalues clipped to 0)."""
    eigval, eigvec = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvec * np.sqrt(np.clip(eigval, 0, None))) @ eigvec.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Tr((S1 S2)^1/2) is the sum of the square roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric PSD, similar
    to S1 S2), which stays real and finite for the rank-deficient covariances of few samples, where clean-fid's
    `scipy.linalg.sqrtm` of the non-symmetric product fails ("Imaginary component"). For full-rank covariances the
    two agree (tested).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_covmean = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def _content_key(images: np.ndarray, feature_id: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(images.shape), str(images.dtype), feature_id, MODE]).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:20]


def reference_statistics(images: np.ndarray, feature_fn: FeatureFn, feature_id: str,
                         cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of reference images uint8 (N, H, W, 3), cached by the hash of (pixels, feature extractor)."""
    from snapgen.data import cache_root

    path = Path(cache_dir or cache_root() / "fid_stats") / f"{_content_key(images, feature_id)}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    mu, sigma = statistics(feature_fn(images))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, num_images=len(images))
    tmp.replace(path)
    return mu, sigma


def cifar10_reference(resolution: int, limit: int | None = None) -> tuple[np.ndarray, str]:
    """CIFAR-10 train as uint8 (N, R, R, 3), resized as training resized it; and its description."""
    from snapgen.data import load_cifar10, to_model_range

    images, _, _ = load_cifar10("train", limit=limit)
    if resolution != images.shape[1]:
        x = to_model_range(images, resolution)  # (N, 3, R, R) in [-1, 1]
        images = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, f"CIFAR-10 train ({len(images)} images at {resolution}x{resolution})"


# ---- generation ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(run_dir: str | Path, num_samples: int, sample_steps: int = 30, guidance: Any = 2.0,
             batch_size: int = 100, seed: int = 0, device: str | torch.device | None = None,
             prompt_choice: str = "first") -> np.ndarray:
    """Class-conditional samples of a run's EMA net through the one sampler (`snapgen.sampling`): sample i has class
    i mod K and the noise of global index i; pixel or latent runs decoded by the run's autoencoder. `guidance`: a
    scale or a `snapgen.flow.GuidanceSchedule`.

    `prompt_choice`: "first" (the class's first name) or "random" (one of its names, drawn from (seed, i): supplement
    H picks a class name at random "during both training and inference").

    Returns:
        uint8 (num_samples, R, R, 3).
    """
    from snapgen import flow, sampling
    from snapgen.conditioning import unet_fn
    from snapgen.data import class_prompts
    from snapgen.runs import open_run

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
    run = open_run(run_dir)
    if not run.class_names:
        raise ValueError(f"{run_dir} records no class names; generate the images yourself and pass their folder")
    if prompt_choice not in ("first", "random"):
        raise ValueError(f"prompt_choice={prompt_choice!r}; valid: 'first', 'random'")
    names = class_prompts(run.class_names)

    def prompt(i: int) -> str:
        choices = names[i % len(names)]
        return choices[0] if prompt_choice == "first" else choices[np.random.default_rng([seed, i]).integers(
            len(choices))]

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net, objective = run.net(ema=True, device=device), flow.get_objective(run.objective)
    out = []
    for start in range(0, num_samples, batch_size):
        index = list(range(start, min(start + batch_size, num_samples)))
        cond, uncond = sampling.prompt_conditions([prompt(i) for i in index], run.text_encoder, 1,
                                                  device, run.text_len)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x = sampling.sample(unet_fn(net), objective, index, run.latent_shape, cond, uncond, steps=sample_steps,
                                guidance=guidance, seed=seed, decode=run.decode_fn(device), device=device)
        out.append(sampling.to_uint8(x))
    return np.concatenate(out)


def load_image_dir(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Every image in a folder (sorted by name) as uint8 (N, H, W, 3); they must share one size."""
    from PIL import Image

    if not Path(path).is_dir():
        raise FileNotFoundError(f"no images in {path}: not a folder (nor a run directory with config.yaml)")
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise FileNotFoundError(f"no images in {path} ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


# ---- FID of a run or a folder ------------------------------------------------------------------------------------------


def fid_of_images(images: np.ndarray, reference: np.ndarray, reference_name: str, feature_fn: FeatureFn,
                  feature_id: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    mu_ref, sigma_ref = reference_statistics(reference, feature_fn, feature_id, cache_dir)
    mu, sigma = statistics(feature_fn(images))
    return {"fid": frechet_distance(mu, sigma, mu_ref, sigma_ref), "num_samples": len(images), "mode": MODE,
            "reference": reference_name, "feature_extractor": feature_id}


def fid_of_run(run_dir: str | Path, num_samples: int, sample_steps: int = 30, guidance: float = 2.0,
               batch_size: int = 100, feature_fn: FeatureFn | None = None, feature_id: str = FID_WEIGHTS,
               reference_limit: int | None = None, cache_dir: str | Path | None = None,
               samples_out: str | Path | None = None) -> dict[str, Any]:
    """FID of `num_samples` samples of a CIFAR-10 training run against CIFAR-10 train at the run's resolution.

    The feature extractor and reference statistics come first, so missing weights fail before any sampling.
    """
    from snapgen.runs import open_run

    feature_fn = feature_fn or inception_feature_fn()
    run = open_run(run_dir)
    if run.train.get("data", "cifar10") != "cifar10":
        raise ValueError(f"FID of a run compares with CIFAR-10 train; {run_dir} trained on {run.train['data']!r}: "
                         f"generate its images and pass a folder")
    reference, reference_name = cifar10_reference(run.resolution, reference_limit)
    reference_statistics(reference, feature_fn, feature_id, cache_dir)
    images = generate(run_dir, num_samples, sample_steps, guidance, batch_size)
    if samples_out is not None:
        Path(samples_out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(samples_out, images=images)
    return fid_of_images(images, reference, reference_name, feature_fn, feature_id, cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.fid", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a training run directory (snapgen.train --out) or a folder of images")
    parser.add_argument("--out", default=None, help="writes fid.json here (default: the run dir, or cwd)")
    parser.add_argument("--n", type=int, default=PAPER_NUM_SAMPLES, help="samples to generate (paper: 50k)")
    parser.add_argument("--steps", type=int, default=30, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--reference-resolution", type=int, default=None,
                        help="image folders: CIFAR-10 train resized to this (default: the images' size)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = parser.parse_args(argv)
    for option, value in (("--n", args.n), ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{option} {value}: must be >= 1")
    if args.reference_resolution is not None and args.reference_resolution < 1:
        raise ValueError(f"--reference-resolution {args.reference_resolution}: must be >= 1")
    path = Path(args.path)
    if not (path / "config.yaml").is_file():  # an image folder: an empty one fails before the weights load
        load_image_dir(path, 1)
    try:
        feature_fn = inception_feature_fn()
    except FIDWeightsMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if (path / "config.yaml").is_file():
        result = fid_of_run(path, args.n, args.steps, args.guidance, args.batch_size, feature_fn)
    else:
        images = load_image_dir(path, args.n)
        reference, name = cifar10_reference(args.reference_resolution or images.shape[1])
        result = fid_of_images(images, reference, name, feature_fn, FID_WEIGHTS)
    if result["num_samples"] < PAPER_NUM_SAMPLES:
        result["note"] = f"{result['num_samples']} samples; the paper's protocol uses {PAPER_NUM_SAMPLES}"
    out = Path(args.out or (path if (path / "config.yaml").is_file() else "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid.json").write_text(json.dumps(result, indent=2))
    print(f"FID {result['fid']:.3f} ({result['num_samples']} samples vs. {result['reference']}, clean-fid "
          f"{MODE}); written to {out / 'fid.json'}")
    return 0


if __name__ == "__main__":
    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
