"""Check the calibrated low-dose simulation on the real CT in ``data/``: level, texture, mean, speed.

Usage: python scripts/calibrate_simulation.py [--dose 0.25] [--figure docs/figures/simulation_nps.png]

For each series (one per reconstruction kernel) it simulates quarter dose (seed 0) and prints a
Markdown table: the image's own noise std in flat patches (:mod:`ctdenoise.noise`): above the anatomy
band, extrapolated to all frequencies with the matched texture, and with every frequency (anatomy
included), next to the previous estimator (20th percentile of the 7x7 local std, which underrates
correlated noise); the
fitted Gaussian kernel width, the added noise std, the added over the own noise above the anatomy band
(goal sqrt(3) = 1.73 at quarter dose), total over own noise there (goal 2), the NPS mean frequency of the own and the added noise
(goal: equal), the mean HU shift in soft tissue (goal: within 2 HU) and seconds per slice. The figure
shows the own and the added NPS (the added one divided by 1/d - 1, so that equal texture overlaps).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from ctdenoise.io import read_volume
from ctdenoise.noise import (
    LOW_FREQUENCY,
    band_noise_std,
    find_flat_patches,
    mean_frequency,
    noise_power_spectrum,
    noise_std,
    smooth,
)
from ctdenoise.orientation import reorientation
from ctdenoise.physics.lowdose import simulate_low_dose

DATA = Path(__file__).resolve().parents[1] / "data"
SERIES = [
    ("abdomen, Siemens Br38f", DATA / "totalsegmentator" / "example_ct_dicom"),
    ("chest, Siemens B20f", DATA / "tcga_lung_ctmi" / "ID_0005_AGE_0048_CONTRAST_1_CT.dcm"),
    ("chest, Siemens B30f", DATA / "tcga_lung_ctmi" / "ID_0018_AGE_0074_CONTRAST_1_CT.dcm"),
    ("chest, Siemens B31f", DATA / "tcga_lung_ctmi" / "ID_0002_AGE_0074_CONTRAST_1_CT.dcm"),
    ("chest, Siemens B60f", DATA / "tcga_lung_ctmi" / "ID_0014_AGE_0071_CONTRAST_1_CT.dcm"),
    ("chest, Siemens AB50", DATA / "tcga_lung_ctmi" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"),
    ("chest, GE STANDARD", DATA / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm"),
    ("chest, GE SOFT", DATA / "tcga_lung_ctmi" / "ID_0022_AGE_0074_CONTRAST_1_CT.dcm"),
    ("abdomen/pelvis 3 mm, NIfTI", DATA / "totalsegmentator" / "example_ct_sm.nii.gz"),
]


def previous_estimate(slices: np.ndarray) -> float:
    """The estimator this replaced: 20th percentile of the 7x7 local std over soft tissue."""
    x = torch.from_numpy(slices)[:, None]
    pool = torch.nn.functional.avg_pool2d
    mean, mean_sq = pool(x, 7, 1, 3, count_include_pad=False), pool(x * x, 7, 1, 3, count_include_pad=False)
    local = (mean_sq - mean * mean).clamp(min=0).sqrt()[:, 0]
    tissue = ((x > -150) & (x < 250)).float()
    core = (-torch.nn.functional.max_pool2d(-tissue, 7, 1, 3))[:, 0] > 0.5
    return float(np.percentile(local[core].numpy(), 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dose", type=float, default=0.25)
    parser.add_argument("--slices", type=int, default=6, help="slices per series (evenly spread)")
    parser.add_argument("--figure", type=Path, default=None, help="write the NPS plot here (PNG)")
    args = parser.parse_args()
    factor = 1.0 / args.dose - 1.0
    print(
        "| series | pixel mm | own noise HU: band / extrapolated / all (previous) | kernel width cyc/px | added HU | added / own "
        f"(goal {math.sqrt(factor):.2f}) | total / own (goal {1 / math.sqrt(args.dose):.2f}) | "
        "NPS mean freq own / added, cyc/mm | mean shift HU | s/slice |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    curves = []
    for name, path in SERIES:
        volume = read_volume(path)
        turn = reorientation(volume.direction)
        axial = turn.to_target(volume.array).astype(np.float32)
        index = np.unique(np.linspace(0, axial.shape[0] - 1, min(args.slices, axial.shape[0])).round().astype(int))
        full = np.ascontiguousarray(axial[index])
        sx, sy, _ = turn.target_spacing(volume.spacing)
        spacing = (float(sy), float(sx))
        report: dict = {}
        start = time.perf_counter()
        low = simulate_low_dose(full, spacing, args.dose, seed=0, report=report)
        seconds = (time.perf_counter() - start) / full.shape[0]
        patches = find_flat_patches(full, spacing_mm=spacing)
        added = low - full
        own, extra, total = (band_noise_std(a, spacing, patches) for a in (full, added, low))
        cut = LOW_FREQUENCY * 0.5 / max(spacing)
        f_own, nps_own = noise_power_spectrum(full, spacing, patches)
        f_add, nps_add = noise_power_spectrum(added, spacing, patches)
        tissue = (smooth(full) > -150) & (smooth(full) < 250)
        width = report.get("kernel")
        print(
            f"| {name} | {spacing[1]:.2f} | {own:.1f} / {report['full_dose_noise_hu']:.1f} / "
            f"{noise_std(full, patches):.1f} ({previous_estimate(full):.1f}) | "
            f"{width if isinstance(width, str) else f'{width:.3f}'} | {noise_std(added, patches):.1f} | {extra / own:.2f} | "
            f"{total / own:.2f} | {mean_frequency(f_own, nps_own, cut):.3f} / {mean_frequency(f_add, nps_add, cut):.3f} | "
            f"{float(added[tissue].mean()):+.2f} | {seconds:.2f} |",
            flush=True,
        )
        curves.append((name, f_own, nps_own, f_add, nps_add / factor))
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        columns = 3
        rows = math.ceil(len(curves) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
        for ax, (name, f_own, nps_own, f_add, nps_add) in zip(axes.ravel(), curves):
            ax.plot(f_own, nps_own, "k-", label="own full-dose noise")
            ax.plot(f_add, nps_add, "r--", label=f"added noise / {factor:g}")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("cycles / mm", fontsize=8)
            ax.set_ylabel("NPS, HU$^2$ mm$^2$", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes.ravel()[len(curves) :]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(
            f"Noise power spectra in flat patches: the image's own noise and the simulated {args.dose:g} dose noise"
        )
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=90)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
