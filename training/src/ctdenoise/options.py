"""The one options object for denoising, shared by the Python API, the command line and the Slicer module."""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

from ctdenoise.errors import CTDenoiseError

RUNTIMES = ("auto", "torch", "onnxruntime")
"""``auto``: ONNX Runtime on the CPU when the model carries a graph, else PyTorch (see :mod:`ctdenoise.runtimes`)."""
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
"""``auto``: bf16 on CUDA GPUs, int8 on ONNX Runtime when the model's int8 graph passed its accuracy gate, else fp32."""
MIN_TILE = 32
"""Smallest tile side in pixels."""
TTA_COPIES = (1, 2, 4, 8)
"""Test-time augmentation: 1 (off); 2: and the left-right mirror; 4: and both mirrors; 8: and the 90-degree rotations."""
AUTO_TTA = "auto"
"""``tta`` default: 8 copies on slices whose pixels are far coarser than the model's training data and
that are small enough for 8 views to cost no more than one view of a 512 x 512 slice
(:meth:`~ctdenoise.modelfile.ModelDescription.auto_tta`): there one view is least reliable; else 1."""
AUTO_TTA_MAX_PIXELS = 512 * 512 // 8
"""Largest slice (pixels) on which ``tta="auto"`` averages 8 views."""


@dataclass(frozen=True)
class DenoiseOptions:
    """How to denoise: every option of :func:`~ctdenoise.denoise_volume` and ``ctdenoise denoise``.

    Attributes:
        strength: 0..1, the share of the model's change that is applied (0: input unchanged).
        device: ``auto`` (a CUDA GPU, then Apple MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        runtime: ``auto``, ``torch`` or ``onnxruntime`` (CPU only; needs no PyTorch).
        precision: ``auto``, ``fp32``, ``bf16``/``fp16`` (CUDA autocast) or ``int8`` (ONNX Runtime).
        batch_size: slices per forward pass; None picks one per device (halved on out-of-memory).
        tile_size: None runs whole slices (tiles only after an out-of-memory error); N runs
            overlapping N x N tiles blended with a Gaussian window.
        force: denoise input that does not look like HU (raw stored values, attenuation, 0..1
            intensities) instead of refusing it.
        tta: test-time augmentation, the number of mirrored or rotated copies of each slice whose
            changes are averaged: 1 (off), 2 (left-right mirror), 4 (both mirrors) or 8 (mirrors and
            90-degree rotations: the same result for mirrored or rotated anatomy). Costs that many
            network runs. ``auto`` (default): 8 on small slices whose in-plane pixels are far
            coarser than the model's training data (:data:`AUTO_TTA`), else 1.
        single_pass: run the model once, even where its file asks for a second pass on input that
            one pass leaves noisy (``second_pass_noise_hu``, see
            :meth:`~ctdenoise.modelfile.ModelDescription.second_pass_threshold`).

    Examples:
        >>> options = DenoiseOptions(strength=0.7, device="cpu")
        >>> options.to_cli_args()
        ['--strength', '0.7', '--device', 'cpu']
        >>> DenoiseOptions(strength=2)
        Traceback (most recent call last):
        ...
        ctdenoise.errors.CTDenoiseError: strength must be a number between 0 (input unchanged) and 1 (fully denoised), got 2
    """

    strength: float = 1.0
    device: str = "auto"
    runtime: str = "auto"
    precision: str = "auto"
    batch_size: Optional[int] = None
    tile_size: Optional[int] = None
    force: bool = False
    tta: Union[int, str] = AUTO_TTA
    single_pass: bool = False

    def __post_init__(self) -> None:
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= float(strength) <= 1.0:
            raise CTDenoiseError(
                f"strength must be a number between 0 (input unchanged) and 1 (fully denoised), got {strength!r}"
            )
        object.__setattr__(self, "strength", float(strength))
        if not isinstance(self.device, str) or not self.device.strip():
            raise CTDenoiseError(f"device must be a name such as auto, cpu, cuda, cuda:0 or mps, got {self.device!r}")
        object.__setattr__(self, "device", self.device.strip().lower())
        _check_choice("runtime", self.runtime, RUNTIMES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_positive("batch size", self.batch_size, 1)
        _check_positive("tile size", self.tile_size, MIN_TILE)
        for name in ("force", "single_pass"):
            if not isinstance(getattr(self, name), bool):
                raise CTDenoiseError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.tta, bool) or (self.tta != AUTO_TTA and self.tta not in TTA_COPIES):
            raise CTDenoiseError(
                f"tta must be auto or one of {', '.join(map(str, TTA_COPIES))} (copies of each slice averaged), "
                f"got {self.tta!r}"
            )

    def to_cli_args(self) -> list[str]:
        """The ``ctdenoise denoise`` arguments that give these options (defaults left out)."""
        args: list[str] = []
        for item in fields(self):
            value = getattr(self, item.name)
            if value == item.default:
                continue
            flag = "--" + item.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag)
            else:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return args

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> "DenoiseOptions":
        """Build from the parsed arguments that :func:`add_cli_arguments` declared."""
        return cls(**{item.name: getattr(args, item.name) for item in fields(cls)})


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare one command-line flag per :class:`DenoiseOptions` field."""
    defaults = DenoiseOptions()
    parser.add_argument(
        "--strength",
        type=_number,
        default=defaults.strength,
        help="0..1: share of the model's change applied (0: input unchanged; default 1)",
    )
    parser.add_argument(
        "--device",
        default=defaults.device,
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)",
    )
    parser.add_argument(
        "--runtime",
        default=defaults.runtime,
        choices=RUNTIMES,
        help="auto: ONNX Runtime on the CPU when the model has a graph, else PyTorch (default auto)",
    )
    parser.add_argument(
        "--precision",
        default=defaults.precision,
        choices=PRECISIONS,
        help="auto: bf16 on CUDA, int8 where the model's int8 graph passed its accuracy gate, else fp32",
    )
    parser.add_argument(
        "--batch-size",
        type=_integer,
        default=None,
        help="slices per forward pass (default: chosen for the device; halved on out-of-memory)",
    )
    parser.add_argument(
        "--tile-size",
        type=_integer,
        default=None,
        help=f"run overlapping NxN tiles (N >= {MIN_TILE}) instead of whole slices",
    )
    parser.add_argument(
        "--force", action="store_true", help="denoise input that does not look like HU instead of refusing it"
    )
    parser.add_argument(
        "--tta",
        type=tta_argument,
        default=defaults.tta,
        choices=(AUTO_TTA, *TTA_COPIES),
        help="test-time augmentation: average over 1, 2, 4 or 8 mirrored/rotated copies (that many times slower); "
        "auto (default): 8 on pixels far coarser than the model's training data, where they cost little, else 1",
    )
    parser.add_argument(
        "--single-pass",
        action="store_true",
        help="run the model once, even where its file asks for a second pass on input that one pass leaves noisy",
    )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CTDenoiseError(f"{name} {value!r} is not one of {', '.join(choices)}: pick one of them")


def _check_positive(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise CTDenoiseError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def tta_argument(text: str) -> Union[int, str]:
    """argparse type: ``auto`` or an integer (the choices are checked by argparse)."""
    if text.strip().lower() == AUTO_TTA:
        return AUTO_TTA
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or an integer") from None


def _number(text: str) -> float:
    """argparse type: a float (range checks are the options object's)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _integer(text: str) -> int:
    """argparse type: an integer (range checks are the options object's)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
