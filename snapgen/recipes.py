"""Multi-stage training recipes as data: `python -m snapgen.recipes t2i --scale smoke --out DIR [--dry-run]`.

The T2I recipe of Sec. 4 ("Training Recipe") with supplement G's hyper-parameters:
1. `imagenet_256`: pre-train on ImageNet-1K at 256 (Sec. 3.1 / supplement H: batch 1024, AdamW 3e-4, betas (0.9, 0.99));
2. `t2i_256` -> `t2i_512` -> `t2i_1024`: progressive T2I fine-tuning (rectified flow, Eq. 1-2);
3. `kd_1024`: multi-level KD with timestep-aware scaling from SD3.5-Large (Eq. 4-8);
4. `step_distill_1024`: adversarial step distillation with SD3.5-Large-Turbo (Eq. 9), a few-step model.
Supplement G: 64 GPUs; batch per GPU 128 at 512, 48 at 1024 without KD, 32 at 1024 with KD; step distillation 16 per
GPU (4 x 4 accumulation); AdamW, weight decay 0.01, betas (0.9, 0.999), constant LR scaled linearly from 5e-5 at batch
1024; EMA 0.999. Ours where the paper is silent: the 256 T2I stage's per-GPU batch (128, as at 512), every stage's step
count, and the flow objective for the ImageNet stage (supplement H's ablations used DDPM; the T2I UNet is trained
with rectified flow, and one objective throughout keeps the stages' weights compatible).

Each stage starts from the previous stage's EMA weights (`train(..., net_factory=...)`). The per-encoder dropout of
Sec. 4 (p = 0.464 each) lives in `snapgen.models.text_stack`; `snapgen.train` still drops the whole condition with
`cond_dropout` = 0.1 (= 0.464^3), which is what a one-encoder (MiniLM) smoke run can express.

Smoke scale runs every stage on CPU, on CIFAR-10 class prompts at 8 -> 8 -> 16 -> 32 px (the paper's 256 -> 256 ->
512 -> 1024 divided by 32), a few steps each, with a random-init small teacher (plumbing check, not a result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GPUS = 64  # supplement G: 8 nodes x 8 A100
BASE_LR, BASE_BATCH = 5e-5, 1024  # supplement G: "for a total batch size of 1024, we use a learning rate of 5e-5"


def scaled_lr(batch: int) -> float:
    """Supplement G: the constant learning rate scales linearly with the stage's total batch."""
    return BASE_LR * batch / BASE_BATCH


@dataclass(frozen=True)
class Stage:
    name: str
    loss: str                               # 'task' (Eq. 2), 'kd' (distill.kd_loss_fn), 'step_distill' (Eq. 9)
    overrides: dict[str, Any]               # snapgen.train.make_config(scale, **overrides)
    teacher: str | None = None              # teachers.load_teacher spec
    kd_row: str | None = None               # registry.KD_ROWS name for loss='kd'
    notes: str = ""
    step_distill: dict[str, Any] = field(default_factory=dict)  # StepDistillConfig fields for loss='step_distill'


def _t2i(batch_per_gpu: int, resolution: int, **extra: Any) -> dict[str, Any]:
    batch = batch_per_gpu * GPUS
    return dict(arch="snapgen-t2i", resolution=resolution, batch_size=batch, lr=scaled_lr(batch), betas=(0.9, 0.999),
                ema_decay=0.999, weight_decay=0.01, warmup=0, objective="flow", grad_checkpointing=True,
                cond_dropout=0.1, **extra)


