"""Table 3's throughput column: `python -m benchmarks.throughput --out DIR [--dtype bf16] [--settings NAME ...]
[--ablation] [--profile NAME ...] [--batch N] [--models NAME ...] [--quick]`.

Table 3: "Throughput (samples/s) is measured on a single 80GB A100 GPU using the largest batch size supported for each
model ... to generate 1024^2 px images. Here our sampling step is set to be 28." So per model: a 128x128 latent, CFG
(the UNet batch is 2x the image batch), 28 UNet forwards per sample; the image batch is the largest power of two that
runs without OOM. samples/s = batch / (time of 28 forwards at batch 2B). Measured beside diffusers' SDXL UNet
(`UNet2DConditionModel` with SDXL's published config, random init) and a DreamLite-like UNet (ours: the SDXL
topology thinned to widths (256, 512, 1024) and transformer depths (0, 2, 4); DreamLite's exact config is not
public), and the SD3 decoder vs ours (images/s at the largest batch).

MFU = achieved FLOP/s / the GPU's measured bf16 peak (a large bf16 matmul): model FLOPs from fvcore via
`snapgen.profile.count_flops` (multiply-adds, x2 to FLOPs; attention counted). `--settings` names the rows (SETTINGS:
channels-last, cuDNN benchmark, torch.compile and its modes, CUDA graphs, FP8), each applied to every model, so each
row's ratio to SDXL under the same setting (`ratio_same_setting`) is printed beside its ratio to SDXL eager
(`ratio_vs_sdxl_eager`, the paper's comparison); `--ablation` is issue 8's cumulative chain. FP8 changes numerics, so
it is opt-in and its row states the output's relative error against the bf16 model. `--profile` adds, per named
setting, where the GPU time of one forward goes (benchmarks/kernel_profile.py). Rows are saved as they finish and
merged into an existing throughput.json in --out (later calls add rows). `--quick` is a CPU
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


def prepare(model: torch.nn.Module, device, dtype, channels_last: bool, compile_: bool | str):
    """On the device in `dtype`, eval, no grads; channels-last and `torch.compile` (a string is its mode) on request."""
    model = model.to(device, dtype).eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not compile_:
        return model
    return torch.compile(model, mode=compile_ if isinstance(compile_, str) else None)


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


# Named settings: every switch a row applies (`--settings NAME ...`; each applies to every model, so the ratio to SDXL
# under the same setting is always there). `compile` is False, True or a torch.compile mode.
SETTINGS: dict[str, dict[str, Any]] = {
    "eager": dict(),
    "+channels-last": dict(channels_last=True),
    "+cudnn-benchmark": dict(cudnn_benchmark=True),
    "+compile": dict(compile=True),
    "+compile+channels-last": dict(compile=True, channels_last=True),
    "+compile+cudnn-benchmark": dict(compile=True, cudnn_benchmark=True),
    "+compile+cuda-graphs": dict(compile=True, cuda_graphs=True),
    "+compile+channels-last+cuda-graphs": dict(compile=True, channels_last=True, cuda_graphs=True),
    "+max-autotune": dict(compile="max-autotune-no-cudagraphs", cudnn_benchmark=True),
    # FP8 (opt-in: it changes numerics; each row states its output error against the bf16 model)
    "+compile+fp8": dict(compile=True, cudnn_benchmark=True, fp8=True),
    "+compile+fp8+cuda-graphs": dict(compile=True, cudnn_benchmark=True, fp8=True, cuda_graphs=True),
}
# --ablation: the cumulative chain of issue 8's table (each row adds one optimisation to the row before).
ABLATION = ("eager", "+channels-last", "+compile+channels-last", "+compile+channels-last+cuda-graphs")


def quantize_fp8(model: torch.nn.Module) -> int:
    """torchao's dynamic FP8 (e4m3, one scale per row of activations and weights) for every `nn.Linear` whose
    widths are multiples of 16 (`torch._scaled_mm`'s constraint); needs a GPU of compute capability >= 8.9. 1x1 and
    3x3 convolutions stay bf16. Returns how many layers were converted."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def eligible(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 \
            and module.out_features % 16 == 0
    count = sum(eligible(m, n) for n, m in model.named_modules())
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=eligible)
    return count


