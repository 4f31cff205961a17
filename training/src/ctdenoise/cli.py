"""The ``ctdenoise`` command: a thin layer over the engine's functions.

Every command maps to one engine call. User errors (:class:`CTDenoiseError`) print one line,
``error: ...``, and exit with status 2; an interrupt exits with 130; nothing prints a traceback
unless ``CTDENOISE_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from ctdenoise import __version__
from ctdenoise.errors import CTDenoiseError, CTDenoiseWarning, DenoiseCancelled
from ctdenoise.options import AUTO_TTA, TTA_COPIES, add_cli_arguments, tta_argument
from ctdenoise.progress import event_json


def _cmd_info(args: argparse.Namespace) -> int:
    from ctdenoise.hu import declared_padding, padding_threshold, units_problem
    from ctdenoise.io import read_volume

    volume = read_volume(args.input)
    array = volume.array
    meta = {k: v for k, v in volume.metadata.items() if k not in ("dicom_files", "slice_positions")}
    problem = units_problem(array)
    if problem is not None:
        _print_warning(f"{args.input} is probably not in HU: {problem}")
    print(
        json.dumps(
            {
                "shape_zyx": list(volume.shape),
                "spacing_xyz_mm": [round(float(s), 6) for s in volume.spacing],
                "origin_xyz_mm": [round(float(s), 6) for s in volume.origin],
                "direction": [round(float(s), 6) for s in volume.direction],
                "orientation": _orientation_code(volume.direction),
                "hu_min": float(array.min()),
                "hu_max": float(array.max()),
                "hu_mean": float(array.mean()),
                "padding_hu": padding_threshold(array, declared_padding(volume.metadata)),
                "looks_like_hu": problem is None,
                "metadata": meta,
            },
            indent=2,
            default=str,
        )
    )
    return 0


def _orientation_code(direction: Sequence[float]) -> str:
    """The closest orientation code of a direction matrix (e.g. LPS for axial DICOM)."""
    import numpy as np

    axes = np.asarray(direction, dtype=float).reshape(3, 3)
    letters = ("LR", "PA", "SI")
    code = ""
    for j in range(3):
        p = int(np.argmax(np.abs(axes[:, j])))
        code += letters[p][0 if axes[p, j] > 0 else 1]
    return code


def _cmd_models(args: argparse.Namespace) -> int:
    from ctdenoise.networks.complexity import model_summary_rows

    rows = model_summary_rows()
    print(f"{'network':<26}{'parameters':>14}{'GFLOP/slice':>14}{'vs seed':>10}   (one 512x512 slice, FLOP = 2 x MAC)")
    for row in rows:
        ratio = row.get("ratio_to_seed")
        ratio_text = f"{ratio:.3f}" if isinstance(ratio, float) else "-"
        print(f"{row['name']:<26}{row['parameters']:>14,}{row['gflops']:>14.1f}{ratio_text:>10}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ctdenoise.io import check_paths, read_volume, validate_output_path, write_volume
    from ctdenoise.physics import simulate_volume

    check_paths(Path(args.input), Path(args.output))
    volume = read_volume(args.input)
    validate_output_path(args.output, volume)
    options: dict[str, Any] = {"device": args.device}
    for key in ("photons", "electronic_noise", "views", "kernel"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.progress == "json":
        options["progress"] = lambda done, total: print(
            event_json("progress", slices_done=done, slices_total=total, fraction=round(done / total, 4)), flush=True
        )
    low = simulate_volume(volume, args.dose, seed=args.seed, force=args.force, **options)
    description = f"simulated {args.dose:g} dose (ctdenoise)"
    path = write_volume(low, args.output, series_description=description)
    if args.progress == "json":
        print(event_json("done", output=str(path), dose=args.dose, slices=volume.shape[0]), flush=True)
    else:
        facts = low.metadata.get("simulation", {})
        noise = ""
        if facts.get("full_dose_noise_hu") and facts.get("added_noise_hu"):
            kernel = facts.get("kernel")
            kernel = f"Gaussian window {kernel:.3f} cycles/px" if isinstance(kernel, float) else kernel
            noise = (
                f"; own noise {facts['full_dose_noise_hu']:.1f} HU, added {facts['added_noise_hu']:.1f} HU, "
                f"noise texture: {kernel}"
            )
        print(f"wrote {path} (simulated dose fraction {args.dose:g}, {volume.shape[0]} slices{noise})")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ctdenoise.data import (
        check_cache_target,
        discover_dataset,
        discover_full_dose,
        discover_pair,
        prepare_cache,
        split_by_patient,
    )

    _require_input(args.source)
    check_cache_target(Path(args.out), args.overwrite)
    if args.low is not None:
        records = discover_pair(args.source, args.low, low_dose_fraction=args.low_dose_fraction)
    elif args.layout == "full":
        records = discover_full_dose(args.source)
    else:
        records = discover_dataset(args.source, layout=args.layout)
    records = [r for r in records if _keep_record(r, args)]
    if not records:
        raise CTDenoiseError(f"no scans in {args.source} match --thickness/--kernel: check the filters")
    records = split_by_patient(records, val_patients=args.val_patients, val_fraction=args.val_fraction, seed=args.seed)
    with tqdm(total=len(records), unit="scan", disable=args.quiet) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.total = total
            bar.set_postfix_str(message[-40:], refresh=False)
            bar.update(done - bar.n)

        index = prepare_cache(
            records,
            args.out,
            simulate_dose=args.simulate_dose,
            seed=args.seed,
            seed_pixel_spacing_mm=args.seed_pixel_spacing,
            overwrite=args.overwrite,
            progress=progress,
        )
    print(json.dumps(index.summary(), indent=2, default=str))
    print(f"cache written to {args.out}")
    return 0


def _keep_record(record: Any, args: argparse.Namespace) -> bool:
    if (
        args.thickness is not None
        and record.thickness_mm is not None
        and abs(record.thickness_mm - args.thickness) > 1e-6
    ):
        return False
    if args.kernel is not None and record.kernel is not None and record.kernel.upper() != args.kernel.upper():
        return False
    return True


def _cmd_train(args: argparse.Namespace) -> int:
    from ctdenoise.training import documented_defaults, load_config, train

    if args.print_config:
        print(documented_defaults(), end="")
        return 0
    if args.config is None or args.out is None:
        raise CTDenoiseError("train needs --config FILE and --out DIR (see 'ctdenoise train --print-config')")
    config = load_config(args.config)
    stop = _StopFlag()
    with stop:
        result = train(
            config, Path(args.out), resume=args.resume, max_steps=args.max_steps, progress=not args.quiet, cancel=stop
        )
    if stop():
        print(f"stopped at step {result.step}; state saved to {Path(args.out) / 'last.pt'} (continue with --resume)")
        return 130
    print(f"trained {result.step} steps in {result.seconds:.1f} s; model: {result.model_path}")
    if result.metrics:
        print(
            json.dumps({k: result.metrics[k] for k in ("denoised", "low_dose_input") if k in result.metrics}, indent=2)
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ctdenoise.export import export_source

    source = Path(args.state)
    _require_input(args.state)
    _refuse_same_path(str(source / "last.pt" if source.is_dir() else source), args.out)
    _check_model_output(args.out)
    if args.cache is not None:
        _require_input(args.cache)
    path, metadata = export_source(
        source,
        args.out,
        cache=args.cache,
        second_pass=args.second_pass,
        second_pass_fine=None if args.second_pass_fine is None else tuple(args.second_pass_fine),
    )
    limit = metadata.get("change_limit_hu")
    second = metadata.get("second_pass_noise_hu")
    fine = metadata.get("second_pass_fine_noise_hu")
    print(
        f"exported {path} (preset {metadata['generator']['preset']}, "
        f"{(metadata.get('training') or {}).get('steps', '?')} steps, change limit {limit} HU"
        + ("" if second is None else f", second pass above {second} HU of noise")
        + ("" if fine is None else f" ({fine} HU on pixels up to {metadata['second_pass_fine_pixel_mm']} mm)")
        + ")"
    )
    return 0


def _cmd_convert_seed(args: argparse.Namespace) -> int:
    from ctdenoise.checkpoints import convert_seed

    _require_input(args.src)
    _refuse_same_path(args.src, args.dst)
    _check_model_output(args.dst)
    path = convert_seed(args.src, args.dst)
    print(f"converted {args.src} -> {path} (preset seed, normalisation HU clipped at -1000, /4000)")
    return 0


def _cmd_denoise(args: argparse.Namespace) -> int:
    from ctdenoise.inference import Denoiser
    from ctdenoise.options import DenoiseOptions

    if args.archive:
        return _denoise_archive(args)
    options = DenoiseOptions.from_cli(args)
    if args.progress == "json":  # a parent process (the Slicer module) learns which process to stop
        print(event_json("started", pid=os.getpid(), version=__version__), flush=True)
    stop = _StopFlag()
    report = _progress_printer(args.progress)
    try:
        with stop:
            summary = Denoiser(args.checkpoint, options).file(
                args.input, args.output, noise_output=args.noise_out, progress=report, cancel=stop
            )
    except DenoiseCancelled as exc:  # a CTDenoiseError, but a stop request exits like an interrupt
        print(f"error: {exc}", file=sys.stderr)
        return 130
    if args.progress == "json":
        print(event_json("done", **summary), flush=True)
    else:
        passes = ", two passes" if summary.get("passes") == 2 else ""
        passes += f", {summary['tta']} views averaged" if int(summary.get("tta") or 1) > 1 else ""
        print(
            f"wrote {summary['output']} ({summary['slices']} slices in {summary['seconds']:.1f} s on "
            f"{summary['runtime']} {summary['device']}{passes})"
        )
    return 0


def _denoise_archive(args: argparse.Namespace) -> int:
    """``denoise --archive``: every study of a folder tree or list file, one model load (see :mod:`ctdenoise.archive`).

    Under torchrun each process takes its share of the studies; rank 0 reports the merged summary
    and sets the exit status, the others exit 0 once their share is recorded.
    """
    from ctdenoise.archive import SUMMARY_NAME, denoise_archive, rank_options
    from ctdenoise.devices import torchrun_rank
    from ctdenoise.options import DenoiseOptions

    if args.noise_out is not None:
        raise CTDenoiseError("--noise-out names one volume and does not combine with --archive: leave it out")
    rank, world_size, local_rank = torchrun_rank()
    options = DenoiseOptions.from_cli(args)
    if world_size > 1:
        options = rank_options(options, local_rank)
    if args.progress == "json":
        print(event_json("started", pid=os.getpid(), version=__version__, rank=rank), flush=True)
    stop = _StopFlag()
    with stop:
        summary = denoise_archive(
            args.input,
            args.output,
            args.checkpoint,
            options,
            rank=rank,
            world_size=world_size,
            progress=_study_printer(args.progress, rank, world_size),
            cancel=stop,
        )
    if rank != 0:
        return 0 if summary["complete"] else 130
    _report_archive(summary, Path(args.output) / SUMMARY_NAME, args.progress)
    if not summary["complete"]:
        print("error: stopped; finished outputs are kept: rerun the same command to continue", file=sys.stderr)
        return 130
    return 1 if summary["totals"]["failed"] else 0


def _study_printer(mode: str, rank: int, world_size: int) -> Callable[[dict[str, Any]], None]:
    """The archive's per-study callback: a JSON line, or a tqdm bar over studies plus the study's warnings."""
    if mode == "json":
        return lambda event: print(event_json("study", **event), flush=True)
    bars: list[Any] = []

    def show(event: dict[str, Any]) -> None:
        lines = [f"warning: {event['input']}: {message}" for message in event.get("warnings", ())]
        if mode == "none":
            for line in lines:
                print(line, file=sys.stderr, flush=True)
            return
        if not bars:
            from tqdm import tqdm

            label = f"rank {rank}" if world_size > 1 else None
            bars.append(tqdm(total=event["total"], unit="study", desc=label, dynamic_ncols=True))
        bar = bars[0]
        for line in lines:
            bar.write(line, file=sys.stderr)
        bar.set_postfix_str(f"{event['status']} {Path(event['input']).name}", refresh=False)
        bar.update(event["index"] - bar.n)
        if event["index"] >= event["total"]:
            bar.close()

    return show


def _report_archive(summary: dict[str, Any], path: Path, mode: str) -> None:
    """The archive's last words: a ``done`` JSON line, or each failure on stderr and one line of totals."""
    totals = summary["totals"]
    if mode == "json":
        print(event_json("done", summary=str(path), **totals), flush=True)
        return
    for study in summary["studies"]:
        if study["status"] == "failed":
            print(f"failed: {study['input']}: {study['message']}", file=sys.stderr)
    where = sorted({f"{w['runtime']} {w['device']}" for w in summary["workers"] if w["runtime"] != "none"})
    print(
        f"{totals['done']} denoised, {totals['skipped']} skipped (done before), {totals['failed']} failed of "
        f"{totals['studies']} studies in {summary['wall_seconds']:.1f} s{' on ' + ', '.join(where) if where else ''}; "
        f"summary: {path}"
    )


