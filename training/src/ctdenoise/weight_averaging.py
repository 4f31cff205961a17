"""Average the weights of models of one lineage (weight-space ensembling).

A model fine-tuned from another keeps a path of low loss between the two in weight space, so a
weighted average of their weights (WiSE-FT, Wortsman et al. 2022; "model soups") often keeps the
strengths of both: here, a model fine-tuned to remove more noise averaged with the one it started
from, which leaves low-noise slices alone. Unlike an ensemble of outputs the result runs at the cost
of one model. :func:`average_models` checks that the models share their architecture, normalisation
and orientation, and writes the average with new graphs, change limit and validation metrics.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from ctdenoise.checkpoints import ModelCheckpoint, load_checkpoint
from ctdenoise.errors import CTDenoiseError
from ctdenoise.types import PathLike

SHARED_RECORDS = ("data", "config", "change_limit", "device", "world_size", "steps")
"""``training`` entries not copied into the record of each averaged model: the cache's data and
the teacher's recipe they share, and what is measured anew. An earlier average stays, nested."""


def averaging_weights(count: int, weights: Sequence[float] | None) -> list[float]:
    """``weights`` for ``count`` models scaled to sum to 1 (equal weights if None)."""
    if count < 2:
        raise CTDenoiseError(f"averaging needs at least two models, got {count}: name two or more")
    if weights is None:
        return [1.0 / count] * count
    values = list(weights)
    if len(values) != count:
        raise CTDenoiseError(f"got {len(values)} weights for {count} models: give one weight per model")
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in values)
    if not numbers or any(w < 0 for w in values) or sum(values) <= 0:
        raise CTDenoiseError(f"weights must be finite numbers of at least 0 with a positive sum, got {values}")
    total = float(sum(values))
    return [float(w) / total for w in values]


def _check_compatible(models: Sequence[ModelCheckpoint]) -> None:
    first = models[0]
    for other in models[1:]:
        for what, mine, theirs in (
            ("generator", (first.preset, first.generator_args), (other.preset, other.generator_args)),
            ("normalisation", first.metadata["normalization"], other.metadata["normalization"]),
            ("orientation", first.orientation, other.orientation),
        ):
            if mine != theirs:
                raise CTDenoiseError(
                    f"{other.path} and {first.path} differ in their {what} ({theirs} against {mine}): "
                    "average only models fine-tuned from one another"
                )


def average_state(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted average of state dicts with the same keys and shapes, in float64 then cast back."""
    average = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            average[key] = sum(w * state[key].double() for w, state in zip(weights, states)).to(first.dtype)
        else:  # counters and the like are not averaged: the first model's stand
            average[key] = first.clone()
    return average


def average_models(
    models: Sequence[PathLike], cache: PathLike, out: PathLike, weights: Sequence[float] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write the weighted average of ``models`` (equal weights by default) to ``out``, with graphs,
    change limit and validation metrics measured on ``cache``. Metadata comes from the first model,
    with ``training.averaged`` recording each model, its weight, metrics and training records.
    Returns the written path and that record."""
    from ctdenoise.export import write_model_from_cache

    shares = averaging_weights(len(models), weights)
    loaded = [load_checkpoint(path) for path in models]
    _check_compatible(loaded)
    state = average_state([m.generator.state_dict() for m in loaded], shares)
    record = {
        "method": "weighted average of the weights of models of one lineage (WiSE-FT)",
        "models": [
            {
                "file": Path(path).name,
                "weight": round(share, 6),
                "metrics": m.metadata.get("metrics"),
                "training": {k: v for k, v in (m.metadata.get("training") or {}).items() if k not in SHARED_RECORDS},
            }
            for path, share, m in zip(models, shares, loaded)
        ],
    }
    metadata = dict(loaded[0].metadata)
    metadata["training"] = {**dict(metadata.get("training") or {}), "averaged": record}
    return write_model_from_cache(state, metadata, out, cache), record
