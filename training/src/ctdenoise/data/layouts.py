"""Finding the scans of a training data set on disk.

Three layouts are recognised:

* AAPM / Mayo Low-Dose CT Grand Challenge: ``<patient>/{full,quarter}_{1,3}mm/`` folders of
  ``.IMA``/``.dcm`` files, also nested as in the official archive
  (``Training_Image_Data/1mm B30/FD_1mm/L067/full_1mm/``), where the ``"<thickness> <kernel>"``
  folder names the reconstruction kernel.
* the seed project: ``{train,test}/{full_dose,quarter_dose}/N.npy`` 2-D slices in linear
  attenuation; each split+dose folder is one volume (its slices stacked in file-number order).
* generic: a folder of full-dose volumes and a folder of low-dose volumes, paired by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from ctdenoise.errors import CTDenoiseError
from ctdenoise.physics.lowdose import MU_WATER_PER_MM  # also the seed project's .npy convention

FULL = "full"
LOW = "low"

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".ima")
_AAPM_DOSE_DIR = re.compile(r"^(full|quarter)_(\d+(?:\.\d+)?)mm$", re.IGNORECASE)
_AAPM_KERNEL_DIR = re.compile(r"^(\d+(?:\.\d+)?)\s*mm[\s_-]+([A-Za-z]+\d+[A-Za-z0-9]*)$", re.IGNORECASE)
_SEED_SPLITS = ("train", "test")
_SEED_DOSES = {"full_dose": (FULL, 1.0), "quarter_dose": (LOW, 0.25)}
_LAYOUT_NAMES = ("auto", "aapm", "seed")


@dataclass(frozen=True)
class ScanRecord:
    """One scan (volume) found on disk.

    Attributes:
        patient: patient identifier; splits never divide a patient.
        dose: ``"full"`` or ``"low"``.
        dose_fraction: dose relative to full dose (1.0 full, 0.25 quarter).
        path: DICOM folder, image file, or (seed layout) folder of ``.npy`` slices.
        thickness_mm: slice thickness named by the layout, if any.
        kernel: reconstruction kernel named by the layout, if any.
        split: split given by the layout or by :func:`split_by_patient` (``"train"``/``"val"``).
        source_layout: ``"aapm"``, ``"seed"``, ``"pair"`` or ``"full_dose"``.
        pair_key: records of both doses with the same key are slice-aligned pairs.
    """

    patient: str
    dose: str
    dose_fraction: float
    path: Path
    thickness_mm: Optional[float] = None
    kernel: Optional[str] = None
    split: Optional[str] = None
    source_layout: str = "pair"
    pair_key: Optional[str] = None


def discover_dataset(root: str | os.PathLike[str], layout: str = "auto") -> list[ScanRecord]:
    """Find the scans under ``root`` in the AAPM/Mayo or seed layout (``layout="auto"`` tries both)."""
    root_path = _existing_dir(root, "dataset root")
    if layout not in _LAYOUT_NAMES:
        raise CTDenoiseError(f"unknown dataset layout {layout!r}: use one of {', '.join(_LAYOUT_NAMES)}")
    records: list[ScanRecord] = []
    if layout in ("auto", "seed"):
        records = _discover_seed(root_path)
    if not records and layout in ("auto", "aapm"):
        records = _discover_aapm(root_path)
    if not records:
        raise CTDenoiseError(
            f"no {'recognisable' if layout == 'auto' else layout} dataset layout under {root_path} "
            "(expected AAPM/Mayo <patient>/full_1mm|quarter_1mm|full_3mm|quarter_3mm/ DICOM folders "
            "or seed {train,test}/{full_dose,quarter_dose}/*.npy slices): "
            "for other data pass a full-dose and a low-dose folder (--full DIR --low DIR)"
        )
    return records


def discover_pair(
    full_dir: str | os.PathLike[str],
    low_dir: str | os.PathLike[str],
    low_dose_fraction: float = 0.25,
) -> list[ScanRecord]:
    """Volumes of a full-dose folder and a low-dose folder; same-named entries are pairs."""
    if not 0.0 < low_dose_fraction < 1.0:
        raise CTDenoiseError(
            f"low-dose fraction must lie between 0 and 1 (exclusive), got {low_dose_fraction}"
        )
    full = _volume_entries(_existing_dir(full_dir, "full-dose folder"))
    low = _volume_entries(_existing_dir(low_dir, "low-dose folder"))
    shared = set(full) & set(low)
    records = [
        ScanRecord(name, FULL, 1.0, path, source_layout="pair", pair_key=name if name in shared else None)
        for name, path in full.items()
    ]
    records += [
        ScanRecord(name, LOW, low_dose_fraction, path, source_layout="pair",
                   pair_key=name if name in shared else None)
        for name, path in low.items()
    ]
    return sorted(records, key=_record_order)


def discover_full_dose(directory: str | os.PathLike[str]) -> list[ScanRecord]:
    """Full-dose volumes only (training then uses simulated low dose)."""
    entries = _volume_entries(_existing_dir(directory, "full-dose folder"))
    return [ScanRecord(name, FULL, 1.0, path, source_layout="full_dose") for name, path in entries.items()]


def split_by_patient(
    records: Sequence[ScanRecord],
    val_patients: Optional[list[str]] = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[ScanRecord]:
    """Assign ``split`` ("train"/"val") per patient, never per slice.

    ``val_patients`` names the validation patients explicitly (all others train). Otherwise a
    split given by the layout is kept (seed layout ``"test"`` becomes ``"val"``) and the remaining
    patients are shuffled with ``seed`` and about ``val_fraction`` of them go to validation.
    At least one patient always trains.
    """
    if not records:
        raise CTDenoiseError("no scans to split: the data set is empty")
    if not 0.0 <= val_fraction < 1.0:
        raise CTDenoiseError(f"validation fraction must be in [0, 1), got {val_fraction}")
    patients = sorted({r.patient for r in records})
    if val_patients is not None:
        assignment = _explicit_split(patients, val_patients)
    else:
        assignment = _layout_split(records)
        free = [p for p in patients if p not in assignment]
        n_train_fixed = sum(1 for s in assignment.values() if s == "train")
        n_val = _val_count(len(free), len(patients), val_fraction, has_train=n_train_fixed > 0)
        chosen = set(np.random.default_rng(seed).permutation(free)[:n_val].tolist()) if free else set()
        assignment.update({p: ("val" if p in chosen else "train") for p in free})
    if "train" not in assignment.values():
        raise CTDenoiseError("every patient is in the validation split: leave at least one patient for training")
    return [replace(r, split=assignment[r.patient]) for r in records]


def seed_slice_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``.npy`` slices of a seed-layout folder in stacking order (numeric file names first)."""
    files = [Path(e.path) for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(".npy")]
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))


