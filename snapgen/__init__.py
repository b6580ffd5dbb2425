"""SnapGen-Repro: an experiment and ablation harness for SnapGen-style efficient text-to-image diffusion."""

__version__ = "0.1.0"
