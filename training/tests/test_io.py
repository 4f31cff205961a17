"""Reading and writing CT volumes on the real test data: DICOM (JPEG 2000, tilted GE, single slices), NIfTI."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from ctdenoise.errors import CTDenoiseError
from ctdenoise.io import Volume, read_volume, validate_output_path, write_volume

PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
)


def _hashes(paths: list[str] | list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]


def _normal_gaps(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Slice positions and their gaps along the slice normal, straight from the headers."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    points = np.array([h.ImagePositionPatient for h in headers], dtype=float)
    return points, np.diff(points @ normal)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if "ctdenoise-tmp" in p.name]


@pytest.fixture(scope="module")
def series_volume(dicom_series_dir: Path) -> Volume:
    return read_volume(dicom_series_dir)


@pytest.fixture(scope="module")
def tilted_volume(tilted_series_dir: Path) -> Volume:
    return read_volume(tilted_series_dir)


# ------------------------------------------------------------------------------------------ reading


def test_jpeg2000_series_folder(dicom_series_dir: Path) -> None:
    volume = read_volume(dicom_series_dir)
    assert volume.shape == (20, 512, 512) and volume.array.dtype == np.float32
    assert volume.array.min() == -1024.0 and volume.array.max() == 1839.0  # stored 0.. + intercept -1024
    assert volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    meta = volume.metadata
    assert meta["format"] == "dicom" and meta["modality"] == "CT" and meta["manufacturer"] == "SIEMENS"
    assert meta["kernel"] == "Br38f\\3" and meta["kv"] == 120.0 and meta["slice_thickness"] == 3.0
    assert meta["warnings"] == []
    points, gaps = _normal_gaps(meta["dicom_files"])
    assert len(meta["dicom_files"]) == 20 and np.all(gaps > 0)
    np.testing.assert_allclose(meta["slice_positions"], points)
    assert volume.origin == pytest.approx(tuple(points[0]))


def test_order_follows_position_not_name_or_instance_number(tmp_path: Path, tilted_volume: Volume) -> None:
    files = tilted_volume.metadata["dicom_files"]
    numbers = np.random.default_rng(0).permutation(len(files)) + 1
    for k, (name, number) in enumerate(zip(files, numbers)):
        ds = pydicom.dcmread(name)
        ds.InstanceNumber = int(number)
        ds.save_as(tmp_path / f"{len(files) - k:02d}.dcm")  # names sort in reverse of position
    shuffled = read_volume(tmp_path)
    np.testing.assert_array_equal(shuffled.array, tilted_volume.array)
    np.testing.assert_allclose(shuffled.metadata["slice_positions"], tilted_volume.metadata["slice_positions"])


def test_gantry_tilted_series(tilted_series_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    volume = read_volume(tilted_series_dir)  # the folder also holds a LICENSE text file
    assert "Non uniform" not in capfd.readouterr().err
    meta = volume.metadata
    assert volume.shape == (10, 512, 512)
    assert meta["gantry_tilt_deg"] == pytest.approx(18.5)
    points, gaps = _normal_gaps(meta["dicom_files"])
    assert np.all(gaps > 0) and gaps.min() == pytest.approx(1.081, abs=1e-3)
    assert np.all(np.diff(np.array(meta["slice_positions"])[:, 2]) > 0)
    np.testing.assert_allclose(meta["slice_positions"], points)
    assert volume.spacing[2] == pytest.approx(float(np.median(gaps)))
    assert volume.origin == pytest.approx(tuple(points[0]))
    axes = np.array(volume.direction).reshape(3, 3)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-6)
    assert axes[:, 1] == pytest.approx([0.0, 0.9483237, -0.3173047], abs=1e-6)
    assert any("gantry tilt 18.5" in w for w in meta["warnings"])
    assert any("non-uniform slice spacing" in w for w in meta["warnings"])
    assert -1500 <= volume.array.min() and volume.array.max() <= 2121
    assert volume.array.min() == -1500  # padding value kept as is


def test_single_dicom_file_is_one_slice(tmp_path: Path, series_volume: Volume) -> None:
    name = series_volume.metadata["dicom_files"][7]
    volume = read_volume(name)
    assert volume.shape == (1, 512, 512)
    assert volume.metadata["dicom_files"] == [name]
    np.testing.assert_array_equal(volume.array[0], series_volume.array[7])
    assert volume.origin == pytest.approx(tuple(series_volume.metadata["slice_positions"][7]))
    for alias in ("L067_FD_1_1.CT.0001.0008.IMA", "slice0008"):  # Siemens .IMA and no extension
        shutil.copy(name, tmp_path / alias)
        np.testing.assert_array_equal(read_volume(tmp_path / alias).array, volume.array)


def test_simpleitk_and_pydicom_agree_on_jpeg2000(series_volume: Volume) -> None:
    name = series_volume.metadata["dicom_files"][0]
    ds = pydicom.dcmread(name)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    expected = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(read_volume(name).array[0], expected.astype(np.float32))


@pytest.mark.parametrize("pattern", ["tcga_lung_ctmi/*.dcm", "covid19_ny_sbu/*/axial/*.dcm"])
def test_single_slice_collections(data_dir: Path, pattern: str) -> None:
    files = sorted(data_dir.glob(pattern))
    assert len(files) in (20, 32)  # 20 COVID-19 slices; 32 TCGA slices (24 + 8 held out for evaluation)
    for name in files:
        volume = read_volume(name)
        assert volume.shape == (1, 512, 512), name
        assert volume.metadata["modality"] == "CT" and volume.metadata["kernel"]
        assert -3100 <= volume.array.min() <= -1000, name  # air or padding present, rescale applied
        assert 800 <= volume.array.max() <= 6000, name
        assert volume.spacing[2] > 0 and len(volume.metadata["slice_positions"]) == 1


def test_nifti(nifti_path: Path) -> None:
    volume = read_volume(nifti_path)
    image = sitk.ReadImage(str(nifti_path))
    assert volume.shape == (30, 101, 122) and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert volume.direction == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert volume.origin == pytest.approx(image.GetOrigin())
    assert volume.metadata["format"] == "nifti" and volume.metadata["warnings"] == []
    assert (volume.array.min(), volume.array.max()) == (-1100.0, 1207.0)


def test_image_dimensions(tmp_path: Path) -> None:
    flat = sitk.GetImageFromArray(np.full((6, 5), -1000, np.int16))
    sitk.WriteImage(flat, str(tmp_path / "slice.nii.gz"))
    assert read_volume(tmp_path / "slice.nii.gz").shape == (1, 6, 5)
    one_time_point = sitk.JoinSeries([sitk.GetImageFromArray(np.full((3, 4, 5), -1000, np.int16))])
    assert one_time_point.GetDimension() == 4
    sitk.WriteImage(one_time_point, str(tmp_path / "t1.nii.gz"))
    assert read_volume(tmp_path / "t1.nii.gz").shape == (3, 4, 5)


def test_folder_with_several_series_reads_the_largest(tmp_path: Path, tilted_volume: Volume, data_dir: Path) -> None:
    for name in tilted_volume.metadata["dicom_files"]:
        shutil.copy(name, tmp_path)
    other = sorted(data_dir.glob("covid19_ny_sbu/A002304/axial/*.dcm"))[0]
    shutil.copy(other, tmp_path / "other.dcm")
    mr = pydicom.dcmread(tilted_volume.metadata["dicom_files"][0])
    mr.Modality, mr.SeriesInstanceUID, mr.SOPInstanceUID = "MR", pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    mr.save_as(tmp_path / "mr.dcm")
    volume = read_volume(tmp_path)
    assert volume.shape == (10, 512, 512)
    np.testing.assert_array_equal(volume.array, tilted_volume.array)
    warnings = " ".join(volume.metadata["warnings"])
    assert pydicom.dcmread(other).SeriesInstanceUID in warnings and "ignored non-CT series" in warnings
    assert str(tmp_path / "other.dcm") not in volume.metadata["dicom_files"]


def test_folder_with_tied_series_is_refused(data_dir: Path) -> None:
    with pytest.raises(CTDenoiseError, match="holds 2 CT series with 1 image"):
        read_volume(data_dir / "covid19_ny_sbu" / "A002304" / "axial")


# ------------------------------------------------------------------------------------------ refusals


def _one_line(exc: pytest.ExceptionInfo[CTDenoiseError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and ": " in message
    return message


def test_refusals_of_paths_and_files(tmp_path: Path) -> None:
    cases = {}
    cases["does not exist"] = tmp_path / "missing"
    (tmp_path / "empty").mkdir()
    cases["is empty"] = tmp_path / "empty"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("no images here\n")
    cases["holds no DICOM images"] = tmp_path / "notes"
    (tmp_path / "nested" / "series").mkdir(parents=True)
    cases["subfolders are not searched"] = tmp_path / "nested"
    (tmp_path / "fake.dcm").write_text("this is text, not DICOM\n" * 20)
    cases["is not a readable DICOM image"] = tmp_path / "fake.dcm"
    (tmp_path / "fake.nii").write_text("this is text, not NIfTI\n" * 20)
    cases["cannot read .* as NIFTI"] = tmp_path / "fake.nii"
    rgb = sitk.GetImageFromArray(np.zeros((8, 8, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.png"))
    cases["unsupported file type '.png'"] = tmp_path / "rgb.png"
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    cases["3 components per voxel"] = tmp_path / "rgb.nrrd"
    frame = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(tmp_path / "4d.nii.gz"))
    cases["4-D image"] = tmp_path / "4d.nii.gz"
    nan = np.full((3, 4, 5), -1000, np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nii.gz"))
    cases["1 NaN or infinite voxel"] = tmp_path / "nan.nii.gz"
    nan[1, 2, 3] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "inf.nrrd"))
    cases["input .*inf.nrrd has 1 NaN or infinite voxel"] = tmp_path / "inf.nrrd"
    for pattern, path in cases.items():
        with pytest.raises(CTDenoiseError, match=pattern) as exc:
            read_volume(path)
        _one_line(exc)


def test_mr_dicom_is_refused(tmp_path: Path, tilted_volume: Volume) -> None:
    ds = pydicom.dcmread(tilted_volume.metadata["dicom_files"][0])
    ds.Modality = "MR"
    ds.save_as(tmp_path / "mr.dcm")
    for path in (tmp_path / "mr.dcm", tmp_path):
        with pytest.raises(CTDenoiseError, match="is MR .*not CT.*pass a CT series") as exc:
            read_volume(path)
        _one_line(exc)


# ------------------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_image_round_trip(tmp_path: Path, series_volume: Volume, suffix: str) -> None:
    out = write_volume(series_volume, tmp_path / f"ct{suffix}")
    assert out == (tmp_path / f"ct{suffix}").absolute()
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, series_volume.array)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(back, name), getattr(series_volume, name), atol=1e-4)
    assert _leftovers(tmp_path) == []


def test_tilted_series_to_nrrd_keeps_the_approximate_grid(tmp_path: Path, tilted_volume: Volume) -> None:
    back = read_volume(write_volume(tilted_volume, tmp_path / "head.nrrd"))
    np.testing.assert_array_equal(back.array, tilted_volume.array)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(back, name), getattr(tilted_volume, name), atol=1e-4)


def test_storage_type(tmp_path: Path) -> None:
    fractional = Volume(np.array([[[-1000.4, 12.6], [40.5, 3000.2]]], np.float32))
    out = write_volume(fractional, tmp_path / "f.nii.gz")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(read_volume(out).array, np.rint(fractional.array))
    huge = Volume(np.array([[[-1000.0, 40000.5]]], np.float32))
    out = write_volume(huge, tmp_path / "h.mha")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(read_volume(out).array, huge.array)


@pytest.mark.parametrize("which", ["series_volume", "tilted_volume"])
def test_dicom_round_trip(tmp_path: Path, request: pytest.FixtureRequest, which: str) -> None:
    source: Volume = request.getfixturevalue(which)
    files = source.metadata["dicom_files"]
    before = _hashes(files)
    out = write_volume(source, tmp_path / "out")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, source.array)
    np.testing.assert_allclose(back.metadata["slice_positions"], source.metadata["slice_positions"], atol=1e-4)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(back, name), getattr(source, name), atol=1e-4)
    assert back.metadata.get("gantry_tilt_deg") == source.metadata.get("gantry_tilt_deg")
    written = _headers(out)
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len(written) == len(originals)
    assert len({ds.SeriesInstanceUID for ds in written}) == 1
    assert written[0].SeriesInstanceUID not in ("", originals[0].get("SeriesInstanceUID"))
    new_sops = {ds.SOPInstanceUID for ds in written}
    assert len(new_sops) == len(written) and not new_sops & {ds.get("SOPInstanceUID") for ds in originals}
    for ds, original in zip(written, originals):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        old_description = original.get("SeriesDescription")
        assert ds.SeriesDescription == (f"{old_description} (ctdenoise)" if old_description else "ctdenoise")
        assert ds.SeriesNumber != original.get("SeriesNumber")
        assert ds.PixelRepresentation == 1 and ds.RescaleSlope == 1 and ds.RescaleIntercept == 0
        for tag in PATIENT_STUDY_TAGS:
            assert ds.get(tag) == original.get(tag), tag
        assert ds.StudyInstanceUID == (original.StudyInstanceUID or ds.StudyInstanceUID)
        assert ds.StudyInstanceUID and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert _hashes(files) == before
    assert _leftovers(tmp_path) == []


def test_dicom_with_reference_headers(tmp_path: Path, tilted_volume: Volume) -> None:
    denoised = Volume(tilted_volume.array + 7.0, tilted_volume.spacing, tilted_volume.origin, tilted_volume.direction)
    out = write_volume(denoised, tmp_path / "denoised", reference=tilted_volume, series_description="denoised")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, denoised.array)
    np.testing.assert_allclose(back.metadata["slice_positions"], tilted_volume.metadata["slice_positions"])
    assert back.metadata["patient_id"] == tilted_volume.metadata["patient_id"]
    assert back.metadata["study_uid"] == tilted_volume.metadata["study_uid"]
    assert {ds.SeriesDescription for ds in _headers(out)} == {"denoised"}
    cropped = Volume(denoised.array[:5], denoised.spacing, denoised.origin, denoised.direction)
    with pytest.raises(CTDenoiseError, match="5 slices but its DICOM source has 10"):
        write_volume(cropped, tmp_path / "cropped", reference=tilted_volume)
    assert not (tmp_path / "cropped").exists()


def test_dicom_from_geometry_only(tmp_path: Path, nifti_path: Path) -> None:
    source = read_volume(nifti_path)
    out = write_volume(source, tmp_path / "from_nifti")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, source.array)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(back, name), getattr(source, name), atol=1e-4)
    headers = _headers(out)
    assert len(headers) == 30 and {h.Modality for h in headers} == {"CT"}
    assert len({h.StudyInstanceUID for h in headers}) == 1 and headers[0].StudyInstanceUID
    assert len({h.SOPInstanceUID for h in headers}) == 30
    wide = Volume(np.array([[[-1024.0, 40000.0]], [[0.0, 5.0]]], np.float32))
    out = write_volume(wide, tmp_path / "wide")
    np.testing.assert_array_equal(read_volume(out).array, wide.array)
    assert _headers(out)[0].RescaleIntercept != 0


def test_write_refusals(tmp_path: Path, series_volume: Volume, nifti_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(CTDenoiseError, match="exists and is not empty") as exc:
        write_volume(series_volume, busy)
    _one_line(exc)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    copy = tmp_path / "ct.nii.gz"
    shutil.copy(nifti_path, copy)
    volume = read_volume(copy)
    digest = _hashes([copy])
    with pytest.raises(CTDenoiseError, match="is an input file"):
        write_volume(volume.with_array(volume.array + 1), copy)
    with pytest.raises(CTDenoiseError, match="is an input file"):
        validate_output_path(copy, volume)
    with pytest.raises(CTDenoiseError, match="exists and is not empty"):
        validate_output_path(series_volume.metadata["source_path"], series_volume)
    assert _hashes([copy]) == digest
    with pytest.raises(CTDenoiseError, match="unsupported extension '.png'"):
        write_volume(volume, tmp_path / "out.png")
    bad = volume.with_array(np.where(volume.array > 1000, np.nan, volume.array).astype(np.float32))
    with pytest.raises(CTDenoiseError, match="NaN"):
        write_volume(bad, tmp_path / "bad.nrrd")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_volume(Volume(np.zeros((2, 4, 4), np.float32)), empty) == empty.absolute()
    assert len(list(empty.iterdir())) == 2
    assert not (tmp_path / "bad.nrrd").exists() and _leftovers(tmp_path) == []


def test_uid_like_folder_name_is_a_dicom_output(tmp_path: Path) -> None:
    volume = Volume(np.arange(32, dtype=np.float32).reshape(2, 4, 4) - 1000.0)
    target = tmp_path / "1.2.840.113619"
    assert validate_output_path(target) == target
    assert write_volume(volume, target) == target.absolute()
    assert len(_headers(target)) == 2 and _headers(target)[0].Modality == "CT"
    np.testing.assert_array_equal(read_volume(target).array, volume.array)
    (tmp_path / "2.25").write_text("x")
    with pytest.raises(CTDenoiseError, match="exists and is not a folder"):
        validate_output_path(tmp_path / "2.25")
    with pytest.raises(CTDenoiseError, match=r"unsupported extension '\.25a': .*ending in digits"):
        validate_output_path(tmp_path / "1.25a")


def test_created_lists_exactly_what_a_write_put_in_place(tmp_path: Path) -> None:
    volume = Volume(np.zeros((2, 4, 4), np.float32))
    image: list[Path] = []
    write_volume(volume, tmp_path / "ct.mhd", created=image)
    assert sorted(p.name for p in image) == ["ct.mhd", "ct.zraw"] == sorted(p.name for p in tmp_path.iterdir())
    series: list[Path] = []
    write_volume(volume, tmp_path / "series", created=series)
    assert series == [(tmp_path / "series").absolute()]
    empty = tmp_path / "empty"
    empty.mkdir()
    inside: list[Path] = []
    write_volume(volume, empty, created=inside)
    assert len(inside) == 2 and inside == sorted(empty.absolute().iterdir())


def test_interrupted_writes_leave_nothing(
    tmp_path: Path, series_volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original_save = pydicom.Dataset.save_as

    def failing_save(self: pydicom.Dataset, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        original_save(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(KeyboardInterrupt):
        write_volume(series_volume, tmp_path / "series")
    original_write = sitk.WriteImage

    def failing_write(image: sitk.Image, name: str, *args: object, **kwargs: object) -> None:
        original_write(image, name, *args, **kwargs)
        raise RuntimeError("ITK ERROR: ImageFileWriter(0x1): disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(CTDenoiseError, match="disk full"):
        write_volume(series_volume, tmp_path / "ct.nrrd")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
