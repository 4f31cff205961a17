"""``ctdenoise evaluate`` on real CT: paired (simulated) and no-reference reports, baselines, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ctdenoise.baselines import bm3d_slices, gaussian_matched
from ctdenoise.cli import main
from ctdenoise.evaluate import crop_consistency, edge_correlation, evaluate, load_cases
from ctdenoise.io import read_volume
from ctdenoise.noise import band_noise_std, find_flat_patches, gaussian_smooth
from ctdenoise.physics.lowdose import simulate_low_dose

METHODS = {"low dose (input)", "bundled model", "bm3d", "nlm", "gaussian"}


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, dicom_series_dir: Path) -> tuple[Path, Path]:
    """Two whole slices of the real abdomen and their quarter dose (whole: models see whole slices)."""
    volume = read_volume(dicom_series_dir)
    full = np.ascontiguousarray(volume.array[8:10], dtype=np.float32)
    spacing = (float(volume.spacing[1]), float(volume.spacing[0]))
    low = simulate_low_dose(full, spacing, 0.25, seed=4)
    folder = tmp_path_factory.mktemp("evaluate")
    paths = []
    for name, array in (("full.nii.gz", full), ("low.nii.gz", low)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(s) for s in volume.spacing))
        paths.append(folder / name)
        sitk.WriteImage(image, str(paths[-1]))
    return paths[0], paths[1]


def test_paired_report_ranks_methods_and_writes_every_output(small_pair, tmp_path: Path, capsys) -> None:
    full, low = small_pair
    out = tmp_path / "report"
    assert main(["evaluate", "--full", str(full), "--low", str(low), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())  # strict JSON: no NaN
    assert report["mode"] == "paired"
    rows = report["overall"]
    assert set(rows) == METHODS
    source = rows["low dose (input)"]
    for method in METHODS - {"low dose (input)"}:
        assert rows[method]["noise_hu"] < 0.8 * source["noise_hu"], method
        assert abs(rows[method]["mean_shift_hu"]) < 5.0, method
    for method in ("bundled model", "bm3d", "nlm"):
        assert rows[method]["psnr"] > source["psnr"] + 1.0, method
        assert rows[method]["rmse_hu"] < source["rmse_hu"], method
        assert 0 < rows[method]["removed_share_high"] < 1.5, method
    # Gaussian smoothing is matched to the model's flat-tissue noise, and then blurs the anatomy.
    assert math.isclose(rows["gaussian"]["noise_hu"], rows["bundled model"]["noise_hu"], rel_tol=0.1)
    assert rows["gaussian"]["edge_correlation"] > rows["bundled model"]["edge_correlation"] + 0.2
    volume = report["volumes"]["full"]
    assert len(volume["rows"]["bm3d"]["psnr_per_slice"]) == 2 and volume["rows"]["bm3d"]["blind_sigma_hu"] > 10
    for name in ("report.md", "crops.png", "psnr_per_slice.png", "removed_nps.png"):
        assert (out / name).stat().st_size > 1000, name
    table = (out / "report.md").read_text()
    assert "| bm3d |" in table and "PSNR [-160,240]" in table
    assert "| bundled model |" in capsys.readouterr().out


def test_no_reference_mode_reports_noise_ratio_and_shift(small_pair, tmp_path: Path) -> None:
    _, low = small_pair
    cases = load_cases(low=[low], max_slices=0)
    report = evaluate(cases, [("bundled model", None)], ["nlm"])
    assert report["mode"] == "no-reference"
    rows = report["overall"]
    assert "psnr" not in rows["bundled model"]
    assert rows["bundled model"]["noise_ratio"] < 0.7 and abs(rows["bundled model"]["mean_shift_hu"]) < 5
    assert rows["nlm"]["noise_ratio"] < 0.9
    assert rows["low dose (input)"]["noise_ratio"] == pytest.approx(1.0)


def test_tta_rows_and_mirror_turn_consistency(small_pair) -> None:
    full, low = small_pair
    cases = load_cases([full], [low], max_slices=1)
    rows = evaluate(cases, [("bundled model", None)], [], tta=(1, 8))["overall"]
    plain, averaged = rows["bundled model, TTA x1"], rows["bundled model, TTA x8"]
    # the plain network depends on which way the anatomy lies; averaged over all 8 views it does not
    assert plain["consistency_p999_hu"] > 1.0 and plain["consistency_max_hu"] >= plain["consistency_p999_hu"]
    assert averaged["consistency_max_hu"] < 0.05
    assert averaged["psnr"] > rows["low dose (input)"]["psnr"] + 1.0
    assert "consistency_p999_hu" not in rows["low dose (input)"] and "crop_diff_mean_hu" in plain


def test_crop_consistency_tells_a_local_filter_from_one_that_sees_the_whole_slice(dicom_series_dir: Path) -> None:
    """A local filter gives the same inside a crop; one that normalises by the slice's statistics does not."""
    from scipy.ndimage import uniform_filter

    low = read_volume(dicom_series_dir).array[8:9]  # 512 x 512, air around the body

    def local(hu: np.ndarray) -> np.ndarray:
        return uniform_filter(hu, size=(1, 5, 5), mode="reflect")

    def global_scale(hu: np.ndarray) -> np.ndarray:  # what instance norm does to a network's features
        return hu + 0.1 * (hu - hu.mean()) / hu.std() * 100.0

    assert crop_consistency(local, low, local(low))["crop_diff_mean_hu"] < 1e-3
    assert crop_consistency(global_scale, low, global_scale(low))["crop_diff_mean_hu"] > 5.0
    assert crop_consistency(local, low[:, :300, :300], local(low[:, :300, :300])) == {}  # too small to tell


