"""CycleGAN networks: generators (seed and fast presets), the PatchGAN discriminator, complexity figures."""

from __future__ import annotations

from ctdenoise.networks.complexity import count_flops, count_parameters, model_summary_rows
from ctdenoise.networks.discriminators import PatchDiscriminator, build_discriminator, receptive_field
from ctdenoise.networks.generators import (
    GENERATOR_PRESETS,
    FastGenerator,
    SeedGenerator,
    build_generator,
    init_weights,
    zero_residual,
)

__all__ = [
    "GENERATOR_PRESETS",
    "FastGenerator",
    "PatchDiscriminator",
    "SeedGenerator",
    "build_discriminator",
    "build_generator",
    "count_flops",
    "count_parameters",
    "init_weights",
    "model_summary_rows",
    "receptive_field",
    "zero_residual",
]
