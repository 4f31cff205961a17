#!/usr/bin/env python3
"""Training sources of the bundled supervised model: every full-dose slice in data/ whose patient
is held out nowhere, at its own pixel size and resampled in-plane to 1.5 and 3.0 mm, plus the GE
head series; the abdomen series stays the validation series.

The evaluation (scripts/evaluate_models.sh) holds out 14 TCGA patients; TCGA-17-Z058 also has
ID_0010 and ID_0013, so those two stay out as well. Resampling (Gaussian anti-aliasing with sigma
0.5 * sqrt(s^2 - s0^2) mm, then linear interpolation) lets the model meet the coarse pixels of
thick or cropped volumes, where the CycleGAN trained on 0.55-0.98 mm pixels helped least.
Symbolic links for the originals, int16 NIfTI for the resampled slices.

``--extra-tcga DIR`` (the whole 100-slice TCGA set, ../shared/data/tcga_lung_ctmi; the repository
keeps 32 of them) adds the slices not in DATA_DIR whose patient (DICOM PatientID) the evaluation
does not hold out: 54 slices of 36 patients. Every third of those patients (sorted IDs, from the
second) is for validation, their names are written to OUT_DIR/validation.txt for ``prepare
--val-patients``: weights are chosen there, never on the held-out evaluation.

    python scripts/supervised_sources.py DATA_DIR OUT_DIR [--extra-tcga DIR]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import SimpleITK as sitk

HELD_OUT = {
    "0004",
    "0005",
    "0009",
    "0014",
    "0022",
    "0023",
    "0025",
    "0029",
    "0040",
    "0042",
    "0063",
    "0067",
    "0081",
    "0088",
    "0010",
    "0013",
}
"""TCGA image numbers whose patients are in the evaluation (ID_0010 and ID_0013 share ID_0067's patient)."""
PIXELS_MM = (1.5, 3.0)


def resampled(image: sitk.Image, spacing: float) -> sitk.Image:
    """The single-slice ``image`` with ``spacing`` mm pixels, anti-aliased, rounded to int16."""
    own = image.GetSpacing()[0]
    plane = sitk.Cast(image[:, :, 0], sitk.sitkFloat32)
    smooth = sitk.JoinSeries(sitk.SmoothingRecursiveGaussian(plane, 0.5 * math.sqrt(spacing**2 - own**2)))
    smooth.CopyInformation(image)
    size = [round(image.GetSize()[0] * own / spacing), round(image.GetSize()[1] * own / spacing), image.GetSize()[2]]
    corner = 0.5 * spacing / own - 0.5  # the new grid covers the same field of view
    origin = image.TransformContinuousIndexToPhysicalPoint((corner, corner, 0))
    out = sitk.Resample(
        smooth,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        (spacing, spacing, image.GetSpacing()[2]),
        image.GetDirection(),
        -1024.0,
        sitk.sitkFloat32,
    )
    return sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the repository's data/ folder")
    parser.add_argument("out", type=Path, help="folder to fill (created)")
    parser.add_argument("--extra-tcga", type=Path, help="the 100-slice TCGA folder: add the slices data/ lacks")
    args = parser.parse_args()
    data, out = args.data.resolve(), args.out
    out.mkdir(parents=True, exist_ok=True)

    def link(target: Path, name: str) -> None:
        (out / name).unlink(missing_ok=True)
        os.symlink(target, out / name)

    link(data / "totalsegmentator" / "example_ct_dicom", "abdomen")
    link(data / "dcm_qa_ct_ge_head", "head")
    singles = sorted(data.glob("covid19_ny_sbu/*/axial/*.dcm"))
    singles += [f for f in sorted(data.glob("tcga_lung_ctmi/*.dcm")) if f.name[3:7] not in HELD_OUT]
    validation: list[Path] = []
    if args.extra_tcga is not None:
        extra, validation = extra_tcga_slices(data / "tcga_lung_ctmi", args.extra_tcga.resolve())
        singles += extra
    names = []
    for path in singles:
        stem = f"covid_{path.parts[-3]}_{path.stem}" if "covid" in path.parts[-4] else f"tcga_{path.stem}"
        link(path, stem + ".dcm")
        image = sitk.ReadImage(str(path))
        for spacing in PIXELS_MM:
            sitk.WriteImage(resampled(image, spacing), str(out / f"{stem}_px{spacing:.1f}.nii.gz"))
        if path in validation:
            names += [stem] + [f"{stem}_px{spacing:.1f}" for spacing in PIXELS_MM]
    if args.extra_tcga is not None:
        (out / "validation.txt").write_text(" ".join(["abdomen"] + names) + "\n")
    print(
        f"{len(singles)} slices at 1 + {len(PIXELS_MM)} pixel sizes ({len(validation)} for validation), "
        f"the head series and the abdomen in {out}"
    )


def extra_tcga_slices(ours: Path, everything: Path) -> tuple[list[Path], list[Path]]:
    """The slices of ``everything`` that ``ours`` lacks and whose patient is not held out, and the
    validation share of them (every third patient)."""
    import pydicom

    def patient(path: Path) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)

    if not everything.is_dir():
        raise SystemExit(f"error: {everything} is not a folder: pass the 100-slice TCGA folder (see data/README.md)")
    held = {patient(f) for f in ours.glob("*.dcm") if f.name[3:7] in HELD_OUT}
    have = {f.name for f in ours.glob("*.dcm")}
    extra = [(patient(f), f) for f in sorted(everything.glob("*.dcm")) if f.name not in have]
    extra = [(p, f) for p, f in extra if p not in held]
    patients = sorted({p for p, _ in extra})
    chosen = set(patients[1::3])
    return [f for _, f in extra], [f for p, f in extra if p in chosen]


if __name__ == "__main__":
    main()
