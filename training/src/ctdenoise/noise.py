"""Noise of CT images measured where the anatomy is flat: flat patches, noise std, noise power spectrum.

CT noise is correlated: the reconstruction kernel shapes it, and smooth kernels (B30, STANDARD) put
much of its power at low spatial frequencies. Estimators built on a Laplacian or on small windows see
only the high-frequency part and underrate it (on a smooth 1 mm kernel by about a quarter). Here the
noise is measured in whole flat patches instead:

1. The slice is smoothed (two 5x5 box filters, about a Gaussian of sigma 2 px), so that noise barely
   moves what follows. Candidate patches (``PATCH_MM`` wide, half overlapping) lie wholly in soft tissue
   of the smoothed image; among them the ``FLAT_FRACTION`` with the smallest mean gradient of the
   smoothed image are kept. The selection never looks at the noise itself, so it does not favour
   patches where the noise happens to be low.
2. Each patch loses its least-squares plane (a smooth trend of the anatomy, which a plane removes
   and the noise barely feels: 3 of ``PATCH**2`` degrees of freedom).
3. Noise std: the square root of the median patch variance; the median resists patches that still
   hold a vessel. The NPS is the mean squared FFT magnitude of the detrended patches (a Hann window
   is not used: the plane fit already removes the edges' jump), radially averaged. Anatomy that a
   plane does not remove shows up in the lowest frequencies; :func:`band_noise_std` leaves out the
   band below ``LOW_FREQUENCY`` of Nyquist, where FBP noise has little power, and is what the
   simulation matches.

:func:`ctdenoise.physics.lowdose.calibrate` uses this to match the simulated dose to the
image's own noise, and ``ctdenoise evaluate`` to measure noise where no ROI is given. The test
``test_noise`` adds noise of known std and texture to an almost noise-free real CT and recovers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PATCH_MM = 24.0
"""Side of a flat patch in mm (rounded to an even pixel count within ``PATCH_PIXELS``)."""
PATCH_PIXELS = (12, 48)
PATCH = 32
"""Side of a flat patch in pixels when the pixel size is not given."""
MIN_PATCHES = 8
FLAT_FRACTION = 0.3
"""Share of the soft-tissue patches, the flattest by the smoothed image's gradient, that are kept."""
TISSUE_HU = (-150.0, 250.0)
"""Soft tissue (fat to enhanced parenchyma) in the smoothed image."""
SMOOTH_BOX = 5
LOW_FREQUENCY = 0.1
"""Share of the Nyquist frequency below which a flat patch's power is taken as anatomy, not noise."""


@dataclass(frozen=True)
class FlatPatches:
    """Square patches ``[size, size]`` whose top-left corners are ``(slice, row, column)`` rows of ``corners``."""

    corners: np.ndarray
    size: int

    def __len__(self) -> int:
        return int(self.corners.shape[0])

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The patches of ``volume`` ``[z, y, x]`` (or ``[y, x]``) as float64 ``[n, size, size]``."""
        array = np.asarray(volume).reshape((-1,) + np.shape(volume)[-2:])
        rows = np.arange(self.size)
        z, r, c = (self.corners[:, i] for i in range(3))
        return array[z[:, None, None], (r[:, None] + rows)[:, :, None], (c[:, None] + rows)[:, None, :]].astype(
            np.float64
        )


def box_mean(image: np.ndarray, size: int) -> np.ndarray:
    """Mean over ``size`` x ``size`` neighbourhoods of ``[z, y, x]`` (edges replicated), via summed areas."""
    pad = size // 2
    padded = np.pad(image, ((0, 0), (pad + 1, pad), (pad + 1, pad)), mode="edge").astype(np.float64)
    padded[:, 0, :] = 0.0
    padded[:, :, 0] = 0.0
    table = padded.cumsum(1).cumsum(2)
    h, w = image.shape[-2:]
    total = (
        table[:, size : size + h, size : size + w]
        - table[:, :h, size : size + w]
        - table[:, size : size + h, :w]
        + table[:, :h, :w]
    )
    return total / (size * size)


def smooth(slices: np.ndarray) -> np.ndarray:
    """Two ``SMOOTH_BOX`` box filters of ``[z, y, x]``: close to a Gaussian of sigma 2 px."""
    return box_mean(box_mean(slices, SMOOTH_BOX), SMOOTH_BOX)


def gaussian_smooth(slices: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing of every slice of ``[z, y, x]`` with width ``sigma_px`` pixels (FFT, edges reflected)."""
    if sigma_px <= 0:
        return np.asarray(slices, dtype=np.float32)
    pad = int(math.ceil(4 * sigma_px))
    padded = np.pad(np.asarray(slices, dtype=np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    fy = np.fft.fftfreq(padded.shape[1])[:, None]
    fx = np.fft.rfftfreq(padded.shape[2])[None, :]
    response = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fy**2 + fx**2))
    smoothed = np.fft.irfft2(np.fft.rfft2(padded) * response, s=padded.shape[1:])
    return smoothed[:, pad:-pad, pad:-pad].astype(np.float32)


