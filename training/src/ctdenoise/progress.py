"""Progress reports of long engine calls, as objects and as JSON lines for other processes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressInfo:
    """Progress of one denoising run, reported after each batch of slices.

    Attributes:
        fraction: slices done / slices total, in [0, 1].
        slices_done: slices finished so far.
        slices_total: slices in the volume.
        elapsed_s: seconds since the run started.
        eta_s: estimated seconds left, from the mean speed so far.
        device: where the network runs, e.g. ``"cuda:0"`` or ``"cpu"``.
        batch_size: network inputs per forward pass at this point (slices, or tiles when tiling).
        runtime: the inference runtime, e.g. ``"torch"`` or ``"onnxruntime"``.

    Examples:
        >>> ProgressInfo(0.5, 10, 20, 4.0, 4.0, "cpu", 1, "torch").to_json()[:40]
        '{"batch_size": 1, "device": "cpu", "elap'
    """

    fraction: float
    slices_done: int
    slices_total: int
    elapsed_s: float
    eta_s: float
    device: str
    batch_size: int
    runtime: str = "torch"

    def to_json(self) -> str:
        """One line of JSON (``--progress json``): ``{"event": "progress", ...}``."""
        data = asdict(self)
        for key in ("fraction", "elapsed_s", "eta_s"):
            data[key] = round(data[key], 4)
        return json.dumps({"event": "progress", **data}, sort_keys=True)


def event_json(event: str, **fields: Any) -> str:
    """One JSON line ``{"event": event, ...fields}`` (warnings, the final summary)."""
    return json.dumps({"event": event, **fields}, sort_keys=True, default=str)
