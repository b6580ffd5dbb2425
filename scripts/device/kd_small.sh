#!/usr/bin/env bash
# Issue 5 on one GPU: supplement Tab. 3's four KD rows at `small` scale (a width-64 student, a 12x512 DiT teacher trained
# first, CIFAR-10 32x32), untracked (no MLflow on the device); `python -m ablations.sweep ingest DIR` logs it here.
# Usage: bash scripts/device/kd_small.sh ROW [ROW...]
source scripts/device/setup.sh
# the teacher is cached under $SNAPGEN_CACHE/teachers: keep it outside .gpu, which the next call's carry replaces
mkdir -p /tmp/snapcache && cp -rn .gpu/cache/. /tmp/snapcache/ && export SNAPGEN_CACHE=/tmp/snapcache
cmd="python3 -m ablations.sweep kd --scale small --no-tracking --no-progress --out-root runs/kd_small --profile-cache runs/profile_cache --only $*"
echo "$cmd" | tee "$OUT/command.txt"
timeout 540 $cmd 2>&1 | grep -v "it/s\]\|FID needs\|Searched\|SNAPGEN_ASSETS\|snapgen:\|download:\|Get it with\|warnings.warn" \
  | tee "$OUT/sweep.log" || echo "sweep exit status $?" | tee -a "$OUT/sweep.log"
tar czf "$OUT/kd_small.tar.gz" --exclude='checkpoint*' --exclude='*.pt' runs/kd_small
