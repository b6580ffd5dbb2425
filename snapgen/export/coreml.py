"""Core ML export: `python -m snapgen.export.coreml CKPT --out DIR [--latent 128] [--benchmark]`.

Converts the UNet and the decoder of a pipeline (or a run directory, or a bare UNet / TinyDecoder directory) to
`.mlpackage` files (ML program, fixed shapes) through `torch.export` -> `coremltools.convert(exported_program)`. The
TorchScript trace path is not used (it fails with numpy >= 2.4). Attention is `F.scaled_dot_product_attention`, which
the torch.export frontend lowers to Core ML's matmul/softmax ops (and to the fused SDPA op on iOS 18 / macOS 15).

Checks and latency need the Core ML runtime, i.e. macOS: there the packages are run against PyTorch on the same
inputs (max abs error reported) and `--benchmark` times the median of N predictions per compute unit (ALL,
CPU_AND_NE, CPU_AND_GPU), logged to MLflow with the device name. On Linux the conversion runs, the package specs are
read back and reported, and latency is reported as unavailable (never estimated).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "encoder_attention_mask")
UNET_OUTPUT = "velocity"
DECODER_INPUT, DECODER_OUTPUT = "latent", "image"


def coreml_runtime_available() -> bool:
    """Core ML can run predictions only on macOS (the Linux coremltools wheel converts but cannot execute)."""
    return platform.system() == "Darwin"


class UNetForExport(nn.Module):
    """Fixed-signature UNet: (sample, timestep, hidden, mask as float 0/1) -> velocity (Core ML has no bool inputs)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask):
        return self.unet(sample, timestep, encoder_hidden_states, encoder_attention_mask > 0.5)


def unet_example_inputs(unet, batch: int = 1, latent: int = 128, text_len: int = 154) -> dict[str, torch.Tensor]:
    """Inputs of the exported UNet (batch 2 = one CFG pair, 154 tokens = 77 CLIP + 77 Gemma)."""
    g = torch.Generator().manual_seed(0)
    return {"sample": torch.randn(batch, unet.config.in_channels, latent, latent, generator=g),
            "timestep": torch.full((batch,), 500.0),
            "encoder_hidden_states": torch.randn(batch, text_len, unet.config.cross_attention_dim, generator=g),
            "encoder_attention_mask": torch.ones(batch, text_len)}


