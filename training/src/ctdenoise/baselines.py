"""Classical denoisers that every evaluation table carries: BM3D, non-local means, Gaussian smoothing.

Each works slice by slice on HU and is *blind*: its noise level comes from the low-dose image itself
(:func:`ctdenoise.noise.noise_std` in flat patches), never from the reference, as a user without a
full-dose scan would run it. The Gaussian baseline is the exception by design: its width is chosen
so that its flat-tissue noise equals that of a given output (a learned model's), which shows what
plain smoothing gives at the same noise.

BM3D is the ``bm3d`` package (Mäkinen et al. 2020) with a white-noise sigma; non-local means is
scikit-image's ``denoise_nl_means`` (fast mode, 5x5 patches, 13x13 search, ``h = 0.8 sigma``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ctdenoise.errors import CTDenoiseError
from ctdenoise.noise import FlatPatches, band_noise_std, find_flat_patches, gaussian_smooth, noise_std

BASELINES = ("bm3d", "nlm", "gaussian")
NLM_H = 0.8
"""Non-local means filter strength in units of the estimated sigma (scikit-image's guidance)."""


def _import(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise CTDenoiseError(
            f"the {module.split('.')[0]} package is needed for this baseline: pip install 'ctdenoise[torch]'"
        ) from None


def blind_sigma(hu: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Noise std (HU) of ``hu`` ``[z, y, x]`` estimated from its own flat patches; 10 HU if none."""
    sigma = noise_std(hu, find_flat_patches(hu, spacing_mm=spacing_mm))
    return float(sigma) if sigma else 10.0


def bm3d_slices(hu: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D of every slice of ``hu`` ``[z, y, x]`` with white-noise ``sigma`` (HU)."""
    bm3d = _import("bm3d")
    out = np.empty(hu.shape, dtype=np.float32)
    for i, image in enumerate(hu):
        out[i] = bm3d.bm3d(image.astype(np.float64), sigma_psd=sigma)
    return out


def nlm_slices(hu: np.ndarray, sigma: float) -> np.ndarray:
    """Non-local means of every slice of ``hu`` ``[z, y, x]`` for noise ``sigma`` (HU)."""
    restoration = _import("skimage.restoration")
    out = np.empty(hu.shape, dtype=np.float32)
    for i, image in enumerate(hu):
        out[i] = restoration.denoise_nl_means(
            image.astype(np.float64), h=NLM_H * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
        )
    return out


def gaussian_matched(
    hu: np.ndarray, target_noise: float, spacing_mm: Sequence[float], patches: FlatPatches
) -> tuple[np.ndarray, float]:
    """Gaussian smoothing whose flat-tissue noise (:func:`band_noise_std`) equals ``target_noise``.

    Returns the smoothed slices and the width in pixels (bisection on 0-8 px).
    """

    def noise(width: float) -> float:
        return band_noise_std(gaussian_smooth(hu, width), spacing_mm, patches) or 0.0

    low, high = 0.0, 8.0
    if noise(high) >= target_noise:
        return gaussian_smooth(hu, high), high
    for _ in range(12):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if noise(middle) > target_noise else (low, middle)
    width = 0.5 * (low + high)
    return gaussian_smooth(hu, width), width


def baseline(name: str, sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    """The blind baseline ``name`` ("bm3d" or "nlm") as a function of HU slices."""
    if name == "bm3d":
        return lambda hu: bm3d_slices(hu, sigma)
    if name == "nlm":
        return lambda hu: nlm_slices(hu, sigma)
    raise CTDenoiseError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}")
