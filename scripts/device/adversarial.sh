#!/usr/bin/env bash
# Issue 19 on one GPU: both adversarial ablations at small scale, through the sweep (ablations/specs/adversarial_*.yaml,
# untracked: the box has no MLflow; `ingest` logs them here):
#  - step distillation with vs without L_adv^G: one latent-space student (snapgen-imagenet, width 64, TAESD3 latents
#    of CIFAR-10 at 64^2) and one small latent teacher shared by both arms; 4- and 8-step MSE to the teacher's 30-step
#    samples, D accuracy curves;
#  - the tiny decoder with vs without its PatchGAN on 256^2 patches: PSNR/SSIM on 500 held-out CIFAR-10 test images
#    upsampled to 256^2 (and on $SNAPGEN_PHOTOS when .gpu/photos is carried), D accuracy curves.
# Time budgets cap each phase (~5 min of H200 in all; ADV_CLEAN=1: one more arm, ~45 s). FD_CIFAR=1 also runs `python -m evals.fid RUN --features cifar10`
# on the distilled students (issue 16; tests/test_step_distill.py::test_fd_cifar_of_a_distilled_run checks it on CPU),
# into each trial's fd_cifar_<n>/.
# Carry: .gpu/wheels .gpu/assets/taesd .gpu/lite/cifar10_40k_2k.npz .gpu/cache [.gpu/photos]. SCALE=smoke: the CPU-sized proof.
source scripts/device/setup.sh
export SNAPGEN_CIFAR10_NPZ=$PWD/.gpu/lite/cifar10_40k_2k.npz
mkdir -p /tmp/snapcache && cp -rn .gpu/cache/. /tmp/snapcache/ 2>/dev/null; export SNAPGEN_CACHE=/tmp/snapcache
[ -d .gpu/photos ] && export SNAPGEN_PHOTOS=$PWD/.gpu/photos
ROOT=runs/adversarial
set -x
# ADV_CLEAN=1 adds the step-distillation arm adv_clean (D on clean samples: ~45 s more)
arms="adv no_adv"; [ "${ADV_CLEAN:-0}" = 1 ] && arms="$arms adv_clean"
python3 -m ablations.sweep adversarial_step_distill --scale "${SCALE:-small}" --no-tracking --no-progress --out-root "$ROOT" \
  --only $arms 2>&1 | grep -v "it/s\]\|Loading weights" | tail -20
python3 -m ablations.sweep adversarial_decoder --scale "${SCALE:-small}" --no-tracking --no-progress --out-root "$ROOT" 2>&1 \
  | grep -v "it/s\]\|Loading weights" | tail -20
if [ "${FD_CIFAR:-0}" = 1 ] && python3 -m evals.fid --help 2>/dev/null | grep -q -- "--features"; then
  for run in "$ROOT"/adversarial_step_distill/*/; do
    [ -f "$run/eval.json" ] || continue
    for n in 4 8; do python3 -m evals.fid "$run" --features cifar10 --steps "$n" --out "$run/fd_cifar_$n" || true; done
  done
fi
set +x
# results: each trial's trial_result.json (for `python -m ablations.sweep ingest --out-root runs/adversarial`),
# config.yaml, metrics.jsonl (the D accuracy curves), eval*.json, few-step grids; the decoders' weights (small).
find "$ROOT" \( -name trial_result.json -o -name config.yaml -o -name metrics.jsonl -o -name "eval*.json" \
  -o -path "*/samples/*.png" -o -path "*fd_cifar_*" -o -path "*/checkpoint/decoder/*" \) -print0 \
  | tar czf "$OUT/adversarial.tar.gz" --null -T -
ls -la "$OUT"
