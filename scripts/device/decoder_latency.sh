#!/usr/bin/env bash
# Issue 7 on one GPU: decode latency at 1024^2 (128x128 latent), ours vs TAESD3 vs SD3 decoder, bf16, batch 1 and 4.
# Needs .gpu/wheels (diffusers) and .gpu/assets/taesd (TAESD3 weights); the SD3 decoder runs with random init.
source scripts/device/setup.sh
cmd="python3 benchmarks/decoder_latency.py --latent 128 --batch 1 4 --json $OUT/decoder_latency.json"
echo "$cmd" | tee "$OUT/command.txt"
$cmd 2>&1 | tee "$OUT/decoder_latency.txt"