def run(args, save: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:
    """Every UNet under every setting (then the decoders); `save(result)` after each row, so a call that runs out of
    time keeps the rows it finished."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    latent = 8 if args.quick else LATENT
    text_len = 8 if args.quick else TEXT_LEN
    steps = 2 if args.quick else STEPS
    max_batch = 2 if args.quick else args.max_batch
    peak = measure_peak_flops(device, dtype, n=256 if args.quick else 8192, iters=3 if args.quick else 20)
    names = list(ABLATION) if args.ablation else args.settings
    settings = {name: SETTINGS[name] for name in names}
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
        reference = None  # the bf16 eager output on fixed inputs, for the error of settings that change numerics
        for setting, opts in settings.items():
            torch.backends.cudnn.benchmark = bool(opts.get("cudnn_benchmark"))
            model = copy.deepcopy(cpu_model).to(device, dtype).eval().requires_grad_(False)
            row: dict[str, Any] = {"model": name, "setting": setting, "params_m": params_m}
            if opts.get("fp8"):
                if args.quick or device.type != "cuda":
                    print(f"{name} {setting}: skipped (FP8 needs a GPU of compute capability >= 8.9)", file=sys.stderr)
                    continue
                if reference is None:
                    probe = to_device(make_inputs(2, latent, text_len), device, dtype)
                    with torch.no_grad():
                        reference = (probe, forward(model, probe).float())
                row["fp8_linear_layers"] = quantize_fp8(model)
            model = prepare(model, device, dtype, opts.get("channels_last", False), opts.get("compile", False))
            if opts.get("fp8"):
                with torch.no_grad():
                    out = forward(model, reference[0]).float()
                row["output_rel_error_vs_bf16"] = float((out - reference[1]).norm() / reference[1].norm())
            runners = {}

            def try_batch(batch: int) -> float:
                # CFG: conditional + unconditional in one batch; built on the CPU copy, moved like the model
                inputs = to_device(make_inputs(2 * batch, latent, text_len), device, dtype)
                if opts.get("channels_last"):
                    inputs = _to_channels_last(inputs)
                with torch.no_grad():
                    runner = make_runner(lambda x: forward(model, x), inputs, device, opts.get("cuda_graphs", False))
                    runners["last"] = runner
                    return time_forwards(runner, device, steps, args.repeats)

            started = time.perf_counter()
            batch, seconds = batch_and_seconds(try_batch)
            row.update({"batch": batch, "unet_batch": 2 * batch, "seconds_per_sampling_run": seconds,
                        "samples_per_s": batch / seconds, "gmacs_per_sample_forward": gmacs,
                        "wall_s_incl_compile": time.perf_counter() - started})
            if gmacs is not None:
                achieved = 2 * gmacs * 1e9 * 2 * batch * steps / seconds  # MACs -> FLOPs, x UNet batch x forwards
                row["mfu"] = achieved / peak
            if setting in (args.profile or ()):
                from benchmarks.kernel_profile import profile

                with torch.no_grad():
                    row["kernel_profile"] = profile(runners["last"], device, iters=3)
                row["kernel_profile"]["unit"] = f"ms per UNet forward at batch {2 * batch}"
            print(json.dumps({k: v for k, v in row.items() if k != "kernel_profile"}), file=sys.stderr, flush=True)
            result["unets"].append(row)
            add_ratios(result)
            save(result)
            del model, runners
            release()
    torch.backends.cudnn.benchmark = False

    for name, cpu_decoder in build_decoders(args.quick).items():
        if not args.decoders:
            break
        params_m = sum(p.numel() for p in cpu_decoder.parameters()) / 1e6
        channels = cpu_decoder.latent_channels
        gmacs = count_gflops(cpu_decoder, {"latent": torch.randn(1, channels, latent, latent)},
                             lambda m, x: m(x["latent"])) if args.flops else None
        setting, opts = next(iter(settings.items()))  # decoders: the first setting only (not ablated)
        decoder = prepare(cpu_decoder, device, dtype, opts.get("channels_last", False), opts.get("compile", False))

        def try_decode(batch: int) -> float:
            inputs = {"latent": torch.randn(batch, channels, latent, latent, device=device, dtype=dtype)}
            if opts.get("channels_last"):
                inputs = _to_channels_last(inputs)
            with torch.no_grad():
                runner = make_runner(lambda x: decoder(x["latent"]), inputs, device, opts.get("cuda_graphs", False))
                return time_forwards(runner, device, 1, args.repeats)

        batch, seconds = largest_batch(try_decode, max_batch)
        row = {"model": name, "setting": setting, "params_m": params_m, "batch": batch,
               "images_per_s": batch / seconds, "gmacs_per_image": gmacs}
        if gmacs is not None:
            row["mfu"] = 2 * gmacs * 1e9 * batch / seconds / peak
        result["decoders"].append(row)
        save(result)
        del decoder
        release()
    return result


def add_ratios(result: dict[str, Any]) -> None:
    """Each UNet row against SDXL under the same setting (`ratio_same_setting`) and against SDXL eager
    (`ratio_vs_sdxl_eager`, the paper's comparison of released models); None where that SDXL row is missing."""
    sdxl = {r["setting"]: r["samples_per_s"] for r in result["unets"] if r["model"] == "sdxl-unet"}
    for row in result["unets"]:
        row["ratio_same_setting"] = row["samples_per_s"] / sdxl[row["setting"]] if row["setting"] in sdxl else None
        row["ratio_vs_sdxl_eager"] = row["samples_per_s"] / sdxl["eager"] if "eager" in sdxl else None


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Rows of an earlier call in the same --out (same device, dtype, latent, steps) kept unless measured again."""
    same = all(old.get(k) == new.get(k) for k in ("device", "dtype", "latent", "steps", "quick"))
    if not same:
        return new
    keys = {(r["model"], r["setting"]) for r in new["unets"]}
    merged = {**new, "settings": {**old.get("settings", {}), **new["settings"]},
              "unets": [r for r in old.get("unets", []) if (r["model"], r["setting"]) not in keys] + new["unets"],
              "decoders": new["decoders"] or old.get("decoders", [])}
    add_ratios(merged)
    return merged


def markdown(result: dict[str, Any]) -> str:
    def mfu(row):
        return f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"

    def ratio(x):
        return f"{x:.2f}" if x is not None else "n/a"

    def error(row):
        return f"{100 * row['output_rel_error_vs_bf16']:.2f}%" if "output_rel_error_vs_bf16" in row else "—"

    batch = f"batch fixed at {result['batch_fixed']}" if result["batch_fixed"] else "largest power-of-two batch"
    lines = [f"Throughput at {result['latent'] * 8}^2 px ({result['latent']}^2 latent), {result['steps']} steps, CFG, "
             f"{batch}, {result['device']}, {result['dtype']}, PyTorch {result['torch']}; measured {result['dtype']} "
             f"matmul peak {result['peak_tflops_measured']:.1f} TFLOP/s" + (" (QUICK CPU SMOKE: numbers mean nothing)"
                                                                          if result["quick"] else ""),
             "", "| UNet | setting | params (M) | batch | samples/s | x SDXL eager | x SDXL (same setting) | MFU | "
             "output error vs bf16 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["unets"]:
        lines.append(f"| {r['model']} | {r['setting']} | {r['params_m']:.1f} | {r['batch']} | "
                     f"{r['samples_per_s']:.3f} | {ratio(r.get('ratio_vs_sdxl_eager'))} | "
                     f"{ratio(r.get('ratio_same_setting'))} | {mfu(r)} | {error(r)} |")
    if result["decoders"]:
        lines += ["", "| decoder | setting | params (M) | batch | images/s | MFU |", "|---|---|---|---|---|---|"]
        for r in result["decoders"]:
            lines.append(f"| {r['model']} | {r['setting']} | {r['params_m']:.2f} | {r['batch']} | "
                         f"{r['images_per_s']:.3f} | {mfu(r)} |")
    for r in result["unets"]:
        if r.get("kernel_profile"):
            from benchmarks.kernel_profile import markdown as profile_markdown

            lines += ["", profile_markdown(f"Profile of {r['model']} {r['setting']} "
                                           f"({r['kernel_profile']['unit']})", r["kernel_profile"]).rstrip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="model dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--settings", nargs="+", default=["eager"], choices=list(SETTINGS), metavar="SETTING",
                   help=f"rows per model, each applied to every model ({', '.join(SETTINGS)})")
    p.add_argument("--ablation", action="store_true", help=f"the settings {', '.join(ABLATION)} (cumulative)")
    p.add_argument("--profile", nargs="*", default=None, metavar="SETTING",
                   help="torch.profiler over 3 forwards of these settings: GPU time per kernel category")
    p.add_argument("--max-batch", type=int, default=256, help="largest image batch tried (powers of two)")
    p.add_argument("--repeats", type=int, default=3, help="timed sampling runs per batch (median)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip fvcore counting (no MFU)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny models and sizes")
    p.add_argument("--batch", type=int, default=None, help="fixed image batch instead of the largest that fits")
    p.add_argument("--models", nargs="*", default=None, help="only UNets whose name contains one of these")
    p.add_argument("--no-decoders", dest="decoders", action="store_false")
    p.add_argument("--fresh", action="store_true", help="do not merge into an existing throughput.json in --out")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    unknown = set(args.profile or ()) - set(SETTINGS)
    if unknown:
        p.error(f"--profile: unknown settings {sorted(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "throughput.json"
    old = json.loads(path.read_text()) if path.exists() and not args.fresh else None

    def save(result: dict[str, Any]) -> dict[str, Any]:
        merged = merge_results(old, result) if old else result
        path.write_text(json.dumps(merged, indent=2))
        (out / "throughput.md").write_text(markdown(merged))
        return merged

    table = markdown(save(run(args, save)))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
