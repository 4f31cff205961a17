"""Training: configuration, the CycleGAN loop, the image pool."""

from ctdenoise.training.config import Config, config_from_dict, documented_defaults, load_config
from ctdenoise.training.trainer import Trainer, TrainResult, step_loader, to_device, train

__all__ = [
    "Config",
    "TrainResult",
    "Trainer",
    "config_from_dict",
    "documented_defaults",
    "load_config",
    "step_loader",
    "to_device",
    "train",
]
