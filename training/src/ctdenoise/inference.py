"""Whole-volume denoising: one engine for the Python API, the command line and the Slicer module.

Data flows one way: voxels in HU -> the model's orientation (a view, see :mod:`ctdenoise.orientation`)
-> the model's normalisation -> the generator on a runtime (:mod:`ctdenoise.runtimes`), slice by
slice -> its *change* back in HU -> the input's storage order, geometry and dtype.

The generator's output is used only as a change: ``out = hu + strength * clip(denorm(model(x)) -
denorm(x), -L, L)``. Inside the normalisation range this equals the model's output; outside it
(metal) the voxel keeps its own HU plus the change instead of snapping to the clip bound. ``L`` is
the per-voxel change limit the model carries (measured on its training data at export), so a model
out of its depth cannot paint spikes. Voxels at or below the padding value (outside the scan field)
pass through unchanged, and no output voxel falls below the input's minimum.

A model whose file sets ``second_pass_noise_hu`` (a CycleGAN maps quarter dose to the noise of its
training full dose, so noisier input stays noisier than that after one pass) runs a second time on
its own output where one pass leaves sampled slices noisier than that (or than its
``second_pass_fine_noise_hu`` on pixels no larger than ``second_pass_fine_pixel_mm``); ``L`` then
bounds the sum of both changes.

Memory: slices stream through the model a batch at a time into an output of the input's dtype, and
whole-volume scans (units, padding, NaN) go slab by slab. :meth:`Denoiser.file` reads int16 CT as
int16 and writes the output over the input's voxels in memory, so it holds one copy of the volume,
two while ITK reads the file (or writes NRRD or MetaImage), three with a noise output.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ctdenoise.errors import CTDenoiseError, DenoiseCancelled, warn
from ctdenoise.hu import check_units, declared_padding, padding_threshold
from ctdenoise.io.volume import Volume, nonfinite_voxels, slabs
from ctdenoise.modelfile import ModelDescription, read_model
from ctdenoise.options import AUTO_TTA, DenoiseOptions
from ctdenoise.orientation import reorientation
from ctdenoise.progress import ProgressInfo
from ctdenoise.runtimes import Runtime, open_runtime
from ctdenoise.runtimes.base import averaged_change
from ctdenoise.types import CancelCallback, PathLike, ProgressCallback

logger = logging.getLogger(__name__)

BUNDLED_MODELS = {
    "cyclegan": "ctdenoise_fast_v5.safetensors",
    "supervised": "ctdenoise_supervised_v5.safetensors",
}
"""The models shipped in ``ctdenoise/models/``, by name: ``cyclegan`` (the default, a CycleGAN
generator trained without pairs) and ``supervised`` (the same network fine-tuned on simulated
low/full-dose pairs); each has its model card next to it."""
DEFAULT_MODEL = "cyclegan"
DICOM_LO_LENGTH = 64
"""Longest SeriesDescription DICOM allows."""
SECOND_PASS_SAMPLE = 8
"""Slices, evenly spread, whose noise after one pass decides whether a volume gets a second pass."""

ModelLike = Union[PathLike, ModelDescription, None]
"""A model: a file path, a bundled model's name (:data:`BUNDLED_MODELS`), a validated
:class:`~ctdenoise.modelfile.ModelFile`, a loaded :class:`~ctdenoise.checkpoints.ModelCheckpoint`,
or None for the default bundled model."""


def bundled_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model shipped inside the package (``ctdenoise/models/``), by name.

    Examples:
        >>> bundled_model_path().name
        'ctdenoise_fast_v5.safetensors'
        >>> bundled_model_path("supervised").name
        'ctdenoise_supervised_v5.safetensors'
    """
    if name not in BUNDLED_MODELS:
        raise CTDenoiseError(
            f"no bundled model is named {name!r}: use one of {', '.join(BUNDLED_MODELS)}, or give a model file"
        )
    path = Path(__file__).resolve().parent / "models" / BUNDLED_MODELS[name]
    if not path.is_file():
        raise CTDenoiseError(f"no bundled model found at {path}: reinstall ctdenoise, or pass --checkpoint FILE")
    return path


def model_path(model: Optional[PathLike] = None) -> Path:
    """The file of ``model``: a bundled model's name, or None for the default one, resolved; any other path as given.

    A bundled model's name wins over a file of the same name in the working folder (write
    ``./supervised`` for the file).

    Examples:
        >>> model_path("supervised") == bundled_model_path("supervised"), model_path("my.safetensors")
        (True, PosixPath('my.safetensors'))
    """
    if model is None or (isinstance(model, str) and model in BUNDLED_MODELS):
        return bundled_model_path(model or DEFAULT_MODEL)
    return Path(model)


