"""Model files: read and validate a model's metadata and tensor header before anything is built.

An inference model is one ``.safetensors`` file: the generators' weights (``G_Q2F.*`` denoises,
``G_F2Q.*`` adds noise), optionally inference graphs for the CPU runtime (``graph.<precision>``,
see :mod:`ctdenoise.runtimes`) and JSON metadata under the key ``"ctdenoise"`` that says how to
rebuild and feed the network. This module needs neither PyTorch nor the weights: it reads the
8-byte header length and the JSON header itself (bounded in size), checks every metadata field
against a schema with bounds, and checks that tensor offsets lie inside the file. A bad file gets
one line naming the field and the fix, whatever is wrong with it.
"""

from __future__ import annotations

import json
import math
import numbers
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ctdenoise.errors import CTDenoiseError
from ctdenoise.normalization import HUNormalization
from ctdenoise.orientation import DEFAULT_ORIENTATION, check_orientation_code
from ctdenoise.types import PathLike

MODEL_FORMAT = "ctdenoise-model"
MODEL_FORMAT_VERSION = 2
"""Version 2 adds ``orientation``, ``change_limit_hu`` and ``graphs``; version 1 files are still read."""
METADATA_KEY = "ctdenoise"
GENERATOR_NAMES = ("G_Q2F", "G_F2Q")
MAX_HEADER_BYTES = 16 << 20
MAX_PARAMETERS = 50_000_000
"""Largest generator we load: 25 times the seed's; a file asking for more is refused before allocating."""
DEFAULT_CHANGE_LIMIT_HU = 500.0
"""Per-voxel change bound for models that do not carry a measured one (seed imports, version 1 files)."""
SPACING_FACTORS = {"in-plane pixel": 1.5, "slice": 2.0}
"""How far outside the training data's spacing range a volume may lie before a warning."""
SPACING_AXES = {"in-plane pixel": (0, 1), "slice": (2,)}
"""The (x, y, z) axes of each spacing whose training range a model records."""

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

