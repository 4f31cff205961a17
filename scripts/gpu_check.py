#!/usr/bin/env python3
"""The GPU paths, run once on a CUDA machine: figures for the README (scripts/gpu_check.sh runs it).

On the prepared cache (``scripts/gpu_check.sh --prepare``: real abdomen slices with simulated
quarter dose, read here so the GPU machine needs neither SimpleITK nor pydicom) it:

1. trains the fast preset end to end through ``ctdenoise train`` on the GPU (bf16 autocast,
   channels-last, DataLoader workers with pinned memory) and checks that the exported model is
   valid and the losses are finite;
2. denoises the cache's low-dose slices with the bundled model on the GPU in fp32, bf16 and fp16
   and on the CPU, and prints slices/s, achieved TFLOP/s against the bf16 matmul peak measured in
   the same run, peak GPU memory, and each GPU result's largest difference from the CPU's in HU.

Usage: python3 scripts/gpu_check.py --cache gpu_cache [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from benchlib import flops_of, matmul_peak_tflops, peak_gpu_mb, synchronize

from ctdenoise import DenoiseOptions, Denoiser, bundled_model_path, load_checkpoint
from ctdenoise.data import load_cache


def train_end_to_end(cache: Path, steps: int, out: Path) -> None:
    """``ctdenoise train`` on the GPU for ``steps`` steps; prints its speed and checks its model."""
    config = {
        "data": {"cache": str(cache.resolve()), "patch_size": 128, "batch_size": 16, "num_workers": 4},
        "model": {"generator": "fast", "generator_init": "identity"},
        "train": {"max_steps": steps, "device": "cuda", "val_every": 0, "checkpoint_every": steps, "log_every": 10},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "ctdenoise.cli", "train", "--config", str(out / "config.yaml")]
    proc = subprocess.run([*cmd, "--out", str(out / "run"), "--quiet"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ctdenoise train failed on the GPU:\n{proc.stderr[-3000:]}")
    model = load_checkpoint(out / "run" / "model.safetensors")
    assert model.metadata["training"]["steps"] == steps and model.metadata["training"]["device"].startswith("cuda")
    print(
        f"train       : {steps} steps of the fast preset (batch 16, 128x128, bf16, 4 workers) in {seconds:.1f} s "
        f"wall, start-up and export included; model valid, change limit {model.change_limit_hu:.0f} HU"
    )


def denoise_figures(cache: Path, peak: float) -> None:
    """Bundled model on the cache's low-dose slices: GPU precisions against the CPU."""
    index = load_cache(cache)
    low = np.concatenate([np.asarray(index.array(e), dtype=np.float32) for e in index.volumes(dose="low")])
    model = bundled_model_path()
    reference = Denoiser(model, DenoiseOptions(device="cpu", runtime="torch")).array(low)
    generator = load_checkpoint(model).generator.to("cuda")
    x = torch.zeros(1, 1, *low.shape[1:], device="cuda")
    with torch.inference_mode():
        flops_per_slice = flops_of(lambda: generator(x))
    device = torch.device("cuda")
    for precision in ("fp32", "bf16", "fp16"):
        denoiser = Denoiser(model, DenoiseOptions(device="cuda", runtime="torch", precision=precision, batch_size=16))
        denoiser.array(low[:16])  # warm-up: cuDNN autotuning, allocator
        torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        repeats, started = 5, time.perf_counter()
        for _ in range(repeats):
            out = denoiser.array(low)
        synchronize(device)
        rate = repeats * len(low) / (time.perf_counter() - started)
        achieved = rate * flops_per_slice / 1e12
        difference = np.abs(out - reference)
        print(
            f"denoise     : {precision}: {rate:7.1f} slices/s ({low.shape[1]}x{low.shape[2]}, batch 16, "
            f"host copies and HU steps included), {achieved:.1f} TFLOP/s = {100 * achieved / peak:.1f}% of the bf16 "
            f"matmul peak; peak GPU memory {peak_gpu_mb(device):.0f} MB; against the CPU: 99.9th percentile "
            f"{np.percentile(difference, 99.9):.2f} HU, largest {difference.max():.2f} HU"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="prepared cache (scripts/gpu_check.sh --prepare)")
    parser.add_argument("--steps", type=int, default=200, help="training steps of the end-to-end run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible to PyTorch: run it on a machine with an NVIDIA GPU")
    props = torch.cuda.get_device_properties(0)
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "gpu": props.name,
                "memory_gb": props.total_memory / 1e9,
            }
        )
    )
    peak = matmul_peak_tflops(torch.device("cuda"), torch.bfloat16)
    print(f"matmul peak : {peak:.1f} TFLOP/s (bf16, 8192x8192, measured here)")
    with tempfile.TemporaryDirectory() as tmp:
        train_end_to_end(Path(args.cache), args.steps, Path(tmp))
    denoise_figures(Path(args.cache), peak)


if __name__ == "__main__":
    main()
