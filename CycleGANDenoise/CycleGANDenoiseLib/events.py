"""The lines a ``ctdenoise denoise --progress json`` child prints, as events the module shows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

KINDS = ("started", "progress", "warning", "done", "error", "log")


@dataclass(frozen=True)
class Event:
    """One line of the child's output.

    Attributes:
        kind: ``started`` (with ``pid``), ``progress``, ``warning`` (``message``), ``done`` (the
            run's summary), ``error`` (the engine's one-line error, without ``error:``) or ``log``.
        data: the JSON fields (for ``log`` and ``error``: ``{"text": line}``).
    """

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """What to show a user for this event."""
        if self.kind == "warning":
            return str(self.data.get("message", ""))
        if self.kind == "progress":
            return progress_text(self.data)
        return str(self.data.get("text", ""))


def parse_line(line: str) -> Event:
    """The event of one output line; lines that are not the engine's JSON are ``error`` or ``log``.

    ``warning: ...`` text lines are ``log``: in JSON mode the same warning also arrives as JSON.
    """
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return Event("log", {"text": text})
        if isinstance(data, dict) and data.get("event") in KINDS:
            return Event(str(data.pop("event")), data)
    if text.startswith("error: "):
        return Event("error", {"text": text[len("error: ") :]})
    return Event("log", {"text": text})


def progress_text(data: dict[str, Any]) -> str:
    """``"45% - 12 s left (8 of 20 slices, onnxruntime on cpu)"``."""
    percent = round(100 * float(data.get("fraction", 0.0)))
    left = format_seconds(float(data.get("eta_s", 0.0)))
    done, total = data.get("slices_done", 0), data.get("slices_total", 0)
    where = f"{data.get('runtime', '?')} on {data.get('device', '?')}"
    return f"{percent}% - {left} left ({done} of {total} slices, {where})"


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 5 s"``."""
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60} s"
