"""Window presets for CT: Slicer's own (CT-Abdomen, CT-Brain, CT-Bone, CT-Lung) plus liver and custom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class WindowPreset:
    """A window: ``width`` and ``level`` in HU; ``slicer_id`` names Slicer's own preset when there is one.

    The module shows translated names for the keys.
    """

    key: str
    width: float
    level: float
    slicer_id: Optional[str] = None


PRESETS = (
    WindowPreset("abdomen", 350.0, 40.0, "CT_ABDOMEN"),
    WindowPreset("liver", 150.0, 30.0),
    WindowPreset("brain", 100.0, 50.0, "CT_BRAIN"),
    WindowPreset("bone", 1000.0, 400.0, "CT_BONE"),
    WindowPreset("lung", 1400.0, -500.0, "CT_LUNG"),
)
"""The built-in presets; the values of Slicer's own are those of its VolumeDisplayPresets.json."""
CUSTOM = "custom"


def preset(key: str) -> WindowPreset:
    """The preset called ``key``."""
    for item in PRESETS:
        if item.key == key:
            return item
    raise KeyError(f"unknown window preset {key!r}: choose one of {', '.join(p.key for p in PRESETS)} or {CUSTOM}")
