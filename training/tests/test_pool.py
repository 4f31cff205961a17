"""The image pool of past fakes."""

from __future__ import annotations

import numpy as np
import torch

from ctdenoise.training.pool import ImagePool


def test_size_zero_passes_through() -> None:
    images = torch.randn(4, 1, 8, 8)
    assert ImagePool(0).query(images, np.random.default_rng(0)) is images


def test_fills_then_swaps_half_the_time_and_round_trips() -> None:
    pool = ImagePool(4)
    first = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first, np.random.default_rng(0)), first)
    assert len(pool.images) == 4
    second = torch.arange(100, 300, dtype=torch.float32).view(200, 1, 1, 1)
    out = pool.query(second, np.random.default_rng(1))
    swapped = (out.view(-1) != second.view(-1)).sum().item()
    assert 60 < swapped < 140  # about half of 200 draws return a stored image instead
    stored = {float(t) for t in pool.images}
    assert stored <= set(range(4)) | set(range(100, 300))
    state = pool.state_dict()
    other = ImagePool(1)
    other.load_state_dict(state, torch.device("cpu"))
    assert other.size == 4 and all(torch.equal(a, b) for a, b in zip(other.images, pool.images))


def test_same_generator_same_choices() -> None:
    images = torch.randn(8, 1, 2, 2)
    a, b = ImagePool(2), ImagePool(2)
    a.query(images, np.random.default_rng(5))
    b.query(images, np.random.default_rng(5))
    later = torch.randn(8, 1, 2, 2)
    assert torch.equal(a.query(later, np.random.default_rng(9)), b.query(later, np.random.default_rng(9)))
