"""Multi-level KD (Eq. 4-8): λ(t), the timestep-aware scaling S, ψ and feature shapes, gradient flow, Fig. 6 bins,
and exact resume of a KD run through the one training loop."""

import math

import pytest
import torch

from snapgen import distill, flow
from snapgen.distill import (FeatureProjector, StudentFeatureTap, bin_by_timestep, kd_loss_fn, linear_kd_objective,
                             multi_level_distillation_loss, timestep_aware_scaling, timestep_weight, tokens_to_grid)
from snapgen.models import EfficientUNet
from snapgen.registry import KD_ROWS, resolve, shrink
from snapgen.teachers import SmallTeacherConfig, build_small_teacher

TEXT_DIM = 16
RES = 8


def tiny_student() -> EfficientUNet:
    torch.manual_seed(0)
    cfg = shrink(resolve("snapgen-imagenet"), base_width=16, context_dim=TEXT_DIM)
    return EfficientUNet.from_unet_config(cfg.replace(in_channels=3, out_channels=3))


def tiny_teacher(text_dim=TEXT_DIM, res=RES):
    return build_small_teacher(SmallTeacherConfig(resolution=res, num_layers=2, num_attention_heads=2,
                                                  attention_head_dim=8), text_dim, seed=1)


def batch(b=4):
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, 5, dtype=torch.bool)
    return {"x0": torch.randn(b, 3, RES, RES, generator=g).clamp(-1, 1),
            "cond": (torch.randn(b, 5, TEXT_DIM, generator=g), mask)}


def test_lambda_is_normalised_standard_logit_normal_density():
    t = torch.linspace(0.001, 0.999, 999)
    lam = timestep_weight(t)
    assert lam.max() <= 1 + 1e-6 and lam.min() > 0
    assert timestep_weight(torch.tensor([0.5])).item() == pytest.approx(1.0, abs=1e-6)
    assert t[lam.argmax()].item() == pytest.approx(0.5, abs=1e-3)
    # by hand: at t = sigmoid(1), λ = exp(-1/2) / (4 t (1 - t))
    t1 = 1 / (1 + math.exp(-1))
    assert timestep_weight(torch.tensor([t1])).item() == pytest.approx(math.exp(-0.5) / (4 * t1 * (1 - t1)), rel=1e-5)
    assert torch.allclose(lam, flow.logit_normal_density(t) / flow.logit_normal_density(torch.tensor(0.5)))
    assert timestep_weight(torch.tensor([0.01, 0.99])).max() < 0.01  # the ends: almost all teacher


def test_timestep_aware_scaling_by_hand():
    t1 = 1 / (1 + math.exp(-1))
    lam1 = math.exp(-0.5) / (4 * t1 * (1 - t1))
    t = torch.tensor([0.5, t1])
    task = torch.tensor([2.0, 4.0], requires_grad=True)
    kd = torch.tensor([1.0, 8.0], requires_grad=True)
    s = timestep_aware_scaling(task, kd, t)
    # value: λ L_t + (1-λ) (L_t / L_kd) L_kd = L_t per sample, so S = mean(L_task) = 3
    assert s.item() == pytest.approx(3.0, rel=1e-6)
    s.backward()
    # gradients: dS/dL_task = λ / B (the ratio has no gradient); dS/dL_kd = (1 - λ) |L_task| / |L_kd| / B
    assert task.grad.tolist() == pytest.approx([1.0 / 2, lam1 / 2], rel=1e-5)
    assert kd.grad.tolist() == pytest.approx([0.0, (1 - lam1) * (4.0 / 8.0) / 2], rel=1e-5, abs=1e-7)
    # Eq. 8 adds the two S terms; Eq. 6 is the plain weighted sum
    feat = torch.tensor([0.5, 0.25])
    assert multi_level_distillation_loss(task, kd, feat, t).item() == pytest.approx(6.0, rel=1e-6)
    assert multi_level_distillation_loss(task, None, None, t).item() == pytest.approx(3.0)
    assert linear_kd_objective(task, kd, feat, 2.0, 4.0).item() == pytest.approx(3 + 2 * 4.5 + 4 * 0.375)


