#!/usr/bin/env python3
"""Denoising speed, start-up and memory per runtime, on real 512x512 CT slices; one table from one run.

For each runtime and precision available here (``torch`` fp32; ``onnxruntime`` fp32 and int8 when
the model carries those graphs; ``openvino`` fp32 on the same ONNX graph when OpenVINO happens to
be installed, for comparison only) it prints, each measured in a fresh process:

* seconds per slice for the model (default: the bundled one) on the real abdomen series in
  ``data/``, after one warm-up slice, and the peak resident memory of that process;
* start-up: the whole ``ctdenoise denoise`` process on one slice, minus the network's own time for
  that slice (from its progress report), next to ``python -c "import torch"`` timed the same way;
* the whole ``ctdenoise denoise`` process on a 512x512x100 volume (the abdomen repeated);
* the ratio of its seconds per slice to the torch runtime's and to the seed architecture's (a
  randomly initialised seed generator on the torch runtime, one slice);
* how many voxels hit the model's change limit on the abdomen (full dose), a simulated quarter dose
  of it, and the 3 mm ``example_ct_sm`` volume.

On CUDA it also prints the bf16 matmul peak and each model's achieved TFLOP/s against it.

With ``--memory`` it prints instead the host memory of ``Denoiser.file`` (what ``ctdenoise denoise``
runs) on a 512x512x600 int16 volume built from the real abdomen series (mirrored and repeated), as
a .nii.gz file and as a DICOM series, per runtime, each in a fresh process that runs the way
``ctdenoise denoise`` does: the resident memory once the runtime is open, the peak while the file
is read, denoised and written (overall and per phase), and the peak minus that baseline as a
multiple of the volume's own bytes. On CUDA the torch runtime's ``torch.cuda.max_memory_allocated()``
is printed too. ``--network-slices N`` runs the network on the first N slices only and hands the
rest a zero change of the same shape: every slice is still read, normalised, cast and written, and
the network's working memory is per batch, so the memory figures hold in seconds instead of minutes.

Usage: .venv/bin/python scripts/bench_inference.py [--slices N] [--device cpu|cuda] [--checkpoint PATH]
       .venv/bin/python scripts/bench_inference.py --memory [--memory-slices 600] [--network-slices N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
ABDOMEN = ROOT / "data" / "totalsegmentator" / "example_ct_dicom"
THREE_MM = ROOT / "data" / "totalsegmentator" / "example_ct_sm.nii.gz"
MEMORY_FORMATS = {"nifti": "volume.nii.gz", "dicom": "volume_dicom"}


def _run_json(args: list[str]) -> dict[str, Any]:
    """Run this script as a worker and return the JSON it prints last."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {args} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_speed(
    runtime: str, precision: str, device: str, checkpoint: Optional[str], slices: int, seed_preset: bool
) -> dict[str, Any]:
    """In this process: seconds per slice over ``slices`` real slices after a warm-up slice, and peak memory."""
    import numpy as np

    from ctdenoise import DenoiseOptions, Denoiser, read_volume

    hu = read_volume(ABDOMEN).array
    hu = np.concatenate([hu] * (slices // len(hu) + 1))[: slices + 1]
    if runtime == "openvino":
        return worker_openvino(hu, checkpoint, slices)
    model: Any = checkpoint
    if seed_preset:
        model = _random_seed_checkpoint()
    denoiser = Denoiser(model, DenoiseOptions(runtime=runtime, device=device, precision=precision))
    denoiser.array(hu[:1])
    start = time.perf_counter()
    denoiser.array(hu[1:])
    seconds = (time.perf_counter() - start) / slices
    runtime_obj = denoiser.open()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "s_per_slice": seconds,
        "peak_mb": peak_mb,
        "runtime": runtime_obj.name,
        "device": runtime_obj.device,
        "precision": runtime_obj.precision,
        "batch": runtime_obj.batch_size,
    }


def worker_openvino(hu: Any, checkpoint: Optional[str], slices: int) -> dict[str, Any]:
    """The model's fp32 ONNX graph on OpenVINO's CPU plugin (not an engine runtime: for the comparison)."""
    import numpy as np

    from ctdenoise import read_model
    from ctdenoise.inference import describe_model
    from ctdenoise.runtimes.base import pad_to_multiple
    from ctdenoise.runtimes.onnx_runtime import graph_bytes

    start = time.perf_counter()
    import openvino

    model = describe_model(checkpoint)
    folder = Path(tempfile.mkdtemp(prefix="ctdenoise-ov-"))
    (folder / "model.onnx").write_bytes(graph_bytes(read_model(model.path), "fp32"))
    pad = pad_to_multiple
    compiled = openvino.Core().compile_model(str(folder / "model.onnx"), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    ready = time.perf_counter() - start
    normalization = model.normalization
    x = pad(normalization.normalize(hu)[:, None].astype(np.float32), model.size_multiple)
    request.infer({0: x[:1]})
    start = time.perf_counter()
    for index in range(1, slices + 1):
        request.infer({0: x[index : index + 1]})
    seconds = (time.perf_counter() - start) / slices
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "s_per_slice": seconds,
        "peak_mb": peak_mb,
        "runtime": "openvino",
        "device": "cpu",
        "precision": "fp32",
        "batch": 1,
        "import_and_compile_s": ready,
    }


def _random_seed_checkpoint() -> Any:
    import torch

    from ctdenoise.checkpoints import ModelCheckpoint
    from ctdenoise.modelfile import build_metadata
    from ctdenoise.networks import GENERATOR_PRESETS, build_generator
    from ctdenoise.normalization import HUNormalization

    torch.manual_seed(0)
    metadata = build_metadata(
        preset="seed", generator_args=GENERATOR_PRESETS["seed"], normalization=HUNormalization(), patch_size=128
    )
    return ModelCheckpoint(path=Path("<random seed>"), metadata=metadata, generator=build_generator("seed").eval())


def worker_clamped(runtime: str, device: str, checkpoint: Optional[str]) -> dict[str, Any]:
    """Voxels at the change limit on the abdomen, its simulated quarter dose and the 3 mm volume."""
    from ctdenoise import DenoiseOptions, Denoiser, read_volume, simulate_volume

    denoiser = Denoiser(checkpoint, DenoiseOptions(runtime=runtime, device=device))
    abdomen = read_volume(ABDOMEN)
    volumes = {
        "abdomen": abdomen,
        "abdomen quarter dose": simulate_volume(abdomen, 0.25, seed=0),
        "3 mm example_ct_sm": read_volume(THREE_MM),
    }
    found = {}
    for name, volume in volumes.items():
        result = denoiser.volume(volume)
        change = abs(result.volume.array - volume.array)
        found[name] = {
            "clamped": result.clamped_voxels,
            "voxels": int(volume.array.size),
            "largest_change_hu": float(change.max()),
        }
    return {"limit_hu": denoiser.model.change_limit_hu, "volumes": found}


def _volume_file(slices: int) -> Path:
    """The abdomen series repeated to ``slices`` 512x512 slices, as a NIfTI file in a new temporary folder."""
    import numpy as np
    import SimpleITK as sitk

    from ctdenoise import read_volume

    folder = Path(tempfile.mkdtemp(prefix="ctdenoise-bench-"))
    volume = read_volume(ABDOMEN)
    array = np.concatenate([volume.array] * (slices // volume.shape[0] + 1))[:slices]
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(volume.spacing)
    sitk.WriteImage(image, str(folder / f"volume_{slices}.nii.gz"))
    return folder / f"volume_{slices}.nii.gz"


def _denoise_command(
    source: Path, target: Path, runtime: str, precision: str, device: str, checkpoint: Optional[str]
) -> list[str]:
    command = [str(Path(sys.executable).parent / "ctdenoise"), "denoise", str(source), str(target)]
    command += ["--progress", "json", "--runtime", runtime, "--precision", precision, "--device", device]
    return command + (["--checkpoint", checkpoint] if checkpoint else [])


def whole_volume(source: Path, runtime: str, precision: str, device: str, checkpoint: Optional[str]) -> float:
    """Wall seconds of one ``ctdenoise denoise`` process on ``source``."""
    target = source.with_name(f"out_{runtime}_{precision}.nii.gz")
    start = time.perf_counter()
    command = _denoise_command(source, target, runtime, precision, device, checkpoint)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"denoising {source} failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def startup(runtime: str, precision: str, device: str, checkpoint: Optional[str], repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats``: whole ``ctdenoise denoise`` on one slice, its network time, and the difference."""
    one = _volume_file(1)
    folder = one.parent
    command = _denoise_command(one, folder / "out.nii.gz", runtime, precision, device, checkpoint)
    best: dict[str, float] = {}
    for _ in range(repeats):
        (folder / "out.nii.gz").unlink(missing_ok=True)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
        events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        network = max(e["elapsed_s"] for e in events if e["event"] == "progress")
        if not best or wall < best["wall_s"]:
            best = {"wall_s": wall, "network_s": network, "overhead_s": wall - network}
    return best


def import_torch_seconds(repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of ``python -c "import torch"``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def configurations(checkpoint: Optional[str]) -> list[tuple[str, str]]:
    """(runtime, precision) pairs to measure here: the engine's runtimes, and OpenVINO if installed."""
    import importlib.util

    from ctdenoise.inference import describe_model
    from ctdenoise.runtimes import available_runtimes

    found = []
    graphs = getattr(describe_model(checkpoint), "graphs", {})
    for runtime in available_runtimes(checkpoint):
        found += [
            (runtime, p)
            for p in (("fp32", "int8") if runtime == "onnxruntime" else ("fp32",))
            if runtime == "torch" or p in graphs
        ]
    if importlib.util.find_spec("openvino") is not None and "fp32" in graphs:
        found.append(("openvino", "fp32"))
    return found


# ------------------------------------------------------------------------------------ memory


def _status_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process from ``/proc/self/status``, in MB (10^6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise SystemExit(f"--memory needs Linux: no {field} in /proc/self/status")


def _count_network(runtime: Any, limit: Optional[int]) -> dict[str, float]:
    """Wrap ``runtime.change``: time the network's calls; past ``limit`` slices return a zero change instead."""
    import numpy as np

    real, counts = runtime.change, {"slices": 0, "seconds": 0.0}

    def change(x: Any) -> Any:
        if limit is not None and counts["slices"] >= limit:
            return np.zeros((x.shape[0], x.shape[2], x.shape[3]), dtype=np.float32)
        start = time.perf_counter()
        result = real(x)
        counts["seconds"] += time.perf_counter() - start
        counts["slices"] += 0 if result is None else x.shape[0]
        return result

    runtime.change = change
    return counts


def _restart_peak() -> None:
    """Make ``VmHWM`` restart from the current ``VmRSS`` (Linux's ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def _track_phases(peaks: dict[str, float]) -> None:
    """Record in ``peaks`` the peak resident memory while ``Denoiser.file`` reads, writes, and in between."""
    import ctdenoise.inference as inference

    def tracked(phase: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            peaks["denoise"] = max(peaks["denoise"], _status_mb("VmHWM"))
            _restart_peak()
            try:
                return function(*args, **kwargs)
            finally:
                peaks[phase] = max(peaks[phase], _status_mb("VmHWM"))
                _restart_peak()

        return call

    inference.read_volume = tracked("read", inference.read_volume)  # type: ignore[assignment]
    inference.write_volume = tracked("write", inference.write_volume)  # type: ignore[assignment]


def worker_memory(
    source: Path, target: Path, runtime: str, device: str, checkpoint: Optional[str], network_slices: Optional[int]
) -> dict[str, Any]:
    """In this process, as ``ctdenoise denoise`` runs: memory once the runtime is open, then ``Denoiser.file``'s peaks."""
    import ctdenoise.io.readers
    import ctdenoise.io.writers  # noqa: F401  (their code, ITK and pydicom, is loaded before the baseline)
    from ctdenoise import DenoiseOptions, Denoiser

    denoiser = Denoiser(checkpoint, DenoiseOptions(runtime=runtime, device=device))
    opened = denoiser.open()
    network = _count_network(opened, network_slices)
    peaks = {"read": 0.0, "denoise": 0.0, "write": 0.0}
    _track_phases(peaks)
    cuda = opened.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    baseline = _status_mb("VmRSS")
    _restart_peak()
    start = time.perf_counter()
    summary = denoiser.file(source, target)
    seconds = time.perf_counter() - start
    peaks["denoise"] = max(peaks["denoise"], _status_mb("VmHWM"))
    return {
        "baseline_mb": baseline,
        "peaks_mb": peaks,
        "seconds": seconds,
        "slices": summary["slices"],
        "network_slices": network["slices"],
        "network_s_per_slice": network["seconds"] / max(network["slices"], 1),
        "device": opened.device,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 1e6 if cuda else None,
    }


def _memory_inputs(slices: int, folder: Path) -> int:
    """The abdomen mirrored and repeated to ``slices`` int16 slices, written to ``folder`` in each format; its bytes."""
    import numpy as np
    import SimpleITK as sitk

    from ctdenoise import Volume, read_volume, write_volume

    abdomen = read_volume(ABDOMEN)
    there_and_back = np.concatenate([abdomen.array, abdomen.array[::-1]]).astype(np.int16)
    array = np.concatenate([there_and_back] * (slices // len(there_and_back) + 1))[:slices]
    volume = Volume(array, abdomen.spacing, abdomen.origin, abdomen.direction)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    sitk.WriteImage(image, str(folder / MEMORY_FORMATS["nifti"]), useCompression=True)
    write_volume(volume, folder / MEMORY_FORMATS["dicom"])
    return int(array.nbytes)


def memory_table(args: argparse.Namespace) -> None:
    """Build the volume, measure each format and runtime in a worker process and print one table."""
    runtimes = [("onnxruntime", "cpu"), ("torch", args.device)]
    folder = Path(tempfile.mkdtemp(prefix="ctdenoise-memory-"))
    try:
        nbytes = _memory_inputs(args.memory_slices, folder)
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; model: {args.checkpoint or 'bundled'}; "
            f"int16 volume 512x512x{args.memory_slices} = {nbytes / 1e6:.0f} MB; network on "
            f"{'every slice' if args.network_slices is None else f'the first {args.network_slices} slices'}",
            flush=True,
        )
        print(
            "\n| input | runtime | device | network slices | network s/slice | file() s | RSS runtime open MB | "
            "peak RSS MB | peak - open MB | ratio to volume | peak - open while reading / denoising / writing MB | "
            "GPU peak MB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for fmt, name in MEMORY_FORMATS.items():
            for runtime, device in runtimes:
                output = folder / f"out_{runtime}_{name}"
                worker = ["--worker", "memory", "--input", str(folder / name), "--output", str(output)]
                worker += ["--runtime", runtime, "--device", device]
                worker += ["--checkpoint", args.checkpoint] if args.checkpoint else []
                worker += [] if args.network_slices is None else ["--network-slices", str(args.network_slices)]
                m = _run_json(worker)
                if output.is_dir():
                    shutil.rmtree(output)
                else:
                    output.unlink()
                base, peaks = m["baseline_mb"], m["peaks_mb"]
                peak = max(peaks.values())
                phases = " / ".join(f"{peaks[p] - base:.0f}" for p in ("read", "denoise", "write"))
                gpu = "-" if m["gpu_peak_mb"] is None else f"{m['gpu_peak_mb']:.0f}"
                print(
                    f"| {fmt} | {runtime} | {m['device']} | {m['network_slices']}/{m['slices']} | "
                    f"{m['network_s_per_slice']:.2f} | {m['seconds']:.1f} | {base:.0f} | {peak:.0f} | "
                    f"{peak - base:.0f} | {(peak - base) * 1e6 / nbytes:.2f} | {phases} | {gpu} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    """Parse options, measure in worker processes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=8, help="slices per timed run (default 8)")
    parser.add_argument("--volume-slices", type=int, default=100, help="slices of the whole-volume run (default 100)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--checkpoint", default=None, help="model to time (default: the bundled model)")
    parser.add_argument("--memory", action="store_true", help="print host (and GPU) memory of a whole-file denoise")
    parser.add_argument("--memory-slices", type=int, default=600, help="slices of the --memory volume (default 600)")
    parser.add_argument(
        "--network-slices", type=int, default=None, help="--memory: run the network on the first N slices only"
    )
    parser.add_argument("--worker", choices=["speed", "seed", "clamped", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        memory_table(args)
        return
    if args.worker:
        if args.worker == "memory":
            result = worker_memory(
                args.input, args.output, args.runtime, args.device, args.checkpoint, args.network_slices
            )
        elif args.worker == "clamped":
            result = worker_clamped(args.runtime, args.device, args.checkpoint)
        else:
            result = worker_speed(
                args.runtime, args.precision, args.device, args.checkpoint, args.slices, args.worker == "seed"
            )
        print(json.dumps(result))
        return

    common = ["--device", args.device] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; model: {args.checkpoint or 'bundled'}; "
        f"{args.slices} real 512x512 slices per timing",
        flush=True,
    )
    torch_import = import_torch_seconds()
    seed = _run_json(["--worker", "seed", "--slices", "1", "--runtime", "torch"] + common)
    volume = _volume_file(args.volume_slices)
    rows = []
    for runtime, precision in configurations(args.checkpoint):
        speed = _run_json(
            ["--worker", "speed", "--slices", str(args.slices), "--runtime", runtime, "--precision", precision] + common
        )
        if runtime == "openvino":
            rows.append((runtime, speed, None, None))
            continue
        start = startup(runtime, precision, args.device, args.checkpoint)
        rows.append((runtime, speed, start, whole_volume(volume, runtime, precision, args.device, args.checkpoint)))
    torch_speed = next((s["s_per_slice"] for r, s, _, _ in rows if r == "torch"), None)
    print(
        f"\n| runtime | precision | s/slice | vs torch | vs seed architecture | start-up overhead s | "
        f"1 slice, whole process s | {args.volume_slices} slices, whole process s | peak memory MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for runtime, speed, start, whole in rows:
        vs_torch = f"{speed['s_per_slice'] / torch_speed:.2f}" if torch_speed else "-"
        overhead = f"{start['overhead_s']:.2f}" if start else f"{speed['import_and_compile_s']:.2f} (import + compile)"
        print(
            f"| {runtime} | {speed['precision']} | {speed['s_per_slice']:.3f} | {vs_torch} | "
            f"{speed['s_per_slice'] / seed['s_per_slice']:.3f} | {overhead} | "
            f"{start['wall_s']:.2f} | {whole:.1f} | {speed['peak_mb']:.0f} |"
            if start
            else f"| {runtime} | {speed['precision']} | {speed['s_per_slice']:.3f} | {vs_torch} | "
            f"{speed['s_per_slice'] / seed['s_per_slice']:.3f} | {overhead} | - | - | {speed['peak_mb']:.0f} |"
        )
    if torch_speed:
        print(
            f"| seed architecture (random weights), torch | fp32 | {seed['s_per_slice']:.3f} | "
            f"{seed['s_per_slice'] / torch_speed:.2f} | 1 | - | - | - | {seed['peak_mb']:.0f} |"
        )
    print(
        f"\npython -c 'import torch': {torch_import:.2f} s; start-up overhead minus that: "
        + ", ".join(f"{r} {s['overhead_s'] - torch_import:+.2f} s" for r, sp, s, _ in rows if s)
    )
    for runtime in sorted({r for r, _, s, _ in rows if s}):
        clamped = _run_json(["--worker", "clamped", "--runtime", runtime] + common)
        parts = [
            f"{name}: {v['clamped']} of {v['voxels']:,} voxels (largest change {v['largest_change_hu']:.0f} HU)"
            for name, v in clamped["volumes"].items()
        ]
        print(f"change limit {clamped['limit_hu']:g} HU, {runtime}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
