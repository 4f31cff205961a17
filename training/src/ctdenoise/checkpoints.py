"""Model checkpoints with PyTorch: build a generator from a model file, export, import seed files.

Two kinds of files exist:

* a *training state* (``.pt``, written by the trainer): everything needed to resume exactly. It is
  a plain dict of tensors and numbers, loaded with ``torch.load(weights_only=True)``;
* an *inference model* (``.safetensors``, written by :func:`export_model`): see
  :mod:`ctdenoise.modelfile`, which validates it without PyTorch.

Before any network is built its metadata passes the schema and the weights' shapes are compared
with a generator built on PyTorch's ``meta`` device (no memory), so a crafted file cannot make the
engine allocate what it asks for. Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ctdenoise.errors import CTDenoiseError
from ctdenoise.fileutils import atomic_write
from ctdenoise.modelfile import (
    GENERATOR_NAMES,
    METADATA_KEY,
    REEXPORT,
    ModelDescription,
    ModelFile,
    build_metadata,
    read_model,
    validate_metadata,
)
from ctdenoise.normalization import HUNormalization
from ctdenoise.types import PathLike

TRAIN_STATE_FORMAT = "ctdenoise-train-state"
SEED_PATCH_SIZE = 128


@dataclass
class ModelCheckpoint(ModelDescription):
    """A model ready to run on PyTorch: its description plus the built generator.

    Attributes:
        generator: the low-to-full-dose generator (G_Q2F), in eval mode on the CPU.
    """

    generator: nn.Module = field(default_factory=nn.Identity)


def save_torch_atomic(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def load_torch_safely(path: PathLike) -> Any:
    """Load a torch file with ``weights_only=True``; refuse pickles that carry code."""
    path = Path(path)
    if not path.is_file():
        raise CTDenoiseError(f"checkpoint {path} does not exist: pass the path of a .safetensors or .pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CTDenoiseError(
            f"refused to load {path}: it is not a plain weights file ({first[:160]}); "
            "only safetensors or weights-only torch files are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CTDenoiseError(
            f"cannot read checkpoint {path} ({type(exc).__name__}): the file is damaged or not a torch file"
        ) from None


def export_model(
    generators: Mapping[str, Mapping[str, torch.Tensor]],
    metadata: Mapping[str, Any],
    path: PathLike,
    extra: Optional[Mapping[str, torch.Tensor]] = None,
) -> Path:
    """Write generator state dicts, ``extra`` tensors (inference graphs) and metadata as one ``.safetensors``, atomically.

    Args:
        generators: ``{"G_Q2F": state_dict, "G_F2Q": state_dict}`` (``G_Q2F`` is required).
        metadata: from :func:`~ctdenoise.modelfile.build_metadata`; validated again here.
        path: destination; must end in ``.safetensors``.
        extra: further tensors stored under their own names (e.g. ``graph.fp32``).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CTDenoiseError(f"export path {path} must end in .safetensors")
    if "G_Q2F" not in generators:
        raise CTDenoiseError("export needs the G_Q2F (low-to-full dose) generator weights")
    unknown = set(generators) - set(GENERATOR_NAMES)
    if unknown:
        raise CTDenoiseError(f"unknown generator names {sorted(unknown)}; expected {GENERATOR_NAMES}")
    validate_metadata(dict(metadata), str(path))
    tensors = {
        f"{name}.{key}": value.detach().to("cpu").contiguous()
        for name, state in generators.items()
        for key, value in state.items()
    }
    tensors.update({name: value.contiguous() for name, value in (extra or {}).items()})
    text = {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=text))
    return path


def read_model_metadata(path: PathLike) -> dict[str, Any]:
    """The validated metadata of a ``.safetensors`` model (no weights loaded)."""
    return read_model(path).metadata


def expected_shapes(preset: str, args: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a generator, from one built on the ``meta`` device (allocates nothing).

    The seed's weight initialisation is skipped: it only changes values, and on meta tensors it
    would import PyTorch's compiler stack (1.5 s) on every start.
    """
    from ctdenoise.networks.generators import GENERATOR_CLASSES, GENERATOR_PRESETS, validate_kwargs

    kwargs = {**GENERATOR_PRESETS[preset], **dict(args)}
    validate_kwargs(f"'{preset}' generator", GENERATOR_CLASSES[preset], kwargs)
    with torch.device("meta"):
        generator = GENERATOR_CLASSES[preset](**kwargs)
    return {name: tuple(value.shape) for name, value in generator.state_dict().items()}


def check_shapes(description: ModelDescription, shapes: Mapping[str, tuple[int, ...]], direction: str) -> None:
    """Compare stored weight shapes with what the metadata's generator needs; one line on mismatch."""
    wanted = expected_shapes(description.preset, description.generator_args)
    missing = sorted(set(wanted) - set(shapes))
    unexpected = sorted(set(shapes) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(shapes) if tuple(shapes[k]) != wanted[k])
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[0]}"
            if missing
            else f"unexpected {unexpected[0]}"
            if unexpected
            else f"{wrong[0]} has shape {list(shapes[wrong[0]])}, the metadata's network needs {list(wanted[wrong[0]])}"
        )
        raise CTDenoiseError(
            f"{description.path}: the {direction} weights do not match the '{description.preset}' generator its "
            f"metadata describes ({detail}): {REEXPORT}"
        )


