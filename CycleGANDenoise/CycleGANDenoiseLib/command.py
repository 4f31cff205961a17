"""The engine command line and environment of one run (the module calls the ``ctdenoise`` CLI)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

from ctdenoise.options import DenoiseOptions


def denoise_command(
    python: str,
    input_path: Path,
    output_path: Path,
    options: DenoiseOptions,
    checkpoint: Optional[Union[str, Path]] = None,
) -> list[str]:
    """``python -u -m ctdenoise.cli denoise IN OUT --progress json ...`` for one run.

    ``checkpoint`` is a model file or a bundled model's name (None: the default bundled model).

    The child always denoises at full strength (the module blends live); every other option goes
    through :meth:`DenoiseOptions.to_cli_args`, so the module and the command line cannot drift.
    """
    full = replace(options, strength=1.0)
    command = [python, "-u", "-m", "ctdenoise.cli", "denoise", str(input_path), str(output_path), "--progress", "json"]
    command += full.to_cli_args()
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    return command


def engine_environment(
    engine_dir: Path, base: Optional[dict[str, str]] = None, *, cpu_only: bool = False
) -> dict[str, str]:
    """Variables for the child: the bundled engine first on ``PYTHONPATH``, unbuffered UTF-8 output.

    ``cpu_only`` hides GPUs from the child (``CUDA_VISIBLE_DEVICES=-1``), as a CPU run asks.
    """
    paths: Sequence[str] = [str(engine_dir)]
    inherited = (base or {}).get("PYTHONPATH") or ""
    environment = {
        "PYTHONPATH": os.pathsep.join([*paths, inherited]) if inherited else paths[0],
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    if cpu_only:
        environment["CUDA_VISIBLE_DEVICES"] = "-1"
    return environment
