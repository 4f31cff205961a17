"""Image-quality figures with their convention stated (REFERENCE.md section 4).

PSNR and SSIM depend on the HU window: both images are clipped to ``window`` and the data range
is the window width. SSIM uses MONAI's ``SSIMMetric`` (Gaussian 11x11, sigma 1.5, as Wang et al.).
RMSE is in HU on the unclipped images.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

DEFAULT_WINDOW: tuple[float, float] = (-160.0, 240.0)


def _as_batch(image: np.ndarray) -> torch.Tensor:
    """[y,x] or [n,y,x] array -> float32 tensor [n,1,y,x]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"expected 2-D or 3-D images, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))[:, None]


def image_quality(
    prediction_hu: np.ndarray,
    reference_hu: np.ndarray,
    window: Sequence[float] = DEFAULT_WINDOW,
) -> dict[str, float]:
    """PSNR (dB), SSIM and RMSE (HU) of ``prediction_hu`` against ``reference_hu``.

    Args:
        prediction_hu: [y,x] or [n,y,x] HU.
        reference_hu: same shape.
        window: (low, high) HU window for PSNR/SSIM; data range = high - low.

    Returns:
        ``{"psnr": ..., "ssim": ..., "rmse_hu": ...}``, means over the slices.
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    if np.shape(prediction_hu) != np.shape(reference_hu):
        raise ValueError(f"shape mismatch {np.shape(prediction_hu)} vs {np.shape(reference_hu)}")
    low, high = float(window[0]), float(window[1])
    pred, ref = _as_batch(prediction_hu), _as_batch(reference_hu)
    rmse = torch.sqrt(torch.mean((pred.double() - ref.double()) ** 2)).item()
    pred_w = (pred.clamp(low, high) - low) / (high - low)
    ref_w = (ref.clamp(low, high) - low) / (high - low)
    psnr = PSNRMetric(max_val=1.0)(pred_w, ref_w).mean().item()
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=11, kernel_sigma=1.5)(pred_w, ref_w).mean().item()
    return {"psnr": float(psnr), "ssim": float(ssim), "rmse_hu": float(rmse)}


def stacks_by_shape(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(a, b)`` slice pairs -> ``(A, B)`` stacks, one per slice shape, in first-seen order.

    Validation slices of a cache may differ in size (single slices of several scanners, resampled
    pixel sizes); a network runs, and :func:`image_quality` measures, one shape at a time.
    """
    groups: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]] = {}
    for a, b in pairs:
        groups.setdefault(np.shape(a), []).append((a, b))
    return [(np.stack([a for a, _ in group]), np.stack([b for _, b in group])) for group in groups.values()]


def pooled_quality(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], window: Sequence[float] = DEFAULT_WINDOW
) -> dict[str, float]:
    """:func:`image_quality` over ``(prediction, reference)`` stacks of different slice shapes:
    PSNR and SSIM are means over all slices, RMSE is over all voxels."""
    rows = [(image_quality(p, r, window), int(np.shape(p)[0]), int(np.size(p))) for p, r in parts]
    if not rows:
        raise ValueError("no images to measure")
    slices, voxels = sum(n for _, n, _ in rows), sum(v for _, _, v in rows)
    return {
        "psnr": sum(q["psnr"] * n for q, n, _ in rows) / slices,
        "ssim": sum(q["ssim"] * n for q, n, _ in rows) / slices,
        "rmse_hu": float(np.sqrt(sum(q["rmse_hu"] ** 2 * v for q, _, v in rows) / voxels)),
    }


def denoising_quality(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    denoise: Callable[[np.ndarray], np.ndarray],
    window: Sequence[float] = DEFAULT_WINDOW,
) -> tuple[dict[str, dict[str, float]], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`pooled_quality` of ``denoise`` (a ``[n, y, x]`` HU stack in, the same out) and of its
    input on ``(full, low)`` pairs of any sizes: ``{"denoised": ..., "low_dose_input": ...}``, and
    one ``(low, denoised, full)`` slice to show."""
    stacks = stacks_by_shape(pairs)
    denoised = [denoise(low) for _, low in stacks]
    figures = {
        "denoised": pooled_quality([(d, full) for d, (full, _) in zip(denoised, stacks)], window),
        "low_dose_input": pooled_quality([(low, full) for full, low in stacks], window),
    }
    full, low = stacks[0]
    return figures, (low[0], denoised[0][0], full[0])


def metric_convention(window: Sequence[float] = DEFAULT_WINDOW) -> dict[str, Any]:
    """A record of how :func:`image_quality` measured, for tables and checkpoint metadata."""
    low, high = float(window[0]), float(window[1])
    return {
        "window_hu": [low, high],
        "data_range_hu": high - low,
        "ssim": "MONAI SSIMMetric, Gaussian 11x11, sigma 1.5, on the window scaled to [0, 1]",
        "rmse": "HU, unclipped",
    }


def roi_statistics(image_hu: np.ndarray, roi: tuple[slice, ...]) -> dict[str, float]:
    """Mean and standard deviation (HU) inside a region of interest, e.g. a homogeneous organ."""
    values = np.asarray(image_hu, dtype=np.float64)[roi]
    return {"mean_hu": float(values.mean()), "std_hu": float(values.std())}
