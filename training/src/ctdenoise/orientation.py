"""Orientation: show the network axial slices the way it was trained, whatever the file's storage order.

A volume's ``direction`` (ITK convention, LPS patient coordinates) says where each array axis points.
An orientation code names that with three letters, one per index axis ``(x, y, z)`` = array axes
``(2, 1, 0)``: ``LPS`` means columns run toward the patient's left, rows toward posterior and slices
from feet to head, the way axial DICOM is stored (and SimpleITK's ``DICOMOrient`` codes). A model
records the code it was trained on; :func:`reorientation` finds the axis permutation and flips that
turn a stored array into that orientation, as a view, and back, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ctdenoise.errors import CTDenoiseError

DEFAULT_ORIENTATION = "LPS"
MAX_OBLIQUITY_DEG = 45.0
"""Largest angle between the slice axis the network uses and the patient's head-foot axis."""
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def check_orientation_code(code: object) -> str:
    """``code`` upper-cased if it names one direction per patient axis (e.g. ``LPS``, ``RAS``); else raise.

    Examples:
        >>> check_orientation_code("ras")
        'RAS'
    """
    text = str(code).upper() if isinstance(code, str) else ""
    if len(text) != 3 or any(c not in _LETTERS for c in text) or len({_LETTERS[c][0] for c in text}) != 3:
        raise CTDenoiseError(
            f"orientation {code!r} is not a code of one letter per patient axis: use e.g. LPS (L/R, P/A, S/I)"
        )
    return text


@dataclass(frozen=True)
class Reorientation:
    """How a stored ``[z, y, x]`` array maps to the target orientation, and back.

    Attributes:
        order: for each target array axis, the stored array axis it comes from.
        flip: for each target array axis, whether it runs backwards.
        obliquity_deg: angle between the target slice axis and the patient's head-foot axis.
    """

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    obliquity_deg: float = 0.0

    @property
    def is_identity(self) -> bool:
        """True when the stored array already is in the target orientation."""
        return self.order == (0, 1, 2) and not any(self.flip)

    def to_target(self, array: np.ndarray) -> np.ndarray:
        """A view of the stored ``array`` in the target orientation (writes go through to ``array``)."""
        view = array.transpose(self.order)
        return view[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """A view of a target-oriented ``array`` in the stored orientation (the inverse of :meth:`to_target`)."""
        unflipped = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]
        return unflipped.transpose(np.argsort(self.order))

    def target_spacing(self, spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
        """Voxel size ``(x, y, z)`` in mm of the target-oriented array, from the stored one."""
        stored_zyx = [float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0])]
        z, y, x = (stored_zyx[axis] for axis in self.order)
        return (x, y, z)


def reorientation(
    direction: Sequence[float], target: str = DEFAULT_ORIENTATION, max_obliquity_deg: float = MAX_OBLIQUITY_DEG
) -> Reorientation:
    """The permutation and flips that bring an array with ``direction`` into ``target`` orientation.

    The slice axis of the target is the stored axis closest to the head-foot axis; the other two
    axes follow the target's letters. Volumes whose closest axis is more than ``max_obliquity_deg``
    from head-foot are refused: their "slices" are not axial.

    Examples:
        >>> sagittal = (0, 0, 1, -1, 0, 0, 0, 1, 0)  # "ASL", as DICOMOrient(image, "ASL") stores it
        >>> r = reorientation(sagittal)
        >>> r.order, r.flip
        ((1, 2, 0), (False, True, False))
    """
    target = check_orientation_code(target)
    axes = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    norms = np.linalg.norm(axes, axis=0)
    if not np.all(np.isfinite(axes)) or np.any(norms < 1e-6):
        raise CTDenoiseError(
            f"the volume's direction matrix {np.round(axes, 3).tolist()} is degenerate: fix the file's geometry"
        )
    axes = axes / norms
    patient_axis = [_LETTERS[c] for c in target]  # target index axis k -> (patient axis, sign)
    source: dict[int, int] = {}
    free = [0, 1, 2]
    for k in (2, 0, 1):  # the slice axis first, then columns, then rows
        p = patient_axis[k][0]
        source[k] = max(free, key=lambda j: abs(axes[p, j]))
        free.remove(source[k])
    cosine = abs(axes[patient_axis[2][0], source[2]])
    obliquity = math.degrees(math.acos(min(1.0, cosine)))
    if obliquity > max_obliquity_deg:
        raise CTDenoiseError(
            f"the volume's slices are {obliquity:.0f} degrees from axial (more than {max_obliquity_deg:g}): "
            "resample it to an axial grid first (e.g. Slicer's Resample Scalar Volume or SimpleITK Resample)"
        )
    # target array axis a = 2 - k (array axes are index axes reversed); stored array axis = 2 - source[k]
    order = tuple(2 - source[2 - a] for a in range(3))
    flip = tuple(bool(np.sign(axes[patient_axis[2 - a][0], source[2 - a]]) != patient_axis[2 - a][1]) for a in range(3))
    return Reorientation(order, flip, round(obliquity, 3))  # type: ignore[arg-type]
