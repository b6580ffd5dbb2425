"""Decode latency of our tiny decoder, TAESD3's decoder and the SD3 decoder in one run (Table 2's latency column).

    python -m benchmarks.decoder_latency [--latent 128] [--batch 1 4] [--arch tiny] [--device cuda] [--json OUT]

On CUDA: bf16 weights and inputs, batch 1 and 4, a 128x128 latent (1024x1024 image), `snapgen.profile.measure_latency`
(warm-up calls, then the median of timed calls, each synchronised). On CPU the default latent is 32x32 (256x256
image) in fp32, because the SD3 decoder takes minutes per 1024^2 image on a CPU; the printed table says so.
Latency does not depend on the weights: real TAESD3 / SD3 weights are used when `snapgen.weights` finds them, else the
same architecture randomly initialised (the table's `weights` column says which). The paper's numbers are on an iPhone
15 Pro (ANE / mobile GPU); these are PyTorch eager timings on this machine, comparable only with each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from snapgen import profile, weights
from snapgen.models.autoencoders import load_sd3_decoder
from snapgen.models.taesd import TAESDDecoder, load_taesd


def build_decoders(arch: str) -> list[tuple[str, torch.nn.Module, str]]:
    """(name, module taking a (B, 16, h, w) latent, weights label) for ours, TAESD3 and SD3: the peers' real weights
    where `snapgen.weights` finds them, else `snapgen.profile.build_decoder_by_name`'s random init, as for ours."""
    decoders = [(f"ours ({arch})", profile.build_decoder_by_name(arch), "random init (latency only)")]
    try:
        decoders.append(("taesd3", TAESDDecoder(load_taesd("taesd3", parts=("decoder",))), "taesd3_decoder"))
    except weights.WeightsNotFoundError:
        decoders.append(("taesd3", profile.build_decoder_by_name("taesd3"), "random init"))
    try:
        decoders.append(("sd3", load_sd3_decoder(), "sd3_vae"))
    except (weights.WeightsNotFoundError, OSError):
        decoders.append(("sd3", profile.build_decoder_by_name("sd3"), "random init"))
    return decoders


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decoder_latency", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--latent", type=int, default=None, help="latent side (default 128 on CUDA, 32 on CPU)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 4 on CUDA, 1 on CPU)")
    p.add_argument("--arch", default="tiny", type=profile.decoder_arch_arg,
                   help="our decoder arch: any name of `snapgen.profile.decoder_names` (tiny, tiny+no_gn, ...)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 20 on CUDA, 3 on CPU)")
    p.add_argument("--skip", nargs="*", default=[], help="decoders to leave out (ours, taesd3, sd3)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    latent = a.latent or (128 if cuda else 32)
    batches = a.batch or ([1, 4] if cuda else [1])
    repeats = a.repeats or (20 if cuda else 3)
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda and a.latent is None:
        print(f"CPU: latent {latent}x{latent} ({latent * 8}^2 image) instead of Table 2's 128x128, fp32; "
              f"pass --latent 128 for the full size (the SD3 decoder then takes minutes)", file=sys.stderr)
    rows = []
    for name, module, source in build_decoders(a.arch):
        if name.split(" ")[0] in a.skip:
            continue
        module = module.to(device, dtype).eval()
        for batch in batches:
            x = torch.randn(batch, 16, latent, latent, device=device, dtype=dtype)

            def decode() -> None:
                with torch.inference_mode():
                    module(x)

            try:
                result = profile.measure_latency(decode, warmup=a.warmup, repeats=repeats, device=device,
                                                 dtype=dtype, latent=latent)
            except torch.OutOfMemoryError:
                result = {"median_ms": None, "p10": None, "p90": None, "backend": f"torch-{device.type}",
                          "device": str(device), "dtype": str(dtype).replace("torch.", ""), "note": "OOM"}
                torch.cuda.empty_cache()
            rows.append({"decoder": name, "weights": source, "params_m": profile.count_params(module) / 1e6,
                         "latent": latent, "image": latent * 8, "batch": batch, **result})
        module.cpu()
    print(f"decode latency, {latent}x{latent} latent -> {latent * 8}x{latent * 8} image, "
          f"backend {rows[0]['backend']} on {rows[0]['device']}, {rows[0]['dtype']}, median of {repeats} "
          f"after {a.warmup} warm-up calls")
    print(profile.format_table(rows, [("decoder", "decoder", ""), ("weights", "weights", ""),
                                      ("params_m", "params (M)", ".2f"), ("batch", "batch", ""),
                                      ("median_ms", "median ms", ".2f"), ("p10", "p10", ".2f"),
                                      ("p90", "p90", ".2f"), ("wide_spread", f"p90/p10 > {profile.WIDE_SPREAD}", "")]))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
