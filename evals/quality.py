"""Sample quality of a class-conditional run over a CFG grid (supplement H's protocol for Table 1 and Fig. 3).

Supplement H: "We report the lowest FID score for each model variant, using classifier-free guidance within a scale
range of [1.3, 2.0]. For the final model, we implement varied cfg in steps [10, 30] with cfg scaling from 1.1 to
5.4." `cfg_sweep` draws the same samples (noise seeded by global index, a random class name per draw) at every scale of
the grid, scores each set with one or more Fréchet-distance metrics against CIFAR-10 train, and returns every value,
the lowest per metric and its scale, and the varied-CFG value.

The metrics are named, so the caller (a sweep spec's `fid.metrics`) picks them: `QUALITY_METRICS` maps a name to
(label, loader); a loader returns a feature function (uint8 (N, H, W, 3) -> (N, D)) or raises `MetricUnavailable`
with the reason. `fid` is clean-fid's Inception (real FID); `fd_cifar` is the offline proxy of issue 16: the same
Fréchet distance in the penultimate features of the committed CIFAR-10 net (`evals.feature_net`,
`evals.fid.CifarFeatureSpace`). A proxy is never called FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import fid as fid_eval

FeatureFn = fid_eval.FeatureFn


class MetricUnavailable(RuntimeError):
    """A quality metric cannot be computed here (its weights or module are missing); the message says why."""


def _fid_loader() -> FeatureFn:
    try:
        return fid_eval.inception_feature_fn()
    except fid_eval.FIDWeightsMissing as error:
        raise MetricUnavailable(str(error).splitlines()[0]) from error


def _fd_cifar_loader() -> FeatureFn:
    """The committed CIFAR-10 net's features; `feature_id` (the weights' content hash) keys the reference cache."""
    try:
        space = fid_eval.CifarFeatureSpace()
    except (FileNotFoundError, RuntimeError, OSError) as error:
        raise MetricUnavailable(f"the CIFAR-10 feature net: {str(error).splitlines()[0]}") from error

    def features(images: np.ndarray) -> np.ndarray:
        return space.features(images)

    features.feature_id = f"fd_cifar-{space.feature_id}"
    return features


# name -> (label, loader). Labels say what the number is; only "fid" is FID.
QUALITY_METRICS: dict[str, tuple[str, Callable[[], FeatureFn]]] = {
    "fid": ("FID (clean-fid Inception, vs. CIFAR-10 train)", _fid_loader),
    "fd_cifar": ("FD-CIFAR: Fréchet distance in a CIFAR-10 feature net (an offline proxy, not FID)",
                 _fd_cifar_loader),
}


def load_metrics(names: Sequence[str]) -> tuple[dict[str, FeatureFn], dict[str, str]]:
    """({name: feature function} of the metrics that load, {name: why not} of the rest). Unknown names are errors."""
    unknown = [n for n in names if n not in QUALITY_METRICS]
    if unknown:
        raise ValueError(f"quality metrics {unknown} unknown; valid: {', '.join(QUALITY_METRICS)}")
    loaded, missing = {}, {}
    for name in names:
        try:
            loaded[name] = QUALITY_METRICS[name][1]()
        except MetricUnavailable as error:
            missing[name] = str(error)
    return loaded, missing


def cfg_key(scale: float) -> str:
    """The metric-name suffix of a guidance scale: 1.3 -> 'cfg1.3', 2.0 -> 'cfg2'."""
    return f"cfg{scale:g}"


def cfg_sweep(run_dir: str | Path, feature_fns: dict[str, FeatureFn], scales: Sequence[float], num_samples: int,
              sample_steps: int = 30, batch_size: int = 100, varied: dict[str, Any] | None = None,
              reference_limit: int | None = None, seed: int = 0,
              cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Score `num_samples` samples of a CIFAR-10 run at each guidance scale with each metric.

    Reference statistics come first (a failing feature net fails before any sampling). Samples are the same noise at
    every scale (seeded by global index), each with a random one of its class's names.
    Returns {"metrics": {<name>: lowest, <name>_best_cfg, <name>_cfg<s>: value, <name>_varied_cfg}, "notes": {<name>:
    text}, "num_samples", "reference"}.
    """
    from snapgen.flow import GuidanceSchedule
    from snapgen.runs import open_run

    if not scales:
        raise ValueError("cfg_sweep needs at least one guidance scale")
    run = open_run(run_dir)
    if run.train.get("data", "cifar10") != "cifar10":  # an ImageNet reference set is not wired in yet
        raise ValueError(f"cfg_sweep compares with CIFAR-10 train; {run_dir} trained on {run.train['data']!r}")
    reference, reference_name = fid_eval.cifar10_reference(run.resolution, reference_limit)
    # the reference cache is keyed by the feature extractor: its own id where it has one (the weights' hash)
    feature_ids = {name: getattr(fn, "feature_id", name) for name, fn in feature_fns.items()}
    for name, fn in feature_fns.items():
        fid_eval.reference_statistics(reference, fn, feature_ids[name], cache_dir)
    settings: list[tuple[str, Any]] = [(cfg_key(s), float(s)) for s in scales]
    if varied:
        settings.append(("varied_cfg", GuidanceSchedule.varied(**varied)))
    values: dict[str, dict[str, float]] = {name: {} for name in feature_fns}
    for key, guidance in settings:
        images = fid_eval.generate(run_dir, num_samples, sample_steps, guidance, batch_size, seed=seed,
                                   prompt_choice="random")
        for name, fn in feature_fns.items():
            values[name][key] = fid_eval.fid_of_images(images, reference, reference_name, fn, feature_ids[name],
                                                       cache_dir)["fid"]
    metrics: dict[str, float] = {}
    notes: dict[str, str] = {}
    for name, by_key in values.items():
        constant = {s: by_key[cfg_key(s)] for s in scales}
        best = min(constant, key=constant.get)
        metrics.update({f"{name}_{k}": v for k, v in by_key.items()})
        metrics[name], metrics[f"{name}_best_cfg"] = constant[best], float(best)
        label = QUALITY_METRICS.get(name, (name,))[0]
        notes[name] = (f"{label}: lowest over CFG {', '.join(f'{s:g}' for s in scales)} (at "
                       f"{best:g}), {num_samples} samples, {sample_steps} sampler steps, vs. {reference_name}"
                       + (f"; varied CFG {varied}: {by_key['varied_cfg']:.3f}" if varied else ""))
    return {"metrics": metrics, "notes": notes, "num_samples": num_samples, "reference": reference_name}