def describe_model(model: ModelLike = None) -> ModelDescription:
    """A validated description of ``model``; files are checked without PyTorch where possible.

    Names and None are resolved by :func:`model_path`. ``.safetensors`` files are read by
    :func:`~ctdenoise.modelfile.read_model`; training states and seed files (``.pt``, ``.pth``)
    need PyTorch and are loaded whole.
    """
    if isinstance(model, ModelDescription):
        return model
    path = model_path(model)
    if path.suffix.lower() == ".safetensors" or not path.is_file():
        return read_model(path)
    from ctdenoise.checkpoints import load_checkpoint

    return load_checkpoint(path)


@dataclass
class DenoiseResult:
    """The outcome of :func:`denoise_volume`.

    Attributes:
        volume: the denoised volume, with the input's geometry and metadata (plus ``denoised_with``).
        source: the input volume.
        model: the model's summary (:meth:`~ctdenoise.modelfile.ModelDescription.summary`).
        options: the options used.
        runtime, device, precision: where and how the network ran.
        seconds: wall time of the run.
        clamped_voxels: voxels whose change hit the model's change limit.
        passes: how often the model ran on each slice: 2 where its file asks for a second pass and one
            left the volume noisier than that (see :meth:`Denoiser._passes`), else 1.
        views: mirrored/rotated views of each slice averaged, as ``options.tta`` resolved for this
            volume (``auto``: see :meth:`~ctdenoise.modelfile.ModelDescription.auto_tta`); 1 where
            nothing ran (strength 0).
        padding_voxels: voxels outside the scan field, passed through unchanged.
        warnings: what looked wrong about the input or the model (also emitted as warnings).

    Examples:
        >>> from ctdenoise import denoise_volume, read_volume
        >>> result = denoise_volume(read_volume("../data/tcga_lung_ctmi/ID_0008_AGE_0051_CONTRAST_1_CT.dcm"))
        >>> result.padding_voxels, result.summary()["runtime"] in ("torch", "onnxruntime")
        (55772, True)
    """

    volume: Volume
    source: Volume
    model: dict[str, Any]
    options: DenoiseOptions
    runtime: str
    device: str
    precision: str
    seconds: float
    clamped_voxels: int = 0
    passes: int = 1
    views: int = 1
    padding_voxels: int = 0
    warnings: list[str] = field(default_factory=list)

    def noise(self) -> Volume:
        """The removed noise, input minus output, with the input's geometry.

        int16 when input and output are integer arrays and every difference fits it, else float32.
        """
        from ctdenoise.io import PADDING_KEYS

        noise = self.source.with_array(_difference(self.source.array, self.volume.array))
        for key in PADDING_KEYS:  # the noise is 0 outside the scan field, not the padding value
            noise.metadata.pop(key, None)
        return noise

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts about the run (what ``--progress json`` reports as ``done``)."""
        return {
            "slices": self.source.shape[0],
            "shape": list(self.source.shape),
            "seconds": round(self.seconds, 3),
            "runtime": self.runtime,
            "device": self.device,
            "precision": self.precision,
            "strength": self.options.strength,
            "tta": self.views,
            "tta_option": self.options.tta,
            "clamped_voxels": self.clamped_voxels,
            "passes": self.passes,
            "padding_voxels": self.padding_voxels,
            "warnings": list(self.warnings),
            "model": self.model,
        }


@dataclass
class _SliceStats:
    clamped: int = 0
    passes: int = 1
    views: int = 1


class Denoiser:
    """A model opened once on a runtime, for denoising many arrays, volumes or files.

    The module-level :func:`denoise_array`, :func:`denoise_volume` and :func:`denoise_file` make
    one per call; keep one yourself to avoid reopening the model.

    Examples:
        >>> from ctdenoise import Denoiser, DenoiseOptions, read_volume
        >>> volume = read_volume("../data/totalsegmentator/example_ct_sm.nii.gz")
        >>> denoiser = Denoiser(options=DenoiseOptions(device="cpu"))
        >>> result = denoiser.volume(volume)
        >>> result.volume.shape == volume.shape
        True
    """

    def __init__(self, model: ModelLike = None, options: Optional[DenoiseOptions] = None) -> None:
        self.options = options or DenoiseOptions()
        if not isinstance(self.options, DenoiseOptions):
            raise CTDenoiseError(f"options must be a DenoiseOptions, got {type(self.options).__name__}")
        self.model = describe_model(model)
        self._runtime: Optional[Runtime] = None

    def open(self) -> Runtime:
        """The runtime, opened on first use (resolves the device, builds or loads the network)."""
        if self._runtime is None:
            self._runtime = open_runtime(self.model, self.options)
        return self._runtime

    # ---------------------------------------------------------------------------------- arrays
    def array(
        self,
        hu: np.ndarray,
        *,
        padding_hu: Optional[float] = None,
        spacing: Optional[tuple[float, float]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
    ) -> np.ndarray:
        """Denoise HU voxels ``[z, y, x]`` (or one slice ``[y, x]``) already in the model's orientation.

        ``spacing``: the (row, column) pixel size in mm, where known; it sizes the flat-tissue patches
        that decide a second pass (:meth:`_passes`) and, under ``tta="auto"``, decides the views
        (:meth:`views`): without it the array runs one view where :meth:`volume` might run 8.
        Returns float32 HU for float input; for integer input the same integer dtype (native byte
        order), rounded and clipped to its range. Same shape as ``hu``.
        """
        _check_array(hu)
        for message in check_units(
            hu, force=self.options.force, where="the input", whole_slices=self.model.sees_whole_slices
        ):
            warn(message)
        out = np.empty(hu.shape, dtype=_output_dtype(hu))
        slices = hu[None] if hu.ndim == 2 else hu
        self._run(
            slices,
            out.reshape(slices.shape),
            padding_threshold(hu, padding_hu),
            float(hu.min()),
            progress,
            cancel,
            spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        )
        return out

    def views(
        self, spacing: Optional[tuple[float, float]] = None, slice_shape: Optional[tuple[int, int]] = None
    ) -> int:
        """Mirrored/rotated views averaged per slice for (row, column) pixel ``spacing`` in mm and
        slices of ``slice_shape``: the options' ``tta``, with ``auto`` resolved by
        :meth:`~ctdenoise.modelfile.ModelDescription.auto_tta`."""
        tta = self.options.tta
        return self.model.auto_tta(spacing, slice_shape) if tta == AUTO_TTA else int(tta)

    def _run(
        self,
        slices: np.ndarray,
        out: np.ndarray,
        padding: Optional[float],
        floor: float,
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelCallback],
        spacing: Optional[tuple[float, float]] = None,
        passes: Optional[int] = None,
        strength: Optional[float] = None,
        views: Optional[int] = None,
    ) -> _SliceStats:
        """Fill ``out`` (a view, possibly reoriented) from ``slices``; see the module docstring.

        ``passes`` None chooses 1 or 2 with :meth:`_passes` (``spacing``: the slices' (row, column)
        pixel size in mm, if known); ``strength`` None takes the options'; ``views`` None resolves
        the options' ``tta`` for ``spacing``.
        """
        first: Optional[np.ndarray] = None
        stats = _SliceStats()
        strength = np.float32(self.options.strength if strength is None else strength)
        if strength == 0.0:
            for part in slabs(slices):
                out[part] = _cast(slices[part].astype(np.float32), out.dtype)
            return stats
        copies = self.views(spacing, (int(slices.shape[1]), int(slices.shape[2]))) if views is None else views
        stats.views = copies
        runtime = self.open()
        if passes is None:
            passes, first = self._passes(slices, padding, floor, spacing, cancel, copies)
        stats.passes = passes
        multiple = self.model.size_multiple
        normalization = self.model.normalization
        scale, limit = np.float32(normalization.scale), np.float32(self.model.change_limit_hu)
        total, done, started = slices.shape[0], 0, time.perf_counter()
        while done < total:
            if cancel is not None and cancel():
                raise DenoiseCancelled("denoising cancelled: no output was written")
            stop = min(done + runtime.batch_size, total)
            hu = np.ascontiguousarray(slices[done:stop], dtype=np.float32)
            outside = None if padding is None else hu <= padding
            change: Optional[np.ndarray] = None  # the sum of the passes' changes so far
            over: Optional[np.ndarray] = None
            if first is not None:  # the first pass already ran on every slice to decide on a second
                change = first[done:stop] - hu
                over = np.abs(change) >= limit
            for _ in range(0 if first is None else 1, passes):
                current = hu
                if change is not None:  # a later pass sees what the earlier one returned
                    current = hu + change
                    if outside is not None:
                        np.copyto(current, hu, where=outside)
                    np.maximum(current, np.float32(floor), out=current)
                step = averaged_change(
                    runtime.change, normalization.normalize(current)[:, None].astype(np.float32), copies, multiple
                )
                if step is None:  # out of memory: the runtime adjusted itself, retry the same slices
                    break
                step *= scale
                clipped = np.abs(step) > limit
                np.clip(step, -limit, limit, out=step)
                if change is None or over is None:
                    change, over = step, clipped
                else:
                    change += step
                    over |= clipped
            else:  # every pass ran
                assert change is not None and over is not None
                if passes > 1:  # each pass was clipped; so is their sum
                    over |= np.abs(change) > limit
                    np.clip(change, -limit, limit, out=change)
                result = hu + strength * change
                if outside is not None:
                    np.copyto(result, hu, where=outside)
                    over &= ~outside
                stats.clamped += int(np.count_nonzero(over))
                np.maximum(result, np.float32(floor), out=result)
                out[done:stop] = _cast(result, out.dtype)
                done = stop
                if progress is not None:
                    elapsed = time.perf_counter() - started
                    progress(
                        ProgressInfo(
                            done / total,
                            done,
                            total,
                            elapsed,
                            elapsed / done * (total - done),
                            runtime.device,
                            runtime.batch_size,
                            runtime.name,
                        )
                    )
        return stats

    def _passes(
        self,
        slices: np.ndarray,
        padding: Optional[float],
        floor: float,
        spacing: Optional[tuple[float, float]],
        cancel: Optional[CancelCallback],
        views: int,
    ) -> tuple[int, Optional[np.ndarray]]:
        """2 where the model asks for a second pass (:meth:`ModelDescription.second_pass_threshold` at
        this pixel ``spacing``) and one pass at full strength, with ``views``, leaves up to
        :data:`SECOND_PASS_SAMPLE` evenly spread slices noisier than that in flat soft tissue (the
        median of their :func:`~ctdenoise.noise.band_noise_std`); else 1. With the pass's output for all ``slices`` when the sample was all of them (so that
        pass need not run again), else None."""
        from ctdenoise.noise import slice_noise

        threshold = self.model.second_pass_threshold(spacing)
        if threshold is None or self.options.single_pass:
            return 1, None
        count = min(SECOND_PASS_SAMPLE, slices.shape[0])
        index = np.unique(np.linspace(0, slices.shape[0] - 1, count).round().astype(int))
        sample = np.ascontiguousarray(slices[index], dtype=np.float32)
        first = np.empty_like(sample)
        self._run(sample, first, padding, floor, None, cancel, passes=1, strength=1.0, views=views)
        measured = slice_noise(first, spacing)  # as the threshold was measured on training slices
        noise = float(np.median(measured)) if measured else None
        passes = 2 if noise is not None and noise > threshold else 1
        logger.info(
            "noise after one pass: %s HU in flat tissue (second pass above %g HU): %d pass(es)",
            "not measured (no flat soft tissue)" if noise is None else f"{noise:.1f}",
            threshold,
            passes,
        )
        return passes, first if len(index) == slices.shape[0] else None

    # --------------------------------------------------------------------------------- volumes
    def volume(
        self, volume: Volume, *, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCallback] = None
    ) -> DenoiseResult:
        """Denoise a :class:`~ctdenoise.io.Volume` in whatever orientation it is stored; geometry is kept."""
        return self._denoise(volume, False, progress, cancel)

    def _denoise(
        self,
        volume: Volume,
        in_place: bool,
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelCallback],
    ) -> DenoiseResult:
        """:meth:`volume`; ``in_place`` writes the output over ``volume.array`` when the dtypes match.

        The input's voxels are then gone: the result's ``source`` holds the output too.
        """
        started = time.perf_counter()
        name = str(volume.metadata.get("source_path") or "the input")
        messages = check_units(
            volume.array, force=self.options.force, where=name, whole_slices=self.model.sees_whole_slices
        )
        turn = reorientation(volume.direction, self.model.orientation)
        if not turn.is_identity:
            logger.info("%s is stored %s; the network sees it as %s", name, turn, self.model.orientation)
        messages += self.model.spacing_warnings(turn.target_spacing(volume.spacing))
        for message in messages:
            warn(message)
        padding = padding_threshold(volume.array, declared_padding(volume.metadata))
        outside = 0  # counted before an in-place run overwrites the input
        if padding is not None:
            outside = sum(int(np.count_nonzero(volume.array[part] <= padding)) for part in slabs(volume.array))
        dtype = _output_dtype(volume.array)
        out = volume.array if in_place and dtype == volume.array.dtype else np.empty(volume.shape, dtype=dtype)
        sx, sy, _ = turn.target_spacing(volume.spacing)
        stats = self._run(
            turn.to_target(volume.array),
            turn.to_target(out),
            padding,
            float(volume.array.min()),
            progress,
            cancel,
            spacing=(float(sy), float(sx)),
        )
        summary = self.model.summary()
        denoised = volume.with_array(out, denoised_with=summary, strength=self.options.strength)
        runtime = self._runtime
        return DenoiseResult(
            volume=denoised,
            source=volume,
            model=summary,
            options=self.options,
            runtime=runtime.name if runtime else "none",
            device=runtime.device if runtime else "none",
            precision=runtime.precision if runtime else "none",
            seconds=time.perf_counter() - started,
            clamped_voxels=stats.clamped,
            passes=stats.passes,
            views=stats.views,
            padding_voxels=outside,
            warnings=list(volume.metadata.get("warnings") or []) + messages,
        )

    # ----------------------------------------------------------------------------------- files
    def file(
        self,
        input_path: PathLike,
        output_path: PathLike,
        *,
        noise_output: Optional[PathLike] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
    ) -> dict[str, Any]:
        """Read a CT volume, denoise it and write the result (and optionally the removed noise).

        Everything that can be checked is checked before the long computation: the paths (see
        :func:`~ctdenoise.io.check_paths`), the model, the device and the input. The format of each output
        follows its path (see :func:`~ctdenoise.io.write_volume`); DICOM outputs copy the input's
        headers with a new series described as ``"<original> denoised (ctdenoise <preset>, strength
        s)"``. ``noise_output`` receives input minus output. On an error or a cancel nothing is left
        at either output path. Integer input is read and denoised as integers and, without
        ``noise_output``, in place (see the module docstring).

        Returns:
            :meth:`DenoiseResult.summary` plus ``input``, ``output`` and ``noise_output``.
        """
        from ctdenoise.io import check_paths, read_volume, validate_output_path

        started = time.perf_counter()
        source_path, output = Path(input_path), Path(output_path)
        noise = None if noise_output is None else Path(noise_output)
        check_paths(source_path, output, noise)
        self.open()
        source = read_volume(source_path, integer_hu=True)
        validate_output_path(output, source)
        if noise is not None:
            validate_output_path(noise, source)
        result = self._denoise(source, noise is None, progress, cancel)
        if cancel is not None and cancel():
            raise DenoiseCancelled("denoising cancelled: no output was written")
        written, written_noise = _write_outputs(result, output, noise)
        return {
            "input": str(source_path),
            "output": str(written),
            "noise_output": None if written_noise is None else str(written_noise),
            **result.summary(),
            "seconds": round(time.perf_counter() - started, 3),
        }


def _check_array(hu: Any) -> None:
    """Refuse arrays the engine cannot denoise."""
    if not isinstance(hu, np.ndarray) or hu.dtype.kind not in "iuf":
        kind = hu.dtype if isinstance(hu, np.ndarray) else type(hu).__name__
        raise CTDenoiseError(f"cannot denoise data of type {kind}: pass a real-valued numpy array of HU")
    if hu.ndim not in (2, 3) or hu.size == 0:
        raise CTDenoiseError(f"cannot denoise an array of shape {hu.shape}: pass [z, y, x] or [y, x] HU voxels")
    bad = nonfinite_voxels(hu)
    if bad:
        raise CTDenoiseError(f"the input has {bad} NaN or infinite voxels: fix or mask them before denoising")


def _output_dtype(hu: np.ndarray) -> np.dtype:
    """float32 for float input; the input's integer dtype in native byte order otherwise."""
    return np.dtype(np.float32) if hu.dtype.kind == "f" else hu.dtype.newbyteorder("=")


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` slab by slab: int16 for integer arrays whose every difference fits it, else float32."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        small = np.empty(a.shape, dtype=np.int16)
        exact = np.int32 if max(a.dtype.itemsize, b.dtype.itemsize) <= 2 else np.int64
        for part in slabs(a):
            wide = np.subtract(a[part], b[part], dtype=exact)
            if wide.min() < np.iinfo(np.int16).min or wide.max() > np.iinfo(np.int16).max:
                break
            small[part] = wide
        else:
            return small
    difference = np.empty(a.shape, dtype=np.float32)
    for part in slabs(a):
        np.subtract(a[part], b[part], out=difference[part], dtype=np.float32)
    return difference


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 HU for float outputs; rounded and clipped to the range of an integer ``dtype``."""
    if dtype.kind == "f":
        return values.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


# ------------------------------------------------------------------------------ the flat API


def denoise_array(
    hu: np.ndarray,
    model: ModelLike = None,
    options: Optional[DenoiseOptions] = None,
    *,
    spacing: Optional[tuple[float, float]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> np.ndarray:
    """Denoise HU voxels ``[z, y, x]`` or ``[y, x]`` stored in the model's orientation (axial, ``LPS``).

    Arrays carry no geometry: use :func:`denoise_volume` for volumes stored in any orientation, or
    give the (row, column) pixel ``spacing`` in mm (see :meth:`Denoiser.array`).

    Examples:
        >>> import numpy as np
        >>> from ctdenoise import denoise_array, read_volume
        >>> hu = read_volume("../data/totalsegmentator/example_ct_dicom").array[:2]
        >>> out = denoise_array(hu)
        >>> out.shape, out.dtype
        ((2, 512, 512), dtype('float32'))
    """
    return Denoiser(model, options).array(hu, spacing=spacing, progress=progress, cancel=cancel)


def denoise_volume(
    volume: Volume,
    model: ModelLike = None,
    options: Optional[DenoiseOptions] = None,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> DenoiseResult:
    """Denoise a :class:`~ctdenoise.io.Volume`, stored in any orientation; returns a :class:`DenoiseResult`.

    Examples:
        >>> from ctdenoise import DenoiseOptions, denoise_volume, read_volume
        >>> volume = read_volume("../data/totalsegmentator/example_ct_sm.nii.gz")
        >>> result = denoise_volume(volume, options=DenoiseOptions(strength=0.8))
        >>> result.volume.spacing == volume.spacing, result.noise().shape == volume.shape
        (True, True)
    """
    return Denoiser(model, options).volume(volume, progress=progress, cancel=cancel)


def denoise_file(
    input_path: PathLike,
    output_path: PathLike,
    model: ModelLike = None,
    options: Optional[DenoiseOptions] = None,
    *,
    noise_output: Optional[PathLike] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> dict[str, Any]:
    """Read, denoise and write one CT volume (see :meth:`Denoiser.file`); returns a JSON-ready summary.

    Examples:
        >>> import tempfile, pathlib
        >>> from ctdenoise import denoise_file
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "denoised.nii.gz"
        >>> summary = denoise_file("../data/totalsegmentator/example_ct_sm.nii.gz", out)
        >>> summary["output"] == str(out.absolute()), summary["model"]["preset"]
        (True, 'fast')
    """
    return Denoiser(model, options).file(
        input_path, output_path, noise_output=noise_output, progress=progress, cancel=cancel
    )


# ------------------------------------------------------------------------------------ outputs


def series_description(volume: Volume, what: str, model: dict[str, Any], strength: float) -> str:
    """``"<original> <what> (ctdenoise <preset>, strength s)"``, within DICOM's 64 characters."""
    suffix = f" {what} (ctdenoise {model['preset']}, strength {strength:g})"
    original = str(volume.metadata.get("series_description") or "CT")
    return original[: max(0, DICOM_LO_LENGTH - len(suffix))].rstrip() + suffix


def _remove(entries: list[Path]) -> None:
    """Delete files and folders that this run wrote."""
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _write_outputs(result: DenoiseResult, output: Path, noise_out: Optional[Path]) -> tuple[Path, Optional[Path]]:
    """Write the removed noise (if asked) and then the denoised volume; on failure leave neither.

    Undoing the noise output removes exactly the paths its write put in place (see ``created`` in
    :func:`~ctdenoise.io.write_volume`): a noise folder that existed empty is left empty.
    """
    from ctdenoise.io import write_volume

    source, strength = result.source, result.options.strength
    written_noise = None
    noise_paths: list[Path] = []
    if noise_out is not None:
        description = series_description(source, "removed noise", result.model, strength)
        written_noise = write_volume(
            result.noise(), noise_out, reference=source, series_description=description, created=noise_paths
        )
    try:
        description = series_description(source, "denoised", result.model, strength)
        written = write_volume(result.volume, output, reference=source, series_description=description)
    except BaseException:
        _remove(noise_paths)
        raise
    return written, written_noise
