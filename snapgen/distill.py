"""Multi-level knowledge distillation (Sec. 3.3, Eq. 4-8; supplement F, Tab. 3) and the Fig. 6 loss-per-timestep log.

`kd_loss_fn(row, teacher, ...)` returns a `loss_fn(net, batch, generator) -> dict` for the one training loop
(`snapgen.train.train(cfg, out, loss_fn=...)`); `row` is an entry of `registry.KD_ROWS` (task / +kd / +featkd /
+t_scaling) or its name. Choices the paper leaves open, and ours:

- λ(t) of Eq. 7 is the standard (m=0, s=1) logit-normal density divided by its maximum (at t = 1/2, 4/√(2π)), so
  λ ∈ (0, 1] with λ(1/2) = 1. It is evaluated at the *unshifted* timestep t = sigmoid(u), u ~ N(0, 1), i.e. the
  draw whose density it is (`loss_terms()['u']`); σ_t = time_shift(t) is the noise level. `lambda_t='sigma'` uses σ.
- |L_task^t| / |L_kd^t| is a per-sample ratio of the two per-sample losses, without gradient (ε = 1e-8 guards /0).
- Rows without t-scaling use the linear baseline Eq. 6 with λ1 = λ2 = 1 (BK-SDM's output/feature KD weights).
- L_featkd: the student's last feature map (the input of `norm_out`, (B, C_s, H, W)) goes through ψ (two 3x3/1x1
  convolutions with a SiLU between, C_s -> D_T); the teacher's last-block image tokens (B, N, D_T) are reshaped to
  their patch grid (H/p, W/p) and resized bilinearly to the student's (H, W). Squared error averaged per sample.
- All squared norms are means over elements (as flow.flow_loss), so the losses are comparable across resolutions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import flow
from .config import public_config

RATIO_EPS = 1e-8  # guards |L_task| / |L_kd| when the student already matches the teacher
LAMBDA_MAX = 4.0 / math.sqrt(2.0 * math.pi)  # max of the standard logit-normal density, at t = 1/2 (its mode)
DEFAULT_KD_WEIGHT = 1.0      # λ1 of Eq. 6 (BK-SDM [35] uses 1 for output KD)
DEFAULT_FEATKD_WEIGHT = 1.0  # λ2 of Eq. 6 (BK-SDM [35] uses 1 for feature KD)
FIG6_BINS = 10               # equal-width t bins of Fig. 6
ROW_KEYS = ("task", "kd", "featkd", "t_scaling")


# ---- the equations ---------------------------------------------------------------------------------------------------


def output_kd_loss(v_student: Tensor, v_teacher: Tensor) -> Tensor:
    """Eq. 4: L_kd = || v_θT(x_t, t) - v_θ(x_t, t) ||², per sample.

    Args:
        v_student, v_teacher (`Tensor` (B, C, H, W)): velocities on the same x_t and t; the teacher's is a target.
    Returns:
        `Tensor` (B,) float32 (mean over elements).
    """
    return (v_teacher.detach().float() - v_student.float()).pow(2).flatten(1).mean(1)


def feature_kd_loss(projected_student: Tensor, teacher_features: Tensor) -> Tensor:
    """Eq. 5 for one layer pair (l_T = the teacher's last block, l = the student's last feature map):
    L_featkd = || f_θT^{l_T}(x_t, t) - ψ(f_θ^l(x_t, t)) ||², per sample.

    Args:
        projected_student (`Tensor` (B, D_T, H, W)): ψ(f_θ^l). teacher_features (`Tensor` (B, D_T, H, W)): the target.
    Returns:
        `Tensor` (B,) float32 (mean over elements).
    """
    return (teacher_features.detach().float() - projected_student.float()).pow(2).flatten(1).mean(1)


def timestep_weight(t: Tensor) -> Tensor:
    """Eq. 7's λ(t): the standard (location 0, scale 1) logit-normal density normalised by its maximum, in (0, 1].

    Args:
        t (`Tensor` (B,)) in (0, 1).
    Returns:
        `Tensor` (B,) float32; 1 at t = 1/2, → 0 as t → 0 or 1.
    """
    return flow.logit_normal_density(t.clamp(1e-6, 1 - 1e-6), 0.0, 1.0) / LAMBDA_MAX


def timestep_aware_scaling(loss_task: Tensor, loss_distill: Tensor, t: Tensor) -> Tensor:
    """Eq. 7: S(L_task, L_kd) = E_t[ λ(t) L_task^t + (1 - λ(t)) |L_task^t| / |L_kd^t| · L_kd^t ].

    Args:
        loss_task, loss_distill (`Tensor` (B,)): per-sample losses (L_kd or L_featkd) at timesteps `t`.
        t (`Tensor` (B,)) in (0, 1): the timesteps λ is evaluated at.
    Returns:
        scalar: the batch estimate of the expectation. The magnitude ratio carries no gradient.
    """
    lam = timestep_weight(t)
    ratio = (loss_task.detach().abs() / (loss_distill.detach().abs() + RATIO_EPS))
    return (lam * loss_task + (1 - lam) * ratio * loss_distill).mean()


def linear_kd_objective(loss_task: Tensor, loss_kd: Tensor | None = None, loss_featkd: Tensor | None = None,
                        lambda1: float = DEFAULT_KD_WEIGHT, lambda2: float = DEFAULT_FEATKD_WEIGHT) -> Tensor:
    """Eq. 6 (the linear baseline): L = L_task + λ1 L_kd + λ2 L_featkd. Per-sample inputs (B,); absent terms are
    left out. Returns a scalar (batch mean)."""
    total = loss_task.mean()
    if loss_kd is not None:
        total = total + lambda1 * loss_kd.mean()
    if loss_featkd is not None:
        total = total + lambda2 * loss_featkd.mean()
    return total


def multi_level_distillation_loss(loss_task: Tensor, loss_kd: Tensor | None, loss_featkd: Tensor | None,
                                  t: Tensor) -> Tensor:
    """Eq. 8: L_MD = S(L_task, L_kd) + S(L_task, L_featkd). Per-sample inputs (B,), `t` (B,); a term that is None
    (a Tab. 3 row without it) is left out, and with neither this is L_task. Returns a scalar."""
    terms = [timestep_aware_scaling(loss_task, d, t) for d in (loss_kd, loss_featkd) if d is not None]
    return sum(terms) if terms else loss_task.mean()


# ---- features --------------------------------------------------------------------------------------------------------


class FeatureProjector(nn.Module):
    """ψ of Eq. 5: two convolutions (3x3 then 1x1, SiLU between) mapping student features (B, C_s, H, W) to the
    teacher's width (B, D_T, H, W). The spatial size is kept; the teacher's tokens are resized to it instead."""

    def __init__(self, student_channels: int, teacher_dim: int):
        super().__init__()
        self.student_channels, self.teacher_dim = student_channels, teacher_dim
        self.conv1 = nn.Conv2d(student_channels, teacher_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(teacher_dim, teacher_dim, 1)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C_s, H, W) -> (B, D_T, H, W)."""
        return self.conv2(F.silu(self.conv1(features)))


