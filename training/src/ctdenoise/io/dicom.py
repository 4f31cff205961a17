"""DICOM headers with pydicom: find CT series, order their slices, derive geometry, build output slices.

Nothing here decodes pixel data (the readers do that with SimpleITK/GDCM); this module only reads
and writes headers, so it stays fast on large folders.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from ctdenoise.errors import CTDenoiseError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

_POSITION_TOLERANCE_MM = 1e-3
_SHEAR_TOLERANCE_MM = 1e-2
_SERIES_NUMBER_OFFSET = 1000
PADDING_KEYS = ("pixel_padding_hu", "pixel_padding_limit_hu")
"""``Volume.metadata`` keys of the padding value outside the scan field, in HU (from PixelPaddingValue)."""

# Header elements that describe the source's stored pixels and become wrong once the pixels change.
_STALE_PIXEL_ELEMENTS = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "ModalityLUTSequence",
    "PlanarConfiguration",
    "IconImageSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
)


@dataclass
class DicomSeries:
    """One CT series ready to decode: files in slice order plus the geometry they imply."""

    files: list[Path]
    headers: list[Dataset]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewSeries:
    """Identity shared by every slice of a series being written."""

    series_uid: str
    series_number: int
    description: str
    study_uid: str
    frame_of_reference_uid: str


# ----------------------------------------------------------------------------------------- reading


def read_header(path: Path, *, required: bool = False) -> Dataset | None:
    """The header (no pixel data) of a DICOM image file, or None if ``path`` is not one.

    Files without the 128-byte preamble are accepted when they parse as an image header. With
    ``required`` (a source slice re-read to write a derived series) every element is read now rather
    than deferred, and a file that is missing or not a DICOM image raises instead of returning None.
    """
    defer = None if required else "64 KB"
    hint = "keep the source series in place while writing" if required else "check that the file is complete"
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, defer_size=defer)
    except InvalidDicomError:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, defer_size=defer, force=True)
        except Exception:  # any parse failure means "not DICOM" for a forced read
            header = None
        if header is not None and "SOPClassUID" not in header and "Modality" not in header:
            header = None
    except (OSError, ValueError, EOFError) as exc:
        raise CTDenoiseError(f"cannot read the DICOM header of {path} ({exc}): {hint}") from exc
    if header is not None and "Rows" in header and "Columns" in header:
        return header
    if required:
        raise CTDenoiseError(f"the source DICOM file {path} is not a DICOM image: {hint}")
    return None


def collect_series(files: Sequence[tuple[Path, Dataset]], where: Path, series_uid: str | None = None) -> DicomSeries:
    """Pick one CT series among DICOM image headers, order its slices and derive its geometry.

    The series with the most slices wins; the others are named in ``metadata["warnings"]``.
    Ties are refused rather than guessed. Non-CT series (Modality present and not CT) are ignored
    when a CT series exists and refused otherwise.
    """
    groups = _group_series(files)
    if series_uid is not None:
        groups = [g for g in groups if _text(g[0][1], "SeriesInstanceUID") == series_uid]
        if not groups:
            raise CTDenoiseError(f"{where} holds no series with SeriesInstanceUID {series_uid}: check the UID")
    chosen, warnings = _choose_group(groups, where)
    chosen, duplicate_note = _drop_duplicate_instances(chosen)
    warnings += duplicate_note
    _refuse_unsupported_images(chosen)
    series = _ordered_series(chosen, where)
    series.metadata["warnings"] = warnings + series.metadata["warnings"]
    return series


def _group_series(files: Sequence[tuple[Path, Dataset]]) -> list[list[tuple[Path, Dataset]]]:
    """Split headers into stacks: same SeriesInstanceUID, image size and orientation."""
    groups: dict[tuple[Any, ...], list[tuple[Path, Dataset]]] = {}
    for path, header in files:
        orientation = _floats(header, "ImageOrientationPatient")
        key = (
            _text(header, "SeriesInstanceUID"),
            int(header.Rows),
            int(header.Columns),
            None if orientation is None else tuple(round(v, 3) for v in orientation),
        )
        groups.setdefault(key, []).append((path, header))
    return list(groups.values())


def _choose_group(
    groups: list[list[tuple[Path, Dataset]]], where: Path
) -> tuple[list[tuple[Path, Dataset]], list[str]]:
    """The largest CT group, with warnings naming what was left out."""
    ct = [g for g in groups if _text(g[0][1], "Modality").upper() in ("CT", "")]
    not_ct = [g for g in groups if _text(g[0][1], "Modality").upper() not in ("CT", "")]
    if not ct:
        modalities = sorted({_text(g[0][1], "Modality") for g in not_ct})
        raise CTDenoiseError(
            f"{where} is {'/'.join(modalities)} (DICOM Modality), not CT: ctdenoise only denoises CT; "
            "pass a CT series (or correct the Modality tag if the images really are CT)"
        )
    warnings = []
    if not_ct:
        skipped = "; ".join(f"{_label(g)} [{_text(g[0][1], 'Modality')}]" for g in not_ct)
        warnings.append(f"ignored non-CT series in {where}: {skipped}")
    most = max(len(g) for g in ct)
    largest = [g for g in ct if len(g) == most]
    if len(largest) > 1:
        raise CTDenoiseError(
            f"{where} holds {len(largest)} CT series with {most} image(s) each "
            f"({'; '.join(_label(g) for g in largest[:4])}): put each series in its own folder or pass one file"
        )
    chosen = largest[0]
    others = [g for g in ct if g is not chosen]
    if others:
        warnings.append(
            f"{where} holds {len(ct)} CT series: read the largest, {_label(chosen)}, and ignored "
            + "; ".join(_label(g) for g in others)
        )
    return chosen, warnings


def _label(group: list[tuple[Path, Dataset]]) -> str:
    """A short human name for a group of slices."""
    header = group[0][1]
    parts = [f"'{_text(header, 'SeriesDescription')}'" if _text(header, "SeriesDescription") else ""]
    if _text(header, "SeriesNumber"):
        parts.append(f"#{_text(header, 'SeriesNumber')}")
    parts.append(f"{len(group)} image(s)")
    parts.append(f"UID {_text(header, 'SeriesInstanceUID') or '(empty)'}")
    return " ".join(p for p in parts if p)


def _drop_duplicate_instances(group: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], list[str]]:
    """Keep the first file of each SOPInstanceUID (copies of the same image)."""
    seen: set[str] = set()
    kept = []
    for path, header in group:
        uid = _text(header, "SOPInstanceUID")
        if uid and uid in seen:
            continue
        seen.add(uid)
        kept.append((path, header))
    dropped = len(group) - len(kept)
    return kept, ([f"ignored {dropped} duplicate file(s) of the same SOPInstanceUID"] if dropped else [])


def _refuse_unsupported_images(group: list[tuple[Path, Dataset]]) -> None:
    """Colour and multi-frame images cannot be read as CT slices."""
    path, header = group[0]
    if int(header.get("SamplesPerPixel", 1) or 1) != 1:
        raise CTDenoiseError(
            f"{path} is a colour image ({header.get('PhotometricInterpretation', 'RGB')}): "
            "CT is greyscale; pass the original CT series, not a screenshot or secondary capture"
        )
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise CTDenoiseError(
            f"{path} is a multi-frame (enhanced) DICOM image, which is not supported: "
            "convert it to a classic one-file-per-slice series or to NIfTI (e.g. with dcm2niix)"
        )


def _ordered_series(group: list[tuple[Path, Dataset]], where: Path) -> DicomSeries:
    """Sort slices along the slice normal and compute the volume geometry."""
    headers = [h for _, h in group]
    orientations = [_floats(h, "ImageOrientationPatient") for h in headers]
    positions = [_floats(h, "ImagePositionPatient") for h in headers]
    spacing_yx = _floats(headers[0], "PixelSpacing") or [1.0, 1.0]
    if any(o is None or len(o) != 6 for o in orientations) or any(p is None or len(p) != 3 for p in positions):
        return _series_without_geometry(group, spacing_yx)
    row, col = np.array(orientations[0][:3]), np.array(orientations[0][3:])
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    points = np.array(positions, dtype=np.float64)
    order = np.argsort(points @ normal, kind="stable")
    group = [group[i] for i in order]
    points = points[order]
    depth = points @ normal
    gaps = np.diff(depth)
    if gaps.size and gaps.min() < _POSITION_TOLERANCE_MM:
        raise CTDenoiseError(
            f"{where}: series {_label(group)} has {len(group)} images but only "
            f"{int(np.sum(gaps >= _POSITION_TOLERANCE_MM)) + 1} distinct slice positions (several phases or "
            "time points?): put one phase in its own folder"
        )
    warnings: list[str] = []
    metadata = _series_metadata(group[0][1])
    z_spacing = float(np.median(gaps)) if gaps.size else _slice_thickness(group[0][1])
    if gaps.size and not np.allclose(gaps, z_spacing, rtol=1e-2, atol=1e-2):
        warnings.append(
            f"non-uniform slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm along the slice normal): "
            f"spacing set to the median {z_spacing:.3f} mm, so non-DICOM outputs approximate the geometry "
            "(DICOM output keeps every slice's position)"
        )
    shear = np.linalg.norm((points[1:] - points[:-1]) - np.outer(gaps, normal), axis=1)
    tilt = _number(group[0][1], "GantryDetectorTilt")
    if shear.size and shear.max() > _SHEAR_TOLERANCE_MM:
        measured = float(np.median(np.degrees(np.arctan2(shear, gaps))))
        tilt = tilt if tilt else measured
        warnings.append(
            f"gantry tilt {tilt:g} deg: slices are sheared by {np.median(shear):.3f} mm per slice; the volume keeps "
            "the pixels as acquired, and non-DICOM outputs approximate the geometry with an orthogonal grid "
            "(DICOM output keeps every slice's position)"
        )
    if tilt is not None:
        metadata["gantry_tilt_deg"] = float(tilt)
    metadata["warnings"] = warnings
    metadata["slice_positions"] = points.tolist()
    metadata["dicom_files"] = [str(p) for p, _ in group]
    direction = tuple(float(v) + 0.0 for v in np.column_stack([row, col, normal]).ravel())  # no -0.0
    return DicomSeries(
        files=[p for p, _ in group],
        headers=[h for _, h in group],
        spacing=(float(spacing_yx[1]), float(spacing_yx[0]), z_spacing),
        origin=tuple(float(v) for v in points[0]),  # type: ignore[arg-type]
        direction=direction,
        metadata=metadata,
    )


def _series_without_geometry(group: list[tuple[Path, Dataset]], spacing_yx: list[float]) -> DicomSeries:
    """Slices lacking position/orientation: order by InstanceNumber and say so."""
    group = sorted(group, key=lambda item: _number(item[1], "InstanceNumber") or 0.0)
    metadata = _series_metadata(group[0][1])
    metadata["warnings"] = (
        [
            "slices have no ImagePositionPatient/ImageOrientationPatient: ordered by InstanceNumber, "
            "origin and orientation unknown (identity assumed)"
        ]
        if len(group) > 1
        else []
    )
    metadata["dicom_files"] = [str(p) for p, _ in group]
    return DicomSeries(
        files=[p for p, _ in group],
        headers=[h for _, h in group],
        spacing=(float(spacing_yx[1]), float(spacing_yx[0]), _slice_thickness(group[0][1])),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        metadata=metadata,
    )


def _series_metadata(header: Dataset) -> dict[str, Any]:
    """The JSON-friendly facts ``Volume.metadata`` carries from the first slice."""
    kernel = header.get("ConvolutionKernel")
    if isinstance(kernel, MultiValue):
        kernel = "\\".join(str(k) for k in kernel)
    facts: dict[str, Any] = {
        "format": "dicom",
        "modality": _text(header, "Modality") or None,
        "patient_id": _text(header, "PatientID") or None,
        "study_uid": _text(header, "StudyInstanceUID") or None,
        "series_uid": _text(header, "SeriesInstanceUID") or None,
        "series_description": _text(header, "SeriesDescription") or None,
        "kernel": str(kernel).strip() if kernel else None,
        "kv": _number(header, "KVP"),
        "manufacturer": _text(header, "Manufacturer") or None,
        "slice_thickness": _number(header, "SliceThickness"),
        "pixel_padding_hu": _padding_hu(header, "PixelPaddingValue"),
        "pixel_padding_limit_hu": _padding_hu(header, "PixelPaddingRangeLimit"),
    }
    return {k: v for k, v in facts.items() if v is not None}


def _padding_hu(header: Dataset, keyword: str) -> float | None:
    """A stored padding value (PixelPaddingValue or its range limit) converted to HU.

    Files often write it as unsigned although the pixels are signed (63536 for -2000): it is read
    with the pixels' own PixelRepresentation and BitsStored.
    """
    value = header.get(keyword)
    if isinstance(value, (bytes, bytearray)) and len(value) == 2:
        value = int.from_bytes(value, "little", signed=False)
    if not isinstance(value, int):
        return None
    bits = int(header.get("BitsStored", 16) or 16)
    if int(header.get("PixelRepresentation", 0) or 0) == 1 and value >= 2 ** (bits - 1):
        value -= 2**bits
    slope = _number(header, "RescaleSlope") or 1.0
    return float(value * slope + (_number(header, "RescaleIntercept") or 0.0))


def set_padding(dataset: Dataset, metadata: dict[str, Any], intercept: int) -> None:
    """Write the volume's padding value (``pixel_padding_hu``, HU) as signed stored values, slope 1.

    Left out when the volume has none or its stored value does not fit 16 bits.
    """
    for key, keyword in (
        ("pixel_padding_hu", "PixelPaddingValue"),
        ("pixel_padding_limit_hu", "PixelPaddingRangeLimit"),
    ):
        hu = metadata.get(key)
        if hu is None:
            continue
        stored = int(round(float(hu))) - intercept
        if -(2**15) <= stored < 2**15:
            dataset.add_new(keyword, "SS", stored)


def _slice_thickness(header: Dataset) -> float:
    """Z spacing for a single slice: SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _number(header, keyword)
        if value and value > 0:
            return value
    return 1.0


