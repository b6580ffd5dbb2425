"""FID with clean-fid (Parmar et al. 2022, "clean" mode), or its offline proxy in the features of our own CIFAR-10 net:
`python -m evals.fid CKPT_OR_IMAGE_DIR [--out DIR] [--n N] [--features inception|cifar10]`.

The Inception network is clean-fid's own TorchScript port of the TF FID Inception, found through `snapgen.weights`
(entry `cleanfid_inception`): clean-fid alone only looks in a fixed temp directory and downloads. Without the file
`FIDWeightsMissing` says which file and where to put it, and the sweep logs the FID as missing.

Protocol (STYLE.md 9): reference statistics first (computed once per reference set and cached by content hash), then
generation, each sample seeded by its global index, then the Fréchet distance. CIFAR-10 runs are compared with the
CIFAR-10 train split at the run's resolution (the images it was trained on). The paper uses 50k samples; fewer give
a biased, higher FID, so the sample count is always reported with the number.

`--features cifar10` (the offline proxy; never called FID): the same sampler, seeding, reference caching and Fréchet
code, in the penultimate features of the CIFAR-10 ResNet of `evals.feature_net` (committed weights, test accuracy in
its record). It reports `fd_cifar` (Fréchet distance in those features), `kid_cifar` (KID: torchmetrics' unbiased
polynomial-kernel MMD over subsets, usable at small sample counts) and, for a run's class-conditional samples,
`class_acc` (how often the net classifies sample i as the class it was asked for). Samples are resized to 32x32
(bilinear, antialiased) and compared with CIFAR-10 train at 32x32. `--guidance` takes several scales: each is
sampled and scored, and the best FD-CIFAR is reported with its scale (the supplement's CFG sweep).
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
FEATURE_SPACES = ("inception", "cifar10")
CIFAR_DEFAULT_NUM_SAMPLES = 10_000  # the size of CIFAR-10's test split
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 0  # torchmetrics' (and clean-fid's) defaults; a fixed seed
PROXY_NOTE = ("FD-CIFAR / KID-CIFAR / class accuracy in the features of our own CIFAR-10 ResNet (evals.feature_net): "
              "an offline proxy, not FID")
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
                         cache_dir: str | Path | None = None, with_features: bool = False):
    """Statistics (mu, sigma) of reference images uint8 (N, H, W, 3), cached by the hash of (pixels, feature
    extractor); with `with_features`, (mu, sigma, features) with the features kept in the cache too (KID needs them;
    only for small feature spaces: 50k x 2048 Inception features would be 800 MB)."""
    from snapgen.data import cache_root

    path = Path(cache_dir or cache_root() / "fid_stats") / f"{_content_key(images, feature_id)}.npz"
    if path.is_file():
        with np.load(path) as f:
            if not with_features:
                return f["mu"], f["sigma"]
            if "features" in f.files:
                return f["mu"], f["sigma"], f["features"]
    features = feature_fn(images)
    mu, sigma = statistics(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    extra = {"features": features.astype(np.float32)} if with_features else {}
    np.savez(tmp, mu=mu, sigma=sigma, num_images=len(images), **extra)
    tmp.replace(path)
    return (mu, sigma, features.astype(np.float32)) if with_features else (mu, sigma)


def kernel_distance(features: np.ndarray, reference_features: np.ndarray, device: str | torch.device = "cpu") -> float:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over `KID_SUBSETS`
    subsets of up to `KID_SUBSET_SIZE` samples of each side, in float64: torchmetrics' `poly_mmd` (the kernel and
    unbiased estimator of its KernelInceptionDistance), with the subsets drawn from a fixed seed so a number is
    reproducible. Unbiased: about 0 (either sign) for two samples of one distribution, at any sample count."""
    from torchmetrics.image.kid import poly_mmd

    x = torch.as_tensor(np.asarray(features), dtype=torch.float64, device=device)
    y = torch.as_tensor(np.asarray(reference_features), dtype=torch.float64, device=device)
    m = min(len(x), len(y), KID_SUBSET_SIZE)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side; got {len(x)} and {len(y)}")
    generator = torch.Generator().manual_seed(KID_SEED)
    values = [poly_mmd(y[torch.randperm(len(y), generator=generator)[:m].to(device)],
                       x[torch.randperm(len(x), generator=generator)[:m].to(device)]) for _ in range(KID_SUBSETS)]
    return float(torch.stack(values).mean())


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


# ---- the offline proxy: FD-CIFAR, KID-CIFAR and class accuracy in our CIFAR-10 net's features ------------------------


