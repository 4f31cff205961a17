"""Tests of the comparison metrics table and the side-by-side figure, on arrays with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from ctdenoise.errors import CTDenoiseError
from ctdenoise.evaluation import (
    FIGURE_DPI,
    PANEL_INCHES,
    REFERENCE_NAME,
    compare_volumes,
    comparison_figure,
    metrics_markdown,
    parse_roi,
    roi_text,
)

SHAPE = (2, 32, 32)
ROI = (slice(0, 2), slice(8, 24), slice(8, 24))


def _checkerboard(amplitude: float) -> np.ndarray:
    """+amplitude / -amplitude alternating voxels: mean 0, standard deviation ``amplitude``."""
    z, y, x = np.indices(SHAPE)
    return np.where((x + y + z) % 2 == 0, amplitude, -amplitude).astype(np.float32)


@pytest.fixture()
def reference() -> np.ndarray:
    """A homogeneous 40 HU phantom."""
    return np.full(SHAPE, 40.0, dtype=np.float32)


def test_parse_roi_accepts_three_ranges_and_roi_text_inverts_it() -> None:
    roi = parse_roi("0:2, 8:24 ,8:24")
    assert roi == ROI
    assert roi_text(roi) == "0:2,8:24,8:24"
    assert parse_roi(roi_text(roi)) == roi


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0:2,8:24",
        "0:2,8:24,8:24,0:1",
        "2:1,0:4,0:4",
        "1:1,0:4,0:4",
        "-1:2,0:4,0:4",
        "0:2:3,0:4,0:4",
        "a:b,0:4,0:4",
        "0-2,0:4,0:4",
    ],
)
def test_parse_roi_refuses_malformed_text_with_the_expected_form(text: str) -> None:
    with pytest.raises(CTDenoiseError, match="z0:z1,y0:y1,x0:x1") as info:
        parse_roi(text)
    assert "\n" not in str(info.value)


def test_compare_volumes_gives_known_psnr_rmse_and_roi_figures(reference: np.ndarray) -> None:
    candidates = {
        "identical": reference.copy(),
        "offset +10 HU": reference + 10.0,
        "noisy": reference + _checkerboard(20.0),
    }
    result = compare_volumes(reference, candidates, window=(-160.0, 240.0), roi=ROI)
    rows = result["rows"]
    assert list(rows) == [REFERENCE_NAME, "identical", "offset +10 HU", "noisy"]
    assert rows[REFERENCE_NAME] == pytest.approx({"mean_hu": 40.0, "std_hu": 0.0})

    assert math.isinf(rows["identical"]["psnr"]) and rows["identical"]["rmse_hu"] == 0.0
    assert rows["identical"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    # a 10 HU error in a 400 HU window: PSNR = 20 log10(400 / 10)
    assert rows["offset +10 HU"]["psnr"] == pytest.approx(20 * math.log10(40.0), abs=1e-3)
    assert rows["offset +10 HU"]["rmse_hu"] == pytest.approx(10.0)
    assert rows["offset +10 HU"]["mean_hu"] == pytest.approx(50.0) and rows["offset +10 HU"]["std_hu"] == pytest.approx(
        0.0
    )
    assert rows["noisy"]["psnr"] == pytest.approx(20 * math.log10(20.0), abs=1e-3)
    assert rows["noisy"]["rmse_hu"] == pytest.approx(20.0)
    assert rows["noisy"]["mean_hu"] == pytest.approx(40.0) and rows["noisy"]["std_hu"] == pytest.approx(20.0)
    assert rows["noisy"]["ssim"] < rows["offset +10 HU"]["ssim"] < 1.0

    assert result["roi"] == "0:2,8:24,8:24"
    assert result["convention"]["window_hu"] == [-160.0, 240.0] and result["convention"]["data_range_hu"] == 400.0


def test_psnr_is_measured_in_the_window_but_rmse_is_not() -> None:
    air = np.full(SHAPE, -1000.0, dtype=np.float32)
    rows = compare_volumes(air, {"air + 100 HU": air + 100.0})["rows"]
    assert "mean_hu" not in rows["air + 100 HU"]  # no ROI, no ROI figures
    assert math.isinf(rows["air + 100 HU"]["psnr"])  # both clip to the window's low end
    assert rows["air + 100 HU"]["rmse_hu"] == pytest.approx(100.0)
    narrow = compare_volumes(air, {"air + 100 HU": air + 100.0}, window=(-1100.0, -700.0))["rows"]
    assert narrow["air + 100 HU"]["psnr"] == pytest.approx(20 * math.log10(4.0), abs=1e-3)


def test_compare_volumes_refuses_bad_inputs(reference: np.ndarray) -> None:
    with pytest.raises(CTDenoiseError, match="shape"):
        compare_volumes(reference, {"cropped": reference[:, :16]})
    with pytest.raises(CTDenoiseError, match="outside the volume"):
        compare_volumes(reference, {"same": reference}, roi=(slice(0, 3), slice(0, 4), slice(0, 4)))
    with pytest.raises(CTDenoiseError, match="reserved"):
        compare_volumes(reference, {REFERENCE_NAME: reference})
    with pytest.raises(CTDenoiseError, match="LOW < HIGH"):
        compare_volumes(reference, {"same": reference}, window=(240.0, -160.0))


def test_metrics_markdown_formats_rows_convention_and_roi(reference: np.ndarray) -> None:
    result = compare_volumes(reference, {"offset|10": reference + 10.0}, roi=ROI)
    lines = metrics_markdown(result).splitlines()
    assert lines[0] == "| volume | PSNR (dB) | SSIM | RMSE (HU) | ROI mean (HU) | ROI noise std (HU) |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == f"| {REFERENCE_NAME} | - | - | - | 40.0 | 0.0 |"
    cells = [c.strip() for c in lines[3].split(" | ")]
    assert cells[0] == "| offset\\|10" and cells[1] == "32.04" and cells[3] == "10.0" and cells[4] == "50.0"
    assert lines[3].count(" | ") == 5  # the escaped pipe did not add a column
    assert "window [-160, 240] HU (data range 400 HU)" in lines[5]
    assert lines[6] == "ROI (z0:z1,y0:y1,x0:x1 voxels): 0:2,8:24,8:24."
    without_roi = metrics_markdown(compare_volumes(reference, {"same": reference}))
    assert "ROI (" not in without_roi and "| same | inf |" in without_roi


def _yellow_pixels(image: np.ndarray) -> int:
    """Pixels drawn in the ROI rectangle's yellow."""
    rgb = image[..., :3]
    return int(np.count_nonzero((rgb[..., 0] > 0.9) & (rgb[..., 1] > 0.9) & (rgb[..., 2] < 0.2)))


def test_comparison_figure_writes_a_png_of_the_documented_size(tmp_path: Path, reference: np.ndarray) -> None:
    backend = matplotlib.get_backend()
    panels = {REFERENCE_NAME: reference[0], "noisy": (reference + _checkerboard(20.0))[0]}
    path = comparison_figure(
        panels,
        tmp_path / "figure.png",
        difference=("reference - noisy", panels[REFERENCE_NAME] - panels["noisy"]),
        roi_yx=ROI[1:],
        title="slice 0",
    )
    assert path == tmp_path / "figure.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]  # no temporary file left
    image = imread(path)
    count = len(panels) + 1
    assert image.shape[:2] == (round(PANEL_INCHES[1] * FIGURE_DPI), round(count * PANEL_INCHES[0] * FIGURE_DPI))
    assert _yellow_pixels(image) > 0
    assert matplotlib.get_backend() == backend  # the caller's backend is left alone

    plain = comparison_figure({REFERENCE_NAME: reference[0]}, tmp_path / "plain.png")
    image = imread(plain)
    assert image.shape[:2] == (round(PANEL_INCHES[1] * FIGURE_DPI), round(PANEL_INCHES[0] * FIGURE_DPI))
    assert _yellow_pixels(image) == 0