def test_feature_shapes_and_projector():
    net, teacher = tiny_student(), tiny_teacher()
    b = batch(2)
    with StudentFeatureTap(net) as tap:
        net(b["x0"], torch.full((2,), 500.0), *b["cond"])
    c_s = distill.student_feature_channels(net.unet_config)
    assert tap.features.shape == (2, c_s, RES, RES)
    out = teacher(b["x0"], torch.full((2,), 500.0), b["cond"])
    assert out["features"].shape == (2, (RES // 2) ** 2, teacher.feature_dim)
    target = tokens_to_grid(out["features"], out["grid"], (RES, RES))
    assert target.shape == (2, teacher.feature_dim, RES, RES)
    # the reshape is row-major over the patch grid (diffusers' PatchEmbed flattens (h, w) row-major)
    on_grid = tokens_to_grid(out["features"], out["grid"], out["grid"])
    assert torch.equal(on_grid[:, :, 1, 2], out["features"][:, 1 * out["grid"][1] + 2])
    psi = FeatureProjector(c_s, teacher.feature_dim)
    assert psi(tap.features).shape == target.shape
    assert len([m for m in psi.modules() if isinstance(m, torch.nn.Conv2d)]) == 2


@pytest.mark.parametrize("row", list(KD_ROWS))
def test_gradients_reach_student_and_projector_only(row):
    net, teacher = tiny_student(), tiny_teacher()
    loss_fn = kd_loss_fn(row, teacher, student_channels=distill.student_feature_channels(net.unet_config))
    net.train()
    teacher.train()  # ignored: the teacher stays in eval mode
    terms = loss_fn(net, batch(), torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    has_psi = KD_ROWS[row]["featkd"]
    assert bool(loss_fn.extra_modules) == has_psi
    if has_psi:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.extra_modules["projector"].parameters())
    assert (terms["loss_kd"] > 0).item() == KD_ROWS[row]["kd"]
    assert (terms["loss_featkd"] > 0).item() == has_psi
    # the loss is the row's equation
    per = terms["per_sample"]
    u = terms["u"]
    if KD_ROWS[row]["t_scaling"]:
        expected = multi_level_distillation_loss(per["task"], per["kd"], per["featkd"], u)
    else:
        expected = linear_kd_objective(per["task"], per.get("kd"), per.get("featkd"))
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_fn_validates():
    teacher = tiny_teacher()
    with pytest.raises(KeyError, match="valid rows"):
        kd_loss_fn("kd-only", teacher)
    with pytest.raises(ValueError, match="needs a teacher"):
        kd_loss_fn("task+kd", None)
    with pytest.raises(ValueError, match="student_channels"):
        kd_loss_fn("task+kd+featkd", teacher)
    with pytest.raises(ValueError, match="flow objective"):
        kd_loss_fn("task+kd", teacher, objective=flow.DDPMObjective())


def test_fig6_bins_and_plot(tmp_path):
    t = torch.tensor([0.05, 0.07, 0.55, 0.999])
    bins = bin_by_timestep(t, {"task": torch.tensor([1.0, 3.0, 5.0, 7.0])}, num_bins=10)
    assert bins == {"fig6_task_bin0": (4.0, 2), "fig6_task_bin5": (5.0, 1), "fig6_task_bin9": (7.0, 1)}
    net, teacher = tiny_student(), tiny_teacher()
    loss_fn = kd_loss_fn("task+kd", teacher)
    for seed in range(2):
        loss_fn(net, batch(), torch.Generator().manual_seed(seed))
    metrics = loss_fn.flush_metrics()
    assert metrics and all(k.startswith(("fig6_task_bin", "fig6_kd_bin")) for k in metrics)
    assert loss_fn.flush_metrics() == {}
    path = distill.plot_fig6([{"step": 1, **metrics}], str(tmp_path / "fig6.png"))
    assert (tmp_path / "fig6.png").stat().st_size > 0 and path.endswith("fig6.png")
    with pytest.raises(ValueError, match="fig6"):
        distill.plot_fig6([{"step": 1, "train_loss": 1.0}], str(tmp_path / "x.png"))


def test_kd_run_trains_projector_and_resumes_exactly(tmp_path, interrupt_at):
    from snapgen.runs import read_metrics
    from snapgen.train import make_config, train

    cfg = make_config("smoke", width=16, resolution=RES, batch_size=4, steps=4, warmup=0, log_every=1, val_every=100,
                      ckpt_every=2, val_size=8, val_timesteps=2, sample_steps=2, samples_per_class=1, train_limit=64)
    student_channels = distill.student_feature_channels(cfg.unet_config(384))

    def make_loss():
        torch.manual_seed(123)
        return kd_loss_fn("task+kd+featkd+t_scaling", tiny_teacher(384), student_channels=student_channels)

    full = make_loss()
    psi = full.extra_modules["projector"]
    psi0 = [p.detach().clone() for p in psi.parameters()]
    train(cfg, tmp_path / "full", loss_fn=full, extra_modules=full.extra_modules, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(psi0, psi.parameters())), "ψ not trained"
    fig6 = distill.read_fig6(tmp_path / "full")
    assert [r["step"] for r in fig6] == [1, 2, 3, 4] and any(k.startswith("fig6_kd_bin") for k in fig6[0])

    with pytest.raises(interrupt_at.error):
        lf = make_loss()
        train(cfg, tmp_path / "resumed", loss_fn=lf, extra_modules=lf.extra_modules, hooks=[interrupt_at(3)],
              progress=False)
    lf = make_loss()
    with torch.no_grad():  # a resumed ψ must come from the checkpoint, not from its fresh initialisation
        for p in lf.extra_modules["projector"].parameters():
            p.add_(1.0)
    train(cfg, tmp_path / "resumed", loss_fn=lf, extra_modules=lf.extra_modules, progress=False)
    losses = lambda out: [r["train_loss"] for r in read_metrics(out) if "train_loss" in r]
    assert losses(tmp_path / "full") == losses(tmp_path / "resumed")
    assert len(losses(tmp_path / "full")) == 4
