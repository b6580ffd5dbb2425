#!/usr/bin/env bash
# Issue 5 on one GPU: adversarial step distillation (Eq. 9) of a small-scale student, then 4/8-step grids before and
# after beside the 28-step model. Student: snapgen-imagenet at width 64 on CIFAR-10 32x32 (as the KD ablation's rows);
# teacher / discriminator backbone: a 12x512 DiT trained first on the same data.
source scripts/device/setup.sh
mkdir -p /tmp/snapcache && cp -rn .gpu/cache/. /tmp/snapcache/ 2>/dev/null; export SNAPGEN_CACHE=/tmp/snapcache
set -x
python3 -m snapgen.train --preset snapgen-imagenet --data cifar10 --scale small --out runs/student --no-progress \
  --set width=64 steps=800 val_every=400 ckpt_every=800 2>&1 | tail -3
timeout 330 python3 -m snapgen.step_distill runs/student --out runs/fewstep --steps 300 \
  --teacher-set num_layers=12 num_attention_heads=8 attention_head_dim=64 steps=1500 batch_size=128 lr=3e-4 \
  --set batch_size=128 log_every=50 ckpt_every=300 2>&1 | grep -v "it/s\]" | tail -25
for n in 4 8 28; do python3 -m snapgen.sample runs/student --steps $n --cfg 2 --n 8 --out "$OUT/before_${n}step.png"; done
for n in 4 8; do python3 -m snapgen.sample runs/fewstep --steps $n --cfg 1 --n 8 --out "$OUT/after_${n}step.png"; done
set +x
tar czf "$OUT/fewstep.tar.gz" runs/student/metrics.jsonl runs/student/config.yaml runs/fewstep/metrics.jsonl \
  runs/fewstep/config.yaml runs/fewstep/samples
