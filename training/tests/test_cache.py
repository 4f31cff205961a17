"""The prepared training cache, built from real CT files."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctdenoise.data.cache import load_cache, prepare_cache
from ctdenoise.data.layouts import discover_dataset, discover_full_dose, discover_pair, split_by_patient
from ctdenoise.errors import CTDenoiseError

DATA = Path(__file__).resolve().parents[2] / "data"
ABDOMEN = sorted((DATA / "totalsegmentator" / "example_ct_dicom").glob("CT.*"))
NIFTI = DATA / "totalsegmentator" / "example_ct_sm.nii.gz"


def _hu(path: Path) -> np.ndarray:
    """HU of one real DICOM slice, read with pydicom (independent of the package's reader)."""
    ds = pydicom.dcmread(path)
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def _abdomen_series_sorted(count: int) -> list[Path]:
    """``count`` consecutive abdomen slices, ordered by position along the body (ascending z)."""

    def z(path: Path) -> float:
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    return sorted(ABDOMEN, key=z)[:count]


def _seed_tree(root: Path, slices: list[np.ndarray]) -> None:
    """Seed layout: train and test, both doses, attenuation slices named 0.npy, 1.npy, ..."""
    for split in ("train", "test"):
        for dose in ("full_dose", "quarter_dose"):
            folder = root / split / dose
            folder.mkdir(parents=True)
            for i, hu in enumerate(slices):
                np.save(folder / f"{i}.npy", (0.0192 * (1.0 + hu.astype(np.float64) / 1000.0)).astype(np.float32))


def test_seed_layout_cache_matches_original_hu(tmp_path: Path) -> None:
    slices = [_hu(p) for p in ABDOMEN[:3]]
    slices = slices + [slices[0] + 2000.0]  # some bone-like values above 3071 to check the clip
    _seed_tree(tmp_path / "seed", slices)
    records = split_by_patient(discover_dataset(tmp_path / "seed"))
    calls: list[tuple[int, int, str]] = []

    cache = prepare_cache(records, tmp_path / "cache", progress=lambda d, t, m: calls.append((d, t, m)))

    assert [c[:2] for c in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(cache.volumes()) == 4
    for entry in cache.volumes():
        stored = cache.array(entry)
        assert isinstance(stored, np.memmap) and stored.dtype == np.int16
        assert stored.shape == (4, 512, 512) == entry.shape
        expected = np.clip(np.stack(slices), -1024, 3071)
        assert np.abs(stored.astype(np.float32) - expected).max() <= 1.0
        assert entry.spacing is None and entry.simulated is False and entry.source_layout == "seed"
    assert cache.array(cache.volumes()[0]).max() == 3071
    assert [(e.split, e.dose) for e in cache.volumes()] == [
        ("train", "full"),
        ("train", "low"),
        ("val", "full"),
        ("val", "low"),
    ]
    assert len(cache.pairs("val")) == 1 and len(cache.pairs("train")) == 1
    summary = cache.summary()
    assert summary["patients"] == {"train": 1, "val": 1}
    assert summary["slices"] == {"full": 8, "low": 8}
    assert summary["low_dose"] == "real" and summary["low_dose_fractions"] == [0.25]
    assert summary["layout"] == ["seed"] and summary["spacing_mm"] is None


def _aapm_tree(root: Path, files: list[Path]) -> None:
    for patient in ("L067", "L096"):
        for dose, tag in (("full_1mm", "FD"), ("quarter_1mm", "QD")):
            folder = root / "1mm B30" / f"{tag}_1mm" / patient / dose
            folder.mkdir(parents=True)
            for i, source in enumerate(files, start=1):
                shutil.copyfile(source, folder / f"{patient}_{tag}_1_1.CT.0001.{i:04d}.2015.12.22.IMA")


def test_aapm_cache_from_real_dicom_and_index(tmp_path: Path) -> None:
    files = _abdomen_series_sorted(3)
    _aapm_tree(tmp_path / "aapm", files)
    records = split_by_patient(discover_dataset(tmp_path / "aapm"), val_patients=["L096"])

    cache = prepare_cache(records, tmp_path / "cache")

    assert len(cache.volumes()) == 4
    full, low = cache.pairs("train")[0]
    assert (full.patient, full.dose, low.dose, full.kernel, full.thickness_mm) == ("L067", "full", "low", "B30", 1.0)
    assert full.shape == (3, 512, 512)
    assert full.spacing is not None and 0.5 < full.spacing[0] < 1.5
    expected = np.stack([_hu(p) for p in files])
    stored = cache.array(full).astype(np.float32)
    assert np.array_equal(np.sort(stored.ravel()), np.sort(np.clip(expected, -1024, 3071).ravel()))
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["version"] == 1 and index["created_with"].startswith("ctdenoise ")
    entry = index["volumes"][0]
    assert set(entry) >= {
        "id",
        "patient",
        "dose",
        "dose_fraction",
        "split",
        "pair_key",
        "shape",
        "spacing",
        "kernel",
        "thickness_mm",
        "source",
        "source_layout",
        "simulated",
    }
    assert Path(entry["source"]).name == "full_1mm"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["index.json", "volumes"]
    assert cache.summary()["patients"] == {"train": 1, "val": 1}
    assert "L067" not in json.dumps(cache.summary())  # no patient IDs travel into model metadata
    assert cache.summary()["kernels"] == ["B30"]


def test_existing_cache_is_refused_unless_overwrite(tmp_path: Path) -> None:
    slices = [_hu(ABDOMEN[0])[:64, :64]]
    _seed_tree(tmp_path / "seed", slices)
    records = discover_dataset(tmp_path / "seed")
    prepare_cache(records, tmp_path / "cache")
    (tmp_path / "cache" / "mine.txt").write_text("user file")

    with pytest.raises(CTDenoiseError, match="already holds a training cache.*overwrite"):
        prepare_cache(records, tmp_path / "cache")

    cache = prepare_cache(records[:2], tmp_path / "cache", overwrite=True)
    assert len(cache.volumes()) == 2
    assert len(list((tmp_path / "cache" / "volumes").iterdir())) == 2
    assert (tmp_path / "cache" / "mine.txt").read_text() == "user file"


def test_load_cache_round_trip_and_validation(tmp_path: Path) -> None:
    _seed_tree(tmp_path / "seed", [_hu(p)[100:164, 200:264] for p in ABDOMEN[:2]])
    prepared = prepare_cache(split_by_patient(discover_dataset(tmp_path / "seed")), tmp_path / "cache")

    loaded = load_cache(tmp_path / "cache" / "index.json")
    assert loaded.entries == prepared.entries
    for entry in loaded.volumes():
        assert np.array_equal(loaded.array(entry), prepared.array(entry))
    assert len(pickle.dumps(loaded)) < 20_000  # memmaps are reopened, never pickled
    restored = pickle.loads(pickle.dumps(loaded))
    assert np.array_equal(restored.array(restored.entries[0]), loaded.array(loaded.entries[0]))

    with pytest.raises(CTDenoiseError, match="not a prepared training cache"):
        load_cache(tmp_path / "seed")
    index_path = tmp_path / "cache" / "index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(CTDenoiseError, match="version 99"):
        load_cache(tmp_path / "cache")
    index["volumes"][0]["shape"] = [3, 64, 64]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CTDenoiseError, match="the index says int16"):
        load_cache(tmp_path / "cache")
    index_path.write_text(json.dumps({**index, "volumes": index["volumes"][1:]}))
    (tmp_path / "cache" / "volumes" / f"{index['volumes'][1]['id']}.npy").unlink()
    with pytest.raises(CTDenoiseError, match="is missing"):
        load_cache(tmp_path / "cache")


def test_generic_pair_of_nifti_volumes(tmp_path: Path) -> None:
    from ctdenoise.io import read_volume, write_volume

    volume = read_volume(NIFTI)
    for folder, offset in (("full", 0.0), ("low", 25.0)):
        (tmp_path / folder).mkdir()
        write_volume(volume.with_array(volume.array + np.float32(offset)), tmp_path / folder / "case1.nii.gz")
    write_volume(volume, tmp_path / "full" / "case2.nii.gz")
    records = discover_pair(tmp_path / "full", tmp_path / "low")

    cache = prepare_cache(records, tmp_path / "cache")

    # stored as axial slices in the LPS orientation the models see (the NIfTI is stored RAS)
    reference = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(NIFTI)), "LPS")).astype(np.float32)
    pairs = cache.pairs()
    assert [(f.patient, low.patient) for f, low in pairs] == [("case1", "case1")]
    full, low = pairs[0]
    assert full.shape == reference.shape
    assert full.spacing == pytest.approx((3.0, 3.0, 3.0))
    np.testing.assert_array_equal(cache.array(full), np.clip(reference, -1024, 3071))
    assert cache.info["orientation"] == "LPS"
    body = reference > -1000
    difference = cache.array(low).astype(np.float32) - cache.array(full).astype(np.float32)
    assert np.abs(difference[body] - 25.0).max() <= 1.0
    unpaired = [e for e in cache.volumes() if e.patient == "case2"]
    assert len(unpaired) == 1 and unpaired[0].pair_key is None


