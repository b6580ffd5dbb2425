#!/usr/bin/env bash
# Issue 14 on one GPU: img/s, MFU and peak memory of the harness's own training loop (`snapgen.training.fit`) for
# snapgen-imagenet and the DreamLite-like UNet at 32x32x16 latents, batch 256, eager vs each optimisation, and the
# eager-vs-compiled parity check. Carry: .gpu/wheels (diffusers, importlib_metadata, fvcore, iopath, yacs, termcolor).
# Usage: bash scripts/device/train_speed.sh [GROUP ...]; every group merges its rows into $OUT/train_speed.json and
# runs under its own time limit, so a slow group (compilation, autotuning) cannot lose the others' results.
#   snapgen    snapgen-imagenet: eager, +compile, +compile+cudnn-benchmark
#   dreamlite  the DreamLite-like UNet: eager, +compile (10 warm-up + 20 timed steps)
#   autotune   snapgen-imagenet: +max-autotune (no CUDA graphs), +max-autotune+cuda-graphs
#   extra      snapgen-imagenet: eager+channels-last, +compile+cuda-graphs
#   profile    snapgen-imagenet: eager+cudnn-benchmark and +compile, each with a kernel profile of the 10 steps after
#              its timed window
#   parity     a small config, 200 steps eager and compiled: final train_loss within 2%
#   concurrent snapgen eager (200 steps) beside snapgen and DreamLite +compile (see below): the +compile rows and the
#              eager-vs-compiled parity of the benchmark's own config in one call, compile time hidden behind it
#   (default: snapgen dreamlite). BENCH_ARGS adds arguments to every group (e.g. "--batch 512").
source scripts/device/setup.sh
# Inductor's cache in the checkout's ignored .gpu/ (kept on the box while it stays warm between calls)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.gpu/inductor}
export TORCH_LOGS=${TORCH_LOGS:-recompiles,graph_breaks}
log=$OUT/train_speed.log
group() {  # group LIMIT_S ARGS...
  local limit=$1; shift
  local cmd="python3 -m benchmarks.train_speed --out $OUT $* ${BENCH_ARGS:-}"
  echo "$cmd" | tee -a "$OUT/command.txt"
  timeout "$limit" $cmd 2>&1 | tee -a "$log" || echo "group exited $? (limit ${limit}s): $cmd" | tee -a "$log"
}
for g in "${@:-snapgen dreamlite}"; do
  for name in $g; do
    case $name in
      snapgen) group "${LIMIT_SNAPGEN:-330}" --models snapgen-imagenet --settings eager +compile +compile+cudnn-benchmark ;;
      dreamlite) group "${LIMIT_DREAMLITE:-240}" --models dreamlite-like --settings eager +compile --warmup-steps 10 --steps 20 ;;
      autotune) group "${LIMIT_AUTOTUNE:-420}" --models snapgen-imagenet --settings +max-autotune +max-autotune+cuda-graphs ;;
      extra) group "${LIMIT_EXTRA:-240}" --models snapgen-imagenet --settings eager+channels-last +compile+cuda-graphs ;;
      concurrent)  # snapgen eager for 200 steps on the GPU while snapgen and DreamLite +compile compile on the CPU;
                   # their timed steps are serialised by a flock (a compiled run takes it after its compile step)
        gm="--gmacs snapgen-imagenet=37.160255488 dreamlite-like=76.44839936 --gpu-lock /tmp/train_speed.lock"
        limit=${LIMIT_CONCURRENT:-440}
        mkdir -p "$OUT/eager" "$OUT/compiled" "$OUT/dreamlite"
        for job in "eager --models snapgen-imagenet --settings eager --steps 180 --tag (200-steps)" \
                   "compiled --models snapgen-imagenet --settings +compile --steps 180" \
                   "dreamlite --models dreamlite-like --settings +compile --warmup-steps 10 --steps 20"; do
          set -- $job; dir=$1; shift
          cmd="python3 -m benchmarks.train_speed --out $OUT/$dir $* $gm ${BENCH_ARGS:-}"
          echo "$cmd &" | tee -a "$OUT/command.txt"
          (rc=0; timeout "$limit" $cmd > "$OUT/$dir.log" 2>&1 || rc=$?; echo "exit $rc" >> "$OUT/$dir.log") &
        done
        wait
        merge=(python3 -m benchmarks.train_speed --out "$OUT" --merge "$OUT"/*/train_speed.json
               --parity-rows "snapgen-imagenet eager (200-steps)" "snapgen-imagenet +compile")
        echo "${merge[*]}" | tee -a "$OUT/command.txt"
        "${merge[@]}" 2>&1 | tee -a "$log" || true
        for dir in eager compiled dreamlite; do
          mv "$OUT/$dir/train_speed.json" "$OUT/$dir.json" 2>/dev/null || true
          { echo "==== $dir"; cat "$OUT/$dir.log"; } >> "$log"; rm -rf "$OUT/$dir" "$OUT/$dir.log"
        done ;;
      profile) group "${LIMIT_PROFILE:-400}" --models snapgen-imagenet --settings eager+cudnn-benchmark +compile \
                 --profile ;;
      parity) group "${LIMIT_PARITY:-150}" --models --settings --parity-steps 200 ;;
      *) echo "unknown group $name" >&2; exit 2 ;;
    esac
  done
done
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee -a "$log"
