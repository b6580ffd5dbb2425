"""Adversarial step distillation (Sec. 3.4, Eq. 9, Fig. 7), LADD-style, at smoke scale on CPU and at full scale on GPU.

Eq. 9 as printed reads "min_D max_G"; the consistent reading (and the brief's) is the usual GAN game: the
discriminator D_θT separates noised real samples x_{t-1} ~ q(x_{t-1} | x_0) from noised generated ones
x'_{t-1} ~ q(x_{t-1} | x'_0), and the generator (our student) minimises  L_adv^G + S(L_task, L_kd)  (Eq. 7).

- D_θT: the frozen few-step teacher (SD3.5-Large-Turbo; offline, the small teacher) as feature extractor, with a few
  trainable token-wise linear heads on the image tokens of evenly spaced transformer blocks (LADD). Only the heads
  train; gradients of the G step flow through the frozen teacher into x'_{t-1}, never into its weights.
- Timesteps: the student is trained on the σ's its few-step Flow-Euler sampler visits (`flow.flow_sigmas(n)`); for a
  student step at σ_t the discriminator sees noise level σ_{t-1}, the next σ of that schedule (0 at the last step).
- x'_0 = x_t - σ_t v_θ(x_t, t) (Eq. 1 solved for x_0 with v = ε - x_0).
- GAN loss: hinge by default, as LADD (and StyleGAN-T, whose discriminator heads LADD uses): it keeps the head
  logits bounded in the D step and gives the generator a non-saturating, linear signal. `gan_loss='nonsaturating'`
  uses Eq. 9's log form with the usual non-saturating generator loss -log D(x') (softplus of the logits).
- One iteration = one D step, then one G step, on the same data batch, each with its own noise (RNG from (seed,
  step, phase), so a resumed run is the same run). Checkpoints hold the student, its EMA, the heads, both optimizers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import flow
from .config import load_yaml, save_yaml, stable_hash
from .distill import output_kd_loss, timestep_aware_scaling
from .models import EfficientUNet

GAN_LOSSES = ("hinge", "nonsaturating")


@dataclass(frozen=True)
class StepDistillConfig:
    student_steps: int = 4             # the few-step schedule the student is distilled for
    batch_size: int = 32
    lr_g: float = 1e-5                 # student (generator) learning rate; supplement G scales 5e-5 @ batch 1024
    lr_d: float = 1e-4                 # discriminator heads
    betas: tuple[float, float] = (0.9, 0.999)  # supplement G
    weight_decay: float = 0.01         # supplement G
    grad_clip: float = 1.0
    adv_weight: float = 1.0            # weight of L_adv^G beside S(L_task, L_kd)
    gan_loss: str = "hinge"            # 'hinge' (LADD) or 'nonsaturating' (Eq. 9's log form)
    num_heads: int = 4                 # discriminator heads on evenly spaced teacher blocks (the last included)
    use_kd: bool = True                # S(L_task, L_kd) (Eq. 9) rather than L_task alone
    lambda_t: str = "u"                # λ(t) at the unshifted timestep ('u') or at σ ('sigma'), as distill.kd_loss_fn
    ema_decay: float = 0.999           # supplement G
    cond_dropout: float = 0.1
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    eval_steps: tuple[int, ...] = (4, 8)   # sampler steps of the few-step evaluation
    before_steps: tuple[int, ...] = (4, 8, 28)  # the undistilled student's sampler steps, evaluated alike (Table 3: 28)
    eval_samples_per_class: int = 4
    eval_cfg: float = 1.0              # guidance of the few-step evaluation (distilled models sample without CFG)
    reference_steps: int = 30          # the teacher's sampler steps for the few-step fidelity metric

    def __post_init__(self):
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss={self.gan_loss!r}; valid choices: {', '.join(GAN_LOSSES)}")
        if self.lambda_t not in ("u", "sigma"):
            raise ValueError(f"lambda_t={self.lambda_t!r}; valid choices: 'u', 'sigma'")


# ---- discriminator ---------------------------------------------------------------------------------------------------


def head_layers(num_layers: int, num_heads: int) -> list[int]:
    """Indices of `num_heads` evenly spaced transformer blocks, the last one included."""
    if num_heads < 1:
        raise ValueError(f"num_heads={num_heads}; must be >= 1")
    if num_heads == 1:
        return [num_layers - 1]
    return sorted({int(x) for x in np.linspace(0, num_layers - 1, min(num_heads, num_layers)).round()})


class DiscriminatorHeads(nn.Module):
    """Token-wise linear heads: one `LayerNorm -> Linear(D_T, 1)` per tapped teacher block -> logits (B, N) each."""

    def __init__(self, feature_dim: int, layers: Sequence[int]):
        super().__init__()
        self.layers = list(layers)
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, 1))
                                   for _ in self.layers)

    def forward(self, layer_features: Sequence[Tensor]) -> list[Tensor]:
        """list of (B, N, D_T) -> list of (B, N) logits."""
        return [head(f.float()).squeeze(-1) for head, f in zip(self.heads, layer_features)]


def discriminator_logits(teacher, heads: DiscriminatorHeads, x: Tensor, sigma: Tensor, cond: Any) -> list[Tensor]:
    """D_θT(x, t): frozen teacher features at noise level σ (B,), then the heads. Returns a list of (B, N) logits."""
    out = teacher(x, sigma * flow.NUM_TRAIN_TIMESTEPS, cond, feature_layers=heads.layers)
    return heads(out["layer_features"])


def d_loss(real: list[Tensor], fake: list[Tensor], kind: str = "hinge") -> Tensor:
    """Eq. 9, the discriminator's side: hinge  E[relu(1 - D(x))] + E[relu(1 + D(x'))], or the log form
    -E[log D(x)] - E[log(1 - D(x'))] = E[softplus(-D(x))] + E[softplus(D(x'))] (D = logits). Averaged over heads."""
    if kind == "hinge":
        terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)]
    else:
        terms = [F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real, fake)]
    return sum(terms) / len(terms)


def g_adv_loss(fake: list[Tensor], kind: str = "hinge") -> Tensor:
    """Eq. 9, the generator's adversarial side: hinge -E[D(x')], or non-saturating -E[log D(x')] = E[softplus(-D)]."""
    terms = [(-f).mean() if kind == "hinge" else F.softplus(-f).mean() for f in fake]
    return sum(terms) / len(terms)


# ---- one D step and one G step ---------------------------------------------------------------------------------------


def unshift(sigma: Tensor, shift: float = flow.TRAIN_SHIFT) -> Tensor:
    """Inverse of flow.time_shift: the unshifted timestep t with time_shift(t) = σ."""
    return sigma / (shift - (shift - 1) * sigma)


def _student_forward(net, x0: Tensor, cond, sigmas: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """Noise x0 to a random σ_t of the few-step schedule (Eq. 1), predict v, recover x'_0 = x_t - σ_t v."""
    n, dev = x0.shape[0], x0.device
    k = torch.randint(0, len(sigmas) - 1, (n,), generator=generator, device=dev)
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    noise = torch.randn(x0.shape, generator=generator, device=dev)
    x_t = flow.interpolate(x0, noise, sigma)
    v = net(x_t, sigma * flow.NUM_TRAIN_TIMESTEPS, cond[0], cond[1]).float()
    x0_pred = x_t - flow._bcast(sigma, x_t) * v
    renoise = torch.randn(x0.shape, generator=generator, device=dev)  # ε' of q(x_{t-1} | x_0), shared real/fake
    return dict(sigma=sigma, sigma_next=sigma_next, noise=noise, x_t=x_t, v=v, x0_pred=x0_pred, renoise=renoise)


def discriminator_step(net, teacher, heads: DiscriminatorHeads, x0: Tensor, cond, sigmas: Tensor,
                       generator: torch.Generator, gan_loss: str = "hinge") -> dict[str, Tensor]:
    """The D step: the student runs without gradient; only the heads get gradients. Returns dict(loss, ...)."""
    with torch.no_grad():
        s = _student_forward(net, x0, cond, sigmas, generator)
    x_real = flow.interpolate(x0, s["renoise"], s["sigma_next"])          # x_{t-1} ~ q(x_{t-1} | x_0)
    x_fake = flow.interpolate(s["x0_pred"], s["renoise"], s["sigma_next"])  # x'_{t-1} ~ q(x_{t-1} | x'_0)
    real = discriminator_logits(teacher, heads, x_real, s["sigma_next"], cond)
    fake = discriminator_logits(teacher, heads, x_fake, s["sigma_next"], cond)
    loss = d_loss(real, fake, gan_loss)
    return dict(loss=loss, d_real=torch.stack([r.mean() for r in real]).mean().detach(),
                d_fake=torch.stack([f.mean() for f in fake]).mean().detach())


def generator_step(net, teacher, heads: DiscriminatorHeads, x0: Tensor, cond, sigmas: Tensor,
                   generator: torch.Generator, cfg: StepDistillConfig, kd_teacher=None) -> dict[str, Tensor]:
    """The G step: L_G = adv_weight · L_adv^G(D(x'_{t-1})) + S(L_task, L_kd) (Eq. 9 with Eq. 7). The heads are
    frozen for this step; gradients pass through the frozen teacher into the student. Returns dict(loss, ...)."""
    heads.requires_grad_(False)
    try:
        s = _student_forward(net, x0, cond, sigmas, generator)
        loss_task = flow.flow_loss(s["v"], x0, s["noise"])  # (B,) Eq. 2
        if cfg.use_kd:
            with torch.no_grad():
                v_teacher = (kd_teacher or teacher)(s["x_t"], s["sigma"] * flow.NUM_TRAIN_TIMESTEPS, cond)["v"]
            loss_kd = output_kd_loss(s["v"], v_teacher)  # (B,) Eq. 4
            t = unshift(s["sigma"]) if cfg.lambda_t == "u" else s["sigma"]
            scaled = timestep_aware_scaling(loss_task, loss_kd, t)  # Eq. 7
        else:
            loss_kd, scaled = torch.zeros_like(loss_task), loss_task.mean()
        x_fake = flow.interpolate(s["x0_pred"], s["renoise"], s["sigma_next"])
        adv = g_adv_loss(discriminator_logits(teacher, heads, x_fake, s["sigma_next"], cond), cfg.gan_loss)
        loss = cfg.adv_weight * adv + scaled
    finally:
        heads.requires_grad_(True)
    return dict(loss=loss, loss_adv=adv.detach(), loss_task=loss_task.mean().detach(),
                loss_kd=loss_kd.mean().detach(), loss_scaled=scaled.detach())


# ---- few-step sampling and evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def few_step_sample(net, noise: Tensor, cond, uncond=None, steps: int = 4, guidance: float = 1.0) -> Tensor:
    """Flow-Euler (Eq. 3) with `steps` steps (4 or 8 after step distillation). Returns (B, C, H, W) float32."""
    from .train import unet_fn

    return flow.FlowObjective().sample(unet_fn(net), noise, cond, uncond, steps=steps, guidance=guidance)


@torch.no_grad()
def few_step_eval(net, teacher, conditioning, class_prompt_idx: list[int], per_class: int, resolution: int,
                  steps: Sequence[int] = (4, 8), reference_steps: int = 30, guidance: float = 1.0,
                  seed: int = 0) -> tuple[dict[str, float], dict[int, np.ndarray]]:
    """Sample every class with `steps` Flow-Euler steps from fixed noise, and the teacher with `reference_steps` from
    the same noise. Returns ({'fewstep_mse_vs_teacher_<n>': mean squared distance in [-1, 1] pixels}, {n: uint8
    grid (rows*R, per_class*R, 3)}). The distance is a cheap fidelity proxy; FID comes from evals.fid."""
    from .teachers import teacher_fn

    device = conditioning.hidden.device
    idx = torch.tensor(class_prompt_idx, device=device).repeat_interleave(per_class)
    noise = torch.randn(len(idx), 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)).to(device)
    cond, uncond = conditioning(idx), conditioning.null(len(idx))
    reference = flow.FlowObjective().sample(teacher_fn(teacher), noise, cond, uncond, steps=reference_steps,
                                            guidance=guidance) if teacher is not None else None
    metrics, grids = {}, {}
    for n in steps:
        x = few_step_sample(net, noise, cond, uncond, n, guidance).clamp(-1, 1)
        if reference is not None:
            metrics[f"fewstep_mse_vs_teacher_{n}"] = float((x - reference.clamp(-1, 1)).pow(2).mean())
        img = ((x + 1) * 127.5).round().to(torch.uint8).cpu()  # (N, 3, R, R)
        img = img.view(len(class_prompt_idx), per_class, 3, resolution, resolution).permute(0, 3, 1, 4, 2)
        grids[n] = img.reshape(len(class_prompt_idx) * resolution, per_class * resolution, 3).numpy()
    return metrics, grids


# ---- checkpoints -----------------------------------------------------------------------------------------------------


def load_student(student_ckpt: str | Path) -> tuple[EfficientUNet, dict[str, Any]]:
    """A run directory of snapgen.train (its EMA weights and config.yaml) or a diffusers UNet directory."""
    path = Path(student_ckpt)
    if (path / "config.yaml").is_file():
        from .train import find_checkpoint

        ckpt = find_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint in the run directory {path}")
        return EfficientUNet.from_pretrained(ckpt / "unet_ema"), load_yaml(path / "config.yaml")["train"]
    if (path / "config.json").is_file():
        return EfficientUNet.from_pretrained(path), {}
    raise FileNotFoundError(f"{path} is neither a snapgen.train run directory (config.yaml + checkpoint/) nor a "
                            f"diffusers UNet directory (config.json)")


# ---- the loop --------------------------------------------------------------------------------------------------------


def step_distill(student_ckpt: str | Path, teacher, out: str | Path, steps: int = 200,
                 cfg: StepDistillConfig | None = None, kd_teacher=None, data: str = "cifar10",
                 resolution: int | None = None, text_encoder: str | None = None, progress: bool = True,
                 evaluate: bool = True, **overrides: Any) -> dict[str, Any]:
    """Distil the student at `student_ckpt` into a few-step model (Eq. 9), alternating D and G steps; resume by
    calling again with the same `out`.

    Args:
        student_ckpt: a snapgen.train run directory (its EMA weights, resolution and text encoder are used) or a
            diffusers UNet directory (then pass `resolution` and `text_encoder`).
        teacher: the frozen few-step teacher (`teachers.TeacherAdapter`): discriminator backbone and, unless
            `kd_teacher` is given, the KD target of S(L_task, L_kd).
        out: run directory (metrics.jsonl, config.yaml, checkpoint/, eval.json, samples/fewstep_<n>.png and
            samples/before_<n>.png: the student before distillation).
        steps: D+G iterations in total. cfg / overrides: `StepDistillConfig` fields.
    Returns:
        the last logged metrics, with `out`, `step` and the few-step evaluation (`fewstep_mse_vs_teacher_<n>`,
        `fewstep_grid_<n>` paths, and `before_...` for the undistilled student) when `evaluate`.
    """
    from PIL import Image
    from tqdm import tqdm

    from .data import ClassConditionalData, class_prompts, load_cifar10
    from .train import (ClassPromptConditioning, ema_update, find_checkpoint, load_checkpoint, save_checkpoint,
                        step_generator)

    cfg = dataclasses.replace(cfg or StepDistillConfig(), **overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student, student_train = load_student(student_ckpt)
    resolution = resolution or student_train.get("resolution")
    text_encoder = text_encoder or student_train.get("text_encoder", "minilm")
    if resolution is None:
        raise ValueError(f"{student_ckpt} carries no training config; pass resolution=")
    if data != "cifar10":
        raise ValueError(f"step distillation data={data!r}; only 'cifar10' (the embedded default) is supported")

    images, labels, names = load_cifar10("train")
    batches = ClassConditionalData(images, labels, class_prompts(names), cfg.batch_size, cfg.seed, resolution)
    conditioning = ClassPromptConditioning(batches.prompts, text_encoder, device)

    teacher = teacher.to(device)
    net = student.to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the heads' initial weights: the same on every rerun
    heads = DiscriminatorHeads(teacher.feature_dim, head_layers(teacher.num_layers, cfg.num_heads)).to(device)
    opt_g = torch.optim.AdamW(net.parameters(), lr=cfg.lr_g, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(heads.parameters(), lr=cfg.lr_d, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sigmas = flow.flow_sigmas(cfg.student_steps).to(device)  # (n+1,) the few-step schedule, σ_n = 0

    # `steps` is left out: the learning rates are constant, so a run may be extended by calling again with more steps.
    run_hash = stable_hash({"step_distill": dataclasses.asdict(cfg), "student": str(student_ckpt),
                            "teacher": dict(teacher.config), "resolution": resolution, "text_encoder": text_encoder})
    ckpt = find_checkpoint(out)
    step = 0
    if ckpt is not None:
        state = load_checkpoint(ckpt, {"unet": net, "unet_ema": ema}, run_hash)
        heads.load_state_dict(state["heads"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step = int(state["step"])
    # the student run's config (train, class_names, text_len) too, so `python -m snapgen.sample OUT --steps 4` works
    student_run = load_yaml(Path(student_ckpt) / "config.yaml") if (Path(student_ckpt) / "config.yaml").is_file() else {}
    save_yaml({**student_run, "step_distill": dataclasses.asdict(cfg), "steps": steps, "student": str(student_ckpt),
               "resolution": resolution, "text_encoder": text_encoder, "run_hash": run_hash}, out / "config.yaml")
    log_path = out / "metrics.jsonl"
    if log_path.exists():  # lines past the checkpoint will be written again
        kept = [l for l in log_path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
        log_path.write_text("".join(l + "\n" for l in kept))

    last: dict[str, Any] = {}
    window: list[dict[str, float]] = []
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="step distill")
    while step < steps:
        batch = batches.batch(step)
        x0, prompt_idx = batch["x0"].to(device), batch["prompt_idx"].to(device)
        g_drop = step_generator(cfg.seed, 0, 3 * step, device)
        drop = torch.rand(len(x0), generator=g_drop, device=device) < cfg.cond_dropout
        cond = conditioning(prompt_idx, drop)

        d_terms = discriminator_step(net, teacher, heads, x0, cond, sigmas,
                                     step_generator(cfg.seed, 0, 3 * step + 1, device), cfg.gan_loss)
        d_terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), cfg.grad_clip or float("inf"))
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)

        g_terms = generator_step(net, teacher, heads, x0, cond, sigmas,
                                 step_generator(cfg.seed, 0, 3 * step + 2, device), cfg, kd_teacher)
        g_terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip or float("inf"))
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        ema_update(ema, net, cfg.ema_decay, step)
        step += 1
        bar.update(1)
        window.append({"loss_d": d_terms["loss"].item(), "d_real": d_terms["d_real"].item(),
                       "d_fake": d_terms["d_fake"].item(), "loss_g": g_terms["loss"].item(),
                       **{k: g_terms[k].item() for k in ("loss_adv", "loss_task", "loss_kd", "loss_scaled")}})
        if step % cfg.log_every == 0 or step == steps:
            record = {"step": step, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
            window.clear()
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            last.update(record)
            bar.set_postfix(d=f"{record['loss_d']:.3f}", g=f"{record['loss_g']:.3f}")
        if step % cfg.ckpt_every == 0 or step == steps:
            save_checkpoint(out, {"unet": net, "unet_ema": ema}, {
                "heads": heads.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                "run_hash": run_hash})
    bar.close()

    result = {**last, "step": step, "out": str(out)}
    if evaluate:
        first = [int(batches.first_prompt[k]) for k in range(len(names))]
        metrics, grids = few_step_eval(ema, teacher, conditioning, first, cfg.eval_samples_per_class, resolution,
                                       cfg.eval_steps, cfg.reference_steps, cfg.eval_cfg)
        # The student before distillation, from the same noise against the same reference: the claim to test is that
        # 4/8 steps after distillation approach the undistilled model at 28.
        before_metrics, before_grids = few_step_eval(load_student(student_ckpt)[0].to(device).eval(), teacher,
                                                     conditioning, first, cfg.eval_samples_per_class, resolution,
                                                     cfg.before_steps, cfg.reference_steps, cfg.eval_cfg)
        (out / "samples").mkdir(exist_ok=True)
        for prefix, grid_set in (("fewstep", grids), ("before", before_grids)):
            for n, grid in grid_set.items():
                path = out / "samples" / f"{prefix}_{n}.png"
                Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
                result[f"{prefix}_grid_{n}"] = str(path)
        metrics |= {k.replace("fewstep_", "before_"): v for k, v in before_metrics.items()}
        result.update(metrics)
        with open(out / "eval.json", "w") as f:
            json.dump({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, f, indent=1)
        print(f"step distillation {out}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> None:
    """`python -m snapgen.step_distill STUDENT_RUN --out DIR [--teacher small|sd35-large-turbo] [--steps N]`."""
    import argparse
    import json

    from .teachers import load_teacher
    from .train import parse_value

    p = argparse.ArgumentParser(description="Adversarial step distillation (Sec. 3.4, Eq. 9) of a trained student")
    p.add_argument("student", help="a snapgen.train run directory")
    p.add_argument("--out", required=True, help="run directory (rerun to resume)")
    p.add_argument("--teacher", default="small", help="'small' (a DiT trained here on the student's data, sized by "
                                                       "--teacher-set) or 'sd35-large-turbo' (weights via snapgen.weights)")
    p.add_argument("--teacher-set", nargs="*", default=[], metavar="KEY=VALUE", help="SmallTeacherConfig fields")
    p.add_argument("--steps", type=int, default=200, help="D+G iterations")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="StepDistillConfig fields")
    p.add_argument("--no-eval", action="store_true", help="skip the 4/8-step evaluation grids")
    args = p.parse_args(argv)
    _, student_train = load_student(args.student)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    options = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.teacher_set)}
    if args.teacher == "small":
        options = {"resolution": student_train["resolution"], "text_encoder": student_train["text_encoder"], **options}
    teacher = load_teacher(args.teacher, device, **options)
    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    for key in ("betas", "eval_steps", "before_steps"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    result = step_distill(args.student, teacher, args.out, steps=args.steps, evaluate=not args.no_eval, **overrides)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=1, default=str))


if __name__ == "__main__":
    main()
