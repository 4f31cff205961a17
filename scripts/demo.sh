#!/usr/bin/env bash
# The demo: set up on a fresh machine, then denoise the bundled real CT with the bundled model.
#   1. simulate quarter dose from the real full-dose abdomen series (so there is a reference),
#   2. denoise it (NIfTI and a new DICOM series), keeping the removed noise for inspection,
#   3. compare full dose, quarter dose and denoised: metrics table + side-by-side PNG.
# Outputs go to demo_out/ (replaced on every run). Extra arguments go to 'ctdenoise denoise'
# (e.g. --device cuda, --strength 0.7, --checkpoint my_model.safetensors).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
ct="$root/.venv/bin/ctdenoise"
ref="$root/data/totalsegmentator/example_ct_dicom"
out="${DEMO_OUT:-$root/demo_out}"
if [ -e "$out" ] && [ ! -f "$out/.ctdenoise-demo" ]; then
  echo "error: $out exists and was not made by this demo: remove it or set DEMO_OUT to a new folder" >&2
  exit 2
fi
rm -rf "$out" && mkdir -p "$out" && touch "$out/.ctdenoise-demo"
start=$(date +%s)
run() { echo "+ ctdenoise $*" | sed "s#$root/##g"; "$ct" "$@"; }

run simulate "$ref" "$out/quarter_dose.nii.gz" --dose 0.25 --seed 0
run denoise "$out/quarter_dose.nii.gz" "$out/denoised.nii.gz" --noise-out "$out/removed_noise.nii.gz" --progress none "$@"
run simulate "$ref" "$out/quarter_dose_dicom" --dose 0.25 --seed 0
run denoise "$out/quarter_dose_dicom" "$out/denoised_dicom" --progress none "$@"
run compare "$ref" "$out/quarter_dose.nii.gz" "$out/denoised.nii.gz" \
  --names "quarter dose (simulated)" "denoised" --roi 0:20,240:270,130:170 --slice 10 \
  --png "$out/comparison.png" --json "$out/metrics.json" --markdown "$out/metrics.md"
echo "demo finished in $(( $(date +%s) - start )) s; outputs in ${out#$root/}/:"
ls -1 "$out"
