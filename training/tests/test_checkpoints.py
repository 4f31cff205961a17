"""Exported models, safe loading, and importing the seed project's checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ctdenoise.checkpoints import (
    METADATA_KEY,
    build_metadata,
    convert_seed,
    export_model,
    load_checkpoint,
    read_model_metadata,
)
from ctdenoise.errors import CTDenoiseError
from ctdenoise.networks import SeedGenerator, build_discriminator, build_generator, init_weights
from ctdenoise.normalization import HUNormalization

SMALL_FAST = {"ngf": 8, "n_res_blocks": 1}


def _fast_pair() -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return {name: init_weights(build_generator("fast", **SMALL_FAST)).state_dict() for name in ("G_Q2F", "G_F2Q")}


def _metadata(**extra: object) -> dict:
    return build_metadata(
        preset="fast",
        generator_args=SMALL_FAST,
        normalization=HUNormalization(hu_min=-1024, hu_max=2000, offset=10, scale=500),
        patch_size=64,
        training={"steps": 3},
        metrics={"denoised": {"psnr": 30.0}},
        **extra,
    )


def test_export_then_load_rebuilds_the_same_network(tmp_path: Path) -> None:
    states = _fast_pair()
    path = export_model(states, _metadata(), tmp_path / "m.safetensors")
    model = load_checkpoint(path)
    assert model.preset == "fast"
    assert model.normalization == HUNormalization(hu_min=-1024, hu_max=2000, offset=10, scale=500)
    assert model.metadata["training"]["steps"] == 3 and model.metadata["patch_size"] == 64
    assert model.metadata["format_version"] == 2 and model.metadata["package_version"]
    reference = build_generator("fast", **SMALL_FAST)
    reference.load_state_dict(states["G_Q2F"])
    x = torch.randn(1, 1, 40, 36)
    with torch.no_grad():
        assert torch.equal(model.generator(x), reference.eval()(x))
    f2q = load_checkpoint(path, direction="G_F2Q")
    assert torch.equal(next(f2q.generator.parameters()), next(iter(states["G_F2Q"].values())))
    keys = load_file(str(path)).keys()
    assert all(k.startswith(("G_Q2F.", "G_F2Q.")) for k in keys)
    assert read_model_metadata(path)["generator"] == {"preset": "fast", "args": SMALL_FAST}
    assert not list(tmp_path.glob(".*tmp")), "atomic write left a temporary file"


def test_export_refuses_bad_names_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(CTDenoiseError, match="must end in .safetensors"):
        export_model(_fast_pair(), _metadata(), tmp_path / "m.pt")
    with pytest.raises(CTDenoiseError, match="G_Q2F"):
        export_model({"G_F2Q": _fast_pair()["G_F2Q"]}, _metadata(), tmp_path / "m.safetensors")


def _seed_checkpoint(path: Path) -> dict:
    torch.manual_seed(1)
    gens = {name: init_weights(SeedGenerator()) for name in ("G_F2Q", "G_Q2F")}
    discs = {name: init_weights(build_discriminator()) for name in ("D_F", "D_Q")}
    g_opt = torch.optim.Adam([p for g in gens.values() for p in g.parameters()], lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam([p for d in discs.values() for p in d.parameters()], lr=2e-4, betas=(0.5, 0.999))
    x = torch.randn(1, 1, 24, 24)
    (gens["G_Q2F"](x).mean() + gens["G_F2Q"](x).mean()).backward()
    g_opt.step()
    checkpoint = {
        "epoch": 64,
        **{f"{name}_state_dict": net.state_dict() for name, net in {**gens, **discs}.items()},
        "G_optim_state_dict": g_opt.state_dict(),
        "D_optim_state_dict": d_opt.state_dict(),
    }
    torch.save(checkpoint, path)  # the seed's own format: a plain torch.save dict
    return checkpoint


def test_convert_seed_keeps_both_generators_and_seed_normalisation(tmp_path: Path) -> None:
    source = tmp_path / "cyclegan_epoch64.pth"
    checkpoint = _seed_checkpoint(source)
    before = source.read_bytes()
    out = convert_seed(source, tmp_path / "seed.safetensors")
    assert source.read_bytes() == before
    model = load_checkpoint(out)
    assert model.preset == "seed"
    assert model.normalization == HUNormalization.seed()
    assert model.metadata["training"]["epoch"] == 64
    original = SeedGenerator()
    original.load_state_dict(checkpoint["G_Q2F_state_dict"])
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.generator(x), original.eval()(x))
    # the .pth itself also loads directly, read weights-only
    assert load_checkpoint(source).preset == "seed"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the attack: unpickling runs a shell command
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("loader", [convert_seed, lambda src, dst: load_checkpoint(src)])
def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path, loader) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"G_Q2F_state_dict": _Evil(marker), "epoch": 1}, evil)
    with pytest.raises(CTDenoiseError, match="refused") as info:
        loader(evil, tmp_path / "out.safetensors")
    assert "\n" not in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_or_damaged_files_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CTDenoiseError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CTDenoiseError, match="no ctdenoise metadata"):
        load_checkpoint(plain)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CTDenoiseError, match="damaged"):
        load_checkpoint(damaged)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CTDenoiseError, match="neither a ctdenoise training state nor a seed"):
        load_checkpoint(other)
    with pytest.raises(CTDenoiseError, match="not a seed-project checkpoint"):
        convert_seed(other, tmp_path / "x.safetensors")


def test_mismatched_weights_and_future_format_are_refused(tmp_path: Path) -> None:
    states = _fast_pair()
    meta = _metadata()
    meta["generator"]["args"] = {"ngf": 16, "n_res_blocks": 1}
    path = export_model(states, meta, tmp_path / "mismatch.safetensors")
    with pytest.raises(CTDenoiseError, match="do not match the 'fast' generator"):
        load_checkpoint(path)
    future = _metadata()
    future["format_version"] = 99
    path = tmp_path / "future.safetensors"
    tensors = {f"G_Q2F.{k}": v for k, v in states["G_Q2F"].items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(future)})
    with pytest.raises(CTDenoiseError, match="upgrade ctdenoise"):
        load_checkpoint(path)
