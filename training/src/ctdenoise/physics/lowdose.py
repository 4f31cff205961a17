"""Low-dose CT simulation by noise insertion in the projection domain.

A full-dose image already carries full-dose noise, so only the *extra* noise of the lower dose is
added (as in Yu et al. 2012 and Zeng et al. 2015). Per slice:

1. ``mu = mu_water (1 + HU / 1000)`` clamped at 0 (``mu_water`` = 0.0192 / mm); voxels below
   -1000 HU, including padding outside the scan field (-2048, -3024), project as air.
2. Parallel-beam line integrals ``p`` (dimensionless) over ``views`` angles in ``[0, pi)``, detector
   bins as wide as the pixels (see :mod:`ctdenoise.physics.projector`); expected full-dose counts
   ``N = I0 exp(-p)``.
3. Noise model: counts are Poisson (Gaussian approximation) plus electronic noise of variance
   ``sigma_e^2``. After the log, ``var(p) ~ var(counts) / mean(counts)^2``, so
   full dose: ``1 / N + sigma_e^2 / N^2``; dose ``d``: ``1 / (d N) + sigma_e^2 / (d N)^2``. Their
   difference, the variance to add, is ``(1/d - 1) / N + (1/d^2 - 1) sigma_e^2 / N^2``.
   It is drawn in the count domain as the scanner would see it: low-dose counts
   ``I = d N + sqrt((1 - d) d N + (1 - d^2) sigma_e^2) z`` (z standard normal, whose log-domain
   variance is exactly the difference above) are clamped at ``MIN_COUNTS`` before the log
   (photon starvation then gives bounded streaks, as on scanners), and the sinogram noise is
   ``ln(d N) - ln(I)`` (``d N`` clamped the same way).
4. The noise sinogram alone is reconstructed (FBP is linear, so the anatomy is not re-blurred) with
   the chosen ramp window and added: ``HU += 1000 * delta_mu / mu_water``.

Output rules: voxels below ``PADDING_HU`` (-1024) are padding outside the scan field and are returned
unchanged; every other voxel receives noise, air around the patient included (a scanner shows noise
there too), and is floored at -1024 HU like scanner output, so no voxel turns into padding.

Tube current modulation (on by default): the photons of each view scale with the square root of its
largest attenuation, mean I0 over views, as automatic exposure control does; without it the lateral
views of a wide patient dominate the noise with horizontal streaks.

Calibration (``photons=None``, the default): the quantum noise of a real scan depends on its
scanner, protocol, slice thickness and kernel, so no fixed I0 fits every input. I0 is instead chosen
per volume so that the simulation is consistent with the noise already in the image: the full-dose
noise std ``sigma_f`` is estimated from the image (:func:`estimate_noise_std`: a low percentile of the
local standard deviation over soft tissue), and I0 is set (two secant steps on a few sample slices,
noise measured in the same soft-tissue mask) so that the *added* noise std is
``sigma_f * sqrt(1/d - 1)``; the total then scales as ``1/sqrt(d)`` (quarter dose: twice the
full-dose noise, as on the Mayo data, 39 -> 71-76 HU). On the 20 abdominal slices of
``data/totalsegmentator/example_ct_dicom`` (3 mm, Br38, liver ROI rows 240:270, columns 130:170,
own noise 10.9 HU) the estimate is 11.6 HU and quarter dose adds about 20 HU there. Images that
look noise-free (synthetic phantoms, estimate below ``MIN_MATCHED_NOISE_HU``) fall back to
``DEFAULT_PHOTONS``. An explicit ``photons`` value skips the calibration; the added noise then
scales as ``sqrt((1/d - 1) / (photons * views)) / pixel_size`` (without electronic noise).
With a fixed I0 of 5e5 the same abdomen gets 52 HU at quarter dose (five times its own noise).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import numpy as np
import torch

from ctdenoise.errors import CTDenoiseError
from ctdenoise.io.volume import Volume
from ctdenoise.noise import (
    LOW_FREQUENCY,
    FlatPatches,
    band_noise_std,
    find_flat_patches,
    gaussian_smooth,
    mean_frequency,
    noise_power_spectrum,
    noise_std,
)
from ctdenoise.physics.projector import (
    FILTERS,
    filtered_backprojection,
    forward_project,
    parallel_angles,
)

MU_WATER_PER_MM = 0.0192
"""Linear attenuation of water (per mm) at the effective energy of a 120 kV beam."""
DEFAULT_PHOTONS = 5.0e5
"""Photons per ray at full dose when the image's own noise cannot be matched (see the module docstring)."""
DEFAULT_ELECTRONIC_NOISE = 10.0
"""Electronic noise standard deviation, in counts."""
DEFAULT_VIEWS = 720
"""Views over 180 degrees: meets angular Nyquist sampling for a 460-pixel (~45 cm) wide body."""
DEFAULT_KERNEL = "matched"
"""Fit the noise reconstruction window to the image's own noise texture (:func:`match_kernel`)."""
KERNELS: Tuple[str, ...] = ("matched",) + FILTERS
FALLBACK_KERNEL = "hann"
"""Window of ``matched`` when the image has no measurable noise to match."""
KERNEL_WIDTH_RANGE = (0.03, 3.0)
"""Bounds of the matched Gaussian window width, cycles per bin (3: practically the plain ramp)."""
MIN_COUNTS = 1.0
"""Counts are clamped at this value before the log, as scanners do for photon-starved rays."""
MIN_PHOTONS, MAX_PHOTONS = 2.0e4, 1.0e10
"""Range of the matched full-dose I0. Below 2e4 quarter-dose rays through a shoulder starve; an image
that needs less (a very smooth kernel) keeps 2e4 and gets its reconstructed noise scaled up instead."""
MIN_MATCHED_NOISE_HU = 2.0
"""Below this estimated full-dose noise (HU) an image is taken as noise-free and not matched."""
PADDING_HU = -1024.0
"""Voxels below this are padding outside the scan field; it is also the floor of the output."""

