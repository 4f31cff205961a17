"""Reading and writing CT volumes: DICOM, NIfTI, NRRD and MetaImage, as HU float32 ``[z, y, x]``.

The names load on first use, so code that only needs :class:`Volume` (the training cache, the
simulation) imports neither SimpleITK nor pydicom.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "PADDING_KEYS": "ctdenoise.io.dicom",
    "read_volume": "ctdenoise.io.readers",
    "Volume": "ctdenoise.io.volume",
    "check_paths": "ctdenoise.io.writers",
    "validate_output_path": "ctdenoise.io.writers",
    "write_volume": "ctdenoise.io.writers",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