def _text(header: Dataset, keyword: str) -> str:
    """A header value as a stripped string ('' when absent or empty)."""
    value = header.get(keyword)
    return "" if value is None else str(value).strip()


def _number(header: Dataset, keyword: str) -> float | None:
    """A numeric header value, or None when absent, empty or malformed."""
    value = header.get(keyword)
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _floats(header: Dataset, keyword: str) -> list[float] | None:
    """A multi-valued numeric header value, or None when absent or malformed."""
    value = header.get(keyword)
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in (value if isinstance(value, (MultiValue, list, tuple)) else [value])]
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- writing


def new_series(source: Dataset | None, metadata: dict[str, Any], description: str | None) -> NewSeries:
    """Identity of a new derived series, continuing the source's study when there is one.

    A source with an empty StudyInstanceUID or FrameOfReferenceUID (seen in anonymised data) gets a UID
    derived from its other identifying tags, so repeated exports of the same source share it.
    """
    if source is None:
        old_description = str(metadata.get("series_description") or "")
        return NewSeries(
            series_uid=generate_uid(),
            series_number=_SERIES_NUMBER_OFFSET + 1,
            description=description or (f"{old_description} (ctdenoise)" if old_description else "ctdenoise"),
            study_uid=str(metadata.get("study_uid") or generate_uid()),
            frame_of_reference_uid=generate_uid(),
        )
    old_description = _text(source, "SeriesDescription")
    return NewSeries(
        series_uid=generate_uid(),
        series_number=int(_number(source, "SeriesNumber") or 0) + _SERIES_NUMBER_OFFSET,
        description=description or (f"{old_description} (ctdenoise)" if old_description else "ctdenoise"),
        study_uid=_text(source, "StudyInstanceUID") or _uid_from(source, "study"),
        frame_of_reference_uid=_text(source, "FrameOfReferenceUID") or _uid_from(source, "frame"),
    )