PixelSpacing = Union[float, Sequence[float]]


def hu_to_mu(hu: torch.Tensor) -> torch.Tensor:
    """Linear attenuation (per mm) from HU, clamped at 0 so air and padding project as nothing."""
    return (MU_WATER_PER_MM * (1.0 + hu / 1000.0)).clamp(min=0.0)


def added_log_variance(expected_counts: torch.Tensor, dose: float, electronic_noise: float) -> torch.Tensor:
    """Variance to add to log-domain projections to go from full dose to ``dose``.

    ``expected_counts`` are the full-dose counts ``I0 exp(-p)``; see the module docstring.
    """
    quantum = (1.0 / dose - 1.0) / expected_counts
    electronic = (1.0 / dose**2 - 1.0) * electronic_noise**2 / expected_counts**2
    return quantum + electronic


def view_modulation(line_integrals: torch.Tensor) -> torch.Tensor:
    """Angular tube current modulation ``[B, V, 1]`` for sinograms ``[B, V, D]``, mean 1 per slice.

    The current of each view is proportional to the square root of its largest attenuation
    ``exp(max_t p)``, the noise-optimal rule for a fixed dose (Gies et al. 1999) that automatic
    exposure control approximates: lateral views of a wide patient get more photons.
    """
    weight = torch.exp(0.5 * line_integrals.amax(dim=-1, keepdim=True).clamp(min=0.0))
    return weight / weight.mean(dim=1, keepdim=True)


def noise_sinogram(
    line_integrals: torch.Tensor,
    dose: float,
    photons: torch.Tensor | float,
    electronic_noise: float,
    normal: torch.Tensor,
) -> torch.Tensor:
    """Log-domain noise ``ln(d N) - ln(I)`` to add to full-dose projections ``p`` (same shape).

    ``photons`` is the full-dose I0, a number or a tensor broadcastable to ``p`` (per view with
    modulation); ``normal`` holds standard normal draws shaped like ``line_integrals``.
    """
    low_mean = dose * photons * torch.exp(-line_integrals.clamp(min=0.0))
    extra_var = (1.0 - dose) * low_mean + (1.0 - dose**2) * electronic_noise**2
    counts = low_mean + extra_var.sqrt() * normal
    noise = torch.log(low_mean.clamp(min=MIN_COUNTS)) - torch.log(counts.clamp(min=MIN_COUNTS))
    # E[-ln(1 + e)] ~ var(e) / 2: without this second-order term the mean attenuation of long rays rises
    # and soft tissue shifts by a few HU; with it the mean HU stays within about 1 HU.
    return noise - 0.5 * (extra_var / low_mean.clamp(min=MIN_COUNTS) ** 2).clamp(max=1.0)


