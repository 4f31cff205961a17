"""The prepared training cache: every scan once as an int16 HU ``.npy`` plus a JSON index.

Voxels are stored as int16 HU, rounded and clipped to [-1024, 3071]: int16 halves the memory and
disk of float32, integer HU lose nothing a scanner measures (CT numbers are integers in DICOM),
and everything outside that range is air or padding below, metal above, none of which the
denoiser has to learn. ``np.save`` files can be memory-mapped, so training reads only the slices
and crops it samples.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ctdenoise.data.layouts import FULL, LOW, ScanRecord, attenuation_to_hu, seed_slice_files
from ctdenoise.errors import CTDenoiseError
from ctdenoise.fileutils import atomic_write
from ctdenoise.io.volume import Volume
from ctdenoise.orientation import DEFAULT_ORIENTATION, reorientation

CACHE_VERSION = 1
CACHE_ORIENTATION = DEFAULT_ORIENTATION
"""Volumes are stored as axial slices in this orientation, whatever the source file's storage order."""
HU_MIN = -1024
HU_MAX = 3071
INDEX_NAME = "index.json"
VOLUME_DIR = "volumes"
SEED_PIXEL_SPACING_MM = 0.7
"""Pixel size assumed when simulating low dose from seed-layout ``.npy`` slices, which carry no
geometry: the seed's AAPM/Mayo slices are 512 x 512 pixels reconstructed over a field of view of
about 350 mm (350 / 512 = 0.68 mm). The simulated noise level depends on it (ray lengths in mm)."""

ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CacheEntry:
    """One stored volume of the cache (see :func:`prepare_cache` for the fields' meaning)."""

    id: str
    patient: str
    dose: str
    dose_fraction: float
    split: Optional[str]
    pair_key: Optional[str]
    shape: tuple[int, int, int]
    spacing: Optional[tuple[float, float, float]]
    kernel: Optional[str]
    thickness_mm: Optional[float]
    source: str
    source_layout: str
    simulated: bool

    @property
    def file(self) -> str:
        """Path of the array relative to the cache folder."""
        return f"{VOLUME_DIR}/{self.id}.npy"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["spacing"] = None if self.spacing is None else list(self.spacing)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CacheEntry":
        """Inverse of :meth:`to_json`."""
        spacing = data["spacing"]
        return cls(**{
            **data,
            "shape": tuple(int(s) for s in data["shape"]),
            "spacing": None if spacing is None else tuple(float(s) for s in spacing),
        })


class CacheIndex:
    """A loaded cache: its entries and their memory-mapped int16 HU arrays ``[z, y, x]``.

    Arrays are opened lazily per process; pickling (DataLoader workers) sends only the paths.
    """

    def __init__(self, root: Path, entries: Sequence[CacheEntry], info: dict[str, Any]) -> None:
        self.root = Path(root)
        self.entries = list(entries)
        self.info = info
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def volumes(self, split: Optional[str] = None, dose: Optional[str] = None) -> list[CacheEntry]:
        """Entries filtered by split and dose (``None`` matches all)."""
        return [
            e for e in self.entries
            if (split is None or e.split == split) and (dose is None or e.dose == dose)
        ]

    def array(self, entry: CacheEntry) -> np.ndarray:
        """The entry's voxels, memory-mapped read-only, int16 HU ``[z, y, x]``."""
        array = self._arrays.get(entry.id)
        if array is None:
            array = np.load(self.root / entry.file, mmap_mode="r")
            self._arrays[entry.id] = array
        return array

    def pairs(self, split: Optional[str] = None) -> list[tuple[CacheEntry, CacheEntry]]:
        """Slice-aligned (full, low) pairs: one full and one low entry sharing a pair key and shape."""
        groups: dict[str, list[CacheEntry]] = {}
        for entry in self.volumes(split):
            if entry.pair_key is not None:
                groups.setdefault(entry.pair_key, []).append(entry)
        result = []
        for key in sorted(groups):
            full = [e for e in groups[key] if e.dose == FULL]
            low = [e for e in groups[key] if e.dose == LOW]
            if len(full) == 1 and len(low) == 1 and full[0].shape == low[0].shape:
                result.append((full[0], low[0]))
        return result

    def summary(self) -> dict[str, Any]:
        """Facts about the training data for checkpoint metadata (counts only: no patient IDs or paths)."""
        splits = sorted({e.split or "none" for e in self.entries})
        spacings = np.array([e.spacing for e in self.entries if e.spacing is not None], dtype=float)
        low = self.volumes(dose=LOW)
        low_kinds = sorted({"simulated" if e.simulated else "real" for e in low})
        return {
            "layout": sorted({e.source_layout for e in self.entries}),
            "patients": {s: len({e.patient for e in self.entries if (e.split or "none") == s}) for s in splits},
            "volumes": {d: len(self.volumes(dose=d)) for d in (FULL, LOW)},
            "slices": {d: int(sum(e.shape[0] for e in self.volumes(dose=d))) for d in (FULL, LOW)},
            "spacing_mm": None if spacings.size == 0 else {
                "min": spacings.min(axis=0).tolist(), "max": spacings.max(axis=0).tolist()},
            "kernels": sorted({e.kernel for e in self.entries if e.kernel}),
            "low_dose": "none" if not low_kinds else low_kinds[0] if len(low_kinds) == 1 else "mixed",
            "low_dose_fractions": sorted({e.dose_fraction for e in low}),
            "pairs": len(self.pairs()),
        }


