"""Gaussian blurs shared by the networks' high-pass options (reflect padding).

Written here rather than taken from MONAI (whose ``gaussian_1d`` and ``separable_filtering`` they
reproduce exactly; a test compares them) because importing MONAI costs seconds on every denoising
process start and the kernel must be built on the CPU even when a network is built on PyTorch's
``meta`` device to check a model file's shapes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ctdenoise.errors import CTDenoiseError

TRUNCATE = 4.0
"""Kernel half-width in standard deviations."""


def check_sigma(owner: str, name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number >= 0 (0: option off); else raise one line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise CTDenoiseError(f"{owner} {name} must be a number >= 0 (0: off), got {value!r}")
    return float(value)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D Gaussian of standard deviation ``sigma`` pixels: pixel-integrated (erf), truncated at 4 sigma, on the CPU."""
    tail = int(max(float(sigma) * TRUNCATE, 0.5) + 0.5)
    x = torch.arange(-tail, tail + 1, dtype=torch.float32, device="cpu")
    t = 0.70710678 / torch.tensor(abs(float(sigma)), dtype=torch.float32, device="cpu")
    return (0.5 * (torch.erf(t * (x + 0.5)) - torch.erf(t * (x - 0.5)))).clamp(min=0)


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) tensor over H and W, reflect-padded."""
    channels, pad = x.shape[1], (kernel.shape[0] - 1) // 2
    weight = kernel.to(x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = F.conv2d(padded, weight.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, weight.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