def _instantiate(description: ModelDescription, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the described generator and load ``state`` (shapes already checked)."""
    from ctdenoise.networks import build_generator

    generator = build_generator(description.preset, **description.generator_args)
    generator.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return generator.eval()


def load_checkpoint(path: PathLike, direction: str = "G_Q2F") -> ModelCheckpoint:
    """Load a model from ``.safetensors``, a training state ``.pt``, or a seed ``.pth``, validated first.

    Args:
        path: the file.
        direction: ``"G_Q2F"`` (denoise, default) or ``"G_F2Q"`` (add noise).

    Examples:
        >>> from ctdenoise import bundled_model_path
        >>> load_checkpoint(bundled_model_path()).preset
        'fast'
    """
    path = Path(path)
    if direction not in GENERATOR_NAMES:
        raise CTDenoiseError(f"direction must be one of {GENERATOR_NAMES}, got {direction!r}")
    if not path.is_file():
        raise CTDenoiseError(f"checkpoint {path} does not exist: pass the path of a .safetensors or .pt file")
    if path.suffix.lower() == ".safetensors":
        model = read_model(path)
        header = model.generator_tensors(direction)
        if not header:
            raise CTDenoiseError(f"{path} holds no {direction} weights: {REEXPORT}")
        check_shapes(model, {k: v.shape for k, v in header.items()}, direction)
        state = {key: file_tensor(model, f"{direction}.{key}") for key in header}
        description = ModelDescription(path=path, metadata=model.metadata)
    else:
        metadata, states = _metadata_and_states_from_torch(load_torch_safely(path), path)
        if direction not in states:
            raise CTDenoiseError(f"{path} holds no {direction} weights (it has {sorted(states)})")
        description = ModelDescription(path=path, metadata=validate_metadata(metadata, str(path)))
        state = _tensor_state(states[direction], path)
        check_shapes(description, {k: tuple(v.shape) for k, v in state.items()}, direction)
    return ModelCheckpoint(path=path, metadata=description.metadata, generator=_instantiate(description, state))


TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def file_tensor(model: ModelFile, name: str) -> torch.Tensor:
    """One floating-point tensor of a validated model file, read by its header offsets (no safetensors package)."""
    info = model.tensors[name]
    if info.dtype not in TORCH_DTYPES:
        raise CTDenoiseError(f"{model.path}: weight {name} is stored as {info.dtype}, not floating point: {REEXPORT}")
    data = bytearray(model.tensor_bytes(name))
    return (
        torch.frombuffer(data, dtype=TORCH_DTYPES[info.dtype]).reshape(info.shape) if data else torch.zeros(info.shape)
    )


def as_checkpoint(model: "ModelFile | ModelCheckpoint | PathLike") -> ModelCheckpoint:
    """A model ready for PyTorch from a path, a validated :class:`ModelFile` or a checkpoint."""
    if isinstance(model, ModelCheckpoint):
        return model
    return load_checkpoint(model.path if isinstance(model, ModelFile) else model)


def _tensor_state(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CTDenoiseError(f"{path} holds weights that are not a dict of tensors: the file is damaged or not a model")
    return dict(state)


def _metadata_and_states_from_torch(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if isinstance(obj, dict) and obj.get("format") == TRAIN_STATE_FORMAT:
        return dict(obj["model_metadata"]), {name: obj["models"][name] for name in GENERATOR_NAMES}
    if isinstance(obj, dict) and "G_Q2F_state_dict" in obj:
        states = {name: obj[f"{name}_state_dict"] for name in GENERATOR_NAMES if f"{name}_state_dict" in obj}
        return seed_metadata(path, obj), states
    raise CTDenoiseError(
        f"{path} is neither a ctdenoise training state nor a seed-project checkpoint (keys G_Q2F_state_dict, ...)"
    )


def seed_metadata(path: Path, seed_checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata for a checkpoint saved by the seed project's training script."""
    from ctdenoise.networks import GENERATOR_PRESETS

    epoch = seed_checkpoint.get("epoch")
    return build_metadata(
        preset="seed",
        generator_args=GENERATOR_PRESETS["seed"],
        normalization=HUNormalization.seed(),
        patch_size=SEED_PATCH_SIZE,
        training={
            "origin": "seed project (unsupervised CT denoising with CycleGAN), imported by convert-seed",
            "epoch": int(epoch) if isinstance(epoch, (int, float)) else None,
            "data": "AAPM Low-Dose CT Grand Challenge course slices (seed project)",
        },
        source=str(path.name),
    )


def convert_seed(src: PathLike, dst: PathLike) -> Path:
    """Convert a seed-project ``.pth`` (``G_Q2F_state_dict``, ...) to a ``.safetensors`` model.

    The source is read with ``torch.load(weights_only=True)``: a file that needs code to unpickle
    is refused. Discriminator and optimizer states are dropped; both generators are kept, with the
    fp32 inference graph. Without training data the change limit is the default
    (:data:`~ctdenoise.modelfile.DEFAULT_CHANGE_LIMIT_HU`).
    """
    src = Path(src)
    obj = load_torch_safely(src)
    if not (isinstance(obj, dict) and "G_Q2F_state_dict" in obj):
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CTDenoiseError(
            f"{src} is not a seed-project checkpoint (expected keys G_Q2F_state_dict, G_F2Q_state_dict, ...; found {keys})"
        )
    from ctdenoise.export import write_model

    metadata, states = _metadata_and_states_from_torch(obj, src)
    description = ModelDescription(path=src, metadata=metadata)
    for name, state in states.items():  # validate every generator before writing anything
        tensors = _tensor_state(state, src)
        check_shapes(description, {k: tuple(v.shape) for k, v in tensors.items()}, name)
    return write_model(states, metadata, dst)