# Generator arguments per preset: (type, minimum, maximum). Bounds keep a crafted file from asking for
# networks that cannot fit in memory; tests check these names against the constructors.
GENERATOR_SCHEMA: dict[str, dict[str, tuple[type, float, float]]] = {
    "seed": {
        "in_channels": (int, 1, 1),
        "out_channels": (int, 1, 1),
        "ngf": (int, 1, 128),
        "n_res_blocks": (int, 0, 32),
        "norm": (str, 0, 0),
    },
    "fast": {
        "in_channels": (int, 1, 1),
        "out_channels": (int, 1, 1),
        "ngf": (int, 1, 128),
        "n_res_blocks": (int, 0, 32),
        "n_downsampling": (int, 0, 5),
        "long_skip": (bool, 0, 1),
        "residual_highpass_sigma": (float, 0.0, 16.0),
        "lowpass_tail": (bool, 0, 1),
        "norm": (str, 0, 0),
    },
}
GENERATOR_CHOICES: dict[str, tuple[str, ...]] = {"norm": ("instance", "fixed")}
"""Text generator arguments and their allowed values (``networks.generators.NORMS``)."""
REEXPORT = "re-export the model with 'ctdenoise export' or use another model file"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file: dtype name, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass
class ModelDescription:
    """What the engine needs to know about a model, from its metadata alone.

    Attributes:
        path: the file it came from (or where it would be exported, for a model in training).
        metadata: the validated metadata (see :func:`validate_metadata`).
    """

    path: Path
    metadata: dict[str, Any]

    @property
    def preset(self) -> str:
        """Generator preset name (``fast`` or ``seed``)."""
        return str(self.metadata["generator"]["preset"])

    @property
    def generator_args(self) -> dict[str, Any]:
        """The generator's constructor arguments as recorded (preset defaults fill the rest)."""
        return dict(self.metadata["generator"].get("args", {}))

    @property
    def normalization(self) -> HUNormalization:
        """The HU mapping the model was trained with."""
        return HUNormalization.from_dict(self.metadata["normalization"])

    @property
    def orientation(self) -> str:
        """The orientation code of the slices the model was trained on (see :mod:`ctdenoise.orientation`)."""
        return str(self.metadata.get("orientation") or DEFAULT_ORIENTATION)

    @property
    def change_limit_hu(self) -> float:
        """Largest per-voxel change the engine lets the model make."""
        return float(self.metadata.get("change_limit_hu") or DEFAULT_CHANGE_LIMIT_HU)

    @property
    def second_pass_noise_hu(self) -> Optional[float]:
        """Flat-tissue noise (HU) above which the engine runs the model again on its own output, or None.

        A model that maps quarter dose to the noise of its training full dose leaves a scan noisier
        than its training data still noisier than that full dose after one pass. ``ctdenoise export
        --second-pass`` sets it from the training cache (:func:`~ctdenoise.export.second_pass_threshold`).
        """
        value = self.metadata.get("second_pass_noise_hu")
        return None if value is None else float(value)

    @property
    def second_pass_fine(self) -> Optional[tuple[float, float]]:
        """``(pixel_mm, noise_hu)``: on pixels no larger than ``pixel_mm`` the second pass starts at
        ``noise_hu`` instead of :attr:`second_pass_noise_hu`, or None.

        How much noise a second pass must find to gain more than the detail it smooths depends on the
        pixel size; ``ctdenoise export --second-pass-fine`` records a threshold chosen on validation
        data for pixels like the training data's.
        """
        pixel = self.metadata.get("second_pass_fine_pixel_mm")
        noise = self.metadata.get("second_pass_fine_noise_hu")
        return None if pixel is None or noise is None else (float(pixel), float(noise))

    def second_pass_threshold(self, spacing: Optional[tuple[float, float]] = None) -> Optional[float]:
        """The noise above which the model runs twice on slices with this (row, column) pixel
        ``spacing`` in mm: :attr:`second_pass_fine`'s where both sides are within its pixel size,
        else :attr:`second_pass_noise_hu` (also where the spacing is unknown); None for one pass.

        Examples:
            >>> from ctdenoise import bundled_model_path, read_model
            >>> model = read_model(bundled_model_path())
            >>> model.second_pass_threshold((0.7, 0.7)), model.second_pass_threshold((1.5, 1.5))
            (17.0, 29.3)
        """
        general = self.second_pass_noise_hu
        fine = self.second_pass_fine
        if general is None or fine is None or spacing is None or max(spacing) > fine[0]:
            return general
        return fine[1]

    @property
    def size_multiple(self) -> int:
        """Slice sides the network takes must be multiples of this (2 ** downsampling steps)."""
        if self.preset != "fast":
            return 1
        return 2 ** int(self.generator_args.get("n_downsampling", 2))

    @property
    def sees_whole_slices(self) -> bool:
        """Whether its output at a pixel depends on the whole slice (instance norms), so that a crop
        inside the body can change it; False for fixed norms (``ctdenoise fix-norms``)."""
        return self.generator_args.get("norm", "instance") == "instance"

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        """Inference graphs carried in the file, by precision (``fp32``, ``int8``)."""
        return dict(self.metadata.get("graphs") or {})

    def summary(self) -> dict[str, Any]:
        """The facts recorded with every output and shown by user interfaces."""
        meta = self.metadata
        training = meta.get("training") or {}
        return {
            "file": self.path.name,
            "preset": self.preset,
            "created": meta.get("created"),
            "package_version": meta.get("package_version"),
            "source": meta.get("source"),
            "normalization": self.normalization.to_dict(),
            "orientation": self.orientation,
            "change_limit_hu": self.change_limit_hu,
            "second_pass_noise_hu": self.second_pass_noise_hu,
            "second_pass_fine": None if self.second_pass_fine is None else list(self.second_pass_fine),
            "training_data": training.get("data"),
            "training_steps": training.get("steps"),
            "metrics": meta.get("metrics") or {},
            "graphs": sorted(self.graphs),
        }

    def auto_tta(
        self, spacing: Optional[tuple[float, float]] = None, slice_shape: Optional[tuple[int, int]] = None
    ) -> int:
        """Views averaged per slice under ``tta="auto"``: 8 where the (row, column) pixel ``spacing``
        in mm is coarser than the training data's largest pixel by more than the factor that
        :meth:`spacing_warnings` allows and the slice (``slice_shape``, where given) has at most
        :data:`~ctdenoise.options.AUTO_TTA_MAX_PIXELS` pixels, else 1 (also where the spacing or
        the training data's is unknown).

        There one view is least reliable (and changes with mirrored or rotated anatomy), and on such
        small slices 8 views cost no more than one view of a 512 x 512 slice. Full-size slices with
        coarse pixels (an extended field of view, a thick reformat) keep one view.

        Examples:
            >>> from ctdenoise import bundled_model_path, read_model
            >>> model = read_model(bundled_model_path())
            >>> model.auto_tta((0.7, 0.7)), model.auto_tta((3.0, 3.0), (101, 122))
            (1, 8)
            >>> model.auto_tta((1.6, 1.6), (512, 512))  # a full-size slice: 8 views would cost 8x
            1
        """
        from ctdenoise.options import AUTO_TTA_MAX_PIXELS

        bounds = self._spacing_bounds(SPACING_AXES["in-plane pixel"])
        if spacing is None or bounds is None:
            return 1
        if slice_shape is not None and int(slice_shape[0]) * int(slice_shape[1]) > AUTO_TTA_MAX_PIXELS:
            return 1
        coarsest = bounds[1] * SPACING_FACTORS["in-plane pixel"]
        return 8 if max(float(spacing[0]), float(spacing[1])) > coarsest else 1

    def spacing_warnings(self, spacing_xyz: tuple[float, float, float]) -> list[str]:
        """Warnings for voxel sizes far outside the training data's (from the metadata, when recorded)."""
        found = []
        for label, axes in SPACING_AXES.items():
            bounds = self._spacing_bounds(axes)
            if bounds is None:
                return []
            low, high = bounds[0] / SPACING_FACTORS[label], bounds[1] * SPACING_FACTORS[label]
            for axis in axes:
                value = float(spacing_xyz[axis])
                if not low <= value <= high:
                    found.append(
                        f"{label} spacing {value:g} mm is far outside the model's training data "
                        f"({bounds[0]:.3g}-{bounds[1]:.3g} mm): "
                        "expect weaker or uneven denoising; resample the volume or use a model trained on such data"
                    )
                    break
        return found

    def _spacing_bounds(self, axes: tuple[int, ...]) -> Optional[tuple[float, float]]:
        """The training data's smallest and largest spacing (mm) over these (x, y, z) ``axes``, if recorded."""
        data = (self.metadata.get("training") or {}).get("data") or {}
        ranges = data.get("spacing_mm") if isinstance(data, dict) else None
        if not isinstance(ranges, dict):
            return None
        return min(float(ranges["min"][a]) for a in axes), max(float(ranges["max"][a]) for a in axes)


