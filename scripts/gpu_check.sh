#!/usr/bin/env bash
# The GPU check: training and denoising on a CUDA GPU, in one run of under 8 minutes on one GPU.
#
#   scripts/gpu_check.sh --prepare   here, with the repository's .venv: writes gpu_cache/ (8 real
#                                    abdomen slices and their simulated quarter dose, ~8 MB;
#                                    ignored by git), so the GPU machine reads no DICOM
#   scripts/gpu_check.sh [LOG_DIR]   on the GPU machine, with a python3 that has CUDA PyTorch;
#                                    prints every figure and keeps them in LOG_DIR/gpu_check.log
#
# With the device tool: run(command="scripts/gpu_check.sh $OUT", carry=["gpu_cache"]).
# It runs, each under its own time limit: the training benchmark (loader patches/s with 0, 4 and 8
# workers against the patches/s a step consumes; steps/s, TFLOP/s against the bf16 matmul peak and
# peak GPU memory for both presets), the same with torch.compile in reduce-overhead mode (CUDA
# graphs), then scripts/gpu_check.py (an end-to-end `ctdenoise train` on the GPU, and denoising in
# fp32/bf16/fp16 against the CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "--prepare" ]; then
  "$root/scripts/setup.sh"
  rm -rf gpu_cache
  .venv/bin/python - <<'EOF'
import tempfile
from pathlib import Path

from ctdenoise.data import discover_full_dose, prepare_cache, split_by_patient
from ctdenoise.io import read_volume, write_volume

volume = read_volume("data/totalsegmentator/example_ct_dicom")
with tempfile.TemporaryDirectory() as tmp:
    part = type(volume)(volume.array[6:14], volume.spacing, volume.origin, volume.direction)
    write_volume(part, Path(tmp) / "abdomen.nii.gz")
    records = split_by_patient(discover_full_dose(Path(tmp)), val_fraction=0.0)
    prepare_cache(records, "gpu_cache", simulate_dose=0.25)
print("wrote gpu_cache/")
EOF
  exit 0
fi
log_dir="${1:-$root/gpu_check_out}"
mkdir -p "$log_dir"
log="$log_dir/gpu_check.log"
[ -d gpu_cache ] || { echo "gpu_check: gpu_cache/ is missing: run scripts/gpu_check.sh --prepare first (and carry gpu_cache)" >&2; exit 2; }
python="${PYTHON:-python3}"
export PYTHONPATH="$root/training/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$log"
step() {  # step SECONDS COMMAND...: run with a time limit; a failure is logged and the check goes on
  local limit="$1"; shift
  echo "== $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log" || echo "== FAILED or timed out (${limit} s): $*" | tee -a "$log"
}
step 150 "$python" scripts/bench_training.py --cache gpu_cache --device cuda --batch 16 --workers 0 4 8 \
  --loader-batches 200 --steps 50 --seed-steps 10
step 150 "$python" scripts/bench_training.py --cache gpu_cache --device cuda --batch 16 --workers 8 \
  --loader-batches 100 --steps 50 --seed-steps 0 --compile reduce-overhead
step 150 "$python" scripts/gpu_check.py --cache gpu_cache --steps 200
echo "== done; log in $log" | tee -a "$log"
