"""Figures shared by the benchmark scripts: matmul peak, FLOPs of a call, peak memory."""

from __future__ import annotations

import resource
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, seconds: float = 2.0) -> float:
    """TFLOP/s of repeated ``size`` x ``size`` matmuls in ``dtype``: the practical peak to compare against."""
    if device.type == "cpu":
        size = min(size, 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a @ b
        count += 10
        synchronize(device)
    return 2.0 * size**3 * count / (time.perf_counter() - started) / 1e12


def flops_of(call: Callable[[], object]) -> int:
    """Floating-point operations of one ``call()`` (forward and backward), counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return counter.get_total_flops()


def peak_host_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb(device: torch.device) -> float:
    """Peak memory allocated by PyTorch on a CUDA device, in MB (0 elsewhere)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
