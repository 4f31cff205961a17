"""Write CT volumes: NIfTI, NRRD and MetaImage files, or a DICOM series folder.

Storage type: voxels are rounded to whole HU and stored as int16 whenever they fit (-32768..32767),
which is how CT is stored everywhere (DICOM keeps integer values too; rounding moves a voxel by at
most 0.5 HU). Only a volume whose rounded values do not fit int16 is written as float32 (image files)
or with a shifted RescaleIntercept (DICOM). Conversions go slab by slab or slice by slice: an int16
volume is written to NIfTI or DICOM without a whole-volume copy (ITK writes the NIfTI header, the
voxels are streamed after it), to NRRD and MetaImage with one (ITK's image).

Every output is assembled in a hidden staging folder next to the target and moved into place with
``os.replace`` at the end, so an error during assembly leaves nothing. A DICOM series folder and a
one-file image (.nii, .nii.gz, .nrrd, .mha) appear in one atomic rename. A two-file image (.mhd or
.nhdr header plus its data file) takes two renames, data file first and header last: a crash between
them can leave the data file alone, never a header whose data is missing or partial. Source files
are never overwritten.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
import SimpleITK as sitk

from ctdenoise.errors import CTDenoiseError
from ctdenoise.io.dicom import NewSeries, derived_slice, new_ct_slice, new_series, read_header, set_padding
from ctdenoise.io.readers import IMAGE_FORMATS, image_suffix, itk_reason, quiet_itk
from ctdenoise.io.volume import Volume, nonfinite_voxels, slabs

_INT16 = np.iinfo(np.int16)
_GRID_TOLERANCE = 1e-3
_NIFTI1_SIZE_LIMIT = 32767  # a NIfTI-1 header holds each size in a short
_NIFTI_INT16 = 4  # NIfTI datatype code
_NIFTI_GZIP_LEVEL = 3  # about the speed and size of ITK's own .nii.gz writer
SUPPORTED_OUTPUTS = (
    ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, or for a DICOM series folder a path without extension or "
    "ending in digits (a UID such as 1.2.840.113619)"
)


def validate_output_path(path: str | os.PathLike[str], *sources: Volume | None) -> Path:
    """Check an output path before any work is done; returns it as a Path.

    Refuses an unknown extension, a DICOM output folder that exists and is not empty, and a path
    that is one of the source files of ``sources`` (``metadata["source_path"]``/``["dicom_files"]``).
    """
    target = Path(path)
    if _is_dicom_output(target):
        if target.exists() and not target.is_dir():
            raise CTDenoiseError(
                f"output {target} exists and is not a folder: choose a new folder name for the DICOM series"
            )
        if target.is_dir() and any(target.iterdir()):
            raise CTDenoiseError(f"output folder {target} exists and is not empty: choose a new or empty folder")
    else:
        _refuse_source(target, _source_files(sources))
    return target


def _same_or_nested(a: Path, b: Path) -> bool:
    """Whether two resolved paths are equal or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def check_paths(source: Path, output: Path, noise_output: Path | None = None) -> None:
    """Refuse, before any work, outputs that would overwrite or sit inside the input, collide, or cannot be written.

    Checked: the input exists; each output has a supported extension (any case) or is a new or
    empty DICOM folder; no output is the input or lies inside an input DICOM folder; the outputs do
    not collide.
    """
    if not source.exists():
        raise CTDenoiseError(f"input {source} does not exist: check the path")
    resolved = source.resolve()
    for label, target in (("output", output), ("noise output", noise_output)):
        if target is None:
            continue
        where = target.resolve()
        if where == resolved:
            raise CTDenoiseError(
                f"{label} {target} is the input: choose a different path (inputs are never overwritten)"
            )
        if source.is_dir() and resolved in where.parents:
            raise CTDenoiseError(f"{label} {target} lies inside the input DICOM folder {source}: write it elsewhere")
        validate_output_path(target)
    if noise_output is not None and _same_or_nested(noise_output.resolve(), output.resolve()):
        raise CTDenoiseError(f"noise output {noise_output} collides with the output {output}: choose separate paths")


