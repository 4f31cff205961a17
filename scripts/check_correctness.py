#!/usr/bin/env python3
"""Print the engine-correctness figures on real CT, through the `ctdenoise denoise` command itself.

* orientation: ``example_ct_sm`` saved sagittally (``ASL``), coronally (``PIL``) and flipped (``LPI``)
  against the same volume saved axially (``LPS``): 99.9th percentile and largest voxel difference;
* padding: on ``tcga_lung_ctmi/ID_0008``, padding voxels (-3024 HU) changed, and whether the DICOM
  output keeps ``PixelPaddingValue``;
* spikes: the largest voxel change on the 3 mm ``example_ct_sm`` (outside the model's training data).

Usage: .venv/bin/python scripts/check_correctness.py [--runtime auto|torch|onnxruntime]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "data" / "totalsegmentator" / "example_ct_sm.nii.gz"
PADDED = ROOT / "data" / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm"
CTDENOISE = str(Path(sys.executable).parent / "ctdenoise")


def denoise(source: Path, target: Path, runtime: str) -> None:
    done = subprocess.run(
        [CTDENOISE, "denoise", str(source), str(target), "--progress", "none", "--runtime", runtime],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="auto")
    runtime = parser.parse_args().runtime
    folder = Path(tempfile.mkdtemp(prefix="ctdenoise-check-"))
    image = sitk.ReadImage(str(SMALL))
    results = {}
    for code in ("LPS", "ASL", "PIL", "LPI"):
        sitk.WriteImage(sitk.DICOMOrient(image, code), str(folder / f"{code}.nii.gz"))
        denoise(folder / f"{code}.nii.gz", folder / f"{code}_out.nii.gz", runtime)
        results[code] = sitk.GetArrayFromImage(
            sitk.DICOMOrient(sitk.ReadImage(str(folder / f"{code}_out.nii.gz")), "LPS")
        )
    axial = results["LPS"].astype(np.float64)
    for code, label in (("ASL", "sagittal"), ("PIL", "coronal"), ("LPI", "flipped")):
        difference = np.abs(results[code] - axial)
        print(
            f"orientation, {label} ({code}) against axial: 99.9th percentile {np.percentile(difference, 99.9):.2f} HU, "
            f"largest {difference.max():.2f} HU"
        )
    denoise(PADDED, folder / "padded", runtime)
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(PADDED))).astype(np.float64)
    written = next((folder / "padded").iterdir())
    output = sitk.GetArrayFromImage(sitk.ReadImage(str(written))).astype(np.float64)
    padding = source <= -3024
    header = pydicom.dcmread(written, stop_before_pixels=True)
    print(
        f"padding: {int(np.count_nonzero(output[padding] != source[padding]))} of {int(padding.sum()):,} padding voxels "
        f"changed; output minimum {output.min():g} HU (input {source.min():g}); DICOM PixelPaddingValue "
        f"{header.get('PixelPaddingValue', 'missing')} (stored, intercept {header.RescaleIntercept})"
    )
    before = sitk.GetArrayFromImage(image).astype(np.float64)
    after = sitk.GetArrayFromImage(
        sitk.DICOMOrient(
            sitk.ReadImage(str(folder / "LPS_out.nii.gz")),
            sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()),
        )
    ).astype(np.float64)
    change = np.abs(after - before)
    where = np.unravel_index(np.argmax(change), change.shape)
    print(
        f"3 mm example_ct_sm: largest change {change.max():.0f} HU (voxel {before[where]:.0f} -> {after[where]:.0f} HU); "
        f"{int(np.count_nonzero(change >= 249.5))} voxels at the change limit"
    )


if __name__ == "__main__":
    main()
