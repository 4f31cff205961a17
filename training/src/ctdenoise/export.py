"""Make inference model files: weights, metadata, a measured change limit and inference graphs.

Every model file the engine writes (at the end of training, by ``ctdenoise export`` and by
``ctdenoise convert-seed``) goes through :func:`write_model`, so they all carry the same derived
facts:

* the *inference graph* of G_Q2F for ONNX Runtime (``graph.fp32``, a uint8 tensor in the same
  file; exported with PyTorch's dynamo ONNX exporter, dynamic batch and slice size, and checked
  against PyTorch on real slices before it is stored);
* where training data is at hand, an *int8 graph* quantised with ONNX Runtime's own static
  quantisation (QDQ, per-channel weights, calibrated on low-dose training slices), stored with its
  accuracy against fp32 on the validation pairs. It becomes the default only if it passes the
  gate: PSNR within ``INT8_MAX_PSNR_LOSS_DB`` of fp32 and no voxel more than ``INT8_MAX_DIFF_HU``
  away;
* the *change limit*. The *change limit* bounds how far the engine lets the model move any voxel: it is measured
on low-dose slices of the model's own training data as ``CHANGE_LIMIT_FACTOR`` times the
``CHANGE_LIMIT_QUANTILE`` percentile of ``|model(x) - x|`` inside the body. Real denoising moves
voxels by a few noise standard deviations; a model out of its depth (3 mm pixels for a model
trained on 0.5-1 mm) can move one by 2000 HU, which the limit turns into a bounded change.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from ctdenoise.checkpoints import (
    TRAIN_STATE_FORMAT,
    ModelCheckpoint,
    _instantiate,
    check_shapes,
    export_model,
    file_tensor,
    load_torch_safely,
)
from ctdenoise.errors import CTDenoiseError
from ctdenoise.modelfile import MODEL_FORMAT_VERSION, ModelDescription, read_model, validate_metadata
from ctdenoise.orientation import DEFAULT_ORIENTATION
from ctdenoise.runtimes.base import pad_to_multiple
from ctdenoise.types import PathLike

ONNX_OPSET = 18
GRAPH_TOLERANCE_HU = 0.5
"""Largest difference between the exported fp32 graph and PyTorch that export accepts."""
INT8_MAX_PSNR_LOSS_DB = 0.05
INT8_MAX_DIFF_HU = 5.0
GATE_WINDOW_HU = (-160.0, 240.0)
VALIDATION_SLICES = 8
CHANGE_LIMIT_FACTOR = 3.0
CHANGE_LIMIT_QUANTILE = 99.99
MIN_CHANGE_LIMIT_HU = 100.0
CALIBRATION_SLICES = 16
SECOND_PASS_PERCENTILE = 90.0
"""A second pass runs where one leaves more noise than this share of the training full-dose slices have."""
BODY_HU = -900.0
"""Voxels above this count as the body when measuring changes (air and padding are left out)."""


def calibration_slices(cache_dir: PathLike, max_slices: int = CALIBRATION_SLICES) -> list[np.ndarray]:
    """Up to ``max_slices`` low-dose HU slices of a training cache's train split, spread evenly over its volumes."""
    from ctdenoise.data import load_cache

    cache = load_cache(cache_dir)
    entries = cache.volumes(split="train", dose="low") or cache.volumes(dose="low")
    if not entries:
        raise CTDenoiseError(f"cache {cache_dir} holds no low-dose volumes to measure the change limit on")
    picks = [(e, i) for e in entries for i in range(e.shape[0])]
    chosen = [picks[round(k)] for k in np.linspace(0, len(picks) - 1, min(max_slices, len(picks)))]
    return [np.asarray(cache.array(entry)[index], dtype=np.float32) for entry, index in chosen]


