"""Trials of stages other than the UNet: a spec with `stage: step_distill | decoder` and `arms: {name: overrides}`
(`ablations/specs/adversarial_*.yaml`) makes one trial per arm; `ablations.trial.run_trial` hands them here.

- `step_distill`: the scale's `student` block (`snapgen.train.make_config` fields) trains, or reuses, one student run
  shared by every arm (`<out_root>/<sweep>/student-<hash>/`), the `teacher` block sizes the small teacher
  (`snapgen.teachers.load_teacher('small')`, cached), and each arm distils it (`snapgen.step_distill.step_distill`,
  `train` + the arm's `StepDistillConfig` fields). Metrics: the few-step evaluation (MSE to the teacher's 30-step
  samples at each of `eval_steps`, and the student before distillation), the last record's D diagnostics.
- `decoder`: each arm trains the tiny decoder (`snapgen.train_decoder.make_config(scale, train + arm)`) and evaluates
  it (`train_decoder.evaluate`: PSNR, SSIM, LPIPS where its backbone is found) on the CIFAR-10 test split upsampled to
  `eval.resolution`, and on the photos of `$SNAPGEN_PHOTOS` when that folder is set (`*_photos`).

Results have the shape `run_trial` returns (metrics, history, tags, params, artifacts, out), so `--no-tracking` +
`ingest` and live tracking (`snapgen.tracking.LiveRun`) work as for the UNet sweeps.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from snapgen.config import flatten, stable_hash

STAGES = ("step_distill", "decoder")
# per-step curves logged beside the final metrics (the D accuracy curves of the ablation)
HISTORY = {
    "step_distill": ("d_loss", "d_acc_real", "d_acc_fake", "d_logit_real", "d_logit_fake", "g_loss", "g_task",
                     "g_adv", "g_adv_grad_ratio"),
    "decoder": ("train_loss", "train_mse", "train_d_loss", "train_d_acc_real", "train_d_acc_fake",
                "train_d_logit_real", "train_d_logit_fake", "train_adv_grad_ratio", "val_psnr"),
}
D_PREFIX = {"step_distill": "d_", "decoder": "train_d_"}


def _tuples(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def stage_config(trial: dict[str, Any]):
    """The arm's options dataclass (checked: a bad value fails here, before any trial trains)."""
    stage, overrides = trial["stage"], _tuples({**(trial.get("train") or {}), **(trial.get("arm") or {})})
    if stage == "decoder":
        from snapgen.train_decoder import make_config

        return make_config(trial["scale"], seed=int(trial["seed"]), **overrides)
    if stage == "step_distill":
        from snapgen.config import preset_config
        from snapgen.step_distill import StepDistillConfig

        student_config(trial)  # the shared student's options are checked up front too
        return preset_config(StepDistillConfig, {"default": {}}, "default", {"seed": int(trial["seed"]), **overrides},
                             "step distillation options")
    raise ValueError(f"stage={stage!r}; valid stages: {', '.join(STAGES)}")


def student_config(trial: dict[str, Any]):
    from snapgen.train import make_config

    return make_config(trial["scale"], **_tuples(trial.get("student") or {}))


def _student_run(trial: dict[str, Any], progress: bool) -> Path:
    """The arms' shared student (trained once; a rerun resumes or reuses it)."""
    from snapgen.train import train

    cfg = student_config(trial)
    out = Path(trial.get("_out_root") or "runs/sweeps") / trial["sweep"] / f"student-{stable_hash(dataclasses.asdict(cfg))}"
    train(cfg, out, progress=progress)
    return out