def _patch_sums(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Sums of ``image`` ``[z, y, x]`` over ``size`` x ``size`` patches on a ``stride`` grid: ``[z, ny, nx]``."""
    table = np.zeros((image.shape[0], image.shape[1] + 1, image.shape[2] + 1))
    table[:, 1:, 1:] = image.cumsum(1).cumsum(2)
    r = np.arange(0, image.shape[1] - size + 1, stride)
    c = np.arange(0, image.shape[2] - size + 1, stride)
    return (
        table[:, r[:, None] + size, c[None, :] + size]
        - table[:, r[:, None], c[None, :] + size]
        - table[:, r[:, None] + size, c[None, :]]
        + table[:, r[:, None], c[None, :]]
    )


def patch_side(spacing_mm: Sequence[float] | None) -> int:
    """Patch side in pixels: ``PATCH_MM`` at the coarser pixel size, or ``PATCH`` without spacing."""
    if spacing_mm is None:
        return PATCH
    side = int(round(PATCH_MM / max(float(spacing_mm[0]), float(spacing_mm[1])) / 2.0)) * 2
    return int(np.clip(side, *PATCH_PIXELS))


def find_flat_patches(
    hu: np.ndarray,
    size: int | None = None,
    tissue_hu: Sequence[float] = TISSUE_HU,
    fraction: float = FLAT_FRACTION,
    spacing_mm: Sequence[float] | None = None,
) -> FlatPatches | None:
    """The flattest soft-tissue patches of HU slices ``[z, y, x]`` or ``[y, x]``; None if too few.

    ``size`` None takes :func:`patch_side` of ``spacing_mm`` and then half of it when too few patches
    of that size are flat (small crops). See the module docstring for the rule.

    Examples:
        >>> import numpy as np
        >>> from ctdenoise.noise import find_flat_patches
        >>> image = 40.0 + np.random.default_rng(0).normal(0.0, 10.0, (1, 128, 128))
        >>> len(find_flat_patches(image)) > 0
        True
    """
    slices = np.asarray(hu, dtype=np.float32).reshape((-1,) + np.shape(hu)[-2:])
    side = patch_side(spacing_mm)
    sizes = (size,) if size else (side, max(PATCH_PIXELS[0] // 2, side // 2))
    smoothed = smooth(slices)
    gy, gx = np.gradient(smoothed, axis=(1, 2))
    gradient = np.hypot(gy, gx)
    tissue = ((smoothed > tissue_hu[0]) & (smoothed < tissue_hu[1])).astype(np.float64)
    for side in sizes:
        if min(slices.shape[1:]) < side:
            continue
        stride = side // 2
        inside = _patch_sums(tissue, side, stride) >= side * side - 0.5
        if int(inside.sum()) < MIN_PATCHES:
            continue
        flatness = _patch_sums(gradient, side, stride)
        z, iy, ix = np.nonzero(inside)
        order = np.argsort(flatness[z, iy, ix], kind="stable")
        keep = order[: max(MIN_PATCHES, int(round(fraction * order.size)))]
        corners = np.stack([z[keep], iy[keep] * stride, ix[keep] * stride], axis=1)
        return FlatPatches(corners=corners[np.lexsort(corners.T[::-1])], size=side)
    return None


def detrend(patches: np.ndarray) -> np.ndarray:
    """``[n, s, s]`` patches minus their least-squares planes."""
    side = patches.shape[-1]
    axis = np.arange(side) - (side - 1) / 2.0
    ramp = axis / np.sqrt(np.sum(axis**2) * side)  # unit-norm plane along one axis
    mean = patches.mean(axis=(1, 2), keepdims=True)
    along_rows = np.einsum("nij,i->n", patches, ramp)[:, None, None] * ramp[None, :, None]
    along_cols = np.einsum("nij,j->n", patches, ramp)[:, None, None] * ramp[None, None, :]
    return patches - mean - along_rows - along_cols


def noise_std(hu: np.ndarray, patches: FlatPatches | None = None) -> float | None:
    """Noise standard deviation (HU) of ``hu`` in flat patches (found in ``hu`` when not given).

    ``patches`` lets the same regions be measured in several images (input, output, difference).
    Returns None where no flat soft tissue is found.

    Examples:
        >>> import numpy as np
        >>> from ctdenoise.noise import noise_std
        >>> image = 40.0 + np.random.default_rng(0).normal(0.0, 10.0, (2, 128, 128))
        >>> round(noise_std(image))
        10
    """
    patches = patches if patches is not None else find_flat_patches(hu)
    if patches is None:
        return None
    values = detrend(patches.take(hu))
    dof = patches.size**2 - 3
    variances = np.sum(values**2, axis=(1, 2)) / dof
    return float(np.sqrt(np.median(variances)))


def _patch_power(hu: np.ndarray, patches: FlatPatches, spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(power [n, s, s], radial frequency [s, s] in cycles/mm)`` of the detrended patches.

    ``power`` is ``|FFT|^2 dx dy / s^2`` (HU^2 mm^2): its mean over the frequency plane times the
    plane's area is the patch variance.
    """
    dy, dx = float(spacing_mm[0]), float(spacing_mm[1])
    side = patches.size
    values = detrend(patches.take(hu))
    power = np.abs(np.fft.fft2(values)) ** 2 * (dx * dy) / (side * side)
    fy, fx = np.meshgrid(np.fft.fftfreq(side, dy), np.fft.fftfreq(side, dx), indexing="ij")
    return power, np.hypot(fy, fx)


def band_noise_std(
    hu: np.ndarray, spacing_mm: Sequence[float], patches: FlatPatches | None = None, low: float | None = None
) -> float | None:
    """Noise std (HU) of the frequencies at or above ``low`` cycles/mm in flat patches (median over patches).

    Anatomy left in a flat patch lives at the lowest frequencies, where FBP noise has little power
    (its NPS vanishes at zero frequency), so this is the anatomy-free part of :func:`noise_std`.
    ``low`` defaults to ``LOW_FREQUENCY`` of the Nyquist frequency.
    """
    patches = patches if patches is not None else find_flat_patches(hu)
    if patches is None:
        return None
    cut = LOW_FREQUENCY * 0.5 / max(float(spacing_mm[0]), float(spacing_mm[1])) if low is None else float(low)
    power, radius = _patch_power(hu, patches, spacing_mm)
    keep = radius >= cut
    dof = max(1, int(keep.sum()) - 3)
    variances = power[:, keep].sum(axis=1) / (float(spacing_mm[0]) * float(spacing_mm[1]) * dof)
    return float(np.sqrt(np.median(variances)))


def slice_noise(slices: np.ndarray, spacing_mm: Sequence[float] | None = None) -> list[float]:
    """:func:`band_noise_std` of each HU slice of ``slices`` ``[z, y, x]`` that has flat soft tissue.

    Slice by slice, so a volume's sample and a cache's slices are measured alike and in little
    memory; ``spacing_mm`` None takes 1 mm pixels (the band is then a tenth of Nyquist either way).

    Examples:
        >>> import numpy as np
        >>> from ctdenoise.noise import slice_noise
        >>> image = 40.0 + np.random.default_rng(0).normal(0.0, 10.0, (2, 128, 128))
        >>> [round(value) for value in slice_noise(image)]
        [10, 10]
    """
    pixel = (1.0, 1.0) if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
    values = []
    for image in np.asarray(slices, dtype=np.float32)[:, None]:
        patches = find_flat_patches(image, spacing_mm=spacing_mm)
        if patches is not None:
            values.append(float(band_noise_std(image, pixel, patches)))
    return values


def noise_power_spectrum(
    hu: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0), patches: FlatPatches | None = None, bins: int = 16
) -> tuple[np.ndarray, np.ndarray] | None:
    """Radially averaged noise power spectrum of ``hu`` in flat patches.

    Returns ``(frequency, nps)``: bin centres in cycles per mm (up to the Nyquist frequency of the
    coarser pixel axis) and the NPS in HU^2 mm^2, whose integral over the 2-D frequency plane is the
    noise variance. None where no flat soft tissue is found.
    """
    patches = patches if patches is not None else find_flat_patches(hu)
    if patches is None:
        return None
    power, radius = _patch_power(hu, patches, spacing_mm)
    nps2d = power.mean(axis=0)
    edges = np.linspace(0.0, 0.5 / max(float(spacing_mm[0]), float(spacing_mm[1])), bins + 1)
    which = np.digitize(radius.ravel(), edges) - 1
    valid = (which >= 0) & (which < bins) & (radius.ravel() > 0)
    totals = np.bincount(which[valid], weights=nps2d.ravel()[valid], minlength=bins)
    counts = np.bincount(which[valid], minlength=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    keep = counts > 0
    return centres[keep], totals[keep] / counts[keep]


def mean_frequency(frequency: np.ndarray, nps: np.ndarray, low: float = 0.0) -> float:
    """NPS-weighted mean radial frequency (cycles/mm) over ``frequency >= low``: a texture figure.

    Radial bins are weighted by their ring's area (``2 pi f``), as a 2-D integral.
    """
    keep = frequency >= low
    weight = nps[keep] * frequency[keep]
    return float(np.sum(frequency[keep] * weight) / np.sum(weight))
