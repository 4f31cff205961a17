"""Model files are validated before anything is built: schema with bounds, header consistency, shapes on meta."""

from __future__ import annotations

import inspect
import json
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ctdenoise import bundled_model_path, read_model
from ctdenoise.checkpoints import load_checkpoint
from ctdenoise.errors import CTDenoiseError
from ctdenoise.modelfile import GENERATOR_SCHEMA, METADATA_KEY, MODEL_FORMAT_VERSION, build_metadata
from ctdenoise.networks import build_generator
from ctdenoise.networks.generators import GENERATOR_CLASSES
from ctdenoise.normalization import HUNormalization

CONSOLE = Path(sys.executable).parent / "ctdenoise"
DATA = Path(__file__).resolve().parents[2] / "data"
TINY = {"ngf": 8, "n_res_blocks": 1}


def _tiny_metadata() -> dict[str, Any]:
    return build_metadata(preset="fast", generator_args=TINY, normalization=HUNormalization(), patch_size=32)


def _write(path: Path, metadata: Any, generator_args: dict[str, Any] = TINY) -> Path:
    """A model file with tiny real weights and any metadata (no validation on the way out)."""
    torch.manual_seed(0)
    state = build_generator("fast", **generator_args).state_dict()
    save_file(
        {f"G_Q2F.{k}": v.contiguous() for k, v in state.items()},
        str(path),
        metadata={METADATA_KEY: json.dumps(metadata)},
    )
    return path


def _edit(**changes: Any) -> dict[str, Any]:
    metadata = _tiny_metadata()
    for dotted, value in changes.items():
        target = metadata
        *parents, key = dotted.split("__")
        for parent in parents:
            target = target[parent]
        target[key] = value
    return metadata


