"""Unpaired patch sampling and validation slices, on caches built from real CT slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader

from ctdenoise.data.cache import CacheIndex, prepare_cache
from ctdenoise.data.layouts import discover_dataset, split_by_patient
from ctdenoise.data.sampling import StepDataset, UnpairedPatchSampler, paired_validation_slices
from ctdenoise.errors import CTDenoiseError
from ctdenoise.io import read_volume

DATA = Path(__file__).resolve().parents[2] / "data"
ABDOMEN = sorted((DATA / "totalsegmentator" / "example_ct_dicom").glob("CT.*"))


@pytest.fixture(scope="module")
def real_slices() -> list[np.ndarray]:
    return [read_volume(p).array[0] for p in ABDOMEN[:4]]


def _seed_cache(root: Path, full: dict[str, list[np.ndarray]], low: dict[str, list[np.ndarray]]) -> CacheIndex:
    """A seed-layout cache: ``full``/``low`` map split -> HU slices (stored as attenuation .npy)."""
    for slices_by_split, dose in ((full, "full_dose"), (low, "quarter_dose")):
        for split, slices in slices_by_split.items():
            folder = root / "seed" / split / dose
            folder.mkdir(parents=True)
            for i, hu in enumerate(slices):
                np.save(folder / f"{i}.npy", 0.0192 * (1.0 + hu.astype(np.float64) / 1000.0))
    return prepare_cache(split_by_patient(discover_dataset(root / "seed")), root / "cache")


def _d4(patch: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/90-degree rotations of a square patch."""
    rotations = [np.rot90(patch, k) for k in range(4)]
    return rotations + [r[:, ::-1] for r in rotations]


def _crop_location(volume: np.ndarray, patch: np.ndarray, transforms: bool) -> tuple | None:
    """(z, y, x, transform) of a crop of ``volume`` that ``patch`` is, or None."""
    size = patch.shape[0]
    windows = sliding_window_view(volume.astype(np.float32), (size, size), axis=(1, 2))
    for t, candidate in enumerate(_d4(patch) if transforms else [patch]):
        hits = np.argwhere(np.all(windows == candidate, axis=(-2, -1)))
        if len(hits):
            return (*hits[0].tolist(), t)
    return None


