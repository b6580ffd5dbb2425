"""The one training loop: exact resume (in-process and after SIGKILL), NaN guard, EMA, overfitting, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from snapgen.runs import read_metrics, save_checkpoint
from snapgen.train import TrainConfig, make_config, train
from snapgen.training import ema_update

# The smoke preset shrunk further: 8x8 pixels, a few images, every step logged.
TINY = dict(resolution=8, batch_size=4, train_limit=40, val_size=4, val_timesteps=2, log_every=1, val_every=3,
            ckpt_every=3, samples_per_class=1, sample_steps=2, warmup=0)


def tiny_config(**overrides) -> TrainConfig:
    return make_config("smoke", **{**TINY, **overrides})


def train_losses(out):
    return [(r["step"], r["train_loss"]) for r in read_metrics(out) if "train_loss" in r]


def test_interrupted_run_resumes_bitwise(tmp_path, interrupt_at):
    cfg = tiny_config(steps=7)
    train(cfg, tmp_path / "straight", progress=False)
    with pytest.raises(interrupt_at.error):
        train(cfg, tmp_path / "resumed", hooks=[interrupt_at(5)], progress=False)
    assert json.loads((tmp_path / "resumed/metrics.jsonl").read_text().splitlines()[-1])["step"] == 5
    result = train(cfg, tmp_path / "resumed", progress=False)  # rerun = resume from the step-3 checkpoint... and 6
    assert result["step"] == 7
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")
    assert len(train_losses(tmp_path / "straight")) == 7
    a = torch.load(tmp_path / "straight/checkpoint/training_state.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoint/training_state.pt", weights_only=True)
    assert a["step"] == b["step"] == 7


def test_time_budget_stops_early_and_a_rerun_without_it_resumes(tmp_path):
    train(tiny_config(steps=5), tmp_path / "straight", progress=False)
    stopped = train(tiny_config(steps=5, time_budget_min=1e-9), tmp_path / "budget", progress=False)
    assert stopped["step"] == 1 and "val_loss" in stopped and Path(stopped["sample_grid"]).is_file()
    assert train(tiny_config(steps=5), tmp_path / "budget", progress=False)["step"] == 5  # the budget is not hashed
    assert train_losses(tmp_path / "budget") == train_losses(tmp_path / "straight")


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches(tmp_path):
    args = [sys.executable, "-m", "snapgen.train", "--scale", "smoke", "--no-progress", "--set"]
    args += [f"{k}={v}" for k, v in {**TINY, "steps": 12, "ckpt_every": 4}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = tmp_path / "killed/metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and sum(1 for _ in log.open()) >= 6:  # past the step-4 checkpoint
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(args + ["--out", str(tmp_path / "killed")], check=True, env=env, capture_output=True)
    assert train_losses(tmp_path / "killed") == train_losses(tmp_path / "straight")


def test_nan_guard_skips_then_stops(tmp_path):
    from snapgen import flow
    from snapgen.train import task_loss

    task = task_loss(flow.get_objective("flow"))
    calls = {"n": 0}

    def sometimes_nan(net, batch, generator):
        calls["n"] += 1
        terms = task(net, batch, generator)
        if calls["n"] in (2, 3):
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    result = train(tiny_config(steps=5, max_nan_skips=5), tmp_path / "a", loss_fn=sometimes_nan, progress=False)
    assert result["nan_skips"] == 2 and result["step"] == 5

    def always_nan(net, batch, generator):
        return {"loss": torch.tensor(float("nan"), requires_grad=True)}

    with pytest.raises(FloatingPointError, match="max_nan_skips=2"):
        train(tiny_config(steps=6, max_nan_skips=2), tmp_path / "b", loss_fn=always_nan, progress=False)


def test_ema_update_follows_diffusers_warmup():
    net, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(1.0), ema.weight.fill_(0.0)
    assert ema_update(ema, net, decay=0.999, step=0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.9))
    assert ema_update(ema, net, decay=0.999, step=10**6) == 0.999


def test_tiny_model_overfits_a_tiny_batch(tmp_path):
    cfg = tiny_config(steps=120, train_limit=4, batch_size=4, lr=3e-3, cond_dropout=0.0, val_every=1000,
                      ckpt_every=1000, objective="flow")
    train(cfg, tmp_path, progress=False)
    losses = [loss for _, loss in train_losses(tmp_path)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, f"loss {first:.3f} -> {last:.3f}"


def test_val_loss_falls_and_grid_is_written(tmp_path):
    result = train(tiny_config(steps=30, val_every=10, lr=2e-3), tmp_path, progress=False)
    vals = [r["val_loss"] for r in read_metrics(tmp_path) if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    assert Path(result["sample_grid"]).is_file()
    assert (tmp_path / "config.yaml").is_file()


def test_other_config_in_same_out_is_refused(tmp_path):
    train(tiny_config(steps=3), tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="another config"):
        train(tiny_config(steps=3, lr=5e-4), tmp_path, progress=False)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    train(tiny_config(steps=3), tmp_path, progress=False)
    (tmp_path / "checkpoint/training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="refusing .*training_state.pt.*Delete"):
        train(tiny_config(steps=6), tmp_path, progress=False)


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    train(tiny_config(steps=3), tmp_path, progress=False)
    good = (tmp_path / "checkpoint/training_state.pt").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    from snapgen.models import EfficientUNet

    net = EfficientUNet.from_pretrained(tmp_path / "checkpoint/unet")
    opt = torch.optim.AdamW(net.parameters())
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"unet": net}, {"optimizer": opt.state_dict(), "step": 99, "run_hash": "x"})
    assert (tmp_path / "checkpoint/training_state.pt").read_bytes() == good


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError, match="valid scales"):
        make_config("huge")
    with pytest.raises(KeyError, match="unknown training options \\['learning_rate'\\]"):
        make_config("smoke", learning_rate=1.0)
    with pytest.raises(KeyError, match="valid presets"):
        tiny_config(arch="snapgen-xxl").unet_config(32)


def test_missing_dataset_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPGEN_ASSETS", str(tmp_path))
    monkeypatch.setenv("SNAPGEN_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="cifar10_jpeg.npz"):
        train(tiny_config(steps=1), tmp_path / "run", progress=False)


def test_sample_cli_writes_a_grid_per_class_and_is_deterministic(tmp_path):
    from PIL import Image

    from snapgen.sample import main as sample_main

    train(tiny_config(steps=3), tmp_path / "run", progress=False)
    for name in ("a.png", "b.png"):
        sample_main([str(tmp_path / "run"), "--class", "cat", "--steps", "2", "--n", "3", "--out",
                     str(tmp_path / name)])
    a, b = (Image.open(tmp_path / n) for n in ("a.png", "b.png"))
    # 8 px tiles upscaled 32x to 256 px, the row label on the left
    assert a.size[1] == 256 and a.size[0] > 3 * 256 and a.tobytes() == b.tobytes()
    sample_main([str(tmp_path / "run"), "--steps", "2", "--n", "2", "--out", str(tmp_path / "all.png")])
    everything = Image.open(tmp_path / "all.png")
    assert everything.size[1] == 10 * 256 and everything.size[0] - 2 * 256 > a.size[0] - 3 * 256  # "automobile"
    with pytest.raises(SystemExit):
        sample_main([str(tmp_path / "run"), "--class", "unicorn"])


def test_latent_space_run_caches_latents_and_decodes_grids(tmp_path, monkeypatch):
    """autoencoder=taesd3: the UNet learns on TAESD3's 16-ch latents (encoded once, cached), grids and the pipeline
    decode them with TAESD3's decoder."""
    import snapgen.models.autoencoders as autoencoders
    from snapgen.pipeline import SnapGenPipeline

    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    loads = []
    original = autoencoders.load_frozen_encoder
    monkeypatch.setattr(autoencoders, "load_frozen_encoder", lambda name: loads.append(name) or original(name))
    cfg = tiny_config(steps=2, autoencoder="taesd3", resolution=32)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["unet_config"].in_channels == result["unet_config"].out_channels == 16
    assert loads == ["taesd3"]  # train and val latents from one frozen encoder
    from PIL import Image

    grid = Image.open(result["sample_grid"])  # 10 labelled rows x 1 sample of 32 px, upscaled 8x
    assert grid.size[1] == 256 * 10 and grid.size[0] > 256
    train(tiny_config(steps=2, autoencoder="taesd3", resolution=32), tmp_path / "again", progress=False)
    assert loads == ["taesd3"]  # the second run read the cached latents
    pipe = SnapGenPipeline.from_run(tmp_path / "run")
    assert type(pipe.decoder).__name__ == "AutoencoderTiny"
    image = pipe("a photo of a cat", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="autoencoder"):
        make_config("smoke", autoencoder="sdxl")
    with pytest.raises(ValueError, match="divisible"):
        make_config("smoke", autoencoder="taesd3", resolution=36)
