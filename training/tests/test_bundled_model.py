"""The model shipped inside the package: present, small, self-describing and usable on real CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ctdenoise.checkpoints import load_checkpoint, read_model_metadata
from ctdenoise.inference import bundled_model_path, denoise_array
from ctdenoise.io import read_volume

MAX_BYTES = 20 * 1024 * 1024


def test_the_bundled_model_ships_with_its_card_and_is_under_20_mb() -> None:
    path = bundled_model_path()
    assert path.stat().st_size < MAX_BYTES
    card = (path.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    for heading in ("## Data", "## Training", "## Validation", "## Limitations"):
        assert heading in card


def test_the_bundled_model_describes_itself() -> None:
    metadata = read_model_metadata(bundled_model_path())
    assert metadata["generator"]["preset"] == "fast"
    assert metadata["normalization"] == {"hu_min": -1024.0, "hu_max": 3071.0, "offset": 0.0, "scale": 1000.0}
    data = metadata["training"]["data"]
    assert data["low_dose"] == "simulated" and data["low_dose_fractions"] == [0.25]
    assert data["patients"] == {"train": 45, "val": 1}
    assert metadata["training"]["steps"] == metadata["training"]["config"]["train"]["max_steps"]
    assert {"denoised", "low_dose_input", "convention"} <= set(metadata["metrics"])
    assert metadata["metrics"]["step"] == metadata["training"]["steps"]


def test_the_bundled_model_keeps_ct_numbers_on_the_bundled_abdomen(dicom_series_dir: Path) -> None:
    volume = read_volume(dicom_series_dir)
    hu = volume.array[8:10]
    denoised = denoise_array(hu, load_checkpoint(bundled_model_path()), device="cpu")
    assert denoised.shape == hu.shape and denoised.dtype == np.float32
    liver = (slice(None), slice(240, 270), slice(130, 170))
    assert abs(float(denoised[liver].mean() - hu[liver].mean())) < 10.0
    air = hu < -1000
    assert abs(float(denoised[air].mean() - hu[air].mean())) < 20.0

