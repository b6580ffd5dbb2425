"""The run directory under abuse (issue 13): crafted checkpoints, two writers, torn logs, a full disk."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from snapgen import runs
from snapgen.train import make_config, train

TINY = dict(resolution=8, batch_size=4, train_limit=40, val_size=4, val_timesteps=2, log_every=1, val_every=2,
            ckpt_every=2, samples_per_class=1, sample_steps=1, warmup=0, width=16)


def losses(out):
    return [(r["step"], r["train_loss"]) for r in runs.read_metrics(out) if "train_loss" in r]


class _Payload:
    """Unpickling this runs code: what a crafted training_state.pt would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_training_state_does_not_execute(tmp_path):
    train(make_config("smoke", steps=2, **TINY), tmp_path / "run", progress=False)
    marker = tmp_path / "pwned"
    state = tmp_path / "run" / "checkpoint" / "training_state.pt"
    with open(state, "wb") as f:
        pickle.dump({"step": 1, "payload": _Payload(str(marker))}, f)
    with pytest.raises(runs.RunError, match="refusing .*training_state.pt"):
        train(make_config("smoke", steps=4, **TINY), tmp_path / "run", progress=False)
    assert not marker.exists()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    with runs.RunLock(out):
        with pytest.raises(runs.RunError, match=f"pid {os.getpid()} on "):
            train(make_config("smoke", steps=2, **TINY), out, progress=False)
        # another process, too
        code = f"from snapgen import runs; runs.RunLock({str(out)!r}).__enter__()"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "is being written by pid" in proc.stderr
    train(make_config("smoke", steps=2, **TINY), out, progress=False)  # released: the run goes on


def test_torn_last_line_of_metrics_is_dropped_and_the_run_resumes(tmp_path):
    cfg = make_config("smoke", steps=4, **TINY)
    train(cfg, tmp_path / "straight", progress=False)
    train(make_config("smoke", steps=2, **TINY), tmp_path / "torn", progress=False)
    with open(tmp_path / "torn" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train_lo')  # a crash mid-write
    train(cfg, tmp_path / "torn", progress=False)
    assert losses(tmp_path / "torn") == losses(tmp_path / "straight")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(runs.RunError, match="line 2 is not JSON"):
        runs.read_metrics(tmp_path / "bad")


def test_full_disk_while_checkpointing_says_so_and_keeps_the_last_good(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        big = torch.nn.Linear(1, 1)
        state = {"step": 1, "run_hash": "x", "blob": torch.zeros(200_000)}  # ~0.8 MB: one fits, not two plus filler
        runs.save_checkpoint(mount, {}, state)
        good = (mount / "checkpoint" / "training_state.pt").read_bytes()
        (mount / "filler").write_bytes(b"\0" * 900_000)
        with pytest.raises(runs.RunError, match=f"no space left on {mount}: a checkpoint needs ~"):
            runs.save_checkpoint(mount, {}, {**state, "step": 2})
        assert not (mount / "checkpoint.tmp").exists()  # the partial file does not fill the disk
        assert (mount / "checkpoint" / "training_state.pt").read_bytes() == good
        del big
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """Weights that went non-finite (set to inf before step 3's forward): every later update is skipped, no
    checkpoint is written from them, the last good one (step 2) stays, and the NaN-limit message names it."""
    from snapgen import flow
    from snapgen.models import EfficientUNet
    from snapgen.train import task_loss

    task = task_loss(flow.get_objective("flow"))

    def explode_at_3(calls):
        def loss_fn(net, batch, generator):
            calls["n"] += 1
            if calls["n"] == 3:
                with torch.no_grad():
                    for p in net.parameters():
                        p.fill_(float("inf"))
            return task(net, batch, generator)
        return loss_fn

    result = train(make_config("smoke", steps=6, max_nan_skips=10, **TINY), tmp_path / "a",
                   loss_fn=explode_at_3({"n": 0}), progress=False)
    assert result["nan_skips"] == 4  # steps 3..6
    assert runs.read_state(tmp_path / "a" / "checkpoint")["step"] == 2  # steps 4 and 6 were not checkpointed
    weights = EfficientUNet.from_pretrained(tmp_path / "a" / "checkpoint" / "unet")
    assert all(torch.isfinite(p).all() for p in weights.parameters())
    with pytest.raises(FloatingPointError, match="last good checkpoint is .*checkpoint \\(step 2\\)"):
        train(make_config("smoke", steps=6, max_nan_skips=1, **TINY), tmp_path / "b",
              loss_fn=explode_at_3({"n": 0}), progress=False)
