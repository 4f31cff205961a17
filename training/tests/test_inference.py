"""Tests of the whole-volume denoising engine on real CT slices with tiny "fast" generators."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from ctdenoise import DenoiseOptions, inference
from ctdenoise.checkpoints import ModelCheckpoint, load_checkpoint
from ctdenoise.errors import CTDenoiseError, DenoiseCancelled
from ctdenoise.export import write_model
from ctdenoise.inference import bundled_model_path, denoise_array, denoise_file, denoise_volume, describe_model
from ctdenoise.io import read_volume, writers
from ctdenoise.modelfile import build_metadata
from ctdenoise.networks import build_generator
from ctdenoise.normalization import HUNormalization
from ctdenoise.progress import ProgressInfo
from ctdenoise.runtimes import torch_runtime

DATA = Path(__file__).resolve().parents[2] / "data"
DICOM_SERIES = DATA / "totalsegmentator" / "example_ct_dicom"
GENERATOR_ARGS = {"ngf": 8, "n_res_blocks": 1}
CONSTANT_CHANGE = 0.05
"""Bias of the last conv in the constant-change model: every voxel moves by tanh(0.05) * scale."""
CPU = DenoiseOptions(device="cpu", runtime="torch")
RUNTIMES = ["torch", "onnxruntime"]


def opts(runtime: str = "torch", **options: object) -> DenoiseOptions:
    """Options on the CPU, on one runtime."""
    return DenoiseOptions(device="cpu", runtime=runtime, **options)  # type: ignore[arg-type]


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """Each behaviour test runs on every runtime."""
    return str(request.param)


def _export(tmp: Path, name: str, edit: Callable[[torch.nn.Module], None] | None = None, limit: float = 500.0) -> Path:
    """Export a freshly initialised tiny fast generator (optionally edited) as a safetensors model."""
    torch.manual_seed(0)
    generator = build_generator("fast", **GENERATOR_ARGS)
    if edit is not None:
        edit(generator)
    metadata = build_metadata(
        preset="fast",
        generator_args=GENERATOR_ARGS,
        normalization=HUNormalization(),
        patch_size=32,
        change_limit_hu=limit,
    )
    return write_model({"G_Q2F": generator.state_dict()}, metadata, tmp / f"{name}.safetensors")


def _set_last_conv(weight: float, bias: float) -> Callable[[torch.nn.Module], None]:
    """An edit that makes the last convolution constant, so the network's change is uniform."""

    def edit(generator: torch.nn.Module) -> None:
        last = generator.tail[1]
        torch.nn.init.constant_(last.weight, weight)
        torch.nn.init.constant_(last.bias, bias)

    return edit


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of models: random init, zero change, constant change (up, down, and up beyond a 20 HU limit)."""
    tmp = tmp_path_factory.mktemp("models")
    return {
        "random": _export(tmp, "random"),
        "zero": _export(tmp, "zero", _set_last_conv(0.0, 0.0)),
        "constant": _export(tmp, "constant", _set_last_conv(0.0, CONSTANT_CHANGE)),
        "down": _export(tmp, "down", _set_last_conv(0.0, -CONSTANT_CHANGE)),
        "limited": _export(tmp, "limited", _set_last_conv(0.0, CONSTANT_CHANGE), limit=20.0),
    }


@pytest.fixture(scope="module")
def random_model(models: dict[str, Path]) -> ModelCheckpoint:
    return load_checkpoint(models["random"])


@pytest.fixture(scope="module")
def ct_int16() -> np.ndarray:
    """6 real abdominal slices, 4x downsampled to 128x128, int16, with -3024 padding in the corners."""
    array = read_volume(DICOM_SERIES).array[7:13, ::4, ::4]
    yy, xx = np.mgrid[:128, :128] - 63.5
    array[:, np.hypot(yy, xx) > 66] = -3024
    return np.rint(array).astype(np.int16)


# ------------------------------------------------------------------------------ values and dtypes


def test_strength_zero_returns_the_input_values_in_the_output_dtype(
    models: dict[str, Path], ct_int16: np.ndarray, runtime: str
) -> None:
    for hu, dtype in ((ct_int16, np.int16), (ct_int16.astype(np.float64) + 0.25, np.float32)):
        out = denoise_array(hu, models["random"], opts(runtime, strength=0.0))
        assert out.dtype == dtype and out is not hu and not np.shares_memory(out, hu)
        assert out.tobytes() == hu.astype(dtype).tobytes()
        np.testing.assert_array_equal(out, hu)  # x.25 HU are exact in float32


def test_int16_input_gives_int16_within_range_and_shape(
    models: dict[str, Path], ct_int16: np.ndarray, runtime: str
) -> None:
    hu = ct_int16.copy()
    hu[:, 60:64, 60:64] = np.iinfo(np.int16).max  # metal at the top of the int16 range
    out = denoise_array(hu, models["constant"], opts(runtime))
    change = round(np.tanh(CONSTANT_CHANGE) * HUNormalization().scale)
    assert out.dtype == np.int16 and out.shape == hu.shape
    assert (out[:, 60:64, 60:64] == np.iinfo(np.int16).max).all()  # clipped, not wrapped around
    np.testing.assert_array_equal(out[:, 30:34, 60:64], hu[:, 30:34, 60:64] + change)


def test_big_endian_integers_come_back_native(models: dict[str, Path], ct_int16: np.ndarray, runtime: str) -> None:
    out = denoise_array(ct_int16[:1].astype(">i2"), models["zero"], opts(runtime))
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, ct_int16[:1])


def test_float_input_gives_float32_and_a_single_slice_works(
    models: dict[str, Path], ct_int16: np.ndarray, runtime: str
) -> None:
    volume = denoise_array(ct_int16.astype(np.float64), models["random"], opts(runtime))
    one = denoise_array(ct_int16[2].astype(np.float64), models["random"], opts(runtime))
    assert volume.dtype == one.dtype == np.float32 and one.shape == (128, 128)
    np.testing.assert_allclose(one, volume[2], atol=1e-2)
    assert np.abs(volume - ct_int16).max() > 10  # the random network does change the image


def test_voxels_outside_the_normalisation_range_keep_their_hu(
    models: dict[str, Path], ct_int16: np.ndarray, runtime: str
) -> None:
    hu = ct_int16.copy()
    hu[:, 60:62, 60:62] = 5000  # above hu_max (3071)
    assert (hu == -3024).any()
    for dtype in (np.int16, np.float32):
        out = denoise_array(hu.astype(dtype), models["zero"], opts(runtime))
        np.testing.assert_array_equal(out, hu.astype(dtype))
    # a uniform change is added to the voxel's own HU, not to the clip bound (3071); padding is left alone
    out = denoise_array(hu.astype(np.float32), models["constant"], opts(runtime))
    change = np.float32(np.tanh(CONSTANT_CHANGE) * HUNormalization().scale)
    np.testing.assert_allclose(out[hu == 5000], 5000 + change, atol=1e-3)
    np.testing.assert_array_equal(out[hu == -3024], -3024)
    np.testing.assert_allclose(out[hu > -3024], hu[hu > -3024] + change, atol=1e-3)


def test_padding_and_the_input_minimum_bound_the_output(
    models: dict[str, Path], ct_int16: np.ndarray, runtime: str
) -> None:
    """Padding (the minimum when below -1024, or a declared value) is kept; nothing goes below the input's minimum."""
    down = models["down"]
    change = np.float32(np.tanh(CONSTANT_CHANGE) * HUNormalization().scale)
    padded = ct_int16.astype(np.float32)
    out = denoise_array(padded, down, opts(runtime))
    np.testing.assert_array_equal(out[padded == -3024], -3024)
    inside = padded > -3024
    np.testing.assert_allclose(out[inside], padded[inside] - change, atol=1e-3)
    unpadded = np.where(padded == -3024, -1024, padded).astype(np.float32)  # air at the scanner's floor, no padding
    out = denoise_array(unpadded, down, opts(runtime))
    assert out.min() == unpadded.min() == -1024  # a downward change stops at the input's minimum
    assert np.count_nonzero(out == -1024) > np.count_nonzero(unpadded == -1024)