def _cmd_distill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ctdenoise.distill import DistillSettings, distill

    _require_input(args.teacher)
    _require_input(args.cache)
    _refuse_same_path(args.teacher, args.out)
    _check_model_output(args.out)
    student = {
        key: getattr(args, key)
        for key in ("ngf", "n_res_blocks", "n_downsampling", "residual_highpass_sigma", "lowpass_tail")
        if getattr(args, key) is not None
    }
    settings = DistillSettings(
        student,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        target=args.target,
        crop=args.crop,
        loss=args.loss,
        init=args.init,
        teacher_tta=args.teacher_tta,
        max_slices=args.max_slices,
        augment=args.augment,
        identity_pairs=not args.no_identity_pairs,
        noise_scale=args.noise_scale,
    )
    stop = _StopFlag()
    with stop, tqdm(total=settings.steps, unit="step", disable=args.quiet, dynamic_ncols=True) as bar:

        def progress(step: int, steps: int, loss: float) -> None:
            bar.set_postfix_str(f"{settings.loss.upper()} {loss:.5f}", refresh=False)
            bar.update(step - bar.n)

        path, agreement = distill(args.teacher, args.cache, args.out, settings, progress=progress, cancel=stop)
    print(f"wrote {path}; on the validation pairs: {json.dumps(agreement)}")
    return 0