def training_slices(cache_dir: PathLike, max_slices: int) -> list[np.ndarray]:
    """Low- and full-dose HU slices of a cache's train split, up to ``max_slices`` per dose, evenly spread."""
    from ctdenoise.data import load_cache

    cache = load_cache(cache_dir)
    slices = []
    for dose in ("low", "full"):
        picks = [(e, i) for e in cache.volumes(split="train", dose=dose) for i in range(e.shape[0])]
        for k in np.linspace(0, len(picks) - 1, min(max_slices, len(picks))) if picks else []:
            entry, index = picks[round(k)]
            slices.append(np.asarray(cache.array(entry)[index], dtype=np.float32))
    if not slices:
        raise CTDenoiseError(f"cache {cache_dir} has no training slices to learn from: prepare it with a train split")
    return slices


def second_pass_threshold(cache_dir: PathLike, percentile: float = SECOND_PASS_PERCENTILE) -> dict[str, Any]:
    """The flat-tissue noise above which a model trained on ``cache_dir`` runs a second pass.

    A CycleGAN learns to map low dose to the noise of its training full dose, so input noisier than
    its training data comes out of one pass still noisier than that full dose. The threshold is the
    ``percentile`` over the train split's full-dose slices of their noise above a tenth of Nyquist
    in flat soft tissue (:func:`~ctdenoise.noise.band_noise_std`), the measure inference applies to
    its first pass (:meth:`~ctdenoise.inference.Denoiser._passes`).

    Returns:
        ``{"second_pass_noise_hu": ..., "percentile": ..., "median_hu": ..., "slices": ..., "method": ...}``.
    """
    from ctdenoise.data import load_cache
    from ctdenoise.noise import slice_noise

    cache = load_cache(cache_dir)
    values = []
    for entry in cache.volumes(split="train", dose="full"):
        spacing = None if entry.spacing is None else (float(entry.spacing[1]), float(entry.spacing[0]))
        values += slice_noise(cache.array(entry), spacing)
    if not values:
        raise CTDenoiseError(
            f"cache {cache_dir} has no full-dose training slice with flat soft tissue to measure the noise of: "
            "prepare it from body CT with a train split"
        )
    return {
        "second_pass_noise_hu": round(float(np.percentile(values, percentile)), 1),
        "percentile": percentile,
        "median_hu": round(float(np.median(values)), 1),
        "slices": len(values),
        "method": f"{percentile:g}th percentile of the flat-tissue noise above 0.1 x Nyquist of full-dose training slices",
    }


def validation_pairs(cache_dir: PathLike, max_slices: int = VALIDATION_SLICES) -> list[tuple[np.ndarray, np.ndarray]]:
    """Aligned (full, low) HU slices of a cache's validation split (empty when it has none)."""
    from ctdenoise.data import load_cache, paired_validation_slices

    return paired_validation_slices(load_cache(cache_dir), split="val", max_slices=max_slices, seed=0)


def validation_metrics(
    checkpoint: ModelCheckpoint, pairs: Sequence[tuple[np.ndarray, np.ndarray]], step: Optional[int] = None
) -> dict[str, Any]:
    """PSNR/SSIM/RMSE of the model (as the engine runs it) and of the low-dose input on (full, low) pairs.

    The same record the trainer's validation writes, so a re-exported or distilled model describes
    its own weights.
    """
    from ctdenoise.inference import denoise_array
    from ctdenoise.metrics import denoising_quality, metric_convention
    from ctdenoise.options import DenoiseOptions

    options = DenoiseOptions(device="cpu", runtime="torch", force=True)
    figures, _ = denoising_quality(pairs, lambda low: denoise_array(low, checkpoint, options))
    return {
        "step": step,
        **figures,
        "convention": metric_convention(),
        "slices": len(pairs),
    }


