#!/usr/bin/env bash
# Reproduce the bundled model: prepare the real CT in data/ (simulated quarter dose), train the fast
# preset with training/configs/bundled_fast.yaml, and export it. The abdomen series
# (data/totalsegmentator/example_ct_dicom) is held out for validation and the demo.
#   ./scripts/train_bundled_model.sh            # about 1-2 hours on 2 CPU cores
#   ./scripts/train_bundled_model.sh --resume   # continue an interrupted run
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
ct="$root/.venv/bin/ctdenoise"
run="$root/runs/bundled"
if [ ! -f "$run/cache/index.json" ]; then
  src="$run/sources"
  rm -rf "$src" && mkdir -p "$src"
  ln -s "$root/data/totalsegmentator/example_ct_dicom" "$src/abdomen"
  ln -s "$root/data/dcm_qa_ct_ge_head" "$src/ge_head"
  for f in "$root"/data/tcga_lung_ctmi/*.dcm; do ln -s "$f" "$src/tcga_$(basename "$f")"; done
  for f in "$root"/data/covid19_ny_sbu/*/axial/*.dcm; do
    p="$(basename "$(dirname "$(dirname "$f")")")"
    ln -s "$f" "$src/covid_${p}_$(basename "$f")"
  done
  "$ct" prepare "$src" --layout full --simulate-dose 0.25 --val-patients abdomen --out "$run/cache"
fi
"$ct" train --config "$root/training/configs/bundled_fast.yaml" --out "$run/train" "$@"
mkdir -p "$root/training/src/ctdenoise/models"
"$ct" export "$run/train" --out "$root/training/src/ctdenoise/models/ctdenoise_fast_v1.safetensors"
