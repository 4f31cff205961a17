"""Denoise an archive of studies in one process: a folder tree or a list file, one model load, resumable.

A *study* is one CT volume: a NIfTI, NRRD or MetaImage file, or a folder holding a DICOM series
(its own files; one series per folder). Its denoised copy goes to the same relative path under the
output folder, in its own format: a DICOM folder becomes a new DICOM series folder.

Resuming: every output appears complete in one rename (see :mod:`ctdenoise.io.writers`), so an
output that exists is a finished one and is skipped. A study that fails is recorded with its
one-line reason and the run goes on. ``summary.json`` in the output folder records every study, the
model and where it ran.

Sharding: with ``world_size`` W > 1 (``torchrun``), rank r takes studies r, r + W, r + 2W, ...;
each rank writes ``summary.rank{r}.json``, and after a Gloo barrier rank 0 merges them into
``summary.json``. PyTorch is imported only then.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from ctdenoise.errors import CTDenoiseError, CTDenoiseWarning, DenoiseCancelled
from ctdenoise.fileutils import atomic_write
from ctdenoise.inference import Denoiser, ModelLike
from ctdenoise.io.dicom import read_header
from ctdenoise.io.readers import IMAGE_FORMATS, dicom_like_name, image_suffix
from ctdenoise.options import DenoiseOptions
from ctdenoise.types import CancelCallback, PathLike

SUMMARY_NAME = "summary.json"
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
_STUDY_TYPES = ".nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd files and DICOM series folders"
_BARRIER_TIMEOUT = timedelta(days=7)
"""How long a rank waits at the end for the slowest one (torchrun stops every rank if one dies)."""

StudyCallback = Callable[[dict[str, Any]], None]
"""Called after each study with its record plus ``rank``, ``index`` (1-based) and ``total`` (this rank's share)."""


@dataclass(frozen=True)
class Study:
    """One study of an archive.

    Attributes:
        input: the image file or DICOM series folder, absolute.
        output: where its denoised copy goes, absolute.
        series: whether it is a DICOM series folder (its output too).
    """

    input: Path
    output: Path
    series: bool

    def finished(self) -> bool:
        """Whether the output exists: writes are atomic, so an existing output is complete."""
        if self.series:
            return self.output.is_dir() and any(self.output.iterdir())
        return self.output.is_file()


# ---------------------------------------------------------------------------------------- planning


def find_studies(source: PathLike, out_dir: PathLike) -> list[Study]:
    """The studies of ``source`` and their outputs under ``out_dir``, checked before any work.

    ``source`` is a folder tree (every image file and every folder directly holding DICOM images is
    a study; hidden entries are skipped; sorted by relative path) or a UTF-8 list file (one path
    per line, relative to the list's folder; blank lines and ``#`` comments ignored; list order).
    Outputs mirror the paths relative to the tree, or to the listed studies' common parent folder;
    a DICOM series held directly in the tree's root goes to ``out_dir/<root name>``.

    Raises:
        CTDenoiseError: no studies, a missing or unsupported listed path, an output folder inside
            an input (or the other way round), or two studies whose outputs coincide or nest.
    """
    source_path, out = Path(source), Path(os.path.abspath(out_dir))
    if not source_path.exists():
        raise CTDenoiseError(f"archive {source_path} does not exist: pass a folder tree or a list file of studies")
    if out.exists() and not out.is_dir():
        raise CTDenoiseError(f"output {out} is a file: give a folder for the denoised studies")
    if source_path.is_dir():
        root = Path(os.path.abspath(source_path))
        _check_apart([root], out)
        studies = [Study(path, out / _tree_relative(path, root), series) for path, series in _tree_inputs(root)]
        studies.sort(key=lambda study: study.output.relative_to(out).parts)
    else:
        listed = _listed_inputs(source_path)
        _check_apart(listed, out)
        base = Path(os.path.commonpath([path.parent for path in listed])) if listed else out
        studies = [Study(path, out / path.relative_to(base), path.is_dir()) for path in listed]
    if not studies:
        raise CTDenoiseError(f"no studies in {source_path}: it should hold or list {_STUDY_TYPES}")
    _check_outputs(studies)
    return studies


def _tree_relative(path: Path, root: Path) -> Path:
    """The output path of a study relative to the output folder."""
    return Path(root.name) if path == root else path.relative_to(root)


def _tree_inputs(root: Path) -> list[tuple[Path, bool]]:
    """``(path, is DICOM series folder)`` of every study below ``root``; unreadable folders raise."""
    found: list[tuple[Path, bool]] = []
    for folder, dirs, files in os.walk(root, onerror=_raise):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        here = Path(folder)
        names = sorted(name for name in files if not name.startswith("."))
        found += [(here / name, False) for name in names if image_suffix(Path(name)) in IMAGE_FORMATS]
        if any(_is_dicom_image(here / name) for name in names):
            found.append((here, True))
    return found


def _raise(error: OSError) -> None:
    """``os.walk``'s error handler: an unreadable folder stops the run instead of hiding its studies."""
    raise error


def _is_dicom_image(path: Path) -> bool:
    """Whether ``path`` is a DICOM image (a DICOMDIR or a report is not); only DICOM-like names are parsed without a preamble."""
    if image_suffix(path) in IMAGE_FORMATS:
        return False
    if not dicom_like_name(path) and not _has_preamble(path):
        return False
    try:
        return read_header(path) is not None
    except CTDenoiseError:  # damaged or unreadable: another file of the folder may still make it a series
        return False


def _has_preamble(path: Path) -> bool:
    """Whether the file carries DICOM's ``DICM`` marker after its 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _listed_inputs(list_file: Path) -> list[Path]:
    """The absolute paths a list file names, each checked to exist and be a study."""
    if image_suffix(list_file) in IMAGE_FORMATS:
        raise CTDenoiseError(
            f"{list_file} is one image, not an archive: give a folder tree or a text file listing studies "
            "(denoise one image without --archive)"
        )
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CTDenoiseError(
            f"{list_file} is not a text list of studies: give a folder tree or a UTF-8 file with one path per line"
        ) from None
    base = list_file.absolute().parent
    listed = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(os.path.abspath(base / Path(text).expanduser()))
        if not path.exists():
            raise CTDenoiseError(
                f"line {number} of {list_file}: {text} does not exist: fix the path or remove the line"
            )
        if path.is_file() and image_suffix(path) not in IMAGE_FORMATS:
            raise CTDenoiseError(f"line {number} of {list_file}: {text} is not a study: list {_STUDY_TYPES}")
        listed.append(path)
    return listed


def _check_apart(inputs: Sequence[Path], out: Path) -> None:
    """Refuse an output folder that is, or lies inside, an input, and inputs inside the output folder."""
    where = out.resolve()
    for path in inputs:
        source = path.resolve()
        if where == source or source in where.parents:
            raise CTDenoiseError(
                f"output folder {out} is or lies inside the input {path}: choose a folder outside it "
                "(a rerun would take the outputs for studies)"
            )
        if where in source.parents:
            raise CTDenoiseError(f"input {path} lies inside the output folder {out}: choose an output folder elsewhere")


def _check_outputs(studies: Sequence[Study]) -> None:
    """Refuse two studies with one output, and outputs inside a DICOM series output folder."""
    owners: dict[Path, Path] = {}
    for study in studies:
        if study.output in owners:
            raise CTDenoiseError(
                f"{owners[study.output]} and {study.input} would both be written to {study.output}: "
                "list each study once and keep their relative paths distinct"
            )
        owners[study.output] = study.input
    series = {study.output: study.input for study in studies if study.series}
    for study in studies:
        for parent in study.output.parents:
            if parent in series:
                raise CTDenoiseError(
                    f"{study.input} lies inside the DICOM series folder {series[parent]}, so its output would land "
                    "inside that series' output: move it out of the series folder"
                )


# ----------------------------------------------------------------------------------------- running


def denoise_archive(
    source: PathLike,
    out_dir: PathLike,
    model: ModelLike = None,
    options: Optional[DenoiseOptions] = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: Optional[StudyCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> dict[str, Any]:
    """Denoise every study of a folder tree or list file into ``out_dir``, loading the model once.

    Studies and outputs are found by :func:`find_studies`. A finished output is skipped, a study
    that fails is recorded with its reason and the run goes on; a ``cancel()`` stops between
    batches, leaving the finished outputs (rerun to continue). ``out_dir/summary.json`` is written
    atomically at the end; a folder whose summary names another model or strength is refused, so
    outputs are never mixed. With ``world_size`` > 1 (under ``torchrun``, see :func:`~ctdenoise.devices.torchrun_rank`
    and :func:`rank_options`) this rank takes studies ``rank::world_size`` and rank 0 merges the
    ranks' summaries after a Gloo barrier.

    Returns:
        The summary: ``input``, ``output``, ``model`` (its path and facts), ``options``,
        ``world_size``, ``complete`` (False after a cancel), ``wall_seconds``, ``workers`` (rank,
        runtime, device, seconds), ``totals`` (studies, done, skipped, failed, pending, slices) and
        ``studies``: per study ``input``, ``output``, ``status`` (done, skipped or failed),
        ``seconds``, ``slices``, ``warnings`` (done) or ``message`` (failed). Ranks other than 0
        return their own part.

    Examples:
        >>> import pathlib, tempfile
        >>> from ctdenoise import denoise_archive
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "studies.txt").write_text(str(pathlib.Path("../data/totalsegmentator/example_ct_sm.nii.gz").resolve()))
        >>> summary = denoise_archive(folder / "studies.txt", folder / "denoised")
        >>> summary["totals"]["done"], (folder / "denoised" / "example_ct_sm.nii.gz").is_file()
        (1, True)
        >>> denoise_archive(folder / "studies.txt", folder / "denoised")["studies"][0]["status"]
        'skipped'
    """
    started = time.perf_counter()
    _check_rank(rank, world_size)
    studies = find_studies(source, out_dir)
    out = Path(os.path.abspath(out_dir))
    denoiser = Denoiser(model, options)
    header = {
        "input": str(Path(os.path.abspath(source))),
        "output": str(out),
        "model": {"path": str(denoiser.model.path), **denoiser.model.summary()},
        "options": asdict(denoiser.options),
    }
    _check_previous(out / SUMMARY_NAME, header)
    with _process_group(rank, world_size) as barrier:
        share = studies[rank::world_size]
        records, complete, where = _run_share(share, denoiser, rank, progress, cancel)
        part = {
            **header,
            "rank": rank,
            **where,
            "complete": complete,
            "pending": len(share) - len(records),
            "wall_seconds": round(time.perf_counter() - started, 3),
            "studies": records,
        }
        if world_size == 1:
            return _write_summary(out, [part], studies, started)
        return _merge_ranks(out, part, world_size, barrier, studies, started)


def _check_rank(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and isinstance(rank, int) and world_size >= 1 and 0 <= rank < world_size):
        raise CTDenoiseError(f"rank {rank!r} of world size {world_size!r} is impossible: 0 <= rank < world size")


def _run_share(
    share: Sequence[Study],
    denoiser: Denoiser,
    rank: int,
    progress: Optional[StudyCallback],
    cancel: Optional[CancelCallback],
) -> tuple[list[dict[str, Any]], bool, dict[str, str]]:
    """Each study in turn: ``(records, finished without a cancel, runtime and device)``.

    The runtime is opened before the first study that needs it, outside the per-study error
    handling: a model or device that cannot run is the run's error, not every study's.
    """
    records: list[dict[str, Any]] = []
    where = {"runtime": "none", "device": "none"}
    for index, study in enumerate(share, 1):
        if cancel is not None and cancel():
            return records, False, where
        if study.finished():
            record = _record(study, SKIPPED, 0.0)
        else:
            runtime = denoiser.open()
            where = {"runtime": runtime.name, "device": str(runtime.device)}
            try:
                record = _denoise_study(study, denoiser, cancel)
            except DenoiseCancelled:
                return records, False, where
        records.append(record)
        if progress is not None:
            progress({"rank": rank, "index": index, "total": len(share), **record})
    return records, True, where


def _denoise_study(study: Study, denoiser: Denoiser, cancel: Optional[CancelCallback]) -> dict[str, Any]:
    """Denoise one study; its failure becomes a record, a cancel propagates.

    A series output folder is created empty first, so ``write_volume`` writes a DICOM series
    whatever its name (``1.5mm``); it is removed again if the study fails. The study's warnings
    go to its record rather than to the console, where they could not say which study they are about.
    """
    started = time.perf_counter()
    try:
        if study.series:
            study.output.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CTDenoiseWarning)
            facts = denoiser.file(study.input, study.output, cancel=cancel)
    except Exception as exc:
        if study.series:
            with contextlib.suppress(OSError):
                study.output.rmdir()
        if isinstance(exc, DenoiseCancelled):
            raise
        return _record(study, FAILED, time.perf_counter() - started, message=_reason(exc))
    return _record(
        study,
        DONE,
        facts["seconds"],
        slices=facts["slices"],
        warnings=facts["warnings"],
        passes=facts["passes"],
        tta=facts["tta"],
    )


def _record(study: Study, status: str, seconds: float, slices: Optional[int] = None, **facts: Any) -> dict[str, Any]:
    return {
        "input": str(study.input),
        "output": str(study.output),
        "status": status,
        "seconds": round(seconds, 3),
        "slices": slices,
        **facts,
    }


def _reason(exc: Exception) -> str:
    """One line about why a study failed."""
    if isinstance(exc, CTDenoiseError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)
    return f"internal error {type(exc).__name__}: {exc} (denoise this study alone with CTDENOISE_DEBUG=1 for details)"


# ---------------------------------------------------------------------------------------- summaries


def _part_name(rank: int) -> str:
    return f"summary.rank{rank}.json"


def _merge_ranks(
    out: Path,
    part: dict[str, Any],
    world_size: int,
    barrier: Callable[[], None],
    studies: Sequence[Study],
    started: float,
) -> dict[str, Any]:
    """Write this rank's part and wait for every rank; rank 0 then merges the parts into the summary and removes them."""
    rank = part["rank"]
    atomic_write(out / _part_name(rank), lambda tmp: tmp.write_text(json.dumps(part, indent=2), encoding="utf-8"))
    barrier()
    if rank != 0:
        return part
    parts = [part] + [_read_json(out / _part_name(r)) for r in range(1, world_size)]
    summary = _write_summary(out, parts, studies, started)
    for r in range(world_size):
        (out / _part_name(r)).unlink(missing_ok=True)
    return summary


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CTDenoiseError(f"{path} is not a ctdenoise summary: remove it or choose another output folder") from None


