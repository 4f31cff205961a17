"""Tests of the Slicer module that run without Slicer: CycleGANDenoiseLib, the engine subprocess, static checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "CycleGANDenoise"
sys.path.insert(0, str(MODULE_DIR))  # CycleGANDenoiseLib, as Slicer puts the module folder on sys.path


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository."""
    return ROOT


@pytest.fixture(scope="session")
def module_dir() -> Path:
    """The module folder (CycleGANDenoise/)."""
    return MODULE_DIR
