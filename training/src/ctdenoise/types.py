"""Type aliases shared across the engine."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Union

if TYPE_CHECKING:
    from ctdenoise.progress import ProgressInfo

PathLike = Union[str, "os.PathLike[str]"]
"""A file-system path as a string or a path object."""

ProgressCallback = Callable[["ProgressInfo"], None]
"""Called with a :class:`~ctdenoise.progress.ProgressInfo` after each batch of slices."""

CancelCallback = Callable[[], bool]
"""Polled between batches; returning True stops the run (:class:`~ctdenoise.errors.DenoiseCancelled`)."""
