"""``ctdenoise denoise --archive``: many studies in one process, resumable, one summary; sharded with torchrun.

The studies are three real slices of the TotalSegmentator DICOM series cropped to 128 x 128 and
written as NIfTI, NRRD and DICOM, denoised by the bundled model on ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ctdenoise.archive
import ctdenoise.inference
from ctdenoise import DenoiseOptions, denoise_archive
from ctdenoise.archive import SUMMARY_NAME, Study, find_studies
from ctdenoise.cli import main
from ctdenoise.errors import CTDenoiseError
from ctdenoise.inference import bundled_model_path
from ctdenoise.io import Volume, read_volume, write_volume

TRAINING = Path(__file__).resolve().parents[1]
GOOD = ("p1/ct.nii.gz", "p1/series", "p2/UPPER.NII.GZ", "p2/scan.nrrd")
"""The readable studies of the tree, relative to it, in archive order."""


def _cli(*args: Any) -> tuple[int, str, str]:
    """``ctdenoise.cli.main`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))


def _statuses(summary: dict[str, Any]) -> dict[str, str]:
    """Study status by output path relative to the output folder."""
    out = Path(summary["output"])
    return {Path(s["output"]).relative_to(out).as_posix(): s["status"] for s in summary["studies"]}


def _files(folder: Path) -> dict[str, int]:
    """Modification time (ns) of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crop(dicom_series_dir: Path) -> Volume:
    """Three real slices, the central 128 x 128 voxels."""
    volume = read_volume(dicom_series_dir)
    array = np.ascontiguousarray(volume.array[8:11, 192:320, 192:320])
    return Volume(array, spacing=volume.spacing, origin=volume.origin, direction=volume.direction)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, crop: Volume) -> Path:
    """An archive: NIfTI (two spellings), NRRD, a DICOM series folder, a broken file, and entries that are no studies."""
    root = tmp_path_factory.mktemp("archive") / "tree"
    for relative in GOOD:
        write_volume(crop, root / relative)
    (root / "bad.nii.gz").write_text("not an image")
    (root / "p2" / "notes.txt").write_text("not a study")
    write_volume(crop, root / ".hidden" / "skipped.nii.gz")
    return root


@pytest.fixture(scope="module")
def first_run(tree: Path) -> dict[str, Any]:
    """The archive denoised once with JSON progress, counting how often a runtime is opened."""
    out = tree.parent / "denoised"
    opened: list[object] = []
    real_open = ctdenoise.inference.open_runtime

    def counting_open(*args: Any) -> Any:
        opened.append(args)
        return real_open(*args)

    before = _files(tree)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ctdenoise.inference, "open_runtime", counting_open)
        status, stdout, stderr = _cli("denoise", "--archive", tree, out, "--device", "cpu", "--progress", "json")
    assert _files(tree) == before  # inputs untouched
    events = [json.loads(line) for line in stdout.splitlines()]
    return {
        "status": status,
        "stderr": stderr,
        "events": events,
        "opened": len(opened),
        "out": out,
        "summary": _summary(out),
    }


# ----------------------------------------------------------------------------------------- tests


def test_the_archive_is_mirrored_in_each_study_format_with_its_geometry(first_run: dict[str, Any], tree: Path) -> None:
    out = first_run["out"]
    for relative in GOOD:
        source, denoised = read_volume(tree / relative), read_volume(out / relative)
        assert denoised.shape == source.shape == (3, 128, 128), relative
        np.testing.assert_allclose(denoised.spacing, source.spacing, atol=1e-4)
        np.testing.assert_allclose(denoised.origin, source.origin, atol=1e-3)
        assert 0.5 < np.abs(denoised.array - source.array).mean() < 50, relative  # denoised, not copied or broken
    assert sorted(p.name for p in (out / "p1" / "series").iterdir()) == ["0001.dcm", "0002.dcm", "0003.dcm"]
    assert read_volume(out / "p1" / "series").metadata["format"] == "dicom"
    assert not (out / "bad.nii.gz").exists() and not (out / ".hidden").exists()
    assert sorted(p.name for p in out.iterdir()) == ["p1", "p2", SUMMARY_NAME]


def test_the_summary_records_every_study_and_the_broken_one(first_run: dict[str, Any]) -> None:
    assert first_run["status"] == 1, first_run["stderr"]
    assert first_run["opened"] == 1  # one model load for four studies
    summary = first_run["summary"]
    assert _statuses(summary) == {"bad.nii.gz": "failed", **dict.fromkeys(GOOD, "done")}
    assert summary["totals"] == {"studies": 5, "done": 4, "skipped": 0, "failed": 1, "pending": 0, "slices": 12}
    assert summary["complete"] and summary["world_size"] == 1 and summary["wall_seconds"] > 0
    assert summary["model"]["path"] == str(bundled_model_path()) and summary["options"]["device"] == "cpu"
    assert [(w["runtime"], w["device"]) for w in summary["workers"]] == [("onnxruntime", "cpu")]
    bad = summary["studies"][0]
    assert bad["status"] == "failed" and "bad.nii.gz" in bad["message"] and "\n" not in bad["message"]
    done = [s for s in summary["studies"] if s["status"] == "done"]
    assert all(s["slices"] == 3 and s["seconds"] > 0 and isinstance(s["warnings"], list) for s in done)
    events = first_run["events"]
    assert [e["event"] for e in events] == ["started"] + ["study"] * 5 + ["done"]
    assert [(e["index"], e["total"]) for e in events[1:-1]] == [(i, 5) for i in range(1, 6)]
    assert events[-1]["failed"] == 1 and events[-1]["summary"].endswith(SUMMARY_NAME)


def test_a_rerun_skips_finished_outputs_without_rewriting_them(first_run: dict[str, Any], tree: Path) -> None:
    out = first_run["out"]
    written = {k: v for k, v in _files(out).items() if k != SUMMARY_NAME}
    status, stdout, stderr = _cli("denoise", "--archive", tree, out, "--device", "cpu", "--progress", "none")
    assert status == 1
    assert stderr.splitlines() == [f"failed: {tree / 'bad.nii.gz'}: {first_run['summary']['studies'][0]['message']}"]
    assert stdout.startswith("0 denoised, 4 skipped (done before), 1 failed of 5 studies")
    assert {k: v for k, v in _files(out).items() if k != SUMMARY_NAME} == written
    assert _statuses(_summary(out)) == {"bad.nii.gz": "failed", **dict.fromkeys(GOOD, "skipped")}


def test_a_list_file_is_mirrored_below_the_common_parent_of_its_studies(tree: Path, tmp_path: Path) -> None:
    listed = tmp_path / "lists" / "studies.txt"
    listed.parent.mkdir()
    relative = os.path.relpath(tree / "p2" / "scan.nrrd", listed.parent)
    listed.write_text(f"# two studies\n\n  {tree / 'p1' / 'series'}  \n{relative}\n# {tree / 'bad.nii.gz'}\n")
    out = tmp_path / "out"
    status, stdout, stderr = _cli("denoise", "--archive", listed, out, "--device", "cpu", "--progress", "none")
    assert status == 0, stderr
    assert stdout.startswith("2 denoised, 0 skipped (done before), 0 failed of 2 studies")
    assert _statuses(_summary(out)) == {"p1/series": "done", "p2/scan.nrrd": "done"}
    assert read_volume(out / "p2" / "scan.nrrd").shape == (3, 128, 128)


def test_a_cancel_keeps_the_finished_outputs_and_a_rerun_continues(tree: Path, tmp_path: Path) -> None:
    listed = tmp_path / "studies.txt"
    listed.write_text(f"{tree / 'p2' / 'scan.nrrd'}\n{tree / 'p1' / 'ct.nii.gz'}\n")
    out = tmp_path / "out"
    seen: list[dict[str, Any]] = []
    options = DenoiseOptions(device="cpu")
    summary = denoise_archive(listed, out, options=options, progress=seen.append, cancel=lambda: bool(seen))
    assert not summary["complete"] and _statuses(summary) == {"p2/scan.nrrd": "done"}
    assert summary["totals"]["pending"] == 1 and not (out / "p1" / "ct.nii.gz").exists()
    summary = denoise_archive(listed, out, options=options)
    assert summary["complete"] and _statuses(summary) == {"p2/scan.nrrd": "skipped", "p1/ct.nii.gz": "done"}


def _refusal_cases(tree: Path, work: Path, first_out: Path) -> list[tuple[list[Any], str]]:
    """(arguments after 'denoise --archive', a fragment of the one error line) for each refusal."""
    twice, missing, dicom_file, nested = (work / name for name in ("twice.txt", "missing.txt", "file.txt", "nested"))
    twice.write_text(f"{tree / 'p2' / 'scan.nrrd'}\n{tree / 'p2' / 'scan.nrrd'}\n")
    missing.write_text(f"{tree / 'p1' / 'ct.nii.gz'}\n{tree / 'absent.nii.gz'}\n")
    dicom_file.write_text(f"{next((tree / 'p1' / 'series').iterdir())}\n")
    (nested / "series").mkdir(parents=True)
    for item in (tree / "p1" / "series").iterdir():
        (nested / "series" / item.name).write_bytes(item.read_bytes())
    (nested / "series" / "inner.nii.gz").write_bytes((tree / "p1" / "ct.nii.gz").read_bytes())
    return [
        ([tree, tree / "out"], "lies inside the input"),
        ([tree, tree], "is or lies inside the input"),
        ([tree / "p1", tree.parent], "lies inside the output folder"),
        ([tree, work / "o1", "--noise-out", work / "noise.nii.gz"], "--noise-out"),
        ([twice, work / "o2"], "would both be written to"),
        ([missing, work / "o3"], "line 2 of"),
        ([dicom_file, work / "o4"], "is not a study"),
        ([nested, work / "o5"], "lies inside the DICOM series folder"),
        ([tree / "p1" / "ct.nii.gz", work / "o6"], "is one image, not an archive"),
        ([tree, first_out, "--strength", "0.5"], "another model or strength"),
    ]


def test_bad_archives_are_refused_with_one_line_before_any_work(
    first_run: dict[str, Any], tree: Path, tmp_path: Path
) -> None:
    for args, fragment in _refusal_cases(tree, tmp_path, first_run["out"]):
        status, stdout, stderr = _cli("denoise", "--archive", *args, "--device", "cpu", "--progress", "none")
        lines = stderr.splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, stderr)
        assert fragment in lines[0], (args, lines[0])
        assert stdout == ""
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


def test_studies_are_files_and_folders_of_dicom_images(tree: Path, tmp_path: Path) -> None:
    series = tree / "p1" / "series"
    assert find_studies(series, tmp_path) == [Study(series, tmp_path / "series", True)]
    other = tmp_path / "no_studies"
    other.mkdir()
    (other / "LICENSE").write_text("text without extension")
    (other / "scan.raw").write_bytes(bytes(256))
    with pytest.raises(CTDenoiseError, match="no studies in"):
        find_studies(other, tmp_path / "out")


def test_the_archive_path_needs_no_torch(tree: Path, tmp_path: Path) -> None:
    listed = tmp_path / "one.txt"
    listed.write_text(f"{tree / 'p1' / 'ct.nii.gz'}\n")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from ctdenoise.cli import main\n"
        f"sys.exit(main(['denoise', '--archive', {str(listed)!r}, {str(tmp_path / 'out')!r}, "
        "'--runtime', 'onnxruntime', '--progress', 'none']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "ct.nii.gz").is_file()


def test_the_examples_in_the_docstrings_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TRAINING)  # examples name files as ../data/...
    result = doctest.testmod(ctdenoise.archive, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.slow
def test_torchrun_shares_the_studies_and_rank_0_merges_one_summary(tree: Path, tmp_path: Path) -> None:
    listed = tmp_path / "studies.txt"
    listed.write_text("".join(f"{tree / relative}\n" for relative in GOOD[:3]))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "ctdenoise.cli", "denoise", "--archive", str(listed), str(out), "--device", "cpu"]
    done = subprocess.run([*command, "--progress", "none"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(out)
    assert _statuses(summary) == dict.fromkeys(GOOD[:3], "done")
    assert summary["world_size"] == 2 and [w["rank"] for w in summary["workers"]] == [0, 1]
    assert summary["totals"]["done"] == 3 and summary["complete"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [SUMMARY_NAME]  # the rank parts are gone
    for relative in GOOD[:3]:
        assert read_volume(out / relative).shape == (3, 128, 128)
