"""Multi-process training with torchrun (Gloo on CPU): the same code path as many GPUs with NCCL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctdenoise.checkpoints import load_checkpoint, load_torch_safely
from ctdenoise.data import discover_full_dose, prepare_cache, split_by_patient
from ctdenoise.io import read_volume, write_volume

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_train_in_sync(tmp_path: Path, data_dir: Path) -> None:
    volume = read_volume(data_dir / "totalsegmentator" / "example_ct_dicom")
    full = tmp_path / "full"
    full.mkdir()
    for name, part in (("a", volume.array[0:3, 128:384, 128:384]), ("b", volume.array[12:14, 128:384, 128:384])):
        write_volume(type(volume)(part, volume.spacing, volume.origin, volume.direction), full / f"{name}.nii.gz")
    prepare_cache(
        split_by_patient(discover_full_dose(full), val_patients=["b"]), tmp_path / "cache", simulate_dose=0.25
    )
    config = {
        "data": {"cache": str(tmp_path / "cache"), "patch_size": 80, "batch_size": 1},
        "model": {
            "generator": "fast",
            "generator_args": {"ngf": 8, "n_res_blocks": 1},
            "discriminator_args": {"ndf": 8},
        },
        "train": {
            "max_steps": 4,
            "val_every": 0,
            "val_slices": 1,
            "checkpoint_every": 2,
            "threads": 1,
            "device": "cpu",
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ctdenoise.cli",
        "train",
        "--config",
        str(tmp_path / "config.yaml"),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_torch_safely(out / "last.pt")
    assert state["step"] == 4
    model = load_checkpoint(out / "model.safetensors")
    assert model.metadata["training"]["world_size"] == 2
    assert model.metadata["training"]["steps"] == 4
