#!/usr/bin/env bash
# Issue 5 on one GPU: adversarial step distillation (Eq. 9) of a small-scale student, then 4/8-step grids before and
# after beside the 28-step model. Student: snapgen-imagenet at width 64 on CIFAR-10 32x32 (as the KD ablation's rows);
# teacher / discriminator backbone: a 12x512 DiT trained first on the same data.
# Carry: .gpu/wheels .gpu/assets/datasets .gpu/cache (the MiniLM embeddings of the class prompts).
source scripts/device/setup.sh
mkdir -p /tmp/snapcache && cp -rn .gpu/cache/. /tmp/snapcache/ 2>/dev/null; export SNAPGEN_CACHE=/tmp/snapcache
rm -rf runs/fewstep  # a fresh distillation each call (the student run resumes or is reused)
set -x
python3 -m snapgen.train --preset snapgen-imagenet --data cifar10 --scale small --out runs/student --no-progress \
  --set width=64 steps=800 val_every=400 ckpt_every=800 2>&1 | tail -3
timeout 420 python3 -m snapgen.step_distill runs/student --out runs/fewstep --steps 450 \
  --teacher-set num_layers=12 num_attention_heads=8 attention_head_dim=64 steps=1000 batch_size=128 lr=3e-4 \
  --set batch_size=128 log_every=50 ckpt_every=150 2>&1 | grep -v "it/s\]" | tail -25
set +x
# eval.json: MSE to the teacher's 30-step samples (same noise) of the distilled student at 4/8 steps and of the
# student before distillation at 4/8/28; samples/: their grids.
tar czf "$OUT/fewstep.tar.gz" runs/student/metrics.jsonl runs/student/config.yaml runs/student/samples \
  runs/fewstep/metrics.jsonl runs/fewstep/config.yaml runs/fewstep/eval.json runs/fewstep/samples
