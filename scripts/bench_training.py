#!/usr/bin/env python3
"""Benchmark: does the data loader keep training fed, and how much of the device does training use?

Prints, from one run on one machine:

* the matmul peak of the device (bf16 on CUDA, fp32 on the CPU), measured here, as the yardstick;
* data-loader patches/s (both doses counted) through the trainer's own DataLoader (worker
  processes over the memory-mapped cache, pinned memory on CUDA, prefetch), for each worker count;
* per generator preset: training steps/s, the patches/s a step consumes, FLOPs per step (PyTorch's
  FlopCounterMode, forward and backward), achieved TFLOP/s and its share of the matmul peak,
  peak GPU memory, and how many times over the loader supplies what training consumes;
* the peak host memory of the process.

Figures are printed, not asserted: compare runs on the same machine.

Usage: .venv/bin/python scripts/bench_training.py [--cache DIR] [--device auto] [--steps N]
       [--batch 4] [--patch 128] [--workers 0 2] [--compile off|default|reduce-overhead|max-autotune]

Without --cache, a cache is prepared in a temporary folder from the bundled real abdomen series
(data/totalsegmentator/example_ct_dicom) with simulated quarter dose.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from benchlib import flops_of, matmul_peak_tflops, peak_gpu_mb, peak_host_mb, synchronize

from ctdenoise.data import discover_full_dose, prepare_cache, split_by_patient
from ctdenoise.training import Trainer, config_from_dict, step_loader, to_device

REPO = Path(__file__).resolve().parents[1]


def _cache(args: argparse.Namespace, tmp: Path) -> Path:
    if args.cache:
        return Path(args.cache)
    source = tmp / "full"
    source.mkdir()
    (source / "abdomen").symlink_to(REPO / "data" / "totalsegmentator" / "example_ct_dicom")
    records = split_by_patient(discover_full_dose(source), val_fraction=0.0)
    t0 = time.perf_counter()
    prepare_cache(records, tmp / "cache", simulate_dose=0.25)
    print(f"prepared cache (20 slices, simulated quarter dose) in {time.perf_counter() - t0:.1f} s")
    return tmp / "cache"


def _config(args: argparse.Namespace, cache: Path, preset: str, **train: Any) -> Any:
    return config_from_dict(
        {
            "data": {"cache": str(cache), "patch_size": args.patch, "batch_size": args.batch},
            "model": {"generator": preset},
            "train": {"device": args.device, "val_every": 0, "compile": args.compile, **train},
        }
    )


def bench_loader(args: argparse.Namespace, cache: Path, workers: int, batches: int, out: Path) -> float:
    """Patches per second (both doses) delivered by the trainer's DataLoader with ``workers`` processes."""
    config = _config(args, cache, "fast", max_steps=batches, compile="off")
    config.data.num_workers = workers
    trainer = Trainer(config, out / f"loader{workers}")
    loader = iter(step_loader(trainer))
    next(loader)  # worker start-up is not throughput
    t0 = time.perf_counter()
    count = sum(full.shape[0] + low.shape[0] for full, low in loader)
    return count / (time.perf_counter() - t0)


def bench_steps(args: argparse.Namespace, cache: Path, preset: str, steps: int, out: Path) -> dict[str, float]:
    """Steps/s after warm-up, FLOPs per step and peak GPU memory for one generator preset."""
    counted = Trainer(_config(args, cache, preset, compile="off"), out / f"{preset}-flops")
    full, low = (torch.from_numpy(b) for b in counted.sampler.batch(0))
    x_f, x_q = to_device(full, counted), to_device(low, counted)
    flops = flops_of(lambda: counted.train_step(x_f, x_q))
    trainer = Trainer(_config(args, cache, preset), out / preset)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3 if args.compile != "off" else 1):  # compilation and autotuning happen here
        trainer.train_step(x_f, x_q)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(x_f, x_q)
    synchronize(device)
    rate = steps / (time.perf_counter() - t0)
    return {"steps_per_s": rate, "flops": flops, "gpu_mb": peak_gpu_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="prepared cache (default: build one from the bundled CT)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps for the fast preset")
    parser.add_argument("--seed-steps", type=int, default=1, help="timed steps for the seed preset (slow on CPU)")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="global batch (patches per dose per step)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    parser.add_argument("--loader-batches", type=int, default=100, help="batches timed per worker count")
    parser.add_argument("--compile", default="off", help="train.compile for the timed steps")
    args = parser.parse_args()
    from ctdenoise.devices import resolve_device

    device = resolve_device(args.device, purpose="training")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} ({name})")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_tflops(device, dtype)
    print(f"matmul peak : {peak:8.2f} TFLOP/s ({str(dtype).removeprefix('torch.')}, measured here)")
    with tempfile.TemporaryDirectory() as tmp:
        cache = _cache(args, Path(tmp))
        loader = {}
        for workers in args.workers:
            loader[workers] = bench_loader(args, cache, workers, args.loader_batches, Path(tmp))
            where = f"{workers} workers" if workers else "0 workers: in the training process"
            print(f"data loader : {loader[workers]:8.0f} patches/s ({args.patch}x{args.patch}, {where})")
        best = max(loader.values())
        for preset, steps in itertools.chain([("fast", args.steps)], [("seed", args.seed_steps)]):
            if steps <= 0:
                continue
            figures = bench_steps(args, cache, preset, steps, Path(tmp))
            consumed = figures["steps_per_s"] * 2 * args.batch
            achieved = figures["flops"] * figures["steps_per_s"] / 1e12
            print(
                f"training    : preset {preset}, batch {args.batch}, compile {args.compile}: "
                f"{figures['steps_per_s']:.3f} steps/s = {consumed:.1f} patches/s consumed; "
                f"{figures['flops'] / 1e9:.1f} GFLOP/step, {achieved:.3f} TFLOP/s = {100 * achieved / peak:.1f}% "
                f"of the matmul peak; peak GPU memory {figures['gpu_mb']:.0f} MB; "
                f"the loader supplies {best / consumed:.1f}x what a step consumes"
            )
    print(f"peak host memory: {peak_host_mb():.0f} MB")


if __name__ == "__main__":
    main()
