"""The in-memory CT volume: HU voxels plus the geometry needed to write them back."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np

SLAB_VOXELS = 1 << 22
"""Voxels per slab when a whole volume is scanned or converted piece by piece (16 slices of 512x512)."""


@dataclass
class Volume:
    """A CT volume in Hounsfield units.

    Attributes:
        array: voxels in HU, indexed ``[z, y, x]`` (slice, row, column): float32, or an integer
            type (int16 for most CT) from ``read_volume(..., integer_hu=True)``.
        spacing: voxel size in mm as ``(x, y, z)`` (ITK order).
        origin: position of the first voxel in mm, LPS patient coordinates, ``(x, y, z)``.
        direction: 3x3 direction cosines, row-major, 9 floats (ITK convention: column j is the
            direction of index axis j).
        metadata: reader-specific facts, JSON-serialisable where possible. Known keys:
            ``format`` ("dicom", "nifti", "nrrd", "mha", "npy"), ``modality``, ``patient_id``,
            ``study_uid``, ``series_uid``, ``kernel``, ``kv``, ``manufacturer``,
            ``gantry_tilt_deg``, ``slice_positions`` (list of per-slice LPS positions, DICOM only),
            ``dicom_files`` (sorted source file paths, DICOM only), ``warnings`` (list of str),
            ``pixel_padding_hu`` / ``pixel_padding_limit_hu`` (DICOM PixelPaddingValue in HU).

    Examples:
        >>> import numpy as np
        >>> volume = Volume(np.full((2, 4, 4), -1000.0, dtype=np.float32), spacing=(0.7, 0.7, 5.0))
        >>> volume.shape, volume.with_array(volume.array + 10).array.max()
        ((2, 4, 4), np.float32(-990.0))
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3-D [z, y, x], got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, **metadata: Any) -> "Volume":
        """A copy with new voxels (same shape) and the same geometry; ``metadata`` adds keys."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from the volume's {self.array.shape}")
        return replace(self, array=array, metadata={**self.metadata, **metadata})


def slabs(array: np.ndarray, voxels: int = SLAB_VOXELS) -> Iterator[slice]:
    """Consecutive ranges of whole slices (first axis) of ``array``, each about ``voxels`` voxels or one slice.

    For scanning or converting a volume without a whole-volume temporary.

    Examples:
        >>> list(slabs(np.zeros((5, 2, 2)), voxels=8))
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    step = max(1, voxels // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, array.shape[0], step):
        yield slice(start, min(start + step, array.shape[0]))


def nonfinite_voxels(array: np.ndarray) -> int:
    """How many voxels are NaN or infinite (none in an integer array), counted slab by slab.

    Examples:
        >>> nonfinite_voxels(np.array([[[0.0, np.nan, np.inf]]])), nonfinite_voxels(np.zeros((1, 2, 2), np.int16))
        (2, 0)
    """
    if array.dtype.kind not in "fc":
        return 0
    return sum(int(array[part].size - np.count_nonzero(np.isfinite(array[part]))) for part in slabs(array))
