"""End to end on real CT: prepare + simulate + train on CPU + kill + resume (exactly) + export."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ctdenoise.checkpoints import load_checkpoint, load_torch_safely
from ctdenoise.cli import main
from ctdenoise.errors import CTDenoiseError
from ctdenoise.export import second_pass_threshold
from ctdenoise.io import read_volume, write_volume
from ctdenoise.modelfile import read_model
from ctdenoise.training import load_config, train

pytestmark = pytest.mark.slow

TINY_MODEL = {"generator": "fast", "generator_args": {"ngf": 8, "n_res_blocks": 2}, "discriminator_args": {"ndf": 16}}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Two 'patients' cut from the real abdomen series (256x256 centre crops), quarter dose simulated."""
    root = tmp_path_factory.mktemp("e2e")
    volume = read_volume(data_dir / "totalsegmentator" / "example_ct_dicom")
    full = root / "full"
    full.mkdir()
    for name, slices in (("patientA", slice(0, 6)), ("patientB", slice(10, 14))):
        part = volume.array[slices, 128:384, 128:384]
        write_volume(type(volume)(part, volume.spacing, volume.origin, volume.direction), full / f"{name}.nii.gz")
    cache = root / "cache"
    assert (
        main(
            [
                "prepare",
                str(full),
                "--layout",
                "full",
                "--simulate-dose",
                "0.25",
                "--val-patients",
                "patientB",
                "--out",
                str(cache),
                "--quiet",
            ]
        )
        == 0
    )
    return cache


