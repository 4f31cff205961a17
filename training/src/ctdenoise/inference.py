"""Whole-volume denoising: run the low-to-full-dose generator slice by slice over a CT volume.

The generator works on axial slices in network units. :func:`denoise_array` feeds it batches of
slices ``[B, 1, H, W]`` and turns its output back into HU with a *residual* formulation, so that
voxels the normalisation clips (padding at -3024 HU, metal) keep their value; see its docstring.
It picks a batch size per device, backs off on out-of-memory errors (halving the batch, then
switching to MONAI sliding-window tiles), reports progress and can be cancelled between batches.
:func:`denoise_volume` and :func:`denoise_file` wrap it for :class:`~ctdenoise.io.volume.Volume`
objects and for files on disk.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import numbers
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from ctdenoise.checkpoints import ModelCheckpoint, load_checkpoint
from ctdenoise.errors import CTDenoiseError
from ctdenoise.io import Volume, read_volume, validate_output_path, write_volume

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "ctdenoise_fast_v1.safetensors"
DEFAULT_TILE = 256
"""Sliding-window tile side when the checkpoint does not name its training patch size."""
MIN_TILE = 32
"""Smallest tile the out-of-memory fallback shrinks to before giving up."""
TILE_OVERLAP = 0.25
MAX_AUTO_BATCH = 64
GPU_MEMORY_SHARE = 0.7
"""Share of the free GPU memory the automatic batch size plans to use."""
DICOM_LO_LENGTH = 64
"""Longest SeriesDescription DICOM allows."""

PathLike = Union[str, Path]
DeviceLike = Union[str, torch.device, None]


class DenoiseCancelled(CTDenoiseError):
    """The caller's ``cancel()`` returned True: denoising stopped and nothing was returned or written."""


@dataclass(frozen=True)
class ProgressInfo:
    """Progress of one denoising run, reported after each batch of slices.

    Attributes:
        fraction: slices done / slices total, in [0, 1].
        slices_done: slices finished so far.
        slices_total: slices in the volume.
        elapsed_s: seconds since the run started.
        eta_s: estimated seconds left, from the mean speed so far.
        device: the torch device, e.g. ``"cuda:0"`` or ``"cpu"``.
        batch_size: network inputs per forward pass at this point (slices, or tiles when tiling).
    """

    fraction: float
    slices_done: int
    slices_total: int
    elapsed_s: float
    eta_s: float
    device: str
    batch_size: int

    def to_json(self) -> str:
        """One line of JSON (for ``--progress json``)."""
        data = asdict(self)
        for key in ("fraction", "elapsed_s", "eta_s"):
            data[key] = round(data[key], 4)
        return json.dumps({"event": "progress", **data}, sort_keys=True)


