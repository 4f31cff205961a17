"""The one device resolver of the engine (denoising, simulation and training) and device discovery.

Only :func:`resolve_device` and :func:`describe_devices` import PyTorch; :func:`torch_available`,
:func:`nvidia_driver_present` and :func:`torchrun_rank` answer without it, so a CPU-only install
can decide quickly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any, Sequence

from ctdenoise.errors import CTDenoiseError

if TYPE_CHECKING:
    import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")
CUDA_FIX = (
    "install a CUDA build of PyTorch (in 3D Slicer: the PyTorch extension's installer; elsewhere "
    "'pip install ctdenoise[torch]' with the CUDA wheel from pytorch.org)"
)


def torch_available() -> bool:
    """Whether PyTorch is installed (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (a GPU that CUDA PyTorch could use), without PyTorch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("-1", ""):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def apple_gpu_likely() -> bool:
    """Whether this is an Apple-silicon Mac, where PyTorch's MPS backend usually works."""
    import platform

    return sys.platform == "darwin" and platform.machine() == "arm64"


def torchrun_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment ``torchrun`` sets; ``(0, 1, 0)`` outside it.

    Examples:
        >>> torchrun_rank()  # a plain process, not started by torchrun
        (0, 1, 0)
    """
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name, "").strip()
        try:
            values.append(int(text) if text else default)
        except ValueError:
            raise CTDenoiseError(
                f"{name}={text!r} in the environment is not an integer: launch with torchrun or unset it"
            ) from None
    return values[0], values[1], values[2]


def resolve_device(
    requested: Any = "auto", *, allowed: Sequence[str] = DEVICE_TYPES, purpose: str = "denoising"
) -> "torch.device":
    """A torch device for ``requested``: ``auto``/None picks CUDA, then MPS, then the CPU.

    Explicit ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are honoured or refused with one line that
    says how to fix the request. ``allowed`` limits the device types (the projector of the low-dose
    simulation runs on CPU and CUDA only).

    Examples:
        >>> resolve_device("cpu").type
        'cpu'
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        ctdenoise.errors.CTDenoiseError: unknown device 'tpu': use auto, cpu, cuda, cuda:N, mps
    """
    import torch

    names = ", ".join(["auto", *(("cuda, cuda:N" if t == "cuda" else t) for t in allowed)])
    name = "auto" if requested is None else str(requested).strip().lower()
    if name == "auto":
        if "cuda" in allowed and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if "mps" in allowed and _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CTDenoiseError(f"unknown device {requested!r}: use {names}") from None
    if device.type not in allowed:
        raise CTDenoiseError(f"device {name!r} is not supported for {purpose}: use {names}")
    if device.type == "cuda":
        return _cuda_device(device, name)
    if device.type == "mps" and not _mps_available():
        raise CTDenoiseError("device 'mps' requested but Apple MPS is not available here: use cpu or auto")
    return device


def _cuda_device(device: "torch.device", name: str) -> "torch.device":
    import torch

    if not torch.cuda.is_available():
        hint = (
            "this machine has an NVIDIA driver but this PyTorch has no CUDA support: "
            if nvidia_driver_present()
            else ""
        )
        raise CTDenoiseError(
            f"device {name!r} requested but CUDA is not available to PyTorch {torch.__version__}: {hint}"
            f"use cpu (or auto), or {CUDA_FIX}"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CTDenoiseError(
            f"device {name!r} requested but only {count} CUDA device(s) exist: use cuda:0 to cuda:{count - 1}"
        )
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe_devices() -> dict[str, Any]:
    """What can run the network here, for user interfaces.

    Returns ``{"devices": [{"id", "name", "memory_gb"}...], "torch": version or None, "notes": [...],
    "nvidia_driver": bool, "apple_gpu": bool}``; the CPU is always listed. A note says when an
    NVIDIA driver is present but PyTorch cannot use it, and how to fix that.

    Examples:
        >>> describe_devices()["devices"][0]["id"]
        'cpu'
    """
    import platform

    devices: list[dict[str, Any]] = [
        {"id": "cpu", "name": platform.processor() or platform.machine() or "CPU", "memory_gb": None}
    ]
    notes: list[str] = []
    version = None
    if torch_available():
        import torch

        version = torch.__version__
        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            props = torch.cuda.get_device_properties(index)
            devices.append(
                {"id": f"cuda:{index}", "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}
            )
        if _mps_available():
            devices.append({"id": "mps", "name": "Apple GPU (MPS)", "memory_gb": None})
        if nvidia_driver_present() and not torch.cuda.is_available():
            notes.append(f"an NVIDIA driver is present but PyTorch {version} has no CUDA support: {CUDA_FIX}")
    elif nvidia_driver_present():
        notes.append(f"an NVIDIA driver is present but PyTorch is not installed: {CUDA_FIX}")
    return {
        "devices": devices,
        "torch": version,
        "notes": notes,
        "nvidia_driver": nvidia_driver_present(),
        "apple_gpu": apple_gpu_likely(),
    }
