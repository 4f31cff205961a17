"""Model checkpoints: export to safetensors, load safely, import the seed project's files.

Two kinds of files exist:

* a *training state* (``.pt``, written by the trainer): everything needed to resume exactly. It is
  a plain dict of tensors and numbers, loaded with ``torch.load(weights_only=True)``;
* an *inference model* (``.safetensors``, written by :func:`export_model`): the generator weights
  (``G_Q2F.*`` for denoising, ``G_F2Q.*`` for completeness) and JSON metadata under the key
  ``"ctdenoise"`` that says how to rebuild and feed the network. The file alone is enough to
  denoise correctly.

Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ctdenoise.errors import CTDenoiseError
from ctdenoise.fileutils import atomic_write
from ctdenoise.normalization import HUNormalization

PathLike = Union[str, "os.PathLike[str]"]

MODEL_FORMAT = "ctdenoise-model"
MODEL_FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "ctdenoise-train-state"
METADATA_KEY = "ctdenoise"
GENERATOR_NAMES = ("G_Q2F", "G_F2Q")


@dataclass
class ModelCheckpoint:
    """A loaded inference model.

    Attributes:
        generator: the low-to-full-dose generator (G_Q2F), in eval mode on the CPU.
        normalization: the HU mapping the model was trained with.
        metadata: the full metadata dict (preset, arguments, training data, metrics, ...).
        path: the file it came from.
    """

    generator: nn.Module
    normalization: HUNormalization
    metadata: dict[str, Any]
    path: Path

    @property
    def preset(self) -> str:
        """Generator preset name (e.g. ``"fast"`` or ``"seed"``)."""
        return str(self.metadata["generator"]["preset"])


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


def build_metadata(
    *,
    preset: str,
    generator_args: Mapping[str, Any],
    normalization: HUNormalization,
    patch_size: Optional[int],
    training: Optional[Mapping[str, Any]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    source: Optional[str] = None,
) -> dict[str, Any]:
    """The self-describing metadata dict stored in every exported model."""
    from ctdenoise import __version__

    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": {"preset": preset, "args": dict(generator_args)},
        "normalization": normalization.to_dict(),
        "patch_size": patch_size,
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "source": source,
    }


def export_model(
    generators: Mapping[str, Mapping[str, torch.Tensor]],
    metadata: Mapping[str, Any],
    path: PathLike,
) -> Path:
    """Write generator state dicts and metadata as one ``.safetensors`` file, atomically.

    Args:
        generators: ``{"G_Q2F": state_dict, "G_F2Q": state_dict}`` (``G_Q2F`` is required).
        metadata: from :func:`build_metadata`.
        path: destination; must end in ``.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CTDenoiseError(f"export path {path} must end in .safetensors")
    if "G_Q2F" not in generators:
        raise CTDenoiseError("export needs the G_Q2F (low-to-full dose) generator weights")
    unknown = set(generators) - set(GENERATOR_NAMES)
    if unknown:
        raise CTDenoiseError(f"unknown generator names {sorted(unknown)}; expected {GENERATOR_NAMES}")
    tensors = {
        f"{name}.{key}": value.detach().to("cpu").contiguous()
        for name, state in generators.items()
        for key, value in state.items()
    }
    text = {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=text))
    return path


def read_model_metadata(path: PathLike) -> dict[str, Any]:
    """Read only the metadata of an exported ``.safetensors`` model (no weights loaded)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise CTDenoiseError(f"cannot read {path} as safetensors ({type(exc).__name__}): the file is damaged or not a model") from None
    if raw is None:
        raise CTDenoiseError(
            f"{path} has no ctdenoise metadata: export models with 'ctdenoise export' or 'ctdenoise convert-seed'"
        )
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise CTDenoiseError(f"{path} has damaged ctdenoise metadata (not JSON): re-export the model") from None
    missing = [key for key in ("generator", "normalization") if not isinstance(metadata.get(key), dict)]
    if missing:
        raise CTDenoiseError(f"{path} metadata lacks {', '.join(missing)}: re-export the model with 'ctdenoise export'")
    if metadata.get("format") != MODEL_FORMAT or int(metadata.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise CTDenoiseError(
            f"{path} has model format {metadata.get('format')} v{metadata.get('format_version')}; "
            f"this ctdenoise reads {MODEL_FORMAT} up to v{MODEL_FORMAT_VERSION}: upgrade ctdenoise"
        )
    return metadata


def _split_generators(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, sub = key.partition(".")
        states.setdefault(name, {})[sub] = value
    return states


def _instantiate(preset: str, args: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    from ctdenoise.networks import build_generator

    generator = build_generator(preset, **dict(args))
    try:
        generator.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0]
        raise CTDenoiseError(f"weights in {path} do not match the '{preset}' generator ({detail})") from None
    return generator.eval()


def load_checkpoint(path: PathLike, direction: str = "G_Q2F") -> ModelCheckpoint:
    """Load an inference model from ``.safetensors``, a training state ``.pt``, or a seed ``.pth``.

    Args:
        path: the file.
        direction: ``"G_Q2F"`` (denoise, default) or ``"G_F2Q"`` (add noise).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if direction not in GENERATOR_NAMES:
        raise CTDenoiseError(f"direction must be one of {GENERATOR_NAMES}, got {direction!r}")
    if not path.is_file():
        raise CTDenoiseError(f"checkpoint {path} does not exist: pass the path of a .safetensors or .pt file")
    if path.suffix == ".safetensors":
        metadata = read_model_metadata(path)
        states = _split_generators(load_file(str(path)))
    else:
        metadata, states = _metadata_and_states_from_torch(load_torch_safely(path), path)
    if direction not in states:
        raise CTDenoiseError(f"{path} holds no {direction} weights (it has {sorted(states)})")
    gen = metadata["generator"]
    generator = _instantiate(gen["preset"], gen.get("args", {}), states[direction], path)
    normalization = HUNormalization.from_dict(metadata["normalization"])
    return ModelCheckpoint(generator=generator, normalization=normalization, metadata=metadata, path=path)


def _metadata_and_states_from_torch(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if isinstance(obj, dict) and obj.get("format") == TRAIN_STATE_FORMAT:
        return dict(obj["model_metadata"]), {name: obj["models"][name] for name in GENERATOR_NAMES}
    if isinstance(obj, dict) and "G_Q2F_state_dict" in obj:
        return seed_metadata(path, obj), {name: obj[f"{name}_state_dict"] for name in GENERATOR_NAMES if f"{name}_state_dict" in obj}
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
        patch_size=128,
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
    is refused. Discriminator and optimizer states are dropped; both generators are kept.
    """
    src = Path(src)
    obj = load_torch_safely(src)
    if not (isinstance(obj, dict) and "G_Q2F_state_dict" in obj):
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CTDenoiseError(
            f"{src} is not a seed-project checkpoint (expected keys G_Q2F_state_dict, G_F2Q_state_dict, ...; found {keys})"
        )
    metadata, states = _metadata_and_states_from_torch(obj, src)
    for name, state in states.items():  # validate every generator before writing anything
        _instantiate("seed", metadata["generator"]["args"], state, src)
    return export_model(states, metadata, dst)
