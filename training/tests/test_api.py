"""One API for every shell: the public names, their examples, the options object, the device resolver, imports."""

from __future__ import annotations

import argparse
import doctest
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ctdenoise
from ctdenoise import DenoiseOptions, devices
from ctdenoise.cli import build_parser
from ctdenoise.errors import CTDenoiseError

TRAINING = Path(__file__).resolve().parents[1]
DATA = TRAINING.parent / "data"
EXAMPLE_MODULES = [
    "ctdenoise",
    "ctdenoise.options",
    "ctdenoise.orientation",
    "ctdenoise.hu",
    "ctdenoise.normalization",
    "ctdenoise.progress",
    "ctdenoise.modelfile",
    "ctdenoise.inference",
    "ctdenoise.io.readers",
    "ctdenoise.io.writers",
    "ctdenoise.io.volume",
    "ctdenoise.devices",
    "ctdenoise.checkpoints",
    "ctdenoise.errors",
    "ctdenoise.physics.lowdose",
]


def test_every_public_name_resolves_and_has_an_example() -> None:
    for name in ctdenoise.__all__:
        value = getattr(ctdenoise, name)
        if name == "__version__":
            continue
        doc = inspect.getdoc(value) or ""
        assert "Examples:" in doc, f"{name} has no Examples section"


@pytest.mark.parametrize("module", EXAMPLE_MODULES)
def test_the_examples_in_docstrings_run(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TRAINING)  # examples name files as ../data/...
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0 and result.attempted > 0, module


def test_tta_takes_auto_or_a_number_of_views_on_the_command_line() -> None:
    from ctdenoise.options import tta_argument

    assert tta_argument("AUTO") == "auto" and tta_argument("8") == 8
    with pytest.raises(argparse.ArgumentTypeError, match="not auto or an integer"):
        tta_argument("all")
    assert DenoiseOptions().tta == "auto" and DenoiseOptions(tta=1).to_cli_args() == ["--tta", "1"]
    assert DenoiseOptions.from_cli(build_parser().parse_args(["denoise", "a", "b", "--tta", "auto"])).tta == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["denoise", "a", "b", "--tta", "3"])


@pytest.mark.parametrize(
    "options",
    [
        DenoiseOptions(),
        DenoiseOptions(strength=0.35, device="cuda:1", batch_size=3),
        DenoiseOptions(runtime="torch", precision="fp32", tile_size=128, force=True, tta=8),
    ],
)
def test_options_round_trip_through_the_command_line(options: DenoiseOptions) -> None:
    args = build_parser().parse_args(["denoise", "in.nii.gz", "out.nii.gz", *options.to_cli_args()])
    assert DenoiseOptions.from_cli(args) == options


def test_one_device_resolver_picks_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("auto", allowed=("cpu",)) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert devices.resolve_device(None) == torch.device("mps")
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")


def test_device_errors_say_how_to_fix_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctdenoise.physics.lowdose import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "nvidia_driver_present", lambda: True)
    with pytest.raises(CTDenoiseError, match="NVIDIA driver but this PyTorch has no CUDA support: .*CUDA build"):
        devices.resolve_device("cuda")
    with pytest.raises(CTDenoiseError, match="unknown device 'tpu0'"):
        devices.resolve_device("tpu0")
    with pytest.raises(CTDenoiseError, match="not supported for low-dose simulation: use auto, cpu, cuda, cuda:N"):
        _device("mps")
    notes = devices.describe_devices()["notes"]
    assert notes and "NVIDIA driver is present" in notes[0]


def test_importing_ctdenoise_and_reading_a_model_needs_no_torch() -> None:
    code = "import sys, ctdenoise; ctdenoise.read_model(ctdenoise.bundled_model_path()); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_denoise_path_imports_no_plotting_logging_or_monai(tmp_path: Path) -> None:
    source = DATA / "tcga_lung_ctmi" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"
    code = (
        "import sys; from ctdenoise.cli import main; "
        f"status = main(['denoise', {str(source)!r}, {str(tmp_path / 'o.nii.gz')!r}, '--progress', 'none', "
        "'--runtime', 'torch']); "
        "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'tensorboard', 'monai', "
        "'scipy', 'yaml'}))"  # tqdm is left out: pydicom imports it
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []"