def convert(module: nn.Module, inputs: dict[str, torch.Tensor], output_name: str, path: str | Path,
            precision: str = "fp16", minimum_target: str = "macOS15"):
    """torch.export -> coremltools ML program with fixed shapes; saves and returns the MLModel.

    Args:
        module: eval-mode module whose forward takes `inputs` positionally, in order.
        inputs: name -> example tensor (fixes each input's shape).
        precision: 'fp16' (Core ML's default compute precision, what runs on the Neural Engine) or 'fp32'.
    """
    import coremltools as ct

    precisions = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}
    if precision not in precisions:
        raise ValueError(f"precision={precision!r}; valid choices: {sorted(precisions)}")
    module = module.eval()
    with torch.no_grad():
        exported = torch.export.export(module, tuple(inputs.values())).run_decompositions({})
    mlmodel = ct.convert(
        exported,
        inputs=[ct.TensorType(name=name, shape=tuple(t.shape), dtype=np.float32) for name, t in inputs.items()],
        outputs=[ct.TensorType(name=output_name, dtype=np.float32)],
        convert_to="mlprogram",
        compute_precision=precisions[precision],
        minimum_deployment_target=getattr(ct.target, minimum_target),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return mlmodel


def package_io(path: str | Path) -> dict[str, dict[str, list[int]]]:
    """Read a saved .mlpackage's spec: {'inputs': {name: shape}, 'outputs': {name: shape}}."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))

    def shapes(features) -> dict[str, list[int]]:
        return {f.name: [int(d) for d in f.type.multiArrayType.shape] for f in features}

    return {"inputs": shapes(spec.description.input), "outputs": shapes(spec.description.output)}


def check_against_torch(mlmodel, module: nn.Module, inputs: dict[str, torch.Tensor], output_name: str) -> float:
    """Max abs difference between Core ML's and PyTorch's outputs (macOS only)."""
    with torch.no_grad():
        reference = module(*inputs.values()).numpy()
    predicted = mlmodel.predict({k: v.numpy() for k, v in inputs.items()})[output_name]
    return float(np.abs(predicted - reference).max())


def benchmark(path: str | Path, inputs: dict[str, torch.Tensor], runs: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Median latency (ms) of `runs` predictions per compute unit; macOS only, else `{'available': False}`."""
    if not coreml_runtime_available():
        return {"available": False, "reason": f"Core ML runtime needs macOS; this is {platform.system()}"}
    import coremltools as ct

    feed = {k: v.numpy() for k, v in inputs.items()}
    result: dict[str, Any] = {"available": True, "device": platform.machine() + " " + platform.mac_ver()[0]}
    for unit in COMPUTE_UNITS:
        model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, unit))
        for _ in range(warmup):
            model.predict(feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.predict(feed)
            times.append((time.perf_counter() - start) * 1e3)
        result[f"latency_ms_{unit}"] = statistics.median(times)
    return result


def _device_name() -> str:
    if platform.system() == "Darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return f"{platform.system()} {platform.machine()}"


def load_parts(ckpt: str | Path):
    """CKPT -> (unet or None, decoder or None, text length): a pipeline dir, a run dir, a UNet or TinyDecoder dir."""
    from ..models import EfficientUNet

    ckpt = Path(ckpt)
    if (ckpt / "model_index.json").is_file() or (ckpt / "config.yaml").is_file():
        from ..pipeline import load_pipeline

        pipe = load_pipeline(ckpt)
        return pipe.unet, pipe.decoder, pipe.text_stack.stack_config.seq_len
    config = json.loads((ckpt / "config.json").read_text()) if (ckpt / "config.json").is_file() else {}
    if config.get("_class_name") == "EfficientUNet":
        return EfficientUNet.from_pretrained(ckpt), None, 154
    if config.get("_class_name") == "TinyDecoder":
        from ..models.decoder import TinyDecoder

        return None, TinyDecoder.from_pretrained(ckpt), 0
    raise FileNotFoundError(f"{ckpt}: not a pipeline (model_index.json), run (config.yaml), EfficientUNet or "
                            f"TinyDecoder directory")


def export(ckpt_or_parts, out: str | Path, latent: int = 128, batch: int = 1, text_len: int | None = None,
           precision: str = "fp16", run_benchmark: bool = False, runs: int = 20) -> dict[str, Any]:
    """Export the UNet and decoder of `ckpt_or_parts` (a path or a (unet, decoder, text_len) tuple) to `out`.

    Returns a report: package paths, their input/output specs, the numerical check and latencies where Core ML runs.
    """
    unet, decoder, stack_len = load_parts(ckpt_or_parts) if isinstance(ckpt_or_parts, (str, Path)) else ckpt_or_parts
    text_len = text_len or stack_len or 154
    out = Path(out)
    report: dict[str, Any] = {"platform": platform.system(), "device": _device_name(), "latent": latent,
                              "precision": precision, "packages": {}}
    jobs = []
    if unet is not None:
        inputs = unet_example_inputs(unet, batch, latent, text_len)
        jobs.append(("unet", UNetForExport(unet.float().eval()), inputs, UNET_OUTPUT))
    if decoder is not None:
        # TAESD3: its DecoderTiny takes the normalised latent; TinyDecoder is the module itself.
        module = decoder.decoder if type(decoder).__name__ == "AutoencoderTiny" else decoder
        channels = decoder.config.latent_channels
        inputs = {DECODER_INPUT: torch.randn(batch, channels, latent, latent, generator=torch.Generator().manual_seed(0))}
        jobs.append(("decoder", module.float().eval(), inputs, DECODER_OUTPUT))
    for name, module, inputs, output_name in jobs:
        path = out / f"{name}.mlpackage"
        start = time.time()
        mlmodel = convert(module, inputs, output_name, path, precision)
        entry: dict[str, Any] = {"path": str(path), "convert_s": round(time.time() - start, 1), **package_io(path)}
        if coreml_runtime_available():
            entry["max_abs_err_vs_torch"] = check_against_torch(mlmodel, module, inputs, output_name)
        else:
            entry["max_abs_err_vs_torch"] = None  # needs the Core ML runtime (macOS)
        if run_benchmark:
            entry["benchmark"] = benchmark(path, inputs, runs)
        report["packages"][name] = entry
    (out / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def log_to_mlflow(report: dict[str, Any], run_name: str = "coreml") -> str:
    """Latencies (when measured) as metrics `coreml_<part>_latency_ms_<UNIT>` of a `t2i-evals` run tagged with the
    device; returns the run id."""
    from ..tracking import log_eval_run

    metrics = {f"coreml_{part}_{key}": value for part, entry in report["packages"].items()
               for key, value in (entry.get("benchmark") or {}).items() if key.startswith("latency_ms_")}
    return log_eval_run("t2i-evals", run_name, tags={"device": report["device"], "latency_backend": "coreml"},
                        metrics=metrics, params={"latent": report["latent"], "precision": report["precision"]})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m snapgen.export.coreml", description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="pipeline dir, snapgen.train run dir, or an EfficientUNet / TinyDecoder dir")
    p.add_argument("--out", required=True)
    p.add_argument("--latent", type=int, default=128, help="latent side (128 = 1024px image with an f=8 decoder)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=None)
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--benchmark", action="store_true", help="median latency per compute unit (macOS only)")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    report = export(args.ckpt, args.out, args.latent, args.batch, args.text_len, args.precision, args.benchmark,
                    args.runs)
    print(json.dumps(report, indent=2))
    if args.benchmark:
        if any((e.get("benchmark") or {}).get("available") for e in report["packages"].values()):
            log_to_mlflow(report)
        else:
            print("latency: unavailable (Core ML runs only on macOS); nothing was estimated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