def write_volume(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    reference: Volume | None = None,
    series_description: str | None = None,
    created: list[Path] | None = None,
) -> Path:
    """Write ``volume`` to ``path`` and return the written path.

    The extension picks the format: .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd write one image with the
    volume's spacing, origin and direction; a path without extension, one whose extension is all
    digits (a UID-like folder name) or an existing empty folder becomes a DICOM series, one file per
    slice, explicit VR little endian, signed 16-bit, slope 1.

    For DICOM, when ``reference`` (or else ``volume``) came from DICOM (``metadata["dicom_files"]``)
    each slice copies its source slice's header (patient, study, position and every other tag kept)
    and gets new SOP/Series UIDs, ImageType DERIVED\\SECONDARY, a new SeriesNumber (source + 1000)
    and ``series_description`` (default "<source description> (ctdenoise)"). Otherwise a minimal
    valid CT series is built from the geometry, in a new study unless ``metadata["study_uid"]`` says.

    ``created``, when given, receives every path this call put in place (the image and its data
    file; the series folder, or the files written into a folder that existed empty), so a caller
    can undo the write exactly.

    Raises:
        CTDenoiseError: NaN/inf voxels, unsupported extension, non-empty DICOM folder, output equal to
            a source file, volume not on the reference's grid, or a failed write.

    Examples:
        >>> import tempfile, pathlib
        >>> from ctdenoise import read_volume
        >>> volume = read_volume("../data/totalsegmentator/example_ct_sm.nii.gz")
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> write_volume(volume, folder / "copy.nrrd").name, write_volume(volume, folder / "series").is_dir()
        ('copy.nrrd', True)
    """
    target = validate_output_path(path, volume, reference)
    if nonfinite_voxels(volume.array):
        raise CTDenoiseError(f"cannot write {target}: the volume has NaN or infinite voxels; fix them first")
    target.parent.mkdir(parents=True, exist_ok=True)
    if _is_dicom_output(target):
        moved = _write_dicom_series(volume, target, reference, series_description)
    else:
        moved = _write_image(volume, target, _source_files((volume, reference)))
    if created is not None:
        created.extend(item.absolute() for item in moved)
    return target.absolute()


def storage_array(hu: np.ndarray) -> np.ndarray:
    """Rounded int16 HU when every value fits (``hu`` itself if int16), else float32 (see the module docstring)."""
    if not (np.rint(hu.min()) >= _INT16.min and np.rint(hu.max()) <= _INT16.max):
        return hu.astype(np.float32, copy=False)
    if hu.dtype == np.int16:
        return hu
    stored = np.empty(hu.shape, dtype=np.int16)
    for part in slabs(hu):
        stored[part] = np.rint(hu[part]) if hu.dtype.kind == "f" else hu[part]
    return stored


def _is_dicom_output(target: Path) -> bool:
    """True for a DICOM series folder target (no extension, or all digits like a UID); refuses unknown ones."""
    if target.is_dir() or target.suffix == "" or target.suffix[1:].isdigit():
        return True
    if image_suffix(target) not in IMAGE_FORMATS:
        raise CTDenoiseError(
            f"output {target} has the unsupported extension '{target.suffix}': use {SUPPORTED_OUTPUTS}"
        )
    return False


def _source_files(volumes: tuple[Volume | None, ...]) -> set[str]:
    """Real paths of the files the volumes were read from."""
    files: set[str] = set()
    for volume in volumes:
        if volume is None:
            continue
        names = list(volume.metadata.get("dicom_files") or [])
        if volume.metadata.get("source_path"):
            names.append(volume.metadata["source_path"])
        files.update(os.path.realpath(n) for n in names)
    return files


