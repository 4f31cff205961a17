#!/usr/bin/env python3
"""How much a model's result changes when the anatomy is mirrored or rotated in plane.

The network is not equivariant by construction: a mirrored or rotated patient should still get the
same denoised image (mirrored or rotated back). For each model and each transform (left-right and
front-back mirror, 90 and 180 degree rotations) this prints the 99.9th percentile and the largest
voxel difference, in HU, between ``T^-1(model(T(x)))`` and ``model(x)``, on simulated quarter dose
(seed 0) of the abdomen series (2 mm) and the 3 mm abdomen/pelvis crop. Goal (issue 11): at most
15 HU at the 99.9th percentile and no voxel over 100 HU.

Usage: .venv/bin/python scripts/check_equivariance.py [MODEL ...]   (default: the bundled model)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ctdenoise import DenoiseOptions, Denoiser, read_volume
from ctdenoise.orientation import reorientation
from ctdenoise.physics.lowdose import simulate_low_dose

ROOT = Path(__file__).resolve().parents[1]
SERIES = [ROOT / "data/totalsegmentator/example_ct_dicom", ROOT / "data/totalsegmentator/example_ct_sm.nii.gz"]
TRANSFORMS = {
    "mirror left-right": (lambda a: a[:, :, ::-1], lambda a: a[:, :, ::-1]),
    "mirror front-back": (lambda a: a[:, ::-1, :], lambda a: a[:, ::-1, :]),
    "rotate 90": (lambda a: np.rot90(a, 1, (1, 2)), lambda a: np.rot90(a, -1, (1, 2))),
    "rotate 180": (lambda a: np.rot90(a, 2, (1, 2)), lambda a: np.rot90(a, -2, (1, 2))),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["bundled"])
    args = parser.parse_args()
    inputs = []
    for path in SERIES:
        volume = read_volume(path)
        turn = reorientation(volume.direction)
        sx, sy, _ = turn.target_spacing(volume.spacing)
        axial = np.ascontiguousarray(turn.to_target(volume.array), dtype=np.float32)
        pixel = (float(sy), float(sx))
        inputs.append((path.name, pixel, simulate_low_dose(axial, pixel, 0.25, seed=0)))
    print("| model | series | transform | 99.9th percentile HU | largest HU |")
    print("|---|---|---|---|---|")
    for model in args.models:
        denoiser = Denoiser(None if model == "bundled" else model, DenoiseOptions(device="cpu"))
        for name, pixel, low in inputs:
            reference = denoiser.array(low, spacing=pixel)
            for label, (forward, back) in TRANSFORMS.items():
                moved = back(denoiser.array(np.ascontiguousarray(forward(low)), spacing=pixel))
                difference = np.abs(moved - reference)
                print(
                    f"| {Path(model).name} | {name} | {label} | {np.percentile(difference, 99.9):.1f} | "
                    f"{difference.max():.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
