"""Voxels for and from the engine: volume files with Slicer's geometry, strength blending, Preview slabs, ROI statistics.

Slicer describes a volume by a ``[k, j, i]`` array and its IJK-to-RAS matrix; the engine reads
files whose geometry is in ITK's LPS convention. These functions convert between the two exactly,
so the engine sees the volume as Slicer stores it and the result comes back voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def itk_geometry(ijk_to_ras: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin, direction) in ITK's LPS convention for a 4x4 IJK-to-RAS matrix."""
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the volume's IJK-to-RAS matrix has a zero-length axis")
    direction = RAS_TO_LPS @ (axes / spacing)
    origin = RAS_TO_LPS @ matrix[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def write_volume_file(array: np.ndarray, ijk_to_ras: np.ndarray, path: Path) -> Path:
    """Write ``array`` (``[k, j, i]``) with the geometry of ``ijk_to_ras`` as an uncompressed NRRD (or any ITK format)."""
    import SimpleITK as sitk

    spacing, origin, direction = itk_geometry(ijk_to_ras)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def read_volume_file(path: Path, shape: Sequence[int]) -> np.ndarray:
    """The voxels of an engine output, checked to have the input's ``shape``."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"the engine wrote {array.shape} voxels for an input of {tuple(shape)}")
    return array


def blend(source: np.ndarray, full: np.ndarray, strength: float) -> np.ndarray:
    """``source + strength * (full - source)`` in the source's dtype (integers rounded and clipped), as the engine does."""
    mixed = source.astype(np.float32) + np.float32(strength) * (full.astype(np.float32) - source.astype(np.float32))
    if source.dtype.kind == "f":
        return mixed.astype(source.dtype)
    info = np.iinfo(source.dtype)
    return np.clip(np.rint(mixed), info.min, info.max).astype(source.dtype)


def removed_noise(source: np.ndarray, output: np.ndarray) -> np.ndarray:
    """What denoising removed: input minus output, float32."""
    return source.astype(np.float32) - output.astype(np.float32)


def axial_axis(ijk_to_ras: np.ndarray) -> int:
    """The numpy axis (of a ``[k, j, i]`` array) that runs closest to head-foot: Preview takes its slab across it."""
    axes = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    superior = np.abs(axes[2]) / np.linalg.norm(axes, axis=0)
    return 2 - int(np.argmax(superior))


def slab(
    array: np.ndarray, ijk_to_ras: np.ndarray, axis: int, index: int, thickness: int = 1
) -> tuple[np.ndarray, np.ndarray, slice]:
    """A slab of ``thickness`` slices across ``axis`` centred on ``index``: (voxels, its IJK-to-RAS, where it sits)."""
    size = array.shape[axis]
    start = int(np.clip(index - thickness // 2, 0, max(0, size - thickness)))
    where = slice(start, min(size, start + thickness))
    taken = np.take(array, np.arange(where.start, where.stop), axis=axis)
    matrix = np.array(ijk_to_ras, dtype=np.float64, copy=True)
    matrix[:3, 3] += matrix[:3, 2 - axis] * start
    return taken, matrix, where


def roi_box(ras_to_ijk: np.ndarray, corners_ras: np.ndarray, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The ``[k, j, i]`` index box that holds a region given by its corners in RAS, clipped to the volume."""
    points = np.c_[np.asarray(corners_ras, dtype=np.float64), np.ones(len(corners_ras))] @ np.asarray(ras_to_ijk).T
    low, high = np.floor(points[:, :3].min(axis=0) + 0.5), np.floor(points[:, :3].max(axis=0) + 0.5)
    boxes = []
    for axis in (2, 1, 0):  # k, j, i
        lo = int(np.clip(low[axis], 0, shape[2 - axis] - 1))
        hi = int(np.clip(high[axis], 0, shape[2 - axis] - 1))
        boxes.append(slice(lo, hi + 1))
    return tuple(boxes)  # type: ignore[return-value]


def roi_statistics(array: np.ndarray, box: tuple[slice, slice, slice]) -> dict[str, float]:
    """Mean and standard deviation (HU) and voxel count inside ``box``."""
    values = np.asarray(array[box], dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "voxels": int(values.size)}


def roi_corners(center: Sequence[float], size: Sequence[float], axes: np.ndarray) -> np.ndarray:
    """The 8 corners of a box with ``center``, full side lengths ``size`` and unit ``axes`` (columns), in the same frame."""
    half = np.asarray(size, dtype=np.float64) / 2
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    return np.asarray(center, dtype=np.float64) + (signs * half) @ np.asarray(axes, dtype=np.float64).T
