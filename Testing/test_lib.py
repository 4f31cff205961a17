"""CycleGANDenoiseLib without Slicer: command line, events, presets, volume files, blending, ROI, dependencies, devices."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CycleGANDenoiseLib import arrays, dependencies, devices, events, presets
from CycleGANDenoiseLib.command import denoise_command, engine_environment

from ctdenoise import DenoiseOptions, read_volume
from ctdenoise.cli import build_parser

DATA = Path(__file__).resolve().parents[1] / "data"
SMALL = DATA / "totalsegmentator" / "example_ct_sm.nii.gz"


def _ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """Slicer's IJK-to-RAS matrix of an ITK image (what a volume node holds)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = arrays.RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = arrays.RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return matrix


def test_the_command_carries_every_option_but_strength() -> None:
    options = DenoiseOptions(strength=0.4, device="cuda:1", runtime="torch", batch_size=3)
    command = denoise_command(
        "/slicer/bin/PythonSlicer", Path("in.nrrd"), Path("out.nrrd"), options, Path("m.safetensors")
    )
    assert command[:5] == ["/slicer/bin/PythonSlicer", "-u", "-m", "ctdenoise.cli", "denoise"]
    assert "--strength" not in command  # the module blends live; the engine runs at full strength
    args = build_parser().parse_args(command[4:])
    assert (args.progress, args.checkpoint, args.device, args.runtime, args.batch_size) == (
        "json",
        "m.safetensors",
        "cuda:1",
        "torch",
        3,
    )
    assert DenoiseOptions.from_cli(args) == DenoiseOptions(device="cuda:1", runtime="torch", batch_size=3)
    bundled = denoise_command("python", Path("in.nrrd"), Path("out.nrrd"), options, "supervised")
    assert build_parser().parse_args(bundled[4:]).checkpoint == "supervised"
    assert "--checkpoint" not in denoise_command("python", Path("in.nrrd"), Path("out.nrrd"), options)
    environment = engine_environment(Path("/ext/modules"), {"PYTHONPATH": "/other"}, cpu_only=True)
    assert environment["PYTHONPATH"].split(":")[0] == "/ext/modules" and environment["PYTHONPATH"].endswith("/other")
    assert environment["PYTHONUNBUFFERED"] == "1" and environment["CUDA_VISIBLE_DEVICES"] == "-1"


def test_engine_lines_become_events() -> None:
    progress = events.parse_line(
        json.dumps(
            {
                "event": "progress",
                "fraction": 0.45,
                "eta_s": 75.2,
                "slices_done": 9,
                "slices_total": 20,
                "runtime": "onnxruntime",
                "device": "cpu",
            }
        )
        + "\n"
    )
    assert progress.kind == "progress" and progress.text == "45% - 1 min 15 s left (9 of 20 slices, onnxruntime on cpu)"
    assert events.parse_line('{"event": "warning", "message": "no air"}').text == "no air"
    assert events.parse_line('{"event": "started", "pid": 42}').data == {"pid": 42}
    assert events.parse_line("error: input x does not exist: check the path") == events.Event(
        "error", {"text": "input x does not exist: check the path"}
    )
    assert events.parse_line("warning: printed on stderr too").kind == "log"
    assert events.parse_line("{not json").kind == "log"
    assert events.parse_line('{"event": "unknown"}').kind == "log"


def test_presets_hold_slicer_values_and_liver() -> None:
    assert (presets.preset("abdomen").width, presets.preset("abdomen").level) == (350.0, 40.0)
    assert presets.preset("lung").slicer_id == "CT_LUNG" and presets.preset("liver").slicer_id is None
    assert (presets.preset("liver").width, presets.preset("liver").level) == (150.0, 30.0)
    with pytest.raises(KeyError, match="unknown window preset"):
        presets.preset("heart")


@pytest.mark.parametrize("code", ["LPS", "RAS", "ASL"])
def test_volume_files_keep_slicers_geometry(code: str, tmp_path: Path) -> None:
    image = sitk.DICOMOrient(sitk.ReadImage(str(SMALL)), code)
    array = sitk.GetArrayFromImage(image)
    path = arrays.write_volume_file(array, _ijk_to_ras(image), tmp_path / "in.nrrd")
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(arrays.read_volume_file(path, array.shape), array)
    with pytest.raises(ValueError, match="for an input of"):
        arrays.read_volume_file(path, (1, 2, 3))


def test_blend_and_noise_match_the_engine_strength() -> None:
    source = np.array([[[-1000, 40, 300]]], dtype=np.int16)
    full = np.array([[[-1000, 20, 301]]], dtype=np.int16)
    np.testing.assert_array_equal(arrays.blend(source, full, 0.0), source)
    np.testing.assert_array_equal(arrays.blend(source, full, 1.0), full)
    half = arrays.blend(source, full, 0.5)
    assert half.dtype == np.int16 and half.tolist() == [[[-1000, 30, 300]]]  # 300.5 rounds to even
    assert arrays.removed_noise(source, half).tolist() == [[[0.0, 10.0, 0.0]]]
    floats = arrays.blend(source.astype(np.float32), full.astype(np.float32), 0.25)
    assert floats.dtype == np.float32 and floats[0, 0, 1] == 35.0


