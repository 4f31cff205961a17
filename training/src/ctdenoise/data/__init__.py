"""Training data: layout discovery, the prepared int16 cache, and unpaired patch sampling."""

from __future__ import annotations

from ctdenoise.data.cache import CacheEntry, CacheIndex, check_cache_target, load_cache, prepare_cache
from ctdenoise.data.layouts import (
    ScanRecord,
    discover_dataset,
    discover_full_dose,
    discover_pair,
    split_by_patient,
)
from ctdenoise.data.sampling import StepDataset, UnpairedPatchSampler, paired_validation_slices

__all__ = [
    "check_cache_target",
    "CacheEntry",
    "CacheIndex",
    "ScanRecord",
    "StepDataset",
    "UnpairedPatchSampler",
    "discover_dataset",
    "discover_full_dose",
    "discover_pair",
    "load_cache",
    "paired_validation_slices",
    "prepare_cache",
    "split_by_patient",
]