def prepare_cache(
    records: Sequence[ScanRecord],
    out_dir: str | os.PathLike[str],
    *,
    simulate_dose: Optional[float] = None,
    simulate_options: Optional[dict[str, Any]] = None,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    overwrite: bool = False,
    seed_pixel_spacing_mm: float = SEED_PIXEL_SPACING_MM,
) -> CacheIndex:
    """Read every record once and store it as int16 HU under ``out_dir``; return the loaded cache.

    With ``simulate_dose`` (e.g. 0.25), each full-dose record without a real low-dose partner also
    gets a simulated low-dose volume (seeded per volume from ``seed``), stored as a paired ``low``
    entry with ``simulated: true``. ``out_dir/index.json`` is written last and atomically, so a
    cache without an index is never mistaken for a finished one. An existing cache is replaced only
    with ``overwrite=True``. ``progress(done, total, message)`` is called after each stored volume.
    Seed-layout slices have no pixel size, so their simulation uses ``seed_pixel_spacing_mm``
    (see :data:`SEED_PIXEL_SPACING_MM`); it is recorded in the index when used.
    """
    if not records:
        raise CTDenoiseError("no scans to prepare: the data set is empty")
    if simulate_dose is not None and not 0.0 < simulate_dose < 1.0:
        raise CTDenoiseError(f"simulated dose must lie between 0 and 1 (exclusive), got {simulate_dose}")
    if not seed_pixel_spacing_mm > 0:
        raise CTDenoiseError(f"seed pixel spacing must be a positive number of mm, got {seed_pixel_spacing_mm}")
    root = Path(out_dir).expanduser().resolve()
    _claim_directory(root, overwrite)
    to_simulate = _records_to_simulate(records) if simulate_dose is not None else set()
    total = len(records) + len(to_simulate)
    entries: list[CacheEntry] = []
    for index, record in enumerate(records):
        entry_id = f"{len(entries):04d}-{_slug(record.patient)}-{record.dose}"
        if record.source_layout == "seed":
            entries.append(_store_seed_stack(record, root, entry_id))
        else:
            volume = _read(record)
            entries.append(_store_volume(volume, record, root, entry_id, simulated=False))
        _report(progress, len(entries), total, f"stored {record.patient} {record.dose} dose ({record.path.name})")
        if simulate_dose is not None and index in to_simulate:
            if record.source_layout == "seed":
                volume = _read_seed_volume(record, seed_pixel_spacing_mm)
            low = _simulate(volume, simulate_dose, simulate_options or {}, seed, index)
            pair_key = record.pair_key or f"sim/{entries[-1].id}"
            low_record = replace(record, dose=LOW, dose_fraction=simulate_dose, pair_key=pair_key)
            entries[-1] = replace(entries[-1], pair_key=pair_key)
            sim_id = f"{len(entries):04d}-{_slug(record.patient)}-low-sim"
            entries.append(_store_volume(low, low_record, root, sim_id, simulated=True))
            _report(progress, len(entries), total, f"simulated {simulate_dose:g} dose for {record.patient}")
    entries, warnings = _unpair_mismatched(entries)
    seed_simulated = any(records[i].source_layout == "seed" for i in to_simulate)
    info = {
        "version": CACHE_VERSION,
        "created_with": _package_version(),
        "dtype": "int16",
        "hu_range": [HU_MIN, HU_MAX],
        "orientation": CACHE_ORIENTATION,
        "simulation": None if simulate_dose is None else {
            "dose": simulate_dose, "options": simulate_options or {}, "seed": seed,
            **({"seed_pixel_spacing_mm": seed_pixel_spacing_mm} if seed_simulated else {})},
        "warnings": warnings,
    }
    _write_index(root, info, entries)
    return load_cache(root)


