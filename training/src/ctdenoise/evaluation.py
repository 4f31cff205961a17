"""Compare denoised volumes with a full-dose reference: a metrics table and a side-by-side figure.

Used by ``ctdenoise compare`` and the demo. Every figure states its convention: PSNR/SSIM in a
HU window (data range = window width, see :mod:`ctdenoise.metrics`), RMSE in HU, and the noise
standard deviation and mean HU inside a homogeneous region of interest (ROI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ctdenoise.errors import CTDenoiseError
from ctdenoise.metrics import DEFAULT_WINDOW, image_quality, metric_convention, roi_statistics

Roi = tuple[slice, slice, slice]
REFERENCE_NAME = "full dose (reference)"
"""Row and panel name of the reference; no candidate may use it."""
PANEL_INCHES = (4.2, 4.6)
"""Width and height of one figure panel; the PNG is ``count * 4.2 x 4.6`` inches at ``FIGURE_DPI``."""
FIGURE_DPI = 110


def parse_roi(text: str) -> Roi:
    """``"z0:z1,y0:y1,x0:x1"`` (voxel indices, end exclusive) -> a tuple of slices."""
    try:
        parts = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
        if len(parts) != 3 or any(len(p) != 2 or p[0] >= p[1] or p[0] < 0 for p in parts):
            raise ValueError
    except ValueError:
        raise CTDenoiseError(
            f"ROI {text!r} is not of the form z0:z1,y0:y1,x0:x1 with start < end: e.g. 0:20,240:270,130:170"
        ) from None
    return tuple(slice(a, b) for a, b in parts)  # type: ignore[return-value]


def compare_volumes(
    reference: np.ndarray,
    candidates: Mapping[str, np.ndarray],
    *,
    window: Sequence[float] = DEFAULT_WINDOW,
    roi: Optional[Roi] = None,
) -> dict[str, Any]:
    """Metrics of each candidate volume (and the reference's own ROI statistics).

    Args:
        reference: full-dose HU [z,y,x].
        candidates: name -> HU volume of the same shape (e.g. quarter dose, denoised).
        window: HU window for PSNR/SSIM.
        roi: homogeneous region for noise std and mean HU; None skips those figures.

    Returns:
        ``{"convention": ..., "roi": ..., "rows": {name: {psnr, ssim, rmse_hu, [mean_hu, std_hu]}}}``;
        the reference has a row with only its ROI figures.
    """
    low, high = (float(v) for v in window)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise CTDenoiseError(f"HU window [{low:g}, {high:g}] is empty: give LOW < HIGH, e.g. -160 240")
    rows: dict[str, dict[str, float]] = {}
    if roi is not None:
        if reference.ndim != 3 or any(s.stop > n for s, n in zip(roi, reference.shape)):
            raise CTDenoiseError(
                f"ROI {roi_text(roi)} lies outside the volume of shape {reference.shape}: choose a smaller ROI"
            )
        rows[REFERENCE_NAME] = roi_statistics(reference, roi)
    for name, volume in candidates.items():
        if name == REFERENCE_NAME:
            raise CTDenoiseError(f"the name {REFERENCE_NAME!r} is reserved for the reference: rename the candidate")
        if volume.shape != reference.shape:
            raise CTDenoiseError(
                f"{name} has shape {volume.shape}, the reference {reference.shape}: compare volumes of one scan"
            )
        row = image_quality(volume, reference, (low, high))
        if roi is not None:
            row.update(roi_statistics(volume, roi))
        rows[name] = row
    return {"convention": metric_convention(window), "roi": roi_text(roi) if roi else None, "rows": rows}


def roi_text(roi: Roi) -> str:
    """The inverse of :func:`parse_roi`."""
    return ",".join(f"{s.start}:{s.stop}" for s in roi)


def metrics_markdown(result: Mapping[str, Any]) -> str:
    """The metrics as a Markdown table with its convention underneath."""
    header = "| volume | PSNR (dB) | SSIM | RMSE (HU) | ROI mean (HU) | ROI noise std (HU) |"
    lines = [header, "|---|---|---|---|---|---|"]

    def cell(row: Mapping[str, float], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    for name, row in result["rows"].items():
        escaped = str(name).replace("|", "\\|")
        lines.append(
            f"| {escaped} | {cell(row, 'psnr', '.2f')} | {cell(row, 'ssim', '.4f')} | {cell(row, 'rmse_hu', '.1f')} "
            f"| {cell(row, 'mean_hu', '.1f')} | {cell(row, 'std_hu', '.1f')} |"
        )
    conv = result["convention"]
    low, high = conv["window_hu"]
    lines.append("")
    lines.append(
        f"PSNR and SSIM in the window [{low:g}, {high:g}] HU (data range {conv['data_range_hu']:g} HU); "
        f"SSIM: {conv['ssim']}; RMSE: {conv['rmse']}."
    )
    if result.get("roi"):
        lines.append(f"ROI (z0:z1,y0:y1,x0:x1 voxels): {result['roi']}.")
    return "\n".join(lines) + "\n"


def comparison_figure(
    panels: Mapping[str, np.ndarray],
    path: Path,
    *,
    window: Sequence[float] = (-160.0, 240.0),
    difference: Optional[tuple[str, np.ndarray]] = None,
    difference_range: float = 100.0,
    roi_yx: Optional[tuple[slice, slice]] = None,
    title: Optional[str] = None,
) -> Path:
    """Save a row of 2-D slices side by side in one HU window (plus an optional difference panel).

    Args:
        panels: title -> 2-D HU slice, shown in ``window``.
        path: PNG destination (written atomically).
        window: display window (low, high) HU, stated in the titles.
        difference: (title, 2-D HU difference) shown in [-difference_range, +difference_range].
        roi_yx: region drawn as a rectangle on every panel.
        title: figure title.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ctdenoise.fileutils import atomic_write

    count = len(panels) + (difference is not None)
    if count == 0:
        raise CTDenoiseError("nothing to draw: pass at least one panel")
    fig = Figure(figsize=(PANEL_INCHES[0] * count, PANEL_INCHES[1]), dpi=FIGURE_DPI, constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(1, count))
    low, high = float(window[0]), float(window[1])
    items = [(name, image, "gray", low, high) for name, image in panels.items()]
    if difference is not None:
        items.append((difference[0], difference[1], "RdBu_r", -difference_range, difference_range))
    for ax, (name, image, cmap, vmin, vmax) in zip(axes, items):
        shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
        if roi_yx is not None:
            ys, xs = roi_yx
            ax.add_patch(
                Rectangle(
                    (xs.start, ys.start),
                    xs.stop - xs.start,
                    ys.stop - ys.start,
                    fill=False,
                    edgecolor="yellow",
                    linewidth=1,
                )
            )
        if cmap != "gray":
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="HU")
    caption = f"window [{low:g}, {high:g}] HU (C {(low + high) / 2:g} / W {high - low:g})"
    fig.suptitle(f"{title}: {caption}" if title else caption, fontsize=11)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=FIGURE_DPI, format="png"))
    return Path(path)
