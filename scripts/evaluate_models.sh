#!/usr/bin/env bash
# Evaluate models against BM3D, non-local means and Gaussian smoothing on the held-out real CT in
# data/ (patients no bundled model trained on), with quarter dose simulated by the calibrated
# simulation (seed 0): the abdomen series (Br38f, 2 mm), the abdomen/pelvis crop (3 mm), the chest
# CT angiography crop (1.5 mm) and 14 single chest slices of other TCGA patients (kernels B20f, B20s,
# B30s, B31f, B31s, B50s, B60f, AB50, STANDARD, SOFT, LUNG, BONE; 1-10 mm).
#   ./scripts/evaluate_models.sh OUT_DIR [MODEL ...]     (default: both bundled models, cyclegan and supervised)
# Environment: MAX_SLICES (per volume, default 8), BASELINES (default "bm3d nlm gaussian"; empty: none),
# TTA (test-time augmentations each model runs with, default "auto 8": as `ctdenoise denoise` runs, and 8 views).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: evaluate_models.sh OUT_DIR [MODEL ...]}"
shift
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(bundled supervised)
tcga=(ID_0004_AGE_0056_CONTRAST_1 ID_0005_AGE_0048_CONTRAST_1 ID_0009_AGE_0048_CONTRAST_1
  ID_0014_AGE_0071_CONTRAST_1 ID_0022_AGE_0074_CONTRAST_1 ID_0023_AGE_0061_CONTRAST_1
  ID_0025_AGE_0074_CONTRAST_1 ID_0029_AGE_0078_CONTRAST_1 ID_0040_AGE_0069_CONTRAST_1
  ID_0042_AGE_0071_CONTRAST_1 ID_0063_AGE_0073_CONTRAST_0 ID_0067_AGE_0060_CONTRAST_0
  ID_0081_AGE_0058_CONTRAST_0 ID_0088_AGE_0067_CONTRAST_0)
full=("$root/data/totalsegmentator/example_ct_dicom" "$root/data/totalsegmentator/example_ct_sm.nii.gz"
  "$root/data/totalsegmentator/aorta_ct_cropped.nii.gz")
for s in "${tcga[@]}"; do full+=("$root/data/tcga_lung_ctmi/${s}_CT.dcm"); done
# shellcheck disable=SC2086
"$root/.venv/bin/ctdenoise" evaluate --full "${full[@]}" --model "${models[@]}" --dose 0.25 --seed 0 \
  --max-slices "${MAX_SLICES:-8}" --tta ${TTA:-auto 8} --baselines ${BASELINES-bm3d nlm gaussian} --out "$out"
