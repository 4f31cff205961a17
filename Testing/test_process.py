"""The process runner against the real engine in a child process, on real CT: success, cancel, failures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CycleGANDenoiseLib import arrays
from CycleGANDenoiseLib.command import denoise_command, engine_environment
from CycleGANDenoiseLib.process import EngineProcess, popen_launcher

from ctdenoise import DenoiseOptions, read_volume

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "training" / "src"
ABDOMEN = ROOT / "data" / "totalsegmentator" / "example_ct_dicom"
PADDED = ROOT / "data" / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm"
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
"""A stand-in for Slicer's PythonSlicer: a launcher process whose child is the real Python."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie has ended
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return True


def _nrrd(source: Path, folder: Path, slices: slice | None = None) -> tuple[Path, np.ndarray]:
    """A real volume written as Slicer writes its input (an NRRD with the volume's geometry)."""
    image = sitk.ReadImage(str(source)) if source.is_file() else None
    volume = read_volume(source)
    array = volume.array.astype(np.int16)[slices or slice(None)]
    if image is None:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(volume.spacing)
        image.SetOrigin(volume.origin)
        image.SetDirection(volume.direction)
    matrix = np.eye(4)
    matrix[:3, :3] = arrays.RAS_TO_LPS @ np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = arrays.RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return arrays.write_volume_file(array, matrix, folder / "input.nrrd"), array


def _start(source: Path, tmp_path: Path, launcher_code: str | None = None, **options: object) -> EngineProcess:
    command = denoise_command(sys.executable, source, tmp_path / "output.nrrd", DenoiseOptions(device="cpu", **options))
    if launcher_code:
        command = [sys.executable, "-c", launcher_code, *command]
    return EngineProcess(command, engine_environment(ENGINE), popen_launcher)


def test_a_run_reports_progress_and_writes_the_result(tmp_path: Path) -> None:
    source, array = _nrrd(PADDED, tmp_path)
    process = _start(source, tmp_path)
    seen = []
    assert process.wait(timeout=120, on_event=seen.append) == "succeeded"
    kinds = [e.kind for e in seen]
    assert kinds[0] == "started" and kinds[-1] == "done" and "progress" in kinds
    assert process.returncode == 0 and process.summary["runtime"] == "onnxruntime"
    assert process.summary["padding_voxels"] == 55772
    out = arrays.read_volume_file(tmp_path / "output.nrrd", array.shape)
    padding = array == -3024
    np.testing.assert_array_equal(out[padding], -3024)
    assert np.abs(out.astype(float) - array)[~padding].mean() > 1


def test_cancel_mid_run_kills_launcher_and_engine_at_once(tmp_path: Path) -> None:
    source, _ = _nrrd(ABDOMEN, tmp_path)
    process = _start(source, tmp_path, LAUNCHER, runtime="torch")  # the slower runtime: 20 slices take long
    deadline = time.monotonic() + 120
    engine_pid, progressed = None, False
    while not (engine_pid and progressed):
        for event in process.poll():
            engine_pid = event.data["pid"] if event.kind == "started" else engine_pid
            progressed = progressed or event.kind == "progress"
        assert time.monotonic() < deadline and process.running, process.error
        time.sleep(0.05)
    launcher_pid = process._process.pid
    assert engine_pid != launcher_pid and _alive(engine_pid)
    started = time.monotonic()
    process.cancel()
    assert time.monotonic() - started < 5
    assert process.state == "cancelled" and not process.running
    time.sleep(0.2)
    assert not _alive(engine_pid) and not _alive(launcher_pid)
    assert not (tmp_path / "output.nrrd").exists()
    process.poll()
    assert process.state == "cancelled"


def test_an_engine_error_fails_the_run_with_its_one_line_message(tmp_path: Path) -> None:
    volume = read_volume(PADDED)
    raw = tmp_path / "raw.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray((volume.array + 1024).astype(np.uint16)), str(raw))
    process = _start(raw, tmp_path)
    assert process.wait(timeout=60) == "failed" and process.returncode == 2
    assert "probably not in HU" in process.error and "raw stored values" in process.error
    assert not process.error.startswith("error:")


def test_a_crashing_process_fails_with_its_last_words(tmp_path: Path) -> None:
    crash = "import os, signal; print('loading the model', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
    process = EngineProcess([sys.executable, "-c", crash], {}, popen_launcher)
    assert process.wait(timeout=30) == "failed"
    assert process.returncode == -11 and process.error == "loading the model"
    silent = EngineProcess([sys.executable, "-c", "raise SystemExit(3)"], {}, popen_launcher)
    assert (
        silent.wait(timeout=30) == "failed" and silent.error == "the engine stopped with exit status 3 and no message"
    )


def test_a_missing_python_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        EngineProcess([str(tmp_path / "no-python"), "-c", "pass"], {}, popen_launcher)


def test_a_cancel_before_the_engine_reported_still_kills_it(tmp_path: Path) -> None:
    """Behind a launcher the engine's PID comes with its first line: cancel waits for it rather than orphan it."""
    source, _ = _nrrd(PADDED, tmp_path)
    process = _start(source, tmp_path, LAUNCHER)
    process.cancel()  # at once: nothing has been read yet
    assert process.state == "cancelled" and process._engine_pid is not None
    time.sleep(0.2)
    assert not _alive(process._engine_pid) and not _alive(process._process.pid)
