"""Rectified-flow (Sec. 3.3, Eq. 1-3) and DDPM (supplement H) objectives, samplers and classifier-free guidance.

Conventions (all maths in float32, whatever dtype the network runs in):
- ``sigma`` (σ) in [0, 1] is the flow's noise level: σ = 0 is data, σ = 1 is pure noise (Eq. 1).
- A network is called as ``net_fn(x, timestep, cond)`` with ``timestep`` (B,) float in the model's units
  ``[0, num_train_timesteps)`` (SD3/diffusers convention: timestep = 1000 σ for flow, the DDPM step index for DDPM),
  and ``cond`` whatever the network takes as conditioning (a tensor, a tuple or a dict of tensors, or None).
- The objectives return per-sample losses and a timestep ``t`` in [0, 1] so distillation (Eq. 7) can reweight per t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000  # diffusers' and SD3's scale between σ in [0, 1] and the model's timestep input
TRAIN_SHIFT = 3.0  # Sec. 4 "Hyper-parameters": time shift of 3 for both training and inference
LOGIT_NORMAL_LOC, LOGIT_NORMAL_SCALE = 0.0, 1.0  # Sec. 4: logit-normal timestep sampling with (0, 1)

NetFn = Callable[[Tensor, Tensor, Any], Tensor]


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) matching ``like``'s rank, float32."""
    return v.float().reshape(-1, *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------------------------- rectified flow
def interpolate(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """Eq. 1: x_t = (1 - σ_t) x_0 + σ_t ε.

    Args:
        x0 (`Tensor` (B, ...)): clean latents. noise (`Tensor` (B, ...)): ε ~ N(0, I). sigma (`Tensor` (B,)): σ_t.
    Returns:
        `Tensor` (B, ...) float32: x_t.
    """
    s = _bcast(sigma, x0)
    return (1.0 - s) * x0.float() + s * noise.float()


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Eq. 2 target: the straight-path velocity dx_t/dσ = ε - x_0, float32 (B, ...)."""
    return noise.float() - x0.float()


def flow_loss(v_pred: Tensor, x0: Tensor, noise: Tensor, reduce: str = "mean") -> Tensor:
    """Eq. 2: L_task = || (ε - x_0) - v_θ(x_t, t) ||², per sample.

    Args:
        v_pred (`Tensor` (B, ...)): predicted velocity. x0, noise (`Tensor` (B, ...)).
        reduce (`str`): "mean" (mean over non-batch dims, the usual MSE) or "sum" (the squared L2 norm of Eq. 2).
    Returns:
        `Tensor` (B,) float32: one loss per sample, so callers can reweight per timestep before averaging.
    """
    sq = (v_pred.float() - velocity_target(x0, noise)).pow(2).flatten(1)
    if reduce == "mean":
        return sq.mean(1)
    if reduce == "sum":
        return sq.sum(1)
    raise ValueError(f"reduce={reduce!r}; valid choices: 'mean', 'sum'")


def sample_logit_normal(n: int, loc: float = LOGIT_NORMAL_LOC, scale: float = LOGIT_NORMAL_SCALE,
                        generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """Logit-normal timestep sampling (SD3, Esser et al. 2024): t = sigmoid(u), u ~ N(loc, scale²).

    Returns:
        `Tensor` (n,) float32 in (0, 1).
    """
    u = torch.randn(n, generator=generator, device=generator.device if generator is not None else device)
    return torch.sigmoid(loc + scale * u)


def logit_normal_density(t: Tensor, loc: float = LOGIT_NORMAL_LOC, scale: float = LOGIT_NORMAL_SCALE) -> Tensor:
    """SD3 Eq. 19: π_ln(t; m, s) = 1 / (s √(2π) t (1-t)) · exp(-(logit(t) - m)² / (2 s²)).

    With (m, s) = (0, 1) this is the λ(t) of Eq. 7 (timestep-aware scaling). t (any shape) in (0, 1).
    """
    t = t.float()
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-((logit - loc) ** 2) / (2 * scale**2)) / (scale * math.sqrt(2 * math.pi) * t * (1 - t))


def time_shift(sigma: Tensor, shift: float = TRAIN_SHIFT) -> Tensor:
    """SD3 resolution time shift (Sec. 3.3, "timestep shift similar to SD3"): σ' = shift σ / (1 + (shift - 1) σ)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(num_steps: int, shift: float = TRAIN_SHIFT, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """Inference σ schedule, identical to diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(n)``.

    diffusers (and SD3's reference sampler) space the unshifted grid linearly from 1 down to the *shifted* smallest
    training σ, time_shift(1 / num_train_timesteps), then shift it again; we keep that so checkpoints sample the same.
    Returns:
        `Tensor` (num_steps + 1,) float32: σ_0 = 1 > ... > σ_{n-1} > σ_n = 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; must be >= 1")
    sigma_min = time_shift(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift)
    grid = torch.linspace(1.0, float(sigma_min), num_steps, dtype=torch.float64).float()
    return torch.cat([time_shift(grid, shift), torch.zeros(1)])


def euler_step(x: Tensor, v: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """Eq. 3 (Flow-Euler): x_{t-1} = x_t + (σ_{t-1} - σ_t) · v_θ(x_t, t). float32."""
    return x.float() + (sigma_next - sigma) * v.float()


def heun_step(x: Tensor, v: Tensor, sigma: float, sigma_next: float,
              velocity_at: Callable[[Tensor, float], Tensor]) -> Tensor:
    """Heun (2nd-order, trapezoidal) step of the flow ODE; plain Euler when σ_next = 0 (as EDM / diffusers' Heun)."""
    x_euler = euler_step(x, v, sigma, sigma_next)
    if sigma_next == 0:
        return x_euler
    v_next = velocity_at(x_euler, sigma_next).float()
    return x.float() + (sigma_next - sigma) * 0.5 * (v.float() + v_next)


# ----------------------------------------------------------------------------------------------- guidance
def cfg_combine(v_uncond: Tensor, v_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): v = v_uncond + w (v_cond - v_uncond); w = 1 is no guidance."""
    return v_uncond.float() + scale * (v_cond.float() - v_uncond.float())


@dataclass(frozen=True)
class GuidanceSchedule:
    """Guidance scale per sampler step: constant, or supplement H's "varied cfg" (a limited interval [37]).

    Steps are numbered 1..num_steps as in the paper ("varied cfg in steps [10, 30] with cfg scaling from 1.1 to 5.4"):
    inside [first_step, last_step] the scale ramps linearly from ``scale_start`` to ``scale_end``; outside it is 1.0
    (no guidance, so the sampler runs the conditional model alone). ``last_step=None`` means the final step.
    """

    scale_start: float = 1.0
    scale_end: float | None = None  # None: constant scale_start
    first_step: int = 1
    last_step: int | None = None

    @classmethod
    def constant(cls, scale: float) -> "GuidanceSchedule":
        return cls(scale_start=scale)

    @classmethod
    def varied(cls, first_step: int = 10, last_step: int | None = 30, scale_start: float = 1.1,
               scale_end: float = 5.4) -> "GuidanceSchedule":
        """Supplement H's final-model setting by default: steps [10, 30] (of 30), scale 1.1 -> 5.4."""
        return cls(scale_start=scale_start, scale_end=scale_end, first_step=first_step, last_step=last_step)

    def scale_at(self, step: int, num_steps: int) -> float:
        """Scale at 0-based sampler step ``step`` of ``num_steps`` (paper step number = step + 1)."""
        k, last = step + 1, num_steps if self.last_step is None else self.last_step
        if not 1 <= k <= num_steps:
            raise ValueError(f"step={step} outside 0..{num_steps - 1}")
        if not self.first_step <= k <= last:
            return 1.0
        if self.scale_end is None or last == self.first_step:
            return float(self.scale_start)
        frac = (k - self.first_step) / (last - self.first_step)
        return float(self.scale_start + frac * (self.scale_end - self.scale_start))


def as_guidance(guidance: float | GuidanceSchedule | None) -> GuidanceSchedule:
    """None -> no guidance; a number -> constant scale; a schedule as is."""
    if guidance is None:
        return GuidanceSchedule.constant(1.0)
    if isinstance(guidance, GuidanceSchedule):
        return guidance
    return GuidanceSchedule.constant(float(guidance))


def _cat_cond(cond: Any, uncond: Any) -> Any:
    """Concatenate conditional and unconditional inputs along the batch (tensors, tuples/lists or dicts of them)."""
    if isinstance(cond, Tensor):
        return torch.cat([cond, uncond])
    if isinstance(cond, dict):
        return {k: _cat_cond(cond[k], uncond[k]) for k in cond}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_cat_cond(c, u) for c, u in zip(cond, uncond))
    if cond is None and uncond is None:
        return None
    raise TypeError(f"cannot batch conditioning of type {type(cond).__name__}; use a Tensor, tuple or dict of Tensors")


def guided_call(net_fn: NetFn, x: Tensor, timestep: Tensor, cond: Any, uncond: Any, scale: float) -> Tensor:
    """One network evaluation with CFG: a doubled (cond, uncond) batch only where scale != 1. Output float32."""
    if scale == 1.0:
        return net_fn(x, timestep, cond).float()
    if uncond is None:
        raise ValueError(f"guidance scale {scale} needs an unconditional input, got uncond=None")
    out = net_fn(torch.cat([x, x]), torch.cat([timestep, timestep]), _cat_cond(cond, uncond)).float()
    out_cond, out_uncond = out.chunk(2)
    return cfg_combine(out_uncond, out_cond, scale)


# ----------------------------------------------------------------------------------------------- samplers
def sample_flow(velocity_fn: NetFn, noise: Tensor, num_steps: int, shift: float = TRAIN_SHIFT, sampler: str = "euler",
                guidance: float | GuidanceSchedule | None = None, cond: Any = None, uncond: Any = None,
                progress: bool = False) -> Tensor:
    """Integrate the flow ODE from σ = 1 (noise) to σ = 0 with Flow-Euler (Eq. 3) or Heun.

    Args:
        velocity_fn: ``velocity_fn(x (B, ...), sigma (B,) in [0, 1], cond) -> v (B, ...)``.
        noise (`Tensor` (B, ...)): x at σ = 1.
        guidance: None, a constant scale or a `GuidanceSchedule`; steps with scale 1 run the conditional batch only.
    Returns:
        `Tensor` (B, ...) float32: samples at σ = 0.
    """
    if sampler not in ("euler", "heun"):
        raise ValueError(f"sampler={sampler!r}; valid choices: 'euler', 'heun'")
    schedule, sigmas = as_guidance(guidance), flow_sigmas(num_steps, shift).tolist()
    x = noise.float()
    steps = range(num_steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"flow-{sampler}")
    for i in steps:
        scale = schedule.scale_at(i, num_steps)

        def velocity_at(x_: Tensor, s: float) -> Tensor:
            return guided_call(velocity_fn, x_, torch.full((x_.shape[0],), s, device=x_.device), cond, uncond, scale)

        v = velocity_at(x, sigmas[i])
        if sampler == "euler":
            x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        else:
            x = heun_step(x, v, sigmas[i], sigmas[i + 1], velocity_at)
    return x


def sample_ddpm_heun(eps_fn: NetFn, noise: Tensor, num_steps: int = 30,
                     guidance: float | GuidanceSchedule | None = None, cond: Any = None, uncond: Any = None,
                     scheduler_config: dict | None = None, progress: bool = False) -> Tensor:
    """Supplement H sampler: diffusers ``HeunDiscreteScheduler`` (30 steps) driving an ε-prediction model with CFG.

    Args:
        eps_fn: ``eps_fn(x_in (B, ...), timestep (B,) float in [0, 1000), cond) -> ε̂``; x_in is already scaled by
            ``scheduler.scale_model_input``, as every diffusers ε-model expects.
        noise (`Tensor` (B, ...)): unit Gaussian noise (scaled here by ``init_noise_sigma``).
        scheduler_config: the training ``DDPMScheduler`` config (default: `ddpm_scheduler()`'s).
    Returns:
        `Tensor` (B, ...) float32 samples.
    """
    from diffusers import HeunDiscreteScheduler

    scheduler = HeunDiscreteScheduler.from_config(scheduler_config or ddpm_scheduler().config)
    scheduler.set_timesteps(num_steps, device=noise.device)
    schedule = as_guidance(guidance)
    x = noise.float() * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm
        timesteps = tqdm(timesteps, desc="ddpm-heun")
    for j, t in enumerate(timesteps):
        # Heun evaluates at [t0, t1, t1, t2, t2, ...]: evaluation j belongs to sampler step j // 2.
        scale = schedule.scale_at(min(j // 2, num_steps - 1), num_steps)
        x_in = scheduler.scale_model_input(x, t)
        eps = guided_call(eps_fn, x_in, t.float().expand(x.shape[0]), cond, uncond, scale)
        x = scheduler.step(eps, t, x).prev_sample.float()
    return x


def ddpm_scheduler(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """Supplement H: DDPM, linear β over 1000 steps (1e-4 -> 0.02, DDPM's and diffusers' defaults), ε-prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type="epsilon")


# ----------------------------------------------------------------------------------------------- objectives
class FlowObjective:
    """Rectified flow (Eq. 1-2): σ = time_shift(logit-normal t), v-prediction; samples with Flow-Euler (Eq. 3)."""

    name = "flow"

    def __init__(self, shift: float = TRAIN_SHIFT, loc: float = LOGIT_NORMAL_LOC, scale: float = LOGIT_NORMAL_SCALE,
                 sampler: str = "euler", num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        self.shift, self.loc, self.scale, self.sampler, self.T = shift, loc, scale, sampler, num_train_timesteps

    def loss_terms(self, net_fn: NetFn, x0: Tensor, cond: Any,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Eq. 2 on a batch x0 (B, ...). Returns dict(loss (B,), t (B,) = σ in (0, 1), u (B,) = the unshifted
        logit-normal draw, x_t, noise, timestep (B,) = 1000 σ, pred, target); distillation (Eq. 4-6) evaluates its
        teacher on the same x_t and timestep."""
        n, dev = x0.shape[0], x0.device
        u = sample_logit_normal(n, self.loc, self.scale, generator, dev)
        sigma = time_shift(u, self.shift)
        noise = torch.randn(x0.shape, generator=generator, device=dev)
        x_t = interpolate(x0, noise, sigma)
        timestep = sigma * self.T
        pred = net_fn(x_t, timestep, cond)
        return dict(loss=flow_loss(pred, x0, noise), t=sigma, u=u, x_t=x_t, noise=noise, timestep=timestep,
                    pred=pred, target=velocity_target(x0, noise))

    def loss_at(self, net_fn: NetFn, x0: Tensor, cond: Any, t: Tensor, noise: Tensor) -> Tensor:
        """Eq. 2 at given σ = `t` (B,) and noise: the fixed-grid validation loss (SD3). Returns (B,)."""
        return flow_loss(net_fn(interpolate(x0, noise, t), t * self.T, cond), x0, noise)

    def sample(self, net_fn: NetFn, noise: Tensor, cond: Any, uncond: Any = None, steps: int = 30,
               guidance: float | GuidanceSchedule | None = None, progress: bool = False) -> Tensor:
        def velocity_fn(x: Tensor, sigma: Tensor, c: Any) -> Tensor:
            return net_fn(x, sigma * self.T, c)

        return sample_flow(velocity_fn, noise, steps, self.shift, self.sampler, guidance, cond, uncond, progress)


class DDPMObjective:
    """Supplement H ablation objective: DDPM, linear β over 1000 steps, ε-prediction; Heun sampling (30 steps)."""

    name = "ddpm"

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        self.scheduler = ddpm_scheduler(num_train_timesteps)
        self.T = num_train_timesteps

    def loss_terms(self, net_fn: NetFn, x0: Tensor, cond: Any,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """ε-prediction MSE. Returns dict(loss (B,), t (B,) = step / T in [0, 1), x_t, noise, timestep (B,) = the
        DDPM step, pred, target)."""
        n, dev = x0.shape[0], x0.device
        steps = torch.randint(0, self.T, (n,), generator=generator, device=dev)
        noise = torch.randn(x0.shape, generator=generator, device=dev)
        x_t = self.scheduler.add_noise(x0.float(), noise, steps)
        pred = net_fn(x_t, steps.float(), cond)
        loss = (pred.float() - noise).pow(2).flatten(1).mean(1)
        return dict(loss=loss, t=steps.float() / self.T, x_t=x_t, noise=noise, timestep=steps.float(), pred=pred,
                    target=noise)

    def loss_at(self, net_fn: NetFn, x0: Tensor, cond: Any, t: Tensor, noise: Tensor) -> Tensor:
        """ε-prediction MSE at DDPM step round(t (T-1)) for `t` (B,) in [0, 1] and given noise. Returns (B,)."""
        steps = (t * (self.T - 1)).round().long()
        x_t = self.scheduler.add_noise(x0.float(), noise, steps)
        return (net_fn(x_t, steps.float(), cond).float() - noise).pow(2).flatten(1).mean(1)

    def sample(self, net_fn: NetFn, noise: Tensor, cond: Any, uncond: Any = None, steps: int = 30,
               guidance: float | GuidanceSchedule | None = None, progress: bool = False) -> Tensor:
        return sample_ddpm_heun(net_fn, noise, steps, guidance, cond, uncond, dict(self.scheduler.config), progress)


OBJECTIVES = {"flow": FlowObjective, "ddpm": DDPMObjective}


def get_objective(name: str, **kwargs) -> FlowObjective | DDPMObjective:
    """'flow' (Sec. 3.3, the T2I model) or 'ddpm' (supplement H, the ImageNet architecture ablations)."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective={name!r}; valid choices: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)
