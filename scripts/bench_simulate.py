"""Time the projection-domain low-dose simulation on a real 512 x 512 abdominal CT slice.

Usage: python scripts/bench_simulate.py [--runs 5] [--dose 0.25] [--stack 8] [--device cpu cuda]

Prints, per device, the one-off cost of building the projector for the geometry, then the median
seconds per slice for one slice at a time and for a stack of slices, and slices per minute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch

from ctdenoise.io import read_volume
from ctdenoise.physics.lowdose import simulate_low_dose

SERIES = Path(__file__).resolve().parents[1] / "data" / "totalsegmentator" / "example_ct_dicom"


def load_slice(folder: Path) -> tuple[np.ndarray, float]:
    """The middle slice of a DICOM series in HU and its column pixel spacing in mm."""
    volume = read_volume(folder)
    return volume.array[volume.shape[0] // 2], float(volume.spacing[0])


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``run``."""
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(device: str, hu: np.ndarray, pixel_mm: float, dose: float, runs: int, stack: int) -> None:
    """Print the timings for one device."""
    start = time.perf_counter()
    simulate_low_dose(hu, pixel_mm, dose, seed=0, device=device)
    first = time.perf_counter() - start
    single = median_seconds(lambda: simulate_low_dose(hu, pixel_mm, dose, seed=0, device=device), runs)
    volume = np.repeat(hu[None], stack, axis=0)
    batched = (
        median_seconds(lambda: simulate_low_dose(volume, pixel_mm, dose, seed=0, device=device), max(1, runs // 2))
        / stack
    )
    print(
        f"{device}: first call {first:.2f} s (builds the projector); one slice {single:.3f} s/slice; "
        f"stack of {stack} {batched:.3f} s/slice = {60.0 / batched:.0f} slices/min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed repetitions (median is printed)")
    parser.add_argument("--dose", type=float, default=0.25, help="simulated dose fraction")
    parser.add_argument("--stack", type=int, default=8, help="slices in the batched measurement")
    parser.add_argument("--device", nargs="*", default=None, help="devices (default: cpu, and cuda if available)")
    args = parser.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    hu, pixel_mm = load_slice(SERIES)
    print(
        f"slice {hu.shape[0]}x{hu.shape[1]}, {pixel_mm:.3f} mm pixels, dose {args.dose}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    for device in devices:
        bench(device, hu, pixel_mm, args.dose, args.runs, args.stack)


if __name__ == "__main__":
    main()
