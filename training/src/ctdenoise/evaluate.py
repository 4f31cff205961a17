"""``ctdenoise evaluate``: models against classical baselines on low-dose CT, with or without a reference.

Paired mode (a full-dose reference, real or with quarter dose simulated by the tool), per volume and
overall, for the low-dose input, every model and every baseline (:mod:`ctdenoise.baselines`):

- PSNR and SSIM in the [-160, 240] HU window (data range 400; MONAI's Gaussian SSIM 11x11, sigma 1.5)
  and over [-1024, 3072] (data range 4096); RMSE in HU;
- noise std (above the anatomy band, :func:`ctdenoise.noise.band_noise_std`) and mean HU shift
  against the reference, in flat soft-tissue patches found automatically in the reference, and the
  noise std in flat bright patches (150-700 HU: contrast-filled vessels, enhanced organs);
- the noise power spectrum of what each method removed (input minus output), its mean frequency, and
  the share of the true noise's power (input minus reference) it removed at low and high frequency;
- how much anatomy leaks into the removed noise (:func:`edge_correlation`), and seconds per slice;
- for models, how much the output changes when the anatomy is mirrored and turned a quarter
  (:func:`consistency`): a denoiser should not depend on which way the patient lies;
- for models, how much the output changes when only the central half of the slice is given
  (:func:`crop_consistency`): nor should it depend on the field of view.

No-reference mode (a low-dose scan alone, what most users have): flat-tissue noise ratio output /
input, mean HU shift, edge correlation of the removed noise and seconds per slice.

Volumes are read, viewed axially (:mod:`ctdenoise.orientation`) and sampled to ``max_slices``
evenly spread slices. Output: ``report.json``, ``report.md`` and figures (zoomed crops with
difference maps, per-slice PSNR, NPS of the removed noise).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ctdenoise.baselines import BASELINES, baseline, blind_sigma, gaussian_matched
from ctdenoise.errors import CTDenoiseError
from ctdenoise.noise import (
    LOW_FREQUENCY,
    FlatPatches,
    band_noise_std,
    box_mean,
    find_flat_patches,
    mean_frequency,
    noise_power_spectrum,
    smooth,
)

BRIGHT_HU = (150.0, 700.0)
"""Flat bright tissue (contrast-filled vessels, enhanced parenchyma) in the smoothed image."""
WINDOW = (-160.0, 240.0)
FULL_RANGE = (-1024.0, 3072.0)
INPUT = "low dose (input)"


@dataclass
class Case:
    """One evaluated volume: axial low-dose slices, the optional full-dose reference and the pixel size."""

    name: str
    low: np.ndarray
    full: Optional[np.ndarray]
    spacing: tuple[float, float]
    slices: list[int] = field(default_factory=list)


def _axial(path: Path, max_slices: int) -> tuple[np.ndarray, tuple[float, float], list[int]]:
    from ctdenoise.io import read_volume
    from ctdenoise.orientation import reorientation

    volume = read_volume(path)
    turn = reorientation(volume.direction)
    axial = turn.to_target(volume.array)
    count = axial.shape[0] if max_slices <= 0 else min(max_slices, axial.shape[0])
    index = sorted({int(round(i)) for i in np.linspace(0, axial.shape[0] - 1, count)})
    sx, sy, _ = turn.target_spacing(volume.spacing)
    return np.ascontiguousarray(axial[index], dtype=np.float32), (float(sy), float(sx)), index


def load_cases(
    full: Sequence[Path] = (),
    low: Sequence[Path] = (),
    *,
    dose: float = 0.25,
    seed: int = 0,
    max_slices: int = 8,
) -> list[Case]:
    """Cases from paired files (``low`` and ``full`` in the same order), from ``full`` alone (low dose
    simulated at ``dose`` with ``seed``), or from ``low`` alone (no-reference mode)."""
    from ctdenoise.physics.lowdose import simulate_low_dose

    if full and low and len(full) != len(low):
        raise CTDenoiseError(
            f"{len(low)} low-dose and {len(full)} full-dose volumes given: pair them one to one, in the same order"
        )
    cases = []
    for i, path in enumerate(full or low):
        name = Path(path).name.split(".")[0] or Path(path).name
        if full:
            reference, spacing, index = _axial(Path(path), max_slices)
            if low:
                noisy, low_spacing, _ = _axial(Path(low[i]), max_slices)
                if noisy.shape != reference.shape or not np.allclose(low_spacing, spacing, rtol=1e-3):
                    raise CTDenoiseError(
                        f"{low[i]} and {path} differ in shape or pixel size: pair the two doses of one scan"
                    )
            else:
                noisy = simulate_low_dose(reference, spacing, dose, seed=seed + i)
            cases.append(Case(name, noisy, reference, spacing, index))
        else:
            noisy, spacing, index = _axial(Path(path), max_slices)
            cases.append(Case(name, noisy, None, spacing, index))
    return cases


def edge_correlation(removed: np.ndarray, image: np.ndarray) -> float:
    """Correlation of the removed noise's local energy with the edges of ``image`` inside the body.

    Noise is independent of anatomy, so a denoiser that removes only noise scores near 0; one that
    also removes edges and fine structure scores higher. Local energy: 5x5 mean of ``removed^2``;
    edges: gradient magnitude of the smoothed image; body: smoothed image above -500 HU.
    """
    base = smooth(np.asarray(image, dtype=np.float32).reshape((-1,) + image.shape[-2:]))
    energy = box_mean(np.asarray(removed, dtype=np.float64).reshape(base.shape) ** 2, 5)
    gy, gx = np.gradient(base, axis=(1, 2))
    body = base > -500.0
    if int(body.sum()) < 100:
        return float("nan")
    return float(np.corrcoef(energy[body], np.hypot(gy, gx)[body])[0, 1])


def consistency(run: Callable[[np.ndarray], np.ndarray], low: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """How far ``run`` on the mirrored, quarter-turned slices, turned back, lies from ``output``.

    Returns the 99.9th percentile and the largest absolute difference in HU over all voxels.
    """
    view = np.ascontiguousarray(np.rot90(low[..., ::-1], 1, axes=(1, 2)))
    back = np.rot90(run(view), -1, axes=(1, 2))[..., ::-1]
    difference = np.abs(back - output)
    return {
        "consistency_p999_hu": float(np.percentile(difference, 99.9)),
        "consistency_max_hu": float(difference.max()),
    }


CROP_MARGIN = 80
"""Pixels at each side of a crop left out of :func:`crop_consistency`: beyond the bundled networks'
receptive field (about 70 pixels), so a purely convolutional network agrees exactly."""


def crop_consistency(run: Callable[[np.ndarray], np.ndarray], low: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """How far ``run`` on the central half of the slices lies from ``output`` there, away from the crop's edges.

    A network with instance norm normalises each slice by its own statistics, so its output at a
    pixel depends on the whole field of view: a crop inside the body (a cropped volume, a small
    reconstruction field of view) changes it. Returns the mean absolute difference in HU at least
    :data:`CROP_MARGIN` pixels inside the crop; nothing for slices too small to leave such a region.
    """
    height, width = low.shape[-2:]
    if min(height, width) // 2 <= 2 * CROP_MARGIN:
        return {}
    top, left = height // 4 // 16 * 16, width // 4 // 16 * 16  # on the networks' downsampling grid
    window = (slice(None), slice(top, top + height // 2), slice(left, left + width // 2))
    crop = run(np.ascontiguousarray(low[window]))
    inner = (slice(None), slice(CROP_MARGIN, -CROP_MARGIN), slice(CROP_MARGIN, -CROP_MARGIN))
    return {"crop_diff_mean_hu": float(np.abs(crop[inner] - output[window][inner]).mean())}


def _band_power(frequency: np.ndarray, nps: np.ndarray, low: float, high: float) -> float:
    keep = (frequency >= low) & (frequency < high)
    return float(np.sum(nps[keep] * frequency[keep]))


@dataclass(frozen=True)
class _CaseNoise:
    """What every method of a case is measured against: its flat patches, the input's noise there and
    the NPS of the true noise (input minus reference; None without a reference). Computed once per case."""

    patches: Optional[FlatPatches]
    input_noise: Optional[float]
    true_nps: Optional[tuple[np.ndarray, np.ndarray]]
    bright: Optional[FlatPatches] = None


def _case_noise(case: Case) -> _CaseNoise:
    image = case.full if case.full is not None else case.low
    patches = find_flat_patches(image, spacing_mm=case.spacing)
    bright = find_flat_patches(image, tissue_hu=BRIGHT_HU, spacing_mm=case.spacing)
    if patches is None:
        return _CaseNoise(None, None, None, bright)
    true_nps = None
    if case.full is not None:
        true_nps = noise_power_spectrum(case.low - case.full, case.spacing, patches)
    return _CaseNoise(patches, band_noise_std(case.low, case.spacing, patches), true_nps, bright)


def _method_row(case: Case, output: np.ndarray, noise: _CaseNoise, seconds: float) -> dict[str, Any]:
    """The figures of one method's ``output`` on ``case``."""
    from ctdenoise.metrics import image_quality

    removed = case.low - output
    row: dict[str, Any] = {"seconds_per_slice": seconds / case.low.shape[0]}
    changed = bool(np.any(removed))
    if changed:
        row["edge_correlation"] = edge_correlation(removed, output)
    cut = LOW_FREQUENCY * 0.5 / max(case.spacing)
    if case.full is not None:
        for key, window in (("", WINDOW), ("_full_range", FULL_RANGE)):
            quality = image_quality(output, case.full, window)
            row[f"psnr{key}"], row[f"ssim{key}"] = quality["psnr"], quality["ssim"]
            row["rmse_hu"] = quality["rmse_hu"]
        row["psnr_per_slice"] = [image_quality(o, f, WINDOW)["psnr"] for o, f in zip(output, case.full)]
    if noise.bright is not None:
        row["bright_noise_hu"] = band_noise_std(output, case.spacing, noise.bright)
    patches = noise.patches
    if patches is not None:
        row["noise_hu"] = band_noise_std(output, case.spacing, patches)
        reference = case.full if case.full is not None else case.low
        row["mean_shift_hu"] = float(np.mean(patches.take(output) - patches.take(reference)))
        if case.full is None:
            row["noise_ratio"] = row["noise_hu"] / noise.input_noise
        removed_nps = noise_power_spectrum(removed, case.spacing, patches) if changed else None
        if removed_nps is not None:
            row["removed_nps"] = [removed_nps[0].tolist(), removed_nps[1].tolist()]
            row["removed_mean_frequency"] = mean_frequency(*removed_nps, cut)
            if noise.true_nps is not None:
                true = noise.true_nps
                split = 0.5 * float(true[0].max()) / 2.0  # a quarter of Nyquist divides low from high
                for band, (a, b) in (("low", (cut, split)), ("high", (split, np.inf))):
                    row[f"removed_share_{band}"] = _band_power(*removed_nps, a, b) / max(
                        _band_power(*true, a, b), 1e-12
                    )
    return row