def test_simulated_low_dose_for_full_dose_only_series(tmp_path: Path) -> None:
    series = tmp_path / "full" / "abdomen"
    series.mkdir(parents=True)
    for source in _abdomen_series_sorted(3):
        shutil.copyfile(source, series / source.name)
    records = split_by_patient(discover_full_dose(tmp_path / "full"))
    calls: list[tuple[int, int, str]] = []

    cache = prepare_cache(
        records, tmp_path / "cache", simulate_dose=0.25, seed=7, progress=lambda d, t, m: calls.append((d, t, m))
    )

    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]
    full, low = cache.pairs("train")[0]
    assert (full.simulated, low.simulated, low.dose, low.dose_fraction) == (False, True, "low", 0.25)
    assert full.pair_key == low.pair_key and full.shape == low.shape == (3, 512, 512)
    a = cache.array(full).astype(np.float32)
    b = cache.array(low).astype(np.float32)
    tissue = (a > -200) & (a < 200)
    assert np.std(b - a) > 5.0  # noise was added
    assert abs(float(np.mean(b[tissue] - a[tissue]))) < 10.0  # CT numbers kept
    summary = cache.summary()
    assert summary["low_dose"] == "simulated" and summary["volumes"] == {"full": 1, "low": 1}
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["simulation"]["dose"] == 0.25
    again = prepare_cache(records, tmp_path / "cache2", simulate_dose=0.25, seed=7)
    assert np.array_equal(again.array(again.pairs("train")[0][1]), cache.array(low))  # seeded per volume


def test_seed_layout_simulation_uses_the_given_pixel_spacing(tmp_path: Path) -> None:
    _seed_tree(tmp_path / "seed", [_hu(p)[96:224, 96:352] for p in ABDOMEN[:2]])
    records = [r for r in discover_dataset(tmp_path / "seed") if r.dose == "full"]
    with pytest.raises(CTDenoiseError, match="seed pixel spacing must be a positive"):
        prepare_cache(records, tmp_path / "bad", simulate_dose=0.25, seed_pixel_spacing_mm=0)
    lows = {}
    for spacing in (0.7, 2.0):
        cache = prepare_cache(
            records, tmp_path / f"c{spacing}", simulate_dose=0.25, seed=1, seed_pixel_spacing_mm=spacing
        )
        assert cache.info["simulation"]["seed_pixel_spacing_mm"] == spacing
        lows[spacing] = np.asarray(cache.array(cache.volumes(dose="low")[0]), dtype=np.float32)
    assert not np.array_equal(lows[0.7], lows[2.0])
