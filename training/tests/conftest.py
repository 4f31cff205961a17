"""Shared fixtures: where the real CT test data lives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parents[2] / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The repository's read-only real CT data folder (``<repo>/data``)."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"test data folder {DATA_DIR} is missing")
    return DATA_DIR


@pytest.fixture(scope="session")
def dicom_series_dir(data_dir: Path) -> Path:
    """20-slice JPEG 2000 abdomen CT series (Siemens, file names without a usual extension)."""
    return data_dir / "totalsegmentator" / "example_ct_dicom"


@pytest.fixture(scope="session")
def dicom_subset(dicom_series_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 4 consecutive files of the real abdomen series (keeps the file tests fast)."""
    from ctdenoise.io import read_volume

    folder = tmp_path_factory.mktemp("series")
    for source in sorted(dicom_series_dir.iterdir(), key=lambda p: read_volume(p).origin[2])[8:12]:
        shutil.copy(source, folder / source.name)
    return folder


@pytest.fixture(scope="session")
def tilted_series_dir(data_dir: Path) -> Path:
    """10-slice GE head CT with 18.5 deg gantry tilt and irregular slice gaps (plus a LICENSE file)."""
    return data_dir / "dcm_qa_ct_ge_head"


@pytest.fixture(scope="session")
def nifti_path(data_dir: Path) -> Path:
    """Small abdomen CT volume as .nii.gz (int16 HU, 3 mm voxels)."""
    return data_dir / "totalsegmentator" / "example_ct_sm.nii.gz"
