"""Checks on input voxels: are they Hounsfield units, and where does the scan field end?

CT stored in HU spans about -1024 (air) to 3071; soft tissue lies near 0-100. Data handed around
outside DICOM is often something else: raw stored values (HU + 1024, nothing below 0), linear
attenuation (water about 0.02 per mm, everything within 0-0.1) or intensities scaled to 0..1. A
network fed those returns nonsense without complaint, so they are refused unless forced.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from ctdenoise.errors import CTDenoiseError

AIR_HU = -1024.0
"""Lowest value a CT scanner reconstructs; anything below it is padding outside the scan field."""
NO_AIR_HU = -500.0
"""A volume with no voxel below this has no air: probably a crop inside the body."""
RAW_SOFT_TISSUE = (950.0, 1200.0)
"""Where soft tissue lands in raw stored values (HU + 1024)."""
RAW_SOFT_TISSUE_SHARE = 0.05
FORCE_HINT = "or pass --force (force=True) if they really are HU"


def units_problem(array: np.ndarray) -> Optional[str]:
    """Why ``array`` is probably not HU, or None when it looks like HU.

    Examples:
        >>> units_problem(np.array([[-1000.0, 40.0, 1200.0]]))
        >>> units_problem(np.array([[0.0, 0.019, 0.04]]))[:40]
        'values lie within 0..0.04, typical of li'
    """
    low, high = float(array.min()), float(array.max())
    if high - low < 1e-6:
        return f"every voxel is {low:g}: this is not a CT image"
    if low >= -0.05 and high <= 0.1:
        return (
            f"values lie within {low:.3g}..{high:.3g}, typical of linear attenuation (water about 0.02 per mm), "
            "not HU: convert with HU = 1000 * (mu - mu_water) / mu_water"
        )
    if low >= -1.0 and high <= 1.0:
        return (
            f"values lie within {low:.3g}..{high:.3g}, typical of intensities scaled to 0..1, not HU: pass the CT in HU"
        )
    if low >= 0.0:
        soft = np.count_nonzero((array >= RAW_SOFT_TISSUE[0]) & (array <= RAW_SOFT_TISSUE[1])) / array.size
        if soft >= RAW_SOFT_TISSUE_SHARE:
            return (
                f"nothing is below 0 and {100 * soft:.0f}% of voxels lie at 950-1200, typical of raw stored values "
                "(HU + 1024) without the rescale: apply the rescale intercept (usually -1024)"
            )
    return None


def check_units(
    array: np.ndarray, *, force: bool = False, where: str = "the input", whole_slices: bool = True
) -> list[str]:
    """Refuse ``array`` when it is probably not HU; returns the warnings to show (forced units, no air).

    ``whole_slices``: the model's output depends on the whole slice (instance norms), so a volume
    without air (a crop inside the body) gets a warning; models with fixed norms do not need it.

    Raises:
        CTDenoiseError: the values look like raw stored values, attenuation or 0..1 intensities,
            unless ``force``.
    """
    problem = units_problem(array)
    if problem is not None:
        if not force:
            raise CTDenoiseError(f"{where} is probably not in HU: {problem}; {FORCE_HINT}")
        return [f"{where} is probably not in HU ({problem}); denoising anyway because of --force"]
    if whole_slices and float(array.min()) > NO_AIR_HU:
        return [
            f"{where} has no air (minimum {float(array.min()):g} HU): a crop inside the body? The model was "
            "trained on whole slices and normalises each by its own statistics, so it can add noise here; check "
            "the result, or use a model with fixed norms (the bundled 'supervised', or 'ctdenoise fix-norms')"
        ]
    return []


def declared_padding(metadata: Mapping[str, Any]) -> Optional[float]:
    """The padding threshold a file declares (PixelPaddingValue and its range limit, in HU), or None."""
    values = [
        float(metadata[key]) for key in ("pixel_padding_hu", "pixel_padding_limit_hu") if metadata.get(key) is not None
    ]
    return max(values) if values else None


def padding_threshold(array: np.ndarray, declared_hu: Optional[float] = None) -> Optional[float]:
    """The HU at or below which voxels are padding outside the scan field, or None if there is none.

    ``declared_hu`` is the file's own ``PixelPaddingValue`` (and range limit) in HU. Without it, a
    minimum below -1024 HU (no scanner reconstructs below air) marks the voxels at that minimum.

    Examples:
        >>> padding_threshold(np.array([-3024.0, -1000.0, 50.0]))
        -3024.0
        >>> padding_threshold(np.array([-1024.0, 50.0])) is None
        True
    """
    if declared_hu is not None and declared_hu <= AIR_HU + 24:
        return float(declared_hu)
    low = float(array.min())
    return low if low < AIR_HU - 0.5 else None
