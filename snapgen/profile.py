"""Efficiency accounting: parameters, FLOPs (fvcore) and latency, with a CLI.

Conventions (as the paper, Sec. 3.1 / Fig. 3 / Tables 1-2):
- one multiply-add = one FLOP, fvcore's convention;
- `gflops` counts attention through a handler for `aten::scaled_dot_product_attention` (QK^T plus AV);
  `gflops_fvcore_default` is fvcore as shipped, which skips that op (the paper's decoder numbers match this);
- latency is the median of timed repeats after warm-up, synchronised on CUDA, always with its spread (p10, p90, n)
  and labelled with backend, device, dtype and latent; a spread wider than `WIDE_SPREAD` (p90/p10) is flagged
  `wide_spread` (a loaded machine: callers neither cache it nor present it as a measurement of the model).

CLI:
    python -m snapgen.profile unet --arch snapgen-imagenet --latent 32 [--batch 1] [--latency] [--json]
    python -m snapgen.profile decoder --arch tiny|tiny+no_gn|taesd3|sd3|sdxl --latent 128 [--latency] [--json]
    python -m snapgen.profile walk fig3 --latent 128 [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

# Tolerance for the Fig. 3 walk check: our delta% may differ from the paper's by this many percentage points.
WALK_TOLERANCE_PP = 2.0

SDPA_OPS = ("aten::scaled_dot_product_attention",)

# p90/p10 above this: the timings are dominated by something other than the model (other processes on a shared CPU,
# clock changes); such a latency is flagged, not cached (ablations.trial) and shown with its spread.
WIDE_SPREAD = 1.5


def count_params(module: nn.Module) -> int:
    """Number of parameters of `module` (each shared tensor counted once)."""
    return sum(p.numel() for p in module.parameters())


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handler for `aten::scaled_dot_product_attention`: multiply-adds of QK^T plus AV.

    For query (*batch_q, Lq, d), key (*batch_k, Lk, d), value (*batch_v, Lk, d_v) and output (*batch, Lq, d_v),
    the count is prod(batch) * Lq * Lk * (d + d_v). `batch` is taken from the output, so it is the broadcast batch:
    MQA (key/value with 1 head, broadcast over the query heads), GQA (`enable_gqa=True`) and key/value expanded to
    every head all count the same work, once per query head. Softmax, scaling and masking are not counted (fvcore
    counts no elementwise op either).
    """
    from fvcore.nn.jit_handles import get_shape

    query_shape, key_shape, value_shape = (get_shape(v) for v in inputs[:3])
    output_shape = get_shape(outputs[0])
    if None in (query_shape, key_shape, value_shape, output_shape):
        raise RuntimeError("scaled_dot_product_attention traced without complete shapes; cannot count its FLOPs")
    *batch, lq, d = query_shape
    lk, d_v = key_shape[-2], value_shape[-1]
    if output_shape[-2:] != [lq, d_v]:
        raise RuntimeError(f"unexpected SDPA shapes q={query_shape} k={key_shape} v={value_shape} out={output_shape}")
    return math.prod(output_shape[:-2]) * lq * lk * (d + d_v)


