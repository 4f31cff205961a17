"""The training configuration: a YAML file, every field documented and validated.

Unknown keys are errors (a typo must not silently fall back to a default). Paths in the file are
relative to the file's folder. ``ctdenoise train --print-config`` prints the defaults with their
documentation; see ``training/configs/`` for ready files.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Union

import yaml

from ctdenoise.errors import CTDenoiseError
from ctdenoise.normalization import HUNormalization

GENERATOR_INITS = ("seed", "identity")
"""Generator initialisations: the seed's N(0, 0.02), or that with the last convolution zeroed."""


def _doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation in ``metadata['doc']``."""
    return field(metadata={"doc": text}, **kwargs)


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass
class DataConfig:
    cache: str = _doc("Prepared cache folder (from 'ctdenoise prepare'); relative to the config file.", default="")
    patch_size: int = _doc("Square patch side in pixels (the seed uses 128).", default=128)
    batch_size: int = _doc(
        "Patches per dose per step: the global batch, split evenly over the processes of a torchrun run "
        "(the seed uses 4).",
        default=4,
    )
    num_workers: int = _doc(
        "DataLoader worker processes that prefetch batches (0: load in the main process).", default=0
    )
    prefetch: int = _doc("Batches each DataLoader worker reads ahead (with num_workers > 0).", default=4)
    augment: bool = _doc("Random horizontal/vertical flips and 90-degree rotations.", default=True)
    min_body_fraction: float = _doc("Redraw patches with less than this fraction of pixels above -900 HU.", default=0.3)


@dataclass
class ModelConfig:
    generator: str = _doc(
        "Generator preset: 'fast' (downsampling ResNet) or 'seed' (the seed project's exact generator).", default="fast"
    )
    generator_args: dict = _doc(
        "Overrides of the preset's arguments, e.g. {ngf: 32, n_res_blocks: 6}.", default_factory=dict
    )
    generator_init: str = _doc(
        "Generator initialisation: 'seed' (all weights ~ N(0, 0.02), as the seed) or 'identity' (the same, then the last convolution zeroed, so each generator starts as the identity and no steps go into learning to copy the input).",
        default="seed",
    )
    discriminator_args: dict = _doc(
        "Overrides of the PatchGAN discriminator's arguments: ndf (width), norm ('instance', the seed's, or 'none') and highpass_sigma (0: off; > 0: judge the input minus its Gaussian blur) and energy_sigma (0: off; > 0: judge the log of that high-pass image's local energy, averaged over a Gaussian of this sigma), e.g. {norm: none, highpass_sigma: 1.0, energy_sigma: 2.0}.",
        default_factory=dict,
    )


@dataclass
class NormalizationConfig:
    hu_min: Optional[float] = _doc("HU clipped below this before scaling (null: no clipping).", default=-1024.0)
    hu_max: Optional[float] = _doc("HU clipped above this before scaling (null: no clipping).", default=3071.0)
    offset: float = _doc("Network input = (HU - offset) / scale.", default=0.0)
    scale: float = _doc(
        "Network input = (HU - offset) / scale (the seed uses offset 0, scale 4000, hu_min -1000).", default=1000.0
    )


@dataclass
class LossConfig:
    lambda_cycle: float = _doc("Weight of the L1 cycle loss (seed: 10).", default=10.0)
    lambda_identity: float = _doc("Weight of the L1 identity loss (seed: 5).", default=5.0)


@dataclass
class OptimConfig:
    lr: float = _doc("Adam learning rate for generators and discriminators.", default=2e-4)
    betas: List[float] = _doc("Adam betas.", default_factory=lambda: [0.5, 0.999])
    schedule: str = _doc(
        "'step' (the seed: StepLR on the generators), 'linear' (the reference CycleGAN: constant, then linear decay "
        "to 0 on both), or 'constant'.",
        default="step",
    )
    step_size: int = _doc("'step': decay every this many steps (the seed: 5 epochs).", default=5000)
    gamma: float = _doc("'step': multiply the learning rate by this at each decay (the seed: 0.95).", default=0.95)
    decay_start: int = _doc("'linear': step where the linear decay to 0 begins.", default=0)
    decay_steps: int = _doc("'linear': steps from decay_start to a learning rate of 0.", default=0)


@dataclass
class TrainConfig:
    max_steps: int = _doc("Training steps (one generator and one discriminator update each).", default=10000)
    seed: int = _doc("Seed for weights, sampling and the image pool: same seed, same run.", default=0)
    device: str = _doc("'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.", default="auto")
    amp: str = _doc("Mixed precision: 'auto' (bf16 on CUDA, off elsewhere), 'bf16' or 'off'.", default="auto")
    image_pool: int = _doc(
        "Size of the pool of past fakes shown to the discriminators (0: off, as the seed; 50: reference).", default=0
    )
    log_every: int = _doc("Write TensorBoard scalars every this many steps.", default=10)
    val_every: int = _doc("Validate (and log image grids) every this many steps; 0: only at the end.", default=500)
    val_slices: int = _doc("Paired validation slices used for PSNR/SSIM/RMSE.", default=8)
    val_window: List[float] = _doc(
        "HU window [low, high] for PSNR/SSIM (data range = its width).", default_factory=lambda: [-160.0, 240.0]
    )
    checkpoint_every: int = _doc("Write the resumable training state every this many steps.", default=500)
    keep_checkpoints: int = _doc("How many periodic training states to keep besides last.pt.", default=3)
    threads: int = _doc("CPU threads for torch (0: torch's default).", default=0)
    channels_last: bool = _doc(
        "Channels-last memory format on CUDA GPUs (faster convolutions); ignored on the CPU.", default=True
    )
    compile: str = _doc(
        "torch.compile the training step: 'off', 'default', 'reduce-overhead' (CUDA graphs) or 'max-autotune'.",
        default="off",
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for YAML, checkpoints and metadata)."""
        return dataclasses.asdict(self)


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _check_type(value, next(a for a in args if a is not type(None)), where)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation in (str, bool) and isinstance(value, annotation):
        return value
    if (annotation is dict or origin is dict) and isinstance(value, dict):
        return dict(value)
    if origin in (list, List) and isinstance(value, (list, tuple)):
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    name = getattr(annotation, "__name__", str(annotation))
    raise CTDenoiseError(f"config key {where} must be {name}, got {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise CTDenoiseError(f"config section {where or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise CTDenoiseError(f"unknown config key {prefix}{unknown[0]}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        hint = hints[key]
        kwargs[key] = _build(hint, value, path) if dataclasses.is_dataclass(hint) else _check_type(value, hint, path)
    return cls(**kwargs)


def validate(config: Config) -> Config:
    """Check values beyond their types; raise CTDenoiseError naming the key."""
    c = config
    checks = [
        (c.data.patch_size >= 70, "data.patch_size must be at least 70 (the PatchGAN discriminator sees 70x70)"),
        (c.data.batch_size >= 1, "data.batch_size must be at least 1"),
        (c.data.num_workers >= 0, "data.num_workers must be 0 or more"),
        (c.data.prefetch >= 1, "data.prefetch must be at least 1"),
        (0.0 <= c.data.min_body_fraction <= 1.0, "data.min_body_fraction must be in [0, 1]"),
        (
            c.model.generator_init in GENERATOR_INITS,
            f"model.generator_init must be one of {', '.join(GENERATOR_INITS)}",
        ),
        (c.optim.lr > 0, "optim.lr must be positive"),
        (
            len(c.optim.betas) == 2 and all(0 <= b < 1 for b in c.optim.betas),
            "optim.betas must be two numbers in [0, 1)",
        ),
        (c.optim.schedule in ("step", "linear", "constant"), "optim.schedule must be 'step', 'linear' or 'constant'"),
        (c.optim.step_size >= 1, "optim.step_size must be at least 1"),
        (0 < c.optim.gamma <= 1, "optim.gamma must be in (0, 1]"),
        (
            c.optim.schedule != "linear" or c.optim.decay_steps >= 1,
            "optim.decay_steps must be at least 1 for the linear schedule",
        ),
        (c.optim.decay_start >= 0, "optim.decay_start must be 0 or more"),
        (c.train.max_steps >= 1, "train.max_steps must be at least 1"),
        (c.train.threads >= 0, "train.threads must be 0 or more"),
        (c.train.val_slices >= 0, "train.val_slices must be 0 or more"),
        (c.train.amp in ("auto", "bf16", "off"), "train.amp must be 'auto', 'bf16' or 'off'"),
        (c.train.image_pool >= 0, "train.image_pool must be 0 or more"),
        (
            c.train.compile in COMPILE_MODES,
            f"train.compile must be one of {', '.join(repr(m) for m in COMPILE_MODES)}",
        ),
        (c.train.log_every >= 1, "train.log_every must be at least 1"),
        (c.train.val_every >= 0, "train.val_every must be 0 or more"),
        (c.train.checkpoint_every >= 1, "train.checkpoint_every must be at least 1"),
        (c.train.keep_checkpoints >= 0, "train.keep_checkpoints must be 0 or more"),
        (
            len(c.train.val_window) == 2 and c.train.val_window[0] < c.train.val_window[1],
            "train.val_window must be [low, high] with low < high",
        ),
        (c.loss.lambda_cycle >= 0 and c.loss.lambda_identity >= 0, "loss weights must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise CTDenoiseError(f"invalid config: {message}")
    HUNormalization(**dataclasses.asdict(c.normalization))  # raises on a bad scale or range
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (as read from YAML)."""
    return validate(_build(Config, data or {}, ""))


def load_config(path: Union[str, Path]) -> Config:
    """Read a YAML config file; relative ``data.cache`` is resolved against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise CTDenoiseError(f"config file {path} does not exist: write one (see 'ctdenoise train --print-config')")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CTDenoiseError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    except UnicodeDecodeError:
        raise CTDenoiseError(f"config file {path} is not UTF-8 text: save it as UTF-8") from None
    config = config_from_dict(data)
    if config.data.cache and not Path(config.data.cache).is_absolute():
        config.data.cache = str((path.parent / config.data.cache).resolve())
    return config


def documented_defaults() -> str:
    """The default configuration as YAML with each field's documentation as a comment."""
    lines: list[str] = []
    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:")
        instance = getattr(Config(), section.name)
        for f in dataclasses.fields(instance):
            value = yaml.safe_dump(getattr(instance, f.name), default_flow_style=True).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"  # {f.metadata['doc']}")
            lines.append(f"  {f.name}: {value}")
    return "\n".join(lines) + "\n"