@dataclass
class ModelFile(ModelDescription):
    """A validated model file: its metadata and its tensor header, without the weights.

    Examples:
        >>> from ctdenoise import bundled_model_path
        >>> model = read_model(bundled_model_path())
        >>> model.preset, model.orientation
        ('fast', 'LPS')
    """

    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    data_start: int = 0
    """Byte offset of the data section (tensor offsets count from here)."""

    def tensor_bytes(self, name: str) -> bytes:
        """The raw bytes of one tensor, read from the file by its header offsets."""
        begin, end = self.tensors[name].offsets
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + begin)
            data = handle.read(end - begin)
        if len(data) != end - begin:
            raise CTDenoiseError(f"{self.path} is shorter than its header says: the file is damaged; copy it again")
        return data

    def generator_tensors(self, direction: str = "G_Q2F") -> dict[str, TensorInfo]:
        """The header entries of one generator, keyed by state-dict name."""
        prefix = f"{direction}."
        return {name[len(prefix) :]: info for name, info in self.tensors.items() if name.startswith(prefix)}


def read_safetensors_header(path: PathLike) -> tuple[dict[str, str], dict[str, TensorInfo], int]:
    """The ``__metadata__`` strings, tensor entries (checked for consistency) and data offset of a safetensors file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("header length out of range")
            header = json.loads(handle.read(length).decode("utf-8"))
    except FileNotFoundError:
        raise CTDenoiseError(f"model {path} does not exist: pass the path of a .safetensors model") from None
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise CTDenoiseError(
            f"cannot read {path} as safetensors ({type(exc).__name__}): the file is damaged or not a model"
        ) from None
    if not isinstance(header, dict):
        raise CTDenoiseError(f"{path} has a damaged safetensors header: the file is damaged or not a model")
    data_bytes = size - 8 - length
    metadata = header.pop("__metadata__", None) or {}
    tensors = {name: _tensor_info(path, name, entry, data_bytes) for name, entry in header.items()}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CTDenoiseError(f"{path} has a damaged safetensors metadata section: {REEXPORT}")
    return metadata, tensors, 8 + length


def _tensor_info(path: Path, name: str, entry: Any, data_bytes: int) -> TensorInfo:
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        valid = (
            dtype in _DTYPE_BYTES
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape)
            and all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end))
            and 0 <= begin <= end <= data_bytes
            and end - begin == math.prod(shape) * _DTYPE_BYTES[dtype]
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CTDenoiseError(
            f"{path}: tensor {name!r} has an inconsistent header entry: the file is damaged or not a model"
        )
    return TensorInfo(dtype, shape, (begin, end))


def read_model(path: PathLike) -> ModelFile:
    """Read and validate a ``.safetensors`` model's metadata and tensor header (no weights, no PyTorch).

    Raises:
        CTDenoiseError: a missing or damaged file, metadata that fails the schema, missing
            generator weights or a network larger than :data:`MAX_PARAMETERS`.

    Examples:
        >>> from ctdenoise import bundled_model_path
        >>> model = read_model(bundled_model_path())
        >>> model.change_limit_hu, model.normalization.scale, model.second_pass_noise_hu
        (320.0, 1000.0, 29.3)
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CTDenoiseError(
            f"model {path} is not a .safetensors file: convert it with 'ctdenoise convert-seed' or 'ctdenoise export'"
        )
    strings, tensors, data_start = read_safetensors_header(path)
    raw = strings.get(METADATA_KEY)
    if raw is None:
        raise CTDenoiseError(
            f"{path} has no ctdenoise metadata: export models with 'ctdenoise export' or 'ctdenoise convert-seed'"
        )
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise CTDenoiseError(f"{path} has damaged ctdenoise metadata (not JSON): {REEXPORT}") from None
    metadata = validate_metadata(metadata, str(path))
    model = ModelFile(path=path, metadata=metadata, tensors=tensors, data_start=data_start)
    weights = model.generator_tensors("G_Q2F")
    if not weights:
        raise CTDenoiseError(f"{path} holds no G_Q2F (denoising) weights: {REEXPORT}")
    total = sum(info.numel for info in weights.values())
    if total > MAX_PARAMETERS:
        raise CTDenoiseError(
            f"{path}: the G_Q2F generator has {total:,} parameters, more than the {MAX_PARAMETERS:,} allowed: {REEXPORT}"
        )
    return model


