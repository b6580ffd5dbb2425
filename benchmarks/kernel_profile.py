"""Where a model's GPU time goes: `torch.profiler` over a few calls, every kernel put in one category.

Used by `benchmarks.throughput --profile` (a compiled or eager sampling forward) and `benchmarks.train_speed
--profile` (training steps through `fit`). Categories are matched on the kernel's name, first match wins, in the order
of CATEGORIES: cuDNN/cuBLAS/CUTLASS/Triton kernel names say what they compute (Inductor names its fused Triton kernels
after the ops they hold, e.g. `triton_per_fused_native_group_norm_silu_3`, so a GroupNorm fused with its SiLU counts as
a norm). On a CPU (the `--quick` paths) the profile holds CPU operators instead of kernels, with the same categories.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch

# (category, name pattern), the first match wins: attention before GEMM (flash kernels hold "gemm"-like names),
# depthwise before other convolutions, normalisation before the generic Triton/elementwise bucket.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("depthwise conv", r"depthwise|grouped|dw_conv|c1_k1"),  # cuDNN's NHWC depthwise: conv2d_c1_k1_nhwc_*
    ("conv (dense, incl. 1x1)", r"conv|implicit_gemm|fprop|dgrad|wgrad|xmma_.*_nhwc|cudnn"),
    ("gemm (linear)", r"gemm|cutlass|nvjet|cublas|matmul|(?:^|[:_])b?mm\b|addmm|scaled_mm"),
    ("norm", r"group_norm|layer_norm|rms_norm|batch_norm|welford|_norm"),
    ("optimizer, EMA, clip", r"multi_tensor|foreach|adam|_amp_|lerp"),
    ("copy, layout", r"copy|transpose|permute|cat|contiguous|memcpy|memset|fill"),
    ("other fused (Triton)", r"^triton_"),
    ("elementwise, reduce", r"elementwise|vectorized|reduce|unrolled|silu|gelu|mul|add"),
)


def category(name: str) -> str:
    lowered = name.lower()
    if lowered.startswith("triton_"):
        # Inductor's fused kernels are named after every op they consume, e.g. `triton_poi_fused_convolution_
        # native_group_norm_silu_86` is the conv's bias + GroupNorm + SiLU after a cuDNN conv kernel: a norm if it
        # normalises, else fused elementwise work, never the conv or the matmul itself.
        return "norm" if "norm" in lowered else "other fused (Triton)"
    for label, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return label
    return "other"


def profile(call: Callable[[], Any], device: torch.device, iters: int = 3, top: int = 15) -> dict[str, Any]:
    """Profile `iters` calls of `call` (already warm: compiled, autotuned) -> {"categories": [{category, ms, share}],
    "top_kernels": [{name, category, ms, calls, share}], "total_ms", "iters"}; times are per call."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(iters):
            call()
        if cuda:
            torch.cuda.synchronize(device)
    return summarise(prof, cuda, iters, top)


def summarise(prof, cuda: bool, iters: int, top: int = 15) -> dict[str, Any]:
    """Per-kernel totals of a finished `torch.profiler.profile` (device kernels on CUDA, CPU operators' self time
    otherwise)."""
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if cuda:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = event.device_time
        else:
            us = event.self_cpu_time_total  # self time, so a parent op and its children are not counted twice
        entry = kernels.setdefault(event.name, [0.0, 0])
        entry[0] += us
        entry[1] += 1
    total = sum(us for us, _ in kernels.values()) or 1.0
    by_category: dict[str, float] = {}
    for name, (us, _) in kernels.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + us
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    return {
        "iters": iters, "unit": "ms per call", "source": "CUDA kernels" if cuda else "CPU operators (no GPU)",
        "total_ms": total / 1e3 / iters,
        "categories": [{"category": c, "ms": us / 1e3 / iters, "share": us / total}
                       for c, us in sorted(by_category.items(), key=lambda kv: -kv[1])],
        "top_kernels": [{"name": name, "category": category(name), "ms": us / 1e3 / iters, "calls": n // iters,
                         "share": us / total} for name, (us, n) in ranked[:top]],
        # every kernel (name -> ms per call), so the categories can be re-drawn later without the GPU
        "all_kernels_ms": {name: us / 1e3 / iters for name, (us, _) in ranked},
    }


def short_name(name: str) -> str:
    """A readable kernel name: PyTorch's templated kernels as `outer[functor, dtype]`, others unchanged."""
    name = re.sub(r"^void ", "", name)
    if "<" not in name:
        return name
    outer = re.sub(r"^.*::", "", name.split("<", 1)[0]) or name.split("<", 1)[0]
    functors = re.findall(r"(\w+Functor\w*|\w+_kernel_cuda|\w+_kernel(?=<)|\w+Kernel\w*)", name.split("<", 1)[1])
    inner = next((f for f in reversed(functors) if f != outer), "")
    dtype = next(iter(re.findall(r"\b(float|BFloat16|Half|double|bool)\b", name)), "")
    return f"{outer}[{', '.join(x for x in (inner, dtype) if x)}]"


def recategorise(result: dict[str, Any], top: int = 15) -> dict[str, Any]:
    """The categories and top kernels of a stored profile drawn again from its `all_kernels_ms` (after a change to
    CATEGORIES, without the GPU)."""
    kernels = result["all_kernels_ms"]
    total = sum(kernels.values()) or 1.0
    by_category: dict[str, float] = {}
    for name, ms in kernels.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + ms
    calls = {k["name"]: k["calls"] for k in result.get("top_kernels", [])}
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1])
    return {**result,
            "categories": [{"category": c, "ms": ms, "share": ms / total}
                           for c, ms in sorted(by_category.items(), key=lambda kv: -kv[1])],
            "top_kernels": [{"name": n, "category": category(n), "ms": ms, "calls": calls.get(n), "share": ms / total}
                            for n, ms in ranked[:top]]}


def markdown(title: str, result: dict[str, Any], kernels: int = 10) -> str:
    """Two tables: time per category, then the top kernels (names cut to 90 characters)."""
    lines = [f"{title}: {result['total_ms']:.1f} ms of {result['source']} per call (mean of {result['iters']})", "",
             "| category | ms | share |", "|---|---|---|"]
    lines += [f"| {c['category']} | {c['ms']:.2f} | {100 * c['share']:.1f}% |" for c in result["categories"]]
    lines += ["", "| kernel | category | calls | ms | share |", "|---|---|---|---|---|"]
    for k in result["top_kernels"][:kernels]:
        name = short_name(k["name"]).replace("|", "/")
        lines.append(f"| `{name[:90]}{'…' if len(name) > 90 else ''}` | {k['category']} | {k['calls'] or '?'} | "
                     f"{k['ms']:.2f} | {100 * k['share']:.1f}% |")
    return "\n".join(lines) + "\n"