def evaluate(
    cases: Sequence[Case],
    models: Sequence[tuple[str, Any]] = (),
    baselines: Sequence[str] = BASELINES,
    *,
    device: str = "cpu",
    tta: Sequence[Union[int, str]] = ("auto",),
    progress: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Run every model and baseline on every case; per-volume rows and slice-weighted overall means.

    ``models`` are ``(name, model)`` pairs (a path, a bundled model's name, or None for the default), each run once per
    test-time augmentation in ``tta`` (see :class:`~ctdenoise.options.DenoiseOptions`; the row of ``auto``, the
    default, bears the model's name, the others add ``TTA xN``). The Gaussian
    baseline is matched to the first model's flat-tissue noise (skipped without a model).
    """
    from ctdenoise.inference import Denoiser
    from ctdenoise.options import DenoiseOptions

    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise CTDenoiseError(f"unknown baseline(s) {', '.join(unknown)}: choose from {', '.join(BASELINES)}")
    denoisers = [
        (
            name if copies == "auto" else f"{name}, TTA x{copies}",
            Denoiser(model, DenoiseOptions(device=device, tta=copies)),
        )
        for name, model in models
        for copies in tta
    ]
    volumes: dict[str, Any] = {}
    for case in cases:
        noise = _case_noise(case)
        rows: dict[str, Any] = {INPUT: _method_row(case, case.low, noise, 0.0)}
        outputs: dict[str, np.ndarray] = {INPUT: case.low}
        runs: list[tuple[str, Callable[[np.ndarray], np.ndarray], dict[str, Any]]] = [
            (name, lambda hu, d=denoiser, pixel=case.spacing: d.array(hu, spacing=pixel).astype(np.float32), {})
            for name, denoiser in denoisers
        ]
        sigma = blind_sigma(case.low, case.spacing)
        runs += [(name, baseline(name, sigma), {"blind_sigma_hu": sigma}) for name in baselines if name != "gaussian"]
        for number, (name, run, extra) in enumerate(runs):
            if progress:
                progress(f"{case.name}: {name}")
            started = time.perf_counter()
            outputs[name] = run(case.low)
            rows[name] = {**_method_row(case, outputs[name], noise, time.perf_counter() - started), **extra}
            if number < len(denoisers):
                rows[name].update(consistency(run, case.low, outputs[name]))
                rows[name].update(crop_consistency(run, case.low, outputs[name]))
        if "gaussian" in baselines and denoisers and noise.patches is not None:
            if progress:
                progress(f"{case.name}: gaussian")
            started = time.perf_counter()
            target = rows[denoisers[0][0]]["noise_hu"]
            outputs["gaussian"], width = gaussian_matched(case.low, target, case.spacing, noise.patches)
            row = _method_row(case, outputs["gaussian"], noise, time.perf_counter() - started)
            rows["gaussian"] = {**row, "sigma_px": width}
        volumes[case.name] = {
            "slices": case.slices,
            "pixel_mm": list(case.spacing),
            "flat_patches": 0 if noise.patches is None else len(noise.patches),
            "rows": rows,
            "_outputs": outputs,
            "_reference": case.full,
            "_noise": noise,
        }
    return {
        "mode": "paired" if cases and cases[0].full is not None else "no-reference",
        "convention": {
            "window_hu": list(WINDOW),
            "data_range_hu": WINDOW[1] - WINDOW[0],
            "full_range_hu": list(FULL_RANGE),
            "ssim": "MONAI SSIMMetric, Gaussian 11x11, sigma 1.5, on the window scaled to [0, 1]",
            "noise": "std above 0.1 x Nyquist in flat soft-tissue patches (ctdenoise.noise.band_noise_std)",
        },
        "volumes": volumes,
        "overall": _overall(volumes),
    }


def _overall(volumes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Slice-weighted means of every scalar figure over the volumes."""
    sums: dict[str, dict[str, list[float]]] = {}
    for volume in volumes.values():
        weight = len(volume["slices"])
        for method, row in volume["rows"].items():
            for key, value in row.items():
                if isinstance(value, (int, float)) and np.isfinite(value):
                    sums.setdefault(method, {}).setdefault(key, []).extend([float(value)] * weight)
    return {method: {key: float(np.mean(v)) for key, v in figures.items()} for method, figures in sums.items()}


COLUMNS = [
    ("psnr", "PSNR [-160,240]", "{:.2f}"),
    ("ssim", "SSIM [-160,240]", "{:.3f}"),
    ("psnr_full_range", "PSNR [-1024,3072]", "{:.2f}"),
    ("ssim_full_range", "SSIM [-1024,3072]", "{:.3f}"),
    ("rmse_hu", "RMSE HU", "{:.1f}"),
    ("noise_hu", "flat noise HU", "{:.1f}"),
    ("noise_ratio", "noise out/in", "{:.2f}"),
    ("bright_noise_hu", "bright flat noise HU", "{:.1f}"),
    ("mean_shift_hu", "mean shift HU", "{:+.1f}"),
    ("removed_share_low", "removed low-f share", "{:.2f}"),
    ("removed_share_high", "removed high-f share", "{:.2f}"),
    ("edge_correlation", "edge corr. of removed", "{:.2f}"),
    ("consistency_p999_hu", "mirror/turn diff p99.9 HU", "{:.1f}"),
    ("consistency_max_hu", "mirror/turn diff max HU", "{:.0f}"),
    ("crop_diff_mean_hu", "crop diff mean HU", "{:.1f}"),
    ("seconds_per_slice", "s/slice", "{:.2f}"),
]


def markdown(report: dict[str, Any]) -> str:
    """The overall table, then one table per volume."""

    def table(rows: dict[str, dict[str, Any]]) -> list[str]:
        keys = [c for c in COLUMNS if any(c[0] in row for row in rows.values())]
        lines = ["| method | " + " | ".join(c[1] for c in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for method, row in rows.items():
            cells = [c[2].format(row[c[0]]) if c[0] in row else "-" for c in keys]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return lines

    convention = report["convention"]
    lines = [
        f"Mode: {report['mode']}. PSNR/SSIM in the window {convention['window_hu']} HU (data range "
        f"{convention['data_range_hu']:g}) and over {convention['full_range_hu']}; SSIM: {convention['ssim']}. "
        f"Noise: {convention['noise']}. Mean shift against the {'reference' if report['mode'] == 'paired' else 'input'}. "
        "Removed shares: power of the removed noise over the true noise's, below and above a quarter of Nyquist.",
        "",
        "Overall (slice-weighted):",
        "",
        *table(report["overall"]),
    ]
    for name, volume in report["volumes"].items():
        lines += [
            "",
            f"{name} (slices {volume['slices'][0]}..{volume['slices'][-1]}, {len(volume['slices'])} used):",
            "",
        ]
        lines += table(volume["rows"])
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``report.json``, ``report.md`` and the figures under ``out``; returns the files written."""
    from ctdenoise.fileutils import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    volumes = {n: {k: v for k, v in vol.items() if not k.startswith("_")} for n, vol in report["volumes"].items()}
    files = [out / "report.json", out / "report.md"]
    texts = [json.dumps({**report, "volumes": volumes}, indent=2) + "\n", markdown(report)]
    for path, text in zip(files, texts):
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    files += _figures(report, out)
    return files


def _figures(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    name, volume = next(iter(report["volumes"].items()))
    outputs = volume["_outputs"]
    reference = volume["_reference"]
    middle = outputs[INPUT].shape[0] // 2
    height, width = outputs[INPUT].shape[1:]
    crop = (slice(height // 4, height // 4 + height // 2), slice(width // 4, width // 4 + width // 2))
    panels = ([("full dose", reference)] if reference is not None else []) + list(outputs.items())
    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.4), squeeze=False)
    for column, (title, images) in enumerate(panels):
        image = images[middle][crop]
        axes[0, column].imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
        axes[0, column].set_title(title, fontsize=8)
        base = reference if reference is not None else outputs[INPUT]
        difference = image - base[middle][crop]
        axes[1, column].imshow(difference, cmap="RdBu_r", vmin=-100, vmax=100)
        axes[1, column].set_title("minus " + ("full dose" if reference is not None else "input"), fontsize=7)
        for ax in axes[:, column]:
            ax.axis("off")
    fig.suptitle(f"{name}, slice {volume['slices'][middle]}: window C40/W400; differences +-100 HU", fontsize=9)
    fig.tight_layout()
    written.append(out / "crops.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    rows = volume["rows"]
    if report["mode"] == "paired":
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for method, row in rows.items():
            ax.plot(volume["slices"], row["psnr_per_slice"], marker="o", ms=3, label=method)
        ax.set_xlabel("slice")
        ax.set_ylabel("PSNR, dB [-160, 240]")
        ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        fig.tight_layout()
        written.append(out / "psnr_per_slice.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    true = volume["_noise"].true_nps
    if true is not None:
        ax.plot(*true, "k-", lw=2, label="true noise (input - full dose)")
    for method, row in rows.items():
        if "removed_nps" in row:
            ax.plot(*row["removed_nps"], label=f"removed by {method}")
    ax.set_xlabel("cycles / mm")
    ax.set_ylabel("NPS, HU$^2$ mm$^2$")
    ax.legend(fontsize=7)
    ax.set_title(f"{name}: noise power spectrum of what each method removed", fontsize=9)
    fig.tight_layout()
    written.append(out / "removed_nps.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