def _uid_from(source: Dataset, purpose: str) -> str:
    """A UID that is the same for every export of the same source header."""
    keys = ("PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber", "FrameOfReferenceUID")
    return generate_uid(entropy_srcs=[_text(source, k) for k in keys] + [purpose])


def derived_slice(source: Dataset, stored: np.ndarray, intercept: int, series: NewSeries) -> Dataset:
    """The source slice's header (patient, study, geometry kept) around new pixels, as a derived image.

    ``source`` is modified in place and returned; read it fresh for each slice.
    """
    for keyword in _STALE_PIXEL_ELEMENTS:
        if keyword in source:
            del source[keyword]
    source_sop = _text(source, "SOPInstanceUID")
    source_class = _text(source, "SOPClassUID") or CT_IMAGE_STORAGE
    source.SOPClassUID = source_class
    source.SOPInstanceUID = generate_uid()
    source.StudyInstanceUID = series.study_uid
    source.FrameOfReferenceUID = series.frame_of_reference_uid
    source.SeriesInstanceUID = series.series_uid
    source.SeriesNumber = series.series_number
    source.SeriesDescription = series.description
    old_type = list(source.get("ImageType", []) or [])
    source.ImageType = ["DERIVED", "SECONDARY", *[str(v) for v in old_type[2:]]]
    source.DerivationDescription = "processed with ctdenoise"
    if "SourceImageSequence" in source:
        del source.SourceImageSequence  # it named the source's own sources
    if source_sop:
        reference = Dataset()
        reference.ReferencedSOPClassUID = source_class
        reference.ReferencedSOPInstanceUID = source_sop
        source.SourceImageSequence = [reference]
    _stamp_creation(source)
    _set_pixels(source, stored, intercept)
    return source


