"""ctdenoise: unpaired low-dose CT denoising with CycleGAN.

The one engine behind the command line and the 3D Slicer module: it reads CT, simulates low dose,
prepares training caches, trains and exports CycleGAN models, and denoises whole volumes. The
public API below is imported on first use, so ``import ctdenoise`` stays light (no PyTorch).

Examples:
    >>> import ctdenoise
    >>> volume = ctdenoise.read_volume("../data/totalsegmentator/example_ct_sm.nii.gz")
    >>> result = ctdenoise.denoise_volume(volume, options=ctdenoise.DenoiseOptions(strength=0.8))
    >>> result.volume.shape == volume.shape
    True
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("ctdenoise")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_PUBLIC = {
    # volumes
    "Volume": "ctdenoise.io",
    "read_volume": "ctdenoise.io",
    "write_volume": "ctdenoise.io",
    # models
    "ModelFile": "ctdenoise.modelfile",
    "read_model": "ctdenoise.modelfile",
    "load_checkpoint": "ctdenoise.checkpoints",
    "bundled_model_path": "ctdenoise.inference",
    # denoising
    "DenoiseOptions": "ctdenoise.options",
    "Denoiser": "ctdenoise.inference",
    "DenoiseResult": "ctdenoise.inference",
    "denoise_array": "ctdenoise.inference",
    "denoise_volume": "ctdenoise.inference",
    "denoise_file": "ctdenoise.inference",
    "denoise_archive": "ctdenoise.archive",
    # low dose
    "simulate_volume": "ctdenoise.physics",
    # progress, cancel, errors
    "ProgressInfo": "ctdenoise.progress",
    "DenoiseCancelled": "ctdenoise.errors",
    "CTDenoiseError": "ctdenoise.errors",
    "CTDenoiseWarning": "ctdenoise.errors",
    # devices
    "resolve_device": "ctdenoise.devices",
    "describe_devices": "ctdenoise.devices",
}

__all__ = sorted(_PUBLIC) + ["__version__"]

if TYPE_CHECKING:
    from ctdenoise.archive import denoise_archive
    from ctdenoise.checkpoints import load_checkpoint
    from ctdenoise.devices import describe_devices, resolve_device
    from ctdenoise.errors import CTDenoiseError, CTDenoiseWarning, DenoiseCancelled
    from ctdenoise.inference import (
        Denoiser,
        DenoiseResult,
        bundled_model_path,
        denoise_array,
        denoise_file,
        denoise_volume,
    )
    from ctdenoise.io import Volume, read_volume, write_volume
    from ctdenoise.modelfile import ModelFile, read_model
    from ctdenoise.options import DenoiseOptions
    from ctdenoise.physics import simulate_volume
    from ctdenoise.progress import ProgressInfo


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'ctdenoise' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
