"""Memory of whole-file denoising on real CT: int16 stays int16, the output overwrites the input in memory,
and no whole-volume float copy is made, with exactly the output of the float32 path."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctdenoise import DenoiseOptions, Denoiser
from ctdenoise.inference import DenoiseResult
from ctdenoise.io import Volume, read_volume, write_volume

DATA = Path(__file__).resolve().parents[2] / "data"
ABDOMEN = DATA / "totalsegmentator" / "example_ct_dicom"
NIFTI = DATA / "totalsegmentator" / "example_ct_sm.nii.gz"
PADDED = DATA / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm"
"""One 512x512 slice with PixelPaddingValue -3024 outside the scan field."""
ONNX = DenoiseOptions(device="cpu", runtime="onnxruntime")
pytestmark = [  # what the real volumes are known to warn about
    pytest.mark.filterwarnings("ignore:in-plane pixel spacing 3 mm"),
    pytest.mark.filterwarnings("ignore:non-uniform slice spacing"),
    pytest.mark.filterwarnings("ignore:gantry tilt"),
]

MEASURE = """
import json, sys
from pathlib import Path
import numpy as np
from ctdenoise import DenoiseOptions, Denoiser
import ctdenoise.io.readers, ctdenoise.io.writers  # their code (ITK, pydicom) is loaded before the baseline

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

denoiser = Denoiser(options=DenoiseOptions(device="cpu", runtime="onnxruntime"))
runtime = denoiser.open()
runtime.change = lambda x: np.zeros((x.shape[0], x.shape[2], x.shape[3]), np.float32)  # the network's memory is per batch
baseline = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts here
summary = denoiser.file(sys.argv[1], sys.argv[2])
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "padding": summary["padding_voxels"]}))
"""
"""Run in a fresh process: peak resident memory of ``Denoiser.file`` over that once the runtime is open."""


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    """The bundled model on ONNX Runtime, opened once."""
    return Denoiser(options=ONNX)


def _itk_bytes(array: np.ndarray, like: Volume, path: Path) -> bytes:
    """What ITK itself writes for ``array`` with ``like``'s geometry, as uncompressed NIfTI bytes."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(like.spacing)
    image.SetOrigin(like.origin)
    image.SetDirection(like.direction)
    sitk.WriteImage(image, str(path), useCompression=False)
    return path.read_bytes()


# ----------------------------------------------------------------------------------- the same output


@pytest.mark.parametrize(
    ("source", "output"),
    [("nifti", "den.nii.gz"), ("dicom", "den"), ("dicom", "den.nii"), ("padded", "den.nrrd")],
)
def test_file_output_equals_the_float32_path(
    denoiser: Denoiser, dicom_subset: Path, tmp_path: Path, source: str, output: str
) -> None:
    path = {"nifti": NIFTI, "dicom": dicom_subset, "padded": PADDED}[source]
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    reference = read_volume(path)  # float32 HU, the engine's data flow before int16 streaming
    expected = denoiser.volume(reference)
    summary = denoiser.file(path, tmp_path / output)
    written = read_volume(tmp_path / output)
    np.testing.assert_array_equal(written.array, np.rint(expected.volume.array))
    assert np.abs(written.array - reference.array).max() > 1  # the model did change the image
    assert (summary["padding_voxels"], summary["clamped_voxels"]) == (expected.padding_voxels, expected.clamped_voxels)
    assert source != "padded" or summary["padding_voxels"] == 55772
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(written, name), getattr(reference, name), atol=1e-4)
    if output.startswith("den.nii"):  # streamed NIfTI: byte for byte what ITK writes
        data = (tmp_path / output).read_bytes()
        data = gzip.decompress(data) if output.endswith(".gz") else data
        assert data == _itk_bytes(np.rint(expected.volume.array).astype(np.int16), reference, tmp_path / "itk.nii")
    assert before is None or hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_noise_output_is_exactly_input_minus_output(denoiser: Denoiser, tmp_path: Path) -> None:
    denoiser.file(NIFTI, tmp_path / "den.nii.gz", noise_output=tmp_path / "noise.nii.gz")
    source, out, noise = (
        read_volume(p, integer_hu=True).array for p in (NIFTI, tmp_path / "den.nii.gz", tmp_path / "noise.nii.gz")
    )
    assert noise.dtype == np.int16 and np.abs(noise).max() > 1
    np.testing.assert_array_equal(noise, source - out)
    np.testing.assert_array_equal(out, np.rint(denoiser.volume(read_volume(NIFTI)).volume.array))