def measure_change_limit(checkpoint: ModelCheckpoint, slices: Sequence[np.ndarray]) -> dict[str, Any]:
    """The change limit of ``checkpoint`` from its changes on ``slices`` (HU), with the figures behind it."""
    normalization, generator = checkpoint.normalization, checkpoint.generator.eval()
    changes = []
    with torch.inference_mode():
        for hu in slices:
            padded = pad_to_multiple(
                normalization.normalize(hu.astype(np.float32))[None, None], checkpoint.size_multiple
            )
            x = torch.from_numpy(padded.astype(np.float32))
            change = (generator(x) - x)[0, 0, : hu.shape[0], : hu.shape[1]].numpy() * normalization.scale
            changes.append(np.abs(change[hu > BODY_HU]))
    values = np.concatenate(changes) if changes else np.zeros(0)
    if values.size == 0:
        raise CTDenoiseError("the calibration slices hold no body voxels: measure the change limit on real CT")
    quantile = float(np.percentile(values, CHANGE_LIMIT_QUANTILE))
    limit = max(MIN_CHANGE_LIMIT_HU, math.ceil(CHANGE_LIMIT_FACTOR * quantile / 10.0) * 10.0)
    return {
        "change_limit_hu": float(limit),
        "method": f"{CHANGE_LIMIT_FACTOR:g} x the {CHANGE_LIMIT_QUANTILE:g}th percentile of |change| inside the body "
        f"(HU > {BODY_HU:g}) on low-dose training slices, at least {MIN_CHANGE_LIMIT_HU:g} HU",
        "percentile_hu": round(quantile, 2),
        "max_hu": round(float(values.max()), 2),
        "slices": len(slices),
        "voxels": int(values.size),
    }


def export_graph(generator: torch.nn.Module) -> bytes:
    """G_Q2F as a serialised ONNX model (opset 18) with dynamic batch, height and width."""
    generator = generator.eval().float().cpu()
    multiple = int(getattr(generator, "multiple", 1))
    example = torch.zeros(1, 1, 16 * multiple, 16 * multiple)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # sides are multiples of the downsampling factor: the engine pads slices before the network
    height, width = (
        multiple * torch.export.Dim(name, min=4, max=8192 // multiple)
        if multiple > 1
        else torch.export.Dim(name, min=16, max=8192)
        for name in ("h", "w")
    )
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                generator,
                (example,),
                dynamo=True,
                opset_version=ONNX_OPSET,
                verbose=False,
                optimize=True,
                dynamic_shapes=({0: batch, 2: height, 3: width},),
                input_names=["x"],
                output_names=["y"],
            )
    except ImportError as exc:
        raise CTDenoiseError(
            f"exporting the inference graph needs onnx and onnxscript ({exc}): pip install ctdenoise[torch]"
        ) from None
    return program.model_proto.SerializeToString()


def _session(graph: bytes) -> Any:
    import onnxruntime

    settings = onnxruntime.SessionOptions()
    settings.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, settings, providers=["CPUExecutionProvider"])


def _graph_changes(graph: bytes, normalization: Any, slices: Sequence[np.ndarray], multiple: int) -> list[np.ndarray]:
    """``model(x) - x`` in HU for each slice, from the graph on ONNX Runtime."""
    session = _session(graph)
    name = session.get_inputs()[0].name
    changes = []
    for hu in slices:
        x = pad_to_multiple(normalization.normalize(hu.astype(np.float32))[None, None].astype(np.float32), multiple)
        change = (session.run(None, {name: x})[0] - x)[0, 0] * normalization.scale
        changes.append(change[: hu.shape[0], : hu.shape[1]])
    return changes


def check_graph(graph: bytes, checkpoint: ModelCheckpoint, slices: Sequence[np.ndarray]) -> float:
    """Largest |graph - PyTorch| in HU on ``slices``; refuses graphs that disagree by more than GRAPH_TOLERANCE_HU."""
    normalization, multiple = checkpoint.normalization, checkpoint.size_multiple
    worst = 0.0
    with torch.inference_mode():
        for hu, change in zip(slices, _graph_changes(graph, normalization, slices, multiple)):
            padded = pad_to_multiple(normalization.normalize(hu.astype(np.float32))[None, None], multiple)
            x = torch.from_numpy(padded.astype(np.float32))
            reference = (checkpoint.generator(x) - x)[0, 0, : hu.shape[0], : hu.shape[1]].numpy() * normalization.scale
            worst = max(worst, float(np.abs(change - reference).max()))
    if worst > GRAPH_TOLERANCE_HU:
        raise CTDenoiseError(f"the exported ONNX graph differs from PyTorch by {worst:.2f} HU: report this as a bug")
    return worst


