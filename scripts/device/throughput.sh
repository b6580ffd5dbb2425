#!/usr/bin/env bash
# Issue 8 on one GPU: Table 3's throughput column (samples/s at 1024^2, 28 steps, CFG) beside SDXL and a DreamLite-like
# UNet, with MFU. Needs .gpu/wheels (diffusers, fvcore and its deps). Usage: bash scripts/device/throughput.sh [ARGS]
source scripts/device/setup.sh
cmd="python3 -m benchmarks.throughput --out $OUT/throughput --dtype bf16 $*"
echo "$cmd" | tee "$OUT/command.txt"
$cmd 2>&1 | tee "$OUT/throughput.log"
