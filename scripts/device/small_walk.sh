#!/usr/bin/env bash
# Issue 4 on one GPU: the Fig. 3 walk at `small` scale (full-size models, CIFAR-10 32x32), the same step budget for every
# trial, run untracked (the device has no MLflow) and packed; `python -m ablations.sweep ingest DIR` logs it here.
# Usage: bash scripts/device/small_walk.sh STEP [STEP...]    (a few steps per call: each takes ~3 min on an H200)
source scripts/device/setup.sh
cmd="python3 -m ablations.sweep unet --scale small --no-tracking --no-progress --out-root runs/small_walk --profile-cache runs/profile_cache --set steps=400 val_every=200 ckpt_every=400 --only $*"
echo "$cmd" | tee "$OUT/command.txt"
timeout 540 $cmd 2>&1 | grep -v "it/s\]" | tee "$OUT/sweep.log" || echo "sweep exit status $?" | tee -a "$OUT/sweep.log"
tar czf "$OUT/small_walk.tar.gz" --exclude='checkpoint*' --exclude='*.pt' runs/small_walk runs/profile_cache
