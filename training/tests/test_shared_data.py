"""Every real CT in the project's shared data folder (../shared/data beside the checkout) must load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctdenoise.io import read_volume

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _targets() -> list[Path]:
    if not SHARED.is_dir():
        return []
    ts = SHARED / "totalsegmentator"
    targets = [ts / "example_ct_dicom", SHARED / "dcm_qa_ct_ge_head", *sorted(ts.glob("*.nii.gz"))]
    targets += sorted((SHARED / "tcga_lung_ctmi").glob("*.dcm"))
    targets += sorted((SHARED / "covid19_ny_sbu").glob("*/*/*.dcm"))
    return targets


@pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data is not beside this checkout (the repo's own data/ is tested elsewhere)"
)
def test_every_shared_ct_loads_as_plausible_hu() -> None:
    targets = _targets()
    assert len(targets) >= 160
    for path in targets:
        volume = read_volume(path)
        array = volume.array
        assert array.dtype == np.float32 and array.ndim == 3, path
        assert np.isfinite(array).all(), path
        assert array.min() < -500 and array.max() > 0, path  # air and tissue present: HU, not raw values
        assert all(s > 0 for s in volume.spacing), path
