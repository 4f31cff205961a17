"""Inference runtimes: where the generator runs.

* ``torch`` (:mod:`ctdenoise.runtimes.torch_runtime`): CPU, CUDA and MPS; needs PyTorch.
* ``onnxruntime`` (:mod:`ctdenoise.runtimes.onnx_runtime`): the model's own ONNX graph on the
  CPU; needs only the small ``onnxruntime`` package, never imports PyTorch.

``DenoiseOptions.runtime = "auto"`` takes ONNX Runtime whenever no GPU will be used and the model
carries a graph, and PyTorch otherwise. Deciding costs no PyTorch import on machines without an
NVIDIA driver or Apple GPU.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ctdenoise.devices import apple_gpu_likely, nvidia_driver_present, torch_available
from ctdenoise.errors import CTDenoiseError
from ctdenoise.modelfile import ModelDescription, ModelFile
from ctdenoise.options import DenoiseOptions
from ctdenoise.runtimes.base import Runtime

__all__ = ["Runtime", "available_runtimes", "choose_runtime", "open_runtime"]

TORCH_HINT = "install PyTorch ('pip install ctdenoise[torch]'; in 3D Slicer the PyTorch extension)"


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime is installed (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def _gpu_usable(device: str) -> bool:
    """Whether ``device`` (auto or a GPU name) will run on a GPU; imports PyTorch only where a GPU is likely."""
    if device == "cpu":
        return False
    if device != "auto":
        return True
    if not torch_available() or not (nvidia_driver_present() or apple_gpu_likely()):
        return False
    from ctdenoise.devices import resolve_device

    return resolve_device("auto").type != "cpu"


def choose_runtime(model: ModelDescription, options: DenoiseOptions) -> str:
    """The runtime ``options.runtime`` resolves to for ``model`` on this machine.

    Examples:
        >>> from ctdenoise import DenoiseOptions, read_model, bundled_model_path
        >>> choose_runtime(read_model(bundled_model_path()), DenoiseOptions(device="cpu", runtime="torch"))
        'torch'
    """
    has_graph = isinstance(model, ModelFile) and bool(model.graphs)
    if options.runtime == "torch":
        if not torch_available():
            raise CTDenoiseError(f"the torch runtime needs PyTorch: {TORCH_HINT}, or use --runtime onnxruntime")
        return "torch"
    if options.runtime == "onnxruntime":
        if not has_graph:
            raise CTDenoiseError(
                f"{model.path.name} carries no inference graph for onnxruntime: re-export it with 'ctdenoise export' "
                "or use --runtime torch"
            )
        return "onnxruntime"
    cpu_only = options.precision == "int8" or not _gpu_usable(options.device)
    if cpu_only and has_graph and onnxruntime_available():
        return "onnxruntime"
    if torch_available():
        return "torch"
    if has_graph:
        raise CTDenoiseError(
            "no runtime is installed for this model: install ONNX Runtime with 'pip install onnxruntime'"
        )
    raise CTDenoiseError(f"{model.path.name} has no inference graph and PyTorch is missing: {TORCH_HINT}")


def open_runtime(model: ModelDescription, options: DenoiseOptions) -> Runtime:
    """Open ``model`` on the runtime and device that ``options`` ask for (validated first)."""
    if choose_runtime(model, options) == "onnxruntime":
        from ctdenoise.runtimes.onnx_runtime import OnnxRuntime

        return OnnxRuntime(model, options)  # type: ignore[arg-type]
    from ctdenoise.checkpoints import as_checkpoint
    from ctdenoise.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(as_checkpoint(model), options)


def available_runtimes(model: Any = None) -> list[str]:
    """The runtimes that can run ``model`` (a path, or None for the bundled model) on this machine."""
    from ctdenoise.inference import describe_model

    found = ["torch"] if torch_available() else []
    description = describe_model(model)
    if onnxruntime_available() and isinstance(description, ModelFile) and description.graphs:
        found.append("onnxruntime")
    return found
