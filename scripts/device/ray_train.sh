#!/usr/bin/env bash
# Issue 17 on one GPU: a 1-worker Ray Train trial against the local executor's trial (the same config, STEPS=120 steps
# of snapgen-imagenet on CIFAR-10 32x32, batch 128, eager), with two arms that split a gap into its causes (a plain
# Ray task at the sweep's niceness 0 and at Ray's default 15): ARMS=local,ray,ray_task,ray_task_nice15, one round per
# call (~8.5 min; ARMS=local,ray ~5 min), each trial in a fresh process; a second call with FIRST_ROUND=1 runs them in
# reverse order, and `--merge` joins the calls: train_loss agreement and img/s within 5%
# (benchmarks/ray_train_parity.py). The box has no Ray: its wheels (ray 2.60 + pyarrow, pandas, pydantic, ...;
# ~147 MiB for Python 3.12) exceed one call's 64 MiB carry, so they travel as a split tar over consecutive calls
# while the machine stays warm; each part is parked in /tmp/ray_parts and the last call joins, checks and installs.
#
#   here (CPU box, PyPI):  bash scripts/device/ray_train.sh build     # .gpu/ray/part-NN + SHA256SUMS, .gpu/lite, .gpu/cache
#   device calls 1-3:      bash scripts/device/ray_train.sh receive .gpu/ray/part-0K        carry: .gpu/ray/part-0K
#   device call 4:         bash scripts/device/ray_train.sh run          (call 5: FIRST_ROUND=1 bash ... run)
#                          carry: .gpu/ray/SHA256SUMS .gpu/wheels .gpu/lite/cifar10_10k_1k.npz .gpu/cache .gpu/git_sha
# Parts are 52 MiB: with the checkout (~8.5 MB, the feature net's weights included) each call stays under the 64 MiB
# carry; the run call carries no part, since the last part plus the wheels, data and cache would not fit.
# `run` accepts any parts still missing on its command line; it says which are missing when the join fails.
set -euo pipefail
parts_dir=/tmp/ray_parts
mode=${1:-}; shift || true

case $mode in
  build)  # on the CPU box: wheels for the box's Python 3.12, tarred and split; the CIFAR subset and MiniLM cache
    py=${PY:-.venv/bin/python}; [ -x "$py" ] || py=/work/main/.venv/bin/python
    rm -rf .gpu/ray /tmp/ray_wheels && mkdir -p .gpu/ray /tmp/ray_wheels .gpu/lite .gpu/cache
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d /tmp/ray_wheels ray==2.60.0 \
      "pyarrow>=17" pandas python-dateutil pytz tzdata six "pydantic>=2.5,<3" pydantic-core annotated-types \
      typing-inspection jsonschema jsonschema-specifications referencing rpds-py attrs "msgpack<2" protobuf click \
      tensorboardX requests urllib3 idna certifi charset-normalizer packaging pyyaml
    tar cf /tmp/ray_wheels.tar -C /tmp ray_wheels
    (cd /tmp && sha256sum ray_wheels.tar) > .gpu/ray/SHA256SUMS
    split -b 52M -d -a 2 /tmp/ray_wheels.tar .gpu/ray/part-
    [ -f .gpu/lite/cifar10_10k_1k.npz ] || "$py" -m snapgen.data subset .gpu/lite/cifar10_10k_1k.npz 10000 1000
    # The class prompts' MiniLM embeddings (the box has no text encoder): one tiny CPU run fills the cache.
    SNAPGEN_CACHE=$PWD/.gpu/cache SNAPGEN_CIFAR10_NPZ=$PWD/.gpu/lite/cifar10_10k_1k.npz "$py" -m snapgen.train \
      --scale smoke --out /tmp/ray_cache_run --no-progress --set steps=1 batch_size=8 val_size=256 train_limit=64 \
      samples_per_class=1 sample_steps=1 >/dev/null
    rm -rf /tmp/ray_cache_run
    ls -la .gpu/ray; du -sh .gpu/ray .gpu/wheels .gpu/lite .gpu/cache ;;
  receive)  # on the device: park the carried part outside the checkout (a later call's checkout may replace it)
    mkdir -p "$parts_dir"
    for part in "$@"; do cp "$part" "$parts_dir/"; done
    ls -la "$parts_dir"; df -h /tmp | tail -1 ;;
  run)
    mkdir -p "$parts_dir"
    for part in "$@"; do cp "$part" "$parts_dir/"; done
    source scripts/device/setup.sh
    if ! python3 -c "import ray" 2>/dev/null; then
      cat "$parts_dir"/part-* > /tmp/ray_wheels.tar
      sums=$PWD/.gpu/ray/SHA256SUMS
      if ! (cd /tmp && sha256sum -c "$sums"); then
        echo "joined tar does not match SHA256SUMS; parts here: $(ls "$parts_dir")" >&2; exit 3
      fi
      tar xf /tmp/ray_wheels.tar -C /tmp
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/ray_wheels/*.whl
    fi
    export SNAPGEN_CIFAR10_NPZ=$PWD/.gpu/lite/cifar10_10k_1k.npz RAY_TRAIN_V2_ENABLED=1
    python3 -c "import ray, pyarrow, pandas; print('ray', ray.__version__, 'pyarrow', pyarrow.__version__)"
    cmd="python3 -m benchmarks.ray_train_parity --out $OUT --steps ${STEPS:-120} --batch ${BATCH:-128} --arms ${ARMS:-local,ray,ray_task,ray_task_nice15} --rounds ${ROUNDS:-1} --first-round ${FIRST_ROUND:-0} ${PARITY_ARGS:-}"
    echo "$cmd" | tee "$OUT/command.txt"
    rc=0; timeout "${LIMIT:-560}" $cmd 2>&1 | grep -v PlacementGroupCleaner | tee "$OUT/ray_train.log" || rc=$?
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee -a "$OUT/ray_train.log"
    find "$OUT" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +  # the run directories (checkpoints of a 374M model)
    exit $rc ;;
  *) echo "usage: bash scripts/device/ray_train.sh build | receive PART... | run [PART...]" >&2; exit 2 ;;
esac