def _last(records: list[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for record in records:
        last.update(record)
    return last


def _d_summary(records: list[dict[str, Any]], prefix: str) -> dict[str, float | None]:
    """D's balanced accuracy at its last record and averaged over the last quarter of its records."""
    accs = [(r[prefix + "acc_real"] + r[prefix + "acc_fake"]) / 2 for r in records if prefix + "acc_real" in r]
    if not accs:
        return {"d_acc_balanced": None, "d_acc_balanced_late": None}
    late = accs[-max(1, len(accs) // 4):]
    return {"d_acc_balanced": accs[-1], "d_acc_balanced_late": sum(late) / len(late)}


def _feature_space(tags: dict):
    """The committed CIFAR-10 feature net (`evals.fid.CifarFeatureSpace`), or None with a warning and the reason in
    the tag `fd_cifar_note` when its weights are missing."""
    import warnings

    from evals import fid as fid_eval
    from evals.feature_net import FeatureNetMissing

    try:
        return fid_eval.CifarFeatureSpace()
    except FeatureNetMissing as error:
        warnings.warn(str(error))
        tags["fd_cifar_note"] = f"missing: {str(error)[:300]}"
        return None


def _few_step_fd_cifar(trial: dict[str, Any], cfg, out: Path, metrics: dict, tags: dict) -> None:
    """The spec's `fd_cifar` block for a distilled student: FD-CIFAR, KID-CIFAR and class accuracy (issue 16's offline
    proxy, not FID) of its samples at each of `steps` (default: the stage's eval_steps) into `metrics`
    (`fd_cifar_<n>`, `kid_cifar_<n>`, `class_acc_<n>`) and `<out>/fd_cifar_<n>.json`; guidance `cfg.eval_cfg`, as
    the few-step MSE uses. A missing feature net leaves them out with a warning and the reason in `fd_cifar_note`."""
    spec = trial.get("fd_cifar") or {}
    if not spec.get("enabled"):
        return
    import json

    from evals import fid as fid_eval

    space = _feature_space(tags)
    if space is None:
        return
    for n in spec.get("steps") or cfg.eval_steps:
        result = fid_eval.cifar_metrics_of_run(out, num_samples=int(spec.get("num_samples", 1000)),
                                               sample_steps=int(n), guidances=[float(cfg.eval_cfg)],
                                               batch_size=int(spec.get("batch_size", 250)), space=space,
                                               reference_limit=spec.get("reference_limit"))
        metrics.update({f"{k}_{n}": result[k] for k in ("fd_cifar", "kid_cifar", "class_acc")})
        (out / f"fd_cifar_{n}.json").write_text(json.dumps(result, indent=1))
        tags["fd_cifar_note"] = (f"{fid_eval.PROXY_NOTE}; {result['num_samples']} samples at guidance "
                                 f"{cfg.eval_cfg:g} vs. {result['reference']}; features {result['feature_extractor']}")


def _reconstruction_fd_cifar(images: dict, suffix: str, metrics: dict, tags: dict) -> None:
    """FD-CIFAR and KID-CIFAR (issue 16's offline proxy, not FID) of a decoder's reconstructions against the held-out
    images they reconstruct: how far the decoder moves them in the CIFAR-10 net's features, where PSNR only counts
    pixels. Into `fd_cifar_rec<suffix>`, `kid_cifar_rec<suffix>`."""
    from evals import fid as fid_eval

    space = _feature_space(tags)
    if space is None:
        return
    result = fid_eval.cifar_metrics_of_images(images["ours"], images["target"], "the held-out originals", space)
    metrics.update({f"fd_cifar_rec{suffix}": result["fd_cifar"], f"kid_cifar_rec{suffix}": result["kid_cifar"]})
    tags["fd_cifar_note"] = (f"{fid_eval.PROXY_NOTE}; {result['num_samples']} reconstructions vs. the held-out "
                             f"originals; features {result['feature_extractor']}")


def run_stage_trial(trial: dict[str, Any], callbacks=()) -> dict[str, Any]:
    """Train and evaluate one arm; live-tracked like `ablations.trial.run_trial` when `_tracking_uri` is set."""
    import traceback

    from ablations.trial import trial_dir, trial_tags
    from snapgen.runs import read_metrics

    stage, out, progress = trial["stage"], trial_dir(trial), bool(trial.get("_progress", True))
    cfg = stage_config(trial)
    params = flatten({k: v for k, v in trial.items() if not k.startswith("_") and k != "train"})
    params.update(flatten({"train": dataclasses.asdict(cfg)}))
    tags = {**trial_tags(trial), "stage": stage, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else "cpu", "latency_backend": "none"}
    live = None
    if trial.get("_tracking_uri"):
        from snapgen import tracking

        live = tracking.LiveRun(trial["experiment"], trial["step"], tags={**tags, "git_sha": tracking.git_sha()},
                                params=params, parent_run_id=trial.get("_parent_run_id"), uri=trial["_tracking_uri"],
                                terminate=False)
    cbs = [*([live] if live is not None else []), *callbacks]
    try:
        metrics: dict[str, float | None] = {}
        if stage == "step_distill":
            from snapgen.step_distill import step_distill
            from snapgen.teachers import load_teacher

            student = _student_run(trial, progress)
            from snapgen.runs import open_run

            run = open_run(student)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            teacher = load_teacher("small", device, resolution=run.resolution, text_encoder=run.text_encoder,
                                   autoencoder=run.autoencoder, **(trial.get("teacher_options") or {}))
            result = step_distill(student, teacher, out, cfg=cfg, progress=progress, callbacks=cbs)
            metrics.update({k: v for k, v in result.items() if "_mse_vs_teacher_" in k})
            tags["metric_note"] = ("*_mse_vs_teacher_<n>: mean squared distance in [-1, 1] pixels to the teacher's "
                                   f"{cfg.reference_steps}-step samples from the same noise (a fidelity proxy, not FID)")
            _few_step_fd_cifar(trial, cfg, out, metrics, tags)
        else:
            from snapgen.train_decoder import evaluate, train

            train(cfg, out, progress=progress, callbacks=cbs)
            spec = trial.get("eval") or {}
            sets = {"": None, "_photos": os.environ.get("SNAPGEN_PHOTOS") or None}
            for suffix, images in sets.items():
                if suffix and not (images and Path(images).is_dir()):
                    continue
                report = evaluate(out, images=images, resolution=int(spec.get("resolution", cfg.resolution)),
                                  limit=spec.get("limit"), out=out / f"eval{suffix or '_cifar'}", peers=False,
                                  return_images=bool((trial.get("fd_cifar") or {}).get("enabled")))
                metrics.update({f"{k}{suffix}": v for k, v in report["decoders"]["ours"].items()
                                if k in ("psnr", "ssim", "lpips")})
                tags[f"eval_set{suffix}"] = report["eval_set"]
                if "images" in report:
                    _reconstruction_fd_cifar(report["images"], suffix, metrics, tags)
        records = read_metrics(out)
        last = _last(records)
        metrics.update(_d_summary(records, D_PREFIX[stage]))
        # the optimizer steps this arm took: a time budget can stop arms at different steps, which the table flags
        metrics["steps_trained"] = float(last["step"]) if isinstance(last.get("step"), int) else None
        metrics.update({k: last.get(k) for k in HISTORY[stage] if isinstance(last.get(k), (int, float))})
        history = [(k, float(r[k]), int(r["step"])) for r in records for k in HISTORY[stage] if k in r]
        artifacts = [str(p) for p in (out / "config.yaml", out / "metrics.jsonl", out / "eval.json",
                                      *sorted(out.glob("fd_cifar_*.json"))) if p.is_file()]
        artifacts += [str(p) for p in sorted((out / "samples").glob("*.png"))] if (out / "samples").is_dir() else []
    except BaseException as error:
        if live is not None and live.run_id is not None:
            interrupted = isinstance(error, KeyboardInterrupt)
            live.finish({}, status="KILLED" if interrupted else "FAILED",
                        error="interrupted" if interrupted else traceback.format_exc())
        raise
    result = {"metrics": metrics, "history": history, "tags": tags, "params": params, "artifacts": artifacts,
              "out": str(out)}
    if live is not None and live.run_id is not None:
        live.finish(metrics, artifacts, tags=tags, params=params)
        result["run_id"] = live.run_id
    return result


__all__ = ["STAGES", "stage_config", "student_config", "run_stage_trial"]
