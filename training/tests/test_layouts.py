"""Dataset layout discovery and the patient split, on trees built from real CT files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctdenoise.data.layouts import (
    ScanRecord,
    discover_dataset,
    discover_full_dose,
    discover_pair,
    seed_slice_files,
    split_by_patient,
)
from ctdenoise.errors import CTDenoiseError

DATA = Path(__file__).resolve().parents[2] / "data"
ABDOMEN = sorted((DATA / "totalsegmentator" / "example_ct_dicom").glob("CT.*"))
CHEST = sorted((DATA / "tcga_lung_ctmi").glob("*.dcm"))


def _copy_ima(sources: list[Path], folder: Path, patient: str, tag: str, thickness: int) -> None:
    """Copy real DICOM files into ``folder`` with AAPM-style .IMA names."""
    folder.mkdir(parents=True)
    for i, source in enumerate(sources, start=1):
        name = f"{patient}_{tag}_{thickness}_1.CT.0001.{i:04d}.2015.12.22.18.09.40.{i}.IMA"
        shutil.copyfile(source, folder / name)


def _by_key(records: list[ScanRecord]) -> dict[tuple, ScanRecord]:
    return {(r.patient, r.dose, r.thickness_mm, r.kernel): r for r in records}


def test_flat_aapm_layout(tmp_path: Path) -> None:
    _copy_ima(ABDOMEN[:3], tmp_path / "L067" / "full_1mm", "L067", "FD", 1)
    _copy_ima(ABDOMEN[:3], tmp_path / "L067" / "quarter_1mm", "L067", "QD", 1)
    _copy_ima(CHEST[:4], tmp_path / "L096" / "full_3mm", "L096", "FD", 3)
    _copy_ima(CHEST[4:8], tmp_path / "L096" / "quarter_3mm", "L096", "QD", 3)
    _copy_ima(CHEST[8:11], tmp_path / "L109" / "quarter_1mm", "L109", "QD", 1)
    (tmp_path / "L109" / "full_1mm").mkdir()  # no DICOM inside: not a scan
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not data")

    records = discover_dataset(tmp_path)

    found = _by_key(records)
    assert set(found) == {
        ("L067", "full", 1.0, None),
        ("L067", "low", 1.0, None),
        ("L096", "full", 3.0, None),
        ("L096", "low", 3.0, None),
        ("L109", "low", 1.0, None),
    }
    assert {r.source_layout for r in records} == {"aapm"}
    assert found[("L067", "low", 1.0, None)].dose_fraction == 0.25
    assert found[("L067", "full", 1.0, None)].dose_fraction == 1.0
    assert found[("L067", "full", 1.0, None)].pair_key == found[("L067", "low", 1.0, None)].pair_key
    assert found[("L096", "full", 3.0, None)].pair_key == found[("L096", "low", 3.0, None)].pair_key
    assert found[("L067", "full", 1.0, None)].pair_key != found[("L096", "full", 3.0, None)].pair_key
    assert found[("L109", "low", 1.0, None)].pair_key is None
    folder = found[("L096", "low", 3.0, None)].path
    assert folder == (tmp_path / "L096" / "quarter_3mm").resolve()
    first = sorted(folder.iterdir())[0]
    assert pydicom.dcmread(first).Modality == "CT"
    assert all(r.split is None for r in records)
    assert discover_dataset(tmp_path, layout="aapm") == records


def test_nested_official_aapm_layout(tmp_path: Path) -> None:
    base = tmp_path / "Training_Image_Data"
    _copy_ima(ABDOMEN[:3], base / "1mm B30" / "FD_1mm" / "L067" / "full_1mm", "L067", "FD", 1)
    _copy_ima(ABDOMEN[3:6], base / "1mm B30" / "QD_1mm" / "L067" / "quarter_1mm", "L067", "QD", 1)
    _copy_ima(CHEST[:3], base / "3mm D45" / "FD_3mm" / "L067" / "full_3mm", "L067", "FD", 3)
    _copy_ima(CHEST[3:6], base / "3mm D45" / "QD_3mm" / "L067" / "quarter_3mm", "L067", "QD", 3)
    _copy_ima(CHEST[6:9], base / "3mm D45" / "QD_3mm" / "L096" / "quarter_3mm", "L096", "QD", 3)

    found = _by_key(discover_dataset(tmp_path))

    assert set(found) == {
        ("L067", "full", 1.0, "B30"),
        ("L067", "low", 1.0, "B30"),
        ("L067", "full", 3.0, "D45"),
        ("L067", "low", 3.0, "D45"),
        ("L096", "low", 3.0, "D45"),
    }
    b30 = found[("L067", "full", 1.0, "B30")].pair_key
    assert b30 is not None and b30 == found[("L067", "low", 1.0, "B30")].pair_key
    assert found[("L067", "full", 3.0, "D45")].pair_key == found[("L067", "low", 3.0, "D45")].pair_key != b30
    assert found[("L096", "low", 3.0, "D45")].pair_key is None


def test_duplicate_aapm_scan_is_refused(tmp_path: Path) -> None:
    _copy_ima(ABDOMEN[:2], tmp_path / "copy1" / "L067" / "full_1mm", "L067", "FD", 1)
    _copy_ima(ABDOMEN[:2], tmp_path / "copy2" / "L067" / "full_1mm", "L067", "FD", 1)
    with pytest.raises(CTDenoiseError, match="keep only one"):
        discover_dataset(tmp_path)


def test_unrecognised_root_names_the_expected_layouts(tmp_path: Path) -> None:
    shutil.copyfile(CHEST[0], tmp_path / "slice.dcm")
    with pytest.raises(CTDenoiseError, match="full_1mm.*full_dose.*--full DIR --low DIR"):
        discover_dataset(tmp_path)
    with pytest.raises(CTDenoiseError, match="not a folder"):
        discover_dataset(tmp_path / "missing")
    with pytest.raises(CTDenoiseError, match="unknown dataset layout"):
        discover_dataset(tmp_path, layout="mayo")


def _write_seed(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    hu = pydicom.dcmread(CHEST[0]).pixel_array[:8, :8].astype(np.float32) - 1024.0
    for name in names:
        np.save(folder / f"{name}.npy", 0.0192 * (1.0 + hu / 1000.0))


def test_seed_layout(tmp_path: Path) -> None:
    _write_seed(tmp_path / "train" / "full_dose", ["0", "1", "2", "10"])
    _write_seed(tmp_path / "train" / "quarter_dose", ["0", "1", "2"])
    _write_seed(tmp_path / "test" / "full_dose", ["5", "6"])
    _write_seed(tmp_path / "test" / "quarter_dose", ["5", "6"])

    records = discover_dataset(tmp_path)

    assert [(r.split, r.dose, r.dose_fraction) for r in records] == [
        ("train", "full", 1.0),
        ("train", "low", 0.25),
        ("test", "full", 1.0),
        ("test", "low", 0.25),
    ]
    assert {r.source_layout for r in records} == {"seed"}
    assert records[0].pair_key is None and records[1].pair_key is None  # different slice sets
    assert records[2].pair_key == records[3].pair_key == "seed/test"
    assert {r.patient for r in records if r.split == "train"}.isdisjoint(
        {r.patient for r in records if r.split == "test"}
    )
    assert [p.stem for p in seed_slice_files(records[0].path)] == ["0", "1", "2", "10"]
    with pytest.raises(CTDenoiseError, match="no aapm dataset layout"):
        discover_dataset(tmp_path, layout="aapm")


def test_generic_pair_of_folders(tmp_path: Path) -> None:
    nifti = DATA / "totalsegmentator" / "example_ct_sm.nii.gz"
    full, low = tmp_path / "full", tmp_path / "low"
    for folder in (full, low):
        folder.mkdir()
        shutil.copyfile(nifti, folder / "case1.nii.gz")
        series = folder / "case3"
        series.mkdir()
        for source in ABDOMEN[:2]:
            shutil.copyfile(source, series / source.name)
        (folder / "notes.txt").write_text("ignored")
    shutil.copyfile(nifti, full / "case2.nii.gz")
    shutil.copyfile(CHEST[0], low / "case4.dcm")

    records = discover_pair(full, low, low_dose_fraction=0.5)

    found = {(r.patient, r.dose): r for r in records}
    assert set(found) == {
        ("case1", "full"),
        ("case1", "low"),
        ("case2", "full"),
        ("case3", "full"),
        ("case3", "low"),
        ("case4", "low"),
    }
    assert found[("case1", "full")].pair_key == found[("case1", "low")].pair_key == "case1"
    assert found[("case3", "low")].path == (low / "case3").resolve()
    assert found[("case3", "low")].dose_fraction == 0.5
    assert found[("case2", "full")].pair_key is None and found[("case4", "low")].pair_key is None

    only_full = discover_full_dose(full)
    assert sorted(r.patient for r in only_full) == ["case1", "case2", "case3"]
    assert {(r.dose, r.pair_key, r.source_layout) for r in only_full} == {("full", None, "full_dose")}

    shutil.copyfile(nifti, full / "case1.nrrd")
    with pytest.raises(CTDenoiseError, match="two volumes named 'case1'"):
        discover_pair(full, low)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CTDenoiseError, match="no CT volumes"):
        discover_full_dose(tmp_path / "empty")
    with pytest.raises(CTDenoiseError, match="between 0 and 1"):
        discover_pair(full, low, low_dose_fraction=1.0)


def _records(patients: list[str], split: str | None = None) -> list[ScanRecord]:
    return [
        ScanRecord(
            p,
            dose,
            fraction,
            Path(f"/data/{p}/{dose}_{mm}mm"),
            float(mm),
            split=split,
            source_layout="aapm",
            pair_key=f"{p}/{mm}",
        )
        for p in patients
        for mm in (1, 3)
        for dose, fraction in (("full", 1.0), ("low", 0.25))
    ]


AAPM_PATIENTS = ["L067", "L096", "L109", "L143", "L192", "L286", "L291", "L310", "L333", "L506"]


def test_split_by_patient_keeps_patients_whole_and_is_deterministic() -> None:
    records = _records(AAPM_PATIENTS)

    split = split_by_patient(records, val_fraction=0.2, seed=3)

    per_patient: dict[str, set[str]] = {}
    for record in split:
        per_patient.setdefault(record.patient, set()).add(record.split or "")
    assert all(len(s) == 1 for s in per_patient.values())
    val = sorted(p for p, s in per_patient.items() if s == {"val"})
    assert len(val) == 2
    assert split == split_by_patient(records, val_fraction=0.2, seed=3)
    other_seeds = {
        tuple(sorted({r.patient for r in split_by_patient(records, seed=s) if r.split == "val"})) for s in range(6)
    }
    assert len(other_seeds) > 1
    assert [(r.patient, r.dose, r.path) for r in split] == [(r.patient, r.dose, r.path) for r in records]


def test_split_by_patient_explicit_layout_and_edge_cases() -> None:
    records = _records(AAPM_PATIENTS)
    explicit = split_by_patient(records, val_patients=["L333", "L506"])
    assert {r.patient for r in explicit if r.split == "val"} == {"L333", "L506"}
    assert {r.patient for r in explicit if r.split == "train"} == set(AAPM_PATIENTS) - {"L333", "L506"}
    with pytest.raises(CTDenoiseError, match="L999"):
        split_by_patient(records, val_patients=["L999"])
    with pytest.raises(CTDenoiseError, match="at least one patient"):
        split_by_patient(records, val_patients=AAPM_PATIENTS)

    seed_like = _records(["seed-train"], "train") + _records(["seed-test"], "test")
    assert {(r.patient, r.split) for r in split_by_patient(seed_like)} == {
        ("seed-train", "train"),
        ("seed-test", "val"),
    }

    single = split_by_patient(_records(["L067"]), val_fraction=0.5)
    assert {r.split for r in single} == {"train"}
    two = split_by_patient(_records(["L067", "L096"]), val_fraction=0.1)
    assert sorted(r.split or "" for r in two if r.dose == "full" and r.thickness_mm == 1.0) == ["train", "val"]
    assert {r.split for r in split_by_patient(records, val_fraction=0.0)} == {"train"}
