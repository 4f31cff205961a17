#!/usr/bin/env python3
"""Pick the training state to ship: score each validated periodic state on the TRAINING pairs.

A CycleGAN does not converge to a point: on CPU runs of the bundled model its liver noise swung
between 9 and 23 HU from one hundred steps to the next, and some states printed isolated spikes
of several hundred HU. This script scores every periodic state whose step was validated
(``train.val_every``) on the training split's aligned (full, simulated low) slices, which the
unpaired training never used as pairs, so the held-out validation series stays untouched:

- spikes: pixels that G_Q2F changes by more than 300 HU (noise removal never needs that);
- RMSE in HU against full dose inside the soft-tissue window [-160, 240], body pixels only.

It prints one row per state and, last, the path of the state with the lowest RMSE among those
with at most one spike per million pixels.

    python scripts/select_checkpoint.py RUN_DIR [--slices 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ctdenoise.checkpoints import ModelCheckpoint, load_checkpoint, load_torch_safely
from ctdenoise.data import load_cache, paired_validation_slices
from ctdenoise.errors import CTDenoiseError
from ctdenoise.inference import denoise_array
from ctdenoise.options import DenoiseOptions

SPIKE_HU = 300.0
MAX_SPIKES_PER_MILLION = 1.0
WINDOW = (-160.0, 240.0)


def window_rmse(image: np.ndarray, full: np.ndarray) -> float:
    """RMSE in HU against ``full`` inside the soft-tissue window, over body pixels."""
    body = full > -300
    error = np.clip(image, *WINDOW) - np.clip(full, *WINDOW)
    return float(np.sqrt((error[body] ** 2).mean()))


def score(model: ModelCheckpoint, full: np.ndarray, low: np.ndarray) -> tuple[int, float]:
    """(spike count, soft-tissue-window RMSE in HU) of a model on aligned training slices."""
    denoised = denoise_array(low, model, DenoiseOptions(device="cpu", runtime="torch", batch_size=4))
    return int((np.abs(denoised - low) > SPIKE_HU).sum()), window_rmse(denoised, full)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training output folder (with checkpoints/)")
    parser.add_argument("--slices", type=int, default=16, help="training slices to score on")
    args = parser.parse_args()
    try:
        states = sorted((args.run / "checkpoints").glob("step_*.pt"))
        if not states:
            raise CTDenoiseError(f"{args.run}/checkpoints holds no step_*.pt: train with keep_checkpoints > 0")
        first = load_torch_safely(states[0])
        cache_dir = Path(first["config"]["data"]["cache"])
        pairs = paired_validation_slices(load_cache(cache_dir), split="train", max_slices=args.slices, seed=0)
        if not pairs:
            raise CTDenoiseError(f"the cache at {cache_dir} has no training pairs to score on")
        full = np.stack([f for f, _ in pairs])
        low = np.stack([q for _, q in pairs])
        allowed = MAX_SPIKES_PER_MILLION * full.size / 1e6
        best: tuple[float, Path] | None = None
        print(f"{len(pairs)} training slices; low-dose input: soft-tissue RMSE {window_rmse(low, full):.2f} HU")
        print("step  spikes>300HU  soft-tissue RMSE (HU)")
        for path in states:
            model = load_checkpoint(path)
            step = model.metadata["training"]["steps"]
            if model.metadata.get("metrics", {}).get("step") != step:
                continue  # not validated at this step: its model card would have no figures
            spikes, rmse = score(model, full, low)
            print(f"{step:5d} {spikes:12d} {rmse:12.2f}")
            if spikes <= allowed and (best is None or rmse < best[0]):
                best = (rmse, path)
        if best is None:
            raise CTDenoiseError("every validated state has spikes: train longer or with a lower learning rate")
    except CTDenoiseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(best[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
