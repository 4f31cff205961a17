"""The interface every inference runtime implements."""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np


class Runtime(Protocol):
    """A generator opened on one runtime and device, ready to run batches of slices.

    Attributes:
        name: ``"torch"`` or ``"onnxruntime"``.
        device: where it runs, e.g. ``"cpu"`` or ``"cuda:0"``.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.
        batch_size: slices to pass to the next :meth:`change` call (it may shrink after out-of-memory).
    """

    name: str
    device: str
    precision: str
    batch_size: int

    def change(self, x: np.ndarray) -> Optional[np.ndarray]:
        """``model(x) - x`` in network units, float32 ``[n, H, W]``, for normalised slices ``x`` ``[n, 1, H, W]``.

        Returns None after an out-of-memory error once the runtime has adjusted its batch size or
        tiling: the caller retries the same slices.
        """
        ...


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` ``[n, 1, H, W]`` reflect-padded at the bottom and right to sides that are multiples of ``multiple``.

    Done here, not inside the network, so every runtime runs the same graph on the same input (an
    ONNX graph cannot carry the size-dependent padding reliably).
    """
    pad_h, pad_w = -x.shape[2] % multiple, -x.shape[3] % multiple
    if not (pad_h or pad_w):
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