def t2i_paper() -> list[Stage]:
    """Sec. 4 + supplement G at the paper's scale (latent training data is the lead's T2I data set)."""
    return [
        Stage("imagenet_256", "task", dict(arch="snapgen-t2i", resolution=256, batch_size=1024, lr=3e-4,
                                           betas=(0.9, 0.99), objective="flow", text_encoder="clip-l"),
              notes="supplement H settings; class prompts"),
        Stage("t2i_256", "task", _t2i(128, 256), notes="per-GPU batch unstated: ours 128"),
        Stage("t2i_512", "task", _t2i(128, 512)),
        Stage("t2i_1024", "task", _t2i(48, 1024)),
        Stage("kd_1024", "kd", _t2i(32, 1024), teacher="sd35-large", kd_row="task+kd+featkd+t_scaling"),
        Stage("step_distill_1024", "step_distill", dict(resolution=1024), teacher="sd35-large-turbo",
              step_distill=dict(batch_size=16 * GPUS, lr_g=scaled_lr(16 * GPUS), student_steps=4)),
    ]


SMOKE_COMMON = dict(width=16, batch_size=8, steps=2, warmup=0, val_every=2, ckpt_every=2, log_every=1, val_size=8,
                    val_timesteps=2, sample_steps=2, samples_per_class=1, train_limit=64, text_encoder="minilm")


