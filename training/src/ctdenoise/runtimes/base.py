"""The interface every inference runtime implements."""

from __future__ import annotations

from typing import Callable, Optional, Protocol

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


VIEWS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
"""Test-time augmentation views as (quarter turns, left-right mirror first): the first 2, 4 or 8 form
a group (the identity and the mirror; both mirrors; all mirrors and rotations of a square)."""


def averaged_change(
    change: Callable[[np.ndarray], Optional[np.ndarray]], x: np.ndarray, copies: int, multiple: int
) -> Optional[np.ndarray]:
    """``change`` (a runtime's :meth:`Runtime.change`) for normalised slices ``x`` ``[n, 1, H, W]``,
    averaged over the first ``copies`` :data:`VIEWS`.

    Each view is mirrored and/or turned, padded to the network's size multiple, run, cropped and
    turned back. None when ``change`` returns None (out of memory: the caller retries).
    """
    total = np.zeros((x.shape[0], x.shape[2], x.shape[3]), dtype=np.float32)
    for turns, mirror in VIEWS[:copies]:
        view = np.rot90(x[..., ::-1] if mirror else x, turns, axes=(2, 3))
        result = change(pad_to_multiple(np.ascontiguousarray(view), multiple))
        if result is None:
            return None
        back = np.rot90(result[:, : view.shape[2], : view.shape[3]], -turns, axes=(1, 2))
        total += back[..., ::-1] if mirror else back
    if copies > 1:
        total /= np.float32(copies)
    return total
