"""Mapping between Hounsfield units and the network's input range.

A checkpoint carries its :class:`HUNormalization` in its metadata, so inference always uses the
mapping the model was trained with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ctdenoise.errors import CTDenoiseError


@dataclass(frozen=True)
class HUNormalization:
    """``x = (clip(hu, hu_min, hu_max) - offset) / scale`` and its inverse.

    ``hu_min`` or ``hu_max`` may be ``None`` (no clipping on that side).
    The seed project's mapping is ``HUNormalization(hu_min=-1000, hu_max=None, offset=0, scale=4000)``.
    """

    hu_min: Optional[float] = -1024.0
    hu_max: Optional[float] = 3071.0
    offset: float = 0.0
    scale: float = 1000.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise CTDenoiseError(f"normalisation scale must be a positive number, got {self.scale}")
        if self.hu_min is not None and self.hu_max is not None and self.hu_min >= self.hu_max:
            raise CTDenoiseError(f"normalisation hu_min ({self.hu_min}) must be below hu_max ({self.hu_max})")

    @classmethod
    def seed(cls) -> "HUNormalization":
        """The seed project's mapping: HU clipped below at -1000, divided by 4000."""
        return cls(hu_min=-1000.0, hu_max=None, offset=0.0, scale=4000.0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HUNormalization":
        """Build from checkpoint metadata; unknown keys are an error."""
        unknown = set(data) - {"hu_min", "hu_max", "offset", "scale"}
        if unknown:
            raise CTDenoiseError(f"unknown normalisation keys {sorted(unknown)} in checkpoint metadata")
        return cls(**{k: (None if v is None else float(v)) for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for checkpoint metadata."""
        return asdict(self)

    def normalize(self, hu):  # type: ignore[no-untyped-def]
        """HU (numpy array or torch tensor) -> network units; clips to ``[hu_min, hu_max]``.

        Examples:
            >>> import numpy as np
            >>> HUNormalization().normalize(np.array([-3024.0, 0.0, 1000.0]))
            array([-1.024,  0.   ,  1.   ])
        """
        if self.hu_min is not None or self.hu_max is not None:
            hu = hu.clip(self.hu_min, self.hu_max)  # the same method on numpy arrays and torch tensors
        return (hu - self.offset) / self.scale

    def denormalize(self, x):  # type: ignore[no-untyped-def]
        """Network units (numpy array or tensor) -> HU (no clipping)."""
        return x * self.scale + self.offset
