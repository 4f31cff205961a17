"""Runtimes: the choice 'auto' makes, the torch-free CPU path, graph validation and the int8 accuracy gate."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import ctdenoise.runtimes as runtimes
from ctdenoise import DenoiseOptions, Denoiser, bundled_model_path, read_model, read_volume
from ctdenoise.checkpoints import export_model, load_checkpoint
from ctdenoise.errors import CTDenoiseError
from ctdenoise.export import write_model
from ctdenoise.modelfile import build_metadata
from ctdenoise.networks import build_generator
from ctdenoise.normalization import HUNormalization
from ctdenoise.physics.lowdose import simulate_low_dose
from ctdenoise.runtimes.onnx_graph import MAX_NODES, inspect_graph

DATA = Path(__file__).resolve().parents[2] / "data"
ABDOMEN = DATA / "totalsegmentator" / "example_ct_dicom"
ONE_SLICE = DATA / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm"
TINY = {"ngf": 8, "n_res_blocks": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with its fp32 graph."""
    torch.manual_seed(0)
    metadata = build_metadata(preset="fast", generator_args=TINY, normalization=HUNormalization(), patch_size=32)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    return write_model({"G_Q2F": build_generator("fast", **TINY).state_dict()}, metadata, path)


# ------------------------------------------------------------------------------- what auto picks


def _machine(monkeypatch: pytest.MonkeyPatch, *, torch_installed: bool, gpu: bool, ort: bool = True) -> None:
    monkeypatch.setattr(runtimes, "torch_available", lambda: torch_installed)
    monkeypatch.setattr(runtimes, "nvidia_driver_present", lambda: gpu)
    monkeypatch.setattr(runtimes, "apple_gpu_likely", lambda: False)
    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: ort)
    import ctdenoise.devices as devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_auto_takes_onnxruntime_whenever_no_gpu_is_used(monkeypatch: pytest.MonkeyPatch, tiny: Path) -> None:
    bundled, no_graph = read_model(bundled_model_path()), load_checkpoint(tiny)
    choose = runtimes.choose_runtime
    _machine(monkeypatch, torch_installed=True, gpu=False)
    assert choose(bundled, DenoiseOptions()) == "onnxruntime"
    assert choose(bundled, DenoiseOptions(device="cpu")) == "onnxruntime"
    assert choose(no_graph, DenoiseOptions()) == "torch"  # a model in memory has no graph
    assert choose(bundled, DenoiseOptions(runtime="torch")) == "torch"
    _machine(monkeypatch, torch_installed=True, gpu=True)
    assert choose(bundled, DenoiseOptions()) == "torch"  # a usable GPU
    assert choose(bundled, DenoiseOptions(device="cpu")) == "onnxruntime"
    assert choose(bundled, DenoiseOptions(precision="int8")) == "onnxruntime"
    _machine(monkeypatch, torch_installed=True, gpu=False, ort=False)
    assert choose(bundled, DenoiseOptions()) == "torch"
    _machine(monkeypatch, torch_installed=False, gpu=False)
    assert choose(bundled, DenoiseOptions()) == "onnxruntime"
    with pytest.raises(CTDenoiseError, match="needs PyTorch: install PyTorch"):
        choose(bundled, DenoiseOptions(runtime="torch"))
    _machine(monkeypatch, torch_installed=False, gpu=False, ort=False)
    with pytest.raises(CTDenoiseError, match="install ONNX Runtime"):
        choose(bundled, DenoiseOptions())


def test_onnxruntime_refuses_what_it_cannot_do(tiny: Path) -> None:
    volume = read_volume(ONE_SLICE)
    cases = [
        (DenoiseOptions(runtime="onnxruntime", device="cuda"), "runs on the CPU, not on 'cuda'"),
        (DenoiseOptions(runtime="onnxruntime", tile_size=64), "drop --tile-size"),
        (DenoiseOptions(runtime="onnxruntime", precision="bf16"), "needs a CUDA GPU"),
        (DenoiseOptions(runtime="onnxruntime", precision="int8"), "carries no int8 graph"),
    ]
    for options, message in cases:
        with pytest.raises(CTDenoiseError, match=message):
            Denoiser(tiny, options).volume(volume)


# ------------------------------------------------------------------------------ no PyTorch at all


