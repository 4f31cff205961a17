"""What can run the network, asked of the engine in a child process (Slicer's own process stays torch-free)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Optional

DESCRIBE = "import json, ctdenoise; print(json.dumps(ctdenoise.describe_devices()))"
TIMEOUT_S = 120


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device menu: ``id`` goes to ``--device``; ``label`` is shown."""

    id: str
    label: str


@dataclass
class DeviceReport:
    """The device menu and what the user should know about it (e.g. a GPU PyTorch cannot use)."""

    choices: list[DeviceChoice] = field(default_factory=list)
    torch_version: Optional[str] = None
    notes: list[str] = field(default_factory=list)


def report_from(found: dict) -> DeviceReport:
    """The menu for ``ctdenoise.describe_devices()``'s answer: automatic first, then each device."""
    devices = found.get("devices") or []
    gpus = [d for d in devices if d.get("id") != "cpu"]
    auto = f"auto ({gpus[0]['id']})" if gpus else "auto (CPU)"
    choices = [DeviceChoice("auto", auto)]
    for device in devices:
        memory = f", {device['memory_gb']:g} GB" if device.get("memory_gb") else ""
        name = device.get("name") or device["id"]
        choices.append(DeviceChoice(str(device["id"]), f"{device['id']}: {name}{memory}"))
    notes = list(found.get("notes") or [])
    if found.get("torch") is None and not notes:
        notes.append("GPU denoising needs PyTorch: choose a GPU device to install it through the PyTorch extension")
    return DeviceReport(choices, found.get("torch"), notes)


def describe(
    command: list[str], environment: dict[str, str], run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> DeviceReport:
    """Run ``command`` (``python -c DESCRIBE``) and read its report; a failure is a CPU-only menu with the reason."""
    try:
        done = run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=environment)
        found = (
            json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None
        )
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
        done, found = None, None
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1] if found is None else ""
    if found is None:
        report = report_from({"devices": [{"id": "cpu", "name": "CPU"}]})
        report.notes.insert(0, f"could not list devices ({reason}); the CPU is always available")
        return report
    return report_from(found)