def _pixel_spacing(pixel_spacing_mm: PixelSpacing) -> Tuple[float, float]:
    """``(row, column)`` spacing in mm from one number or a pair; raises on non-positive values."""
    values = np.atleast_1d(np.asarray(pixel_spacing_mm, dtype=np.float64)).ravel()
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise CTDenoiseError(
            f"pixel spacing {pixel_spacing_mm!r} is invalid: give one positive size in mm or a (row, column) pair"
        )
    return float(values[0]), float(values[1])


def _check_options(dose: float, photons: float, electronic_noise: float, views: int, kernel: str, batch: int) -> None:
    """Raise :class:`CTDenoiseError` for an option outside its valid range."""
    numeric = isinstance(dose, (int, float, np.number)) and not isinstance(dose, bool)
    if not (numeric and 0.0 < float(dose) <= 1.0):
        raise CTDenoiseError(
            f"dose {dose!r} is out of range: give the dose fraction in (0, 1], e.g. 0.25 for quarter dose"
        )
    if not (math.isfinite(photons) and photons > 0):
        raise CTDenoiseError(
            f"photons {photons!r} must be a positive number of photons per ray (e.g. {DEFAULT_PHOTONS:g})"
        )
    if not (math.isfinite(electronic_noise) and electronic_noise >= 0):
        raise CTDenoiseError(f"electronic noise {electronic_noise!r} must be a standard deviation >= 0 in counts")
    if int(views) < 2:
        raise CTDenoiseError(f"views {views!r} is too small: use at least 2 (default {DEFAULT_VIEWS})")
    if kernel not in KERNELS:
        raise CTDenoiseError(f"unknown reconstruction kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
    if int(batch) < 1:
        raise CTDenoiseError(f"batch_slices {batch!r} must be at least 1")


def _device(device: str | torch.device) -> torch.device:
    """The projector's device: only CPU and CUDA have the sparse kernels it uses."""
    from ctdenoise.devices import resolve_device

    return resolve_device(device, allowed=("cpu", "cuda"), purpose="low-dose simulation")


def _resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or a fresh random one when it is None."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    return int(seed)


def _slice_normal(seed: int, index: int, shape: Tuple[int, int]) -> torch.Tensor:
    """Standard normal draws for slice ``index``: depend on (seed, index) only, not batch or device."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, index]).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state >> np.uint64(1)))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def _added_noise(
    batch: torch.Tensor,
    first_index: int,
    seed: int,
    dose: float,
    spacing: Tuple[float, float],
    settings: Dict[str, Any],
) -> torch.Tensor:
    """The noise (HU) that turns HU slices ``batch`` ``[B, H, W]`` (first index ``first_index``) into ``dose``."""
    angles = parallel_angles(int(settings["views"]), batch.device)
    sino = forward_project(hu_to_mu(batch), angles, spacing=spacing)
    normal = torch.stack(
        [_slice_normal(seed, first_index + i, tuple(sino.shape[1:])) for i in range(batch.shape[0])]
    ).to(batch.device)
    photons = settings["photons"]
    incident = photons * view_modulation(sino) if settings["tube_current_modulation"] else photons
    delta_p = noise_sinogram(sino, dose, incident, settings["electronic_noise"], normal)
    delta_mu = filtered_backprojection(delta_p, angles, batch.shape[-2:], settings["kernel"], spacing=spacing)
    return delta_mu * (1000.0 / MU_WATER_PER_MM * float(settings.get("noise_scale", 1.0)))


def match_kernel(
    sample: np.ndarray, ramp_noise: np.ndarray, spacing: Tuple[float, float], patches: FlatPatches
) -> Dict[str, float]:
    """Gaussian window width (cycles per bin) whose noise texture matches the image's own noise.

    ``ramp_noise`` is simulated noise of ``sample`` reconstructed with the plain ramp. The width is
    found by bisection so that the NPS mean frequency (above ``LOW_FREQUENCY`` of Nyquist, where
    anatomy left in flat patches does not weigh) of the filtered noise equals that of ``sample``'s
    own noise in the same patches.
    """
    frequency, nps = noise_power_spectrum(sample, spacing, patches)
    low = LOW_FREQUENCY * 0.5 / max(spacing)
    target = mean_frequency(frequency, nps, low)

    def simulated(sigma: float) -> float:
        # A window of sigma cycles per bin (one bin per pixel) is a Gaussian of 1 / (2 pi sigma) pixels:
        # windowing the ramp in the projections and filtering the noise image are the same operation.
        filtered = gaussian_smooth(ramp_noise, 1.0 / (2.0 * math.pi * sigma))
        return mean_frequency(*noise_power_spectrum(filtered, spacing, patches), low)

    low_sigma, high_sigma = KERNEL_WIDTH_RANGE
    if simulated(high_sigma) <= target:
        sigma = high_sigma
    elif simulated(low_sigma) >= target:
        sigma = low_sigma
    else:
        for _ in range(14):  # mean frequency grows with the width: bisect on its logarithm
            sigma = math.sqrt(low_sigma * high_sigma)
            low_sigma, high_sigma = (sigma, high_sigma) if simulated(sigma) < target else (low_sigma, sigma)
        sigma = math.sqrt(low_sigma * high_sigma)
    return {
        "kernel_width_cycles_per_bin": float(sigma),
        "image_nps_mean_frequency": target,
        "added_nps_mean_frequency": simulated(sigma),
    }


def _match_photons(added_std: Callable[[float], float | None], target: float) -> Tuple[float, float]:
    """``(photons, noise_scale)`` whose added noise std is ``target``: a secant on ``log std`` vs ``log I0``.

    Quantum noise falls as ``I0^-1/2`` and electronic noise as ``I0^-1``, so the slope is measured
    rather than assumed. Below ``MIN_PHOTONS`` the photons stay there and the noise is scaled.
    """
    points: list[Tuple[float, float]] = []
    photons, scale = DEFAULT_PHOTONS, 1.0
    for _ in range(5):
        measured = added_std(photons)
        if not measured or not math.isfinite(measured):
            break
        points.append((math.log(photons), math.log(measured)))
        if abs(measured - target) <= 0.01 * target:
            break
        slope = -0.5
        if len(points) > 1 and abs(points[-1][0] - points[-2][0]) > 1e-9:
            slope = min(-0.1, (points[-1][1] - points[-2][1]) / (points[-1][0] - points[-2][0]))
        wanted = math.exp(points[-1][0] + (math.log(target) - points[-1][1]) / slope)
        if wanted < MIN_PHOTONS and photons == MIN_PHOTONS:
            return MIN_PHOTONS, target / measured
        photons = float(np.clip(wanted, MIN_PHOTONS, MAX_PHOTONS))
    return photons, scale


def calibrate(
    slices: np.ndarray,
    spacing: Tuple[float, float],
    dose: float,
    settings: Dict[str, Any],
    seed: int,
    device: torch.device,
    match_photons: bool,
    sample_slices: int = 4,
) -> Dict[str, Any]:
    """Fit the simulation to the image's own noise: its texture (kernel) and, if asked, its level (photons).

    The full-dose noise std ``sigma_f`` and NPS are measured in flat patches (:mod:`ctdenoise.noise`) of
    up to ``sample_slices`` slices. With ``kernel == "matched"`` the noise reconstruction window is
    fitted to the NPS (:func:`match_kernel`); with ``match_photons`` I0 is set by two secant steps so
    that the added noise std in the same patches is ``sigma_f sqrt(1/d - 1)``. Images without
    measurable noise fall back to ``FALLBACK_KERNEL`` and ``DEFAULT_PHOTONS``.

    Returns the settings to use (``photons``, ``kernel``) and the figures behind them.
    """
    index = np.unique(np.linspace(0, slices.shape[0] - 1, min(sample_slices, slices.shape[0])).round().astype(int))
    sample = np.ascontiguousarray(slices[index], dtype=np.float32)
    patches = find_flat_patches(sample, spacing_mm=spacing)
    own_band = band_noise_std(sample, spacing, patches) if patches is not None else None
    measurable = own_band is not None and own_band >= MIN_MATCHED_NOISE_HU
    sigma_full = own_band
    kernel = settings["kernel"]
    result: Dict[str, Any] = {"photons": settings["photons"], "kernel": kernel, "full_dose_noise_hu": sigma_full}
    if kernel == "matched":
        result["kernel"] = FALLBACK_KERNEL
    result["calibration"] = "given" if not match_photons else "default"
    if not measurable or dose >= 1.0:
        return result
    tensor = torch.from_numpy(sample).to(device)

    def noise_of(current: Dict[str, Any]) -> np.ndarray:
        return np.concatenate(
            [
                _added_noise(tensor[i : i + 1], int(index[i]), seed, dose, spacing, current).cpu().numpy()
                for i in range(tensor.shape[0])
            ]
        )

    current = {**settings, "photons": settings["photons"] if not match_photons else DEFAULT_PHOTONS}
    if kernel == "matched":
        fit = match_kernel(sample, noise_of({**current, "kernel": "ramp"}), spacing, patches)
        result.update(fit, kernel=fit["kernel_width_cycles_per_bin"])
    current["kernel"] = result["kernel"]
    if match_photons:
        # Level matched above the anatomy band, where own and added noise are both measurable.
        target = own_band * math.sqrt(1.0 / dose - 1.0)
        photons, scale = _match_photons(
            lambda value: band_noise_std(noise_of({**current, "photons": value}), spacing, patches), target
        )
        current.update(photons=photons, noise_scale=scale)
        result.update(photons=photons, noise_scale=scale, calibration="matched")
    added = noise_of(current)
    added_std, added_band = noise_std(added, patches), band_noise_std(added, spacing, patches)
    # The own noise below the band is hidden by anatomy: extrapolate it with the matched texture.
    result.update(full_dose_noise_hu=own_band * added_std / added_band, added_noise_hu=added_std)
    return result


def simulate_low_dose(
    hu: np.ndarray,
    pixel_spacing_mm: PixelSpacing,
    dose: float,
    *,
    photons: float | None = None,
    electronic_noise: float = DEFAULT_ELECTRONIC_NOISE,
    views: int = DEFAULT_VIEWS,
    kernel: str = DEFAULT_KERNEL,
    tube_current_modulation: bool = True,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    batch_slices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    report: Dict[str, Any] | None = None,
) -> np.ndarray:
    """Simulate a ``dose`` fraction acquisition from full-dose HU slices.

    Args:
        hu: HU, ``[y, x]`` or ``[z, y, x]`` (slices are simulated independently).
        pixel_spacing_mm: in-plane pixel size in mm, one number or a ``(row, column)`` pair
            (anisotropic pixels are projected exactly).
        dose: dose fraction in (0, 1]; 1 returns the input unchanged.
        photons: photons per ray at full dose (I0; the mean over views with modulation); None:
            calibrated so that the added noise matches the image's own noise (:func:`calibrate`).
        electronic_noise: standard deviation of the electronic noise in counts.
        views: projection angles over 180 degrees.
        kernel: ramp window of the noise reconstruction: "matched" (fitted to the image's own noise
            texture, see :func:`calibrate`) or one of ``projector.FILTERS``.
        tube_current_modulation: spread the photons over views as automatic exposure control
            does (:func:`view_modulation`); False gives every view I0.
        seed: same seed, same output, whatever ``batch_slices`` and ``device``; None: random.
        device: where the projections run ("cpu" or "cuda").
        batch_slices: slices per projector call; None: 1 on the CPU (fastest there), 8 on a GPU.
        progress: called as ``progress(done_slices, total_slices)`` after each batch.
        report: if given, filled with the photons used and the noise calibration figures.

    Returns:
        float32 HU with the shape of ``hu``.
    """
    spacing, target = _pixel_spacing(pixel_spacing_mm), _device(device)
    if batch_slices is None:
        batch_slices = 1 if target.type == "cpu" else 8
    _check_options(dose, DEFAULT_PHOTONS if photons is None else photons, electronic_noise, views, kernel, batch_slices)
    array = np.asarray(hu)
    if array.ndim not in (2, 3) or array.size == 0 or min(array.shape[-2:]) < 2:
        raise CTDenoiseError(f"expected a 2-D [y, x] or 3-D [z, y, x] HU array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise CTDenoiseError("the HU array holds non-numeric, NaN or infinite values: pass finite HU")
    slices = np.ascontiguousarray(array.reshape((-1,) + array.shape[-2:]), dtype=np.float32)
    out = slices.copy()
    if float(dose) < 1.0:
        settings = {
            "photons": DEFAULT_PHOTONS if photons is None else float(photons),
            "electronic_noise": float(electronic_noise),
            "views": int(views),
            "kernel": kernel,
            "tube_current_modulation": bool(tube_current_modulation),
        }
        seed_value, total = _resolve_seed(seed), slices.shape[0]
        calibration = {"photons": settings["photons"], "kernel": kernel, "calibration": "given"}
        if photons is None or kernel == "matched":
            calibration = calibrate(slices, spacing, float(dose), settings, seed_value, target, photons is None)
            settings.update(
                photons=calibration["photons"],
                kernel=calibration["kernel"],
                noise_scale=calibration.get("noise_scale", 1.0),
            )
        if report is not None:
            report.update(calibration)
        for start in range(0, total, int(batch_slices)):
            stop = min(start + int(batch_slices), total)
            batch = torch.from_numpy(slices[start:stop]).to(target)
            noise = _added_noise(batch, start, seed_value, float(dose), spacing, settings)
            noisy = torch.clamp(batch + noise, min=PADDING_HU)
            noisy = torch.where(batch < PADDING_HU, batch, noisy)  # padding outside the scan field stays
            out[start:stop] = noisy.cpu().numpy()
            if progress is not None:
                progress(stop, total)
    elif progress is not None:
        progress(slices.shape[0], slices.shape[0])
    return out.reshape(array.shape)


_VOLUME_OPTIONS = (
    "photons",
    "electronic_noise",
    "views",
    "kernel",
    "tube_current_modulation",
    "device",
    "batch_slices",
    "progress",
)


def simulate_volume(
    volume: Volume, dose: float, *, seed: int | None = None, force: bool = False, **options: Any
) -> Volume:
    """:func:`simulate_low_dose` on every axial slice of ``volume``; storage order and geometry are kept.

    Projections run in the axial plane whatever the file's storage order: the volume is viewed in
    the ``LPS`` orientation (:mod:`ctdenoise.orientation`) and the result put back, so a volume stored
    sagittally or flipped gets exactly the noise of its axial twin. ``options`` are the keyword options
    of :func:`simulate_low_dose` other than ``seed``; the pixel spacing comes from the volume. Input
    that is probably not HU is refused unless ``force``. The result's metadata gains
    ``simulated_dose`` and ``simulation`` (the physical parameters and the seed actually used).

    Examples:
        >>> from ctdenoise import read_volume, simulate_volume
        >>> full = read_volume("../data/totalsegmentator/example_ct_sm.nii.gz")
        >>> low = simulate_volume(full, 0.25, seed=0)
        >>> low.shape == full.shape, low.metadata["simulated_dose"]
        (True, 0.25)
    """
    from ctdenoise.errors import warn
    from ctdenoise.hu import check_units
    from ctdenoise.orientation import reorientation

    unknown = sorted(set(options) - set(_VOLUME_OPTIONS))
    if unknown:
        raise CTDenoiseError(
            f"unknown low-dose simulation option(s) {', '.join(unknown)}: use {', '.join(_VOLUME_OPTIONS)}"
        )
    name = str(volume.metadata.get("source_path") or "the input")
    for message in check_units(volume.array, force=force, where=name):
        warn(message)
    turn = reorientation(volume.direction)
    spacing_x, spacing_y, _ = turn.target_spacing(volume.spacing)
    seed_value = _resolve_seed(seed)
    spacing = (float(spacing_y), float(spacing_x))
    calibration: Dict[str, Any] = {}
    axial = simulate_low_dose(
        turn.to_target(volume.array), spacing, dose, seed=seed_value, report=calibration, **options
    )
    array = np.ascontiguousarray(turn.to_stored(axial))
    parameters: Dict[str, Any] = {
        "method": "projection-domain noise insertion, parallel beam, axial plane",
        "dose": float(dose),
        "kernel": options.get("kernel", DEFAULT_KERNEL),
        **calibration,
        "electronic_noise": float(options.get("electronic_noise", DEFAULT_ELECTRONIC_NOISE)),
        "views": int(options.get("views", DEFAULT_VIEWS)),
        "tube_current_modulation": bool(options.get("tube_current_modulation", True)),
        "pixel_spacing_mm": list(spacing),
        "mu_water_per_mm": MU_WATER_PER_MM,
        "seed": seed_value,
    }
    return volume.with_array(array, simulated_dose=float(dose), simulation=parameters)
