"""What a run needs installed in Slicer's Python: a small runtime on the CPU, PyTorch only for a GPU.

Slicer bundles numpy, SimpleITK and pydicom; the module never replaces them. A CPU run needs only
ONNX Runtime. A GPU run needs PyTorch (installed through the PyTorch extension's PyTorchUtils),
plus safetensors (to read weights) and MONAI (tiles when a slice does not fit a small GPU).
"""

from __future__ import annotations

import importlib.metadata
from typing import Iterable

CPU_REQUIREMENTS = ("onnxruntime>=1.17",)
GPU_REQUIREMENTS = ("safetensors>=0.4", "monai>=1.3")
TORCH_REQUIREMENT = ">=2.1"
"""PyTorch version for GPU runs (PyTorchUtils' ``torchVersionRequirement`` takes the operator and version)."""
NEVER_INSTALL = ("numpy", "simpleitk", "pydicom")


def _split(requirement: str) -> tuple[str, str]:
    for operator in (">=", "==", "<=", "~=", ">", "<"):
        if operator in requirement:
            name, version = requirement.split(operator, 1)
            return name.strip(), operator + version.strip()
    return requirement.strip(), ""


def _satisfied(installed: str, specifier: str) -> bool:
    """Whether an installed version meets ``>=X`` / ``==X`` (the only forms listed here)."""
    if not specifier:
        return True
    from packaging.version import Version  # bundled with Slicer and with pip

    operator, wanted = specifier[:2], specifier[2:]
    if operator == ">=":
        return Version(installed) >= Version(wanted)
    if operator == "==":
        return Version(installed) == Version(wanted)
    return True


def missing(requirements: Iterable[str]) -> list[str]:
    """The requirements not installed (or too old), found without importing the packages."""
    found = []
    for requirement in requirements:
        name, specifier = _split(requirement)
        if name.lower() in NEVER_INSTALL:
            raise ValueError(f"{name} comes with Slicer and is never installed by this module")
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found.append(requirement)
            continue
        if not _satisfied(version, specifier):
            found.append(requirement)
    return found


def needs_gpu(device: str) -> bool:
    """Whether a run on ``device`` uses PyTorch (any GPU device; ``auto`` only where the engine finds one)."""
    return device not in ("cpu", "auto")
