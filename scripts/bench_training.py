#!/usr/bin/env python3
"""Benchmark: data-loader patches/s and CycleGAN training steps/s on this machine.

Usage: .venv/bin/python scripts/bench_training.py [--cache DIR] [--steps N] [--device auto]

Without --cache, a cache is prepared in a temporary folder from the bundled real abdomen series
(data/totalsegmentator/example_ct_dicom) with simulated quarter dose. Figures are printed, not
asserted: compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ctdenoise.data import (
    StepDataset,
    UnpairedPatchSampler,
    discover_full_dose,
    load_cache,
    prepare_cache,
    split_by_patient,
)
from ctdenoise.training import Trainer, config_from_dict

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


def bench_loader(cache_dir: Path, patch: int, batch: int, batches: int, workers: int) -> float:
    """Patches per second (both doses counted) through a DataLoader with ``workers`` processes.

    With 0 workers every batch is drawn in this process: the throughput of the sampler itself.
    """
    sampler = UnpairedPatchSampler(load_cache(cache_dir), split="train", patch_size=patch, batch_size=batch, seed=0)
    loader = torch.utils.data.DataLoader(StepDataset(sampler, 0, batches), batch_size=None, num_workers=workers)
    t0 = time.perf_counter()
    count = sum(full.shape[0] + low.shape[0] for full, low in loader)
    return count / (time.perf_counter() - t0)


def bench_steps(cache_dir: Path, preset: str, steps: int, patch: int, batch: int, device: str) -> float:
    """Training steps per second (after one warm-up step) for a generator preset."""
    config = config_from_dict(
        {
            "data": {"cache": str(cache_dir), "patch_size": patch, "batch_size": batch},
            "model": {"generator": preset},
            "train": {"device": device, "val_every": 0},
        }
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out))
        full, low = trainer.sampler.batch(0)
        x_f = trainer.normalization.normalize(torch.from_numpy(full)).to(trainer.device)
        x_q = trainer.normalization.normalize(torch.from_numpy(low)).to(trainer.device)
        trainer.train_step(x_f, x_q)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(x_f, x_q)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="prepared cache (default: build one from the bundled CT)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps for the fast preset")
    parser.add_argument(
        "--seed-steps", type=int, default=1, help="timed training steps for the seed preset (slow on CPU)"
    )
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA available: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = _cache(args, Path(tmp))
        for workers in (0, 2):
            rate = bench_loader(cache, args.patch, args.batch, batches=200, workers=workers)
            where = f"{workers} workers" if workers else "0 workers = the sampler alone"
            print(f"data loader: {rate:8.0f} patches/s ({args.patch}x{args.patch}, batch {args.batch}, {where})")
        for preset, steps in (("fast", args.steps), ("seed", args.seed_steps)):
            if steps <= 0:
                continue
            rate = bench_steps(cache, preset, steps, args.patch, args.batch, args.device)
            print(
                f"training  : {rate:8.3f} steps/s  = {rate * args.batch:7.2f} patches/s per dose (preset {preset}, batch {args.batch})"
            )


if __name__ == "__main__":
    main()
