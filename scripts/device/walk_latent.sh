#!/usr/bin/env bash
# Issue 16 on one GPU: the Fig. 3 walk at `small` scale in TAESD3's latent space (CIFAR-10 upsampled to 256 px ->
# 32x32x16 latents, encoded once and cached), 8 steps x 3 seeds, each trial 300 optimizer steps at batch 256 on the
# width-64 architectures, scored with FD-CIFAR / KID / class accuracy (CFG 1.3, 1.65, 2.0; best reported) and val loss.
# Run it in chunks: each call stops after SECONDS (default 500, under 9 min), packs what finished under $OUT, and the
# next call skips finished trials (their trial_result.json) and runs the rest; a trial cut off restarts.
# Needs the committed feature network (evals/weights/cifar10_resnet.safetensors; scripts/device/feature_net.sh).
# Carry: .gpu/wheels .gpu/assets/taesd .gpu/lite/cifar10_40k_2k.npz .gpu/cache, and runs/walk_latent from the previous call's archive
# (unpacked here) when there is one. Usage: bash scripts/device/walk_latent.sh [SECONDS]
source scripts/device/setup.sh
export SNAPGEN_CIFAR10_NPZ=$PWD/.gpu/lite/cifar10_40k_2k.npz  # 40k/2k strided subset: the full npz + TAESD3 exceed 64 MiB
# Latents and reference statistics go outside the carried .gpu/cache (a carry replaces it): a warm machine keeps them.
mkdir -p /tmp/snapgen_cache && cp -rn .gpu/cache/. /tmp/snapgen_cache/ && export SNAPGEN_CACHE=/tmp/snapgen_cache
# params and fvcore GFLOPs of the full-size architectures, computed once on a CPU (device-independent)
mkdir -p runs/profile_cache && cp -n reports/results/walk_latent/profile_cache/*.json runs/profile_cache/ 2>/dev/null || true
if [ ! -f evals/weights/cifar10_resnet.safetensors ]; then
  echo "evals/weights/cifar10_resnet.safetensors is missing: run scripts/device/feature_net.sh and commit its weights"
  exit 2
fi
cmd="python3 -m ablations.sweep unet --scale small --seeds ${SEEDS:-3} --no-tracking --no-progress --out-root runs/walk_latent --profile-cache runs/profile_cache"
echo "SNAPGEN_CIFAR10_NPZ=.gpu/lite/cifar10_40k_2k.npz $cmd" | tee "$OUT/command.txt"
start=$(date +%s)
timeout --signal=INT "${1:-500}" $cmd 2>&1 | grep -v "it/s\]" | tee "$OUT/sweep.log" \
  || echo "sweep stopped (exit $?) after $(( $(date +%s) - start )) s: rerun to continue" | tee -a "$OUT/sweep.log"
echo "$(find runs/walk_latent -name trial_result.json | wc -l) of $(( 8 * ${SEEDS:-3} )) trials finished" | tee -a "$OUT/sweep.log"
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$OUT/sweep.log"
# Only the small files travel back (a trial folder holds ~150 MB of samples and checkpoints; 8 trials' worth exceeded
# what a call can return): the records, metrics, configs and loss curves, which is all `ingest` and the skip logic need.
(cd runs && find walk_latent profile_cache \( -name '*.json' -o -name metrics.jsonl -o -name config.yaml \
  -o -name loss_curve.png \) -not -path '*checkpoint*' -print0 | tar czf "$OUT/walk_latent.tar.gz" --null -T -)