def test_noise_is_int16_when_it_fits_and_float32_otherwise() -> None:
    def noise(source: np.ndarray, out: np.ndarray) -> np.ndarray:
        result = DenoiseResult(Volume(out), Volume(source), {}, ONNX, "none", "none", "none", 0.0)
        return result.noise().array

    hu = read_volume(PADDED, integer_hu=True).array
    assert noise(hu, hu - 3).dtype == np.int16 and set(np.unique(noise(hu, hu - 3))) == {3}
    wide = hu.astype(np.int32)
    wide[0, 0, 0] = 40000
    assert noise(wide, hu.astype(np.int32)).dtype == np.float32
    np.testing.assert_array_equal(noise(wide, hu.astype(np.int32)), wide - hu)
    floats = hu.astype(np.float32)
    assert noise(floats, floats - 0.5).dtype == np.float32


# ------------------------------------------------------------------------------------- integer HU


@pytest.mark.parametrize(
    "path",
    [
        NIFTI,
        ABDOMEN,
        DATA / "dcm_qa_ct_ge_head",
        PADDED,
        DATA / "covid19_ny_sbu" / "A002304" / "axial" / "19001231-076.dcm",
    ],
    ids=["nifti", "jpeg2000-series", "tilted-series", "padded-file", "signed-stored-file"],
)
def test_integer_hu_reads_the_same_values_as_int16(path: Path) -> None:
    floats, integers = read_volume(path), read_volume(path, integer_hu=True)
    assert floats.array.dtype == np.float32 and integers.array.dtype == np.int16
    np.testing.assert_array_equal(integers.array, floats.array)
    assert (integers.spacing, integers.origin, integers.direction) == (floats.spacing, floats.origin, floats.direction)


def test_integer_hu_keeps_float32_where_integers_would_change_values(tmp_path: Path) -> None:
    header = pydicom.dcmread(PADDED)
    header.RescaleSlope = 0.5  # fractional HU
    header.save_as(tmp_path / "half.dcm")
    half = read_volume(tmp_path / "half.dcm", integer_hu=True)
    assert half.array.dtype == np.float32 and np.any(half.array % 1)
    np.testing.assert_array_equal(half.array, read_volume(tmp_path / "half.dcm").array)
    hu = read_volume(NIFTI).array
    for dtype, expected in ((np.float32, np.float32), (np.int32, np.int32)):
        values = hu.astype(dtype)
        values[0, 0, 0] = 40000  # beyond int16
        sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "v.nii.gz"))
        back = read_volume(tmp_path / "v.nii.gz", integer_hu=True).array
        assert back.dtype == expected
        np.testing.assert_array_equal(back, values)


def test_streamed_nifti_equals_itk_for_an_oblique_int16_volume(tmp_path: Path) -> None:
    tilted = read_volume(DATA / "dcm_qa_ct_ge_head", integer_hu=True)
    assert tilted.direction != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    itk = _itk_bytes(tilted.array, tilted, tmp_path / "itk.nii")
    assert write_volume(tilted, tmp_path / "a.nii").read_bytes() == itk
    assert gzip.decompress(write_volume(tilted, tmp_path / "a.nii.gz").read_bytes()) == itk
    fractional = tilted.with_array(tilted.array.astype(np.float32) + 0.25)  # rounded slab by slab
    assert write_volume(fractional, tmp_path / "f.nii").read_bytes() == itk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii", "a.nii.gz", "f.nii", "itk.nii"]


# ------------------------------------------------------------------------------------------ memory


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux /proc")
def test_denoising_a_file_holds_about_two_copies_of_an_int16_volume(tmp_path: Path) -> None:
    abdomen = read_volume(ABDOMEN, integer_hu=True)
    there_and_back = np.concatenate([abdomen.array, abdomen.array[::-1]])
    array = np.concatenate([there_and_back] * 4)  # 160 real slices, 84 MB
    yy, xx = np.mgrid[:512, :512] - 255.5
    array[:, np.hypot(yy, xx) > 260] = -3024  # padding outside the scan field
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(abdomen.spacing)
    sitk.WriteImage(image, str(tmp_path / "ct.nii"))
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "ct.nii"), str(tmp_path / "den.nii.gz")],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["padding"] == int(np.count_nonzero(array == -3024))
    ratio = (measured["peak"] - measured["baseline"]) / array.nbytes
    assert ratio < 2.5, f"peak memory {ratio:.2f} times the volume"  # the float32 path took about 7.5
    np.testing.assert_array_equal(read_volume(tmp_path / "den.nii.gz", integer_hu=True).array, array)