def _check_previous(path: Path, header: dict[str, Any]) -> None:
    """Refuse to resume where a previous run used another model or strength: its outputs would be skipped as done."""
    if not path.is_file():
        return
    previous = _read_json(path)
    current = json.loads(json.dumps(header, default=str))
    if not isinstance(previous, dict) or _identity(previous) != _identity(current):
        raise CTDenoiseError(
            f"{path.parent} holds outputs of another model or strength ({path}): choose a new output folder, "
            "or rerun with the same --checkpoint and --strength"
        )


def _identity(summary: dict[str, Any]) -> tuple[Any, Any]:
    """What makes outputs comparable: the model's facts (not where its file lies) and the strength."""
    model = {k: v for k, v in (summary.get("model") or {}).items() if k != "path"}
    return model, (summary.get("options") or {}).get("strength")


def _write_summary(
    out: Path, parts: Sequence[dict[str, Any]], studies: Sequence[Study], started: float
) -> dict[str, Any]:
    """Merge the ranks' parts into ``out/summary.json`` (studies in archive order) and return it."""
    order = {str(study.output): index for index, study in enumerate(studies)}
    records = sorted((r for part in parts for r in part["studies"]), key=lambda r: order[r["output"]])
    statuses = [r["status"] for r in records]
    first = parts[0]
    summary = {
        **{key: first[key] for key in ("input", "output", "model", "options")},
        "world_size": len(parts),
        "complete": all(part["complete"] for part in parts),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "workers": [
            {key: part[key] for key in ("rank", "runtime", "device", "wall_seconds", "complete")} for part in parts
        ],
        "totals": {
            "studies": len(studies),
            "done": statuses.count(DONE),
            "skipped": statuses.count(SKIPPED),
            "failed": statuses.count(FAILED),
            "pending": sum(part["pending"] for part in parts),
            "slices": sum(r["slices"] or 0 for r in records if r["status"] == DONE),
        },
        "studies": records,
    }
    atomic_write(out / SUMMARY_NAME, lambda tmp: tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8"))
    return summary


# -------------------------------------------------------------------------------------- torchrun


def rank_options(options: DenoiseOptions, local_rank: int) -> DenoiseOptions:
    """``options`` with device ``cuda``, or ``auto`` where CUDA works, pinned to this process's GPU ``cuda:local_rank``.

    Examples:
        >>> rank_options(DenoiseOptions(device="cuda"), 1).device, rank_options(DenoiseOptions(device="cpu"), 1).device
        ('cuda:1', 'cpu')
    """
    if options.device == "cuda" or (options.device == "auto" and _cuda_available()):
        return replace(options, device=f"cuda:{local_rank}")
    return options


def _cuda_available() -> bool:
    from ctdenoise.devices import nvidia_driver_present, torch_available

    if not (torch_available() and nvidia_driver_present()):
        return False
    import torch

    return bool(torch.cuda.is_available())


@contextlib.contextmanager
def _process_group(rank: int, world_size: int) -> Iterator[Callable[[], None]]:
    """A barrier among the ranks: Gloo over ``torch.distributed``, set up here unless the caller did."""
    if world_size == 1:
        yield lambda: None
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise CTDenoiseError(
                f"world size {world_size} needs torch.distributed's {' and '.join(missing)}: launch with torchrun"
            )
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=_BARRIER_TIMEOUT)
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=_BARRIER_TIMEOUT)
    try:
        yield lambda: dist.barrier(group=group)
    finally:
        if created:
            dist.destroy_process_group()