def validate_metadata(metadata: Any, where: str) -> dict[str, Any]:
    """``metadata`` checked against the model schema (types and bounds of every field the engine uses).

    Raises:
        CTDenoiseError: one line naming the first field that is missing or wrong.
    """

    def bad(key: str, value: Any, expected: str) -> CTDenoiseError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return CTDenoiseError(f"{where}: metadata field {key}={shown} is invalid ({expected}): {REEXPORT}")

    if not isinstance(metadata, dict):
        raise bad("(root)", metadata, "expected a JSON object")
    if metadata.get("format") != MODEL_FORMAT:
        raise bad("format", metadata.get("format"), f"expected {MODEL_FORMAT!r}")
    version = metadata.get("format_version")
    if not _is_int(version) or not 1 <= version <= MODEL_FORMAT_VERSION:
        if _is_int(version) and version > MODEL_FORMAT_VERSION:
            raise CTDenoiseError(
                f"{where} has model format v{version}; this ctdenoise reads up to v{MODEL_FORMAT_VERSION}: upgrade ctdenoise"
            )
        raise bad("format_version", version, f"expected an integer from 1 to {MODEL_FORMAT_VERSION}")
    generator = metadata.get("generator")
    if not isinstance(generator, dict):
        raise bad("generator", generator, "expected an object with preset and args")
    preset = generator.get("preset")
    if not isinstance(preset, str) or preset not in GENERATOR_SCHEMA:
        raise bad("generator.preset", preset, f"expected one of {', '.join(sorted(GENERATOR_SCHEMA))}")
    args = generator.get("args", {})
    if not isinstance(args, dict):
        raise bad("generator.args", args, "expected an object")
    schema = GENERATOR_SCHEMA[preset]
    for name, value in args.items():
        if name not in schema:
            raise bad(
                f"generator.args.{name}", value, f"not an option of the {preset!r} generator: {', '.join(schema)}"
            )
        if name in GENERATOR_CHOICES:
            if value not in GENERATOR_CHOICES[name]:
                raise bad(f"generator.args.{name}", value, f"expected one of {', '.join(GENERATOR_CHOICES[name])}")
            continue
        kind, low, high = schema[name]
        if not _within(value, kind, low, high):
            raise bad(f"generator.args.{name}", value, _describe(kind, low, high))
    norm = metadata.get("normalization")
    if not isinstance(norm, dict) or set(norm) - {"hu_min", "hu_max", "offset", "scale"}:
        raise bad("normalization", norm, "expected an object with hu_min, hu_max, offset and scale")
    for key, optional in (("hu_min", True), ("hu_max", True), ("offset", False), ("scale", False)):
        value = norm.get(key, 0.0 if key == "offset" else None)
        if value is None and optional:
            continue
        low = 1e-6 if key == "scale" else -1e5
        if not _within(value, float, low, 1e5):
            raise bad(f"normalization.{key}", value, _describe(float, low, 1e5))
    try:
        HUNormalization.from_dict(norm)
    except CTDenoiseError as exc:
        raise bad("normalization", norm, str(exc)) from None
    checks = (
        ("patch_size", (int, 4, 4096), True),
        ("change_limit_hu", (float, 1.0, 5000.0), True),
        ("second_pass_noise_hu", (float, 1.0, 1000.0), True),
        ("second_pass_fine_pixel_mm", (float, 0.01, 100.0), True),
        ("second_pass_fine_noise_hu", (float, 1.0, 1000.0), True),
    )
    for key, (kind, low, high), optional in checks:
        value = metadata.get(key)
        if value is None and optional:
            continue
        if not _within(value, kind, low, high):
            raise bad(key, value, _describe(kind, low, high))
    fine = [metadata.get(key) is not None for key in ("second_pass_fine_pixel_mm", "second_pass_fine_noise_hu")]
    if any(fine) and not (all(fine) and metadata.get("second_pass_noise_hu") is not None):
        raise bad(
            "second_pass_fine_noise_hu",
            metadata.get("second_pass_fine_noise_hu"),
            "expected with second_pass_fine_pixel_mm and second_pass_noise_hu (ctdenoise export --second-pass-fine)",
        )
    if metadata.get("orientation") is not None:
        try:
            check_orientation_code(metadata["orientation"])
        except CTDenoiseError:
            raise bad("orientation", metadata["orientation"], "expected a code such as LPS") from None
    for key in ("training", "metrics", "graphs"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            raise bad(key, metadata[key], "expected an object")
    spacing = (
        ((metadata.get("training") or {}).get("data") or {}).get("spacing_mm")
        if isinstance((metadata.get("training") or {}).get("data"), dict)
        else None
    )
    if spacing is not None and not _spacing_range_ok(spacing):
        raise bad("training.data.spacing_mm", spacing, "expected {min: [x, y, z], max: [x, y, z]} in mm")
    for key in ("created", "package_version", "source"):
        if metadata.get(key) is not None and not isinstance(metadata[key], str):
            raise bad(key, metadata[key], "expected text")
    for name, graph in (metadata.get("graphs") or {}).items():
        _check_graph_entry(name, graph, bad)
    return metadata


def _check_graph_entry(name: str, graph: Any, bad: Any) -> None:
    if name not in ("fp32", "int8") or not isinstance(graph, dict):
        raise bad(f"graphs.{name}", graph, "expected fp32 or int8 entries")
    if not isinstance(graph.get("tensor"), str) or not isinstance(graph.get("sha256"), str):
        raise bad(f"graphs.{name}", graph, "expected tensor and sha256 texts")


def _spacing_range_ok(spacing: Any) -> bool:
    if not isinstance(spacing, dict):
        return False
    values = [spacing.get("min"), spacing.get("max")]
    return all(isinstance(v, list) and len(v) == 3 and all(_within(x, float, 1e-3, 1e3) for x in v) for v in values)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _within(value: Any, kind: type, low: float, high: float) -> bool:
    """Whether ``value`` has the JSON type ``kind`` (ints pass as floats) and lies in ``[low, high]``."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return _is_int(value) and low <= value <= high
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _describe(kind: type, low: float, high: float) -> str:
    if kind is bool:
        return "expected true or false"
    name = "an integer" if kind is int else "a number"
    return f"expected {name} from {low:g} to {high:g}"


def build_metadata(
    *,
    preset: str,
    generator_args: Mapping[str, Any],
    normalization: HUNormalization,
    patch_size: Optional[int],
    training: Optional[Mapping[str, Any]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    source: Optional[str] = None,
    orientation: str = DEFAULT_ORIENTATION,
    change_limit_hu: Optional[float] = None,
) -> dict[str, Any]:
    """The self-describing metadata dict stored in every exported model."""
    from datetime import datetime, timezone

    from ctdenoise import __version__

    metadata = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": {"preset": preset, "args": dict(generator_args)},
        "normalization": normalization.to_dict(),
        "patch_size": patch_size,
        "orientation": check_orientation_code(orientation),
        "change_limit_hu": change_limit_hu,
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "source": source,
    }
    return validate_metadata(metadata, "new model")
