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

What the paper leaves open, and our choice (each a `StepDistillConfig` field, checked up front):
- D's learning rate `lr_d` = 1e-4 (LADD's), 10x the student's; `d_warmup` = 0: steps D trains alone before the
  adversarial term reaches the student (the D phase starts at `adv_start - d_warmup`).
- Which teacher blocks feed the heads: `head_blocks` (block indices) or, empty (default), `num_heads` = 4 evenly
  spaced blocks, the last included (LADD taps evenly spaced blocks).
- The noise level of the comparison, `d_noise`: 'next' (default: σ_{t-1}, the next σ of the few-step schedule, as
  Eq. 9's x_{t-1} reads), 'clean' (σ = 0: x_0 vs x'_0, ADD's pixel-space choice) or 'random' (a fresh
  σ = time_shift(u), u ~ U(0, 1) per sample, LADD's renoising).
- Hinge (default) vs the log form: `gan_loss`.
- The adversarial weight `adv_weight` = 1 (0 = no discriminator at all: the "without" arm of the ablation) and its
  start step `adv_start` = 0.
Diagnostics (`snapgen.adversarial`): `d_acc_real`, `d_acc_fake`, `d_logit_real`, `d_logit_fake` and the student's
`g_adv_grad_ratio` (adversarial vs S(L_task, L_kd) gradient norm at the student's output v) in every record; one
warning line when D has sat at chance for `chance_window` steps.
- One iteration = one D step, then one G step, on the same data batch, each with its own noise (RNG from (seed,
  step, phase), so a resumed run is the same run). Checkpoints hold the student, its EMA, the heads, both optimizers.
"""

from __future__ import annotations

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

from . import flow, sampling
from .adversarial import GAN_LOSSES, ChanceWatch, GradProbe, d_diagnostics, gan_d_loss, gan_g_loss
from .conditioning import PromptConditioning, unet_fn
from .config import preset_config, public_config
from .distill import output_kd_loss, timestep_aware_scaling
from .training import EngineOptions, Phase, Stage, fit
from .training.cli import parse_overrides, print_options, run_cli

D_NOISE = ("next", "clean", "random")  # the noise level at which D compares real and generated samples


@dataclass(frozen=True)
class StepDistillConfig(EngineOptions):
    student_steps: int = 4             # the few-step schedule the student is distilled for
    batch_size: int = 32
    steps: int = 200                   # D+G iterations
    lr_g: float = 1e-5                 # student (generator) learning rate; supplement G scales 5e-5 @ batch 1024
    lr_d: float = 1e-4                 # discriminator heads
    betas: tuple[float, float] = (0.9, 0.999)  # supplement G
    weight_decay: float = 0.01         # supplement G
    grad_clip: float = 1.0
    adv_weight: float = 1.0            # weight of L_adv^G beside S(L_task, L_kd); 0 = no discriminator at all
    adv_start: int = 0                 # first step at which L_adv^G reaches the student
    d_warmup: int = 0                  # steps D trains alone before adv_start (its phase starts at adv_start - d_warmup)
    gan_loss: str = "hinge"            # 'hinge' (LADD) or 'nonsaturating' (Eq. 9's log form)
    num_heads: int = 4                 # discriminator heads on evenly spaced teacher blocks (the last included)
    head_blocks: tuple[int, ...] = ()  # teacher blocks feeding the heads; () = num_heads evenly spaced ones
    d_noise: str = "next"              # D's noise level: 'next' (σ_{t-1}, Eq. 9), 'clean' (σ = 0), 'random' (LADD)
    chance_window: int = 200           # warn when D has been at chance this many steps; 0 = never
    use_kd: bool = True                # S(L_task, L_kd) (Eq. 9) rather than L_task alone
    lambda_t: str = "u"                # λ(t) at the unshifted timestep ('u') or at σ ('sigma'), as distill.kd_loss_fn
    ema_decay: float = 0.999           # supplement G
    cond_dropout: float = 0.1
    val_every: int = 10**9             # no periodic validation: the few-step evaluation runs at the end
    eval_steps: tuple[int, ...] = (4, 8)   # sampler steps of the few-step evaluation
    before_steps: tuple[int, ...] = (4, 8, 28)  # the undistilled student's sampler steps, evaluated alike (Table 3: 28)
    eval_samples_per_class: int = 4
    eval_cfg: float = 1.0              # guidance of the few-step evaluation (distilled models sample without CFG)
    reference_steps: int = 30          # the teacher's sampler steps for the few-step fidelity metric

    def __post_init__(self):
        super().__post_init__()
        for name in ("lr_g", "lr_d"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.student_steps < 1 or self.num_heads < 1 or self.reference_steps < 1 or self.eval_samples_per_class < 1:
            raise ValueError("student_steps, num_heads, reference_steps and eval_samples_per_class must be >= 1")
        if any(n < 1 for n in (*self.eval_steps, *self.before_steps)):
            raise ValueError(f"eval_steps={self.eval_steps} and before_steps={self.before_steps} must be >= 1")
        for name in ("adv_weight", "adv_start", "d_warmup", "chance_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if any(int(b) != b or b < 0 for b in self.head_blocks) or len(set(self.head_blocks)) != len(self.head_blocks):
            raise ValueError(f"head_blocks={self.head_blocks}: distinct block indices >= 0 (or empty: num_heads evenly "
                             f"spaced blocks)")
        if self.d_noise not in D_NOISE:
            raise ValueError(f"d_noise={self.d_noise!r}; valid choices: {', '.join(D_NOISE)}")
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
    """Eq. 9, the discriminator's side, averaged over heads (`snapgen.adversarial.gan_d_loss`): hinge
    E[relu(1 - D(x))] + E[relu(1 + D(x'))], or the log form E[softplus(-D(x))] + E[softplus(D(x'))]."""
    return gan_d_loss(real, fake, kind)


def g_adv_loss(fake: list[Tensor], kind: str = "hinge") -> Tensor:
    """Eq. 9, the generator's adversarial side (`snapgen.adversarial.gan_g_loss`): hinge -E[D(x')], or
    non-saturating E[softplus(-D(x'))]."""
    return gan_g_loss(fake, kind)


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


def discriminator_sigma(s: dict[str, Tensor], mode: str, generator: torch.Generator) -> Tensor:
    """The noise level (B,) at which D compares real and generated samples (`StepDistillConfig.d_noise`): 'next' =
    σ_{t-1} of the few-step schedule (Eq. 9), 'clean' = 0, 'random' = time_shift(u), u ~ U(0, 1) (LADD)."""
    if mode == "next":
        return s["sigma_next"]
    if mode == "clean":
        return torch.zeros_like(s["sigma_next"])
    if mode == "random":
        return flow.time_shift(torch.rand(s["sigma"].shape, generator=generator, device=s["sigma"].device))
    raise ValueError(f"d_noise={mode!r}; valid choices: {', '.join(D_NOISE)}")


def discriminator_step(net, teacher, heads: DiscriminatorHeads, x0: Tensor, cond, sigmas: Tensor,
                       generator: torch.Generator, gan_loss: str = "hinge", d_noise: str = "next") -> dict[str, Tensor]:
    """The D step: the student runs without gradient; only the heads get gradients. Returns dict(loss, d_real,
    d_fake, acc_real, acc_fake, logit_real, logit_fake) (`snapgen.adversarial.d_diagnostics`)."""
    with torch.no_grad():
        s = _student_forward(net, x0, cond, sigmas, generator)
    sigma_d = discriminator_sigma(s, d_noise, generator)
    x_real = flow.interpolate(x0, s["renoise"], sigma_d)             # x_{t-1} ~ q(x_{t-1} | x_0)
    x_fake = flow.interpolate(s["x0_pred"], s["renoise"], sigma_d)   # x'_{t-1} ~ q(x_{t-1} | x'_0)
    real = discriminator_logits(teacher, heads, x_real, sigma_d, cond)
    fake = discriminator_logits(teacher, heads, x_fake, sigma_d, cond)
    diagnostics = d_diagnostics(real, fake)
    return dict(loss=d_loss(real, fake, gan_loss), d_real=diagnostics["logit_real"], d_fake=diagnostics["logit_fake"],
                **diagnostics)


def generator_step(net, teacher, heads: DiscriminatorHeads, x0: Tensor, cond, sigmas: Tensor,
                   generator: torch.Generator, cfg: StepDistillConfig, kd_teacher=None,
                   adversarial: bool = True) -> dict[str, Tensor]:
    """The G step: L_G = adv_weight · L_adv^G(D(x'_{t-1})) + S(L_task, L_kd) (Eq. 9 with Eq. 7); without
    `adversarial` (before `adv_start`, or adv_weight = 0) L_G = S(L_task, L_kd). The heads are frozen for this step;
    gradients pass through the frozen teacher into the student. Returns dict(loss, loss_adv, loss_task, loss_kd,
    loss_scaled, logit_fake (D's score of these fakes), adv_grad, task_grad, adv_grad_ratio (at the student's v))."""
    if heads is not None:
        heads.requires_grad_(False)
    try:
        s = _student_forward(net, x0, cond, sigmas, generator)
        probe = GradProbe(x0.device)
        v_adv, v_task = probe.split(s["v"])  # the two terms' gradients at v, measured in the one backward
        loss_task = flow.flow_loss(v_task, x0, s["noise"])  # (B,) Eq. 2
        if cfg.use_kd:
            with torch.no_grad():
                v_teacher = (kd_teacher or teacher)(s["x_t"], s["sigma"] * flow.NUM_TRAIN_TIMESTEPS, cond)["v"]
            loss_kd = output_kd_loss(v_task, v_teacher)  # (B,) Eq. 4
            t = unshift(s["sigma"]) if cfg.lambda_t == "u" else s["sigma"]
            scaled = timestep_aware_scaling(loss_task, loss_kd, t)  # Eq. 7
        else:
            loss_kd, scaled = torch.zeros_like(loss_task), loss_task.mean()
        adv = logit_fake = torch.zeros((), device=x0.device)
        loss = scaled
        if adversarial and cfg.adv_weight and heads is not None:
            sigma_d = discriminator_sigma(s, cfg.d_noise, generator)
            x0_pred = s["x_t"] - flow._bcast(s["sigma"], s["x_t"]) * v_adv
            fake = discriminator_logits(teacher, heads, flow.interpolate(x0_pred, s["renoise"], sigma_d), sigma_d, cond)
            adv = g_adv_loss(fake, cfg.gan_loss)
            logit_fake = d_diagnostics(fake, fake)["logit_fake"]
            loss = cfg.adv_weight * adv + scaled
    finally:
        if heads is not None:
            heads.requires_grad_(True)
    return dict(loss=loss, loss_adv=adv.detach(), loss_task=loss_task.mean().detach(),
                loss_kd=loss_kd.mean().detach(), loss_scaled=scaled.detach(), logit_fake=logit_fake, **probe.metrics())


# ---- few-step sampling and evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def few_step_sample(net, noise: Tensor, cond, uncond=None, steps: int = 4, guidance: float = 1.0) -> Tensor:
    """Flow-Euler (Eq. 3) with `steps` steps (4 or 8 after step distillation). Returns (B, C, H, W) float32."""
    return flow.FlowObjective().sample(unet_fn(net), noise, cond, uncond, steps=steps, guidance=guidance)


@torch.no_grad()
def few_step_eval(nets: dict[str, tuple[torch.nn.Module, Sequence[int]]], teacher, conditioning, prompt_idx: list[int],
                  per_class: int, shape: tuple[int, ...], reference_steps: int = 30, guidance: float = 1.0,
                  decode=None, labels: Sequence[str] | None = None, device="cpu"):
    """Sample each net of `nets` ({prefix: (net, sampler steps)}) and the teacher (`reference_steps`) through the one
    sampler, from the same noise (global indices 0..N-1). Returns ({'<prefix>_mse_vs_teacher_<n>': mean squared
    distance in [-1, 1] pixels}, {'<prefix>_<n>': grid image}). The distance is a cheap fidelity proxy, not FID."""
    from .teachers import teacher_fn

    idx = torch.as_tensor(prompt_idx, device=device).repeat_interleave(per_class)
    indices, cond, uncond = range(len(idx)), conditioning(idx), conditioning.null(len(idx))
    objective = flow.FlowObjective()
    reference = sampling.sample(teacher_fn(teacher), objective, indices, shape, cond, uncond, steps=reference_steps,
                                guidance=guidance, decode=decode, device=device) if teacher is not None else None
    metrics, grids = {}, {}
    for prefix, (net, steps) in nets.items():
        for n in steps:
            x = sampling.sample(unet_fn(net), objective, indices, shape, cond, uncond, steps=n, guidance=guidance,
                                decode=decode, device=device)
            if reference is not None:
                metrics[f"{prefix}_mse_vs_teacher_{n}"] = float((x - reference).pow(2).mean())
            grids[f"{prefix}_{n}"] = sampling.grid(sampling.to_uint8(x), per_class, labels=labels)
    return metrics, grids


# ---- the stage -------------------------------------------------------------------------------------------------------


class StepDistillStage(Stage):
    """Two phases per iteration on one data batch, each with its own noise: D (the discriminator heads on the frozen
    teacher) then G (the student: L_adv^G + S(L_task, L_kd)). The student comes from a run (`snapgen.runs`), in its
    own space (pixels or its autoencoder's latents), on its own data and text encoder."""

    kind = "step_distill"
    ema = {"unet_ema": "unet"}

    def __init__(self, student: str | Path, teacher, cfg: StepDistillConfig, kd_teacher=None):
        from .runs import open_run

        self.options = self.cfg = cfg
        self.student_path = Path(student)
        self.student_run = open_run(student)
        if self.student_run.kind == "decoder":
            raise ValueError(f"{student} is a decoder run; step distillation takes a UNet run")
        self.teacher, self.kd_teacher = teacher, kd_teacher

    def setup(self, device, rank, world):
        from .data import ClassConditionalData, class_conditional_splits, class_prompts

        run, cfg = self.student_run, self.cfg
        self.device = device
        t = run.train
        images, labels, _, _, names = class_conditional_splits(
            t.get("data", "cifar10"), run.resolution, run.autoencoder, int(t.get("val_size", 64)),
            t.get("train_limit"), int(t.get("seed", 0)), device)
        self.names = names
        self.data = ClassConditionalData(images, labels, class_prompts(names), cfg.batch_size, cfg.seed,
                                         run.resolution)
        self.conditioning = PromptConditioning(self.data.prompts, run.text_encoder, device, length=run.text_len)
        self.teacher = self.teacher.to(device)
        self.net = run.net(ema=True, device=device).train()
        torch.manual_seed(cfg.seed)  # the heads' initial weights: the same on every rerun
        layers = list(cfg.head_blocks) or head_layers(self.teacher.num_layers, cfg.num_heads)
        if max(layers) >= self.teacher.num_layers:
            raise ValueError(f"head_blocks={cfg.head_blocks}: the teacher has {self.teacher.num_layers} blocks "
                             f"(indices 0..{self.teacher.num_layers - 1})")
        self.heads = DiscriminatorHeads(self.teacher.feature_dim, layers)
        self.chance = ChanceWatch("d_", cfg.chance_window, what="step-distillation discriminator") \
            if cfg.adv_weight and cfg.chance_window else None
        self.sigmas = flow.flow_sigmas(cfg.student_steps).to(device)  # (n+1,) the few-step schedule, σ_n = 0

    def modules(self):
        return {"unet": self.net, "heads": self.heads} if self.cfg.adv_weight else {"unet": self.net}

    def phases(self):
        cfg = self.cfg

        def d_phase(models, batch, generator):
            out = discriminator_step(models.raw["unet"], self.teacher, models.heads, batch["x0"],
                                     self.conditioning(batch["prompt_idx"], batch["drop"]), self.sigmas, generator,
                                     cfg.gan_loss, cfg.d_noise)
            return {"loss": out["loss"], **{k: out[k] for k in ("acc_real", "acc_fake", "logit_real", "logit_fake")}}

        def g_phase(models, batch, generator):
            out = generator_step(models.unet, self.teacher, models.raw.get("heads"), batch["x0"],
                                 self.conditioning(batch["prompt_idx"], batch["drop"]), self.sigmas, generator, cfg,
                                 self.kd_teacher, adversarial=batch["step"] >= cfg.adv_start)
            return {"loss": out["loss"], "adv": out["loss_adv"], "task": out["loss_task"], "kd": out["loss_kd"],
                    "scaled": out["loss_scaled"],
                    **({k: out[k] for k in ("logit_fake", "adv_grad", "task_grad", "adv_grad_ratio")}
                       if cfg.adv_weight and batch["step"] >= cfg.adv_start else {"task_grad": out["task_grad"]})}

        g = Phase("g", ["unet"], g_phase, cfg.lr_g, cfg.betas, cfg.weight_decay, prefix="g_")
        if not cfg.adv_weight:  # the ablation's "without" arm: S(L_task, L_kd) alone, no discriminator
            return [g]
        return [Phase("d", ["heads"], d_phase, cfg.lr_d, cfg.betas, cfg.weight_decay, prefix="d_",
                      start=max(0, cfg.adv_start - cfg.d_warmup)), g]

    def batch(self, step, generator):
        batch = self.data.batch(step)
        drop = torch.rand(len(batch["x0"]), generator=generator) < self.cfg.cond_dropout
        return {"x0": batch["x0"], "prompt_idx": batch["prompt_idx"], "drop": drop, "step": step}

    def describe_progress(self, record):
        return self.chance.describe(record) if self.chance is not None else ""

    def identity(self):
        return {"student": str(self.student_path.resolve()), "student_run_hash": self.student_run.config.get("run_hash"),
                "teacher": public_config(self.teacher.config)}

    def run_config(self):
        # the student run's sampling facts (train, class_names, text_len), so `snapgen.sample OUT --steps 4` works
        student = self.student_run.config
        return {"train": student.get("train", {}), "unet": student.get("unet"), "class_names": student.get("class_names"),
                "text_len": student.get("text_len"), "student": str(self.student_path),
                "step_distill": dataclasses.asdict(self.cfg)}

    def evaluate_fewstep(self, ema: torch.nn.Module, out: Path) -> dict[str, Any]:
        """The distilled EMA student (eval_steps) and the student before distillation (before_steps), from the same
        noise against the same teacher reference; writes samples/{fewstep,before}_<n>.png and eval.json."""
        cfg, run = self.cfg, self.student_run
        first = [int(self.data.first_prompt[k]) for k in range(len(self.names))]
        nets = {"fewstep": (ema, cfg.eval_steps), "before": (run.net(ema=True, device=self.device), cfg.before_steps)}
        bf16 = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            metrics, grids = few_step_eval(nets, self.teacher, self.conditioning, first, cfg.eval_samples_per_class,
                                           run.latent_shape, cfg.reference_steps, cfg.eval_cfg,
                                           decode=run.decode_fn(self.device), labels=self.names, device=self.device)
        result: dict[str, Any] = dict(metrics)
        (out / "samples").mkdir(exist_ok=True)
        for name, image in grids.items():
            path = out / "samples" / f"{name}.png"
            image.save(path)
            result[f"{name.split('_')[0]}_grid_{name.split('_')[1]}"] = str(path)
        return result


def step_distill(student_ckpt: str | Path, teacher, out: str | Path, steps: int | None = None,
                 cfg: StepDistillConfig | None = None, kd_teacher=None, progress: bool = True, evaluate: bool = True,
                 callbacks: Sequence[Any] = (), **overrides: Any) -> dict[str, Any]:
    """Distil the student run at `student_ckpt` into a few-step model (Eq. 9) through the engine; resume by calling
    again with the same `out` (more `steps` extends the run: the learning rates are constant).

    Args:
        teacher: the frozen few-step teacher (`teachers.TeacherAdapter`) in the student's space: discriminator
            backbone and, unless `kd_teacher` is given, the KD target of S(L_task, L_kd).
        out: run directory (metrics.jsonl, config.yaml, checkpoint/, eval.json, samples/fewstep_<n>.png and
            samples/before_<n>.png: the student before distillation).
        steps: D+G iterations (default: cfg.steps). cfg / overrides: `StepDistillConfig` fields.
    Returns:
        the last logged metrics, with `out`, `step` and, when `evaluate`, the few-step evaluation
        (`fewstep_mse_vs_teacher_<n>`, `fewstep_grid_<n>` paths, `before_...` for the undistilled student).
    """
    cfg = dataclasses.replace(cfg or StepDistillConfig(), **overrides, **({"steps": steps} if steps else {}))
    out = Path(out)
    stage = StepDistillStage(student_ckpt, teacher, cfg, kd_teacher)
    result = fit(stage, out, progress=progress, callbacks=callbacks)
    if evaluate:
        from .runs import open_run

        ema = open_run(out).net(ema=True, device=stage.device)
        metrics = stage.evaluate_fewstep(ema, out)
        result.update(metrics)
        with open(out / "eval.json", "w") as f:
            json.dump({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, f, indent=1)
        print(f"step distillation {out}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                      if isinstance(v, float)), file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m snapgen.step_distill STUDENT_RUN --out DIR [--teacher small|sd35-large-turbo] [--steps N]`."""
    import argparse

    from .runs import open_run
    from .teachers import load_teacher

    p = argparse.ArgumentParser(prog="python -m snapgen.step_distill",
                                description="Adversarial step distillation (Sec. 3.4, Eq. 9) of a trained student")
    p.add_argument("student", help="a snapgen.train run directory (pixel or latent space)")
    p.add_argument("--out", required=True, help="run directory (rerun to resume)")
    p.add_argument("--teacher", default="small", help="'small' (a DiT trained here on the student's data and space, "
                                                       "sized by --teacher-set) or 'sd35-large-turbo' (weights via "
                                                       "snapgen.weights)")
    p.add_argument("--teacher-set", nargs="*", default=[], metavar="KEY=VALUE", help="SmallTeacherConfig fields")
    p.add_argument("--steps", type=int, default=200, help="D+G iterations")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="StepDistillConfig fields")
    p.add_argument("--no-eval", action="store_true", help="skip the 4/8-step evaluation grids")
    p.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise ValueError(f"--steps {args.steps}: must be >= 1")
    cfg = preset_config(StepDistillConfig, {"default": {}}, "default", {**parse_overrides(args.set),
                                                                       "steps": args.steps}, "step distillation options")
    student = open_run(args.student)
    options = parse_overrides(args.teacher_set, "--teacher-set")
    if args.teacher == "small":
        options = {"resolution": student.resolution, "text_encoder": student.text_encoder,
                   "autoencoder": student.autoencoder, **options}
    if args.dry_run:
        print_options(cfg, student=str(args.student), teacher=args.teacher, teacher_options=options)
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(args.teacher, device, **options)
    result = step_distill(args.student, teacher, args.out, cfg=cfg, evaluate=not args.no_eval,
                          progress=not args.no_progress)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
