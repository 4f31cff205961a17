#!/usr/bin/env bash
# Reproduce the bundled supervised model (ctdenoise_supervised_v5). Version 3: the CycleGAN student
# ctdenoise_fast_v2 (kept in training/models/) fine-tuned with paired L2 to full dose on simulated
# quarter dose, on whole slices of every patient in data/ that the evaluation does not hold out, at
# their own pixel size and resampled to 1.5 and 3.0 mm (scripts/supervised_sources.py) (v1); v1
# fine-tuned again without the full-dose -> full-dose pairs, in mirrored/rotated views, so that it
# removes more noise; the two averaged weight by weight (ctdenoise average); the average's instance
# norms frozen at their mean statistics on those slices (ctdenoise fix-norms). The abdomen series is
# held out for validation, as for the CycleGAN. Version 4: v3 fine-tuned the same way (no identity
# pairs, mirrored/rotated views) on 128 px crops (its norms are fixed: a crop is seen as in the
# whole slice) of those slices plus 54 slices of 36 more TCGA patients from the whole 100-slice set
# (not in the repository: pass its folder, see data/README.md); 12 of those patients are the
# validation split that chose this version. Version 5: v4's student of its own 8-view average
# (mirrored/rotated views), on 128 px crops of the same slices, from v4's weights.
#   ./scripts/train_supervised_model.sh [TCGA_100_DIR]   # about 2.5 hours on 2 CPU cores
#   TCGA_100_DIR defaults to ../shared/data/tcga_lung_ctmi beside the repository
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
ct="$root/.venv/bin/ctdenoise"
run="$root/runs/supervised"
models="$root/training/src/ctdenoise/models"
tcga100="${1:-$root/../shared/data/tcga_lung_ctmi}"
if [ ! -d "$tcga100" ]; then
  echo "error: $tcga100 is not a folder: pass the 100-slice TCGA set (source in data/README.md) as the first argument" >&2
  exit 2
fi
if [ ! -f "$run/cache/index.json" ]; then
  rm -rf "$run/sources"
  "$root/.venv/bin/python" "$root/scripts/supervised_sources.py" "$root/data" "$run/sources"
  "$ct" prepare "$run/sources" --layout full --simulate-dose 0.25 --val-patients abdomen --out "$run/cache"
fi
"$ct" distill "$root/training/models/ctdenoise_fast_v2.safetensors" --cache "$run/cache" --target full --loss l2 --init teacher \
  --batch-size 2 --lr 2e-4 --max-slices 200 --steps 2400 --out "$run/ctdenoise_supervised_v1.safetensors"
"$ct" distill "$run/ctdenoise_supervised_v1.safetensors" --cache "$run/cache" --target full --loss l2 --init teacher \
  --augment --no-identity-pairs --batch-size 2 --lr 1e-4 --max-slices 200 --steps 1600 \
  --out "$run/ctdenoise_supervised_v1_no_identity.safetensors"
# Equal weights (WiSE-FT): the fine-tuned model's noise removal, v1's restraint on low-noise slices.
"$ct" average "$run/ctdenoise_supervised_v1.safetensors" "$run/ctdenoise_supervised_v1_no_identity.safetensors" \
  --cache "$run/cache" --out "$run/averaged.safetensors"
# Frozen norms: the same result on a crop as on the whole slice (instance norm depends on the field of view).
"$ct" fix-norms "$run/averaged.safetensors" --cache "$run/cache" --out "$run/ctdenoise_supervised_v3.safetensors"
# Version 4: more patients, chosen on validation patients of its own.
if [ ! -f "$run/cache_v4/index.json" ]; then
  rm -rf "$run/sources_v4"
  "$root/.venv/bin/python" "$root/scripts/supervised_sources.py" "$root/data" "$run/sources_v4" --extra-tcga "$tcga100"
  # shellcheck disable=SC2046
  "$ct" prepare "$run/sources_v4" --layout full --simulate-dose 0.25 --val-patients $(cat "$run/sources_v4/validation.txt") \
    --out "$run/cache_v4"
fi
"$ct" distill "$run/ctdenoise_supervised_v3.safetensors" --cache "$run/cache_v4" --target full --loss l2 --init teacher \
  --augment --no-identity-pairs --crop 128 --batch-size 8 --lr 1e-4 --max-slices 400 --steps 2000 \
  --out "$run/ctdenoise_supervised_v4.safetensors"
# Version 5: its own 8-view average is better and the same for mirrored or turned anatomy; a student
# of that average keeps most of the gain at the cost of one view.
"$ct" distill "$run/ctdenoise_supervised_v4.safetensors" --cache "$run/cache_v4" --teacher-tta 8 --init teacher \
  --crop 128 --batch-size 8 --lr 1e-4 --max-slices 200 --steps 1500 --out "$models/ctdenoise_supervised_v5.safetensors"