def attenuation_to_hu(mu: np.ndarray) -> np.ndarray:
    """Seed-project linear attenuation (1/mm) to HU: ``(mu - 0.0192) / 0.0192 * 1000``."""
    return ((np.asarray(mu, dtype=np.float64) - MU_WATER_PER_MM) / MU_WATER_PER_MM * 1000.0).astype(np.float32)


def _existing_dir(path: str | os.PathLike[str], what: str) -> Path:
    result = Path(path).expanduser()
    if not result.is_dir():
        raise CTDenoiseError(f"{what} {result} is not a folder: pass an existing directory")
    return result.resolve()


def _record_order(record: ScanRecord) -> tuple:
    return (record.patient, record.thickness_mm or 0.0, record.kernel or "", record.dose != FULL, str(record.path))


def _discover_seed(root: Path) -> list[ScanRecord]:
    """Seed layout: one record per split+dose folder that holds .npy slices."""
    records: list[ScanRecord] = []
    for split in _SEED_SPLITS:
        names: dict[str, list[str]] = {}
        for folder_name, (dose, fraction) in _SEED_DOSES.items():
            folder = root / split / folder_name
            files = seed_slice_files(folder) if folder.is_dir() else []
            if files:
                names[dose] = [f.name for f in files]
                records.append(ScanRecord(f"seed-{split}", dose, fraction, folder, split=split,
                                          source_layout="seed"))
        if len(names) == 2 and names[FULL] == names[LOW]:
            records[-2:] = [replace(r, pair_key=f"seed/{split}") for r in records[-2:]]
    return records