CRAFTED = {  # name: (metadata, the field the one-line refusal names)
    "huge res blocks": (_edit(generator__args__n_res_blocks=100000), "generator.args.n_res_blocks=100000"),
    "huge width": (_edit(generator__args__ngf=1000000), "generator.args.ngf=1000000"),
    "list preset": (_edit(generator__preset=["fast"]), "generator.preset=['fast']"),
    "unknown preset": (_edit(generator__preset="unet"), "generator.preset='unet'"),
    "string scale": (_edit(normalization__scale="1000"), "normalization.scale='1000'"),
    "zero scale": (_edit(normalization__scale=0), "normalization.scale=0"),
    "inverted window": (_edit(normalization__hu_min=100.0, normalization__hu_max=-100.0), "normalization"),
    "bool width": (_edit(generator__args__ngf=True), "generator.args.ngf=True"),
    "unknown option": (_edit(generator__args__dropout=0.5), "generator.args.dropout"),
    "three channels": (_edit(generator__args__in_channels=3), "generator.args.in_channels=3"),
    "string sigma": (_edit(generator__args__residual_highpass_sigma="2"), "residual_highpass_sigma='2'"),
    "negative patch": (_edit(patch_size=-4), "patch_size=-4"),
    "bad orientation": (_edit(orientation="XYZ"), "orientation='XYZ'"),
    "string limit": (_edit(change_limit_hu="250"), "change_limit_hu='250'"),
    "negative second pass": (_edit(second_pass_noise_hu=-5.0), "second_pass_noise_hu=-5.0"),
    "fine pass alone": (
        _edit(second_pass_fine_pixel_mm=1.0, second_pass_fine_noise_hu=17.0, second_pass_noise_hu=None),
        "second_pass_fine_noise_hu=17.0",
    ),
    "fine pixel without noise": (_edit(second_pass_fine_pixel_mm=1.0), "second_pass_fine_noise_hu=None"),
    "string fine pixel": (
        _edit(second_pass_fine_pixel_mm="1", second_pass_fine_noise_hu=17.0),
        "second_pass_fine_pixel_mm='1'",
    ),
    "list training": (_edit(training=[1, 2]), "training=[1, 2]"),
    "bad spacing": (_edit(training={"data": {"spacing_mm": {"min": [0, 1], "max": [1, 1, 1]}}}), "spacing_mm"),
    "not an object": ([1, 2, 3], "(root)"),
    "wrong format": (_edit(format="onnx"), "format='onnx'"),
    "version as text": (_edit(format_version="2"), "format_version='2'"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_metadata_is_refused_in_one_line_before_building(name: str, tmp_path: Path) -> None:
    metadata, field = CRAFTED[name]
    path = _write(tmp_path / "crafted.safetensors", metadata)
    for load in (read_model, load_checkpoint):
        with pytest.raises(CTDenoiseError) as info:
            load(path)
        message = str(info.value)
        assert "\n" not in message and field in message and "re-export the model" in message, message


def test_the_command_refuses_crafted_models_with_exit_2_without_allocating(tmp_path: Path) -> None:
    """A file asking for 100,000 residual blocks once made denoise allocate 24 GB; now it is one line, at once."""
    source = DATA / "tcga_lung_ctmi" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"
    for name in ("huge res blocks", "huge width", "list preset", "string scale"):
        path = _write(tmp_path / f"{name.replace(' ', '_')}.safetensors", CRAFTED[name][0])
        start = time.perf_counter()
        done = subprocess.run(
            [str(CONSOLE), "denoise", str(source), str(tmp_path / "out.nii.gz"), "--checkpoint", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)),
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and CRAFTED[name][1] in lines[0], done.stderr
        assert time.perf_counter() - start < 30 and not (tmp_path / "out.nii.gz").exists()


def test_a_newer_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = _write(tmp_path / "new.safetensors", _edit(format_version=MODEL_FORMAT_VERSION + 1))
    with pytest.raises(CTDenoiseError, match="upgrade ctdenoise"):
        read_model(path)


def test_weights_that_do_not_match_the_metadata_are_refused_before_loading(tmp_path: Path) -> None:
    path = _write(tmp_path / "mismatch.safetensors", _edit(generator__args__ngf=16), generator_args=TINY)
    read_model(path)  # the metadata alone is valid
    with pytest.raises(
        CTDenoiseError,
        match=r"G_Q2F weights do not match the 'fast' generator .*down.0.weight has shape \[16, 8, 3, 3\], the metadata's network needs \[32, 16, 3, 3\]",
    ):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated", "huge header", "offsets outside", "not json", "empty"])
def test_damaged_headers_are_refused(damage: str, tmp_path: Path) -> None:
    good = _write(tmp_path / "good.safetensors", _tiny_metadata()).read_bytes()
    length = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + length])
    if damage == "truncated":
        data = good[: len(good) // 2]
    elif damage == "huge header":
        data = struct.pack("<Q", 1 << 40) + good[8:]
    elif damage == "offsets outside":
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"] = [0, 10**9]
        text = json.dumps(header).encode()
        data = struct.pack("<Q", len(text)) + text + good[8 + length :]
    elif damage == "not json":
        data = struct.pack("<Q", 5) + b"{{{{{" + good[8 + length :]
    else:
        data = b""
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(data)
    with pytest.raises(CTDenoiseError, match="damaged|not a model") as info:
        read_model(path)
    assert "\n" not in str(info.value)


def test_the_schema_names_every_constructor_argument() -> None:
    for preset, schema in GENERATOR_SCHEMA.items():
        parameters = [p for p in inspect.signature(GENERATOR_CLASSES[preset].__init__).parameters if p != "self"]
        assert sorted(schema) == sorted(parameters), preset


def test_the_bundled_model_reads_without_torch() -> None:
    code = (
        "import sys, ctdenoise; m = ctdenoise.read_model(ctdenoise.bundled_model_path()); "
        "print(m.preset, m.change_limit_hu, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["fast", "320.0", "False"]


def test_summary_describes_the_model_for_user_interfaces() -> None:
    summary = read_model(bundled_model_path()).summary()
    assert summary["preset"] == "fast" and summary["orientation"] == "LPS" and summary["change_limit_hu"] == 320.0
    assert summary["second_pass_noise_hu"] == 29.3 and summary["second_pass_fine"] == [1.0, 17.0]
    assert summary["normalization"]["scale"] == 1000.0 and summary["training_data"]["low_dose"] == "simulated"
    assert summary["metrics"]["denoised"]["psnr"] > summary["metrics"]["low_dose_input"]["psnr"]
    json.dumps(summary)
