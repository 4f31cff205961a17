"""The ONNX Runtime runtime: the model's own inference graph on the CPU, without PyTorch.

Most Slicer users have no GPU. ONNX Runtime runs the graph every exported model carries (see
:mod:`ctdenoise.export`) about twice as fast as PyTorch on the CPU, imports in a tenth of the time
and is a small pip package. The graph bytes are checked (:mod:`ctdenoise.runtimes.onnx_graph`)
before a session is created.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ctdenoise.errors import CTDenoiseError
from ctdenoise.modelfile import ModelFile
from ctdenoise.options import DenoiseOptions
from ctdenoise.runtimes.onnx_graph import validate_graph

logger = logging.getLogger(__name__)

INSTALL_HINT = "install it with 'pip install onnxruntime' (in 3D Slicer the module offers to)"


def graph_bytes(model: ModelFile, precision: str) -> bytes:
    """The validated graph of ``precision`` that ``model`` carries (read without the safetensors package)."""
    entry = model.graphs[precision]
    name = entry["tensor"]
    if name not in model.tensors or model.tensors[name].dtype != "U8" or len(model.tensors[name].shape) != 1:
        raise CTDenoiseError(
            f"{model.path}: the {precision} graph tensor {name!r} is missing or malformed: re-export the model"
        )
    data = model.tensor_bytes(name)
    validate_graph(data, entry["sha256"], str(model.path))
    return data


def _precision(model: ModelFile, requested: str) -> str:
    """The graph to run: ``auto`` takes int8 only where its accuracy gate passed at export."""
    graphs = model.graphs
    if requested == "auto":
        return "int8" if (graphs.get("int8") or {}).get("default") else "fp32"
    if requested in ("bf16", "fp16"):
        raise CTDenoiseError(
            f"precision {requested} needs a CUDA GPU on the torch runtime: use --precision fp32 or int8"
        )
    if requested not in graphs:
        have = ", ".join(sorted(graphs)) or "none"
        raise CTDenoiseError(
            f"{model.path.name} carries no {requested} graph (it has {have}): pick another --precision"
        )
    return requested


class OnnxRuntime:
    """A model's inference graph in an ONNX Runtime CPU session."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, model: ModelFile, options: DenoiseOptions) -> None:
        if options.device not in ("auto", "cpu"):
            raise CTDenoiseError(
                f"the onnxruntime runtime runs on the CPU, not on {options.device!r}: use --runtime torch for GPUs"
            )
        if options.tile_size is not None:
            raise CTDenoiseError(
                "tiles are for small GPUs: the onnxruntime runtime runs whole slices; drop --tile-size"
            )
        try:
            import onnxruntime
        except ImportError:
            raise CTDenoiseError(f"the onnxruntime runtime needs ONNX Runtime: {INSTALL_HINT}") from None
        self.precision = _precision(model, options.precision)
        data = graph_bytes(model, self.precision)
        settings = onnxruntime.SessionOptions()
        settings.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        settings.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(data, settings, providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise CTDenoiseError(
                f"{model.path}: the inference graph does not take and return one slice batch: re-export it"
            )
        self.input_name = inputs[0].name
        self.batch_size = options.batch_size or 1

    def change(self, x: np.ndarray) -> Optional[np.ndarray]:
        """``model(x) - x`` for normalised slices; None after an allocation failure (batch halved)."""
        try:
            output: Any = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        except Exception as exc:  # ONNX Runtime raises its own RuntimeException types
            if "alloc" not in str(exc).lower() or self.batch_size == 1:
                raise
            self.batch_size = max(1, min(self.batch_size, len(x)) // 2)
            logger.warning("out of memory on the CPU: retrying with batch size %d", self.batch_size)
            return None
        return (output[:, 0] - x[:, 0]).astype(np.float32, copy=False)