def _cmd_fix_norms(args: argparse.Namespace) -> int:
    from ctdenoise.norm_calibration import fix_norms

    _require_input(args.model)
    _require_input(args.cache)
    _refuse_same_path(args.model, args.out)
    _check_model_output(args.out)
    path, record = fix_norms(args.model, args.cache, args.out, max_slices=args.max_slices)
    print(f"wrote {path}: instance norms fixed at their statistics on {record['slices']} training slices")
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    from ctdenoise.weight_averaging import average_models

    for model in args.models:
        _require_input(model)
        _refuse_same_path(model, args.out)
    _require_input(args.cache)
    _check_model_output(args.out)
    path, record = average_models(args.models, args.cache, args.out, weights=args.weights)
    shares = ", ".join(f"{entry['file']} x {entry['weight']:g}" for entry in record["models"])
    print(f"wrote {path}: the weights of {shares}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ctdenoise.evaluate import evaluate, load_cases, markdown, write_report

    if not args.full and not args.low:
        raise CTDenoiseError("nothing to evaluate: give --full (and --low for real pairs) or --low alone")
    from ctdenoise.inference import BUNDLED_MODELS

    named = {"bundled", *BUNDLED_MODELS}  # Denoiser resolves the names
    for source in (*args.full, *args.low, *(m for m in args.model if m not in named)):
        _require_input(source)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CTDenoiseError(f"--out {out} is a file: give a folder for the report and figures")
    labels = {"bundled": "bundled model", "cyclegan": "bundled model", "supervised": "bundled supervised model"}
    names = args.names or [labels.get(m) or Path(m).name.split(".")[0] for m in args.model]
    if len(names) != len(args.model):
        raise CTDenoiseError(f"{len(names)} --names for {len(args.model)} --model: give one name per model")
    cases = load_cases(args.full, args.low, dose=args.dose, seed=args.seed, max_slices=args.max_slices)
    models = [(name, None if m == "bundled" else m) for name, m in zip(names, args.model)]
    steps = len(cases) * (len(models) * len(args.tta) + len(args.baselines))
    with tqdm(total=steps, unit="run", disable=args.quiet) as bar:

        def progress(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)

        report = evaluate(cases, models, args.baselines, device=args.device, tta=args.tta, progress=progress)
    files = write_report(report, out)
    print(markdown(report), end="")
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ctdenoise.evaluation import REFERENCE_NAME, compare_volumes, comparison_figure, metrics_markdown, parse_roi
    from ctdenoise.io import read_volume

    names = _candidate_names(args.names, args.candidates)
    for source in (args.reference, *args.candidates):
        _require_input(source)
    outputs = [
        (path, suffix) for path, suffix in ((args.json, ".json"), (args.markdown, ".md"), (args.png, ".png")) if path
    ]
    for output, suffix in outputs:
        for source in (args.reference, *args.candidates):
            _refuse_same_path(source, output)
        if not output.lower().endswith(suffix):
            raise CTDenoiseError(f"output {output} should end in {suffix}: name it e.g. {Path(output).stem}{suffix}")
    if len({Path(o).resolve() for o, _ in outputs}) != len(outputs):
        raise CTDenoiseError("--json, --markdown and --png name the same file: give each its own path")
    roi = parse_roi(args.roi) if args.roi else None
    reference = read_volume(args.reference).array
    index = reference.shape[0] // 2 if args.slice is None else args.slice
    if args.png and not 0 <= index < reference.shape[0]:
        raise CTDenoiseError(
            f"--slice {index} is outside the reference's slices 0..{reference.shape[0] - 1}: choose one inside"
        )
    volumes = {name: read_volume(path).array for name, path in zip(names, args.candidates)}
    result = compare_volumes(reference, volumes, window=args.window, roi=roi)
    table = metrics_markdown(result)
    print(table, end="")
    if args.json or args.markdown:
        from ctdenoise.fileutils import atomic_write

        if args.json:
            text = json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n"
            atomic_write(Path(args.json), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        if args.markdown:
            atomic_write(Path(args.markdown), lambda tmp: tmp.write_text(table, encoding="utf-8"))
    if args.png:
        panels = {REFERENCE_NAME: reference[index], **{n: v[index] for n, v in volumes.items()}}
        difference = None
        if len(volumes) >= 2:
            first, last = names[0], names[-1]
            difference = (f"{first} - {last}", volumes[first][index] - volumes[last][index])
        comparison_figure(
            panels,
            Path(args.png),
            window=args.window,
            difference=difference,
            roi_yx=roi[1:] if roi and roi[0].start <= index < roi[0].stop else None,
            title=f"slice {index}",
        )
        print(f"wrote {args.png}")
    return 0


def _candidate_names(names: Optional[Sequence[str]], candidates: Sequence[str]) -> list[str]:
    """One distinct display name per candidate: ``--names`` or the file names."""
    chosen = list(names) if names else [Path(p).name for p in candidates]
    if len(chosen) != len(candidates):
        raise CTDenoiseError(
            f"--names gives {len(chosen)} names for {len(candidates)} candidates: give one per candidate"
        )
    if len(set(chosen)) != len(chosen):
        raise CTDenoiseError(f"candidate names {chosen} repeat: give distinct names with --names")
    return chosen


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, for strict JSON (PSNR of identical images is +inf)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _progress_printer(mode: str) -> Optional[Callable[[Any], None]]:
    """The ``--progress`` callback: JSON lines on stdout, a tqdm bar on stderr, or nothing."""
    if mode == "json":
        return lambda info: print(info.to_json(), flush=True)
    if mode == "none":
        return None
    from tqdm import tqdm

    bars: list[Any] = []

    def show(info: Any) -> None:
        if not bars:
            bars.append(
                tqdm(
                    total=info.slices_total,
                    unit="slice",
                    dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} slices{postfix}",
                )
            )
        bar = bars[0]
        bar.set_postfix_str(f"{info.elapsed_s:.0f} s, {info.eta_s:.0f} s left on {info.device}", refresh=False)
        bar.update(info.slices_done - bar.n)
        if info.slices_done >= info.slices_total:
            bar.close()

    return show


class _StopFlag:
    """Set by SIGINT/SIGTERM; polled by long engine calls as their ``cancel`` callback."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> "_StopFlag":
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def _print_warning(message: str) -> None:
    """A warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _warnings_shown(as_json: bool) -> Iterator[None]:
    """Show every engine warning as ``warning: ...`` on stderr, and as a JSON event on stdout when ``as_json``."""

    def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, CTDenoiseWarning):
            return previous(message, category, *args, **kwargs)
        _print_warning(str(message))
        if as_json:
            print(event_json("warning", message=str(message)), flush=True)
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("always", CTDenoiseWarning)
        previous = warnings.showwarning
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while a command runs, so both stop it the same clean way."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    """Signal handler: stop the running command as Ctrl-C would."""
    raise KeyboardInterrupt


def _require_input(path: str) -> None:
    """Refuse a missing input before any work."""
    if not Path(path).exists():
        raise CTDenoiseError(f"input {path} does not exist: check the path")


def _check_model_output(path: str) -> None:
    """A model output must be a .safetensors path that is not an existing folder."""
    target = Path(path)
    if target.suffix.lower() != ".safetensors":
        raise CTDenoiseError(f"model output {path} must end in .safetensors: e.g. {target.stem or 'model'}.safetensors")
    if target.is_dir():
        raise CTDenoiseError(f"model output {path} is a folder: give a file path ending in .safetensors")


def _refuse_same_path(source: str, target: str) -> None:
    if Path(source).resolve() == Path(target).resolve():
        raise CTDenoiseError(f"output {target} is the input: choose another output path (inputs are never overwritten)")


TRAINING_EXTRAS = ("torch", "monai", "yaml", "matplotlib", "tensorboard", "onnx", "onnxscript", "safetensors")
"""Packages of ``ctdenoise[torch]``: a command that needs one on a base install gets the install line."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``error: ...`` line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}: see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = _Parser(prog="ctdenoise", description="Unpaired low-dose CT denoising with CycleGAN.")
    parser.add_argument("--version", action="version", version=f"ctdenoise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="print a CT volume's shape, geometry, HU range and DICOM facts")
    p.add_argument("input", help="DICOM folder or file, .nii/.nii.gz, .nrrd or .mha")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="print parameter counts and FLOPs per 512x512 slice of the network presets")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "simulate", help="simulate a low-dose scan from a full-dose one (projection-domain noise insertion)"
    )
    p.add_argument("input", help="full-dose CT: DICOM folder or file, NIfTI, NRRD or MHA")
    p.add_argument("output", help="output path (.nii.gz, .nrrd, .mha; no extension: a DICOM series folder)")
    p.add_argument("--dose", type=float, default=0.25, help="dose fraction in (0, 1] (default 0.25: quarter dose)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument(
        "--photons",
        type=float,
        default=None,
        help="full-dose photons per ray (default: calibrated so the added noise matches the scan's own noise)",
    )
    p.add_argument(
        "--electronic-noise", dest="electronic_noise", type=float, default=None, help="electronic noise std in counts"
    )
    p.add_argument("--views", type=int, default=None, help="projection views over 180 degrees")
    p.add_argument(
        "--kernel",
        default=None,
        help="noise reconstruction window: matched (default: fitted to the image's own noise texture), ramp, shepp-logan, cosine, hamming or hann",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--progress", default="none", choices=["json", "none"], help="json: one object per line on stdout")
    p.add_argument(
        "--force", action="store_true", help="simulate from input that does not look like HU instead of refusing it"
    )
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "prepare", help="convert a dataset into a training cache (int16 memory-mapped arrays + index.json)"
    )
    p.add_argument(
        "source",
        help="dataset root (AAPM/Mayo tree, seed {train,test}/{full_dose,quarter_dose}, or a folder of full-dose volumes)",
    )
    p.add_argument("--out", required=True, help="cache folder to create")
    p.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "aapm", "seed", "full"],
        help="dataset layout (default: detect; 'full': folder of full-dose volumes only)",
    )
    p.add_argument(
        "--low",
        default=None,
        help="folder of low-dose volumes paired by name with SOURCE's full-dose volumes (generic layout)",
    )
    p.add_argument(
        "--low-dose-fraction", type=float, default=0.25, help="dose fraction of --low volumes (default 0.25)"
    )
    p.add_argument(
        "--simulate-dose",
        type=float,
        default=None,
        help="simulate this dose fraction for full-dose scans without a low-dose partner",
    )
    p.add_argument(
        "--seed-pixel-spacing",
        type=float,
        default=0.7,
        help="pixel size in mm assumed for seed-layout .npy slices when simulating (default 0.7)",
    )
    p.add_argument("--thickness", type=float, default=None, help="keep only this slice thickness in mm (AAPM: 1 or 3)")
    p.add_argument("--kernel", default=None, help="keep only this reconstruction kernel (AAPM: B30 or D45)")
    p.add_argument(
        "--val-patients",
        nargs="*",
        default=None,
        help="patients held out for validation (default: a fraction chosen by seed)",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="fraction of patients for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and the simulation (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train a CycleGAN from a prepared cache")
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument("--out", help="run folder (checkpoints, TensorBoard logs, model.safetensors)")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument(
        "--print-config", action="store_true", help="print the default configuration with documentation and exit"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "export", help="export a training state (or re-export a model) as a .safetensors inference model"
    )
    p.add_argument("state", help="run folder, training state (last.pt, checkpoints/step_N.pt) or .safetensors model")
    p.add_argument("--out", required=True, help="destination .safetensors")
    p.add_argument(
        "--cache", default=None, help="training cache to measure the change limit on (default: the run's own cache)"
    )
    p.add_argument(
        "--second-pass",
        dest="second_pass",
        action="store_true",
        help="run the model a second time on input that one pass leaves noisier than 90%% of the cache's full-dose "
        "training slices (for CycleGANs, which keep their training full dose's noise)",
    )
    p.add_argument(
        "--second-pass-fine",
        dest="second_pass_fine",
        nargs=2,
        type=float,
        default=None,
        metavar=("PIXEL_MM", "NOISE_HU"),
        help="with --second-pass: on pixels no larger than PIXEL_MM run the second pass above NOISE_HU instead "
        "(a break-even chosen on validation data; where pixels are fine, less noise pays for a second pass)",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "distill", help="distil a model into a smaller, faster student (same preset) on a training cache"
    )
    p.add_argument("teacher", help="the model to follow (.safetensors or training state)")
    p.add_argument(
        "--cache", required=True, help="training cache (from 'ctdenoise prepare') whose train slices it learns on"
    )
    p.add_argument("--out", required=True, help="destination .safetensors")
    p.add_argument("--ngf", type=int, default=None, help="student width (the teacher's: 32 for the bundled model)")
    p.add_argument("--n-res-blocks", dest="n_res_blocks", type=int, default=None, help="student residual blocks")
    p.add_argument("--n-downsampling", dest="n_downsampling", type=int, default=None, help="student downsampling steps")
    p.add_argument(
        "--residual-highpass-sigma",
        dest="residual_highpass_sigma",
        type=float,
        default=None,
        help="student residual high-pass width in pixels (fast preset; 0: off, so low-frequency noise can go too)",
    )
    p.add_argument(
        "--lowpass-tail",
        dest="lowpass_tail",
        action="store_const",
        const=True,
        default=None,
        help="student gets a second, low-passed residual tail (starting at zero) beside its high-passed one, so "
        "fine-tuning can remove low-frequency noise too (fast preset with a residual high-pass)",
    )
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument(
        "--target",
        choices=["teacher", "full"],
        default="teacher",
        help="teacher: follow the teacher's outputs; full: supervised, paired to the cache's full-dose slices",
    )
    p.add_argument(
        "--crop", type=int, default=0, help="random square crops of this size (multiple of 16; default 0: whole slices)"
    )
    p.add_argument(
        "--teacher-tta",
        type=int,
        default=1,
        choices=TTA_COPIES,
        help="with --target teacher: follow the teacher's outputs averaged over 1, 2, 4 or 8 mirrored/rotated views",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="each step shows its slices in one of 8 mirrored/rotated views, and with --target full flips the "
        "sign of the simulated noise half the time (16 pairs from each)",
    )
    p.add_argument(
        "--noise-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="with --target full --augment: also scale the simulated noise by a random factor between 1/S and S "
        "(default 1: the cache's dose only), for noisier and cleaner inputs",
    )
    p.add_argument(
        "--no-identity-pairs",
        dest="no_identity_pairs",
        action="store_true",
        help="with --target full: learn only low -> full dose, not also full dose -> itself (full dose then gets "
        "denoised too)",
    )
    p.add_argument("--loss", choices=["l1", "l2"], default="l1", help="regression loss (l2 suits noisy targets)")
    p.add_argument(
        "--init",
        choices=["identity", "teacher"],
        default="identity",
        help="identity: the student starts as the identity; teacher: from the teacher's weights (fine-tuning)",
    )
    p.add_argument("--batch-size", type=int, default=2, help="whole slices per step (default 2)")
    p.add_argument(
        "--max-slices",
        type=int,
        default=64,
        help="training slices per dose taken from the cache, evenly spread (default 64)",
    )
    p.add_argument(
        "--lr", type=float, default=1e-3, help="Adam learning rate at the start (default 1e-3, cosine decay)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser(
        "fix-norms",
        help="freeze a model's instance norms at their statistics on its training slices, so that it gives the "
        "same result on a crop as on the whole slice",
    )
    p.add_argument("model", help="the model (.safetensors)")
    p.add_argument("--cache", required=True, help="its training cache (the statistics come from its train split)")
    p.add_argument("--out", required=True, help="destination .safetensors")
    p.add_argument("--max-slices", type=int, default=64, help="training slices per dose, evenly spread (default 64)")
    p.set_defaults(func=_cmd_fix_norms)

    p = sub.add_parser(
        "average",
        help="average the weights of models fine-tuned from one another (WiSE-FT): one model that keeps "
        "the strengths of both, at the cost of one",
    )
    p.add_argument("models", nargs="+", help="two or more models (.safetensors) with the same architecture")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per model, scaled to sum to 1 (default: equal)")
    p.add_argument("--cache", required=True, help="the training cache (change limit, graphs and validation)")
    p.add_argument("--out", required=True, help="destination .safetensors")
    p.set_defaults(func=_cmd_average)

    p = sub.add_parser("convert-seed", help="import a checkpoint saved by the seed project (never unpickles code)")
    p.add_argument("src", help="seed .pth file (keys G_Q2F_state_dict, G_F2Q_state_dict, ...)")
    p.add_argument("dst", help="destination .safetensors")
    p.set_defaults(func=_cmd_convert_seed)

    p = sub.add_parser("denoise", help="denoise a whole CT volume, or every study of an archive (--archive)")
    p.add_argument(
        "input", help="DICOM folder or file, NIfTI, NRRD or MHA; with --archive: a folder tree or a list file"
    )
    p.add_argument(
        "output",
        help="output path (.nii.gz, .nrrd, .mha; no extension: a new DICOM series folder); with --archive: a folder",
    )
    p.add_argument(
        "--archive",
        action="store_true",
        help="denoise every study of INPUT (a folder tree, or a text file with one path per line) to the same "
        "relative paths under the folder OUTPUT, loading the model once; a rerun skips finished outputs; "
        "OUTPUT/summary.json lists every study; under torchrun the processes share the studies",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model file (.safetensors, training .pt or seed .pth) or a bundled model's name: cyclegan (the "
        "default, trained without pairs) or supervised (fine-tuned on simulated pairs)",
    )
    add_cli_arguments(p)
    p.add_argument("--noise-out", default=None, help="also write the removed noise (input minus output) here")
    p.add_argument(
        "--progress",
        default="bar",
        choices=["bar", "json", "none"],
        help="progress display; json: one object per line on stdout (progress, warning, done)",
    )
    p.set_defaults(func=_cmd_denoise)

    p = sub.add_parser(
        "evaluate",
        help="models against BM3D, non-local means and Gaussian smoothing: paired (real or simulated) or no-reference",
    )
    p.add_argument("--full", nargs="+", default=[], help="full-dose volumes (references)")
    p.add_argument(
        "--low", nargs="+", default=[], help="low-dose volumes: paired with --full in order, or alone (no reference)"
    )
    p.add_argument(
        "--model",
        nargs="+",
        default=["bundled"],
        help="models to evaluate: files, or bundled models by name: bundled or cyclegan (the default), supervised",
    )
    p.add_argument("--names", nargs="+", default=None, help="a display name per model")
    p.add_argument(
        "--baselines", nargs="*", default=["bm3d", "nlm", "gaussian"], help="bm3d, nlm, gaussian (default: all)"
    )
    p.add_argument("--dose", type=float, default=0.25, help="simulated dose when only --full is given (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    p.add_argument("--max-slices", type=int, default=8, help="evenly spread slices per volume (default 8; 0: all)")
    p.add_argument("--device", default="cpu", help="device for the models (default cpu)")
    p.add_argument(
        "--tta",
        type=tta_argument,
        nargs="+",
        default=[AUTO_TTA],
        choices=(AUTO_TTA, *TTA_COPIES),
        help="run each model with each of these test-time augmentations (auto, 1, 2, 4, 8; default auto, "
        "as ctdenoise denoise runs)",
    )
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "compare", help="metrics (PSNR/SSIM/RMSE, ROI noise) and a side-by-side PNG against a full-dose reference"
    )
    p.add_argument("reference", help="full-dose volume")
    p.add_argument("candidates", nargs="+", help="volumes of the same scan to compare (e.g. low dose, denoised)")
    p.add_argument("--names", nargs="+", default=None, help="a display name per candidate")
    p.add_argument(
        "--window",
        nargs=2,
        type=float,
        default=[-160.0, 240.0],
        metavar=("LOW", "HIGH"),
        help="HU window for PSNR/SSIM and the figure (default -160 240)",
    )
    p.add_argument(
        "--roi", default=None, help="homogeneous region z0:z1,y0:y1,x0:x1 (voxels) for noise std and mean HU"
    )
    p.add_argument("--slice", type=int, default=None, help="slice shown in the PNG (default: the middle one)")
    p.add_argument("--png", default=None, help="write the side-by-side figure here")
    p.add_argument(
        "--json", default=None, help="write the metrics as JSON here (an infinite PSNR, identical images, is null)"
    )
    p.add_argument("--markdown", default=None, help="write the metrics table as Markdown here")
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ctdenoise`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_as_interrupt(), _warnings_shown(getattr(args, "progress", None) == "json"):
            return int(args.func(args) or 0)
    except CTDenoiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # a command of the training extras on a CPU-only install
        missing = (exc.name or "").split(".")[0]
        if missing not in TRAINING_EXTRAS:
            raise
        print(
            f"error: 'ctdenoise {args.command}' needs {missing}, part of the training extras: "
            "pip install 'ctdenoise[torch]' (denoising on the CPU needs only the base install)",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:  # e.g. 'ctdenoise info X | head -1'
        sys.stderr.close()
        return 0
    except OSError as exc:  # disk full, no permission, a file vanished: the environment, not a bug
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} (check free disk space and permissions)", file=sys.stderr)
        return 2
    except Exception as exc:  # an engine bug: one line unless debugging
        if os.environ.get("CTDENOISE_DEBUG"):
            raise
        print(
            f"error: internal error {type(exc).__name__}: {exc} (rerun with CTDENOISE_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
