#!/usr/bin/env bash
# Issue 16 on one GPU: train the CIFAR-10 feature network of the offline sample metric (FD-CIFAR, KID, class accuracy;
# evals.feature_net), about 1.2M params, 40 epochs, about 1 minute on an H200, and pack its weights + record.
# Carry: .gpu/assets/datasets ONLY (the full CIFAR-10 npz, 56 MB, fills the carry; no wheels needed: torch, numpy,
# PIL and safetensors are on the image). The npz is found as $SNAPGEN_ASSETS/datasets/cifar10_jpeg.npz.
# Usage: bash scripts/device/feature_net.sh [SEED]. Then here: cp <files>/feature_net/* evals/weights/ and commit.
source scripts/device/setup.sh
cmd="python3 -m evals.feature_net train --out $OUT/feature_net --seed ${1:-0} --epochs ${2:-40}"
echo "SNAPGEN_ASSETS=.gpu/assets $cmd" | tee "$OUT/command.txt"
$cmd 2>&1 | tee "$OUT/train.log"
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$OUT/train.log"