def test_batches_are_deterministic_per_step_and_rank(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    cache = _seed_cache(tmp_path, {"train": real_slices}, {"train": real_slices[::-1]})
    sampler = UnpairedPatchSampler(cache, patch_size=96, batch_size=3, seed=5)

    full, low = sampler.batch(11)

    assert full.shape == low.shape == (3, 1, 96, 96)
    assert full.dtype == low.dtype == np.float32
    assert full.min() >= -1024 and full.max() <= 3071
    again = UnpairedPatchSampler(cache, patch_size=96, batch_size=3, seed=5).batch(11)
    assert np.array_equal(full, again[0]) and np.array_equal(low, again[1])
    assert not np.array_equal(full, sampler.batch(12)[0])
    # two processes draw the two halves of the same global batch
    shards = [UnpairedPatchSampler(cache, patch_size=96, batch_size=4, seed=5, rank=r, world_size=2) for r in (0, 1)]
    whole = UnpairedPatchSampler(cache, patch_size=96, batch_size=4, seed=5).batch(11)
    halves = [shard.batch(11) for shard in shards]
    assert halves[0][0].shape == (2, 1, 96, 96)
    for dose in (0, 1):
        assert np.array_equal(np.concatenate([h[dose] for h in halves]), whole[dose])
    assert not np.array_equal(halves[0][0], halves[1][0])
    with pytest.raises(CTDenoiseError, match="multiple of 2"):
        UnpairedPatchSampler(cache, patch_size=96, batch_size=3, rank=0, world_size=2)
    assert not np.array_equal(full, UnpairedPatchSampler(cache, patch_size=96, batch_size=3, seed=6).batch(11)[0])


def test_full_and_low_patches_are_drawn_independently(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    small = [s[::8, ::8] for s in real_slices]  # 64 x 64, so every crop position can be searched
    cache = _seed_cache(tmp_path, {"train": small}, {"train": small})  # identical doses: a paired draw would show
    full_volume = cache.array(cache.volumes("train", "full")[0])
    low_volume = cache.array(cache.volumes("train", "low")[0])
    sampler = UnpairedPatchSampler(cache, patch_size=24, batch_size=4, seed=1, min_body_fraction=0.5)

    same_position = 0
    for step in range(10):
        full, low = sampler.batch(step)
        for f, q in zip(full[:, 0], low[:, 0]):
            where_full = _crop_location(full_volume, f, transforms=True)
            where_low = _crop_location(low_volume, q, transforms=True)
            assert where_full is not None and where_low is not None
            same_position += where_full[:3] == where_low[:3]
    assert same_position <= 1


def test_augmentation_is_only_flips_and_rotations(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    small = [s[100:420:5, 100:420:5] for s in real_slices]  # 64 x 64 crops of the body
    cache = _seed_cache(tmp_path, {"train": small}, {"train": small})
    volume = cache.array(cache.volumes("train", "full")[0])
    transforms_seen = set()
    for augment in (True, False):
        sampler = UnpairedPatchSampler(cache, patch_size=32, batch_size=4, seed=2, augment=augment)
        for step in range(6):
            for patch in sampler.batch(step)[0][:, 0]:
                found = _crop_location(volume, patch, transforms=augment)
                assert found is not None  # values are exactly a (transformed) crop of a stored slice
                if augment:
                    transforms_seen.add(found[3])
    assert len(transforms_seen) >= 4


def test_mostly_air_patches_are_avoided(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    cache = _seed_cache(tmp_path, {"train": real_slices}, {"train": real_slices})

    def body_fraction(min_body: float) -> np.ndarray:
        sampler = UnpairedPatchSampler(cache, patch_size=128, batch_size=8, seed=0, min_body_fraction=min_body)
        patches = np.concatenate([np.concatenate(sampler.batch(s)) for s in range(4)])
        return (patches > -900).mean(axis=(1, 2, 3))

    unfiltered, filtered = body_fraction(0.0), body_fraction(0.6)
    assert (filtered >= 0.6).mean() > 0.95
    assert filtered.mean() > unfiltered.mean()


def test_small_slices_are_padded_with_air(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    small = [s[200:240, 150:250] for s in real_slices]  # 40 x 100
    cache = _seed_cache(tmp_path, {"train": small}, {"train": small})
    sampler = UnpairedPatchSampler(cache, patch_size=64, batch_size=2, augment=False)

    full, _ = sampler.batch(0)

    assert full.shape == (2, 1, 64, 64)
    assert np.all(full[:, 0, :12] == -1024) and np.all(full[:, 0, 52:] == -1024)
    assert np.any(full[:, 0, 12:52] > -900)


def test_step_dataset_with_worker_processes(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    cache = _seed_cache(tmp_path, {"train": real_slices}, {"train": real_slices})
    sampler = UnpairedPatchSampler(cache, patch_size=64, batch_size=2, seed=3)
    dataset = StepDataset(sampler, start_step=100, num_steps=5)

    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2))

    assert len(loaded) == len(dataset) == 5
    for i, (full, low) in enumerate(loaded):
        expected_full, expected_low = sampler.batch(100 + i)
        assert isinstance(full, torch.Tensor) and full.dtype == torch.float32
        assert torch.equal(full, torch.from_numpy(expected_full))
        assert torch.equal(low, torch.from_numpy(expected_low))
    with pytest.raises(IndexError):
        dataset[5]


def test_sampler_needs_both_doses_in_the_split(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    cache = _seed_cache(tmp_path, {"train": real_slices[:1]}, {"test": real_slices[:1]})
    with pytest.raises(CTDenoiseError, match="no low-dose volumes in split 'train'"):
        UnpairedPatchSampler(cache)


def test_paired_validation_slices_are_aligned_and_spread(tmp_path: Path, real_slices: list[np.ndarray]) -> None:
    noise = np.random.default_rng(0)
    noisy = [s + noise.normal(0, 20, s.shape).astype(np.float32) for s in real_slices]
    cache = _seed_cache(
        tmp_path, {"train": real_slices, "test": real_slices}, {"train": real_slices[:2], "test": noisy}
    )

    slices = paired_validation_slices(cache, "val", max_slices=3, seed=0)

    assert len(slices) == 3
    originals = np.stack(real_slices)
    picked = []
    for full, low in slices:
        assert full.dtype == low.dtype == np.float32 and full.shape == (512, 512)
        z = int(np.argmin([np.abs(full - o).mean() for o in originals]))
        assert np.abs(full - np.clip(np.rint(originals[z]), -1024, 3071)).max() == 0
        body = full > -900
        assert np.abs(low - full)[body].mean() < 25  # same slice, only the added noise differs
        picked.append(z)
    assert len(set(picked)) == 3
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(slices, paired_validation_slices(cache, "val", 3, seed=0)))
    assert len(paired_validation_slices(cache, "val", max_slices=10)) == 4
    assert paired_validation_slices(cache, "train") == []  # train doses hold different slices: no pair
