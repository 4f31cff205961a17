"""Image-quality metrics with their window stated."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ctdenoise.metrics import image_quality, metric_convention, pooled_quality, roi_statistics, stacks_by_shape


def test_psnr_and_rmse_against_hand_computed_values() -> None:
    reference = np.full((2, 64, 64), 40.0, dtype=np.float32)
    prediction = reference + 20.0
    q = image_quality(prediction, reference, window=(-160, 240))
    # window-scaled error 20/400 = 0.05 -> MSE 0.0025 -> PSNR = 10 log10(1/0.0025) = 26.0206 dB
    assert q["psnr"] == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-3)
    assert q["rmse_hu"] == pytest.approx(20.0)


def test_window_clipping_changes_psnr_but_not_rmse() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 300, (64, 64)).astype(np.float32)
    prediction = reference + rng.normal(0, 30, reference.shape).astype(np.float32)
    narrow = image_quality(prediction, reference, window=(-160, 240))
    wide = image_quality(prediction, reference, window=(-1024, 3072))
    assert wide["psnr"] > narrow["psnr"] + 10
    assert wide["rmse_hu"] == pytest.approx(narrow["rmse_hu"])


def test_ssim_matches_skimage_gaussian_implementation() -> None:
    rng = np.random.default_rng(1)
    reference = np.clip(rng.normal(40, 60, (96, 96)), -160, 240).astype(np.float32)
    prediction = np.clip(reference + rng.normal(0, 40, reference.shape), -160, 240).astype(np.float32)
    ours = image_quality(prediction, reference, window=(-160, 240))["ssim"]
    ref01, pred01 = (reference + 160) / 400, (prediction + 160) / 400
    theirs = structural_similarity(
        ref01, pred01, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert 0.1 < ours < 0.99
    assert ours == pytest.approx(theirs, abs=0.02)
    assert image_quality(reference, reference)["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_convention_and_roi() -> None:
    convention = metric_convention((-160, 240))
    assert convention["data_range_hu"] == 400 and "11x11" in convention["ssim"]
    image = np.zeros((10, 10))
    image[2:6, 2:6] = [[1, 2, 3, 4]] * 4
    stats = roi_statistics(image, (slice(2, 6), slice(2, 6)))
    assert stats["mean_hu"] == pytest.approx(2.5) and stats["std_hu"] == pytest.approx(math.sqrt(1.25))


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        image_quality(np.zeros((4, 4)), np.zeros((4, 5)))


def test_slices_of_different_sizes_are_measured_together() -> None:
    """Validation slices of several sizes: stacked per shape, PSNR/SSIM averaged per slice, RMSE over voxels."""
    rng = np.random.default_rng(2)
    references = [rng.normal(40, 60, shape).astype(np.float32) for shape in ((64, 64), (48, 80), (64, 64))]
    predictions = [r + rng.normal(0, sigma, r.shape).astype(np.float32) for r, sigma in zip(references, (10, 40, 20))]
    stacks = stacks_by_shape(list(zip(predictions, references)))
    assert [s[0].shape for s in stacks] == [(2, 64, 64), (1, 48, 80)]  # first-seen order, one stack per shape
    pooled = pooled_quality(stacks)
    single = [image_quality(p, r) for p, r in zip(predictions, references)]
    assert pooled["psnr"] == pytest.approx(np.mean([q["psnr"] for q in single]), abs=1e-4)
    assert pooled["ssim"] == pytest.approx(np.mean([q["ssim"] for q in single]), abs=1e-5)
    errors = np.concatenate([(p - r).ravel() for p, r in zip(predictions, references)])
    assert pooled["rmse_hu"] == pytest.approx(float(np.sqrt(np.mean(errors.astype(np.float64) ** 2))), rel=1e-5)
    with pytest.raises(ValueError, match="no images"):
        pooled_quality([])
