"""Tests of the parallel-beam projector and the projection-domain low-dose simulation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctdenoise.errors import CTDenoiseError
from ctdenoise.io import Volume, read_volume
from ctdenoise.physics import lowdose
from ctdenoise.physics.lowdose import simulate_low_dose, simulate_volume
from ctdenoise.physics.projector import (
    FILTERS,
    back_project,
    default_detector_count,
    filtered_backprojection,
    forward_project,
    parallel_angles,
)

DATA = Path(__file__).resolve().parents[2] / "data"
ABDOMEN = DATA / "totalsegmentator" / "example_ct_dicom"
PADDED_CHEST = DATA / "tcga_lung_ctmi" / "ID_0008_AGE_0051_CONTRAST_1_CT.dcm"  # -3024 outside the field
LIVER = (slice(240, 270), slice(130, 170))  # homogeneous liver ROI in the abdominal slices


def _disk(size: int, radius: float, value: float, supersample: int = 4) -> torch.Tensor:
    """A centred disk of ``value`` (radius in pixels), edge pixels weighted by their covered area."""
    centre = (size - 1) / 2.0
    offsets = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    rows = torch.arange(size, dtype=torch.float64)[:, None, None, None] - centre
    cols = torch.arange(size, dtype=torch.float64)[None, :, None, None] - centre
    inside = (rows + offsets[:, None]) ** 2 + (cols + offsets[None, :]) ** 2 <= radius**2
    return inside.double().mean(dim=(2, 3)).float() * value


def _radius_map(size: int) -> torch.Tensor:
    centre = (size - 1) / 2.0
    coords = torch.arange(size, dtype=torch.float32) - centre
    return torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)


def _detector_positions(count: int, spacing: float) -> torch.Tensor:
    return (torch.arange(count, dtype=torch.float32) - (count - 1) / 2.0) * spacing


def _middle_slice(path: Path) -> tuple[np.ndarray, float]:
    """The middle slice (in position order) of a CT series or file in HU, and its column spacing in mm."""
    volume = read_volume(path)
    return volume.array[volume.shape[0] // 2], float(volume.spacing[0])


def _water_phantom(size: int = 96) -> np.ndarray:
    """A water disk (0 HU, radius 0.4 x size) in air (-1000 HU)."""
    return np.where(_radius_map(size).numpy() <= 0.4 * size, 0.0, -1000.0).astype(np.float32)


# --- projector -------------------------------------------------------------------------------


def test_forward_projection_of_disk_matches_chord_lengths() -> None:
    mu, radius_px, pixel_mm = 0.02, 40.0, 0.5
    disk = _disk(128, radius_px, mu)[None]
    angles = parallel_angles(90)
    sino = forward_project(disk, angles, spacing=(pixel_mm, pixel_mm))
    t = _detector_positions(sino.shape[-1], pixel_mm)
    radius = radius_px * pixel_mm
    analytic = 2.0 * mu * torch.sqrt((radius**2 - t**2).clamp(min=0.0))
    chord = t.abs() < 0.9 * radius
    relative = (sino[0][:, chord] - analytic[chord]).abs() / analytic[chord]
    assert sino.shape == (1, 90, default_detector_count((128, 128), (pixel_mm, pixel_mm)))
    assert relative.max() < 0.03
    assert sino[0][:, t.abs() > radius + 2 * pixel_mm].abs().max() < 0.01 * analytic.max()


def test_projection_geometry_follows_documented_convention() -> None:
    # A small off-centre blob at x = 12 mm, y = 6 mm on anisotropic pixels (rows 1.5 mm, columns 1 mm).
    height, width, spacing = 48, 64, (1.5, 1.0)
    rows = (torch.arange(height) - (height - 1) / 2.0)[:, None] * spacing[0]
    cols = (torch.arange(width) - (width - 1) / 2.0)[None, :] * spacing[1]
    blob = torch.exp(-((cols - 12.0) ** 2 + (rows - 6.0) ** 2) / (2 * 2.0**2))[None]
    angles = torch.tensor([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
    sino = forward_project(blob, angles, spacing=spacing)
    t = _detector_positions(sino.shape[-1], min(spacing))
    centroids = (sino[0] * t).sum(-1) / sino[0].sum(-1)
    expected = 12.0 * torch.cos(angles) + 6.0 * torch.sin(angles)
    assert torch.allclose(centroids, expected, atol=0.1)
    mass = blob.sum() * spacing[0] * spacing[1]  # every view integrates the whole image
    assert torch.allclose(sino[0].sum(-1) * min(spacing), mass.expand(4), rtol=0.01)


@pytest.mark.parametrize(
    "shape, spacing",
    [((30, 44), (1.2, 0.8)), ((31, 31), (1.0, 1.0))],  # 1-D FFT lengths 72 (even) and 45 (odd)
)
def test_back_projection_is_the_adjoint_of_forward_projection(
    shape: tuple[int, int], spacing: tuple[float, float]
) -> None:
    torch.manual_seed(0)
    angles = parallel_angles(60)
    image = torch.randn(2, *shape)
    sino = torch.randn(2, 60, default_detector_count(shape, spacing))
    lhs = (forward_project(image, angles, spacing=spacing) * sino).sum() * min(spacing)
    rhs = (image * back_project(sino, angles, shape, spacing=spacing)).sum() * spacing[0] * spacing[1]
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-4)


@pytest.mark.parametrize("filter_name", ["ramp", "hann"])
def test_fbp_of_analytic_disk_sinogram_recovers_the_disk(filter_name: str) -> None:
    mu, radius, views, size = 0.02, 30.0, 180, 96
    angles = parallel_angles(views)
    t = _detector_positions(default_detector_count((size, size)), 1.0)
    sino = (2.0 * mu * torch.sqrt((radius**2 - t**2).clamp(min=0.0))).expand(1, views, -1)
    image = filtered_backprojection(sino, angles, (size, size), filter_name)[0]
    r = _radius_map(size)
    assert image[r < 0.8 * radius].mean().item() == pytest.approx(mu, rel=0.02)
    assert image[r < 0.8 * radius].std().item() < 0.03 * mu
    assert image[(r > 1.25 * radius) & (r < 45)].abs().mean().item() < 0.02 * mu


def test_fbp_inverts_forward_projection_for_every_filter() -> None:
    disk = _disk(64, 20.0, 0.02)[None]
    angles = parallel_angles(120)
    sino = forward_project(disk, angles, spacing=(0.7, 0.7))
    inner = _radius_map(64) < 15.0
    for name in FILTERS:
        image = filtered_backprojection(sino, angles, (64, 64), name, spacing=(0.7, 0.7))[0]
        assert image[inner].mean().item() == pytest.approx(0.02, rel=0.01), name


def test_unknown_filter_is_a_user_error() -> None:
    with pytest.raises(CTDenoiseError, match="unknown reconstruction filter"):
        filtered_backprojection(torch.zeros(1, 4, 9), parallel_angles(4), (6, 6), "butterworth")


# --- noise model --------------------------------------------------------------------------------


def test_noise_sinogram_has_the_derived_variance() -> None:
    generator = torch.Generator().manual_seed(3)
    p = torch.full((200_000,), 4.0)
    for dose, electronic in [(0.25, 0.0), (0.5, 10.0), (0.1, 10.0)]:
        normal = torch.randn(p.shape, generator=generator)
        noise = lowdose.noise_sinogram(p, dose, 1e5, electronic, normal)
        expected = lowdose.added_log_variance(1e5 * torch.exp(-p[:1]), dose, electronic)
        assert noise.var().item() == pytest.approx(expected.item(), rel=0.05)
        assert abs(noise.mean().item()) < 0.1 * noise.std().item()


def test_view_modulation_favours_attenuating_views_and_keeps_the_mean() -> None:
    sino = torch.tensor([[[1.0, 2.0], [5.0, 3.0], [3.0, 3.0]]])
    weights = lowdose.view_modulation(sino)[0, :, 0]
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[1] > weights[2] > weights[0]
    assert (weights[1] / weights[0]).item() == pytest.approx(math.exp(1.5), rel=1e-5)


# --- simulate_low_dose --------------------------------------------------------------------------


def test_noise_grows_as_dose_falls_and_keeps_the_mean() -> None:
    phantom = _water_phantom()
    roi = _radius_map(96).numpy() < 25
    stds, means = {}, {}
    for dose in (0.5, 0.25, 0.1):
        added = simulate_low_dose(phantom, 2.0, dose, photons=2e4, views=180, seed=1) - phantom
        stds[dose], means[dose] = added[roi].std(), added[roi].mean()
    assert stds[0.5] < stds[0.25] < stds[0.1]
    for dose in stds:
        assert abs(means[dose]) < 0.15 * stds[dose]
    # Without electronic noise, std follows sqrt(1/d - 1): ratios sqrt(3) and 3 against dose 0.5.
    quantum = {
        dose: (simulate_low_dose(phantom, 2.0, dose, photons=2e4, electronic_noise=0.0, views=180, seed=1) - phantom)[
            roi
        ].std()
        for dose in (0.5, 0.25, 0.1)
    }
    assert quantum[0.25] / quantum[0.5] == pytest.approx(math.sqrt(3.0), rel=0.1)
    assert quantum[0.1] / quantum[0.5] == pytest.approx(3.0, rel=0.1)
    # Electronic noise only adds (most at the lowest dose, where counts are fewest).
    assert stds[0.1] > 1.1 * quantum[0.1] and stds[0.5] >= quantum[0.5]


def test_noise_falls_with_more_photons() -> None:
    phantom = _water_phantom(64)
    roi = _radius_map(64).numpy() < 16
    options = {"electronic_noise": 0.0, "views": 120, "seed": 2}
    low = simulate_low_dose(phantom, 2.0, 0.25, photons=1e4, **options) - phantom
    high = simulate_low_dose(phantom, 2.0, 0.25, photons=4e4, **options) - phantom
    assert low[roi].std() / high[roi].std() == pytest.approx(2.0, rel=0.1)


def test_full_dose_returns_the_input_unchanged() -> None:
    phantom = _water_phantom(32).astype(np.int16)
    out = simulate_low_dose(phantom, 1.0, 1.0, seed=0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, phantom.astype(np.float32))


@pytest.mark.parametrize("dose", [0.0, -0.1, 1.5, float("nan"), "0.25", True])
def test_bad_dose_is_a_user_error(dose: object) -> None:
    with pytest.raises(CTDenoiseError, match="dose"):
        simulate_low_dose(_water_phantom(16), 1.0, dose)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kernel": "sharp"}, "kernel"),
        ({"views": 1}, "views"),
        ({"photons": 0.0}, "photons"),
        ({"electronic_noise": -1.0}, "electronic"),
        ({"batch_slices": 0}, "batch_slices"),
        ({"device": "mps"}, "device"),
        ({"device": "no-such-device"}, "device"),
    ],
)
def test_bad_options_are_user_errors(options: dict, message: str) -> None:
    with pytest.raises(CTDenoiseError, match=message):
        simulate_low_dose(_water_phantom(16), 1.0, 0.5, **options)


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(CTDenoiseError, match="pixel spacing"):
        simulate_low_dose(_water_phantom(16), 0.0, 0.5)
    for shape in [(16,), (0, 16, 16), (16, 1)]:
        with pytest.raises(CTDenoiseError, match="2-D"):
            simulate_low_dose(np.zeros(shape, dtype=np.float32), 1.0, 0.5)
    bad = _water_phantom(16)
    bad[3, 3] = np.nan
    with pytest.raises(CTDenoiseError, match="NaN"):
        simulate_low_dose(bad, 1.0, 0.5)


def test_same_seed_same_output_whatever_the_batching() -> None:
    volume = np.stack([_water_phantom(48)] * 3)
    first = simulate_low_dose(volume, 1.0, 0.25, views=90, seed=11, batch_slices=1)
    again = simulate_low_dose(volume, 1.0, 0.25, views=90, seed=11, batch_slices=3)
    other = simulate_low_dose(volume, 1.0, 0.25, views=90, seed=12, batch_slices=1)
    np.testing.assert_allclose(first, again, atol=1e-3)
    assert np.abs(first - other).max() > 1.0
    assert np.abs(first[0] - first[1]).max() > 1.0  # slices get independent noise


def test_shapes_dtypes_and_anisotropic_non_square_slices() -> None:
    image = np.full((40, 56), -1000, dtype=np.int16)
    image[8:32, 10:46] = 40
    out2d = simulate_low_dose(image, (1.3, 0.9), 0.25, views=90, seed=0)
    assert out2d.shape == image.shape and out2d.dtype == np.float32
    body = out2d[12:28, 14:42] - 40.0
    assert 1.0 < body.std() and abs(body.mean()) < 0.25 * body.std()
    single = simulate_low_dose(image[None], (1.3, 0.9), 0.25, views=90, seed=0)
    assert single.shape == (1, 40, 56)
    np.testing.assert_allclose(single[0], out2d, atol=1e-3)
    volume = np.stack([image, image]).astype(np.float64)
    out3d = simulate_low_dose(volume, (1.3, 0.9), 0.25, views=90, seed=0)
    assert out3d.shape == volume.shape and out3d.dtype == np.float32
    np.testing.assert_allclose(out3d[0], out2d, atol=1e-3)
    assert out3d.min() >= lowdose.PADDING_HU


def test_progress_reports_every_batch() -> None:
    calls: list[tuple[int, int]] = []
    volume = np.stack([_water_phantom(24)] * 5)
    record = lambda done, total: calls.append((done, total))  # noqa: E731
    simulate_low_dose(volume, 1.0, 0.5, views=30, seed=0, batch_slices=2, progress=record)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    calls.clear()
    simulate_low_dose(volume, 1.0, 1.0, progress=record)
    assert calls == [(5, 5)]


def test_simulate_volume_keeps_geometry_and_records_parameters() -> None:
    array = np.stack([_water_phantom(40)] * 2)
    volume = Volume(array, spacing=(1.5, 1.5, 3.0), origin=(1.0, 2.0, 3.0), metadata={"modality": "CT"})
    result = simulate_volume(volume, 0.25, views=60, kernel="shepp-logan")
    assert result.spacing == volume.spacing and result.origin == volume.origin
    assert result.direction == volume.direction and result.shape == volume.shape
    assert result.metadata["modality"] == "CT" and result.metadata["simulated_dose"] == 0.25
    parameters = result.metadata["simulation"]
    assert parameters["views"] == 60 and parameters["kernel"] == "shepp-logan"
    assert parameters["photons"] == lowdose.DEFAULT_PHOTONS and parameters["pixel_spacing_mm"] == [1.5, 1.5]
    # The recorded seed reproduces the run.
    repeat = simulate_volume(volume, 0.25, seed=parameters["seed"], views=60, kernel="shepp-logan")
    np.testing.assert_array_equal(repeat.array, result.array)
    assert not np.array_equal(result.array, volume.array)
    with pytest.raises(CTDenoiseError, match="unknown low-dose simulation option"):
        simulate_volume(volume, 0.25, sigma=3)


# --- real CT ------------------------------------------------------------------------------------


def test_real_abdomen_slice_reaches_the_calibrated_noise() -> None:
    hu, pixel_mm = _middle_slice(ABDOMEN)
    assert hu.shape == (512, 512)
    report: dict = {}
    out = simulate_low_dose(hu, pixel_mm, 0.25, seed=5, report=report)
    assert out.shape == hu.shape and out.dtype == np.float32
    added = (out - hu)[LIVER]
    own_noise = hu[LIVER].std()
    # Matched calibration: quarter dose adds sqrt(1/0.25 - 1) = 1.73 x the image's own noise,
    # so the total is about twice the full-dose noise (Mayo: 39 -> 71-76 HU).
    assert report["calibration"] == "matched"
    assert 0.8 * own_noise < report["full_dose_noise_hu"] < 1.25 * own_noise
    assert 1.3 * own_noise < added.std() < 2.3 * own_noise
    assert 1.6 < out[LIVER].std() / own_noise < 2.6
    assert abs(added.mean()) < 0.15 * added.std()
    assert out.min() >= lowdose.PADDING_HU
    # A fixed full-dose I0 of 5e5 photons per ray adds far more on this 3 mm smooth-kernel scan.
    fixed = simulate_low_dose(hu, pixel_mm, 0.25, seed=5, photons=5e5)
    assert (fixed - hu)[LIVER].std() > 3.0 * own_noise


def test_noise_free_phantom_falls_back_to_the_default_photons() -> None:
    flat = np.full((128, 128), 50.0, dtype=np.float32)
    report: dict = {}
    simulate_low_dose(flat, 1.0, 0.25, seed=0, report=report)
    assert report["calibration"] == "default" and report["photons"] == lowdose.DEFAULT_PHOTONS
    assert report["kernel"] == lowdose.FALLBACK_KERNEL


def test_padding_outside_the_scan_field_is_left_alone() -> None:
    hu, pixel_mm = _middle_slice(PADDED_CHEST)
    hu, pixel_mm = hu[::2, ::2].copy(), 2 * pixel_mm  # half resolution keeps the test fast
    padding = hu < -1024
    assert padding.any() and hu.min() == -3024
    out = simulate_low_dose(hu, pixel_mm, 0.25, views=360, seed=0)
    np.testing.assert_array_equal(out[padding], hu[padding])
    inside = ~padding & (hu > -900)
    assert np.abs(out[inside] - hu[inside]).mean() > 5.0
    assert out[~padding].min() >= lowdose.PADDING_HU
