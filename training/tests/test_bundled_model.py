"""The model shipped inside the package: present, small, self-describing and usable on real CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ctdenoise.checkpoints import load_checkpoint, read_model_metadata
from ctdenoise.inference import bundled_model_path, denoise_array
from ctdenoise.io import read_volume
from ctdenoise.physics.lowdose import simulate_low_dose

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
    assert data["patients"] == {"train": 24, "val": 1}
    assert 0 < metadata["training"]["steps"] <= metadata["training"]["config"]["train"]["max_steps"]
    assert metadata["generator"]["args"]["residual_highpass_sigma"] > 0  # cannot shift CT numbers
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



def test_the_bundled_model_reduces_noise_on_simulated_quarter_dose(dicom_series_dir: Path) -> None:
    """The held-out abdomen, as the demo runs it: quarter dose simulated from the real full dose."""
    volume = read_volume(dicom_series_dir)
    full = volume.array[6:12]
    quarter = simulate_low_dose(full, (float(volume.spacing[1]), float(volume.spacing[0])), 0.25, seed=0)
    denoised = denoise_array(quarter, load_checkpoint(bundled_model_path()), device="cpu")
    liver = (slice(None), slice(240, 270), slice(130, 170))

    def noise(image: np.ndarray) -> float:
        return float(image[liver].std(axis=(1, 2)).mean())

    assert noise(denoised) < 0.75 * noise(quarter)
    assert abs(float(denoised[liver].mean() - full[liver].mean())) < 5.0
    body = full > -300
    window = (-160.0, 240.0)

    def rmse(image: np.ndarray) -> float:
        return float(np.sqrt(((np.clip(image, *window) - np.clip(full, *window))[body] ** 2).mean()))

    assert rmse(denoised) < rmse(quarter)
