"""Shared test set-up: offline hub, the shared assets, a per-test MLflow store, deterministic torch."""

import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO_ROOT.parent / "shared" / "assets"

# Set before any test module imports huggingface_hub / transformers / diffusers (they read these once, at import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "SNAPGEN_ASSETS" not in os.environ and SHARED_ASSETS.is_dir():
    os.environ["SNAPGEN_ASSETS"] = str(SHARED_ASSETS)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test; ``MLFLOW_TRACKING_URI`` points at it for the test's duration."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        import mlflow
    except ImportError:
        return uri
    mlflow.set_tracking_uri(uri)
    yield uri
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # back to "unset": the env var (restored by monkeypatch) decides again


@pytest.fixture
def seeded():
    """Seed python, numpy and torch (CPU) to 0 and turn on deterministic algorithms for one test."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield 0
    torch.use_deterministic_algorithms(previous)


class Interrupted(Exception):
    """Raised by the `interrupt_at` hook: a training run stopped mid-way, as a crash would."""


@pytest.fixture
def interrupt_at():
    """`interrupt_at(n)` -> a training hook that raises `Interrupted` when step n is logged."""

    def make(step: int):
        def hook(logged_step, metrics):
            if logged_step == step:
                raise Interrupted

        return hook

    make.error = Interrupted
    return make


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): on a shared 2-core CPU,
    two OpenMP threads contending with other processes run tiny nets 10-40x slower (spin-waits), and one thread keeps
    in-process floats independent of the core count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
