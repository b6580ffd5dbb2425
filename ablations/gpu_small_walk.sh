#!/usr/bin/env bash
# The Fig. 3 walk at SCALE=small on one GPU, with nothing but this repo and its Python packages: no Ray, no MLflow
# server. Trains each step on CIFAR-10 at 32x32 (the same budget per step, ablations/specs/unet.yaml `small`),
# computes FID when clean-fid's Inception weights are found (snapgen.weights), profiles the full-size architectures,
# logs to a sqlite MLflow store, and packs everything a report needs into one tar.gz:
#   $OUT/mlruns.db (+ mlartifacts/)   the runs (open with: mlflow ui --backend-store-uri sqlite:///mlruns.db)
#   $OUT/fig3_table.md, .csv           the Fig. 3 table beside the paper
#   $OUT/fig3.png                      the figure
#   $OUT/runs/<hash>/                  config.yaml, metrics.jsonl, sample grids (checkpoints are not packed)
#   $OUT/sweep.log, env.txt            what ran, on what
# Usage:  OUT=/tmp/small_walk SNAPGEN_ASSETS=/path/to/assets bash ablations/gpu_small_walk.sh [extra sweep args]
#         (PY=/path/to/python to choose the interpreter; default .venv/bin/python, else python3)
# Rerunning with the same OUT resumes: finished steps are skipped, an interrupted one resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${OUT:-$PWD/gpu_small_walk}" && cd "${OUT:-$PWD/gpu_small_walk}" && pwd)
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "${SNAPGEN_ASSETS:-}" ] && [ -d ../shared/assets ]; then export SNAPGEN_ASSETS=$(cd ../shared/assets && pwd); fi
if [ -z "${SNAPGEN_ASSETS:-}" ] && [ -d shared/assets ]; then export SNAPGEN_ASSETS=$(cd shared/assets && pwd); fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlruns.db"

"$PY" - <<'PYEOF' | tee "$OUT/env.txt"
import platform, subprocess, sys
import torch, mlflow, fvcore, diffusers  # noqa: F401  (fails here, before any training, if a package is missing)
from snapgen import weights
print("python", sys.version.split()[0], "torch", torch.__version__, "mlflow", mlflow.__version__,
      "diffusers", diffusers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("git", subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown")
print("cifar10", weights.find("cifar10_npz", download=False))
try:
    print("fid weights", weights.find("cleanfid_inception", download=False))
except weights.WeightsNotFoundError as e:
    print("fid weights: MISSING (FID will be logged as missing):", str(e).splitlines()[0])
if not torch.cuda.is_available():
    print("WARNING: no GPU; the small scale takes hours on a CPU", file=sys.stderr)
PYEOF

set +e
"$PY" -m ablations.sweep unet --scale small --executor local --out-root "$OUT/runs" \
  --profile-cache "$OUT/profile_cache" --no-progress --prune-checkpoints "$@" \
  2>&1 | tee "$OUT/sweep.log"
status=${PIPESTATUS[0]}
set -e
"$PY" -m reports.tables fig3 --format md > "$OUT/fig3_table.md" 2>&1 || true
"$PY" -m reports.tables fig3 --format csv > "$OUT/fig3_table.csv" 2>> "$OUT/fig3_table.md" || true
"$PY" -m reports.figures fig3 --from-mlflow --scale small --out "$OUT/fig3.png" >> "$OUT/sweep.log" 2>&1 || true
tar czf "$OUT.tar.gz" --exclude='checkpoint*' --exclude='*.pt' -C "$(dirname "$OUT")" "$(basename "$OUT")"
echo "sweep exit status $status; packed $OUT.tar.gz ($(du -h "$OUT.tar.gz" | cut -f1))"
exit "$status"
