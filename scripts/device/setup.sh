# Sourced at the start of every device script: the device image has torch but not diffusers, and no network, so the
# wheels, CIFAR-10 and the MiniLM embedding cache travel in .gpu/ (see scripts/device/README.md).
set -euo pipefail
if [ -d .gpu/wheels ] && ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD SNAPGEN_ASSETS=$PWD/.gpu/assets SNAPGEN_CACHE=$PWD/.gpu/cache
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, 'device', torch.cuda.get_device_name(0))"
# The box's copy of the checkout can carry a stale .git: the sha of the code sent travels in .gpu/git_sha
# (`git rev-parse --short HEAD > .gpu/git_sha` here, then carry it), and snapgen.tracking.git_sha prefers it.
if [ -f .gpu/git_sha ]; then export SNAPGEN_GIT_SHA=$(cat .gpu/git_sha); fi
