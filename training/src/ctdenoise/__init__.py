"""ctdenoise: unpaired low-dose CT denoising with CycleGAN.

The one engine behind the command line and the 3D Slicer module: it reads CT, simulates low dose,
prepares training caches, trains and exports CycleGAN checkpoints, and denoises whole volumes.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ctdenoise")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from ctdenoise.errors import CTDenoiseError

__all__ = ["CTDenoiseError", "__version__"]