def t2i_smoke() -> list[Stage]:
    """Every stage at CPU size: same losses and chaining, CIFAR-10 class prompts, resolutions / 32."""
    stages = []
    for stage in t2i_paper():
        if stage.loss == "step_distill":
            stages.append(Stage(stage.name, stage.loss, dict(resolution=32), teacher="random-small",
                                step_distill=dict(batch_size=4, student_steps=4)))
            continue
        o = {k: v for k, v in stage.overrides.items() if k not in ("batch_size", "grad_checkpointing", "text_encoder")}
        o.update(SMOKE_COMMON, resolution=max(8, stage.overrides["resolution"] // 32), lr=1e-3)
        stages.append(Stage(stage.name, stage.loss, o, "random-small" if stage.teacher else None, stage.kd_row,
                            stage.notes))
    return stages


RECIPES = {"t2i": {"paper": t2i_paper, "smoke": t2i_smoke}}


def get_recipe(name: str, scale: str) -> list[Stage]:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    if scale not in RECIPES[name]:
        raise KeyError(f"recipe {name!r} has no scale {scale!r}; valid scales: {', '.join(RECIPES[name])}")
    return RECIPES[name][scale]()


def _teacher(spec: str, resolution: int, text_dim: int, autoencoder: str = "none"):
    from .teachers import SmallTeacherConfig, build_small_teacher, load_teacher

    if spec == "random-small":  # smoke: an untrained 2-layer MMDiT checks the plumbing of KD / step distillation
        return build_small_teacher(SmallTeacherConfig(resolution=resolution, autoencoder=autoencoder, num_layers=2,
                                                      num_attention_heads=2, attention_head_dim=8), text_dim, seed=1)
    return load_teacher(spec)


def _unet_stage(stage: Stage, prev: Path | None, scale: str):
    """'task' and 'kd' stages: the UNet stage, from the previous stage's EMA weights (a fresh net for the first)."""
    from .distill import kd_loss_fn, student_feature_channels
    from .runs import open_run
    from .train import UNetStage, make_config

    cfg = make_config("smoke" if scale == "smoke" else "paper", **stage.overrides)
    factory = (lambda dim: open_run(prev).net().train()) if prev is not None else None
    if stage.loss == "task":
        return UNetStage(cfg, net_factory=factory)
    student = open_run(prev).net()
    teacher = _teacher(stage.teacher, cfg.resolution, student.config.cross_attention_dim, cfg.autoencoder)
    loss_fn = kd_loss_fn(stage.kd_row, teacher, student_channels=student_feature_channels(student.unet_config))
    return UNetStage(cfg, loss_fn, net_factory=factory, extra_modules=loss_fn.extra_modules)


def _step_distill_stage(stage: Stage, prev: Path | None, scale: str):
    """Eq. 9 on the previous stage's run, with its teacher in the student's space."""
    from .runs import open_run
    from .step_distill import StepDistillConfig, StepDistillStage

    if prev is None:
        raise ValueError(f"stage {stage.name}: step distillation needs a previous stage to distil")
    student = open_run(prev)
    teacher = _teacher(stage.teacher, student.resolution, student.net().config.cross_attention_dim,
                       student.autoencoder)
    cfg = StepDistillConfig(**{**stage.step_distill, "log_every": 1, "ckpt_every": 2,
                               "steps": 2 if scale == "smoke" else 10**6})
    return StepDistillStage(prev, teacher, cfg)


STAGE_BUILDERS = {"task": _unet_stage, "kd": _unet_stage, "step_distill": _step_distill_stage}


def run_recipe(stages: list[Stage], out: str | Path, scale: str = "smoke", progress: bool = False) -> list[dict]:
    """Run the stages in order through the one engine, each in `out/<i>_<name>`, each from the previous stage's EMA
    weights. Rerunning resumes: a finished stage is resumed at its last step (nothing to do)."""
    from .training import fit

    out = Path(out)
    results, prev = [], None
    for i, stage in enumerate(stages):
        if stage.loss not in STAGE_BUILDERS:
            raise ValueError(f"stage {stage.name}: loss={stage.loss!r}; valid: {', '.join(STAGE_BUILDERS)}")
        run_dir = out / f"{i}_{stage.name}"
        result = fit(STAGE_BUILDERS[stage.loss](stage, prev, scale), run_dir, progress=progress)
        prev = run_dir
        results.append({"stage": stage.name, "loss": stage.loss, "out": str(run_dir),
                        **{k: v for k, v in result.items() if isinstance(v, (int, float, str))}})
        print(json.dumps(results[-1]), file=sys.stderr)
    (out / "recipe.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(results, indent=2))
    return results


def with_overrides(stages: list[Stage], overrides: dict[str, Any]) -> list[Stage]:
    """`--set` applied to every UNet stage. A latent space (`autoencoder=...`) multiplies each stage's resolution by
    the autoencoder's factor, so the latents keep the pixel run's sizes (the paper's latents are R/8 of its images)."""
    from .models.autoencoders import AUTOENCODERS

    out = []
    for stage in stages:
        if stage.loss == "step_distill":
            out.append(stage)
            continue
        o = {**stage.overrides, **overrides}
        if overrides.get("autoencoder", "none") != "none" and "resolution" not in overrides:
            o["resolution"] = stage.overrides["resolution"] * AUTOENCODERS[overrides["autoencoder"]][1]
        out.append(dataclasses.replace(stage, overrides=o))
    return out


def describe(stages: list[Stage]) -> list[dict[str, Any]]:
    return [{"stage": s.name, "loss": s.loss, "teacher": s.teacher, "kd_row": s.kd_row, "overrides": s.overrides,
             "step_distill": s.step_distill, "notes": s.notes} for s in stages]


def main(argv: list[str] | None = None) -> int:
    from .training.cli import parse_overrides

    p = argparse.ArgumentParser(prog="python -m snapgen.recipes", description=__doc__.split("\n")[0])
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--scale", default="smoke", choices=["smoke", "paper"])
    p.add_argument("--out", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training options for every UNet stage (e.g. autoencoder=taesd3)")
    p.add_argument("--dry-run", action="store_true", help="print the stages and exit")
    p.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = p.parse_args(argv)
    stages = with_overrides(get_recipe(args.recipe, args.scale), parse_overrides(args.set))
    from .train import make_config

    for stage in stages:  # every stage's options are checked before the first one trains
        if stage.loss != "step_distill":
            make_config("smoke" if args.scale == "smoke" else "paper", **stage.overrides)
    if args.dry_run:
        print(json.dumps(describe(stages), indent=2, default=str))
        return 0
    run_recipe(stages, Path(args.out or f"runs/recipe-{args.recipe}-{args.scale}"), args.scale, progress=True)
    return 0


if __name__ == "__main__":
    from .training.cli import run_cli

    sys.exit(run_cli(main))
