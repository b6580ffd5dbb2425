#!/usr/bin/env bash
# Issue 7 on one GPU: train the tiny decoder against TAESD3's frozen encoder (MSE + PatchGAN; LPIPS's backbone is not
# on the box, which the run records) on CIFAR-10 upsampled to 256^2, for a time budget, then PSNR/SSIM of ours and
# TAESD3's decoder on the same latents of held-out CIFAR-10 test images.
# Carry: .gpu/wheels .gpu/assets/taesd .gpu/lite/cifar10_40k_2k.npz (CIFAR-10 40k train / 2k test strided subset: the full npz, TAESD3
# and diffusers exceed one call's 64 MiB). Usage: bash scripts/device/decoder_small.sh [MINUTES]
source scripts/device/setup.sh
export SNAPGEN_CIFAR10_NPZ=$PWD/.gpu/lite/cifar10_40k_2k.npz
set -x
python3 -m snapgen.train_decoder --scale small --out runs/decoder --no-progress --set resolution=256 batch_size=32 \
  gan_start=3000 val_every=500 ckpt_every=1000 "time_budget_min=${1:-7}" 2>&1 | grep -v "it/s\]" | tail -30
python3 -m snapgen.train_decoder eval runs/decoder --resolution 256 --limit 1000 --out "$OUT/eval_cifar256"
set +x
tar czf "$OUT/decoder_small.tar.gz" runs/decoder/config.yaml runs/decoder/metrics.jsonl runs/decoder/checkpoint/decoder