def test_preview_slab_is_the_axial_slice_with_its_position(tmp_path: Path) -> None:
    for code in ("LPS", "ASL"):
        image = sitk.DICOMOrient(sitk.ReadImage(str(SMALL)), code)
        array, matrix = sitk.GetArrayFromImage(image), _ijk_to_ras(image)
        axis = arrays.axial_axis(matrix)
        voxels, slab_to_ras, where = arrays.slab(array, matrix, axis, 12, 1)
        assert voxels.shape[axis] == 1 and where == slice(12, 13)
        written = sitk.ReadImage(str(arrays.write_volume_file(voxels, slab_to_ras, tmp_path / f"{code}.nrrd")))
        index = [0, 0, 0]
        index[2 - axis] = 12
        assert np.allclose(written.GetOrigin(), image.TransformIndexToPhysicalPoint(index))
        superior = np.abs(np.asarray(image.GetDirection()).reshape(3, 3)[2])
        assert superior[2 - axis] == superior.max()  # the slab runs across head-foot
    _, _, where = arrays.slab(array, matrix, axis, 0, 3)
    assert where == slice(0, 3)


def test_roi_statistics_inside_a_box_of_the_real_volume() -> None:
    volume = read_volume(SMALL)
    image = sitk.ReadImage(str(SMALL))
    matrix = _ijk_to_ras(image)
    centre_ijk = np.array([60, 50, 15, 1.0])
    centre = (matrix @ centre_ijk)[:3]
    corners = arrays.roi_corners(centre, [15.0, 15.0, 9.0], np.eye(3))
    box = arrays.roi_box(np.linalg.inv(matrix), corners, volume.shape)
    stats = arrays.roi_statistics(volume.array, box)
    expected = volume.array[box].astype(np.float64)
    assert stats == {"mean": float(expected.mean()), "std": float(expected.std()), "voxels": expected.size}
    assert [s.stop - s.start for s in box] == [4, 6, 6]  # 9 mm and 15 mm of 3 mm voxels, centred
    far = arrays.roi_box(np.linalg.inv(matrix), corners + 10_000, volume.shape)
    assert all(s.stop - s.start == 1 for s in far)  # clipped to the volume's edge


def test_dependencies_are_found_without_importing() -> None:
    assert dependencies.missing(["onnxruntime>=1.0"]) == []
    assert dependencies.missing(["onnxruntime>=999"]) == ["onnxruntime>=999"]
    assert dependencies.missing(["surely-not-installed-package>=1"]) == ["surely-not-installed-package>=1"]
    with pytest.raises(ValueError, match="comes with Slicer"):
        dependencies.missing(["numpy>=2"])
    assert dependencies.torch_installed()  # the test environment has PyTorch (from its metadata, not an import)
    assert not dependencies.needs_gpu("cpu") and not dependencies.needs_gpu("auto")
    assert dependencies.needs_gpu("auto", gpu_found=True)  # auto runs on the GPU PyTorch found
    assert dependencies.needs_gpu("cuda:0") and dependencies.needs_gpu("mps")
    assert "torch" not in " ".join(dependencies.CPU_REQUIREMENTS)


def test_another_onnxruntime_build_counts_as_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def version(name: str) -> str:
        if name == "onnxruntime-gpu":
            return "1.20.0"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert dependencies.missing(["onnxruntime>=1.17"]) == []  # installing onnxruntime beside it would conflict
    assert not dependencies.torch_installed()


def test_devices_are_listed_by_the_engine_in_a_child() -> None:
    report = devices.describe([sys.executable, "-c", devices.DESCRIBE], dict(os.environ))
    assert report.choices[0].id == "auto" and "cpu" in [c.id for c in report.choices]
    assert report.torch_version  # the test environment has PyTorch (CPU build)
    broken = devices.describe([sys.executable, "-c", "raise SystemExit('no engine here')"], {})
    assert [c.id for c in broken.choices] == ["auto", "cpu"] and "no engine here" in broken.notes[0]
    assert devices.parse_report(0, "not json", "").notes[0].startswith("could not list devices")


def test_a_gpu_the_machine_has_can_be_chosen_and_explained() -> None:
    no_torch = devices.report_from(
        {
            "devices": [{"id": "cpu", "name": "x86_64"}],
            "torch": None,
            "notes": ["an NVIDIA driver is present but PyTorch is not installed: ..."],
            "nvidia_driver": True,
            "apple_gpu": False,
        }
    )
    assert [c.id for c in no_torch.choices] == ["auto", "cpu", "cuda"] and no_torch.choices[2].installs_torch
    assert not no_torch.gpu_found and "NVIDIA driver" in no_torch.notes[0]
    gpu = devices.report_from(
        {
            "devices": [{"id": "cpu", "name": "x86_64"}, {"id": "cuda:0", "name": "NVIDIA H200", "memory_gb": 139.8}],
            "torch": "2.13",
        }
    )
    assert gpu.choices[0].label == "auto (cuda:0)" and gpu.choices[2].label == "cuda:0: NVIDIA H200, 139.8 GB"
    assert gpu.gpu_found
    mac = devices.report_from({"devices": [{"id": "cpu"}], "torch": None, "apple_gpu": True})
    assert mac.choices[-1].id == "mps" and mac.choices[-1].installs_torch