def _config(tmp_path: Path, cache: Path, **train: object) -> Path:
    config = {
        "data": {"cache": str(cache), "patch_size": 96, "batch_size": 2},
        "model": TINY_MODEL,
        "optim": {"schedule": "step", "step_size": 7, "gamma": 0.5},
        "train": {
            "max_steps": 30,
            "seed": 3,
            "image_pool": 4,
            "log_every": 5,
            "val_every": 10,
            "val_slices": 2,
            "checkpoint_every": 10,
            "threads": 1,
            **train,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_train_kill_resume_is_exact_and_exports(tmp_path: Path, cache_dir: Path) -> None:
    config_path = _config(tmp_path, cache_dir)
    straight = tmp_path / "straight"
    result = train(load_config(config_path), straight, progress=False)
    assert result.step == 30 and result.model_path == straight / "model.safetensors"
    assert {"denoised", "low_dose_input", "convention"} <= set(result.metrics)
    assert result.metrics["convention"]["window_hu"] == [-160.0, 240.0]
    assert len((straight / "metrics.jsonl").read_text().splitlines()) == 3  # steps 10, 20, 30
    assert list((straight / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (straight / "checkpoints").glob("*.pt"))[-1] == "step_0000030.pt"

    # The same run as a separate process, killed hard after its first periodic checkpoint ...
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "ctdenoise.cli",
        "train",
        "--config",
        str(config_path),
        "--out",
        str(killed),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / "checkpoints" / "step_0000010.pt"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    saved_step = load_torch_safely(killed / "last.pt")["step"]
    assert 10 <= saved_step < 30
    assert not (killed / "model.safetensors").exists()

    # ... then resumed: the result is bit-identical to the uninterrupted run.
    assert main(["train", "--config", str(config_path), "--out", str(killed), "--resume", "--quiet"]) == 0
    a, b = _weights(straight / "model.safetensors"), _weights(killed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state_a = load_torch_safely(straight / "last.pt")
    state_b = load_torch_safely(killed / "last.pt")
    assert state_a["optimizers"]["G"]["state"][0]["exp_avg"].equal(state_b["optimizers"]["G"]["state"][0]["exp_avg"])
    assert state_a["schedulers"]["G"] == state_b["schedulers"]["G"]
    assert all(torch.equal(x, y) for x, y in zip(state_a["pool"]["F"]["images"], state_b["pool"]["F"]["images"]))

    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]  # validations after the resumed state were dropped, not duplicated

    # export from the training state gives the same weights as the automatic export
    exported = tmp_path / "exported.safetensors"
    assert main(["export", str(killed), "--out", str(exported)]) == 0
    c = _weights(exported)
    assert all(torch.equal(a[k], c[k]) for k in a)
    model = load_checkpoint(exported)
    meta = model.metadata
    assert meta["training"]["steps"] == 30 and meta["patch_size"] == 96
    assert meta["training"]["data"]  # the cache summary travels with the model
    assert meta["metrics"]["denoised"]["psnr"] > 0
    assert meta["generator"]["args"]["ngf"] == 8
    assert meta["training"]["config"]["data"]["cache"] == cache_dir.name  # no local paths in shared models
    assert str(cache_dir.parent) not in json.dumps(meta)
    assert (exported.stat().st_mode & 0o777) == 0o666 & ~_umask()  # not the owner-only mode of temp files

    # re-exported with a second pass: the threshold is measured on the cache's full-dose training slices
    twice = tmp_path / "twice.safetensors"
    assert main(["export", str(exported), "--out", str(twice), "--second-pass"]) == 2  # no cache to measure on
    assert not twice.exists()
    assert main(["export", str(exported), "--out", str(twice), "--cache", str(cache_dir), "--second-pass"]) == 0
    meta = read_model(twice).metadata
    figures = second_pass_threshold(cache_dir)
    assert (
        meta["second_pass_noise_hu"]
        == figures["second_pass_noise_hu"]
        == meta["training"]["second_pass"]["second_pass_noise_hu"]
    )
    assert figures["slices"] == 6 and 5.0 < figures["median_hu"] <= figures["second_pass_noise_hu"] < 40.0
    assert all(torch.equal(a[k], b[k]) for b in [_weights(twice)] for k in a)  # the weights are untouched
    # a threshold of its own for fine pixels, given at export; a plain --second-pass drops it again
    fine, plain = tmp_path / "fine.safetensors", tmp_path / "plain.safetensors"
    assert main(["export", str(exported), "--out", str(fine), "--second-pass-fine", "1.0", "17"]) == 2
    assert main(["export", str(twice), "--out", str(fine), "--cache", str(cache_dir), "--second-pass",
                 "--second-pass-fine", "0", "17"]) == 2  # fmt: skip
    assert not fine.exists()
    args = ["--cache", str(cache_dir), "--second-pass", "--second-pass-fine", "1.0", "17"]
    assert main(["export", str(twice), "--out", str(fine), *args]) == 0
    model = read_model(fine)
    assert model.second_pass_fine == (1.0, 17.0) and model.metadata["training"]["second_pass"]["fine"]["noise_hu"] == 17
    assert model.second_pass_threshold((0.7, 0.7)) == 17.0
    assert model.second_pass_threshold((0.7, 1.2)) == model.second_pass_threshold(None) == meta["second_pass_noise_hu"]
    assert main(["export", str(fine), "--out", str(plain), "--cache", str(cache_dir), "--second-pass"]) == 0
    assert (
        read_model(plain).second_pass_fine is None
        and "fine" not in read_model(plain).metadata["training"]["second_pass"]
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_training_changes_weights_and_lr_follows_schedule(tmp_path: Path, cache_dir: Path) -> None:
    config = load_config(_config(tmp_path, cache_dir, max_steps=8, val_every=0, checkpoint_every=100, image_pool=0))
    from ctdenoise.training import Trainer

    trainer = Trainer(config, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.g_q2f.state_dict().items()}
    full, low = trainer.sampler.batch(0)
    x_f = trainer.normalization.normalize(torch.from_numpy(full))
    x_q = trainer.normalization.normalize(torch.from_numpy(low))
    for _ in range(8):
        losses = trainer.train_step(x_f, x_q)
        trainer.step += 1
    assert set(losses) >= {"total", "loss_D_F", "loss_D_Q"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    after = trainer.g_q2f.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5)  # StepLR(7, 0.5) after 8 steps
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(2e-4)  # the seed decays generators only


def test_discriminator_options_reach_the_trainer(tmp_path: Path, cache_dir: Path) -> None:
    config = load_config(_config(tmp_path, cache_dir, max_steps=2, val_every=0, image_pool=0))
    config.model.discriminator_args.update(norm="none", highpass_sigma=1.0)
    from ctdenoise.training import Trainer

    trainer = Trainer(config, tmp_path / "run")
    assert trainer.d_f.highpass_sigma == 1.0
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in trainer.d_q.modules())
    before = {k: v.clone() for k, v in trainer.d_f.state_dict().items()}
    full, low = trainer.sampler.batch(0)
    losses = trainer.train_step(
        trainer.normalization.normalize(torch.from_numpy(full)), trainer.normalization.normalize(torch.from_numpy(low))
    )
    assert np.isfinite(float(losses["loss_D_F"]))
    assert any(not torch.equal(before[k], v) for k, v in trainer.d_f.state_dict().items())


def test_identity_init_starts_both_generators_as_the_identity(tmp_path: Path, cache_dir: Path) -> None:
    config = load_config(_config(tmp_path, cache_dir, max_steps=2, val_every=0, image_pool=0))
    config.model.generator_init = "identity"
    from ctdenoise.training import Trainer

    trainer = Trainer(config, tmp_path / "run")
    full, low = trainer.sampler.batch(0)
    x = trainer.normalization.normalize(torch.from_numpy(low))
    with torch.no_grad():
        assert torch.equal(trainer.g_q2f(x), x) and torch.equal(trainer.g_f2q(x), x)
    trainer.train_step(trainer.normalization.normalize(torch.from_numpy(full)), x)
    with torch.no_grad():
        assert not torch.equal(trainer.g_q2f(x), x)  # the zeroed layer still learns


def test_the_trainers_own_step_isolates_generator_and_discriminator_gradients(tmp_path: Path, cache_dir: Path) -> None:
    """Trainer.train_step: the generator update sees no discriminator gradient, the discriminator
    update leaves the generators' gradients as they were, and each optimizer moves only its networks."""
    from ctdenoise.training.trainer import Trainer

    trainer = Trainer(load_config(_config(tmp_path, cache_dir)), tmp_path / "run")
    gens, discs = (trainer.g_f2q, trainer.g_q2f), (trainer.d_f, trainer.d_q)
    seen: dict[str, object] = {}
    real_g_step, real_d_step = trainer.opt_g.step, trainer.opt_d.step

    def g_step(*args: object, **kwargs: object) -> object:
        seen["d_grads_at_g_step"] = [p.grad for d in discs for p in d.parameters()]
        seen["g_grads"] = [p.grad.clone() for g in gens for p in g.parameters()]
        seen["d_before"] = [p.detach().clone() for d in discs for p in d.parameters()]
        return real_g_step(*args, **kwargs)

    def d_step(*args: object, **kwargs: object) -> object:
        seen["g_grads_at_d_step"] = [p.grad.clone() for g in gens for p in g.parameters()]
        seen["d_grads"] = [p.grad for d in discs for p in d.parameters()]
        seen["g_before_d_step"] = [p.detach().clone() for g in gens for p in g.parameters()]
        seen["d_at_d_step"] = [p.detach().clone() for d in discs for p in d.parameters()]
        return real_d_step(*args, **kwargs)

    trainer.opt_g.step, trainer.opt_d.step = g_step, d_step  # type: ignore[method-assign]
    g_start = [p.detach().clone() for g in gens for p in g.parameters()]
    full, low = trainer.sampler.batch(0)
    trainer.train_step(*(torch.as_tensor(trainer.normalization.normalize(b.astype(np.float32))) for b in (full, low)))
    assert all(grad is None for grad in seen["d_grads_at_g_step"])  # type: ignore[union-attr]
    assert all(float(g.abs().sum()) > 0 for g in seen["g_grads"])  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(seen["g_grads"], seen["g_grads_at_d_step"]))  # type: ignore[arg-type]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in seen["d_grads"])  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(seen["d_before"], seen["d_at_d_step"]))  # type: ignore[arg-type]
    d_now = [p.detach() for d in discs for p in d.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(seen["d_at_d_step"], d_now))  # type: ignore[arg-type]
    g_now = [p.detach() for g in gens for p in g.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(g_start, g_now))  # the generator step moved the generators
    assert all(torch.equal(a, b) for a, b in zip(seen["g_before_d_step"], g_now))  # ... and the D step did not


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path: Path, cache_dir: Path) -> None:
    config_path = _config(tmp_path, cache_dir, max_steps=2, val_every=0)
    out = tmp_path / "run"
    with pytest.raises(CTDenoiseError, match="--resume given but"):
        train(load_config(config_path), out, resume=True, progress=False)
    train(load_config(config_path), out, progress=False)
    with pytest.raises(CTDenoiseError, match="already holds a run"):
        train(load_config(config_path), out, progress=False)
    changed = yaml.safe_load(config_path.read_text())
    changed["optim"]["lr"] = 1e-3
    config_path.write_text(yaml.safe_dump(changed))
    with pytest.raises(CTDenoiseError, match="config key optim.lr differs"):
        train(load_config(config_path), out, resume=True, progress=False)
    changed["optim"]["lr"] = 2e-4
    changed["model"]["generator_args"]["ngf"] = 16
    config_path.write_text(yaml.safe_dump(changed))
    with pytest.raises(CTDenoiseError, match="config key model.generator_args differs"):
        train(load_config(config_path), out, resume=True, progress=False)


def test_sigterm_stops_cleanly_and_the_run_resumes(tmp_path: Path, cache_dir: Path) -> None:
    config_path = _config(tmp_path, cache_dir, max_steps=100000, val_every=0, checkpoint_every=1000)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctdenoise.cli", "train", "--config", str(config_path), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (out / "tb").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "continue with --resume" in stdout
    state = load_torch_safely(out / "last.pt")
    assert state["step"] > 0
    assert (
        main(
            [
                "train",
                "--config",
                str(config_path),
                "--out",
                str(out),
                "--resume",
                "--max-steps",
                str(state["step"] + 2),
                "--quiet",
            ]
        )
        == 0
    )
    assert load_torch_safely(out / "last.pt")["step"] == state["step"] + 2


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stepz: 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key train.max_stepz") and err.count("\n") == 1
    assert main(["train", "--print-config"]) == 0
    assert "lambda_cycle: 10.0" in capsys.readouterr().out
    missing_cache = tmp_path / "nocache.yaml"
    missing_cache.write_text(json.dumps({"data": {"cache": "does-not-exist"}}))
    assert main(["train", "--config", str(missing_cache), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_distill_augmentation_gives_the_eight_views_and_the_negated_noise() -> None:
    """Each view is a distinct mirror/turn of input and target alike; negated noise is clipped as HU is."""
    from ctdenoise.distill import DistillSettings, _augmented
    from ctdenoise.normalization import HUNormalization

    norm = HUNormalization(hu_min=-1024.0, hu_max=3071.0, offset=0.0, scale=1000.0)
    rng = np.random.default_rng(0)
    full = rng.normal(0.0, 0.2, (1, 1, 6, 10)).astype(np.float32)
    full[..., 0, 0] = -1.0  # air, where the negated noise would pass below -1024 HU
    low = full + rng.normal(0.0, 0.05, full.shape).astype(np.float32)
    low[..., 0, 0] = -0.95  # +50 HU of noise in air
    views = [_augmented(low, full, view, 1.0, norm) for view in range(8)]
    assert np.array_equal(views[0][0], low) and np.array_equal(views[0][1], full)
    assert len({v[1].tobytes() for v in views}) == 8  # eight distinct images
    for x, y in views:  # input and target move together, and 90-degree turns swap the sides
        assert y.shape in ((1, 1, 6, 10), (1, 1, 10, 6))
        assert np.allclose(np.sort((x - y).ravel()), np.sort((low - full).ravel()))
    assert np.array_equal(views[1][1], full[..., ::-1]) and np.array_equal(views[4][1], np.rot90(full, 1, axes=(2, 3)))
    x, y = _augmented(low, full, 0, -1.0, norm)
    assert np.allclose((x - y)[..., 1:, :], -(low - full)[..., 1:, :], atol=1e-6) and np.array_equal(y, full)
    assert x[0, 0, 0, 0] == pytest.approx(-1.024)  # -1050 HU clipped to the range, as a real input would be
    x, y = _augmented(low, full, 0, 1.7, norm)  # scaled noise: a noisier input of the same anatomy
    assert np.allclose(x - y, 1.7 * (low - full), atol=1e-6) and np.array_equal(y, full)
    x, y = _augmented(full, full, 3, -1.5, norm)  # full dose paired with itself stays unchanged
    assert np.array_equal(x, y)
    with pytest.raises(CTDenoiseError, match="augment must be true or false"):
        DistillSettings({}, augment="yes")  # type: ignore[arg-type]
    with pytest.raises(CTDenoiseError, match="noise scale must be a number of at least 1"):
        DistillSettings({}, target="full", augment=True, noise_scale=0.5)
    with pytest.raises(CTDenoiseError, match="use it with --target full and --augment"):
        DistillSettings({}, target="full", noise_scale=2.0)


def test_validation_slices_of_different_sizes(tmp_path: Path, data_dir: Path) -> None:
    """A validation split of single slices from several scanners differs in size: training validates
    on all of them and a written model's metrics pool them (np.stack refused this once)."""
    from ctdenoise.data import load_cache
    from ctdenoise.export import validation_metrics, validation_pairs
    from ctdenoise.metrics import image_quality

    volume = read_volume(data_dir / "totalsegmentator" / "example_ct_dicom")
    full = tmp_path / "full"
    full.mkdir()
    for name, part in (
        ("train", volume.array[0:4, 128:384, 128:384]),
        ("valA", volume.array[10:12, 128:384, 128:384]),
        ("valB", volume.array[15:17, 160:352, 96:416]),
    ):
        write_volume(type(volume)(part, volume.spacing, volume.origin, volume.direction), full / f"{name}.nii.gz")
    cache = tmp_path / "cache"
    args = ["prepare", str(full), "--layout", "full", "--simulate-dose", "0.25", "--out", str(cache), "--quiet"]
    assert main(args + ["--val-patients", "valA", "valB"]) == 0
    pairs = validation_pairs(cache)
    assert {f.shape for f, _ in pairs} == {(256, 256), (192, 320)} and len(load_cache(cache).pairs("val")) == 2
    result = train(
        load_config(_config(tmp_path, cache, max_steps=4, val_every=4, val_slices=4, checkpoint_every=4)),
        tmp_path / "run",
        progress=False,
    )
    assert result.metrics["slices"] == 4 and math.isfinite(result.metrics["denoised"]["psnr"])
    checkpoint = load_checkpoint(result.model_path)
    metrics = validation_metrics(checkpoint, pairs)
    from ctdenoise.inference import denoise_array
    from ctdenoise.options import DenoiseOptions

    options = DenoiseOptions(device="cpu", runtime="torch", force=True)
    per_slice = [image_quality(denoise_array(low, checkpoint, options), f)["psnr"] for f, low in pairs]
    assert metrics["slices"] == len(pairs) and metrics["denoised"]["psnr"] == pytest.approx(
        np.mean(per_slice), abs=1e-3
    )
    assert metrics["low_dose_input"]["psnr"] == pytest.approx(np.mean([image_quality(q, f)["psnr"] for f, q in pairs]))


def test_fix_norms_gives_the_same_result_on_a_crop_as_on_the_whole_slice(tmp_path: Path, cache_dir: Path) -> None:
    """Instance norm makes the output depend on the field of view; frozen at training statistics it does not."""
    from ctdenoise import DenoiseOptions, Denoiser, read_model
    from ctdenoise.data import load_cache
    from ctdenoise.networks import build_generator
    from ctdenoise.norm_calibration import fix_norms

    teacher = train(
        load_config(_config(tmp_path, cache_dir, max_steps=6, val_every=0)), tmp_path / "teacher", progress=False
    ).model_path
    fixed = tmp_path / "fixed.safetensors"
    assert main(["fix-norms", str(teacher), "--cache", str(cache_dir), "--out", str(fixed), "--max-slices", "3"]) == 0
    model = read_model(fixed)
    assert model.generator_args["norm"] == "fixed" and set(model.graphs) >= {"fp32"}
    record = model.metadata["training"]["fixed_norms"]
    assert record["file"] == "model.safetensors" and record["slices"] == 6  # 3 low- and 3 full-dose slices
    assert model.metadata["metrics"]["denoised"]["psnr"] > 0  # measured anew on the validation pairs
    cache = load_cache(cache_dir)
    low = np.asarray(cache.array(cache.volumes(dose="low")[0])[:1], dtype=np.float32)  # 256 x 256
    window, inner = (slice(None), slice(64, 192), slice(64, 192)), (slice(None), slice(40, 88), slice(40, 88))

    def crop_vs_whole(path: Path) -> float:
        denoiser = Denoiser(path, DenoiseOptions(runtime="torch"))
        whole, crop = denoiser.array(low)[window], denoiser.array(np.ascontiguousarray(low[window]))
        return float(np.abs(crop[inner] - whole[inner]).max())

    assert crop_vs_whole(fixed) < 0.01 < crop_vs_whole(teacher)  # beyond the receptive field, crops agree
    with pytest.raises(CTDenoiseError, match="has fixed norms already: use it as it is"):
        fix_norms(fixed, cache_dir, tmp_path / "again.safetensors")
    with pytest.raises(CTDenoiseError, match="max slices must be a positive integer"):
        fix_norms(teacher, cache_dir, tmp_path / "none.safetensors", max_slices=0)
    with pytest.raises(CTDenoiseError, match="option norm='batch' is invalid: use one of instance, fixed"):
        build_generator("fast", norm="batch")


def test_average_writes_the_weighted_mean_of_compatible_models(tmp_path: Path, cache_dir: Path) -> None:
    """`ctdenoise average`: the weighted mean of the weights, a valid model, its parts recorded."""
    from ctdenoise import read_model
    from ctdenoise.export import write_model_from_cache
    from ctdenoise.norm_calibration import fix_norms
    from ctdenoise.weight_averaging import average_models

    first = train(
        load_config(_config(tmp_path, cache_dir, max_steps=4, val_every=0)), tmp_path / "first", progress=False
    ).model_path
    state = {k: v for k, v in load_file(first).items() if k.startswith("G_Q2F.")}
    moved = {k.removeprefix("G_Q2F."): v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    second = write_model_from_cache(moved, read_model(first).metadata, tmp_path / "second.safetensors", cache_dir)
    out, before = tmp_path / "mean.safetensors", first.read_bytes()
    args = ["average", str(first), str(second), "--weights", "3", "1", "--cache", str(cache_dir), "--out", str(out)]
    assert main(args) == 0
    averaged = load_file(out)
    for key, value in state.items():
        if value.is_floating_point():
            torch.testing.assert_close(averaged[key], value + 0.0025, rtol=0, atol=1e-6)
    model = read_model(out)
    record = model.metadata["training"]["averaged"]
    assert [(m["file"], m["weight"]) for m in record["models"]] == [(first.name, 0.75), ("second.safetensors", 0.25)]
    assert set(model.graphs) >= {"fp32"} and model.metadata["metrics"]["denoised"]["psnr"] > 0
    assert first.read_bytes() == before  # inputs untouched
    with pytest.raises(CTDenoiseError, match="averaging needs at least two models, got 1: name two or more"):
        average_models([first], cache_dir, tmp_path / "one.safetensors")
    with pytest.raises(CTDenoiseError, match="got 1 weights for 2 models: give one weight per model"):
        average_models([first, second], cache_dir, tmp_path / "w.safetensors", weights=[1.0])
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("inf")]):
        with pytest.raises(CTDenoiseError, match="weights must be finite numbers of at least 0 with a positive sum"):
            average_models([first, second], cache_dir, tmp_path / "w.safetensors", weights=bad)
    fixed, _ = fix_norms(first, cache_dir, tmp_path / "fixed.safetensors", max_slices=1)
    with pytest.raises(CTDenoiseError, match="differ in their generator .* average only models fine-tuned from one"):
        average_models([first, fixed], cache_dir, tmp_path / "mixed.safetensors")
    assert main(["average", str(first), str(second), "--cache", str(cache_dir), "--out", str(first)]) == 2


def test_distill_writes_a_smaller_student_that_follows_its_teacher(tmp_path: Path, cache_dir: Path) -> None:
    """A tiny trained teacher distilled into a narrower student: a valid model with graphs, its teacher recorded."""
    from ctdenoise import DenoiseOptions, Denoiser, read_model
    from ctdenoise.distill import DistillSettings, distill

    teacher = train(
        load_config(_config(tmp_path, cache_dir, max_steps=6, val_every=0)), tmp_path / "teacher", progress=False
    ).model_path
    steps: list[int] = []
    path, agreement = distill(
        teacher,
        cache_dir,
        tmp_path / "student.safetensors",
        DistillSettings({"ngf": 4}, steps=12, batch_size=2, lr=2e-3),
        progress=lambda step, total, loss: steps.append(step),
    )
    assert steps == list(range(1, 13))
    student = read_model(path)
    assert student.generator_args["ngf"] == 4 and student.generator_args["n_res_blocks"] == 2
    distilled = student.metadata["training"]["distilled_from"]
    assert distilled["file"] == "model.safetensors" and distilled["generator_args"]["ngf"] == 8
    assert distilled["agreement"] == agreement and agreement["slices"] == 4  # the validation patient's 4 slices
    # the student (which starts as the identity) already follows the teacher more closely than the input does
    assert agreement["mean_abs_diff_hu"] < agreement["teacher_mean_abs_change_hu"]
    assert set(student.graphs) == {"fp32", "int8"}
    assert student.change_limit_hu >= 100 and student.metadata["training"]["change_limit"]["slices"] > 0
    from ctdenoise.data import load_cache

    cache = load_cache(cache_dir)
    low = np.asarray(cache.array(cache.volumes(dose="low")[0])[:1], dtype=np.float32)
    out = Denoiser(path, DenoiseOptions(runtime="onnxruntime")).array(low)
    assert out.shape == low.shape and np.abs(out - low).max() > 0
    with pytest.raises(CTDenoiseError, match="steps must be a positive integer"):
        DistillSettings({"ngf": 4}, steps=0)
    # Supervised: the same machinery regresses onto the paired full-dose slices, on random crops.
    losses: list[float] = []
    path, _ = distill(
        teacher,
        cache_dir,
        tmp_path / "supervised.safetensors",
        DistillSettings(
            {"ngf": 4, "residual_highpass_sigma": 0.0},
            steps=40,
            batch_size=2,
            lr=2e-3,
            target="full",
            crop=64,
            loss="l2",
            augment=True,
        ),
        progress=lambda step, total, loss: losses.append(loss),
    )
    supervised = read_model(path)
    record = supervised.metadata["training"]["supervised"]
    assert record["crop"] == 64 and record["method"].startswith("paired L2") and record["slices"] == 12  # 6 pairs x 2
    assert record["augment"] is True and record["identity_pairs"] is True
    assert supervised.generator_args["residual_highpass_sigma"] == 0.0
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    # Fine-tuning: a student that starts from the teacher's weights begins where the teacher is.
    path, tuned = distill(
        teacher,
        cache_dir,
        tmp_path / "tuned.safetensors",
        DistillSettings({}, steps=1, batch_size=2, lr=1e-9, init="teacher"),
    )
    assert tuned["p99_9_abs_diff_hu"] < 0.5 < agreement["p99_9_abs_diff_hu"]
    assert read_model(path).metadata["training"]["distilled_from"]["init"] == "teacher"
    # A low-pass tail added for fine-tuning starts silent: the student begins as the one without it.
    fine = {}
    for name, extra in (("highpass", {}), ("lowpass", {"lowpass_tail": True})):
        args = {"residual_highpass_sigma": 2.0, **extra}
        settings = DistillSettings(args, steps=1, batch_size=2, lr=1e-9, init="teacher", target="full", loss="l2")
        fine[name] = distill(teacher, cache_dir, tmp_path / f"{name}.safetensors", settings)
    assert fine["lowpass"][1]["p99_9_abs_diff_hu"] == pytest.approx(fine["highpass"][1]["p99_9_abs_diff_hu"], abs=0.05)
    lowpass = read_model(fine["lowpass"][0])
    assert lowpass.generator_args["lowpass_tail"] is True and "tail_low.1.weight" in lowpass.generator_tensors()
    assert set(lowpass.graphs) >= {"fp32"}
    path = tmp_path / "second.safetensors"  # a second round from the command line, augmented
    command = ["distill", str(fine["highpass"][0]), "--cache", str(cache_dir), "--out", str(path), "--steps", "1"]
    command += ["--lowpass-tail", "--target", "full", "--init", "teacher", "--lr", "1e-9", "--augment", "--quiet"]
    assert main([*command, "--no-identity-pairs", "--noise-scale", "1.5"]) == 0
    record = read_model(path).metadata["training"]["supervised"]  # the first round's record is kept inside
    assert record["augment"] is True and read_model(path).generator_args["lowpass_tail"] is True
    assert record["identity_pairs"] is False and record["slices"] == 6  # the 6 low -> full pairs alone
    assert record["noise_scale"] == 1.5
    assert record["file"] == "highpass.safetensors" and record["earlier"]["file"] == "model.safetensors"
    assert read_model(path).metadata["training"]["data"] == load_cache(cache_dir).summary() == record["teacher_data"]
    # Following the teacher's 8-view average (on crops): the same weights now differ from the target.
    path, averaged = distill(
        teacher,
        cache_dir,
        tmp_path / "averaged.safetensors",
        DistillSettings({}, steps=1, batch_size=2, lr=1e-9, init="teacher", teacher_tta=8, crop=32),
    )
    assert averaged["p99_9_abs_diff_hu"] > 10 * max(tuned["p99_9_abs_diff_hu"], 0.01)
    record = read_model(path).metadata["training"]["distilled_from"]
    assert record["teacher_tta"] == 8 and "averaged over 8" in record["method"] and record["crop"] == 32
    with pytest.raises(CTDenoiseError, match="needs the teacher's layer shapes"):
        distill(teacher, cache_dir, tmp_path / "x.safetensors", DistillSettings({"ngf": 4}, steps=1, init="teacher"))
    for bad, message in (
        ({"target": "noisy"}, "target 'noisy' is unknown"),
        ({"crop": 40}, "multiple of 16"),
        ({"teacher_tta": 3}, "must be one of 1, 2, 4, 8"),
        ({"teacher_tta": 8, "target": "full"}, "with target teacher"),
        ({"loss": "huber"}, "loss 'huber' is unknown"),
        ({"init": "random"}, "start 'random' is unknown"),
    ):
        with pytest.raises(CTDenoiseError, match=message):
            DistillSettings({"ngf": 4}, **bad)
