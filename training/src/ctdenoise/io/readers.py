"""Read CT volumes (DICOM series, folder or file; NIfTI; NRRD; MetaImage) as HU [z, y, x].

Pixels are decoded with SimpleITK (GDCM: JPEG 2000, JPEG-LS, RLE and uncompressed DICOM; each file's
RescaleSlope/Intercept applied); DICOM headers, series selection and slice order come from pydicom
(:mod:`ctdenoise.io.dicom`). Voxels are float32 HU, or with ``integer_hu=True`` whole-number HU kept
in int16 (half the memory). Inputs are only ever opened for reading.
"""

from __future__ import annotations

import gzip
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ctdenoise.errors import CTDenoiseError, warn
from ctdenoise.io.dicom import DicomSeries, collect_series, read_header
from ctdenoise.io.volume import Volume, nonfinite_voxels

# Non-DICOM image formats by (lower-case) file extension.
IMAGE_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
_IMAGE_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "mha": "MetaImageIO"}
SUPPORTED_INPUTS = "a DICOM folder or file (.dcm, .IMA, no extension), .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd"
_DICOM_LIKE_SUFFIXES = ("", ".dcm", ".dicom", ".ima")
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64
_CHUNK_BYTES = 64 << 20
_INT16 = np.iinfo(np.int16)


@contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's console warnings (e.g. "Non uniform sampling") for the duration of a call."""
    previous = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(previous)


