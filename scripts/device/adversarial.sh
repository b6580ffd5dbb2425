#!/usr/bin/env bash
# Issue 19 on one GPU: both adversarial ablations at small scale, through the sweep (ablations/specs/adversarial_*.yaml,
# untracked: the box has no MLflow; `ingest` logs them here). Every arm of a stage trains the same number of steps
# (no time budgets: the 2026-12-01 run's budgets stopped the arms at unequal steps, 108 vs 222 and 1353 vs 2302).
#  - step_distill: with vs without L_adv^G: one latent-space student (snapgen-imagenet, width 64, TAESD3 latents of
#    CIFAR-10 at 64^2) and one small latent teacher shared by both arms; 4- and 8-step MSE to the teacher's 30-step
#    samples, FD-CIFAR / KID / class accuracy of the 4- and 8-step students (inside the trial: 1000 samples at the
#    few-step guidance, the spec's `fd_cifar` block), D accuracy curves. About 7 min. FD_CIFAR_FULL=1 adds
#    `evals.fid --features cifar10` per student and step count (10,000 samples, best CFG; into fd_cifar_<n>/): about
#    50 s each, so the part no longer fits one call with it (2026-12-01: it ran past 600 s; a second call finished).
#  - decoder: the tiny decoder with a fixed-weight PatchGAN, with an adaptive-weight one (VQGAN's) and without, on
#    256^2 patches: PSNR/SSIM on 500 held-out CIFAR-10 test images upsampled to 256^2 (and on $SNAPGEN_PHOTOS when
#    .gpu/photos is carried), D accuracy curves. About 5 min.
# Usage: bash scripts/device/adversarial.sh [step_distill] [decoder]   (default both: more than one call's 10 min, so
# give one part per call; each packs what it finished, and rerunning skips finished arms). ADV_CLEAN=1: the
# step-distillation arm adv_clean too (D on clean samples, ~2 min).
# Carry: .gpu/wheels .gpu/assets/taesd .gpu/lite/cifar10_40k_2k.npz .gpu/cache/text .gpu/git_sha [.gpu/photos] (66.1 of
# the 67.1 MB a call may carry, checkout included; .gpu/cache/data is rebuilt from the npz on the box).
# DECODER_ARMS="gan_adaptive_sn no_gan": which decoder arms (default gan gan_adaptive no_gan, about 5 min; each GAN
# arm ~2 min). SCALE=smoke: the CPU-sized proof.
source scripts/device/setup.sh
export SNAPGEN_CIFAR10_NPZ=$PWD/.gpu/lite/cifar10_40k_2k.npz
mkdir -p /tmp/snapcache && cp -rn .gpu/cache/. /tmp/snapcache/ 2>/dev/null; export SNAPGEN_CACHE=/tmp/snapcache
[ -d .gpu/photos ] && export SNAPGEN_PHOTOS=$PWD/.gpu/photos
ROOT=runs/adversarial
parts=${*:-step_distill decoder}
set -x
for part in $parts; do
  case $part in
    step_distill)
      arms="adv no_adv"; [ "${ADV_CLEAN:-0}" = 1 ] && arms="$arms adv_clean"
      python3 -m ablations.sweep adversarial_step_distill --scale "${SCALE:-small}" --no-tracking --no-progress \
        --out-root "$ROOT" --only $arms 2>&1 | grep -v "it/s\]\|Loading weights" | tail -20
      if [ "${FD_CIFAR_FULL:-0}" = 1 ]; then
        for run in "$ROOT"/adversarial_step_distill/*/; do
          [ -f "$run/eval.json" ] || continue
          for n in 4 8; do
            [ -f "$run/fd_cifar_$n/fd_cifar.json" ] || python3 -m evals.fid "$run" --features cifar10 --steps "$n" \
              --out "$run/fd_cifar_$n" || true
          done
        done
      fi ;;
    decoder)
      python3 -m ablations.sweep adversarial_decoder --scale "${SCALE:-small}" --no-tracking --no-progress \
        --out-root "$ROOT" --only ${DECODER_ARMS:-gan gan_adaptive no_gan} 2>&1 | grep -v "it/s\]\|Loading weights" | tail -20 ;;
    *) echo "unknown part $part: step_distill | decoder" >&2; exit 2 ;;
  esac
done
set +x
# Results, each file under the 16 MiB a returned file may have (one archive of everything, 18 MB, did not come back):
# the records (trial_result.json for `python -m ablations.sweep ingest --out-root runs/adversarial`, config.yaml,
# metrics.jsonl with the D accuracy curves, eval*.json, fd_cifar_*), the sample grids, and each decoder's weights.
find "$ROOT" \( -name trial_result.json -o -name config.yaml -o -name metrics.jsonl -o -name "eval*.json" \
  -o -path "*fd_cifar_*" \) -not -name "*.png" -print0 | tar czf "$OUT/adversarial_records.tar.gz" --null -T -
find "$ROOT" -path "*/samples/*.png" -print0 | tar czf "$OUT/adversarial_samples.tar.gz" --null -T -
for dec in "$ROOT"/adversarial_decoder/*/checkpoint/decoder; do
  [ -d "$dec" ] && tar czf "$OUT/decoder_$(basename "$(dirname "$(dirname "$dec")")").tar.gz" "$dec"
done
ls -la "$OUT"
