"""Adversarial step distillation (Eq. 9): gradient routing of the D and G steps, GAN losses, few-step sampling, and
an end-to-end smoke run that resumes exactly."""

import json

import pytest
import torch

from snapgen import flow
from snapgen.models import EfficientUNet
from snapgen.registry import resolve, shrink
from snapgen.step_distill import (DiscriminatorHeads, StepDistillConfig, _student_forward, d_loss,
                                  discriminator_logits, discriminator_sigma, discriminator_step, few_step_sample,
                                  g_adv_loss, generator_step, head_layers, step_distill, unshift)
from snapgen.teachers import SmallTeacherConfig, build_small_teacher

RES = 8


def tiny_student(text_dim):
    torch.manual_seed(0)
    cfg = shrink(resolve("snapgen-imagenet"), base_width=16, context_dim=text_dim)
    return EfficientUNet.from_unet_config(cfg.replace(in_channels=3, out_channels=3))


def tiny_teacher(text_dim):
    return build_small_teacher(SmallTeacherConfig(resolution=RES, num_layers=3, num_attention_heads=2,
                                                  attention_head_dim=8), text_dim, seed=1)


def setup(text_dim=16, b=4):
    net, teacher = tiny_student(text_dim), tiny_teacher(text_dim)
    heads = DiscriminatorHeads(teacher.feature_dim, head_layers(teacher.num_layers, 2))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(b, 3, RES, RES, generator=g).clamp(-1, 1)
    cond = (torch.randn(b, 5, text_dim, generator=g), torch.ones(b, 5, dtype=torch.bool))
    return net, teacher, heads, x0, cond, flow.flow_sigmas(4)


def grads(module):
    return [p.grad for p in module.parameters()]


def test_d_step_trains_heads_only():
    net, teacher, heads, x0, cond, sigmas = setup()
    out = discriminator_step(net, teacher, heads, x0, cond, sigmas, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert all(g is not None for g in grads(heads))
    # (the hinge gradient of a head's bias is exactly 0 while every margin is active: check the weights)
    assert all(head[1].weight.grad.abs().sum() > 0 for head in heads.heads)
    assert all(g is None for g in grads(net)) and all(g is None for g in grads(teacher))
    assert not teacher.training


@pytest.mark.parametrize("gan_loss", ["hinge", "nonsaturating"])
def test_g_step_trains_student_only(gan_loss):
    net, teacher, heads, x0, cond, sigmas = setup()
    out = generator_step(net, teacher, heads, x0, cond, sigmas, torch.Generator().manual_seed(0),
                         StepDistillConfig(gan_loss=gan_loss))
    out["loss"].backward()
    assert all(g is not None for g in grads(net))
    assert all(g is None for g in grads(heads)) and all(g is None for g in grads(teacher))
    assert all(p.requires_grad for p in heads.parameters())  # restored for the next D step
    # L_G = adv + S(L_task, L_kd); S's value is mean(L_task) (Eq. 7 rescales L_kd to L_task's magnitude)
    assert out["loss"].item() == pytest.approx(out["loss_adv"].item() + out["loss_task"].item(), rel=1e-4)
    assert out["loss_kd"] > 0


def test_gan_losses_by_hand():
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])]
    # hinge D: mean(relu(1 - r)) + mean(relu(1 + f)) = 0.25 + 0.5
    assert d_loss(real, fake, "hinge").item() == pytest.approx(0.75)
    assert g_adv_loss(fake, "hinge").item() == pytest.approx(1.0)
    sp = torch.nn.functional.softplus
    assert d_loss(real, fake, "nonsaturating").item() == pytest.approx(
        (sp(torch.tensor([-2.0, -0.5])).mean() + sp(torch.tensor([-2.0, 0.0])).mean()).item())
    with pytest.raises(ValueError, match="hinge"):
        StepDistillConfig(gan_loss="wgan")


def test_schedule_helpers_and_few_step_sampling():
    sigma = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(flow.time_shift(unshift(sigma)), sigma, atol=1e-6)
    assert head_layers(8, 4) == [0, 2, 5, 7] and head_layers(8, 1) == [7]
    net, teacher, heads, x0, cond, sigmas = setup()
    noise = torch.randn_like(x0)
    for steps in (4, 8):
        x = few_step_sample(net, noise, cond, steps=steps)
        assert x.shape == x0.shape and torch.isfinite(x).all()