def load_cache(path: str | os.PathLike[str]) -> CacheIndex:
    """Open a prepared cache (its folder or its ``index.json``), checking version, files and shapes."""
    root = Path(path).expanduser().resolve()
    if root.name == INDEX_NAME:
        root = root.parent
    index_path = root / INDEX_NAME
    if not index_path.is_file():
        raise CTDenoiseError(
            f"{root} is not a prepared training cache (no {INDEX_NAME}): run `ctdenoise prepare` first"
        )
    try:
        data = json.loads(index_path.read_text(encoding="utf-8"))
        info = {k: v for k, v in data.items() if k != "volumes"}
        entries = [CacheEntry.from_json(v) for v in data["volumes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CTDenoiseError(f"cache index {index_path} is damaged ({exc}): prepare the cache again") from exc
    if info.get("version") != CACHE_VERSION:
        raise CTDenoiseError(
            f"cache {root} has version {info.get('version')}, this ctdenoise reads version {CACHE_VERSION}: "
            "prepare the cache again"
        )
    cache = CacheIndex(root, entries, info)
    for entry in entries:
        _check_array(cache, entry)
    return cache


def check_cache_target(root: Path, overwrite: bool) -> list[Path]:
    """Refuse a cache folder that holds a cache (unless ``overwrite``) or another tool's files; returns the cache's own files."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise CTDenoiseError(f"cache folder {root} exists and is a file: choose a folder path")
    existing = [root / n for n in (INDEX_NAME, VOLUME_DIR) if (root / n).exists()]
    if (root / VOLUME_DIR).exists() and not (root / INDEX_NAME).is_file():
        raise CTDenoiseError(
            f"{root} has a '{VOLUME_DIR}' folder but no {INDEX_NAME}, so it is not a ctdenoise cache: "
            "choose an empty or new folder"
        )
    if existing and not overwrite:
        raise CTDenoiseError(
            f"{root} already holds a training cache: pass overwrite=True (--overwrite) to replace it "
            "or choose another folder"
        )
    return existing


def _claim_directory(root: Path, overwrite: bool) -> None:
    """Refuse an existing cache unless ``overwrite``; then remove only the cache's own files."""
    for item in check_cache_target(root, overwrite):
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
    (root / VOLUME_DIR).mkdir(parents=True, exist_ok=True)


def _records_to_simulate(records: Sequence[ScanRecord]) -> set[int]:
    """Indices of full-dose records with no real low-dose partner."""
    low_keys = {r.pair_key for r in records if r.dose == LOW and r.pair_key is not None}
    return {i for i, r in enumerate(records) if r.dose == FULL and (r.pair_key is None or r.pair_key not in low_keys)}


def _read(record: ScanRecord) -> Volume:
    from ctdenoise.io import read_volume

    return read_volume(record.path)


def _read_seed_volume(record: ScanRecord, pixel_mm: float) -> Volume:
    """A seed-layout stack as a float32 HU Volume with ``pixel_mm`` pixels (only needed to simulate from it)."""
    files = seed_slice_files(record.path)
    spacing = (float(pixel_mm), float(pixel_mm), 1.0)
    return Volume(np.stack([_seed_slice_hu(f) for f in files]), spacing, metadata={"format": "npy"})


def _seed_slice_hu(path: Path) -> np.ndarray:
    """One seed ``.npy`` slice (attenuation, 2-D, leading singleton axes allowed) in HU."""
    mu = np.load(path)
    mu = mu.reshape(mu.shape[-2:]) if mu.ndim > 2 and int(np.prod(mu.shape[:-2])) == 1 else mu
    if mu.ndim != 2:
        raise CTDenoiseError(f"{path} holds an array of shape {mu.shape}, not a 2-D slice: remove it from the data set")
    return attenuation_to_hu(mu)


def _to_int16(hu: np.ndarray) -> np.ndarray:
    """Round and clip HU to [-1024, 3071] as int16; non-finite voxels become air."""
    hu = np.nan_to_num(np.asarray(hu, dtype=np.float32), nan=HU_MIN, posinf=HU_MAX, neginf=HU_MIN)
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)


def _store_seed_stack(record: ScanRecord, root: Path, entry_id: str) -> CacheEntry:
    """Write a seed split+dose folder slice by slice into one int16 memmap (never all in float)."""
    files = seed_slice_files(record.path)
    first = _seed_slice_hu(files[0])
    out = np.lib.format.open_memmap(root / VOLUME_DIR / f"{entry_id}.npy", mode="w+", dtype=np.int16,
                                    shape=(len(files),) + first.shape)
    for z, path in enumerate(files):
        hu = first if z == 0 else _seed_slice_hu(path)
        if hu.shape != first.shape:
            raise CTDenoiseError(
                f"{path} has shape {hu.shape}, other slices in {record.path} have {first.shape}: "
                "all slices of a folder must have the same size"
            )
        out[z] = _to_int16(hu)
    out.flush()
    shape = tuple(int(s) for s in out.shape)
    del out
    return _entry(record, entry_id, shape, None, None, None, simulated=False)


def _store_volume(volume: Volume, record: ScanRecord, root: Path, entry_id: str, *, simulated: bool) -> CacheEntry:
    """Store a volume as int16 axial slices in the ``LPS`` orientation the models are trained in."""
    turn = reorientation(volume.direction, CACHE_ORIENTATION)
    axial = np.ascontiguousarray(turn.to_target(volume.array))
    np.save(root / VOLUME_DIR / f"{entry_id}.npy", _to_int16(axial))
    kernel = record.kernel or volume.metadata.get("kernel")
    thickness = record.thickness_mm or volume.metadata.get("slice_thickness")
    spacing = None if record.source_layout == "seed" else turn.target_spacing(volume.spacing)
    return _entry(record, entry_id, axial.shape, spacing, kernel, thickness, simulated=simulated)


def _entry(record: ScanRecord, entry_id: str, shape: tuple[int, ...], spacing: Any, kernel: Any,
           thickness: Any, *, simulated: bool) -> CacheEntry:
    return CacheEntry(
        id=entry_id, patient=record.patient, dose=record.dose, dose_fraction=float(record.dose_fraction),
        split=record.split, pair_key=record.pair_key, shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        spacing=spacing, kernel=None if kernel is None else str(kernel),
        thickness_mm=None if thickness is None else float(thickness),
        source=str(record.path), source_layout=record.source_layout, simulated=simulated,
    )


def _simulate(volume: Volume, dose: float, options: dict[str, Any], seed: int, index: int) -> Volume:
    from ctdenoise.physics import simulate_volume

    volume_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    return simulate_volume(volume, dose, seed=volume_seed, **options)


def _unpair_mismatched(entries: list[CacheEntry]) -> tuple[list[CacheEntry], list[str]]:
    """Drop the pair key of pairs whose shapes differ (they cannot be slice-aligned)."""
    shapes: dict[str, set[tuple[int, int, int]]] = {}
    for entry in entries:
        if entry.pair_key is not None:
            shapes.setdefault(entry.pair_key, set()).add(entry.shape)
    bad = sorted(k for k, s in shapes.items() if len(s) > 1)
    warnings = [f"pair {k} has volumes of different shapes {sorted(shapes[k])}: used unpaired" for k in bad]
    return [replace(e, pair_key=None) if e.pair_key in bad else e for e in entries], warnings


def _write_index(root: Path, info: dict[str, Any], entries: Sequence[CacheEntry]) -> None:
    """Write ``index.json`` atomically."""
    text = json.dumps({**info, "volumes": [e.to_json() for e in entries]}, indent=1, default=str)
    atomic_write(root / INDEX_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _report(progress: Optional[ProgressCallback], done: int, total: int, message: str) -> None:
    if progress is not None:
        progress(done, total, message)


def _check_array(cache: CacheIndex, entry: CacheEntry) -> None:
    path = cache.root / entry.file
    if not path.is_file():
        raise CTDenoiseError(
            f"cache {cache.root} is incomplete ({entry.file} is missing): prepare it again with --overwrite"
        )
    try:
        array = cache.array(entry)
    except ValueError as exc:
        raise CTDenoiseError(f"cache file {path} is damaged ({exc}): prepare the cache again with --overwrite") from exc
    if array.shape != entry.shape or array.dtype != np.int16:
        raise CTDenoiseError(
            f"cache file {path} holds {array.dtype} {array.shape}, the index says int16 {entry.shape}: "
            "prepare the cache again with --overwrite"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "scan"


def _package_version() -> str:
    from ctdenoise import __version__

    return f"ctdenoise {__version__}"