def _refuse_source(target: Path, sources: set[str]) -> None:
    """Refuse to write over an input file."""
    if os.path.realpath(target) in sources:
        raise CTDenoiseError(f"output {target} is an input file and would be overwritten: choose another output path")


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``target``, removed afterwards whatever happens."""
    stage = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.ctdenoise-tmp"
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_image(volume: Volume, target: Path, sources: set[str]) -> list[Path]:
    """One image file (plus its data file for .mhd/.nhdr), moved into place when complete; returns both.

    ITK picks the format from a lower-case extension only, so the file is staged under a lower-case
    name and renamed to ``target`` (``OUT.NII.GZ`` works).
    """
    suffix = image_suffix(target)
    staged_name = target.name[: len(target.name) - len(suffix)] + suffix
    stored = storage_array(volume.array)
    streamed = suffix in (".nii", ".nii.gz") and stored.dtype == np.int16 and max(stored.shape) <= _NIFTI1_SIZE_LIMIT
    with _staging(target) as stage:
        try:
            with quiet_itk():
                if not streamed or not _write_nifti_int16(stored, volume, stage / staged_name):
                    image = _itk_image(stored, volume)
                    sitk.WriteImage(image, str(stage / staged_name), useCompression=suffix != ".nii")
        except (RuntimeError, OSError) as exc:
            raise CTDenoiseError(
                f"cannot write {target} ({itk_reason(exc)}): check the path and free disk space"
            ) from exc
        written = sorted(stage.iterdir(), key=lambda p: p.name == staged_name)  # header last
        names = [target.name if item.name == staged_name else item.name for item in written]
        for name in names:
            _refuse_source(target.parent / name, sources)
        for item, name in zip(written, names):
            os.replace(item, target.parent / name)
    return [target.parent / name for name in names]


def _itk_image(stored: np.ndarray, volume: Volume) -> sitk.Image:
    """``stored`` as an ITK image (a copy) with the volume's spacing, origin and direction."""
    image = sitk.GetImageFromArray(stored)
    image.SetSpacing([float(v) for v in volume.spacing])
    image.SetOrigin([float(v) for v in volume.origin])
    image.SetDirection([float(v) for v in volume.direction])
    return image


def _write_nifti_int16(stored: np.ndarray, volume: Volume, path: Path) -> bool:
    """Write int16 ``stored`` to a .nii/.nii.gz ``path`` without a whole-volume copy; False if ITK's header won't do.

    ITK writes the header of the volume's first slice (same geometry fields as for the whole
    volume); its slice count is set to the volume's and the voxels are streamed after it, gzipped
    for ``.nii.gz``. The bytes equal ITK's own whole-volume output before compression.
    """
    proxy = path.with_name(".header.nii")
    sitk.WriteImage(_itk_image(stored[:1], volume), str(proxy), useCompression=False)
    data = proxy.read_bytes()
    proxy.unlink()
    nz, ny, nx = stored.shape
    order = "<" if struct.unpack_from("<i", data)[0] == 348 else ">"
    size, offset = struct.unpack_from(order + "i", data)[0], int(struct.unpack_from(order + "f", data, 108)[0])
    dims, datatype = struct.unpack_from(order + "4h", data, 40), struct.unpack_from(order + "h", data, 70)[0]
    if size != 348 or dims != (3, nx, ny, 1) or datatype != _NIFTI_INT16 or offset + 2 * ny * nx != len(data):
        return False  # not the 3-D int16 NIfTI-1 header expected
    header = bytearray(data[:offset])
    struct.pack_into(order + "h", header, 46, nz)  # dim[3]
    dtype = np.dtype(order + "i2")
    with open(path, "wb") as raw:
        stream = gzip.GzipFile("", "wb", _NIFTI_GZIP_LEVEL, raw, mtime=0) if path.suffix == ".gz" else raw
        with stream:
            stream.write(header)
            for part in slabs(stored):
                stream.write(np.ascontiguousarray(stored[part], dtype=dtype).data)
    return True


