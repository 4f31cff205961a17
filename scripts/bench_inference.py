#!/usr/bin/env python3
"""Measure denoising speed (slices per second) on 512x512 slices, on the CPU and on CUDA if present.

Two models are timed through :func:`ctdenoise.inference.denoise_array`, so the numbers include
normalisation, batching and the transfers: (a) a checkpoint (default: the bundled model, else a
randomly initialised "fast" generator) and (b) a randomly initialised "seed" generator (the seed
project's architecture, ~1 TFLOP per slice: only a couple of slices on the CPU). On CUDA it also
measures a bf16 matmul peak and prints each model's achieved TFLOP/s against it.

Usage: .venv/bin/python scripts/bench_inference.py [--slices N] [--device auto|cpu|cuda] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ctdenoise.checkpoints import ModelCheckpoint, build_metadata
from ctdenoise.errors import CTDenoiseError
from ctdenoise.inference import ProgressInfo, bundled_model_path, denoise_array, select_device
from ctdenoise.networks import GENERATOR_PRESETS, build_generator, count_flops
from ctdenoise.normalization import HUNormalization

SIZE = 512
DEFAULT_SLICES = {"cpu": {"model": 6, "seed": 1}, "cuda": {"model": 512, "seed": 64}}


def phantom(slices: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """int16 HU slices: air, a soft-tissue ellipse with 20 HU noise, and a -3024 padding border."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
    rng = np.random.default_rng(seed)
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, (slices, size, size))
    hu[:, :8] = -3024
    return hu.astype(np.int16)


def random_checkpoint(preset: str) -> ModelCheckpoint:
    """A randomly initialised generator of ``preset`` wrapped as a checkpoint."""
    torch.manual_seed(0)
    args = GENERATOR_PRESETS[preset]
    metadata = build_metadata(preset=preset, generator_args=args, normalization=HUNormalization(), patch_size=128)
    return ModelCheckpoint(build_generator(preset).eval(), HUNormalization(), metadata, Path(f"<random {preset}>"))


def model_under_test(path: Optional[str]) -> tuple[ModelCheckpoint, str]:
    """The checkpoint to time and a description of where it came from."""
    from ctdenoise.checkpoints import load_checkpoint

    if path:
        return load_checkpoint(path), path
    try:
        bundled = bundled_model_path()
    except CTDenoiseError:
        return random_checkpoint("fast"), "random-init 'fast' preset (no bundled model found)"
    return load_checkpoint(bundled), f"bundled model {bundled.name}"


def time_model(checkpoint: ModelCheckpoint, device: torch.device, slices: int) -> tuple[float, int]:
    """Slices per second over ``slices`` slices after a warm-up, and the batch size that was used."""
    warm = phantom(min(slices, 64) if device.type == "cuda" else 1, seed=1)
    denoise_array(warm, checkpoint, device=device)
    batches: list[int] = []

    def record(info: ProgressInfo) -> None:
        batches.append(info.batch_size)

    hu = phantom(slices)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    denoise_array(hu, checkpoint, device=device, progress=record)
    return slices / (time.perf_counter() - start), max(batches)


def matmul_peak_tflops(device: torch.device, n: int = 8192, repeats: int = 50) -> float:
    """Achieved bf16 TFLOP/s of ``repeats`` n x n x n matmuls (a practical peak)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    """Parse options, run the benchmarks and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, help="slices per timed run for the checkpoint (default: 6 on CPU, 512 on CUDA)")
    parser.add_argument("--seed-slices", type=int, help="slices for the seed preset (default: 1 on CPU, 64 on CUDA)")
    parser.add_argument("--device", default="all", help="all (CPU, and CUDA if present), auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--checkpoint", help="model to time (default: bundled model, else random-init fast preset)")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([select_device("cuda")] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [select_device(args.device)]
    checkpoint, origin = model_under_test(args.checkpoint)
    seed = random_checkpoint("seed")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; model (a): {origin}")
    flops = {
        name: count_flops(ckpt.generator, SIZE, SIZE) for name, ckpt in (("model", checkpoint), ("seed", seed))
    }
    for device in devices:
        defaults = DEFAULT_SLICES.get(device.type, DEFAULT_SLICES["cuda"])
        peak = None
        label = str(device)
        if device.type == "cuda":
            peak = matmul_peak_tflops(device)
            label = f"{device} ({torch.cuda.get_device_name(device)})"
            print(f"{label}: bf16 matmul 8192^3 peak {peak:.0f} TFLOP/s")
        runs = [
            ("model", checkpoint, args.slices or defaults["model"]),
            ("seed", seed, args.seed_slices or defaults["seed"]),
        ]
        for name, ckpt, slices in runs:
            speed, batch = time_model(ckpt, device, slices)
            line = (
                f"{label}: {name:5s} ({ckpt.preset}, {flops[name] / 1e9:.0f} GFLOP/slice) "
                f"{slices} x {SIZE}x{SIZE} slices, batch {batch}: {speed:.2f} slices/s"
            )
            if peak is not None:
                achieved = flops[name] * speed / 1e12
                line += f", {achieved:.1f} TFLOP/s = {100 * achieved / peak:.0f}% of the matmul peak"
            print(line, flush=True)


if __name__ == "__main__":
    main()
