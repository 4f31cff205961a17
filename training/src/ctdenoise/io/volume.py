"""The in-memory CT volume: HU voxels plus the geometry needed to write them back."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A CT volume in Hounsfield units.

    Attributes:
        array: float32 voxels in HU, indexed ``[z, y, x]`` (slice, row, column).
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
