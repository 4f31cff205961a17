"""What a run needs installed in Slicer's Python: a small runtime on the CPU, PyTorch only for a GPU.

Slicer bundles numpy, SimpleITK and pydicom; the module never replaces them. A CPU run needs only
ONNX Runtime (any of its builds). A GPU run needs PyTorch, installed through the PyTorch
extension's PyTorchUtils, and MONAI (tiles when a slice does not fit a small GPU). Nothing here
imports the packages it checks: an installed PyTorch is found from its metadata.
"""

from __future__ import annotations

import importlib.metadata
from typing import Iterable

CPU_REQUIREMENTS = ("onnxruntime>=1.17",)
GPU_REQUIREMENTS = ("monai>=1.3",)
TORCH_REQUIREMENT = ">=2.1"
"""PyTorch version for GPU runs (PyTorchUtils' ``torchVersionRequirement`` takes the operator and version)."""
NEVER_INSTALL = ("numpy", "simpleitk", "pydicom")
ALTERNATIVES = {"onnxruntime": ("onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")}
"""Other builds of a package that satisfy it (installing the plain one beside them would conflict)."""


def _split(requirement: str) -> tuple[str, str]:
    for operator in (">=", "=="):
        if operator in requirement:
            name, version = requirement.split(operator, 1)
            return name.strip(), operator + version.strip()
    return requirement.strip(), ""


def _satisfied(installed: str, specifier: str) -> bool:
    """Whether an installed version meets ``>=X`` / ``==X`` (the only forms listed here)."""
    if not specifier:
        return True
    from packaging.version import Version  # bundled with Slicer and with pip

    wanted = Version(specifier[2:])
    return Version(installed) >= wanted if specifier.startswith(">=") else Version(installed) == wanted


def installed_version(name: str) -> str | None:
    """The installed version of ``name`` or of one of its alternative builds, or None."""
    for candidate in (name, *ALTERNATIVES.get(name.lower(), ())):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def missing(requirements: Iterable[str]) -> list[str]:
    """The requirements not installed (or too old), found without importing the packages."""
    found = []
    for requirement in requirements:
        name, specifier = _split(requirement)
        if name.lower() in NEVER_INSTALL:
            raise ValueError(f"{name} comes with Slicer and is never installed by this module")
        version = installed_version(name)
        if version is None or not _satisfied(version, specifier):
            found.append(requirement)
    return found


def torch_installed() -> bool:
    """Whether PyTorch is installed (from its metadata: importing it would lock its files on Windows)."""
    return installed_version("torch") is not None


def needs_gpu(device: str, gpu_found: bool = False) -> bool:
    """Whether a run on ``device`` uses PyTorch: a GPU device, or ``auto`` where PyTorch found a GPU."""
    if device == "auto":
        return gpu_found
    return device != "cpu"
