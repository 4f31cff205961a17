"""Gaussian blurs shared by the networks' high-pass options (MONAI kernels, reflect padding)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ctdenoise.errors import CTDenoiseError


def check_sigma(owner: str, name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number >= 0 (0: option off); else raise one line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise CTDenoiseError(f"{owner} {name} must be a number >= 0 (0: off), got {value!r}")
    return float(value)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D Gaussian kernel of standard deviation ``sigma`` pixels, truncated at 4 sigma, summing to 1."""
    from monai.networks.layers.convutils import gaussian_1d

    return gaussian_1d(torch.tensor(sigma), truncated=4.0).float()


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) tensor over H and W, reflect-padded."""
    from monai.networks.layers.simplelayers import separable_filtering

    return separable_filtering(x, [kernel, kernel], mode="reflect")