def image_suffix(path: Path) -> str:
    """The lower-case extension, with ``.nii.gz`` treated as one extension."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def dicom_like_name(path: Path) -> bool:
    """Whether ``path`` has a name DICOM files carry: no extension, .dcm, .dicom, .ima or digits (a UID)."""
    suffix = image_suffix(path)
    return suffix in _DICOM_LIKE_SUFFIXES or suffix[1:].isdigit()


def itk_reason(exc: BaseException) -> str:
    """The informative line of a SimpleITK exception, without ITK's file/line/object noise."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "ITK ERROR" in line or "ERROR:" in line:
            return line.split("): ", 1)[-1][:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def read_volume(path: str | os.PathLike[str], *, series_uid: str | None = None, integer_hu: bool = False) -> Volume:
    """Read a CT volume as HU ``[z, y, x]`` (float32 unless ``integer_hu``) with its geometry and metadata.

    Args:
        path: a folder holding a DICOM series (its own files only; subfolders are not searched), one
            DICOM file (read as a one-slice volume, any extension or none), or a .nii/.nii.gz/.nrrd/
            .nhdr/.mha/.mhd image (2-D images become one slice; 4-D only with a single time point).
        series_uid: for a folder holding several series, the SeriesInstanceUID to read. Without it the
            CT series with the most slices is read and the others are named in
            ``metadata["warnings"]``; a tie for the most slices is refused rather than guessed.
        integer_hu: keep whole-number HU in an integer array instead of float32 (half the memory
            for int16): integer NIfTI/NRRD/MetaImage voxels (int16 when they fit, else their own
            type) and DICOM series whose every slice holds whole HU within int16. Float images,
            NIfTI rescaled by scl_slope/scl_inter (ITK makes those float) and other DICOM series stay
            float32. The HU are the same either way; :meth:`~ctdenoise.inference.Denoiser.file`
            reads this way.

    What looked wrong but could be read (other series ignored, uneven slice gaps, gantry tilt) is
    listed in ``metadata["warnings"]`` and emitted as :class:`~ctdenoise.errors.CTDenoiseWarning`.

    Raises:
        CTDenoiseError: missing path, empty or DICOM-less folder, unreadable or unsupported file,
            non-CT DICOM, colour or 4-D images, multi-frame DICOM, NaN/inf voxels.

    Examples:
        >>> volume = read_volume("../data/totalsegmentator/example_ct_dicom")
        >>> volume.shape, volume.spacing[:2]
        ((20, 512, 512), (0.9765625, 0.9765625))
    """
    source = Path(path)
    if not source.exists():
        raise CTDenoiseError(f"input {source} does not exist: check the path ({SUPPORTED_INPUTS})")
    if source.is_dir():
        volume = _read_dicom_folder(source, series_uid, integer_hu)
    elif image_suffix(source) in IMAGE_FORMATS:
        volume = _read_itk_image(source, IMAGE_FORMATS[image_suffix(source)], integer_hu)
    else:
        volume = _read_dicom_file(source, series_uid, integer_hu)
    volume.metadata["source_path"] = str(source.absolute())
    _check_values(volume, source)
    for message in volume.metadata["warnings"]:
        warn(message)
    return volume


# ------------------------------------------------------------------------------------------ DICOM


def _read_dicom_folder(folder: Path, series_uid: str | None, integer_hu: bool) -> Volume:
    """The CT series held directly in ``folder``."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    if not entries:
        raise CTDenoiseError(f"input folder {folder} is empty: pass a folder holding a DICOM series")
    found = [(p, h) for p, h in ((p, read_header(p)) for p in files) if h is not None]
    if not found:
        raise CTDenoiseError(f"input folder {folder} holds no DICOM images{_folder_hint(entries)}")
    return _series_volume(collect_series(found, folder, series_uid), integer_hu)


def _folder_hint(entries: list[Path]) -> str:
    """Where the user probably meant to point, for the no-DICOM message."""
    images = [p.name for p in entries if p.is_file() and image_suffix(p) in IMAGE_FORMATS]
    if images:
        return f" but holds image file(s) such as {images[0]}: pass that file"
    subfolders = [p.name for p in entries if p.is_dir()]
    if subfolders:
        return f" (subfolders are not searched): pass the subfolder with the series, e.g. {subfolders[0]}"
    return f": pass a DICOM series folder or a CT image file ({SUPPORTED_INPUTS})"


def _read_dicom_file(path: Path, series_uid: str | None, integer_hu: bool) -> Volume:
    """One DICOM file as a one-slice volume (its folder is not read)."""
    header = read_header(path)
    if header is None:
        if dicom_like_name(path):
            raise CTDenoiseError(f"input {path} is not a readable DICOM image: pass a CT image ({SUPPORTED_INPUTS})")
        raise CTDenoiseError(
            f"input {path} has the unsupported file type '{image_suffix(path)}': pass {SUPPORTED_INPUTS}"
        )
    return _series_volume(collect_series([(path, header)], path, series_uid), integer_hu)


def _series_volume(series: DicomSeries, integer_hu: bool) -> Volume:
    """Decode every slice of an ordered series into one HU volume (int16 while every slice fits, if ``integer_hu``)."""
    rows, cols = int(series.headers[0].Rows), int(series.headers[0].Columns)
    array = np.empty((len(series.files), rows, cols), dtype=np.int16 if integer_hu else np.float32)
    with quiet_itk():
        for index, (path, header) in enumerate(zip(series.files, series.headers)):
            try:
                image = sitk.ReadImage(str(path), sitk.sitkFloat32)
            except RuntimeError as exc:
                syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
                name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
                raise CTDenoiseError(
                    f"cannot decode the pixels of {path} ({name}: {itk_reason(exc)}): "
                    "convert the series to uncompressed DICOM or NIfTI"
                ) from exc
            pixels = sitk.GetArrayViewFromImage(image)
            if pixels.size != rows * cols:
                raise CTDenoiseError(
                    f"{path} decodes to {pixels.shape} pixels, not {rows}x{cols}: the file is damaged; re-export it"
                )
            if array.dtype == np.int16 and not _whole_int16(pixels):
                array = array.astype(np.float32)
            array[index] = pixels.reshape(rows, cols)
    return Volume(array, series.spacing, series.origin, series.direction, series.metadata)


def _whole_int16(values: np.ndarray) -> bool:
    """Whether every value is a whole number within int16 (for one slice: it makes a temporary)."""
    return bool(values.min() >= _INT16.min and values.max() <= _INT16.max and np.array_equal(values, np.rint(values)))


# --------------------------------------------------------------------------------- NIfTI, NRRD, MHA


def _read_itk_image(path: Path, fmt: str, integer_hu: bool) -> Volume:
    """A NIfTI/NRRD/MetaImage file as a volume (2-D becomes one slice); one copy of the voxels at a time."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_IMAGE_IO[fmt])  # ITK matches extensions case-sensitively: name the reader ourselves
    try:
        with quiet_itk():
            image = reader.Execute()
    except RuntimeError as exc:
        raise CTDenoiseError(
            f"cannot read {path} as {fmt.upper()} ({itk_reason(exc)}): check that the file is complete and really "
            f"is {fmt.upper()}"
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CTDenoiseError(
            f"input {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector "
            "image): pass a greyscale CT volume in HU"
        )
    if fmt == "nifti":
        _refuse_nonfinite(path, _nifti_nonfinite_voxels(path))
    image = _as_3d(image, path)
    spacing = tuple(float(v) for v in image.GetSpacing())
    origin = tuple(float(v) for v in image.GetOrigin())
    direction = tuple(float(v) for v in image.GetDirection())
    array = sitk.GetArrayFromImage(image)
    del image  # the image's own buffer goes before any conversion
    if np.iscomplexobj(array):
        raise CTDenoiseError(f"input {path} holds complex values: pass a real-valued CT volume in HU")
    if not integer_hu or array.dtype.kind not in "iu":
        array = array.astype(np.float32, copy=False)
    elif array.dtype != np.int16 and array.min() >= _INT16.min and array.max() <= _INT16.max:
        array = array.astype(np.int16)
    return Volume(array, spacing, origin, direction, {"format": fmt, "warnings": []})  # type: ignore[arg-type]


def _as_3d(image: sitk.Image, path: Path) -> sitk.Image:
    """2-D -> one-slice 3-D; 4-D with one time point -> 3-D; anything else is refused."""
    size = image.GetSize()
    if image.GetDimension() == 2:
        return sitk.JoinSeries(image)
    if image.GetDimension() == 4 and size[3] == 1:
        return image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise CTDenoiseError(
            f"input {path} is a {image.GetDimension()}-D image of size {size}: pass a single 3-D CT volume "
            "(extract one time point or phase first)"
        )
    return image


# -------------------------------------------------------------------------------------- validation


def _nifti_nonfinite_voxels(path: Path) -> int:
    """NaN/inf voxels stored in a float NIfTI file.

    ITK 5's NIfTI reader silently turns them into 0, so the file's own bytes are counted.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        header = stream.read(540)
        layout = _nifti_layout(header)
        if layout is None or layout[1] not in _NIFTI_FLOAT_TYPES:
            return 0
        order, datatype, offset, voxels = layout
        dtype = np.dtype(order + _NIFTI_FLOAT_TYPES[datatype])
        stream.seek(offset)
        bad, remaining = 0, voxels
        while remaining > 0:
            count = min(remaining, _CHUNK_BYTES // dtype.itemsize)
            chunk = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
            if chunk.size == 0:
                break
            bad += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
            remaining -= chunk.size
    return bad


def _nifti_layout(header: bytes) -> tuple[str, int, int, int] | None:
    """(byte order, datatype code, data offset, voxel count) of a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", header[:4])[0]
        if size == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype = struct.unpack(order + "h", header[70:72])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
        elif size == 540:
            datatype = struct.unpack(order + "h", header[12:14])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        return order, datatype, offset, int(np.prod([max(d, 1) for d in dims[1 : 1 + max(1, min(dims[0], 7))]]))
    return None


def _refuse_nonfinite(path: Path, bad: int) -> None:
    """One message for NaN/inf voxels, whoever counted them."""
    if bad:
        raise CTDenoiseError(f"input {path} has {bad} NaN or infinite voxel(s): fix or mask them before denoising")


def _check_values(volume: Volume, path: Path) -> None:
    """Refuse non-finite voxels (whether the values are HU is :mod:`ctdenoise.hu`'s question)."""
    _refuse_nonfinite(path, nonfinite_voxels(volume.array))
    volume.metadata.setdefault("warnings", [])
