"""Correct on every CT a user loads: orientation, padding, units, spacing and spikes, on real CT from data/."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctdenoise import DenoiseOptions, Denoiser, read_volume, simulate_volume
from ctdenoise.errors import CTDenoiseError, CTDenoiseWarning
from ctdenoise.io import Volume
from ctdenoise.orientation import reorientation

DATA = Path(__file__).resolve().parents[2] / "data"
SMALL = DATA / "totalsegmentator" / "example_ct_sm.nii.gz"  # stored RAS, 3 mm voxels
PADDED = DATA / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm"  # -3024 HU outside the scan field
PADDED_UNSIGNED = DATA / "tcga_lung_ctmi" / "ID_0022_AGE_0074_CONTRAST_1_CT.dcm"  # PixelPaddingValue 63536 (US)
STORAGE_ORDERS = ["LPS", "ASL", "PIL", "LPI", "RAS", "SRA", "IRP"]


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def denoiser(request: pytest.FixtureRequest) -> Denoiser:
    """The bundled model on each runtime: every case here runs on both."""
    return Denoiser(options=DenoiseOptions(device="cpu", runtime=request.param))


def _stored(code: str) -> Volume:
    """``example_ct_sm`` saved the way another tool stores it, as a Volume read back from NIfTI."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(SMALL)), code)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return Volume(array, image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def _back(volume: Volume, array: np.ndarray, code: str) -> np.ndarray:
    """``array`` (stored like ``volume``) brought to ``code`` storage order for comparison."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, code))


# ---------------------------------------------------------------------------------- orientation


def test_every_storage_order_gives_the_axial_result(denoiser: Denoiser) -> None:
    """Sagittal, coronal and flipped twins of a real volume: the same denoised voxels as the axial LPS twin."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CTDenoiseWarning)  # 3 mm pixels: the spacing warning
        axial = denoiser.volume(_stored("LPS")).volume.array
        for code in STORAGE_ORDERS[1:]:
            twin = _stored(code)
            result = denoiser.volume(twin)
            assert result.volume.array.shape == twin.array.shape  # the input's storage order is kept
            assert (result.volume.spacing, result.volume.direction) == (twin.spacing, twin.direction)
            difference = np.abs(_back(twin, result.volume.array, "LPS") - axial)
            assert np.percentile(difference, 99.9) <= 1.0 and difference.max() <= 1.0, code


def test_reorientation_views_round_trip_with_anisotropic_spacing() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    direction = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # "PIR": columns run posterior, rows inferior, slices right
    turn = reorientation(direction)
    target = turn.to_target(array)
    np.testing.assert_array_equal(turn.to_stored(target), array)
    assert np.shares_memory(target, array)
    spacing = turn.target_spacing((0.5, 0.7, 3.0))  # x, y, z of the stored array
    assert spacing == (3.0, 0.5, 0.7)  # target x (left) <- stored z, y (posterior) <- stored x, z <- stored y
    assert turn.order == (1, 2, 0) and turn.flip == (True, False, True)


def _rotation_onto(n: np.ndarray) -> np.ndarray:
    """The rotation taking the z axis onto the unit vector ``n`` (Rodrigues)."""
    z = np.array([0.0, 0.0, 1.0])
    axis, cos = np.cross(z, n), float(z @ n)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k / (1 + cos)


def test_slices_far_from_axial_are_refused(denoiser: Denoiser) -> None:
    volume = read_volume(SMALL)
    # every array axis 54.7 degrees from head-foot: no axis can serve as the axial slice axis
    direction = _rotation_onto(np.ones(3) / np.sqrt(3)).T
    assert np.allclose(np.abs(direction[2]), 1 / np.sqrt(3))
    oblique = Volume(volume.array, volume.spacing, volume.origin, tuple(direction.ravel()))
    with pytest.raises(CTDenoiseError, match="55 degrees from axial .* resample it to an axial grid"):
        denoiser.volume(oblique)
    with pytest.raises(CTDenoiseError, match="degrees from axial"):
        simulate_volume(oblique, 0.25, seed=0)
    tilted = _rotation_onto(np.array([0.0, np.sin(np.radians(30)), np.cos(np.radians(30))]))  # 30 degrees: accepted
    assert reorientation(tuple(tilted.ravel())).obliquity_deg == pytest.approx(30.0)


def test_gantry_tilt_is_accepted(denoiser: Denoiser, tilted_series_dir: Path) -> None:
    volume = read_volume(tilted_series_dir)
    assert volume.metadata["gantry_tilt_deg"] == pytest.approx(18.5)
    result = denoiser.volume(Volume(volume.array[:2], volume.spacing, volume.origin, volume.direction, volume.metadata))
    assert result.volume.shape == (2, 512, 512)


