#!/usr/bin/env bash
# Issue 16 on one GPU: FD-CIFAR, KID-CIFAR and class accuracy (the offline proxy, not FID) of a CIFAR-10 run that is on
# the machine (e.g. runs/train_small or runs/t2i_small, trained by train_small.sh / t2i_small.sh in this warm session:
# their checkpoints are not committed), CFG swept over 1.3, 1.65, 2.0; fd_cifar.json packed to $OUT.
# Carry: what the run's own script carried (its CIFAR-10 npz is the reference; set SNAPGEN_CIFAR10_NPZ as it did).
# Usage: bash scripts/device/fd_cifar_run.sh RUN [N] [STEPS]
source scripts/device/setup.sh
run=$1
cmd="python3 -m evals.fid $run --features cifar10 --n ${2:-2000} --steps ${3:-30} --guidance 1.3 1.65 2.0 --batch-size 250"
echo "SNAPGEN_CIFAR10_NPZ=${SNAPGEN_CIFAR10_NPZ:-} $cmd" | tee "$OUT/command_$(basename $run).txt"
$cmd 2>&1 | tee "$OUT/fd_cifar_$(basename $run).log"
cp "$run/fd_cifar.json" "$OUT/fd_cifar_$(basename $run).json"