def select_device(requested: DeviceLike = None) -> torch.device:
    """Resolve a device request: ``None``/``"auto"`` picks CUDA, then Apple MPS, then the CPU.

    Explicit ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"`` are honoured or refused with a
    :class:`CTDenoiseError` that says how to fix the request.
    """
    name = "auto" if requested is None else str(requested).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CTDenoiseError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CTDenoiseError(
                f"device {name!r} requested but CUDA is not available to this PyTorch ({torch.__version__}): "
                "use --device cpu (or auto), or install a CUDA build of PyTorch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CTDenoiseError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist: "
                f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps":
        if not _mps_available():
            raise CTDenoiseError("device 'mps' requested but Apple MPS is not available here: use --device cpu or auto")
        return device
    raise CTDenoiseError(f"device type {device.type!r} is not supported: use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    """Whether Apple's Metal backend can be used."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# --------------------------------------------------------------------------------------------
# The model call and its memory handling


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the generator on ``x`` ``[B, 1, H, W]``; every model call goes through here.

    Kept as a module-level function so tests can replace it (e.g. to simulate out-of-memory).
    """
    return model(x)


def _residual(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The generator's change ``model(x) - x`` in network units, as float32."""
    return _forward(model, x).float() - x.float()


def _is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocator failure (CUDA, MPS or CPU) rather than a bug."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _release_memory(device: torch.device) -> None:
    """Return cached allocator blocks after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _prepare_model(generator: nn.Module, device: torch.device) -> nn.Module:
    """The generator in eval mode on ``device`` (a copy off the CPU; channels-last on CUDA)."""
    if device.type == "cpu":
        return generator.eval()
    model = copy.deepcopy(generator).eval()
    if device.type == "cuda":
        return model.to(device=device, memory_format=torch.channels_last)
    return model.to(device)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 (or fp16 where bf16 is unsupported) autocast on CUDA when ``amp``; otherwise nothing."""
    if not (amp and device.type == "cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _initial_batch_size(device: torch.device) -> int:
    """Starting batch when none is given: 1 on CPU (best cancel latency, batching gains nothing
    there), 4 on MPS, and 1 on CUDA where the first batch measures the memory one slice needs."""
    return 4 if device.type == "mps" else 1


def _cuda_batch_from_probe(device: torch.device, peak_bytes: int, slices_total: int) -> int:
    """Batch size that fits ``GPU_MEMORY_SHARE`` of the available memory, given one slice's peak."""
    free, _ = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    fits = int(GPU_MEMORY_SHARE * available // max(peak_bytes, 1))
    return max(1, min(fits, MAX_AUTO_BATCH, slices_total))


def _tile_size(checkpoint: ModelCheckpoint, max_slice_pixels: Optional[int]) -> int:
    """Sliding-window tile side: twice the training patch (or 256), shrunk to fit ``max_slice_pixels``."""
    patch = checkpoint.metadata.get("patch_size")
    tile = 2 * int(patch) if patch else DEFAULT_TILE
    if max_slice_pixels is not None:
        tile = min(tile, max(16, math.isqrt(max_slice_pixels) // 16 * 16))
    return tile


def _tiled_residual(model: nn.Module, x: torch.Tensor, tile: int, tiles_per_batch: int) -> torch.Tensor:
    """``model(x) - x`` computed on overlapping tiles blended with a Gaussian window (MONAI)."""
    from monai.inferers import sliding_window_inference

    roi = (min(tile, x.shape[-2]), min(tile, x.shape[-1]))
    return sliding_window_inference(
        x,
        roi_size=roi,
        sw_batch_size=tiles_per_batch,
        predictor=lambda tiles: _residual(model, tiles),
        overlap=TILE_OVERLAP,
        mode="gaussian",
    )


# --------------------------------------------------------------------------------------------
# Whole arrays


def _check_array(hu: np.ndarray, strength: float) -> None:
    """Refuse arrays and options the engine cannot denoise."""
    if not isinstance(hu, np.ndarray) or hu.dtype.kind not in "iuf":
        kind = hu.dtype if isinstance(hu, np.ndarray) else type(hu).__name__
        raise CTDenoiseError(f"cannot denoise data of type {kind}: pass a real-valued numpy array of HU")
    if hu.ndim not in (2, 3) or hu.size == 0:
        raise CTDenoiseError(f"cannot denoise an array of shape {hu.shape}: pass [z, y, x] or [y, x] HU voxels")
    if isinstance(strength, bool) or not (isinstance(strength, numbers.Real) and 0.0 <= float(strength) <= 1.0):
        raise CTDenoiseError(f"strength must be a number between 0 and 1, got {strength!r}")
    if hu.dtype.kind == "f" and not np.isfinite(hu).all():
        bad = int(np.count_nonzero(~np.isfinite(hu)))
        raise CTDenoiseError(f"the input has {bad} NaN or infinite voxels: fix or mask them before denoising")


def _check_positive(name: str, value: Optional[int]) -> None:
    """Refuse an option that is neither None nor a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise CTDenoiseError(f"{name} must be a positive integer, got {value!r}")


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 HU for float inputs; rounded and clipped to the range of an integer ``dtype``."""
    if dtype.kind == "f":
        return values
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def denoise_array(
    hu: np.ndarray,
    checkpoint: ModelCheckpoint,
    *,
    device: DeviceLike = None,
    batch_size: Optional[int] = None,
    strength: float = 1.0,
    progress: Optional[Callable[[ProgressInfo], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
    amp: bool = True,
    max_slice_pixels: Optional[int] = None,
) -> np.ndarray:
    """Denoise HU voxels ``[z, y, x]`` (or one slice ``[y, x]``) slice by slice.

    The network sees ``x = norm(hu)``, which clips HU to the checkpoint's ``[hu_min, hu_max]``.
    Its output is used only as a change: ``out = hu + (denorm(model(x)) - denorm(x))``. Inside the
    range this equals ``denorm(model(x))``; outside it (padding at -3024 HU, metal) the voxel keeps
    its own HU plus the network's change, instead of snapping to the clip bound. ``strength``
    scales that change: ``out = hu + strength * (denoised - hu)``.

    Args:
        hu: HU voxels of any real dtype, all finite.
        checkpoint: the model (from :func:`~ctdenoise.checkpoints.load_checkpoint`).
        device: see :func:`select_device`; ``None`` means auto.
        batch_size: slices per forward pass; ``None`` picks one per device (on CUDA, from the
            free memory after the first slice). Out-of-memory errors halve it and retry; at 1 the
            slices are processed as overlapping tiles (MONAI sliding window, Gaussian blending).
        strength: 0 returns the input's values unchanged (a copy, in the output dtype below), 1 the
            full denoising.
        progress: called with a :class:`ProgressInfo` after each batch.
        cancel: polled before each batch; returning True raises :class:`DenoiseCancelled`.
        amp: bf16/fp16 autocast on CUDA.
        max_slice_pixels: slices with more pixels than this are always tiled.

    Returns:
        float32 HU for float input (whatever its precision, strength 0 included); for integer input
        the same integer dtype in native byte order, rounded and clipped to its range. Same shape as
        ``hu``.
    """
    _check_array(hu, strength)
    _check_positive("batch size", batch_size)
    _check_positive("max_slice_pixels", max_slice_pixels)
    target = select_device(device)
    dtype = np.dtype(np.float32) if hu.dtype.kind == "f" else hu.dtype.newbyteorder("=")
    if float(strength) == 0.0:
        return hu.astype(dtype)
    slices = hu[None] if hu.ndim == 2 else hu
    out = np.empty(slices.shape, dtype=dtype)
    run = _SliceRun(checkpoint, target, batch_size, amp, max_slice_pixels, slices.shape)
    for start, stop, residual in run.batches(slices, cancel, progress):
        chunk = slices[start:stop].astype(np.float32)
        out[start:stop] = _cast_like(chunk + np.float32(strength) * residual, out.dtype)
    return out.reshape(hu.shape)


class _SliceRun:
    """One pass over a stack of slices: batching, out-of-memory back-off, tiling and progress."""

    def __init__(
        self,
        checkpoint: ModelCheckpoint,
        device: torch.device,
        batch_size: Optional[int],
        amp: bool,
        max_slice_pixels: Optional[int],
        shape: tuple[int, ...],
    ) -> None:
        self.device = device
        self.normalization = checkpoint.normalization
        self.model = _prepare_model(checkpoint.generator, device)
        self.amp = amp
        self.probe = batch_size is None and device.type == "cuda"
        self.batch = int(batch_size) if batch_size else _initial_batch_size(device)
        self.tile = _tile_size(checkpoint, max_slice_pixels)
        self.tiled = max_slice_pixels is not None and shape[1] * shape[2] > max_slice_pixels
        self.total = shape[0]

    def batches(
        self,
        slices: np.ndarray,
        cancel: Optional[Callable[[], bool]],
        progress: Optional[Callable[[ProgressInfo], None]],
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, residual_hu)`` for consecutive slice ranges until all are done."""
        started = time.perf_counter()
        done = 0
        while done < self.total:
            if cancel is not None and cancel():
                raise DenoiseCancelled("denoising cancelled: no output was written")
            stop = min(done + (1 if self.tiled else self.batch), self.total)
            residual = self._attempt(slices[done:stop])
            if residual is None:
                continue
            yield done, stop, residual
            done = stop
            if progress is not None:
                progress(self._info(done, time.perf_counter() - started))

    def _info(self, done: int, elapsed: float) -> ProgressInfo:
        """Progress after ``done`` slices."""
        eta = elapsed / done * (self.total - done)
        return ProgressInfo(done / self.total, done, self.total, elapsed, eta, str(self.device), self.batch)

    def _attempt(self, chunk: np.ndarray) -> Optional[np.ndarray]:
        """The HU residual of ``chunk``, or None after an out-of-memory error (settings adjusted)."""
        probing = self.probe and not self.tiled
        if probing:
            torch.cuda.reset_peak_memory_stats(self.device)
            baseline = torch.cuda.memory_allocated(self.device)
        try:
            residual = self._residual_hu(chunk)
        except RuntimeError as exc:
            if not _is_out_of_memory(exc):
                raise
        else:
            if probing:
                peak = torch.cuda.max_memory_allocated(self.device) - baseline
                self.batch = _cuda_batch_from_probe(self.device, peak // len(chunk), self.total)
                self.probe = False
                logger.info("batch size %d on %s (one slice peaks at %.0f MiB)", self.batch, self.device, peak / 2**20)
            return residual
        self._back_off(self.batch if self.tiled else len(chunk))  # outside the except: frees the failed tensors
        return None

    def _back_off(self, attempted: int) -> None:
        """Shrink the work per forward pass after an out-of-memory error, or give up."""
        _release_memory(self.device)
        self.probe = False
        if self.batch > 1:
            self.batch = max(1, min(self.batch, attempted) // 2)
            logger.warning("out of memory on %s: retrying with batch size %d", self.device, self.batch)
        elif not self.tiled:
            self.tiled = True
            logger.warning("out of memory on %s for one slice: switching to %d-pixel tiles", self.device, self.tile)
        elif self.tile > MIN_TILE:
            self.tile //= 2
            logger.warning("out of memory on %s: retrying with %d-pixel tiles", self.device, self.tile)
        else:
            raise CTDenoiseError(
                f"out of memory on {self.device} even for {self.tile}-pixel tiles: use --device cpu or free memory"
            )

    def _residual_hu(self, chunk: np.ndarray) -> np.ndarray:
        """``denorm(model(x)) - denorm(x)`` in HU for a chunk of slices ``[n, H, W]``."""
        with torch.inference_mode():
            hu = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(self.device)
            x = self.normalization.normalize(hu[:, None])
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(self.device, self.amp):
                if self.tiled:
                    change = _tiled_residual(self.model, x, self.tile, self.batch)
                else:
                    change = _residual(self.model, x)
            return (change[:, 0].float() * self.normalization.scale).cpu().numpy()


# --------------------------------------------------------------------------------------------
# Volumes and files


def checkpoint_summary(checkpoint: ModelCheckpoint) -> dict[str, Any]:
    """The facts about a model that are recorded with its outputs."""
    meta = checkpoint.metadata
    return {
        "file": checkpoint.path.name,
        "preset": checkpoint.preset,
        "created": meta.get("created"),
        "package_version": meta.get("package_version"),
        "source": meta.get("source"),
        "normalization": checkpoint.normalization.to_dict(),
    }


def denoise_volume(volume: Volume, checkpoint: ModelCheckpoint, **options: Any) -> Volume:
    """Denoise a :class:`Volume`; geometry and metadata are kept.

    ``options`` are those of :func:`denoise_array`. The result's metadata gains
    ``denoised_with`` (:func:`checkpoint_summary`) and ``strength``.
    """
    array = denoise_array(volume.array, checkpoint, **options)
    strength = float(options.get("strength", 1.0))
    return volume.with_array(array, denoised_with=checkpoint_summary(checkpoint), strength=strength)


def bundled_model_path() -> Path:
    """Path of the model shipped inside the package (``ctdenoise/models/``)."""
    path = Path(__file__).resolve().parent / "models" / BUNDLED_MODEL_NAME
    if not path.is_file():
        raise CTDenoiseError(f"no bundled model found at {path}: pass --checkpoint")
    return path


def series_description(volume: Volume, what: str, checkpoint: ModelCheckpoint, strength: float) -> str:
    """``"<original> <what> (ctdenoise <preset>, strength s)"``, within DICOM's 64 characters."""
    suffix = f" {what} (ctdenoise {checkpoint.preset}, strength {strength:g})"
    original = str(volume.metadata.get("series_description") or "CT")
    return original[: max(0, DICOM_LO_LENGTH - len(suffix))].rstrip() + suffix


def _same_or_nested(a: Path, b: Path) -> bool:
    """Whether two resolved paths are equal or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def _check_paths(source: Path, output: Path, noise_out: Optional[Path]) -> None:
    """Refuse outputs that would overwrite the input or each other, and invalid output paths."""
    if output.resolve() == source.resolve():
        raise CTDenoiseError(f"output {output} is the input: choose a different output path")
    validate_output_path(output)
    if noise_out is None:
        return
    if noise_out.resolve() == source.resolve():
        raise CTDenoiseError(f"noise output {noise_out} is the input: choose a different path")
    if _same_or_nested(noise_out.resolve(), output.resolve()):
        raise CTDenoiseError(f"noise output {noise_out} collides with the output {output}: choose separate paths")
    validate_output_path(noise_out)


def _remove(entries: list[Path]) -> None:
    """Delete files and folders that this run wrote."""
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _write_outputs(
    source: Volume,
    denoised: Volume,
    output: Path,
    noise_out: Optional[Path],
    checkpoint: ModelCheckpoint,
    strength: float,
) -> tuple[Path, Optional[Path]]:
    """Write the removed noise (if asked) and then the denoised volume; on failure leave neither.

    Undoing the noise output removes exactly the paths its write put in place (see ``created`` in
    :func:`~ctdenoise.io.write_volume`): a noise folder that existed empty is left empty.
    """
    written_noise = None
    noise_paths: list[Path] = []
    if noise_out is not None:
        noise = source.with_array((source.array - denoised.array).astype(np.float32))
        description = series_description(source, "removed noise", checkpoint, strength)
        written_noise = write_volume(
            noise, noise_out, reference=source, series_description=description, created=noise_paths
        )
    try:
        description = series_description(source, "denoised", checkpoint, strength)
        written = write_volume(denoised, output, reference=source, series_description=description)
    except BaseException:
        _remove(noise_paths)
        raise
    return written, written_noise


def denoise_file(
    input_path: PathLike,
    output_path: PathLike,
    checkpoint: Union[PathLike, ModelCheckpoint],
    *,
    noise_out: Optional[PathLike] = None,
    device: DeviceLike = None,
    batch_size: Optional[int] = None,
    strength: float = 1.0,
    progress: Optional[Callable[[ProgressInfo], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> dict[str, Any]:
    """Read a CT volume, denoise it and write the result (and optionally the removed noise).

    Everything that can be checked is checked before the long computation: the paths (the output
    may not be the input; unknown extensions and non-empty DICOM folders are refused), the
    checkpoint, the device and the input. The format of each output follows its path (see
    :func:`~ctdenoise.io.write_volume`); DICOM outputs copy the input's headers with a new series
    described as ``"<original> denoised (ctdenoise <preset>, strength s)"``. ``noise_out`` receives
    input minus output. On an error or a cancel nothing is left at either output path.

    Returns:
        A summary: ``input``, ``output``, ``noise_output`` (or None), ``slices``, ``shape``,
        ``seconds``, ``device``, ``strength`` and ``model`` (:func:`checkpoint_summary`).
    """
    started = time.perf_counter()
    source_path, output, noise = Path(input_path), Path(output_path), None if noise_out is None else Path(noise_out)
    _check_paths(source_path, output, noise)
    model = checkpoint if isinstance(checkpoint, ModelCheckpoint) else load_checkpoint(checkpoint)
    target = select_device(device)
    source = read_volume(source_path)
    validate_output_path(output, source)
    if noise is not None:
        validate_output_path(noise, source)
    denoised = denoise_volume(
        source, model, device=target, batch_size=batch_size, strength=strength, progress=progress, cancel=cancel
    )
    if cancel is not None and cancel():
        raise DenoiseCancelled("denoising cancelled: no output was written")
    written, written_noise = _write_outputs(source, denoised, output, noise, model, float(strength))
    return {
        "input": str(source_path),
        "output": str(written),
        "noise_output": None if written_noise is None else str(written_noise),
        "slices": source.shape[0],
        "shape": list(source.shape),
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(target),
        "strength": float(strength),
        "model": checkpoint_summary(model),
    }
