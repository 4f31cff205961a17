"""Tests of the ``ctdenoise`` command line on real CT slices with tiny random-init "fast" models.

Process-level behaviour (the installed console script, signals, what reaches stderr) runs the real
script in a subprocess; everything else calls :func:`ctdenoise.cli.main` in-process, which is faster.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from matplotlib.image import imread

from ctdenoise.checkpoints import build_metadata, export_model, read_model_metadata
from ctdenoise.cli import main
from ctdenoise.evaluation import FIGURE_DPI, PANEL_INCHES
from ctdenoise.io import Volume, read_volume, write_volume
from ctdenoise.networks import SeedGenerator, build_generator
from ctdenoise.normalization import HUNormalization

CONSOLE = Path(sys.executable).parent / "ctdenoise"
TINY = {"ngf": 8, "n_res_blocks": 1}
SLOWER = {"ngf": 16, "n_res_blocks": 2}
"""A model slow enough on 512x512 slices that a signal arrives while slices remain."""


# ---------------------------------------------------------------------------------------- helpers


def _digest(path: Path) -> str:
    """SHA-256 over a file, or over every file (names and bytes) below a folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed console script."""
    env = {k: v for k, v in os.environ.items() if k != "CTDENOISE_DEBUG"}
    return subprocess.run([str(CONSOLE), *args], capture_output=True, text=True, timeout=timeout, env=env)


def _main(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """``ctdenoise.cli.main`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_error_line(status: int, err: str, fragment: str) -> None:
    """Exit status 2 and exactly one stderr line ``error: ...`` that names the problem."""
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment.lower() in lines[0].lower(), lines[0]


def _export_fast(path: Path, args: dict[str, int]) -> Path:
    """A random-init "fast" generator exported as an inference model."""
    torch.manual_seed(0)
    generator = build_generator("fast", **args)
    metadata = build_metadata(preset="fast", generator_args=args, normalization=HUNormalization(), patch_size=32)
    return export_model({"G_Q2F": generator.state_dict()}, metadata, path)


def _crop(volume: Volume, z: slice, y0: int, x0: int, size: int) -> Volume:
    """A ``size`` x ``size`` crop of some slices, with the origin moved to its first voxel."""
    axes = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    shift = axes @ (np.array([x0, y0, z.start or 0]) * np.asarray(volume.spacing))
    origin = tuple(float(v) for v in np.asarray(volume.origin) + shift)
    array = np.ascontiguousarray(volume.array[z, y0 : y0 + size, x0 : x0 + size])
    return Volume(array, spacing=volume.spacing, origin=origin, direction=volume.direction)


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def ordered_series(dicom_series_dir: Path) -> list[Path]:
    """The real 20-slice series' files sorted by position along the scan axis."""
    files = [p for p in dicom_series_dir.iterdir() if p.is_file()]
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _copy_files(files: list[Path], folder: Path) -> Path:
    """Copy ``files`` into the new folder ``folder`` and return it."""
    folder.mkdir()
    for source in files:
        shutil.copy(source, folder / source.name)
    return folder


@pytest.fixture(scope="module")
def dicom2(work: Path, ordered_series: list[Path]) -> Path:
    """Two consecutive 512x512 slices of the real series in their own folder."""
    return _copy_files(ordered_series[9:11], work / "dicom2")


@pytest.fixture(scope="module")
def small_nii(work: Path, ordered_series: list[Path]) -> Path:
    """Three real slices cropped to the central 128x128 voxels, as .nii.gz (int16 HU)."""
    folder = _copy_files(ordered_series[9:12], work / "dicom3")
    return write_volume(_crop(read_volume(folder), slice(0, 3), 192, 192, 128), work / "small.nii.gz")


@pytest.fixture(scope="module")
def tiny_nii(work: Path, small_nii: Path) -> Path:
    """One 64x64 slice, for the costly seed generator."""
    return write_volume(_crop(read_volume(small_nii), slice(1, 2), 32, 32, 64), work / "tiny.nii.gz")


@pytest.fixture(scope="module")
def tiny_model(work: Path) -> Path:
    return _export_fast(work / "tiny.safetensors", TINY)


# ------------------------------------------------------------------------------- info and models


def test_info_prints_shape_and_spacing_of_a_dicom_folder(dicom_series_dir: Path) -> None:
    before = _digest(dicom_series_dir)
    result = _run("info", str(dicom_series_dir))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["shape_zyx"] == [20, 512, 512]
    assert info["spacing_xyz_mm"][:2] == pytest.approx([0.976562, 0.976562])
    assert info["spacing_xyz_mm"][2] > 0
    assert -1100 <= info["hu_min"] < info["hu_mean"] < info["hu_max"]
    assert info["metadata"]["modality"] == "CT"
    assert _digest(dicom_series_dir) == before


def test_models_prints_the_preset_rows(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _main(capsys, "models")
    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"seed", "fast", "patchgan"}
    assert rows["seed"][1] == "1,958,497" and rows["seed"][3] == "1.000"
    assert float(rows["fast"][2]) < float(rows["seed"][2])


# -------------------------------------------------------------------------------------- simulate


def _assert_same_grid(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-4)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-3)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def _assert_added_noise(difference: np.ndarray) -> None:
    """Zero-mean noise of a few HU, not just rounding."""
    assert difference.std() > 2.0
    assert abs(float(difference.mean())) < 0.2 * difference.std()


def test_simulate_writes_nifti_and_dicom_keeping_geometry(
    capsys: pytest.CaptureFixture[str], work: Path, small_nii: Path, dicom2: Path
) -> None:
    inputs = {path: _digest(path) for path in (small_nii, dicom2)}
    status, out, err = _main(capsys, "simulate", small_nii, work / "sim.nii.gz", "--seed", 3)
    assert status == 0, err
    assert "wrote" in out
    source, low = read_volume(small_nii), read_volume(work / "sim.nii.gz")
    _assert_same_grid(low, source)
    _assert_added_noise(low.array - source.array)

    status, _, err = _main(capsys, "simulate", dicom2, work / "sim_dicom", "--dose", "0.5")
    assert status == 0, err
    files = sorted((work / "sim_dicom").iterdir())
    assert len(files) == 2
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.Modality == "CT" and "simulated 0.5 dose" in header.SeriesDescription
    source, low = read_volume(dicom2), read_volume(work / "sim_dicom")
    _assert_same_grid(low, source)
    _assert_added_noise(low.array - source.array)
    assert {path: _digest(path) for path in inputs} == inputs


# --------------------------------------------------------------------------------------- denoise


def test_denoise_json_progress_and_noise_output(work: Path, small_nii: Path, tiny_model: Path) -> None:
    out, noise = work / "den_json" / "den.nii.gz", work / "den_json" / "noise.nii.gz"
    result = _run(
        "denoise",
        str(small_nii),
        str(out),
        "--checkpoint",
        str(tiny_model),
        "--device",
        "cpu",
        "--progress",
        "json",
        "--noise-out",
        str(noise),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = [json.loads(line) for line in result.stdout.splitlines()]
    started, progress, done = events[0], events[1:-1], events[-1]
    assert started["event"] == "started" and started["pid"] > 0 and started["version"]
    assert [e["event"] for e in progress] == ["progress"] * 3
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(set(fractions)) and fractions[-1] == 1.0
    assert [e["slices_done"] for e in progress] == [1, 2, 3]
    assert all(e["device"] == "cpu" and e["elapsed_s"] >= 0 and e["eta_s"] >= 0 for e in progress)
    assert progress[-1]["eta_s"] == 0
    assert done["event"] == "done" and done["slices"] == 3 and Path(done["output"]) == out.absolute()
    assert Path(done["noise_output"]) == noise.absolute() and done["model"]["preset"] == "fast"

    source, denoised, removed = (read_volume(p).array for p in (small_nii, out, noise))
    assert np.abs(denoised - source).mean() > 1.0  # the random model changes the image
    np.testing.assert_allclose(source - denoised, removed, atol=1.0)  # both outputs rounded to whole HU


def test_denoise_strength_zero_returns_the_input(
    capsys: pytest.CaptureFixture[str], work: Path, small_nii: Path, tiny_model: Path
) -> None:
    status, out, err = _main(
        capsys,
        "denoise",
        small_nii,
        work / "s0.nii.gz",
        "--checkpoint",
        tiny_model,
        "--strength",
        "0",
        "--progress",
        "none",
    )
    assert status == 0, err
    assert out.startswith(f"wrote {(work / 's0.nii.gz').absolute()} (3 slices in ")
    np.testing.assert_array_equal(read_volume(work / "s0.nii.gz").array, read_volume(small_nii).array)


def test_denoise_dicom_series_to_a_dicom_folder(
    capsys: pytest.CaptureFixture[str], work: Path, dicom2: Path, tiny_model: Path
) -> None:
    before = _digest(dicom2)
    target = work / "den_dicom"
    status, _, err = _main(capsys, "denoise", dicom2, target, "--checkpoint", tiny_model, "--batch-size", "2")
    assert status == 0, err
    assert err.count("0/2 slices") <= 1 and "2/2 slices" in err  # one progress bar on stderr
    files = sorted(target.iterdir())
    assert [f.suffix for f in files] == [".dcm", ".dcm"]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert "denoised (ctdenoise fast, strength 1)" in header.SeriesDescription
    source, denoised = read_volume(dicom2), read_volume(target)
    _assert_same_grid(denoised, source)
    assert not np.array_equal(denoised.array, source.array)

    written = _digest(target)
    status, _, err = _main(capsys, "denoise", dicom2, target, "--checkpoint", tiny_model)
    _assert_one_error_line(status, err, "not empty")
    status, _, err = _main(capsys, "denoise", dicom2, dicom2, "--checkpoint", tiny_model)
    _assert_one_error_line(status, err, "is the input")
    assert _digest(target) == written and _digest(dicom2) == before


def test_denoise_without_checkpoint_uses_the_bundled_model(work: Path, dicom2: Path) -> None:
    """The bundled model, as a user runs it: real 512x512 slices, JSON progress, the model named in the summary."""
    out = work / "bundled.NII.GZ"  # extensions in any case
    result = _run("denoise", str(dicom2), str(out), "--device", "cpu", "--progress", "json")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["model"]["file"] == "ctdenoise_fast_v5.safetensors"
    assert done["model"]["change_limit_hu"] == 320.0 and done["runtime"] in ("torch", "onnxruntime")
    source, denoised = read_volume(dicom2), read_volume(out)
    _assert_same_grid(denoised, source)
    change = denoised.array - source.array
    liver = (slice(None), slice(240, 270), slice(130, 170))
    assert 0.5 < np.abs(change[liver]).mean() < 30  # it changed the liver's texture ...
    assert abs(float(change[liver].mean())) < 1.0  # ... not its CT number
    assert np.abs(change).max() <= done["model"]["change_limit_hu"] + 0.5  # plus rounding to whole HU
    assert denoised.array[liver].std() < source.array[liver].std()
    assert done["passes"] == 1  # a full-dose abdomen is not noisier than the model's training full dose


def test_a_noisy_scan_gets_the_second_pass_unless_single_pass_is_asked(work: Path) -> None:
    """A sharp-kernel chest slice at quarter dose from `ctdenoise simulate`, denoised by the command."""
    chest = Path(__file__).resolve().parents[2] / "data" / "tcga_lung_ctmi" / "ID_0014_AGE_0071_CONTRAST_1_CT.dcm"
    low = work / "noisy.nii.gz"
    assert _run("simulate", str(chest), str(low), "--dose", "0.25", "--seed", "0").returncode == 0
    runs = {}
    for name, extra in (("twice", ()), ("once", ("--single-pass",))):
        out = work / f"{name}.nii.gz"
        result = _run("denoise", str(low), str(out), "--device", "cpu", "--progress", "json", *extra)
        assert result.returncode == 0, result.stderr
        runs[name] = (json.loads(result.stdout.splitlines()[-1]), read_volume(out).array.astype(np.float32))
    assert runs["twice"][0]["passes"] == 2 and runs["once"][0]["passes"] == 1
    source = read_volume(low).array.astype(np.float32)
    removed = {name: float(np.abs(array - source).mean()) for name, (_, array) in runs.items()}
    assert removed["twice"] > 1.2 * removed["once"]  # the second pass removes more
    assert np.abs(runs["twice"][1] - source).max() <= runs["twice"][0]["model"]["change_limit_hu"] + 0.5
    plain = _run("denoise", str(low), str(work / "plain.nii.gz"), "--device", "cpu")
    assert plain.returncode == 0 and "two passes" in plain.stdout, plain.stderr


def test_warnings_reach_stderr_and_the_json_stream(work: Path) -> None:
    """3 mm pixels are far outside the bundled model's training data: a warning line and a JSON event."""
    small = Path(__file__).resolve().parents[2] / "data" / "totalsegmentator" / "example_ct_sm.nii.gz"
    result = _run("denoise", str(small), str(work / "warned.nii.gz"), "--device", "cpu", "--progress", "json")
    assert result.returncode == 0, result.stderr
    warnings_json = [json.loads(line) for line in result.stdout.splitlines() if '"warning"' in line]
    assert len(warnings_json) == 1 and "pixel spacing 3 mm is far outside" in warnings_json[0]["message"]
    assert result.stderr.splitlines() == [f"warning: {warnings_json[0]['message']}"]
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["warnings"] == [warnings_json[0]["message"]]
    assert done["tta"] == 8 and done["tta_option"] == "auto"  # small slices of coarse pixels: 8 views
    plain = _run("denoise", str(small), str(work / "plain.nii.gz"), "--device", "cpu")
    assert plain.returncode == 0 and "8 views averaged" in plain.stdout, plain.stdout
    one = _run("denoise", str(small), str(work / "one.nii.gz"), "--device", "cpu", "--tta", "1", "--progress", "json")
    assert one.returncode == 0 and json.loads(one.stdout.splitlines()[-1])["tta"] == 1
    result = _run("simulate", str(small), str(work / "low.nrrd"), "--progress", "json")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # simulation has no model: no warning
    # the bundled supervised model, chosen by name, was trained on pixels up to 3 mm: no warning
    result = _run("denoise", str(small), str(work / "sup.nii.gz"), "--checkpoint", "supervised", "--progress", "json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["model"]["file"] == "ctdenoise_supervised_v5.safetensors"


def test_input_that_is_not_hu_is_refused_in_one_line_unless_forced(
    work: Path, small_nii: Path, tiny_model: Path
) -> None:
    volume = read_volume(small_nii)
    raw = work / "raw.nrrd"
    image = sitk.GetImageFromArray((volume.array + 1024).astype(np.uint16))
    sitk.WriteImage(image, str(raw))
    for command in (
        ["denoise", str(raw), str(work / "raw_out.nii.gz"), "--checkpoint", str(tiny_model)],
        ["simulate", str(raw), str(work / "raw_low.nii.gz")],
    ):
        result = _run(*command)
        _assert_one_error_line(result.returncode, result.stderr, "raw stored values (HU + 1024)")
        assert "--force" in result.stderr
    result = _run(
        "denoise",
        str(raw),
        str(work / "raw_out.nii.gz"),
        "--checkpoint",
        str(tiny_model),
        "--force",
        "--progress",
        "none",
    )
    assert result.returncode == 0 and "warning: " in result.stderr and "--force" in result.stderr
    result = _run("info", str(raw))
    assert result.returncode == 0 and json.loads(result.stdout)["looks_like_hu"] is False
    assert result.stderr.startswith("warning: ") and "raw stored values" in result.stderr


def test_simulate_checks_its_output_before_simulating(work: Path, dicom2: Path) -> None:
    (work / "taken").mkdir()
    (work / "taken" / "x.dcm").write_bytes(b"x")
    for target, message in (
        (work / "low.txt", "unsupported extension"),
        (work / "taken", "not empty"),
        (dicom2 / "inside", "inside the input DICOM folder"),
    ):
        start = time.perf_counter()
        result = _run("simulate", str(dicom2), str(target))
        _assert_one_error_line(result.returncode, result.stderr, message)
        assert time.perf_counter() - start < 20
    result = _run("simulate", str(dicom2), str(work / "LOW.NII.GZ"), "--dose", "0.5")
    assert result.returncode == 0, result.stderr
    assert read_volume(work / "LOW.NII.GZ").shape == (2, 512, 512)


@pytest.fixture(scope="module")
def slower_model(work: Path) -> Path:
    """A random-init fast model, with its ONNX graph, slow enough that a signal lands while slices remain."""
    from ctdenoise.export import write_model

    torch.manual_seed(0)
    metadata = build_metadata(preset="fast", generator_args=SLOWER, normalization=HUNormalization(), patch_size=32)
    return write_model({"G_Q2F": build_generator("fast", **SLOWER).state_dict()}, metadata, work / "slower.safetensors")


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_denoising_cleanly(
    tmp_path: Path, dicom_series_dir: Path, slower_model: Path, signum: int, runtime: str
) -> None:
    model = slower_model
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CTDENOISE_DEBUG"}
    process = subprocess.Popen(
        [
            str(CONSOLE),
            "denoise",
            str(dicom_series_dir),
            str(out_dir / "den.nii.gz"),
            "--checkpoint",
            str(model),
            "--device",
            "cpu",
            "--runtime",
            runtime,
            "--progress",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        started = json.loads(process.stdout.readline())
        assert started == {"event": "started", "pid": process.pid, "version": started["version"]}
        first = json.loads(process.stdout.readline())
        assert first["event"] == "progress" and first["slices_done"] < first["slices_total"]
        process.send_signal(signum)
        rest, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cancelled" in lines[0]
    assert all(json.loads(line)["event"] == "progress" for line in rest.splitlines())
    assert list(out_dir.iterdir()) == []  # no output and no temporary leftovers


# ------------------------------------------------------------------------------- one-line errors


class _TouchMarker:
    """Unpickling this would run ``Path.touch`` on the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def _bad_inputs(folder: Path, dicom_file: Path) -> dict[str, Path]:
    """Inputs that must be refused: name -> path."""
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("not a CT volume\n")
    (folder / "empty").mkdir(exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    from matplotlib.image import imsave

    imsave(folder / "photo.png", rgb)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(folder / "photo_rgb.mha"))
    nan = np.zeros((2, 16, 16), dtype=np.float32)
    nan[1, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(folder / "nan.nii.gz"))
    mr = pydicom.dcmread(dicom_file)
    mr.Modality = "MR"
    mr.save_as(folder / "mr.dcm")
    return {
        "missing": folder / "missing.nii.gz",
        "text": folder / "notes.txt",
        "empty": folder / "empty",
        "png": folder / "photo.png",
        "rgb_mha": folder / "photo_rgb.mha",
        "nan": folder / "nan.nii.gz",
        "mr": folder / "mr.dcm",
    }


INPUT_ERRORS = {
    "missing": "does not exist",
    "text": "notes.txt",
    "empty": "empty",
    "png": "photo.png",
    "rgb_mha": "photo_rgb.mha",
    "nan": "NaN",
    "mr": "MR",
}


def test_bad_inputs_get_one_error_line_and_no_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ordered_series: list[Path], tiny_model: Path
) -> None:
    inputs = _bad_inputs(tmp_path / "inputs", ordered_series[10])
    before = _digest(tmp_path / "inputs")
    for name, path in inputs.items():
        status, _, err = _main(capsys, "denoise", path, tmp_path / "out.nii.gz", "--checkpoint", tiny_model)
        _assert_one_error_line(status, err, INPUT_ERRORS[name])
        assert not (tmp_path / "out.nii.gz").exists()
    assert _digest(tmp_path / "inputs") == before


def test_the_console_script_prints_one_line_for_input_and_usage_errors(tmp_path: Path) -> None:
    result = _run("info", str(tmp_path / "missing.nii.gz"))
    _assert_one_error_line(result.returncode, result.stderr, "does not exist")
    result = _run("denoise", str(tmp_path))
    _assert_one_error_line(result.returncode, result.stderr, "required")
    assert "ctdenoise denoise --help" in result.stderr


def test_bad_checkpoints_and_options_get_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_nii: Path, tiny_model: Path
) -> None:
    marker = tmp_path / "marker"
    torch.save({"G_Q2F_state_dict": _TouchMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):  # the file really carries code
        torch.load(tmp_path / "evil.pt", weights_only=True)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    out = tmp_path / "out.nii.gz"
    cases: list[tuple[Sequence[Any], str]] = [
        (("denoise", small_nii, out, "--checkpoint", tmp_path / "evil.pt"), "refused"),
        (("convert-seed", tmp_path / "evil.pt", tmp_path / "evil.safetensors"), "refused"),
        (("denoise", small_nii, out, "--checkpoint", tmp_path / "absent.safetensors"), "does not exist"),
        (("denoise", small_nii, out, "--checkpoint", tiny_model, "--strength", "2"), "strength must be"),
        (("denoise", small_nii, out, "--checkpoint", tiny_model, "--strength", "x"), "--strength"),
        (("denoise", small_nii, out, "--checkpoint", tiny_model, "--batch-size", "0"), "batch size"),
        (("denoise", small_nii, out, "--checkpoint", tiny_model, "--tile-size", "4"), "tile size"),
        (("denoise", small_nii, out, "--checkpoint", tiny_model, "--precision", "int8", "--runtime", "torch"), "int8"),
        (("denoise", small_nii, out, "--checkpoint", tiny_model, "--precision", "bf16", "--device", "cpu"), "bf16"),
        (("denoise", small_nii, tmp_path / "out.txt", "--checkpoint", tiny_model), "extension"),
        (("denoise", small_nii, small_nii, "--checkpoint", tiny_model), "is the input"),
        (("compare", small_nii, small_nii, "--roi", "0:2,5:1,0:4"), "ROI"),
        (("compare", small_nii, small_nii, "--roi", "0:9,0:4,0:4"), "outside the volume"),
        (("compare", small_nii, small_nii, "--png", small_nii), "is the input"),
        (("convert-seed", tmp_path / "other.pth", tmp_path / "other.safetensors"), "not a seed-project checkpoint"),
        (("export", tmp_path / "other.pth", "--out", tmp_path / "x.safetensors"), "not a ctdenoise training state"),
        (("export", tmp_path / "other.pth", "--out", tmp_path / "x.pt"), "must end in .safetensors"),
        (("convert-seed", tmp_path / "absent.pth", tmp_path / "x.safetensors"), "does not exist"),
        (("compare", small_nii, small_nii, "--png", tmp_path / "figure.jpg"), "should end in .png"),
        (("simulate", small_nii, tmp_path / "low.txt"), "unsupported extension"),
        (("prepare", tmp_path / "absent", "--out", tmp_path / "cache"), "does not exist"),
    ]
    if not torch.cuda.is_available():
        cases.append((("denoise", small_nii, out, "--checkpoint", tiny_model, "--device", "cuda"), "CUDA"))
    before = _digest(small_nii)
    for args, fragment in cases:
        status, _, err = _main(capsys, *args)
        _assert_one_error_line(status, err, fragment)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt", "other.pth"]
    assert _digest(small_nii) == before


# ---------------------------------------------------------------------------- seed and compare


def test_convert_seed_then_denoise_with_it(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_nii: Path) -> None:
    torch.manual_seed(1)
    states = {f"{name}_state_dict": SeedGenerator().state_dict() for name in ("G_Q2F", "G_F2Q")}
    torch.save({**states, "D_Q_state_dict": {"w": torch.zeros(2)}, "epoch": 7}, tmp_path / "seed.pth")
    status, out, err = _main(capsys, "convert-seed", tmp_path / "seed.pth", tmp_path / "seed.safetensors")
    assert status == 0, err
    assert "seed.safetensors" in out
    metadata = read_model_metadata(tmp_path / "seed.safetensors")
    assert metadata["generator"]["preset"] == "seed" and metadata["training"]["epoch"] == 7

    status, _, err = _main(
        capsys,
        "denoise",
        tiny_nii,
        tmp_path / "den.nii.gz",
        "--checkpoint",
        tmp_path / "seed.safetensors",
        "--progress",
        "none",
    )
    assert status == 0, err
    source, denoised = read_volume(tiny_nii).array, read_volume(tmp_path / "den.nii.gz").array
    assert denoised.shape == source.shape == (1, 64, 64)
    assert np.isfinite(denoised).all() and not np.array_equal(denoised, source)


def test_compare_writes_metrics_and_figure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_nii: Path, tiny_nii: Path
) -> None:
    for dose in ("0.25", "0.5"):
        status, _, err = _main(capsys, "simulate", small_nii, tmp_path / f"dose{dose}.nii.gz", "--dose", dose)
        assert status == 0, err
    files = {name: tmp_path / name for name in ("m.json", "m.md", "fig.png")}
    status, out, err = _main(
        capsys,
        "compare",
        small_nii,
        tmp_path / "dose0.25.nii.gz",
        tmp_path / "dose0.5.nii.gz",
        small_nii,
        "--names",
        "quarter dose",
        "half dose",
        "itself",
        "--roi",
        "0:3,44:84,44:84",
        "--json",
        files["m.json"],
        "--markdown",
        files["m.md"],
        "--png",
        files["fig.png"],
    )
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dose0.25.nii.gz", "dose0.5.nii.gz", *files])

    def strict(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    result = json.loads(files["m.json"].read_text(), parse_constant=strict)
    rows = result["rows"]
    assert list(rows) == ["full dose (reference)", "quarter dose", "half dose", "itself"]
    assert rows["itself"]["psnr"] is None and rows["itself"]["rmse_hu"] == 0.0  # infinite PSNR
    assert 10.0 < rows["quarter dose"]["psnr"] < rows["half dose"]["psnr"] < 80.0
    assert rows["quarter dose"]["rmse_hu"] > rows["half dose"]["rmse_hu"] > 0.0
    reference_std = rows["full dose (reference)"]["std_hu"]
    assert rows["quarter dose"]["std_hu"] > rows["half dose"]["std_hu"] > reference_std
    assert result["roi"] == "0:3,44:84,44:84" and result["convention"]["window_hu"] == [-160.0, 240.0]

    table = files["m.md"].read_text()
    assert table == out.split(f"wrote {files['fig.png']}")[0]
    assert "| itself | inf | 1.0000 | 0.0 |" in table
    image = imread(files["fig.png"])
    assert image.shape[:2] == (round(PANEL_INCHES[1] * FIGURE_DPI), round(5 * PANEL_INCHES[0] * FIGURE_DPI))
    assert not math.isnan(float(image.mean()))

    status, _, err = _main(capsys, "compare", small_nii, tiny_nii, "--json", tmp_path / "bad.json")
    _assert_one_error_line(status, err, "shape")
    assert not (tmp_path / "bad.json").exists()