def new_ct_slice(
    stored: np.ndarray,
    intercept: int,
    series: NewSeries,
    *,
    index: int,
    position: Sequence[float],
    orientation: Sequence[float],
    spacing: tuple[float, float, float],
    metadata: dict[str, Any],
) -> Dataset:
    """A minimal valid CT Image Storage slice built from geometry alone (no DICOM source)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Modality = "CT"
    ds.Manufacturer = str(metadata.get("manufacturer", ""))
    ds.PatientName = ""
    ds.PatientID = str(metadata.get("patient_id", ""))
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = series.study_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.description
    ds.PatientPosition = ""
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = ""
    ds.KVP = DSfloat(metadata["kv"], auto_format=True) if metadata.get("kv") else ""
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [DSfloat(v, auto_format=True) for v in position]
    ds.ImageOrientationPatient = [DSfloat(v, auto_format=True) for v in orientation]
    ds.PixelSpacing = [DSfloat(spacing[1], auto_format=True), DSfloat(spacing[0], auto_format=True)]
    ds.SliceThickness = DSfloat(spacing[2], auto_format=True)
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    ds.SliceLocation = DSfloat(float(np.dot(position, normal)), auto_format=True)
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    _stamp_creation(ds)
    _set_pixels(ds, stored, intercept)
    return ds


def _stamp_creation(ds: Dataset) -> None:
    """Instance creation and content date/time: now."""
    now = datetime.datetime.now()
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S.%f")


def _set_pixels(ds: Dataset, stored: np.ndarray, intercept: int) -> None:
    """Signed 16-bit MONOCHROME2 pixels with slope 1, plus a matching file meta header."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = int(intercept)
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