def test_the_cpu_runtime_denoises_with_pytorch_unimportable(tmp_path: Path) -> None:
    """What a CPU user in Slicer has: ONNX Runtime, numpy, SimpleITK, pydicom; no PyTorch, no safetensors."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None\n"  # importing them now fails
        "from ctdenoise.cli import main\n"
        f"status = main(['denoise', {str(ONE_SLICE)!r}, {str(tmp_path / 'out')!r}, '--progress', 'json',"
        f" '--noise-out', {str(tmp_path / 'noise.nrrd')!r}])\n"
        "print(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "0", done.stderr
    summary = json.loads(done.stdout.splitlines()[-2])
    assert summary["event"] == "done" and summary["runtime"] == "onnxruntime" and summary["precision"] == "fp32"
    source, out = read_volume(ONE_SLICE), read_volume(tmp_path / "out")
    torch_out = Denoiser(options=DenoiseOptions(device="cpu", runtime="torch")).volume(source).volume.array
    assert np.abs(out.array - np.rint(torch_out)).max() <= 1.0  # same result, stored as whole HU


# -------------------------------------------------------------------------------- graph validation


def _with_graph(source: Path, target: Path, graph: bytes, sha256: str | None = None) -> Path:
    """``source`` with its fp32 graph replaced by ``graph`` (checksum recorded unless given)."""
    model = read_model(source)
    checkpoint = load_checkpoint(source)
    metadata = dict(model.metadata)
    metadata["graphs"] = {"fp32": {**model.graphs["fp32"], "sha256": sha256 or hashlib.sha256(graph).hexdigest()}}
    extra = {"graph.fp32": torch.frombuffer(bytearray(graph), dtype=torch.uint8)}
    return export_model({"G_Q2F": checkpoint.generator.state_dict()}, metadata, target, extra=extra)


def _tiny_graph(node: onnx.NodeProto, **graph_fields: object) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, "h", "w"])
    graph = helper.make_graph([node], "g", [x], [y], **graph_fields)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def test_graphs_are_checked_before_a_session_exists(tiny: Path, tmp_path: Path) -> None:
    good = _tiny_graph(helper.make_node("Relu", ["x"], ["y"]))
    assert inspect_graph(good).ops == {"Relu": 1}
    external = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    external.data_location = TensorProto.EXTERNAL
    bad = {
        "custom operator evil.Steal": _tiny_graph(helper.make_node("Steal", ["x"], ["y"], domain="evil")),
        "control-flow operator If": _tiny_graph(helper.make_node("If", ["x"], ["y"])),
        "external data": _tiny_graph(helper.make_node("Add", ["x", "w"], ["y"]), initializer=[external]),
    }
    volume = read_volume(ONE_SLICE)
    options = DenoiseOptions(runtime="onnxruntime")
    for message, graph in bad.items():
        path = _with_graph(tiny, tmp_path / "bad.safetensors", graph)
        with pytest.raises(CTDenoiseError, match=f"inference graph was refused .*{message}"):
            Denoiser(path, options).volume(volume)
    tampered = _with_graph(tiny, tmp_path / "tampered.safetensors", good, sha256="0" * 64)
    with pytest.raises(CTDenoiseError, match="does not match its checksum"):
        Denoiser(tampered, options).volume(volume)
    nodes = [helper.make_node("Identity", ["x"], ["x"]) for _ in range(MAX_NODES + 1)]
    huge = helper.make_model(helper.make_graph(nodes, "g", [], [])).SerializeToString()
    with pytest.raises(ValueError, match=f"more than {MAX_NODES} nodes"):
        inspect_graph(huge)


# ----------------------------------------------------------------------------- int8 and its gate


def _demo_pairs() -> tuple[np.ndarray, np.ndarray]:
    volume = read_volume(ABDOMEN)
    full = volume.array[6:12]
    return full, simulate_low_dose(full, (float(volume.spacing[1]), float(volume.spacing[0])), 0.25, seed=0)


def test_int8_is_the_default_only_where_its_gate_holds() -> None:
    """The bundled model's int8 graph, measured again here on the demo's slices, matches the gate's decision."""
    model = read_model(bundled_model_path())
    gate = model.graphs["int8"]["accuracy"]
    full, quarter = _demo_pairs()
    fp32 = Denoiser(options=DenoiseOptions(runtime="onnxruntime", precision="fp32"))
    int8 = Denoiser(options=DenoiseOptions(runtime="onnxruntime", precision="int8"))
    out32, out8 = fp32.array(quarter), int8.array(quarter)
    auto = Denoiser(options=DenoiseOptions(runtime="onnxruntime"))
    auto.array(quarter[:1])
    assert int8.open().precision == "int8"

    def psnr(image: np.ndarray) -> float:
        error = np.clip(image, -160, 240) - np.clip(full, -160, 240)
        return float(10 * np.log10(400**2 / np.mean(error**2)))

    largest, loss = float(np.abs(out8 - out32).max()), psnr(out32) - psnr(out8)
    if gate["passed"]:
        assert largest <= 5.0 and loss <= 0.05 and auto.open().precision == "int8"
    else:
        assert (largest > 5.0 or loss > 0.05) and auto.open().precision == "fp32"
    assert model.graphs["int8"]["default"] == gate["passed"]
    assert largest < 60 and abs(loss) < 0.5  # forced int8 stays usable


def test_the_base_install_needs_no_pytorch() -> None:
    """``pip install ctdenoise`` pulls ONNX Runtime, not PyTorch; training comes with ``ctdenoise[torch]``."""
    from importlib.metadata import requires

    base = [
        r.split(";")[0].split(">")[0].split("=")[0].strip().lower()
        for r in requires("ctdenoise") or []
        if "extra ==" not in r
    ]
    extra = [r.split(">")[0].strip().lower() for r in requires("ctdenoise") or [] if 'extra == "torch"' in r]
    assert "onnxruntime" in base and not {"torch", "monai", "matplotlib", "tensorboard", "pyyaml", "safetensors"} & set(
        base
    )
    assert {"torch", "monai", "onnx", "onnxscript", "safetensors"} <= set(extra)


def test_training_commands_on_a_base_install_say_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from ctdenoise.cli import main\n"
        f"sys.exit(main(['simulate', {str(ONE_SLICE)!r}, {str(tmp_path / 'low.nii.gz')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "error: 'ctdenoise simulate' needs torch, part of the training extras: pip install 'ctdenoise[torch]' "
        "(denoising on the CPU needs only the base install)"
    )