def _dicom_intercept(hu: np.ndarray) -> int:
    """The RescaleIntercept that fits the rounded HU into signed 16 bits (0 unless they need a shift)."""
    low, high = float(np.rint(hu.min())), float(np.rint(hu.max()))
    if low >= _INT16.min and high <= _INT16.max:
        return 0
    if high - low > _INT16.max - _INT16.min:
        raise CTDenoiseError(
            f"cannot write DICOM: values span {low:g}..{high:g} HU, more than 16 bits hold; clip the volume to a HU range"
        )
    return int(low) - _INT16.min


def _dicom_stored(hu: np.ndarray, intercept: int) -> np.ndarray:
    """One slice's signed 16-bit stored values: rounded HU minus ``intercept``."""
    return (np.rint(hu) - intercept).astype(np.int16)


def _write_dicom_series(volume: Volume, target: Path, reference: Volume | None, description: str | None) -> list[Path]:
    """One DICOM file per slice in a staged folder, renamed to ``target`` when complete.

    Returns ``[target]``, or the slice files when ``target`` already existed as an empty folder.
    """
    source = reference if reference is not None else volume
    files = list(source.metadata.get("dicom_files") or [])
    if files and len(files) != volume.shape[0]:
        raise CTDenoiseError(
            f"cannot write {target}: the volume has {volume.shape[0]} slices but its DICOM source has {len(files)}; "
            "write .nii.gz instead, or pass the matching reference"
        )
    if reference is not None:
        _check_same_grid(volume, reference, target)
    intercept = _dicom_intercept(volume.array)
    digits = max(4, len(str(volume.shape[0])))
    with _staging(target) as stage:
        first = read_header(Path(files[0]), required=True) if files else None
        series = new_series(first, source.metadata, description)
        for index in range(volume.shape[0]):
            if files:
                header = read_header(Path(files[index]), required=True)
                if (int(header.Rows), int(header.Columns)) != volume.shape[1:]:
                    raise CTDenoiseError(
                        f"cannot write {target}: slice size {volume.shape[1:]} differs from its DICOM source "
                        f"{files[index]}; write .nii.gz instead"
                    )
                dataset = derived_slice(header, _dicom_stored(volume.array[index], intercept), intercept, series)
            else:
                stored = _dicom_stored(volume.array[index], intercept)
                dataset = _geometry_slice(volume, stored, intercept, series, index, source.metadata)
            set_padding(dataset, volume.metadata, intercept)
            dataset.save_as(
                stage / f"{index + 1:0{digits}d}.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True
            )
        existed = target.is_dir()
        names = sorted(item.name for item in stage.iterdir())
        if existed:
            target.rmdir()  # validated empty; rename cannot replace it on every platform
        os.replace(stage, target)
    return [target / name for name in names] if existed else [target]


def _geometry_slice(
    volume: Volume, stored: np.ndarray, intercept: int, series: NewSeries, index: int, metadata: dict[str, Any]
) -> pydicom.Dataset:
    """Slice ``index`` of a minimal CT series placed by the volume's origin, spacing and direction."""
    axes = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    position = np.asarray(volume.origin, dtype=np.float64) + index * volume.spacing[2] * axes[:, 2]
    orientation = np.concatenate([axes[:, 0], axes[:, 1]])
    return new_ct_slice(
        stored,
        intercept,
        series,
        index=index,
        position=position.tolist(),
        orientation=orientation.tolist(),
        spacing=tuple(float(v) for v in volume.spacing),
        metadata=metadata,  # type: ignore[arg-type]
    )


def _check_same_grid(volume: Volume, reference: Volume, target: Path) -> None:
    """The reference's headers can only describe a volume on the same voxel grid."""
    same = volume.shape == reference.shape and all(
        np.allclose(getattr(volume, name), getattr(reference, name), atol=_GRID_TOLERANCE)
        for name in ("spacing", "origin", "direction")
    )
    if not same:
        raise CTDenoiseError(
            f"cannot write {target} with reference headers: the volume's grid (shape {volume.shape}) differs from the "
            f"reference's (shape {reference.shape}); write .nii.gz instead or pass the matching reference"
        )