class CifarFeatureSpace:
    """The committed CIFAR-10 net (`evals.feature_net`) as a feature space: `features(images)` for the reference
    cache, `predict(images)` -> (features, logits) for samples; `feature_id` names the weights file's content."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device | None = None):
        from evals.feature_net import load_feature_net

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net, self.record = load_feature_net(weights, self.device)
        self.feature_id = self.record["feature_id"]
        self.class_names = list(self.record.get("class_names") or [])

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from evals.feature_net import predict

        return predict(self.net, images, device=self.device)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)[0]

    def describe(self) -> str:
        accuracy = self.record.get("test_accuracy")
        where = f"test accuracy {100 * accuracy:.1f}%" if accuracy is not None else "test accuracy not recorded"
        return f"{self.feature_id} ({where}, {Path(self.record['weights']).name})"


def cifar_metrics_of_images(images: np.ndarray, reference: np.ndarray, reference_name: str,
                            space: CifarFeatureSpace, labels: np.ndarray | None = None,
                            cache_dir: str | Path | None = None) -> dict[str, Any]:
    """`fd_cifar` (the FID formula, `frechet_distance`, in the net's features), `kid_cifar` (`kernel_distance`) and,
    given the class each image was asked for (`labels`, the net's class indices), `class_acc`."""
    mu_ref, sigma_ref, reference_features = reference_statistics(reference, space.features, space.feature_id,
                                                                 cache_dir, with_features=True)
    features, logits = space.predict(images)
    mu, sigma = statistics(features)
    return {"fd_cifar": frechet_distance(mu, sigma, mu_ref, sigma_ref),
            "kid_cifar": kernel_distance(features, reference_features, space.device),
            "class_acc": None if labels is None else float((logits.argmax(1) == np.asarray(labels)).mean()),
            "num_samples": len(images), "reference": reference_name, "feature_extractor": space.describe(),
            "metric_note": PROXY_NOTE}


def run_class_labels(class_names: list[str], space: CifarFeatureSpace, num_samples: int) -> np.ndarray | None:
    """The net's class index of each sample of `generate` (sample i asks for class i mod K of the run), or None when
    the run's classes are not the net's."""
    index = {name: i for i, name in enumerate(space.class_names)}
    if not class_names or any(name not in index for name in class_names):
        return None
    return np.asarray([index[class_names[i % len(class_names)]] for i in range(num_samples)])


def cfg_at_edge(best: float, guidances) -> bool:
    """Whether the best scale of a sweep of two or more is its lowest or highest: the optimum may lie outside the grid,
    so a wider one may score better (the supplement's [1.3, 2.0] can end before an undertrained net's best)."""
    grid = sorted(float(g) for g in guidances)
    return len(grid) > 1 and float(best) in (grid[0], grid[-1])


def cifar_metrics_of_run(run_dir: str | Path, num_samples: int, sample_steps: int = 30,
                         guidances: tuple[float, ...] | list[float] = (2.0,), batch_size: int = 100,
                         space: CifarFeatureSpace | None = None, reference_limit: int | None = None,
                         cache_dir: str | Path | None = None) -> dict[str, Any]:
    """FD-CIFAR, KID-CIFAR and class accuracy of a CIFAR-10 run's samples at each guidance scale (the same samples'
    noise at every scale: sample i is seeded by its index), and the best scale by FD-CIFAR (lowest), as the
    supplement reports the best FID of its CFG sweep. Returns the best scale's metrics with `cfg_best` and
    `per_guidance` (every scale's)."""
    from snapgen.runs import open_run

    if not guidances:
        raise ValueError("no guidance scale given")
    space = space or CifarFeatureSpace()  # missing weights fail here, before any sampling
    run = open_run(run_dir)
    if run.train.get("data", "cifar10") != "cifar10":
        raise ValueError(f"FD-CIFAR of a run compares with CIFAR-10 train; {run_dir} trained on {run.train['data']!r}")
    reference, reference_name = cifar10_reference(32, reference_limit)
    reference_statistics(reference, space.features, space.feature_id, cache_dir, with_features=True)
    labels = run_class_labels(list(run.class_names or []), space, num_samples)
    per_guidance = []
    for guidance in guidances:
        images = generate(run_dir, num_samples, sample_steps, float(guidance), batch_size, device=space.device)
        metrics = cifar_metrics_of_images(images, reference, reference_name, space, labels, cache_dir)
        per_guidance.append({"guidance": float(guidance), **metrics})
    best = min(per_guidance, key=lambda m: m["fd_cifar"])
    return {**best, "cfg_best": best["guidance"], "cfg_at_edge": cfg_at_edge(best["guidance"], guidances),
            "sample_steps": sample_steps,
            "per_guidance": [{k: m[k] for k in ("guidance", "fd_cifar", "kid_cifar", "class_acc")}
                             for m in per_guidance]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.fid", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a training run directory (snapgen.train --out) or a folder of images")
    parser.add_argument("--out", default=None, help="writes fid.json (fd_cifar.json with --features cifar10) here "
                                                    "(default: the run dir, or cwd)")
    parser.add_argument("--features", default="inception", choices=FEATURE_SPACES,
                        help="inception: FID (clean-fid's Inception weights); cifar10: the offline proxy FD-CIFAR, "
                             "KID-CIFAR and class accuracy in our CIFAR-10 net's features (evals.feature_net)")
    parser.add_argument("--feature-weights", default=None, help="--features cifar10: another weights file")
    parser.add_argument("--n", type=int, default=None, help=f"samples to generate (default {PAPER_NUM_SAMPLES}, the "
                                                            f"paper's; {CIFAR_DEFAULT_NUM_SAMPLES} for cifar10)")
    parser.add_argument("--steps", type=int, default=30, help="sampler steps")
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0],
                        help="classifier-free guidance scale; with --features cifar10 several (a CFG sweep, e.g. "
                             "1.3 1.65 2.0): the best FD-CIFAR is reported with its scale")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--reference-resolution", type=int, default=None,
                        help="image folders: CIFAR-10 train resized to this (default: the images' size)")
    parser.add_argument("--reference-limit", type=int, default=None,
                        help="--features cifar10: only this many CIFAR-10 train images as the reference (a quick "
                             "CPU check; recorded in the output)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = parser.parse_args(argv)
    cifar = args.features == "cifar10"
    args.n = args.n if args.n is not None else (CIFAR_DEFAULT_NUM_SAMPLES if cifar else PAPER_NUM_SAMPLES)
    for option, value in (("--n", args.n), ("--steps", args.steps), ("--batch-size", args.batch_size),
                          ("--reference-limit", args.reference_limit or 1)):
        if value < 1:
            raise ValueError(f"{option} {value}: must be >= 1")
    if args.reference_resolution is not None and args.reference_resolution < 1:
        raise ValueError(f"--reference-resolution {args.reference_resolution}: must be >= 1")
    if len(args.guidance) > 1 and not cifar:
        raise ValueError("several --guidance values (a CFG sweep) are supported with --features cifar10 only")
    if not cifar and (args.feature_weights or args.reference_limit):
        raise ValueError("--feature-weights and --reference-limit apply to --features cifar10 only")
    path = Path(args.path)
    is_run = (path / "config.yaml").is_file()
    if not is_run:  # an image folder: an empty one fails before the weights load
        load_image_dir(path, 1)
    out = Path(args.out or (path if is_run else "."))
    if cifar:
        return _main_cifar(args, path, is_run, out)
    from snapgen import weights
    from snapgen.runs import open_run

    run_files = open_run(path).weight_entries() if is_run else ()
    try:  # every file at once (Inception, CIFAR-10, the run's own), before any work
        weights.require([*weights.command_files("fid"), *run_files], "FID", command=None if run_files else "fid")
        feature_fn = inception_feature_fn()
    except (FIDWeightsMissing, weights.WeightsNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if is_run:
        result = fid_of_run(path, args.n, args.steps, args.guidance[0], args.batch_size, feature_fn)
    else:
        images = load_image_dir(path, args.n)
        reference, name = cifar10_reference(args.reference_resolution or images.shape[1])
        result = fid_of_images(images, reference, name, feature_fn, FID_WEIGHTS)
    if result["num_samples"] < PAPER_NUM_SAMPLES:
        result["note"] = f"{result['num_samples']} samples; the paper's protocol uses {PAPER_NUM_SAMPLES}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid.json").write_text(json.dumps(result, indent=2))
    print(f"FID {result['fid']:.3f} ({result['num_samples']} samples vs. {result['reference']}, clean-fid "
          f"{MODE}); written to {out / 'fid.json'}")
    return 0


def _main_cifar(args: argparse.Namespace, path: Path, is_run: bool, out: Path) -> int:
    from evals.feature_net import FeatureNetMissing

    try:
        space = CifarFeatureSpace(args.feature_weights)
    except FeatureNetMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if is_run:
        result = cifar_metrics_of_run(path, args.n, args.steps, args.guidance, args.batch_size, space,
                                      args.reference_limit)
    else:
        images = load_image_dir(path, args.n)
        result = cifar_metrics_of_images(images, *cifar10_reference(32, args.reference_limit), space)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fd_cifar.json").write_text(json.dumps(result, indent=2))
    cfg = f", best CFG {result['cfg_best']:g} of {', '.join(f'{g:g}' for g in args.guidance)}" if is_run else ""
    if is_run and result.get("cfg_at_edge"):
        cfg += " (the grid's edge: a wider grid may score better)"
    acc = f", class_acc {100 * result['class_acc']:.1f}%" if result.get("class_acc") is not None else ""
    print(f"fd_cifar {result['fd_cifar']:.3f}, kid_cifar {result['kid_cifar']:.5f}{acc} ({result['num_samples']} "
          f"samples vs. {result['reference']}{cfg}; features {result['feature_extractor']}; a proxy, not FID); "
          f"written to {out / 'fd_cifar.json'}")
    return 0


if __name__ == "__main__":
    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
