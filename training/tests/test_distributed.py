"""Multi-process training with torchrun (Gloo on CPU): the same code path as many GPUs with NCCL.

Two processes sharing a global batch train the same model as one process with that batch, and a
run resumes exactly with another number of processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ctdenoise.checkpoints import load_checkpoint, load_torch_safely
from ctdenoise.data import discover_full_dose, prepare_cache, split_by_patient
from ctdenoise.io import read_volume, write_volume
from ctdenoise.training import load_config, train

pytestmark = pytest.mark.slow

# Float32 sums in another order (one batch of 4, two of 2) differ in the last bits, and Adam's first
# steps, m / sqrt(v), magnify that for near-zero gradients; so the runs are compared by the size of
# their difference relative to how far the weights moved. Runs on other batches differ by ~100%.
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny real-CT run: 2 training slices, global batch 4, image pool on (it sees the global batch)."""
    tmp = tmp_path_factory.mktemp("distributed")
    volume = read_volume(data_dir / "totalsegmentator" / "example_ct_dicom")
    full = tmp / "full"
    full.mkdir()
    for name, part in (("a", volume.array[0:3, 128:384, 128:384]), ("b", volume.array[12:14, 128:384, 128:384])):
        write_volume(type(volume)(part, volume.spacing, volume.origin, volume.direction), full / f"{name}.nii.gz")
    prepare_cache(split_by_patient(discover_full_dose(full), val_patients=["b"]), tmp / "cache", simulate_dose=0.25)
    config = {
        "data": {"cache": str(tmp / "cache"), "patch_size": 80, "batch_size": 4},
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
            "image_pool": 3,
        },
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _torchrun(config: Path, out: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "ctdenoise.cli", "train", "--config", str(config), "--out", str(out), "--quiet", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(path: Path) -> torch.Tensor:
    """All four networks' weights of a training state, as one vector."""
    models = load_torch_safely(path)["models"]
    return torch.cat([models[net][key].double().ravel() for net in sorted(models) for key in sorted(models[net])])


def _relative_difference(a: Path, b: Path, start: Path) -> float:
    """|a - b| over how far ``a`` moved from ``start``."""
    return float((_weights(a) - _weights(b)).norm() / (_weights(a) - _weights(start)).norm())


def test_two_processes_train_what_one_process_trains_and_resume_across_world_sizes(
    tmp_path: Path, config_path: Path
) -> None:
    one = train(load_config(config_path), tmp_path / "one", progress=False)
    assert one.step == 4

    _torchrun(config_path, tmp_path / "two")
    state = load_torch_safely(tmp_path / "two" / "last.pt")
    assert state["step"] == 4
    one_state, midway = tmp_path / "one" / "last.pt", tmp_path / "one" / "checkpoints" / "step_0000002.pt"
    assert _relative_difference(one_state, tmp_path / "two" / "last.pt", midway) < TOLERANCE
    assert len(state["pool"]["F"]["images"]) == 3  # the pool filled from the global batch
    model = load_checkpoint(tmp_path / "two" / "model.safetensors")
    assert model.metadata["training"]["world_size"] == 2 and model.metadata["training"]["steps"] == 4
    # only rank 0 writes: one TensorBoard file, one validation line
    assert len(list((tmp_path / "two" / "tb").iterdir())) == 1
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 1

    # 2 steps on one process, then resumed on two: the same weights as 4 steps on one process
    train(load_config(config_path), tmp_path / "mixed", max_steps=2, progress=False)
    _torchrun(config_path, tmp_path / "mixed", "--resume")
    assert load_torch_safely(tmp_path / "mixed" / "last.pt")["step"] == 4
    assert _relative_difference(one_state, tmp_path / "mixed" / "last.pt", midway) < TOLERANCE


def test_gradients_are_averaged_while_backward_runs() -> None:
    """The objectives are plain modules whose single forward covers the whole loss (what DDP needs)."""
    from ctdenoise.networks import build_discriminator, build_generator
    from ctdenoise.training.objectives import DiscriminatorObjective, GeneratorObjective

    torch.manual_seed(0)
    g_f2q, g_q2f = (build_generator("fast", ngf=4, n_res_blocks=1) for _ in range(2))
    d_f, d_q = (build_discriminator(ndf=4) for _ in range(2))
    objective = GeneratorObjective(g_f2q, g_q2f, (d_f, d_q), 10.0, 5.0)
    assert {name.split(".")[0] for name, _ in objective.named_parameters()} == {"g_f2q", "g_q2f"}
    x = torch.randn(2, 1, 80, 80)
    total, terms, fake_f, fake_q = objective(x, x)
    total.backward()
    assert all(p.grad is not None for p in objective.parameters())
    assert fake_f.shape == fake_q.shape == x.shape and set(terms) >= {"total"}
    critic = DiscriminatorObjective(d_f, d_q)
    assert len(list(critic.parameters())) == len(list(d_f.parameters())) * 2
