#!/usr/bin/env python3
"""Draw the extension and module icons (128x128 PNG) from real CT: a simulated quarter-dose abdomen
slice, left half as acquired, right half denoised by the bundled model, liver window.

Usage: .venv/bin/python scripts/make_icons.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imsave

from ctdenoise import DenoiseOptions, Denoiser, read_volume
from ctdenoise.physics.lowdose import simulate_low_dose

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (
    ROOT / "Resources" / "Icons" / "CycleGANDenoise.png",
    ROOT / "CycleGANDenoise" / "Resources" / "Icons" / "CycleGANDenoise.png",
)


def main() -> None:
    volume = read_volume(ROOT / "data" / "totalsegmentator" / "example_ct_dicom")
    full = volume.array[9:10]
    quarter = simulate_low_dose(full, (float(volume.spacing[1]), float(volume.spacing[0])), 0.25, seed=0)
    denoised = Denoiser(options=DenoiseOptions(device="cpu")).array(quarter)
    crop = (0, slice(128, 384), slice(96, 352))  # 256x256 around the liver
    image = np.concatenate([quarter[crop][:, :128], denoised[crop][:, 128:]], axis=1)
    small = image.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    low, high = 30 - 150 / 2, 30 + 150 / 2
    grey = np.clip((small - low) / (high - low), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[:, 63:65] = (0.95, 0.6, 0.1)  # the divide between before and after
    for target in TARGETS:
        target.parent.mkdir(parents=True, exist_ok=True)
        imsave(target, rgb)
        print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
