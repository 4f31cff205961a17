"""CT physics: a parallel-beam projector and projection-domain low-dose simulation."""

from ctdenoise.physics.lowdose import (
    DEFAULT_ELECTRONIC_NOISE,
    DEFAULT_KERNEL,
    DEFAULT_PHOTONS,
    DEFAULT_VIEWS,
    MU_WATER_PER_MM,
    calibrate,
    match_kernel,
    simulate_low_dose,
    simulate_volume,
)
from ctdenoise.physics.projector import (
    FILTERS,
    back_project,
    filtered_backprojection,
    forward_project,
    parallel_angles,
)

__all__ = [
    "DEFAULT_ELECTRONIC_NOISE",
    "DEFAULT_KERNEL",
    "DEFAULT_PHOTONS",
    "DEFAULT_VIEWS",
    "FILTERS",
    "MU_WATER_PER_MM",
    "calibrate",
    "match_kernel",
    "back_project",
    "filtered_backprojection",
    "forward_project",
    "parallel_angles",
    "simulate_low_dose",
    "simulate_volume",
]
