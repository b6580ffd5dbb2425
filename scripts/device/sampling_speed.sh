#!/usr/bin/env bash
# Issue 14 on one GPU: sampling throughput (1024^2, 28 steps, CFG, image batch 16) of snapgen-t2i and SDXL under the
# same settings, with kernel profiles, in one call: each model runs in its own process under its own time limit and
# merges its rows into $OUT/throughput/throughput.json, so a slow compile cannot lose the other model's rows.
# Carry: .gpu/wheels (diffusers, importlib_metadata, fvcore + deps, torchao for the FP8 rows).
# Usage: bash scripts/device/sampling_speed.sh [SETTING ...]   (default: eager +compile+cudnn-benchmark +compile+fp8)
source scripts/device/setup.sh
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.gpu/inductor}
settings=${*:-eager +compile+cudnn-benchmark +compile+fp8}
profile=${PROFILE_SETTINGS:-eager +compile+cudnn-benchmark +compile+fp8}
for model in snapgen-t2i sdxl; do
  limit_var=LIMIT_${model//-/_}; limit=${!limit_var:-270}
  cmd="python3 -m benchmarks.throughput --out $OUT/throughput --dtype bf16 --batch 16 --repeats 2 --no-decoders \
--models $model --settings $settings --profile $profile"
  echo "$cmd" | tee -a "$OUT/command.txt"
  timeout "$limit" $cmd 2>&1 | tee -a "$OUT/throughput.log" || echo "exited $? (limit ${limit}s): $cmd" | tee -a "$OUT/throughput.log"
done
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee -a "$OUT/throughput.log"