def tiny_student_run(out):
    """A snapgen.train run (pixel space, RES px, MiniLM prompts): step distillation takes a run directory."""
    from snapgen.train import make_config, train

    train(make_config("smoke", resolution=RES, batch_size=4, train_limit=40, val_size=4, val_timesteps=2, steps=1,
                      width=16, val_every=1, ckpt_every=1, samples_per_class=1, sample_steps=1), out, progress=False)
    return EfficientUNet.from_pretrained(out / "checkpoint" / "unet_ema")


def test_step_distill_smoke_resumes_exactly(tmp_path):
    student = tiny_student_run(tmp_path / "student")
    teacher = tiny_teacher(384)
    kwargs = dict(progress=False, batch_size=4, log_every=1, ckpt_every=2,
                  eval_steps=(4, 8), before_steps=(4, 28), eval_samples_per_class=1, reference_steps=2)
    full = step_distill(tmp_path / "student", teacher, tmp_path / "full", steps=4, **kwargs)
    assert full["step"] == 4 and (tmp_path / "full" / "samples" / "fewstep_4.png").is_file()
    assert {"fewstep_mse_vs_teacher_4", "fewstep_mse_vs_teacher_8", "before_mse_vs_teacher_4",
            "before_mse_vs_teacher_28"} <= set(full)
    assert (tmp_path / "full" / "samples" / "before_28.png").is_file()
    # Before and after differ: the distilled student moved (same noise, same reference).
    assert full["before_mse_vs_teacher_4"] != full["fewstep_mse_vs_teacher_4"]
    step_distill(tmp_path / "student", teacher, tmp_path / "resumed", steps=2, evaluate=False, **kwargs)
    step_distill(tmp_path / "student", teacher, tmp_path / "resumed", steps=4, evaluate=False, **kwargs)
    read = lambda out: [{k: v for k, v in json.loads(l).items() if k != "time"}  # wall clock differs
                        for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert read(tmp_path / "full") == read(tmp_path / "resumed")
    assert len(read(tmp_path / "full")) == 4
    # a student moved, the teacher did not
    after = EfficientUNet.from_pretrained(tmp_path / "full" / "checkpoint" / "unet")
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), after.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                  tiny_teacher(384).state_dict().values()))
    with pytest.raises(RuntimeError, match="another config"):
        step_distill(tmp_path / "student", teacher, tmp_path / "full", steps=5, **{**kwargs, "lr_g": 1.0})


def test_cli_distils_a_run_that_samples_in_four_steps(tmp_path, monkeypatch):
    """`python -m snapgen.step_distill RUN --out DIR`, then `python -m snapgen.sample DIR --steps 4` (issue: done when)."""
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))  # the small teacher trained here is cached there
    from PIL import Image

    from snapgen.sample import main as sample_main
    from snapgen.step_distill import main as distill_main
    from snapgen.train import make_config, train

    train(make_config("smoke", resolution=8, batch_size=4, train_limit=40, val_size=4, val_timesteps=2, steps=2,
                      val_every=2, ckpt_every=2, samples_per_class=1, sample_steps=2), tmp_path / "student",
          progress=False)
    distill_main([str(tmp_path / "student"), "--out", str(tmp_path / "fewstep"), "--steps", "2", "--no-eval",
                  "--teacher-set", "num_layers=1", "num_attention_heads=2", "attention_head_dim=8", "steps=2",
                  "batch_size=4", "--set", "batch_size=4"])
    sample_main([str(tmp_path / "fewstep"), "--steps", "4", "--cfg", "1", "--n", "2", "--out", str(tmp_path / "g.png")])
    grid = Image.open(tmp_path / "g.png")
    assert grid.size[1] == 10 * 256 and grid.size[0] > 2 * 256  # labelled rows of 8 px tiles shown at 256 px


