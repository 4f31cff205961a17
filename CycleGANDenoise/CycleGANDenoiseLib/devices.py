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
    installs_torch: bool = False


@dataclass
class DeviceReport:
    """The device menu and what the user should know about it (e.g. a GPU PyTorch cannot use)."""

    choices: list[DeviceChoice] = field(default_factory=list)
    torch_version: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_found(self) -> bool:
        """Whether PyTorch can use a GPU here (so ``auto`` runs on it)."""
        return any(c.id not in ("auto", "cpu") and not c.installs_torch for c in self.choices)


def report_from(found: dict) -> DeviceReport:
    """The menu for ``ctdenoise.describe_devices()``'s answer: automatic first, then each device.

    Without PyTorch, a GPU the machine has (an NVIDIA driver, an Apple-silicon Mac) is offered as a
    choice that installs PyTorch first, so the GPU path can be reached from the menu.
    """
    devices = found.get("devices") or []
    gpus = [d for d in devices if d.get("id") != "cpu"]
    choices = [DeviceChoice("auto", f"auto ({gpus[0]['id']})" if gpus else "auto (CPU)")]
    for device in devices:
        memory = f", {device['memory_gb']:g} GB" if device.get("memory_gb") else ""
        name = device.get("name") or device["id"]
        choices.append(DeviceChoice(str(device["id"]), f"{device['id']}: {name}{memory}"))
    notes = list(found.get("notes") or [])
    if found.get("torch") is None:
        if found.get("nvidia_driver"):
            choices.append(DeviceChoice("cuda", "cuda: NVIDIA GPU (installs PyTorch first)", installs_torch=True))
        if found.get("apple_gpu"):
            choices.append(DeviceChoice("mps", "mps: Apple GPU (installs PyTorch first)", installs_torch=True))
    return DeviceReport(choices, found.get("torch"), notes)


def parse_report(returncode: Optional[int], stdout: str, stderr: str) -> DeviceReport:
    """The report from a finished ``python -c DESCRIBE`` child; a failure is a CPU-only menu with the reason."""
    lines = [line for line in (stdout or "").splitlines() if line.startswith("{")]
    if returncode == 0 and lines:
        try:
            return report_from(json.loads(lines[-1]))
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    reason = ((stderr or "").strip().splitlines() or [f"exit status {returncode}"])[-1]
    report = report_from({"devices": [{"id": "cpu", "name": "CPU"}]})
    report.notes.insert(0, f"could not list devices ({reason}); the CPU is always available")
    return report


def describe(
    command: list[str], environment: dict[str, str], run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> DeviceReport:
    """Run ``command`` (``python -c DESCRIBE``) to the end and read its report (outside Slicer; Slicer polls instead)."""
    try:
        done = run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=environment)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return parse_report(None, "", f"{type(exc).__name__}: {exc}")
    return parse_report(done.returncode, done.stdout, done.stderr)
