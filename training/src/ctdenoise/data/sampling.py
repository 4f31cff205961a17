"""Unpaired patch batches for CycleGAN training, and aligned slices for validation.

Every patch is a pure function of ``(seed, step, dose, index in the global batch)``: training
resumes exactly at any step, DataLoader workers may prefetch steps in any order, and the processes
of a distributed run each draw their own share of one global batch, so any number of processes
sees the same patches. Reads are crops of memory-mapped int16 slices,
never whole volumes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ctdenoise.data.cache import HU_MIN, CacheEntry, CacheIndex
from ctdenoise.data.layouts import FULL, LOW
from ctdenoise.errors import CTDenoiseError

BODY_HU = -900.0
"""Pixels above this HU count as body (not air) when judging a patch."""


class _SlicePool:
    """All slices of a set of cache volumes, addressable by one flat index."""

    def __init__(self, cache: CacheIndex, entries: list[CacheEntry]) -> None:
        self.cache = cache
        self.entries = entries
        self.ends = np.cumsum([e.shape[0] for e in entries])

    @property
    def total(self) -> int:
        return int(self.ends[-1])

    def locate(self, flat: int) -> tuple[CacheEntry, int]:
        """(volume, slice index) of flat slice number ``flat``."""
        volume = int(np.searchsorted(self.ends, flat, side="right"))
        start = 0 if volume == 0 else int(self.ends[volume - 1])
        return self.entries[volume], flat - start


class UnpairedPatchSampler:
    """Random full-dose and low-dose patches drawn independently of each other.

    For each batch item a full-dose slice (uniform over all full-dose slices of the split), a crop
    position and an augmentation are drawn, and separately a low-dose slice, crop and augmentation,
    so the two patches never come from a known aligned position. A crop with less than
    ``min_body_fraction`` of its pixels above -900 HU is redrawn, up to ``max_tries`` draws in
    total (the draw with the most body is kept). Augmentation is one of the 8 flips/90-degree
    rotations. ``batch_size`` is the global batch: each patch has its own random stream, seeded by
    ``(seed, step, dose, index)``, and process ``rank`` of ``world_size`` draws the contiguous share
    ``[rank * b, (rank + 1) * b)`` with ``b = batch_size / world_size``.
    """

    def __init__(
        self,
        cache: CacheIndex,
        split: str = "train",
        patch_size: int = 128,
        batch_size: int = 4,
        seed: int = 0,
        augment: bool = True,
        rank: int = 0,
        world_size: int = 1,
        min_body_fraction: float = 0.3,
        max_tries: int = 8,
    ) -> None:
        if patch_size < 1 or batch_size < 1 or max_tries < 1:
            raise CTDenoiseError(
                f"patch size, batch size and tries must be positive, got {patch_size}, {batch_size}, {max_tries}"
            )
        if not 0 <= rank < world_size:
            raise CTDenoiseError(f"rank {rank} is outside a world of size {world_size}")
        if batch_size % world_size:
            raise CTDenoiseError(
                f"data.batch_size {batch_size} (the global batch) does not split evenly over {world_size} processes: "
                f"make it a multiple of {world_size}"
            )
        if not 0.0 <= min_body_fraction <= 1.0:
            raise CTDenoiseError(f"minimum body fraction must be in [0, 1], got {min_body_fraction}")
        pools = {}
        for dose in (FULL, LOW):
            entries = cache.volumes(split=split, dose=dose)
            if not entries:
                raise CTDenoiseError(
                    f"the cache at {cache.root} has no {dose}-dose volumes in split {split!r}: "
                    "prepare it with both doses (or --simulate-dose) and a patient split"
                )
            pools[dose] = _SlicePool(cache, entries)
        self.cache = cache
        self.split = split
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.rank = rank
        self.local_batch = batch_size // world_size
        self.min_body_fraction = min_body_fraction
        self.max_tries = max_tries
        self._pools = pools

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's (full, low) float32 HU patches ``[b, 1, P, P]`` of the global batch of ``step``."""
        items = range(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        full = np.stack([self._patch(self._pools[FULL], self._rng(step, 0, k)) for k in items])
        low = np.stack([self._patch(self._pools[LOW], self._rng(step, 1, k)) for k in items])
        return full[:, None], low[:, None]

    def _rng(self, step: int, dose: int, item: int) -> np.random.Generator:
        """The random stream of one patch: item ``item`` of dose ``dose`` (0 full, 1 low) at ``step``."""
        return np.random.default_rng([self.seed, step, dose, item])

    def _patch(self, pool: _SlicePool, rng: np.random.Generator) -> np.ndarray:
        """One patch: best of up to ``max_tries`` random crops by body fraction, then augmented."""
        best, best_fraction = self._random_crop(pool, rng)
        for _ in range(self.max_tries - 1):
            if best_fraction >= self.min_body_fraction:
                break
            patch, fraction = self._random_crop(pool, rng)
            if fraction > best_fraction:
                best, best_fraction = patch, fraction
        if self.augment:
            best = np.rot90(best, int(rng.integers(4)))
            if rng.random() < 0.5:
                best = best[:, ::-1]
        return np.ascontiguousarray(best)

    def _random_crop(self, pool: _SlicePool, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """A crop of a random slice of ``pool`` and the fraction of its pixels that are body."""
        entry, z = pool.locate(int(rng.integers(pool.total)))
        patch = self._crop(self.cache.array(entry), z, rng)
        return patch, float(np.count_nonzero(patch > BODY_HU)) / patch.size

    def _crop(self, volume: np.ndarray, z: int, rng: np.random.Generator) -> np.ndarray:
        """A ``P x P`` float32 crop of slice ``z`` at a random position; small slices padded with air."""
        size = self.patch_size
        height, width = volume.shape[1:]
        y0 = int(rng.integers(max(height - size, 0) + 1))
        x0 = int(rng.integers(max(width - size, 0) + 1))
        crop = np.asarray(volume[z, y0:y0 + size, x0:x0 + size], dtype=np.float32)
        if crop.shape == (size, size):
            return crop
        pad_y, pad_x = size - crop.shape[0], size - crop.shape[1]
        return np.pad(crop, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)),
                      constant_values=float(HU_MIN))