def test_ladd_heads_learn_through_the_engine_and_steer_the_student(tmp_path, one_thread):
    """Issue 19: through `fit` (the real D and G phases), the heads on the frozen teacher separate real images from a
    barely trained student's one-step guesses well above chance, the diagnostics are logged, and the student's
    adversarial gradient is non-zero and points the right way (a step along it raises D's score of its fakes)."""
    from snapgen.runs import find_checkpoint, read_metrics, read_state
    from snapgen.step_distill import StepDistillStage

    tiny_student_run(tmp_path / "student")
    teacher = tiny_teacher(384)
    # one student step (σ 1 -> 0): D compares clean x_0 with x'_0, the plainly wrong guess of an untrained student
    options = dict(batch_size=8, student_steps=1, lr_d=1e-2, log_every=10, ckpt_every=100, chance_window=0)
    step_distill(tmp_path / "student", teacher, tmp_path / "out", steps=100, progress=False, evaluate=False, **options)
    records = [r for r in read_metrics(tmp_path / "out") if "d_acc_real" in r]
    balanced = [(r["d_acc_real"] + r["d_acc_fake"]) / 2 for r in records]
    assert balanced[-1] > 0.75 and balanced[-1] > balanced[0], balanced
    assert records[-1]["d_logit_real"] > records[-1]["d_logit_fake"]
    assert all(r["g_adv_grad"] > 0 and r["g_task_grad"] > 0 and r["g_adv_grad_ratio"] > 0 for r in records)

    stage = StepDistillStage(tmp_path / "student", teacher, StepDistillConfig(**options))
    stage.setup(torch.device("cpu"), 0, 1)
    stage.heads.load_state_dict(read_state(find_checkpoint(tmp_path / "out"))["modules"]["heads"])
    net = EfficientUNet.from_pretrained(tmp_path / "out" / "checkpoint" / "unet")
    batch = stage.batch(100, torch.Generator().manual_seed(0))
    cond = stage.conditioning(batch["prompt_idx"])

    def fake_logits():  # D's logits of the student's x'_{t-1}, from the same noise every call
        g = torch.Generator().manual_seed(1)
        s = _student_forward(net, batch["x0"], cond, stage.sigmas, g)
        sigma_d = discriminator_sigma(s, "next", g)
        x_fake = flow.interpolate(s["x0_pred"], s["renoise"], sigma_d)
        return discriminator_logits(teacher, stage.heads, x_fake, sigma_d, cond)

    params = list(net.parameters())
    logits = fake_logits()
    before = torch.stack([f.mean() for f in logits]).mean().item()
    adv_grads = torch.autograd.grad(g_adv_loss(logits, "hinge"), params, allow_unused=True)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in adv_grads if g is not None))
    assert norm > 0
    with torch.no_grad():
        for p, g in zip(params, adv_grads):
            if g is not None:
                p -= 1e-2 * g / norm  # a small step along -grad L_adv^G
        after = torch.stack([f.mean() for f in fake_logits()]).mean().item()
    assert after > before


def test_adversarial_options_are_checked_and_the_chance_watch_warns_once():
    from snapgen.adversarial import ChanceWatch

    for bad, match in ((dict(d_noise="high"), "d_noise"), (dict(head_blocks=(1, 1)), "head_blocks"),
                       (dict(adv_start=-1), "adv_start"), (dict(adv_weight=-0.5), "adv_weight"),
                       (dict(d_warmup=-1), "d_warmup")):
        with pytest.raises(ValueError, match=match):
            StepDistillConfig(**bad)
    watch = ChanceWatch("d_", window=100)
    at_chance = lambda step: {"step": step, "d_acc_real": 0.52, "d_acc_fake": 0.49}
    lines = [watch.describe(at_chance(step)) for step in range(50, 400, 50)]
    assert [bool(x) for x in lines] == [False, False, True, False, False, False, False]
    assert "at chance since step 50" in lines[2]
    assert watch.describe({"step": 400, "d_acc_real": 0.9, "d_acc_fake": 0.8}) == ""  # D learned: the watch resets
    assert [bool(watch.describe(at_chance(s))) for s in (450, 500, 550)] == [False, False, True]


def test_fd_cifar_of_a_distilled_run(tmp_path, monkeypatch, capsys):
    """`python -m evals.fid RUN --features cifar10 --steps 4` scores a step-distilled student, as
    scripts/device/adversarial.sh does with FD_CIFAR_FULL=1 (the committed feature net, the student's few steps)."""
    from evals import feature_net, fid

    if not feature_net.DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"{feature_net.DEFAULT_WEIGHTS} is not committed")
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    tiny_student_run(tmp_path / "student")
    step_distill(tmp_path / "student", tiny_teacher(384), tmp_path / "distilled", steps=2, progress=False,
                 batch_size=4, log_every=1, ckpt_every=2, eval_steps=(4,), before_steps=(4,),
                 eval_samples_per_class=1, reference_steps=2)
    out = tmp_path / "distilled" / "fd_cifar_4"
    assert fid.main([str(tmp_path / "distilled"), "--features", "cifar10", "--n", "10", "--steps", "4",
                     "--guidance", "1.3", "2.0", "--batch-size", "10", "--reference-limit", "100",
                     "--out", str(out)]) == 0
    result = json.loads((out / "fd_cifar.json").read_text())
    assert result["num_samples"] == 10 and result["sample_steps"] == 4 and result["fd_cifar"] > 0
    assert "a proxy, not FID" in capsys.readouterr().out
