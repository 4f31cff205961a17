"""Noise measurement and the calibrated simulation, proven on noise whose level and texture are known.

An almost noise-free real CT (the abdomen series smoothed) gets noise of a known std and NPS shaped
like FBP noise (a ramp rolled off by a Gaussian window, from sharp to smoother than B30); the
estimator must recover the std within 10%, and a simulated quarter dose must add sqrt(3) times that
std with the same texture and no mean shift.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ctdenoise.io import read_volume
from ctdenoise.noise import find_flat_patches, mean_frequency, noise_power_spectrum, noise_std, smooth
from ctdenoise.orientation import reorientation
from ctdenoise.physics.lowdose import simulate_low_dose

ABDOMEN = Path(__file__).resolve().parents[2] / "data" / "totalsegmentator" / "example_ct_dicom"
KNOWN_STD = 15.0


@pytest.fixture(scope="module")
def anatomy() -> tuple[np.ndarray, tuple[float, float]]:
    """Four real abdominal slices smoothed twice (own noise about 1 HU left) and their pixel size."""
    volume = read_volume(ABDOMEN)
    axial = reorientation(volume.direction).to_target(volume.array).astype(np.float32)[::5]
    return smooth(smooth(axial)).astype(np.float32), (float(volume.spacing[1]), float(volume.spacing[0]))


def _fbp_like_noise(shape: tuple[int, ...], width: float | None, seed: int) -> np.ndarray:
    """Unit-std noise with NPS ``|f| W(f)^2`` (W Gaussian of ``width`` cycles/px; None: plain ramp)."""
    white = np.random.default_rng(seed).normal(size=shape)
    f = np.hypot(np.fft.fftfreq(shape[-2])[:, None], np.fft.fftfreq(shape[-1])[None, :])
    response = np.sqrt(f) * (1.0 if width is None else np.exp(-0.5 * (f / width) ** 2))
    noise = np.real(np.fft.ifft2(np.fft.fft2(white) * response))
    return (noise / noise.std()).astype(np.float32)


@pytest.mark.parametrize("width", [None, 0.25, 0.12, 0.07])
def test_noise_std_recovers_known_correlated_noise(anatomy, width) -> None:
    clean, spacing = anatomy
    noise = KNOWN_STD * _fbp_like_noise(clean.shape, width, seed=1)
    image = clean + noise
    patches = find_flat_patches(image, spacing_mm=spacing)
    assert patches is not None and len(patches) > 100
    assert abs(noise_std(image, patches) - KNOWN_STD) < 0.1 * KNOWN_STD
    low = 0.05 / max(spacing)
    measured = mean_frequency(*noise_power_spectrum(image, spacing, patches), low)
    known = mean_frequency(*noise_power_spectrum(noise, spacing, patches), low)
    assert abs(measured - known) < 0.1 * known


def test_no_soft_tissue_means_no_estimate() -> None:
    assert find_flat_patches(np.full((2, 64, 64), -1000.0, dtype=np.float32)) is None
    assert noise_std(np.full((64, 64), 1500.0, dtype=np.float32)) is None


@pytest.mark.parametrize("width", [None, 0.12])
def test_quarter_dose_adds_calibrated_noise_with_the_image_texture(anatomy, width) -> None:
    clean, spacing = anatomy
    noise = KNOWN_STD * _fbp_like_noise(clean.shape, width, seed=2)
    image = clean + noise
    report: dict = {}
    low = simulate_low_dose(image, spacing, 0.25, seed=3, report=report)
    patches = find_flat_patches(image, spacing_mm=spacing)
    added = low - image
    # Quarter dose: added variance 3x the full-dose variance, so the total noise doubles.
    assert abs(noise_std(added, patches) - math.sqrt(3.0) * KNOWN_STD) < 0.1 * math.sqrt(3.0) * KNOWN_STD
    assert 1.8 < noise_std(low, patches) / noise_std(image, patches) < 2.2
    cut = 0.05 / max(spacing)
    texture = mean_frequency(*noise_power_spectrum(added, spacing, patches), cut)
    known = mean_frequency(*noise_power_spectrum(noise, spacing, patches), cut)
    assert abs(texture - known) < 0.1 * known
    assert report["calibration"] == "matched" and isinstance(report["kernel"], float)
    tissue = (clean > -150) & (clean < 250)
    assert abs(float(added[tissue].mean())) < 2.0
