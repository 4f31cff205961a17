"""The PyTorch runtime: CPU, CUDA (bf16/fp16 autocast, channels-last) and Apple MPS.

It picks a batch size per device (on CUDA from the memory the first slice needs), backs off on
out-of-memory errors (halving the batch, then switching to MONAI sliding-window tiles, then
smaller tiles) and can run tiles from the start (``tile_size``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Optional

import numpy as np
import torch
from torch import nn

from ctdenoise.checkpoints import ModelCheckpoint
from ctdenoise.devices import resolve_device
from ctdenoise.errors import CTDenoiseError
from ctdenoise.options import MIN_TILE, DenoiseOptions

logger = logging.getLogger(__name__)

DEFAULT_TILE = 256
"""Tile side after an out-of-memory error when the model does not name its training patch size."""
TILE_OVERLAP = 0.25
MAX_AUTO_BATCH = 64
GPU_MEMORY_SHARE = 0.7
"""Share of the free GPU memory the automatic batch size plans to use."""


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the generator on ``x`` ``[B, 1, H, W]``; every model call goes through here (tests replace it)."""
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


def _precision(requested: str, device: torch.device) -> str:
    """The precision this runtime uses for ``requested`` on ``device``."""
    if requested == "int8":
        raise CTDenoiseError("precision int8 runs on ONNX Runtime only: use --runtime onnxruntime, or --precision fp32")
    if requested in ("bf16", "fp16") and device.type != "cuda":
        raise CTDenoiseError(
            f"precision {requested} needs a CUDA GPU on the torch runtime: use --precision fp32 (or auto)"
        )
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise CTDenoiseError("this GPU has no bf16 support: use --precision fp16 or fp32")
    return requested


class TorchRuntime:
    """A :class:`~ctdenoise.checkpoints.ModelCheckpoint` generator on a PyTorch device."""

    name = "torch"

    def __init__(self, checkpoint: ModelCheckpoint, options: DenoiseOptions) -> None:
        self.torch_device = resolve_device(options.device)
        self.device = str(self.torch_device)
        self.precision = _precision(options.precision, self.torch_device)
        self.model = self._prepare(checkpoint.generator)
        self.probe = options.batch_size is None and self.torch_device.type == "cuda"
        self.batch = options.batch_size or (4 if self.torch_device.type == "mps" else 1)
        patch = checkpoint.metadata.get("patch_size")
        self.tile = options.tile_size or (2 * int(patch) if patch else DEFAULT_TILE)
        self.tiled = options.tile_size is not None

    @property
    def batch_size(self) -> int:
        """Slices per call: one at a time while tiling (tiles are batched instead)."""
        return 1 if self.tiled else self.batch

    def _prepare(self, generator: nn.Module) -> nn.Module:
        """The generator in eval mode on the device (a copy off the CPU; channels-last on CUDA)."""
        if self.torch_device.type == "cpu":
            return generator.eval()
        model = copy.deepcopy(generator).eval()
        if self.torch_device.type == "cuda":
            return model.to(device=self.torch_device, memory_format=torch.channels_last)
        return model.to(self.torch_device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def change(self, x: np.ndarray) -> Optional[np.ndarray]:
        """``model(x) - x`` for normalised slices; None after an out-of-memory error (settings adjusted)."""
        probing = self.probe and not self.tiled
        if probing:
            torch.cuda.reset_peak_memory_stats(self.torch_device)
            baseline = torch.cuda.memory_allocated(self.torch_device)
        try:
            result = self._change(x)
        except RuntimeError as exc:
            if not _is_out_of_memory(exc):
                raise
        else:
            if probing:
                peak = torch.cuda.max_memory_allocated(self.torch_device) - baseline
                self.batch = self._batch_from_probe(peak // len(x))
                self.probe = False
                logger.info("batch size %d on %s (one slice peaks at %.0f MiB)", self.batch, self.device, peak / 2**20)
            return result
        self._back_off(self.batch if self.tiled else len(x))  # outside the except: frees the failed tensors
        return None

    def _change(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device)
            if self.torch_device.type == "cuda":
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                change = self._tiled(tensor) if self.tiled else _residual(self.model, tensor)
            return change[:, 0].float().cpu().numpy()

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x) - x`` on overlapping tiles blended with a Gaussian window (MONAI)."""
        from monai.inferers import sliding_window_inference

        roi = (min(self.tile, x.shape[-2]), min(self.tile, x.shape[-1]))
        return sliding_window_inference(
            x,
            roi_size=roi,
            sw_batch_size=self.batch,
            predictor=lambda tiles: _residual(self.model, tiles),
            overlap=TILE_OVERLAP,
            mode="gaussian",
        )

    def _batch_from_probe(self, peak_bytes: int) -> int:
        """Batch size that fits ``GPU_MEMORY_SHARE`` of the available memory, given one slice's peak."""
        free, _ = torch.cuda.mem_get_info(self.torch_device)
        available = (
            free + torch.cuda.memory_reserved(self.torch_device) - torch.cuda.memory_allocated(self.torch_device)
        )
        return max(1, min(int(GPU_MEMORY_SHARE * available // max(peak_bytes, 1)), MAX_AUTO_BATCH))

    def _back_off(self, attempted: int) -> None:
        """Shrink the work per forward pass after an out-of-memory error, or give up."""
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.torch_device.type == "mps":
            torch.mps.empty_cache()
        self.probe = False
        if self.batch > 1:
            self.batch = max(1, min(self.batch, attempted) // 2)
            logger.warning("out of memory on %s: retrying with batch size %d", self.device, self.batch)
        elif not self.tiled:
            self.tiled = True
            logger.warning("out of memory on %s for one slice: switching to %d-pixel tiles", self.device, self.tile)
        elif self.tile > MIN_TILE:
            self.tile = max(MIN_TILE, self.tile // 2)
            logger.warning("out of memory on %s: retrying with %d-pixel tiles", self.device, self.tile)
        else:
            raise CTDenoiseError(
                f"out of memory on {self.device} even for {self.tile}-pixel tiles: use --device cpu or free memory"
            )