def quantize_graph(graph: bytes, calibration: Sequence[np.ndarray], normalization: Any, multiple: int) -> bytes:
    """int8 QDQ graph from ONNX Runtime's static quantisation, calibrated on ``calibration`` HU slices.

    Convolutions with a single input or output channel (the first layer, the output layer and the
    high-pass blur) stay in float: they carry the image itself, where 8 bits cannot hold 1 HU.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load_from_string(graph)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    keep_float = [
        node.name for node in model.graph.node if node.op_type == "Conv" and 1 in shapes.get(node.input[1], [0, 0])[:2]
    ]
    batches = [
        pad_to_multiple(normalization.normalize(hu.astype(np.float32))[None, None].astype(np.float32), multiple)
        for hu in calibration
    ]
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            item = next(self.items, None)
            return None if item is None else {name: item}

    with tempfile.TemporaryDirectory() as folder, _root_warnings_silenced():
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        quantize_static(
            str(source),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=keep_float,
        )
        return target.read_bytes()


@contextlib.contextmanager
def _root_warnings_silenced() -> Iterator[None]:
    """ONNX Runtime's quantiser logs advice on the root logger; keep the export's output to its own lines."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def int8_gate(
    fp32: bytes,
    int8: bytes,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    normalization: Any,
    limit: float,
    multiple: int,
) -> dict[str, Any]:
    """int8 against fp32 on (full, low) validation pairs, denoised as the engine does (change limit, strength 1)."""
    lows = [low for _, low in pairs]
    outputs = {}
    for precision, graph in (("fp32", fp32), ("int8", int8)):
        changes = _graph_changes(graph, normalization, lows, multiple)
        outputs[precision] = [low + np.clip(change, -limit, limit) for low, change in zip(lows, changes)]
    low_w, high_w = GATE_WINDOW_HU

    def psnr(images: list[np.ndarray]) -> float:
        errors = [
            np.clip(image, low_w, high_w) - np.clip(full, low_w, high_w) for image, (full, _) in zip(images, pairs)
        ]
        mse = float(np.mean(np.concatenate([e.ravel() ** 2 for e in errors])))
        return 10 * math.log10((high_w - low_w) ** 2 / max(mse, 1e-12))

    difference = np.concatenate([np.abs(a - b).ravel() for a, b in zip(outputs["int8"], outputs["fp32"])])
    psnr_fp32, psnr_int8 = psnr(outputs["fp32"]), psnr(outputs["int8"])
    passed = psnr_fp32 - psnr_int8 <= INT8_MAX_PSNR_LOSS_DB and float(difference.max()) <= INT8_MAX_DIFF_HU
    return {
        "psnr_fp32_db": round(psnr_fp32, 4),
        "psnr_int8_db": round(psnr_int8, 4),
        "max_diff_hu": round(float(difference.max()), 3),
        "p99_9_diff_hu": round(float(np.percentile(difference, 99.9)), 3),
        "mean_diff_hu": round(float(difference.mean()), 4),
        "slices": len(pairs),
        "rule": f"default only if PSNR (window {low_w:g}..{high_w:g} HU) within {INT8_MAX_PSNR_LOSS_DB:g} dB of fp32 "
        f"and no voxel more than {INT8_MAX_DIFF_HU:g} HU from fp32, on the validation pairs",
        "passed": bool(passed),
    }