def student_feature_channels(unet_config) -> int:
    """C_s: channels of the UNet's last feature map (the input of norm_out) = block_out_channels[0]."""
    return int(unet_config.block_out_channels[0])


def tokens_to_grid(tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Teacher tokens (B, N = h*w, D_T) -> (B, D_T, h, w) on the patch grid -> bilinear resize to `size` (H, W)."""
    b, n, d = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h}x{w} patch grid")
    fmap = tokens.transpose(1, 2).reshape(b, d, h, w)  # (B, D_T, h, w), row-major as diffusers' PatchEmbed
    if (h, w) != tuple(size):
        fmap = F.interpolate(fmap.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return fmap


class StudentFeatureTap:
    """Context manager: records the input of `net.norm_out` (the UNet's last feature map (B, C_s, H, W))."""

    def __init__(self, net: nn.Module):
        self.module = getattr(net, "module", net).norm_out  # unwrap DDP
        self.features: Tensor | None = None

    def __enter__(self) -> "StudentFeatureTap":
        def hook(module, args):
            self.features = args[0]
        self.handle = self.module.register_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# ---- Fig. 6: mean loss per timestep bin ------------------------------------------------------------------------------


def bin_by_timestep(t: Tensor, losses: Mapping[str, Tensor], num_bins: int = FIG6_BINS) -> dict[str, tuple[float, int]]:
    """Per-sample losses grouped into `num_bins` equal-width bins of t in [0, 1].

    Args:
        t (`Tensor` (B,)). losses: name -> (B,) per-sample losses.
    Returns:
        {f"fig6_{name}_bin{k}": (sum, count)} for every non-empty bin k (0-based; bin k covers [k/n, (k+1)/n)).
    """
    idx = (t.detach().float().clamp(0, 1 - 1e-7) * num_bins).long().cpu()
    out = {}
    for name, values in losses.items():
        values = values.detach().float().cpu()
        for k in idx.unique().tolist():
            sel = values[idx == k]
            out[f"fig6_{name}_bin{k}"] = (float(sel.sum()), int(sel.numel()))
    return out


class TimestepBinMeter:
    """Accumulates `bin_by_timestep` over steps; `flush()` returns the means ({'fig6_task_bin3': ...}) and resets."""

    def __init__(self, num_bins: int = FIG6_BINS):
        self.num_bins = num_bins
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def update(self, t: Tensor, losses: Mapping[str, Tensor]) -> None:
        for key, (s, n) in bin_by_timestep(t, losses, self.num_bins).items():
            self.sums[key][0] += s
            self.sums[key][1] += n

    def flush(self) -> dict[str, float]:
        out = {k: s / n for k, (s, n) in sorted(self.sums.items()) if n}
        self.sums.clear()
        return out


def read_fig6(out: str) -> list[dict[str, Any]]:
    """The Fig. 6 bins that the training loop logged (from `loss_fn.flush_metrics()`) into `<out>/metrics.jsonl`."""
    from .runs import read_metrics

    return [{k: v for k, v in r.items() if k == "step" or k.startswith("fig6_")}
            for r in read_metrics(out) if any(k.startswith("fig6_") for k in r)]


def plot_fig6(records: list[dict[str, Any]], path: str, num_bins: int | None = None) -> str:
    """Fig. 6: mean L_task and L_kd per timestep bin, averaged over the logged `records` (metrics.jsonl lines, or
    MLflow metric dicts, with keys `fig6_<task|kd>_bin<k>`). Writes a PNG to `path`; returns it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sums: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in records:
        for key, value in r.items():
            if key.startswith("fig6_") and "_bin" in key:
                name, k = key[len("fig6_"):].rsplit("_bin", 1)
                sums[(name, int(k))].append(float(value))
    if not sums:
        raise ValueError("no fig6_<name>_bin<k> metrics in the records; log them with kd_loss_fn(..., fig6=True) "
                         "and a loop that records loss_fn.flush_metrics()")
    n = num_bins or 1 + max(k for _, k in sums)
    centers = [(k + 0.5) / n for k in range(n)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = {"task": r"$\mathcal{L}_{task}$", "kd": r"$\mathcal{L}_{kd}$", "featkd": r"$\mathcal{L}_{featkd}$"}
    for name in sorted({name for name, _ in sums}):
        ys = [sum(sums[(name, k)]) / len(sums[(name, k)]) if sums.get((name, k)) else float("nan") for k in range(n)]
        ax.plot(centers, ys, marker="o", label=labels.get(name, name))
    ax.set_xlabel("t")
    ax.set_ylabel("mean loss magnitude")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Fig. 6: loss magnitude per timestep")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


# ---- the loss for the training loop ----------------------------------------------------------------------------------


def resolve_row(row: Mapping[str, bool] | str) -> dict[str, bool]:
    """A `registry.KD_ROWS` entry (or its name) -> {task, kd, featkd, t_scaling}, validated."""
    from .registry import KD_ROWS

    if isinstance(row, str):
        if row not in KD_ROWS:
            raise KeyError(f"unknown KD row {row!r}; valid rows: {', '.join(KD_ROWS)}")
        row = KD_ROWS[row]
    unknown = sorted(set(row) - set(ROW_KEYS))
    if unknown:
        raise KeyError(f"unknown KD row keys {unknown}; valid keys: {', '.join(ROW_KEYS)}")
    row = {k: bool(row.get(k, False)) for k in ROW_KEYS}
    if not row["task"]:
        raise ValueError(f"KD row {row} has task=False; every row of supplement Tab. 3 keeps L_task")
    if row["featkd"] and not row["kd"]:
        raise ValueError(f"KD row {row}: featkd without kd is not a Tab. 3 row")
    return row


def kd_loss_fn(row: Mapping[str, bool] | str, teacher=None, projector: FeatureProjector | None = None,
               objective: flow.FlowObjective | None = None, *, student_channels: int | None = None,
               kd_weight: float = DEFAULT_KD_WEIGHT, featkd_weight: float = DEFAULT_FEATKD_WEIGHT,
               lambda_t: str = "u", fig6: bool = True, num_bins: int = FIG6_BINS) -> Callable:
    """The loss of one supplement Tab. 3 row, for `snapgen.train.train(cfg, out, loss_fn=...)`.

    Args:
        row: a `registry.KD_ROWS` entry or name ('task', 'task+kd', 'task+kd+featkd', 'task+kd+featkd+t_scaling').
        teacher: a `teachers.TeacherAdapter` (frozen; moved to the batch's device on first use). None for 'task'.
        projector: ψ for rows with featkd; built from `student_channels` (see `student_feature_channels`) and the
            teacher's width when None.
        objective: a `flow.FlowObjective` (KD needs velocity teachers; default FlowObjective()).
        kd_weight, featkd_weight: λ1, λ2 of Eq. 6 (rows without t-scaling).
        lambda_t: 'u' (the unshifted logit-normal timestep, default) or 'sigma' (the shifted noise level) for λ(t).
        fig6: accumulate per-t-bin means of L_task and L_kd (Fig. 6) for `flush_metrics()`.
    Returns:
        `loss_fn(net, batch, generator) -> dict(loss scalar, loss_task, loss_kd, loss_featkd (detached batch means;
        0 where the row has no such term), t (B,) σ, u (B,), per_sample dict of (B,) losses)`, with attributes
        `extra_modules` ({'projector': ψ} or {}: pass it as `train(..., extra_modules=loss_fn.extra_modules)` so the
        loop optimises, clips, checkpoints and restores ψ with the net), `config` (a dict describing the row, for
        run identity) and `flush_metrics() -> dict[str, float]` (the Fig. 6 means since the last flush).

    Use: `lf = kd_loss_fn(row, teacher, student_channels=student_feature_channels(cfg.unet_config(text_dim)))`;
    `train(cfg, out, loss_fn=lf, extra_modules=lf.extra_modules)`; the Fig. 6 bins land in metrics.jsonl.
    """
    from .conditioning import unet_fn

    row = resolve_row(row)
    objective = objective or flow.FlowObjective()
    if not isinstance(objective, flow.FlowObjective):
        raise ValueError(f"KD needs the flow objective (velocity teachers, Eq. 4); got {type(objective).__name__}")
    if lambda_t not in ("u", "sigma"):
        raise ValueError(f"lambda_t={lambda_t!r}; valid choices: 'u', 'sigma'")
    needs_teacher = row["kd"] or row["featkd"]
    if needs_teacher and teacher is None:
        raise ValueError(f"KD row {row} needs a teacher")
    if row["featkd"] and projector is None:
        if student_channels is None:
            raise ValueError("a featkd row needs `projector` or `student_channels` (student_feature_channels(cfg))")
        projector = FeatureProjector(student_channels, teacher.feature_dim)
    projector = projector if row["featkd"] else None
    meter = TimestepBinMeter(num_bins)

    def loss_fn(net, batch, generator):
        x0, cond = batch["x0"], batch["cond"]
        tap = StudentFeatureTap(net) if projector is not None else None
        if tap is not None:
            tap.__enter__()
        try:
            terms = objective.loss_terms(unet_fn(net), x0, cond, generator)
        finally:
            if tap is not None:
                tap.__exit__()
        loss_task = terms["loss"]  # (B,) Eq. 2
        t_lambda = terms["u"] if lambda_t == "u" else terms["t"]
        loss_kd = loss_featkd = None
        if needs_teacher:
            if next(teacher.parameters()).device != x0.device:
                teacher.to(x0.device)
            with torch.no_grad():
                out_t = teacher(terms["x_t"], terms["timestep"], cond)
            if row["kd"]:
                loss_kd = output_kd_loss(terms["pred"], out_t["v"])
            if projector is not None:
                f_student = tap.features  # (B, C_s, H, W)
                target = tokens_to_grid(out_t["features"], out_t["grid"], f_student.shape[-2:])
                loss_featkd = feature_kd_loss(projector(f_student), target)
        if row["t_scaling"]:
            loss = multi_level_distillation_loss(loss_task, loss_kd, loss_featkd, t_lambda)  # Eq. 8
        else:
            loss = linear_kd_objective(loss_task, loss_kd, loss_featkd, kd_weight, featkd_weight)  # Eq. 6
        per_sample = {"task": loss_task.detach()}
        if loss_kd is not None:
            per_sample["kd"] = loss_kd.detach()
        if loss_featkd is not None:
            per_sample["featkd"] = loss_featkd.detach()
        if fig6:
            meter.update(t_lambda, per_sample)
        zero = torch.zeros((), device=x0.device)
        return dict(loss=loss, loss_task=loss_task.detach().mean(),
                    loss_kd=loss_kd.detach().mean() if loss_kd is not None else zero,
                    loss_featkd=loss_featkd.detach().mean() if loss_featkd is not None else zero,
                    t=terms["t"], u=terms["u"], per_sample=per_sample)

    loss_fn.extra_modules = {"projector": projector} if projector is not None else {}
    loss_fn.config = {"kd_row": row, "kd_weight": kd_weight, "featkd_weight": featkd_weight, "lambda_t": lambda_t,
                      "teacher": public_config(teacher.config) if teacher is not None else None}
    loss_fn.flush_metrics = meter.flush
    loss_fn.projector = projector
    return loss_fn