def _discover_aapm(root: Path) -> list[ScanRecord]:
    """AAPM/Mayo layout, flat or nested; one scandir walk, never descending into dose folders."""
    found: dict[tuple, ScanRecord] = {}
    for folder, match in _aapm_dose_folders(root):
        thickness = float(match.group(2))
        dose, fraction = (FULL, 1.0) if match.group(1).lower() == "full" else (LOW, 0.25)
        kernel = _aapm_kernel(folder.relative_to(root).parts[:-1])
        patient = folder.parent.name
        key = (patient, dose, thickness, kernel)
        if key in found:
            raise CTDenoiseError(
                f"two AAPM folders for {patient} {dose} dose {thickness:g} mm kernel {kernel or '?'}: "
                f"{found[key].path} and {folder}; keep only one"
            )
        pair_key = f"{patient}/{thickness:g}mm/{kernel or ''}"
        found[key] = ScanRecord(patient, dose, fraction, folder, thickness, kernel,
                                source_layout="aapm", pair_key=pair_key)
    pair_doses: dict[str, set[str]] = {}
    for record in found.values():
        pair_doses.setdefault(record.pair_key or "", set()).add(record.dose)
    records = [r if len(pair_doses[r.pair_key or ""]) == 2 else replace(r, pair_key=None) for r in found.values()]
    return sorted(records, key=_record_order)


def _aapm_dose_folders(root: Path) -> Iterable[tuple[Path, re.Match[str]]]:
    """Folders named like ``full_1mm``/``quarter_3mm`` that directly hold DICOM files."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        match = _AAPM_DOSE_DIR.match(folder.name)
        if match and any(e.is_file() and _is_dicom_name(e.name) for e in entries):
            yield folder, match
            continue
        stack.extend(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))


def _aapm_kernel(parents: Sequence[str]) -> Optional[str]:
    """Kernel from the nearest ``"<thickness> <kernel>"`` ancestor folder (e.g. ``1mm B30``)."""
    for name in reversed(parents):
        match = _AAPM_KERNEL_DIR.match(name)
        if match:
            return match.group(2).upper()
    return None


def _is_dicom_name(name: str) -> bool:
    lower = name.lower()
    return not lower.startswith(".") and lower.endswith(DICOM_SUFFIXES)


def _volume_entries(folder: Path) -> dict[str, Path]:
    """Entries of a folder that are volumes, by name stem: subfolders, image files, DICOM files."""
    entries: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        lower = entry.name.lower()
        if entry.is_dir():
            stem = entry.name
        elif lower.endswith(VOLUME_SUFFIXES + DICOM_SUFFIXES):
            suffix = next(s for s in VOLUME_SUFFIXES + DICOM_SUFFIXES if lower.endswith(s))
            stem = entry.name[: -len(suffix)]
        else:
            continue
        if stem in entries:
            raise CTDenoiseError(
                f"{folder} holds two volumes named {stem!r} ({entries[stem].name} and {entry.name}): "
                "keep one per name"
            )
        entries[stem] = Path(entry.path)
    if not entries:
        raise CTDenoiseError(
            f"no CT volumes in {folder} (expected DICOM series subfolders, DICOM files or "
            ".nii/.nii.gz/.nrrd/.mha files): pass a folder of volumes"
        )
    return entries


def _explicit_split(patients: list[str], val_patients: list[str]) -> dict[str, str]:
    unknown = sorted(set(val_patients) - set(patients))
    if unknown:
        raise CTDenoiseError(
            f"validation patient(s) {', '.join(unknown)} not in the data set (patients: {', '.join(patients)})"
        )
    chosen = set(val_patients)
    return {p: ("val" if p in chosen else "train") for p in patients}


def _layout_split(records: Sequence[ScanRecord]) -> dict[str, str]:
    """Splits fixed by the layout, per patient; a patient with two different splits is an error."""
    fixed: dict[str, str] = {}
    for record in records:
        if record.split is None:
            continue
        split = "train" if record.split == "train" else "val"
        if fixed.setdefault(record.patient, split) != split:
            raise CTDenoiseError(
                f"patient {record.patient} appears in both the train and the validation/test split of the layout"
            )
    return fixed


def _val_count(n_free: int, n_patients: int, val_fraction: float, has_train: bool) -> int:
    """How many free patients go to validation: a rounded fraction, at least one when possible."""
    if n_free == 0 or val_fraction == 0.0:
        return 0
    wanted = max(1, int(round(val_fraction * n_patients)))
    return min(wanted, n_free if has_train else n_free - 1)