class _TraceAdapter(nn.Module):
    """Lets fvcore's jit trace call `module` with keyword arguments and see a plain tensor output.

    Tensor inputs become positional trace inputs; with `tensor_keys` they are passed to `module` as those keywords,
    without, positionally. Other keyword values (None, ints, bools) are passed through unchanged. A tuple/list output
    gives its first element, a diffusers `BaseOutput` its `sample`.
    """

    def __init__(self, module: nn.Module, tensor_keys: list[str] | None, static_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self.tensor_keys = tensor_keys
        self.static_kwargs = static_kwargs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.tensor_keys is None:
            output = self.module(*tensors, **self.static_kwargs)
        else:
            output = self.module(**dict(zip(self.tensor_keys, tensors)), **self.static_kwargs)
        if hasattr(output, "sample"):
            output = output.sample
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output


def count_flops(module: nn.Module, inputs: tuple | Mapping[str, Any]) -> dict[str, Any]:
    """FLOPs (multiply-adds) of one forward pass, by fvcore `FlopCountAnalysis`.

    The forward is traced with `torch.jit.trace`, which executes it: at a 128x128 latent a baseline decoder takes
    minutes on a 2-core CPU. fvcore's warnings about ops it does not count are silenced; the ops are returned.

    Args:
        module (`nn.Module`): put in eval mode for the count (restored afterwards).
        inputs (`tuple` of tensors, or `dict` of keyword arguments): what `module` is called with.

    Returns:
        `dict` with
        - `gflops` (`float`): GFLOPs with attention counted (`sdpa_flop_jit`);
        - `gflops_fvcore_default` (`float`): GFLOPs as fvcore ships (SDPA not counted);
        - `gflops_attention` (`float`): the SDPA part, `gflops - gflops_fvcore_default`;
        - `by_operator` (`dict[str, float]`): GFLOPs per counted op;
        - `skipped_ops` (`dict[str, int]`): ops fvcore did not count in `gflops`, with how often they ran
          (`gflops_fvcore_default` additionally skips `aten::scaled_dot_product_attention`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fvcore's import calls the deprecated torch.jit.script
        from fvcore.nn import FlopCountAnalysis

    if isinstance(inputs, Mapping):
        tensor_keys = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
        static_kwargs = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
        trace_inputs = tuple(inputs[k] for k in tensor_keys)
        traced: nn.Module = _TraceAdapter(module, tensor_keys, static_kwargs)
    elif isinstance(inputs, tuple):
        traced, trace_inputs = _TraceAdapter(module, None, {}), inputs
    else:
        raise TypeError(
            f"inputs must be a tuple of tensors or a dict of keyword arguments, got {type(inputs).__name__}"
        )

    was_training = module.training
    module.eval()
    fvcore_logger = logging.getLogger("fvcore.nn.jit_analysis")
    previous_level = fvcore_logger.level
    try:
        fvcore_logger.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of jit.trace say nothing about counts
            analysis = FlopCountAnalysis(traced, trace_inputs)
            for op in SDPA_OPS:
                analysis.set_op_handle(op, sdpa_flop_jit)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = analysis.total()
            by_operator = dict(analysis.by_operator())
            skipped = dict(analysis.unsupported_ops())
    finally:
        fvcore_logger.setLevel(previous_level)
        module.train(was_training)

    attention = sum(v for k, v in by_operator.items() if "scaled_dot_product_attention" in k)
    return {
        "gflops": total / 1e9,
        "gflops_fvcore_default": (total - attention) / 1e9,
        "gflops_attention": attention / 1e9,
        "by_operator": {k: v / 1e9 for k, v in sorted(by_operator.items())},
        "skipped_ops": dict(sorted(skipped.items())),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_latency(
    fn: Callable[[], Any],
    warmup: int = 3,
    repeats: int = 10,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    latent: int | None = None,
) -> dict[str, Any]:
    """Wall-clock latency of `fn()`: `warmup` untimed calls, then `repeats` timed ones.

    On CUDA every call is followed by `torch.cuda.synchronize()` so the time covers the kernels, not their launch.

    Args:
        fn: the work, with its inputs already bound (e.g. `lambda: net(**inputs)` under `torch.no_grad()`).
        warmup (`int`): untimed calls first (allocator, cuDNN autotune, lazy init).
        repeats (`int`): timed calls, >= 1.
        device: where `fn` runs ('cpu', 'cuda', 'cuda:1').
        dtype: the compute dtype, recorded as given (default: torch's default dtype).
        latent: the latent side the inputs have, recorded as the label (None: not a latent-space model).

    Returns:
        `dict(median_ms, p10, p90, mean_ms, repeats, n, spread, wide_spread, backend='torch-cpu'|'torch-cuda',
        device=<CPU model | GPU name>, dtype, latent, threads)`; p10/p90 in ms, `n` = `repeats` (the timed calls),
        `spread` = p90 / p10, `wide_spread` = spread > `WIDE_SPREAD`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times_ms.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(times_ms, n=10, method="inclusive") if repeats > 1 else [times_ms[0]] * 9
    spread = deciles[-1] / deciles[0] if deciles[0] > 0 else math.inf
    return {
        "median_ms": statistics.median(times_ms),
        "p10": deciles[0],
        "p90": deciles[-1],
        "mean_ms": statistics.fmean(times_ms),
        "repeats": repeats,
        "n": repeats,
        "spread": spread,
        "wide_spread": spread > WIDE_SPREAD,
        "backend": f"torch-{device.type}",
        "device": _device_name(device),
        "dtype": str(dtype if dtype is not None else torch.get_default_dtype()).replace("torch.", ""),
        "latent": latent,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


def format_latency(latency: Mapping[str, Any] | None, label: bool = True) -> str:
    """One latency for people: `12.3 ms (p10 11.9-p90 13.0, n=10)` and, with `label`, `torch-cpu on <device>, float32,
    32x32 latent`; a wide spread says so (`WIDE SPREAD`), a missing latency is 'not measured'."""
    if not latency:
        return "not measured"
    text = (f"{latency['median_ms']:.1f} ms (p10 {latency['p10']:.1f}-p90 {latency['p90']:.1f}, "
            f"n={latency.get('n', latency.get('repeats'))})")
    if latency.get("wide_spread"):
        text += f" WIDE SPREAD (p90/p10 {latency['spread']:.2f} > {WIDE_SPREAD:g}: a loaded machine, not the model)"
    if label:
        latent = latency.get("latent")
        text += (f", {latency['backend']} on {latency['device']}, {latency['dtype']}"
                 + (f", {latent}x{latent} latent" if latent else ""))
    return text


# --------------------------------------------------------------------------------------------------------------
# Profiles of the project's models (used by the CLI, reports.tables and reports.figures).


def forward_latency(module: nn.Module, inputs: tuple | Mapping[str, Any], device: str = "cpu", latent: int | None = None,
                    warmup: int = 2, repeats: int = 5) -> dict[str, Any]:
    """`measure_latency` (2 warm-up calls, 5 timed) of `module(*inputs)` or `module(**inputs)` under no_grad, with
    module and tensor inputs moved to `device` first; `latent` labels the result."""
    module = module.to(device)
    if isinstance(inputs, Mapping):
        args, kwargs = (), {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    else:
        args, kwargs = tuple(v.to(device) for v in inputs), {}

    def forward() -> None:
        with torch.no_grad():
            module(*args, **kwargs)

    return measure_latency(forward, warmup=warmup, repeats=repeats, device=device, latent=latent)


def profile_unet_config(cfg, latent: int, batch: int = 1, latency: bool = False, device: str = "cpu") -> dict:
    """Params and FLOPs (and optionally latency) of `EfficientUNet.from_unet_config(cfg)` at a latent x latent input."""
    from snapgen.models import EfficientUNet

    net = EfficientUNet.from_unet_config(cfg).eval()
    inputs = net.dummy_inputs(batch=batch, latent=(latent, latent))
    flops = count_flops(net, inputs)
    result = {
        "params": count_params(net),
        "params_m": count_params(net) / 1e6,
        "latent": latent,
        "batch": batch,
        **{k: flops[k] for k in ("gflops", "gflops_fvcore_default", "gflops_attention", "skipped_ops")},
    }
    if hasattr(cfg, "config_hash"):
        result["config_hash"] = cfg.config_hash()
    if latency:
        result["latency"] = forward_latency(net, inputs, device, latent=latent)
    return result


def profile_unet(arch: str, latent: int, batch: int = 1, latency: bool = False, device: str = "cpu") -> dict:
    """`profile_unet_config` of `snapgen.registry.resolve(arch)`."""
    from snapgen.registry import resolve

    return {"arch": arch, **profile_unet_config(resolve(arch), latent, batch, latency, device)}


# Decoders: every registered one by name (the CLI, benchmarks/decoder_latency.py, train_decoder eval, Table 2).

# Below this side a decoder is counted at full size; above it, without attention, at this side and scaled (exact).
DECODER_COUNT_SIDE = 16


def decoder_names() -> list[str]:
    """Every name `build_decoder_by_name` takes: the TinyDecoder registry (`tiny`, `tiny_<delta>`, and any of them as
    `name+delta+...`), the TAESD peers and the SDXL / SD3 VAE decoders."""
    from snapgen.models.autoencoders import BASELINE_VAE_CONFIGS
    from snapgen.models.decoder import DECODER_ARCHS
    from snapgen.models.taesd import TAESD_MODELS

    return [*sorted(DECODER_ARCHS), *sorted(TAESD_MODELS), *sorted(BASELINE_VAE_CONFIGS)]


def check_decoder_name(arch: str) -> str:
    """`arch` when `build_decoder_by_name` takes it; else ValueError listing every valid name (and the deltas)."""
    from snapgen.models.autoencoders import BASELINE_VAE_CONFIGS
    from snapgen.models.decoder import DECODER_ARCHS, DECODER_DELTAS, decoder_config
    from snapgen.models.taesd import TAESD_MODELS

    if arch in TAESD_MODELS or arch in BASELINE_VAE_CONFIGS:
        return arch
    if arch.split("+")[0] not in DECODER_ARCHS:
        raise ValueError(f"unknown decoder {arch!r}; valid: {', '.join(decoder_names())} (a TinyDecoder arch also "
                         f"as name+delta+..., deltas: {', '.join(sorted(DECODER_DELTAS))})")
    try:
        decoder_config(arch)
    except KeyError as error:  # an unknown delta: decoder_config's message lists the valid ones
        raise ValueError(error.args[0]) from None
    return arch


def decoder_arch_arg(name: str) -> str:
    """argparse `type` of a decoder name: an unknown one is a usage error listing the valid ones, not a traceback."""
    try:
        return check_decoder_name(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_decoder_by_name(arch: str) -> nn.Module:
    """Any registered decoder (`decoder_names`), randomly initialised, in eval mode: latent -> RGB, f = 8.

    TinyDecoder archs from `snapgen.models.decoder.decoder_config`, TAESD as diffusers' `DecoderTiny` in the
    published configuration (`snapgen.models.taesd.taesd_config`, no weights needed), SDXL / SD3 from their official
    VAE configs. Params, FLOPs and latency do not depend on the weights.

    Raises:
        ValueError: `arch` names no decoder (`check_decoder_name`).
    """
    from snapgen.models.autoencoders import BASELINE_VAE_CONFIGS, build_baseline_decoder
    from snapgen.models.decoder import TinyDecoder, decoder_config
    from snapgen.models.taesd import TAESD_MODELS, TAESDDecoder, taesd_config

    check_decoder_name(arch)
    if arch in TAESD_MODELS:
        from diffusers import AutoencoderTiny

        return TAESDDecoder(AutoencoderTiny(**taesd_config(TAESD_MODELS[arch][0]))).eval()
    if arch in BASELINE_VAE_CONFIGS:
        return build_baseline_decoder(arch)
    return TinyDecoder(**decoder_config(arch)).eval()


def _has_attention(module: nn.Module) -> bool:
    from diffusers.models.attention_processor import Attention

    return any(isinstance(m, (Attention, nn.MultiheadAttention)) for m in module.modules())


def profile_decoder(arch: str, latent: int = 128, batch: int = 1, latency: bool = False,
                    device: str = "cpu") -> dict:
    """Params and fvcore GFLOPs (and optionally latency) of `build_decoder_by_name(arch)` decoding a latent x latent
    latent.

    Every op fvcore counts in these decoders (conv, linear, group_norm, upsample_nearest2d) is linear in the number of
    pixels, so a decoder without attention is counted at `DECODER_COUNT_SIDE` and scaled by (latent / side)^2: exact,
    and seconds instead of minutes on CPU. One with attention (SDXL, SD3, `tiny_mid_attention`) is counted at size.

    Returns:
        `dict(arch, params, params_m, params_post_quant_conv, latent, batch, gflops, gflops_fvcore_default,
        gflops_attention, skipped_ops[, latency])`. `params` is the decoder body, as Table 2 counts it (SDXL:
        49,490,179); SDXL's 1x1 `post_quant_conv` before it (20 params) is `params_post_quant_conv`, else 0.
        Table 2's GFLOPs are `gflops_fvcore_default`.
    """
    decoder = build_decoder_by_name(arch)
    side = latent if latent <= DECODER_COUNT_SIDE or _has_attention(decoder) else DECODER_COUNT_SIDE
    flops = count_flops(decoder, (torch.randn(batch, decoder.latent_channels, side, side),))
    scale = (latent / side) ** 2
    post_quant_conv = getattr(decoder, "post_quant_conv", None)
    pqc_params = count_params(post_quant_conv) if post_quant_conv is not None else 0
    body = count_params(decoder) - pqc_params
    result = {
        "arch": arch,
        "params": body,
        "params_m": body / 1e6,
        "params_post_quant_conv": pqc_params,
        "latent": latent,
        "batch": batch,
        **{k: flops[k] * scale for k in ("gflops", "gflops_fvcore_default", "gflops_attention")},
        "skipped_ops": flops["skipped_ops"],
    }
    if latency:
        result["latency"] = forward_latency(decoder, (torch.randn(batch, decoder.latent_channels, latent, latent),),
                                            device, latent=latent)
    return result


def read_eval(run_dir: str | Path) -> dict[str, Any] | None:
    """`eval.json` written by `python -m snapgen.train_decoder eval` in a run dir (or None)."""
    path = Path(run_dir) / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table2_rows(run_dir: str | Path | None = None, arch: str = "tiny", latent: int = 128) -> list[dict[str, Any]]:
    """Our Table 2 measurements: one row for our decoder, plus TAESD3 / SD3 rows where an eval measured them.

    Args:
        run_dir: a `train_decoder` run dir holding `eval.json` (PSNR/SSIM/LPIPS); None = efficiency only.
        arch: the decoder arch to profile when the run dir records none.
        latent: latent side for FLOPs (Table 2: 128).

    Returns:
        rows `dict(decoder, ch, params_m, gflops, psnr, ssim, lpips, eval_set, source)`; missing values are None.
    """
    from snapgen.models.decoder import LATENT_CHANNELS

    evaluation = read_eval(run_dir) if run_dir is not None else None
    if evaluation is not None:
        arch = evaluation.get("arch", arch)
    prof = profile_decoder(arch, latent)
    rows = [{"decoder": f"Ours ({arch})", "ch": LATENT_CHANNELS, "params_m": prof["params_m"],
             "gflops": prof["gflops_fvcore_default"], "psnr": None, "ssim": None, "lpips": None, "eval_set": None,
             "source": f"snapgen.profile (fvcore default, {latent}x{latent} latent)"}]
    if evaluation is not None:
        for name, metrics in evaluation["decoders"].items():
            row = rows[0] if name == "ours" else {
                "decoder": name, "ch": LATENT_CHANNELS, "params_m": metrics.get("params_m"), "gflops": None,
                "psnr": None, "ssim": None, "lpips": None, "eval_set": None, "source": "eval"}
            row.update(psnr=metrics.get("psnr"), ssim=metrics.get("ssim"), lpips=metrics.get("lpips"),
                       eval_set=evaluation.get("eval_set"))
            row["source"] += f"; quality from {Path(run_dir) / 'eval.json'}"
            if row is not rows[0]:
                rows.append(row)
    return rows


def _delta_pct(value: float, parent_value: float) -> float:
    return 100.0 * (value - parent_value) / parent_value


def profile_walk(name: str, latent: int, profile_fn: Callable[[Any, int], dict] | None = None) -> list[dict]:
    """Profile every step of `snapgen.registry.walk(name)` and compare its deltas with the paper's.

    Args:
        name (`str`): the walk ('fig3').
        latent (`int`): latent side (the paper uses 128 for Fig. 3).
        profile_fn: `(UNetConfig, latent) -> dict with params, gflops`; default `profile_unet_config`.
            Tests pass a cheap one.

    Returns:
        one `dict` per step: name, parent, delta, params_m, gflops, d_params_pct, d_gflops_pct (vs. the parent),
        paper_d_params_pct, paper_d_gflops_pct (None where the paper gives none), check ('PASS' | 'FAIL' | '-')
        and check_detail.
    """
    from snapgen.paper import FIG3_STEPS
    from snapgen.registry import walk

    profile_fn = profile_fn or (lambda cfg, n: profile_unet_config(cfg, n))
    rows: dict[str, dict] = {}
    for step in walk(name):
        profile = profile_fn(step.config, latent)
        row = {
            "step": step.name,
            "parent": step.parent,
            "delta": step.delta,
            "params_m": profile["params"] / 1e6,
            "gflops": profile["gflops"],
            "d_params_pct": None,
            "d_gflops_pct": None,
        }
        if step.parent is not None:
            parent = rows[step.parent]
            row["d_params_pct"] = _delta_pct(row["params_m"], parent["params_m"])
            row["d_gflops_pct"] = _delta_pct(row["gflops"], parent["gflops"])
        paper = FIG3_STEPS.get(step.name) if name == "fig3" else None
        row["paper_d_params_pct"] = paper.params_delta_pct if paper else None
        row["paper_d_gflops_pct"] = paper.flops_delta_pct if paper else None
        checks = []
        for ours_key, paper_key, label in (
            ("d_params_pct", "paper_d_params_pct", "params"),
            ("d_gflops_pct", "paper_d_gflops_pct", "flops"),
        ):
            if row[paper_key] is not None and row[ours_key] is not None:
                ok = abs(row[ours_key] - row[paper_key]) <= WALK_TOLERANCE_PP
                checks.append((ok, f"{label} {row[ours_key]:+.1f}% vs paper {row[paper_key]:+.0f}%"))
        row["check"] = "-" if not checks else ("PASS" if all(ok for ok, _ in checks) else "FAIL")
        row["check_detail"] = "; ".join(text for _, text in checks)
        rows[step.name] = row
    return list(rows.values())


# --------------------------------------------------------------------------------------------------------------
# Plain-text rendering.


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Aligned plain-text table. `columns`: (key, header, format spec, e.g. '.2f'); None renders as '-'."""

    def cell(value: Any, spec: str) -> str:
        if value is None:
            return "-"
        return format(value, spec) if spec else str(value)

    body = [[cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in body]
    return "\n".join(lines)


WALK_COLUMNS = [
    ("step", "step", ""),
    ("parent", "parent", ""),
    ("params_m", "params (M)", ".2f"),
    ("gflops", "GFLOPs", ".2f"),
    ("d_params_pct", "d params %", "+.1f"),
    ("paper_d_params_pct", "paper %", "+.0f"),
    ("d_gflops_pct", "d GFLOPs %", "+.1f"),
    ("paper_d_gflops_pct", "paper %", "+.0f"),
    ("check", f"check (+-{WALK_TOLERANCE_PP:g}pp)", ""),
]


def _print_profile(result: dict) -> None:
    skipped = ", ".join(f"{k}x{v}" for k, v in result["skipped_ops"].items()) or "none"
    lines = [f"{k:24s} {result[k]}" for k in ("arch", "latent") if k in result]
    lines += [
        f"{'params':24s} {result['params']:,} ({result['params_m']:.2f} M)",
        f"{'GFLOPs (attn counted)':24s} {result['gflops']:.2f}",
        f"{'GFLOPs (fvcore default)':24s} {result['gflops_fvcore_default']:.2f}",
        f"{'GFLOPs of attention':24s} {result['gflops_attention']:.2f}",
        f"{'ops not counted':24s} {skipped}",
    ]
    if "latency" in result:
        lines.append(f"{'latency':24s} median {format_latency(result['latency'])}")
    print("\n".join(lines))


MAX_LATENT = 512  # latent side: 4096 px through an 8x autoencoder; FLOPs are counted on real tensors of this size
MAX_BATCH = 256


def _check_int_options(args: argparse.Namespace) -> None:
    """Every int option of the CLI in range, before any model is built (0 or a negative gave 0 GFLOPs)."""
    if not 1 <= args.latent <= MAX_LATENT:
        raise ValueError(f"--latent {args.latent}: the latent side must be 1..{MAX_LATENT} (e.g. --latent 128 for a "
                         f"1024px image with the SD3 VAE)")
    if getattr(args, "batch", 1) is not None and not 1 <= getattr(args, "batch", 1) <= MAX_BATCH:
        raise ValueError(f"--batch {args.batch}: the batch must be 1..{MAX_BATCH}")
    if args.command == "unet":
        from snapgen.registry import resolve

        cfg = resolve(args.arch)  # a bad --arch fails before any build
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        if args.latent % factor:
            raise ValueError(f"--latent {args.latent}: {args.arch} downsamples {factor}x, so the latent side must be a "
                             f"multiple of {factor} (e.g. --latent {max(factor, args.latent // factor * factor)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapgen.profile", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    unet = sub.add_parser("unet", help="params / FLOPs / latency of one UNet config")
    unet.add_argument("--arch", required=True, help="preset name or 'preset+delta+...' (snapgen.registry.resolve)")
    unet.add_argument("--latent", type=int, default=32, help="latent side (128 = 1024px image with the SD3 VAE)")
    unet.add_argument("--batch", type=int, default=1)
    unet.add_argument("--latency", action="store_true", help="also time forward passes on this machine")
    unet.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    unet.add_argument("--json", action="store_true", help="print JSON only")

    decoder = sub.add_parser("decoder", help="params / FLOPs / latency of any registered decoder")
    decoder.add_argument("--arch", required=True, type=decoder_arch_arg,
                         help=f"{', '.join(decoder_names())}, or a TinyDecoder arch as name+delta+... (tiny+no_gn)")
    decoder.add_argument("--latent", type=int, default=128)
    decoder.add_argument("--batch", type=int, default=1)
    decoder.add_argument("--latency", action="store_true", help="also time forward passes on this machine")
    decoder.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    decoder.add_argument("--json", action="store_true")

    walk_parser = sub.add_parser("walk", help="profile a registry walk against the paper's deltas")
    walk_parser.add_argument("name", choices=["fig3"])
    walk_parser.add_argument("--latent", type=int, default=128)
    walk_parser.add_argument("--json", action="store_true")

    unet.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    decoder.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")
    walk_parser.add_argument("--debug", action="store_true", help="full tracebacks (also SNAPGEN_DEBUG=1)")

    args = parser.parse_args(argv)
    _check_int_options(args)
    if args.command in ("unet", "decoder"):
        if args.command == "unet":
            result = profile_unet(args.arch, args.latent, args.batch, args.latency, args.device)
        else:
            result = profile_decoder(args.arch, args.latent, args.batch, args.latency, args.device)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_profile(result)
    else:
        rows = profile_walk(args.name, args.latent)
        if args.json:
            print(json.dumps({"walk": args.name, "latent": args.latent, "steps": rows}, indent=2))
        else:
            print(f"walk {args.name}, latent {args.latent}x{args.latent}, GFLOPs with attention counted")
            print(format_table(rows, WALK_COLUMNS))
            details = [f"  {r['step']}: {r['check_detail']}" for r in rows if r["check_detail"]]
            if details:
                print("checks:\n" + "\n".join(details))
    return 0


if __name__ == "__main__":
    from snapgen.training.cli import run_cli

    sys.exit(run_cli(main))
