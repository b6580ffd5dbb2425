#!/usr/bin/env bash
# Issue 3 on one GPU: the `small` run of snapgen-imagenet on CIFAR-10 (32x32 pixels), time-boxed, then packed to $OUT.
# Usage (device machine, repo root): bash scripts/device/train_small.sh [MINUTES]
source scripts/device/setup.sh
minutes=${1:-7}
run=runs/train_small
cmd="python3 -m snapgen.train --preset snapgen-imagenet --data cifar10 --scale small --out $run --no-progress --set time_budget_min=$minutes"
echo "$cmd" | tee "$OUT/command.txt"
$cmd 2>&1 | tee "$OUT/train.log"
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$OUT/train.log"
tar czf "$OUT/train_small.tar.gz" -C runs train_small/metrics.jsonl train_small/config.yaml train_small/samples