def evaluate(run_dir: str | Path, spec: dict[str, Any], feature_fns: dict[str, FeatureFn] | None = None
             ) -> tuple[dict[str, float], dict[str, str]]:
    """A sweep spec's quality block (`fid: {metrics, cfg_sweep, varied_cfg, num_samples, sample_steps, batch_size,
    reference_limit}`) on a run: (metrics, tags). Tags: `quality_metric` (the first metric computed), `quality_note`
    (what each metric is, or why it is missing) and `fid_note` (FID's own line). Nothing available: no metrics, and
    the tags say why, so tables print "—" with the reason.
    """
    names = list(spec.get("metrics") or ["fid"])
    if feature_fns is None:
        feature_fns, missing = load_metrics(names)
    else:
        missing = {n: "not given" for n in names if n not in feature_fns}
    tags: dict[str, str] = {}
    if not feature_fns:
        others = "; ".join(f"{n}: {w}" for n, w in missing.items() if n != "fid")  # FID's reason: fid_note
        tags["quality_note"] = f"no metric of {names} available, so no CFG sweep" + (f" ({others})" if others else "")
        tags["fid_note"] = f"missing: {missing.get('fid', 'not asked for (spec fid.metrics)')}"[:300]
        return {}, tags
    result = cfg_sweep(run_dir, feature_fns, [float(s) for s in spec.get("cfg_sweep") or [2.0]],
                       int(spec.get("num_samples", 1000)), int(spec.get("sample_steps", 30)),
                       int(spec.get("batch_size", 100)), spec.get("varied_cfg") or None,
                       spec.get("reference_limit"))
    computed = [n for n in names if n in feature_fns]
    tags["quality_metric"] = computed[0]
    tags["quality_note"] = "; ".join([result["notes"][n] for n in computed]
                                     + [f"{n} missing: {w}" for n, w in missing.items()])[:4000]
    tags["fid_note"] = (result["notes"]["fid"] if "fid" in computed else
                        f"missing: {missing.get('fid', 'not asked for (spec fid.metrics)')}")[:300]
    return result["metrics"], tags


__all__ = ["MetricUnavailable", "QUALITY_METRICS", "load_metrics", "cfg_key", "cfg_sweep", "evaluate"]
