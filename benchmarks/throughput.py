"""Table 3's throughput column: `python -m benchmarks.throughput --out DIR [--dtype bf16] [--compile] [--channels-last]
[--cuda-graphs] [--ablation] [--batch N] [--models NAME ...] [--quick]`.

Table 3: "Throughput (samples/s) is measured on a single 80GB A100 GPU using the largest batch size supported for each
model ... to generate 1024^2 px images. Here our sampling step is set to be 28." So per model: a 128x128 latent, CFG
(the UNet batch is 2x the image batch), 28 UNet forwards per sample; the image batch is the largest power of two that
runs without OOM. samples/s = batch / (time of 28 forwards at batch 2B). Measured beside diffusers' SDXL UNet
(`UNet2DConditionModel` with SDXL's published config, random init) and a DreamLite-like UNet (ours: the SDXL
topology thinned to widths (256, 512, 1024) and transformer depths (0, 2, 4); DreamLite's exact config is not
public), and the SD3 decoder vs ours (images/s at the largest batch).

MFU = achieved FLOP/s / the GPU's measured bf16 peak (a large bf16 matmul): model FLOPs from fvcore via
`snapgen.profile.count_flops` (multiply-adds, x2 to FLOPs; attention counted). `--compile`, `--channels-last`,
`--cuda-graphs` and `--dtype` switch one optimisation each; `--ablation` measures each UNet under eager, then adds
channels-last, torch.compile and CUDA graphs one at a time, so each step's gain is one row apart. `--quick` is a CPU
smoke run (tiny models and sizes; its numbers mean nothing). Writes throughput.json and throughput.md under --out.
Imports diffusers normally (the GPU box gets the diffusers wheel carried in).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

STEPS = 28  # Table 3: "our sampling step is set to be 28"
LATENT = 128  # 1024^2 px with an f = 8 autoencoder
TEXT_LEN = 154  # 77 CLIP + 77 Gemma tokens (SDXL: 77)

# diffusers' UNet2DConditionModel config of stabilityai/stable-diffusion-xl-base-1.0 (unet/config.json), written out.
SDXL_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
# DreamLite-like (ours): SDXL's topology, thinner and shallower; labelled as an approximation in every output.
DREAMLITE_LIKE_CONFIG: dict[str, Any] = {**SDXL_UNET_CONFIG, "block_out_channels": (256, 512, 1024),
                                         "transformer_layers_per_block": (0, 2, 4), "attention_head_dim": (4, 8, 16),
                                         "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D",
                                                              "CrossAttnDownBlock2D")}


def tiny(config: dict[str, Any]) -> dict[str, Any]:
    """--quick: the same topology at a CPU size."""
    return {**config, "block_out_channels": (32, 64, 64), "transformer_layers_per_block": (1, 1, 1),
            "attention_head_dim": (2, 4, 4), "cross_attention_dim": 32, "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 32 + 6 * 8, "norm_num_groups": 8, "sample_size": 16}


# ---- measurement -----------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 8192, iters: int = 20) -> float:
    """The GPU's achievable dense matmul FLOP/s in `dtype` (2 n^3 per n x n matmul), median of `iters`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def make_runner(fn: Callable[[dict], torch.Tensor], inputs: dict, device: torch.device, cuda_graphs: bool):
    """A zero-argument callable running `fn(inputs)`; with `cuda_graphs`, one captured CUDA graph replay."""
    if not cuda_graphs:
        return lambda: fn(inputs)
    if device.type != "cuda":
        raise ValueError("--cuda-graphs needs a CUDA device")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up on a side stream before capture (cuDNN/cuBLAS autotuning, allocations)
            fn(inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(inputs)
    return graph.replay


def time_forwards(run: Callable[[], Any], device: torch.device, forwards: int, repeats: int) -> float:
    """Median seconds of `forwards` consecutive calls (one sampling run), over `repeats`."""
    run()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(forwards):
            run()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def largest_batch(try_batch: Callable[[int], float], max_batch: int) -> tuple[int, float]:
    """Powers of two up to `max_batch`; the largest that runs without OOM -> (batch, its seconds)."""
    best: tuple[int, float] | None = None
    batch = 1
    while batch <= max_batch:
        try:
            best = (batch, try_batch(batch))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_oom(error):
                raise
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        batch *= 2
    if best is None:
        raise RuntimeError("batch 1 does not fit")
    return best


# ---- models ----------------------------------------------------------------------------------------------------------


def build_unets(quick: bool) -> dict[str, tuple[torch.nn.Module, Callable[[int, int, int], dict], Callable]]:
    """name -> (model, make_inputs(batch, latent, text_len), forward(model, inputs))."""
    from diffusers import UNet2DConditionModel

    from snapgen.models import EfficientUNet
    from snapgen.registry import resolve, shrink

    cfg = resolve("snapgen-t2i")
    if quick:
        cfg = shrink(cfg, base_width=16, head_dim=8, context_dim=32)

    def snapgen_inputs(net):
        def make(batch, latent, text_len):
            return net.dummy_inputs(batch=batch, latent=latent, text_len=text_len)
        return make

    def sdxl_inputs(net):
        def make(batch, latent, text_len):
            p = next(net.parameters())
            g = torch.Generator().manual_seed(0)
            c = net.config
            add_text = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
            return {"sample": torch.randn(batch, c.in_channels, latent, latent, generator=g).to(p),
                    "timestep": torch.full((batch,), 500.0, device=p.device),
                    "encoder_hidden_states": torch.randn(batch, 77, c.cross_attention_dim, generator=g).to(p),
                    "added_cond_kwargs": {"text_embeds": torch.randn(batch, add_text, generator=g).to(p),
                                          "time_ids": torch.randn(batch, 6, generator=g).to(p)}}
        return make

    torch.manual_seed(0)
    snapgen = EfficientUNet.from_unet_config(cfg)
    sdxl = UNet2DConditionModel(**(tiny(SDXL_UNET_CONFIG) if quick else SDXL_UNET_CONFIG))
    dreamlite = UNet2DConditionModel(**(tiny(DREAMLITE_LIKE_CONFIG) if quick else DREAMLITE_LIKE_CONFIG))
    return {
        "snapgen-t2i": (snapgen, snapgen_inputs(snapgen), lambda m, x: m(**x)),
        "sdxl-unet": (sdxl, sdxl_inputs(sdxl), lambda m, x: m(**x).sample),
        "dreamlite-like-unet (ours, approx.)": (dreamlite, sdxl_inputs(dreamlite), lambda m, x: m(**x).sample),
    }


def build_decoders(quick: bool) -> dict[str, torch.nn.Module]:
    from snapgen.models.autoencoders import build_baseline_decoder
    from snapgen.models.decoder import TinyDecoder

    if quick:
        return {"tiny-decoder (ours)": TinyDecoder(block_out_channels=(16, 16, 8, 8), layers_per_block=(1, 1, 1, 0),
                                                   norm_num_groups=4)}
    return {"sd3-decoder": build_baseline_decoder("sd3"), "tiny-decoder (ours)": TinyDecoder()}


def prepare(model: torch.nn.Module, device, dtype, channels_last: bool, compile_: bool):
    model = model.to(device, dtype).eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_ else model


def to_device(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Tensors in (nested) dicts to `device`, floating ones but the timestep to `dtype` (as a pipeline passes them)."""
    if isinstance(inputs, dict):
        return {k: to_device(v, device, torch.float32 if k == "timestep" else dtype) for k, v in inputs.items()}
    if torch.is_tensor(inputs):
        return inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)
    return inputs


def _to_channels_last(inputs: dict) -> dict:
    return {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4 else v
            for k, v in inputs.items()}


def count_gflops(model, inputs: dict, forward) -> float | None:
    """fvcore multiply-adds (GMACs) of one forward; None when fvcore cannot trace the model."""
    from snapgen.profile import count_flops

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, *tensors):
            return forward(self.m, dict(zip(keys, tensors)) | static)

    keys = [k for k, v in inputs.items() if torch.is_tensor(v)]
    static = {k: v for k, v in inputs.items() if not torch.is_tensor(v)}
    try:
        return float(count_flops(Wrapped(), tuple(inputs[k] for k in keys))["gflops"])
    except Exception as error:  # noqa: BLE001 - MFU is then reported as missing, with the reason
        print(f"fvcore could not count {type(model).__name__}: {error}", file=sys.stderr)
        return None


# ---- the benchmark ---------------------------------------------------------------------------------------------------


# --ablation: each setting adds one optimisation to the one before, so each step's gain is one row apart.
ABLATION = {
    "eager": dict(channels_last=False, compile=False, cuda_graphs=False),
    "+channels-last": dict(channels_last=True, compile=False, cuda_graphs=False),
    "+compile": dict(channels_last=True, compile=True, cuda_graphs=False),
    "+cuda-graphs": dict(channels_last=True, compile=True, cuda_graphs=True),
}


def run(args) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    latent = 8 if args.quick else LATENT
    text_len = 8 if args.quick else TEXT_LEN
    steps = 2 if args.quick else STEPS
    max_batch = 2 if args.quick else args.max_batch
    peak = measure_peak_flops(device, dtype, n=256 if args.quick else 8192, iters=3 if args.quick else 20)
    flags = dict(channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs)
    settings = ABLATION if args.ablation else {setting_name(flags): flags}
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype, "settings": settings, "batch_fixed": args.batch, "quick": args.quick, "latent": latent,
        "steps": steps, "peak_tflops_measured": peak / 1e12, "torch": torch.__version__, "unets": [],
        "decoders": []}

    def batch_and_seconds(try_batch: Callable[[int], float]) -> tuple[int, float]:
        return (args.batch, try_batch(args.batch)) if args.batch else largest_batch(try_batch, max_batch)

    def release():
        torch._dynamo.reset()  # compiled graphs hold their own buffers
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for name, (cpu_model, make_inputs, forward) in build_unets(args.quick).items():
        if args.models and not any(m in name for m in args.models):
            continue
        params_m = sum(p.numel() for p in cpu_model.parameters()) / 1e6
        gmacs = count_gflops(cpu_model, make_inputs(1, latent, text_len), forward) if args.flops else None
        for setting, opts in settings.items():
            model = prepare(copy.deepcopy(cpu_model), device, dtype, opts["channels_last"], opts["compile"])

            def try_batch(batch: int) -> float:
                # CFG: conditional + unconditional in one batch; built on the CPU copy, moved like the model
                inputs = to_device(make_inputs(2 * batch, latent, text_len), device, dtype)
                if opts["channels_last"]:
                    inputs = _to_channels_last(inputs)
                with torch.no_grad():
                    runner = make_runner(lambda x: forward(model, x), inputs, device, opts["cuda_graphs"])
                    return time_forwards(runner, device, steps, args.repeats)

            started = time.perf_counter()
            batch, seconds = batch_and_seconds(try_batch)
            row = {"model": name, "setting": setting, "params_m": params_m, "batch": batch, "unet_batch": 2 * batch,
                   "seconds_per_sampling_run": seconds, "samples_per_s": batch / seconds,
                   "gmacs_per_sample_forward": gmacs, "wall_s_incl_compile": time.perf_counter() - started}
            if gmacs is not None:
                achieved = 2 * gmacs * 1e9 * 2 * batch * steps / seconds  # MACs -> FLOPs, x UNet batch x forwards
                row["mfu"] = achieved / peak
            print(json.dumps(row), file=sys.stderr, flush=True)
            result["unets"].append(row)
            del model
            release()
    sdxl = {r["setting"]: r["samples_per_s"] for r in result["unets"] if r["model"] == "sdxl-unet"}
    for row in result["unets"]:  # against SDXL under the same setting, and against SDXL eager (the paper's baseline)
        row["ratio_to_sdxl"] = row["samples_per_s"] / sdxl[row["setting"]] if row["setting"] in sdxl else None
        row["ratio_to_sdxl_eager"] = row["samples_per_s"] / sdxl["eager"] if "eager" in sdxl else None

    for name, cpu_decoder in build_decoders(args.quick).items():
        if not args.decoders:
            break
        params_m = sum(p.numel() for p in cpu_decoder.parameters()) / 1e6
        channels = cpu_decoder.latent_channels
        gmacs = count_gflops(cpu_decoder, {"latent": torch.randn(1, channels, latent, latent)},
                             lambda m, x: m(x["latent"])) if args.flops else None
        opts = flags  # decoders: the command line's setting (not ablated)
        decoder = prepare(cpu_decoder, device, dtype, opts["channels_last"], opts["compile"])

        def try_decode(batch: int) -> float:
            inputs = {"latent": torch.randn(batch, channels, latent, latent, device=device, dtype=dtype)}
            if opts["channels_last"]:
                inputs = _to_channels_last(inputs)
            with torch.no_grad():
                runner = make_runner(lambda x: decoder(x["latent"]), inputs, device, opts["cuda_graphs"])
                return time_forwards(runner, device, 1, args.repeats)

        batch, seconds = largest_batch(try_decode, max_batch)
        row = {"model": name, "setting": setting_name(opts), "params_m": params_m, "batch": batch,
               "images_per_s": batch / seconds, "gmacs_per_image": gmacs}
        if gmacs is not None:
            row["mfu"] = 2 * gmacs * 1e9 * batch / seconds / peak
        result["decoders"].append(row)
        del decoder
        release()
    return result


def setting_name(opts: dict[str, bool]) -> str:
    on = [k.replace("_", "-") for k, v in opts.items() if v]
    return "+".join(on) if on else "eager"


def markdown(result: dict[str, Any]) -> str:
    def mfu(row):
        return f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"

    def ratio(x):
        return f"{x:.2f}" if x is not None else "n/a"

    batch = f"batch fixed at {result['batch_fixed']}" if result["batch_fixed"] else "largest power-of-two batch"
    lines = [f"Throughput at {result['latent'] * 8}^2 px ({result['latent']}^2 latent), {result['steps']} steps, CFG, "
             f"{batch}, {result['device']}, {result['dtype']}, PyTorch {result['torch']}; measured {result['dtype']} "
             f"matmul peak {result['peak_tflops_measured']:.1f} TFLOP/s" + (" (QUICK CPU SMOKE: numbers mean nothing)"
                                                                          if result["quick"] else ""),
             "", "| UNet | setting | params (M) | batch | samples/s | x SDXL (same setting) | x SDXL eager | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["unets"]:
        lines.append(f"| {r['model']} | {r['setting']} | {r['params_m']:.1f} | {r['batch']} | "
                     f"{r['samples_per_s']:.3f} | {ratio(r['ratio_to_sdxl'])} | {ratio(r['ratio_to_sdxl_eager'])} | "
                     f"{mfu(r)} |")
    if result["decoders"]:
        lines += ["", "| decoder | setting | params (M) | batch | images/s | MFU |", "|---|---|---|---|---|---|"]
        for r in result["decoders"]:
            lines.append(f"| {r['model']} | {r['setting']} | {r['params_m']:.2f} | {r['batch']} | "
                         f"{r['images_per_s']:.3f} | {mfu(r)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="model dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true", help="replay one captured CUDA graph per forward")
    p.add_argument("--max-batch", type=int, default=256, help="largest image batch tried (powers of two)")
    p.add_argument("--repeats", type=int, default=3, help="timed sampling runs per batch (median)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip fvcore counting (no MFU)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny models and sizes")
    p.add_argument("--ablation", action="store_true",
                   help="each UNet under eager, +channels-last, +compile, +cuda-graphs (cumulative)")
    p.add_argument("--batch", type=int, default=None, help="fixed image batch instead of the largest that fits")
    p.add_argument("--models", nargs="*", default=None, help="only UNets whose name contains one of these")
    p.add_argument("--no-decoders", dest="decoders", action="store_false")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "throughput.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
