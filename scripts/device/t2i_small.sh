#!/usr/bin/env bash
# Issue 8 on one GPU: `small`-scale T2I training of the full snapgen-t2i UNet (381M) in TAESD3's 16-channel SD3 latent
# space: CIFAR-10 upsampled to 256^2 (32^2 latents, the first T2I stage's resolution), class prompts through the
# MiniLM text encoder (embeddings carried in .gpu/cache), time-boxed; sample grids decoded by TAESD3.
# Carry: .gpu/wheels .gpu/assets/taesd .gpu/lite/cifar10_40k_2k.npz .gpu/cache. Usage: bash scripts/device/t2i_small.sh [MINUTES]
source scripts/device/setup.sh
export SNAPGEN_CIFAR10_NPZ=$PWD/.gpu/lite/cifar10_40k_2k.npz  # 40k/2k strided subset: the full npz + TAESD3 exceed 64 MiB
run=runs/t2i_small
cmd="python3 -m snapgen.train --preset snapgen-t2i --data cifar10 --scale small --out $run --no-progress --set
 autoencoder=taesd3 resolution=256 batch_size=64 lr=2e-4 warmup=200 val_every=500 ckpt_every=1000 sample_every=0
 samples_per_class=8 time_budget_min=${1:-7}"
echo "SNAPGEN_CIFAR10_NPZ=$SNAPGEN_CIFAR10_NPZ $cmd" | tee "$OUT/command.txt"
$cmd 2>&1 | grep -v "it/s\]" | tee "$OUT/train.log"
for steps in 4 28; do
  python3 -m snapgen.sample $run --steps $steps --cfg 3 --n 8 --out "$run/samples/cfg3_${steps}step.png"
done
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$OUT/train.log"
tar czf "$OUT/t2i_small.tar.gz" $run/metrics.jsonl $run/config.yaml $run/samples