def write_model(
    generators: Mapping[str, Mapping[str, torch.Tensor]],
    metadata: Mapping[str, Any],
    path: PathLike,
    *,
    calibration: Optional[Sequence[np.ndarray]] = None,
    validation: Optional[Sequence[tuple[np.ndarray, np.ndarray]]] = None,
    graphs: bool = True,
    measure_metrics: bool = False,
) -> Path:
    """Write an inference model with its derived facts (see the module docstring).

    Args:
        generators: ``{"G_Q2F": state_dict, "G_F2Q": state_dict}``.
        metadata: from :func:`~ctdenoise.modelfile.build_metadata`.
        path: the ``.safetensors`` to write (atomically).
        calibration: low-dose HU slices of the training data: the change limit is measured and
            the int8 graph calibrated on them.
        validation: (full, low) HU slice pairs held out from training: the int8 accuracy gate.
        graphs: store the ONNX graphs (fp32 always; int8 with calibration and validation).
        measure_metrics: replace the metadata's validation metrics with the model's own on ``validation``
            (for re-exported and distilled models; the trainer records its own).
    """
    meta = dict(metadata)
    meta["training"] = dict(meta.get("training") or {})
    meta.pop("graphs", None)
    description = ModelDescription(path=Path(path), metadata=validate_metadata(meta, str(path)))
    state = generators["G_Q2F"]
    check_shapes(description, {k: tuple(v.shape) for k, v in state.items()}, "G_Q2F")
    checkpoint = ModelCheckpoint(path=Path(path), metadata=meta, generator=_instantiate(description, state))
    if measure_metrics and validation:
        meta["metrics"] = validation_metrics(checkpoint, validation, (meta.get("metrics") or {}).get("step"))
    if calibration is not None:
        figures = measure_change_limit(checkpoint, calibration)
        meta["change_limit_hu"] = figures["change_limit_hu"]
        meta["training"]["change_limit"] = figures
    extra: dict[str, torch.Tensor] = {}
    if graphs:
        fp32 = export_graph(checkpoint.generator)
        probe = list(calibration or [])[:2] or [_phantom_slice()]
        entries = {
            "fp32": _graph_entry("fp32", fp32, {"max_diff_to_torch_hu": round(check_graph(fp32, checkpoint, probe), 4)})
        }
        blobs = {"fp32": fp32}
        if calibration is not None and validation:
            int8 = quantize_graph(fp32, calibration, checkpoint.normalization, checkpoint.size_multiple)
            limit = float(meta.get("change_limit_hu") or checkpoint.change_limit_hu)
            gate = int8_gate(fp32, int8, validation, checkpoint.normalization, limit, checkpoint.size_multiple)
            entries["int8"] = _graph_entry("int8", int8, {"accuracy": gate, "default": gate["passed"]})
            blobs["int8"] = int8
        meta["graphs"] = entries
        extra = {
            entry["tensor"]: torch.frombuffer(bytearray(blobs[name]), dtype=torch.uint8)
            for name, entry in entries.items()
        }
    return export_model(generators, meta, path, extra=extra)


def write_model_from_cache(
    state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], path: PathLike, cache: PathLike
) -> Path:
    """:func:`write_model` for a G_Q2F made on training cache ``cache``: the change limit and int8
    graph from its training slices, the validation metrics and int8 gate from its validation pairs."""
    return write_model(
        {"G_Q2F": state},
        metadata,
        path,
        calibration=calibration_slices(cache),
        validation=validation_pairs(cache),
        measure_metrics=True,
    )


def _graph_entry(precision: str, graph: bytes, facts: dict[str, Any]) -> dict[str, Any]:
    """The metadata of one stored graph: its tensor, checksum, size, operators and measured facts."""
    import hashlib

    from ctdenoise.runtimes.onnx_graph import inspect_graph

    return {
        "tensor": f"graph.{precision}",
        "sha256": hashlib.sha256(graph).hexdigest(),
        "bytes": len(graph),
        "opset": ONNX_OPSET,
        "operators": sorted(inspect_graph(graph).ops),
        **facts,
    }