def test_simulation_projects_in_the_axial_plane() -> None:
    """A sagittal twin gets exactly the noise of the axial twin (the projector sees axial slices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CTDenoiseWarning)
        axial, sagittal = _stored("LPS"), _stored("ASL")
        low_axial = simulate_volume(axial, 0.25, seed=3).array
        low_sagittal = simulate_volume(sagittal, 0.25, seed=3)
    assert low_sagittal.shape == sagittal.shape
    np.testing.assert_allclose(_back(sagittal, low_sagittal.array, "LPS"), low_axial, atol=1e-3)
    assert np.abs(low_axial - axial.array).std() > 5  # noise was added


# ------------------------------------------------------------------------------------- padding


def test_padding_passes_through_and_dicom_keeps_pixel_padding_value(denoiser: Denoiser, tmp_path: Path) -> None:
    source = read_volume(PADDED)
    assert source.metadata["pixel_padding_hu"] == -3024.0
    summary = denoiser.file(PADDED, tmp_path / "out")
    files = list((tmp_path / "out").iterdir())
    header = pydicom.dcmread(files[0])
    assert header.PixelPaddingValue == -3024 - int(header.RescaleIntercept) and header["PixelPaddingValue"].VR == "SS"
    out = read_volume(tmp_path / "out").array
    padding = source.array <= -3024
    assert summary["padding_voxels"] == int(padding.sum()) == 55772
    np.testing.assert_array_equal(out[padding], -3024)
    assert out.min() >= source.array.min()
    assert np.abs(out[~padding] - source.array[~padding]).max() > 1  # the rest was denoised


def test_padding_written_as_unsigned_is_read_with_the_pixels_sign() -> None:
    volume = read_volume(PADDED_UNSIGNED)
    assert pydicom.dcmread(PADDED_UNSIGNED, stop_before_pixels=True).PixelPaddingValue == 63536
    assert volume.metadata["pixel_padding_hu"] == -3024.0


# ---------------------------------------------------------------------------------- HU or not


def _volume_like(array: np.ndarray) -> Volume:
    return Volume(array.astype(np.float32), (0.7, 0.7, 5.0))


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda hu: hu + 1024, "raw stored values"),
        (lambda hu: 0.0192 * (1 + hu / 1000), "linear attenuation"),
        (lambda hu: (hu + 1024) / 4095, "scaled to 0..1"),
        (lambda hu: hu * 0 + 40, "every voxel is 40"),
    ],
    ids=["raw", "attenuation", "unit", "constant"],
)
def test_input_that_is_not_hu_is_refused_unless_forced(denoiser: Denoiser, transform, message: str) -> None:  # type: ignore[no-untyped-def]
    hu = np.clip(read_volume(DATA / "tcga_lung_ctmi" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm").array, -1024, 3071)
    volume = _volume_like(transform(hu))
    with pytest.raises(CTDenoiseError, match=f"probably not in HU: .*{message}.*--force"):
        denoiser.volume(volume)
    with pytest.raises(CTDenoiseError, match="probably not in HU"):
        simulate_volume(volume, 0.25, seed=0)
    if message != "every voxel is 40":
        with pytest.warns(CTDenoiseWarning, match="denoising anyway because of --force"):
            Denoiser(options=DenoiseOptions(device="cpu", force=True)).volume(volume)


def test_a_crop_without_air_gets_a_warning_not_a_refusal(denoiser: Denoiser) -> None:
    liver = read_volume(DATA / "totalsegmentator" / "example_ct_dicom").array[8:10, 230:290, 120:180]
    with pytest.warns(CTDenoiseWarning, match="has no air"):
        result = denoiser.volume(_volume_like(liver))
    assert any("no air" in w for w in result.warnings)


def test_pixel_spacing_far_from_the_training_data_gets_a_warning(denoiser: Denoiser) -> None:
    with pytest.warns(CTDenoiseWarning, match=r"in-plane pixel spacing 3 mm is far outside .* \(0.547-0.977 mm\)"):
        result = denoiser.volume(read_volume(SMALL))
    assert any("spacing" in w for w in result.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CTDenoiseWarning)  # the training data's own spacing: no warning
        denoiser.volume(read_volume(DATA / "tcga_lung_ctmi" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"))


# ------------------------------------------------------------------------------------- spikes


def test_no_voxel_moves_more_than_the_models_change_limit(denoiser: Denoiser) -> None:
    """3 mm pixels are out of the bundled model's distribution: before the limit one voxel jumped 1842 HU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CTDenoiseWarning)
        volume = read_volume(SMALL)
        result = denoiser.volume(volume)
    limit = denoiser.model.change_limit_hu
    assert limit == 320.0
    change = np.abs(result.volume.array - volume.array)
    assert change.max() <= limit + 1e-3
    assert result.clamped_voxels == int(np.count_nonzero(change >= limit - 1e-3)) > 0
    assert json.loads(json.dumps(result.summary()))["clamped_voxels"] == result.clamped_voxels


def test_denoise_then_write_any_case_extension(denoiser: Denoiser, tmp_path: Path) -> None:
    source = DATA / "tcga_lung_ctmi" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"
    for name in ("OUT.NII.GZ", "Out.Nrrd", "OUT.MHA", "OUT.MHD"):
        denoiser.file(source, tmp_path / name)
        assert (tmp_path / name).is_file() and read_volume(tmp_path / name).shape == (1, 512, 512)
    assert sorted(os.listdir(tmp_path)) == sorted(["OUT.NII.GZ", "Out.Nrrd", "OUT.MHA", "OUT.MHD", "OUT.zraw"])