class StepDataset(Dataset):
    """Item ``i`` is the batch for step ``start_step + i`` as float32 tensors ``(full, low)``.

    Use with ``DataLoader(dataset, batch_size=None, num_workers=k)``: batches are already formed
    and every item is deterministic, so workers may prefetch in any order.
    """

    def __init__(self, sampler: UnpairedPatchSampler, start_step: int, num_steps: int) -> None:
        if num_steps < 0:
            raise CTDenoiseError(f"number of steps must not be negative, got {num_steps}")
        self.sampler = sampler
        self.start_step = start_step
        self.num_steps = num_steps

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_steps:
            raise IndexError(f"step index {index} outside [0, {self.num_steps})")
        full, low = self.sampler.batch(self.start_step + index)
        return torch.from_numpy(full), torch.from_numpy(low)


def paired_validation_slices(
    cache: CacheIndex, split: str = "val", max_slices: int = 8, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Aligned (full, low) float32 HU slices from the split's pairs, evenly spread over them.

    The slices are taken at equal steps through the concatenated slices of all pairs, starting at
    an offset drawn from ``seed`` within the first step. Empty when the split has no pairs.
    """
    pairs = cache.pairs(split)
    if not pairs or max_slices < 1:
        return []
    ends = np.cumsum([full.shape[0] for full, _ in pairs])
    total = int(ends[-1])
    count = min(max_slices, total)
    stride = total / count
    offset = np.random.default_rng(seed).uniform(0.0, stride)
    result = []
    for flat in (int(offset + k * stride) for k in range(count)):
        pair = int(np.searchsorted(ends, flat, side="right"))
        z = flat - (0 if pair == 0 else int(ends[pair - 1]))
        full, low = pairs[pair]
        result.append((np.asarray(cache.array(full)[z], dtype=np.float32),
                       np.asarray(cache.array(low)[z], dtype=np.float32)))
    return result