def test_the_change_limit_bounds_every_voxel_and_is_counted(
    models: dict[str, Path], ct_int16: np.ndarray, runtime: str
) -> None:
    volume = read_volume(DATA / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm")  # padded at -3024
    result = denoise_volume(volume, models["limited"], opts(runtime))
    change = result.volume.array - volume.array
    inside = volume.array > -3024
    np.testing.assert_allclose(change[inside], 20.0, atol=1e-3)  # tanh(0.05) * 1000 = 50 HU, limited to 20
    np.testing.assert_array_equal(change[~inside], 0.0)
    assert result.clamped_voxels == np.count_nonzero(inside) and result.model["change_limit_hu"] == 20.0
    assert result.padding_voxels == np.count_nonzero(~inside) == 55772


def test_strength_scales_the_change(models: dict[str, Path], ct_int16: np.ndarray, runtime: str) -> None:
    hu = ct_int16[:2].astype(np.float32)
    full = denoise_array(hu, models["random"], opts(runtime))
    half = denoise_array(hu, models["random"], opts(runtime, strength=0.5))
    np.testing.assert_allclose(half - hu, 0.5 * (full - hu), atol=1e-2)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(CTDenoiseError, match="strength"):
            opts(runtime, strength=bad)


def test_invalid_options_and_arrays_are_refused(random_model: ModelCheckpoint, ct_int16: np.ndarray) -> None:
    for options, message in (
        ({"batch_size": 0}, "batch size"),
        ({"tile_size": 8}, "tile size"),
        ({"strength": True}, "strength"),
        ({"runtime": "tpu"}, "runtime"),
        ({"precision": "fp8"}, "precision"),
        ({"force": "yes"}, "force"),
        ({"tta": 3}, "tta must be auto or one of 1, 2, 4, 8"),
        ({"tta": True}, "tta"),
        ({"tta": "8"}, "tta"),
    ):
        with pytest.raises(CTDenoiseError, match=message):
            opts(**options)
    for hu, message in ((ct_int16[0, 0], "shape"), (ct_int16 > 0, "type bool")):
        with pytest.raises(CTDenoiseError, match=message):
            denoise_array(hu, random_model, CPU)
    with pytest.raises(CTDenoiseError, match="options must be a DenoiseOptions"):
        denoise_array(ct_int16, random_model, {"strength": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_refused(random_model: ModelCheckpoint, ct_int16: np.ndarray, bad: float) -> None:
    hu = ct_int16.astype(np.float32)
    hu[3, 5, 5] = bad
    with pytest.raises(CTDenoiseError, match="NaN or infinite"):
        denoise_array(hu, random_model, CPU)


# ------------------------------------------------------------------------ test-time augmentation

MIRROR = (lambda a: a[..., ::-1], lambda a: a[..., ::-1])
TURN = (lambda a: np.rot90(a, 1, axes=(-2, -1)), lambda a: np.rot90(a, -1, axes=(-2, -1)))
MIRROR_TURN = (lambda a: np.rot90(a[..., ::-1], 1, axes=(-2, -1)), lambda a: np.rot90(a, -1, axes=(-2, -1))[..., ::-1])


@pytest.mark.parametrize(
    ("copies", "exact", "inexact"),
    [(1, [], [MIRROR, TURN]), (2, [MIRROR], [TURN]), (8, [MIRROR, TURN, MIRROR_TURN], [])],
)
def test_tta_makes_the_result_independent_of_its_views(
    models: dict[str, Path], ct_int16: np.ndarray, runtime: str, copies: int, exact: list, inexact: list
) -> None:
    # a non-square crop whose sides are not multiples of 4: turning swaps them, padding differs
    hu = np.ascontiguousarray(ct_int16[:2, 5:123, 9:111], dtype=np.float32)
    model, options = models["random"], opts(runtime, tta=copies)
    plain = denoise_array(hu, model, options)
    for forward, back in exact:
        viewed = denoise_array(np.ascontiguousarray(forward(hu)), model, options)
        np.testing.assert_allclose(back(viewed), plain, atol=0.02)  # HU: float rounding only
    for forward, back in inexact:  # the random network itself does depend on the view
        viewed = denoise_array(np.ascontiguousarray(forward(hu)), model, options)
        assert np.abs(back(viewed) - plain).max() > 1.0


def test_tta_averages_the_views_changes(random_model: ModelCheckpoint, ct_int16: np.ndarray) -> None:
    hu = ct_int16[:1].astype(np.float32)
    plain = denoise_array(hu, random_model, CPU) - hu
    mirrored = denoise_array(np.ascontiguousarray(hu[..., ::-1]), random_model, CPU)[..., ::-1] - hu
    averaged = denoise_array(hu, random_model, opts(tta=2)) - hu
    # the limit (500 HU), the padding and the input's minimum apply to the average, not to each view
    free = (np.abs(plain) < 400) & (np.abs(mirrored) < 400) & (hu > -1000) & (hu + averaged > hu.min() + 1)
    assert free.mean() > 0.3
    np.testing.assert_allclose(averaged[free], ((plain + mirrored) / 2)[free], atol=0.02)


# ------------------------------------------------------------------- batching, memory and tiling


def _record_calls(monkeypatch: pytest.MonkeyPatch, fail: Callable[[torch.Tensor], bool]) -> list[tuple[int, ...]]:
    """Route model calls through a recorder that raises CUDA out-of-memory when ``fail(x)``."""
    calls: list[tuple[int, ...]] = []
    real = torch_runtime._forward

    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        if fail(x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(model, x)

    monkeypatch.setattr(torch_runtime, "_forward", forward)
    return calls


def test_batch_size_does_not_change_the_result(models: dict[str, Path], ct_int16: np.ndarray, runtime: str) -> None:
    hu = ct_int16.astype(np.float32)
    one = denoise_array(hu, models["random"], opts(runtime, batch_size=1))
    four = denoise_array(hu, models["random"], opts(runtime, batch_size=4))
    np.testing.assert_allclose(four, one, atol=0.1)  # HU


def test_out_of_memory_halves_the_batch_and_retries_the_same_slices(
    random_model: ModelCheckpoint,
    ct_int16: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hu = ct_int16.astype(np.float32)
    expected = denoise_array(hu, random_model, opts(batch_size=1))
    calls = _record_calls(monkeypatch, lambda x: x.shape[0] > 1)
    infos: list[ProgressInfo] = []
    with caplog.at_level(logging.WARNING, logger="ctdenoise.runtimes.torch_runtime"):
        out = denoise_array(hu, random_model, opts(batch_size=4), progress=infos.append)
    assert [shape[0] for shape in calls] == [4, 2, 1, 1, 1, 1, 1, 1]
    assert [info.slices_done for info in infos] == [1, 2, 3, 4, 5, 6] and infos[-1].batch_size == 1
    assert "retrying with batch size 2" in caplog.text and "retrying with batch size 1" in caplog.text
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_out_of_memory_for_one_slice_falls_back_to_tiles(
    models: dict[str, Path], ct_int16: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = load_checkpoint(models["constant"])
    hu = ct_int16[:3].astype(np.float32)
    expected = denoise_array(hu, checkpoint, CPU)
    calls = _record_calls(monkeypatch, lambda x: x.shape[-1] == 128)  # whole slices never fit
    with caplog.at_level(logging.WARNING, logger="ctdenoise.runtimes.torch_runtime"):
        out = denoise_array(hu, checkpoint, opts(batch_size=2))
    tiles = [shape for shape in calls if shape[-1] < 128]
    assert calls[:2] == [(2, 1, 128, 128), (1, 1, 128, 128)] and tiles == calls[2:]
    assert {shape[-2:] for shape in tiles} == {(64, 64)}  # twice the patch size of 32
    assert "switching to 64-pixel tiles" in caplog.text
    np.testing.assert_allclose(out, expected, atol=1e-3)  # Gaussian blending of a uniform change is exact


def test_errors_other_than_out_of_memory_propagate(
    random_model: ModelCheckpoint, ct_int16: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

    monkeypatch.setattr(torch_runtime, "_forward", forward)
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_INTERNAL_ERROR"):
        denoise_array(ct_int16, random_model, opts(batch_size=4))


def test_large_slices_are_tiled(
    models: dict[str, Path], random_model: ModelCheckpoint, ct_int16: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    hu = ct_int16[:2].astype(np.float32)
    constant = load_checkpoint(models["constant"])
    expected = denoise_array(hu, constant, CPU)
    calls = _record_calls(monkeypatch, lambda x: False)
    tiled = denoise_array(hu, constant, opts(tile_size=48))
    assert calls and {shape[-2:] for shape in calls} == {(48, 48)}
    np.testing.assert_allclose(tiled, expected, atol=1e-3)
    identity = denoise_array(hu, load_checkpoint(models["zero"]), opts(tile_size=48))
    np.testing.assert_array_equal(identity, hu)
    changed = denoise_array(hu, random_model, opts(tile_size=48))
    assert changed.shape == hu.shape and np.isfinite(changed).all() and not np.array_equal(changed, hu)


# ----------------------------------------------------------------------- progress and cancelling


def test_progress_is_monotonic_and_ends_at_one(models: dict[str, Path], ct_int16: np.ndarray, runtime: str) -> None:
    infos: list[ProgressInfo] = []
    denoise_array(ct_int16, models["random"], opts(runtime, batch_size=4), progress=infos.append)
    assert [info.slices_done for info in infos] == [4, 6]
    fractions = [info.fraction for info in infos]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and infos[-1].eta_s == 0.0
    assert all(info.elapsed_s > 0 and info.device == "cpu" for info in infos)
    record = json.loads(infos[0].to_json())
    assert record["slices_done"] == 4 and record["slices_total"] == 6 and record["device"] == "cpu"
    assert record["event"] == "progress" and record["runtime"] == runtime
    assert "\n" not in infos[0].to_json()


def test_cancel_after_the_first_batch_raises(models: dict[str, Path], ct_int16: np.ndarray, runtime: str) -> None:
    infos: list[ProgressInfo] = []
    with pytest.raises(DenoiseCancelled):
        denoise_array(
            ct_int16, models["random"], opts(runtime, batch_size=2), progress=infos.append, cancel=lambda: bool(infos)
        )
    assert len(infos) == 1


# ------------------------------------------------------------------------------ volumes and files


def test_denoise_volume_keeps_geometry_and_records_the_model(models: dict[str, Path], runtime: str) -> None:
    volume = read_volume(DATA / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm")
    result = denoise_volume(volume, models["random"], opts(runtime, strength=0.75))
    out = result.volume
    assert out.shape == volume.shape and out.array.dtype == np.float32
    assert result.runtime == runtime and result.device == "cpu" and result.precision == "fp32"
    assert volume.metadata["pixel_padding_hu"] == -3024
    np.testing.assert_array_equal(result.noise().array, volume.array - out.array)
    assert "pixel_padding_hu" not in result.noise().metadata
    assert (out.spacing, out.origin, out.direction) == (volume.spacing, volume.origin, volume.direction)
    assert out.metadata["strength"] == 0.75 and out.metadata["denoised_with"]["preset"] == "fast"
    assert out.metadata["denoised_with"]["file"] == "random.safetensors"
    assert out.metadata["modality"] == volume.metadata["modality"]


def test_the_runtimes_agree_on_real_ct(models: dict[str, Path]) -> None:
    volume = read_volume(DICOM_SERIES)
    hu = volume.array[9:11]
    torch_out = denoise_array(hu, models["random"], opts("torch"))
    onnx_out = denoise_array(hu, models["random"], opts("onnxruntime"))
    assert np.abs(torch_out - hu).max() > 10  # the random model changes the image ...
    assert np.abs(onnx_out - torch_out).max() < 0.5  # ... the same way on both runtimes (HU; export checks 0.5)
    with pytest.raises(CTDenoiseError, match="carries no inference graph"):
        denoise_array(hu, load_checkpoint(models["random"]), opts("onnxruntime"))


def test_denoise_file_writes_output_and_noise(
    models: dict[str, Path], dicom_subset: Path, tmp_path: Path, runtime: str
) -> None:
    infos: list[ProgressInfo] = []
    summary = denoise_file(
        dicom_subset,
        tmp_path / "den.nii.gz",
        models["random"],
        CPU,
        noise_output=tmp_path / "noise.nrrd",
        progress=infos.append,
    )
    source = read_volume(dicom_subset)
    out = read_volume(tmp_path / "den.nii.gz")
    noise = read_volume(tmp_path / "noise.nrrd")
    assert summary["slices"] == 4 and summary["device"] == "cpu" and summary["seconds"] > 0
    assert summary["output"] == str(tmp_path / "den.nii.gz") and summary["noise_output"] == str(tmp_path / "noise.nrrd")
    assert (
        out.shape == source.shape
        and np.allclose(out.spacing, source.spacing)
        and np.allclose(out.origin, source.origin)
    )
    np.testing.assert_allclose(noise.array, source.array - out.array, atol=1.0)  # both stored as whole HU
    assert np.abs(noise.array).max() > 10
    assert infos[-1].fraction == 1.0


def test_denoise_file_dicom_output_names_the_model(models: dict[str, Path], dicom_subset: Path, tmp_path: Path) -> None:
    import pydicom

    denoise_file(dicom_subset, tmp_path / "den", models["zero"], opts(strength=0.5))
    files = sorted((tmp_path / "den").iterdir())
    assert len(files) == 4
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.SeriesDescription == "CT Body 3.0 denoised (ctdenoise fast, strength 0.5)"
    np.testing.assert_array_equal(read_volume(tmp_path / "den").array, read_volume(dicom_subset).array)


def test_denoise_file_cancelled_leaves_nothing(
    models: dict[str, Path], dicom_subset: Path, tmp_path: Path, runtime: str
) -> None:
    infos: list[ProgressInfo] = []
    with pytest.raises(DenoiseCancelled):
        denoise_file(
            dicom_subset,
            tmp_path / "den.nii.gz",
            models["random"],
            opts(runtime, batch_size=2),
            noise_output=tmp_path / "noise.nii.gz",
            progress=infos.append,
            cancel=lambda: bool(infos),
        )
    assert len(infos) == 1 and list(tmp_path.iterdir()) == []


def _fail_writing(monkeypatch: pytest.MonkeyPatch, name: str, before_failing: Callable[[], bool]) -> list[Path]:
    """Make ``write_volume`` fail for the output called ``name`` once ``before_failing()`` holds;
    other writes go through and are listed in the returned list."""
    real = writers.write_volume
    written: list[Path] = []

    def write_volume(volume, path, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).name == name:
            assert before_failing()
            raise CTDenoiseError("disk full (simulated)")
        written.append(real(volume, path, **kwargs))
        return written[-1]

    monkeypatch.setattr(writers, "write_volume", write_volume)
    return written


def test_failed_output_write_removes_the_noise_output(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _fail_writing(
        monkeypatch, "den.nii.gz", lambda: sorted(p.name for p in tmp_path.iterdir()) == ["noise.mhd", "noise.zraw"]
    )
    source = DATA / "tcga_lung_ctmi" / sorted(os.listdir(DATA / "tcga_lung_ctmi"))[0]
    with pytest.raises(CTDenoiseError, match="disk full"):
        denoise_file(source, tmp_path / "den.nii.gz", models["random"], CPU, noise_output=tmp_path / "noise.mhd")
    assert len(written) == 1 and list(tmp_path.iterdir()) == []


def test_failed_output_write_empties_a_noise_folder_that_existed_empty(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    noise = tmp_path / "noise"
    noise.mkdir()
    written = _fail_writing(monkeypatch, "den.nii.gz", lambda: [p.suffix for p in noise.iterdir()] == [".dcm"])
    source = DATA / "tcga_lung_ctmi" / sorted(os.listdir(DATA / "tcga_lung_ctmi"))[0]
    with pytest.raises(CTDenoiseError, match="disk full"):
        denoise_file(source, tmp_path / "den.nii.gz", models["random"], CPU, noise_output=noise)
    assert written == [noise.absolute()]  # the one-slice noise series was written into the folder ...
    assert [p.name for p in tmp_path.iterdir()] == ["noise"] and list(noise.iterdir()) == []  # ... and removed


class _RunsCode:
    """Pickles to a call of os.system: loading it with full unpickling would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"G_Q2F_state_dict": _RunsCode(marker)}, handle, protocol=2)
    torch.save({"G_Q2F_state_dict": _RunsCode(marker), "epoch": 1}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        with pytest.raises(CTDenoiseError, match="refused to load .* not a plain weights file"):
            denoise_file(DICOM_SERIES, tmp_path / "out.nii.gz", path, CPU)
    assert not marker.exists() and not (tmp_path / "out.nii.gz").exists()


def test_denoise_file_refuses_bad_paths_before_computing(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_calls(monkeypatch, lambda x: False)
    nifti = tmp_path / "ct.nii.gz"
    denoise_file(DATA / "tcga_lung_ctmi" / sorted(os.listdir(DATA / "tcga_lung_ctmi"))[0], nifti, models["zero"], CPU)
    calls.clear()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.dcm").write_bytes(b"x")
    refused = {  # case: (output, noise output, the refusal's message)
        "same as the input": (nifti, None, "^output .* is the input"),
        "noise output is the input": (tmp_path / "b.nii.gz", nifti, "^noise output .* is the input"),
        "noise output is the output": (tmp_path / "b.nii.gz", tmp_path / "b.nii.gz", "collides with the output"),
        "unsupported extension": (tmp_path / "b.txt", None, "unsupported extension '.txt'"),
        "non-empty DICOM folder": (tmp_path / "full", None, "output folder .* exists and is not empty"),
        "inside the input DICOM folder": (DICOM_SERIES / "out.nii.gz", None, "lies inside the input DICOM folder"),
    }
    for case, (output, noise, message) in refused.items():
        source = DICOM_SERIES if "DICOM folder" in case and "input" in case else nifti
        with pytest.raises(CTDenoiseError, match=message):
            denoise_file(source, output, models["zero"], CPU, noise_output=noise)
        assert calls == [], case
    with pytest.raises(CTDenoiseError, match="does not exist"):
        denoise_file(nifti, tmp_path / "c.nii.gz", tmp_path / "missing.safetensors", CPU)
    with pytest.raises(CTDenoiseError, match="does not exist"):
        denoise_file(tmp_path / "missing.nii.gz", tmp_path / "c.nii.gz", models["zero"], CPU)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "full"]


def test_bundled_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {name: bundled_model_path(name).name for name in inference.BUNDLED_MODELS} == inference.BUNDLED_MODELS
    assert describe_model("supervised").path == bundled_model_path("supervised")
    assert describe_model(None).path == bundled_model_path() == bundled_model_path("cyclegan")
    assert inference.model_path(None) == bundled_model_path() and inference.model_path("x.pt") == Path("x.pt")
    with pytest.raises(CTDenoiseError, match="no bundled model is named 'fast': use one of cyclegan, supervised"):
        bundled_model_path("fast")
    monkeypatch.setitem(inference.BUNDLED_MODELS, "cyclegan", "no_such_model.safetensors")
    with pytest.raises(CTDenoiseError, match="no bundled model found at .*no_such_model.safetensors: reinstall"):
        bundled_model_path()