def test_noise_is_measured_in_bright_flat_tissue_too() -> None:
    aorta = Path(__file__).resolve().parents[2] / "data" / "totalsegmentator" / "aorta_ct_cropped.nii.gz"
    rows = evaluate(load_cases([aorta], max_slices=3), [("bundled model", None)], ["nlm"])["overall"]
    source = rows["low dose (input)"]
    assert source["bright_noise_hu"] > source["noise_hu"] > 0  # the aorta lies mid-chest, behind the most attenuation
    for method in ("bundled model", "nlm"):
        assert rows[method]["bright_noise_hu"] < 0.9 * source["bright_noise_hu"], method


def test_edge_correlation_tells_noise_removal_from_blurring(dicom_series_dir: Path) -> None:
    full = read_volume(dicom_series_dir).array[9:11].astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 20.0, full.shape).astype(np.float32)
    assert abs(edge_correlation(noise, full)) < 0.1
    assert edge_correlation(full - gaussian_smooth(full, 3.0), full) > 0.3


def test_baselines_reduce_noise_and_gaussian_hits_its_target(dicom_series_dir: Path) -> None:
    full = read_volume(dicom_series_dir).array[9:10, 200:328, 100:228].astype(np.float32)
    low = simulate_low_dose(full, 0.98, 0.25, seed=1)
    patches = find_flat_patches(full, spacing_mm=(0.98, 0.98))
    before = band_noise_std(low, (0.98, 0.98), patches)
    assert band_noise_std(bm3d_slices(low, 25.0), (0.98, 0.98), patches) < 0.7 * before
    smoothed, width = gaussian_matched(low, 0.5 * before, (0.98, 0.98), patches)
    assert 0 < width < 8
    assert math.isclose(band_noise_std(smoothed, (0.98, 0.98), patches), 0.5 * before, rel_tol=0.05)


def test_bad_requests_are_one_line_errors(small_pair, tmp_path: Path, capsys) -> None:
    full, low = small_pair
    assert main(["evaluate", "--full", str(full), str(full), "--low", str(low), "--out", str(tmp_path / "o")]) == 2
    assert "pair them one to one" in capsys.readouterr().err
    assert main(["evaluate", "--low", str(low), "--baselines", "wiener", "--out", str(tmp_path / "o")]) == 2
    assert "unknown baseline" in capsys.readouterr().err
    assert main(["evaluate", "--out", str(tmp_path / "o")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", "--low", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