def _phantom_slice() -> np.ndarray:
    """A 128x128 water ellipse in air with noise, to check a graph when no real slices are at hand."""
    yy, xx = np.mgrid[:128, :128] / 128 - 0.5
    body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
    return (np.where(body, 40.0, -1000.0) + np.random.default_rng(0).normal(0, 20, (128, 128))).astype(np.float32)


def export_source(
    source: PathLike,
    out: PathLike,
    *,
    cache: Optional[PathLike] = None,
    second_pass: bool = False,
    second_pass_fine: Optional[tuple[float, float]] = None,
) -> tuple[Path, dict[str, Any]]:
    """``ctdenoise export``: a run folder, a training state or a model file -> a fresh inference model.

    A model file is re-exported with the current format (its weights unchanged); the change limit
    is measured on ``cache`` (default: the training state's own cache), or kept from the source
    model when no cache is given for a model file. ``second_pass`` measures on that cache the noise
    above which inference runs the model twice (:func:`second_pass_threshold`); ``second_pass_fine``
    ``(pixel_mm, noise_hu)`` sets a threshold of its own for pixels no larger than ``pixel_mm``
    (:meth:`~ctdenoise.modelfile.ModelDescription.second_pass_threshold`), chosen on validation data.

    Returns:
        The written path and the metadata written.
    """
    source = Path(source)
    if source.is_dir():
        source = source / "last.pt"
    if source.suffix.lower() == ".safetensors":
        model = read_model(source)
        generators: dict[str, dict[str, torch.Tensor]] = {}
        for name in model.tensors:
            prefix, _, key = name.partition(".")
            if prefix in ("G_Q2F", "G_F2Q"):
                generators.setdefault(prefix, {})[key] = file_tensor(model, name)
        metadata = dict(model.metadata)
        metadata.update(format_version=MODEL_FORMAT_VERSION)
        metadata.setdefault("orientation", DEFAULT_ORIENTATION)
    else:
        state = load_torch_safely(source)
        if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
            raise CTDenoiseError(
                f"{source} is not a ctdenoise training state: pass a run folder, its last.pt or a model"
            )
        generators = {name: state["models"][name] for name in ("G_Q2F", "G_F2Q")}
        metadata = dict(state["model_metadata"])
        if cache is None:
            cache = (state.get("config") or {}).get("data", {}).get("cache") or None
            if cache is None or not Path(cache).is_dir():
                raise CTDenoiseError(
                    f"the training cache of {source} ({cache}) is not here: pass --cache with the cache it was trained on"
                )
    if second_pass_fine is not None and not second_pass:
        raise CTDenoiseError("--second-pass-fine refines the second pass: pass --second-pass with it")
    if second_pass:
        if cache is None:
            raise CTDenoiseError("a second pass needs the model's training cache to measure noise on: pass --cache")
        figures = second_pass_threshold(cache)
        metadata["second_pass_noise_hu"] = figures["second_pass_noise_hu"]
        metadata.pop("second_pass_fine_pixel_mm", None)
        metadata.pop("second_pass_fine_noise_hu", None)
        if second_pass_fine is not None:
            pixel, noise = (float(value) for value in second_pass_fine)
            if not (0.01 <= pixel <= 100.0 and 1.0 <= noise <= 1000.0):
                raise CTDenoiseError(
                    f"--second-pass-fine {pixel:g} {noise:g} is out of range: give a pixel size of 0.01-100 mm "
                    "and a noise of 1-1000 HU"
                )
            metadata.update(second_pass_fine_pixel_mm=pixel, second_pass_fine_noise_hu=noise)
            figures = {**figures, "fine": {"pixel_mm": pixel, "noise_hu": noise, "method": "given at export"}}
        metadata["training"] = {**(metadata.get("training") or {}), "second_pass": figures}
    calibration = calibration_slices(cache) if cache is not None else None
    validation = validation_pairs(cache) if cache is not None else None
    path = write_model(
        generators,
        metadata,
        out,
        calibration=calibration,
        validation=validation,
        measure_metrics=source.suffix.lower() == ".safetensors",
    )
    return path, read_model(path).metadata
