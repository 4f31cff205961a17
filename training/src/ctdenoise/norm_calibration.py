"""Freeze a model's instance norms at statistics measured on its training slices.

Instance norm normalises every slice by its own feature statistics, so what a model does at a
pixel depends on the whole field of view. On whole slices, with air around the body, that is what
it was trained on; on a crop inside the body (a cropped volume, a small reconstruction field of
view, a tile) the statistics change and the bundled models amplified the noise they should remove.
:func:`fix_norms` runs the model on its training slices, averages each norm's per-channel mean and
variance over them, and writes the same weights with :class:`~ctdenoise.networks.generators.FixedNorm`
layers holding those averages: a purely convolutional model that needs no retraining and gives
the same result on a crop as on the whole slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ctdenoise.checkpoints import load_checkpoint
from ctdenoise.errors import CTDenoiseError
from ctdenoise.networks.generators import FixedNorm, build_generator
from ctdenoise.types import PathLike

EPS = 1e-5
"""Added to the variance, as :class:`torch.nn.InstanceNorm2d` does."""


def norm_statistics(generator: nn.Module, slices: Sequence[np.ndarray]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per instance norm of ``generator`` (by module name): the mean over ``slices`` of its input's
    per-channel mean and (biased) variance. ``slices`` are normalised ``[H, W]`` arrays."""
    sums: dict[str, list[torch.Tensor]] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            x = inputs[0].double()
            mean, var = x.mean(dim=(2, 3)).sum(0), x.var(dim=(2, 3), unbiased=False).sum(0)
            if name in sums:
                sums[name][0] += mean
                sums[name][1] += var
            else:
                sums[name] = [mean, var]

        return hook

    norms = [(name, m) for name, m in generator.named_modules() if isinstance(m, nn.InstanceNorm2d)]
    if not norms:
        raise CTDenoiseError("the model has no instance norms to fix: its norms are fixed already")
    handles = [module.register_forward_hook(record(name)) for name, module in norms]
    was_training = generator.training
    generator.eval()
    try:
        with torch.inference_mode():
            for image in slices:
                generator(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None])
    finally:
        for handle in handles:
            handle.remove()
        generator.train(was_training)
    return {name: (mean / len(slices), var / len(slices)) for name, (mean, var) in sums.items()}


def fixed_norm_args(args: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of the fixed-norm twin of a generator built with ``args``."""
    return {**args, "norm": "fixed"}


def fixed_norm_generator(
    generator: nn.Module, preset: str, args: dict[str, Any], slices: Sequence[np.ndarray]
) -> nn.Module:
    """A copy of instance-norm ``generator`` (built from ``preset`` and ``args``) whose norms are
    frozen at their average statistics on ``slices`` (normalised ``[H, W]`` arrays)."""
    statistics = norm_statistics(generator, slices)
    fixed = build_generator(preset, **fixed_norm_args(args))
    fixed.load_state_dict(generator.state_dict(), strict=False)  # the weights; the norms' buffers follow
    for name, (mean, var) in statistics.items():
        module = fixed.get_submodule(name)
        assert isinstance(module, FixedNorm)
        module.mean.copy_(mean.float())
        module.std.copy_((var + EPS).sqrt().float())
    return fixed.eval()


def fix_norms(model: PathLike, cache: PathLike, out: PathLike, max_slices: int = 64) -> tuple[Path, dict[str, Any]]:
    """Write ``model`` with its instance norms fixed at their statistics on ``cache``'s training
    slices (up to ``max_slices`` per dose) to ``out``, with new graphs, change limit and validation
    metrics. Returns the written path and the record kept in its metadata."""
    from ctdenoise.export import training_slices, write_model_from_cache

    if isinstance(max_slices, bool) or not isinstance(max_slices, int) or max_slices < 1:
        raise CTDenoiseError(f"max slices must be a positive integer, got {max_slices!r}")
    checkpoint = load_checkpoint(model)
    if not checkpoint.sees_whole_slices:
        raise CTDenoiseError(f"model {model} has fixed norms already: use it as it is")
    normalization = checkpoint.normalization
    slices = [normalization.normalize(s).astype(np.float32) for s in training_slices(cache, max_slices)]
    generator = fixed_norm_generator(checkpoint.generator, checkpoint.preset, checkpoint.generator_args, slices)
    metadata = dict(checkpoint.metadata)
    metadata["generator"] = {"preset": checkpoint.preset, "args": fixed_norm_args(checkpoint.generator_args)}
    record = {
        "method": "instance norms frozen at their mean statistics on the training slices",
        "file": Path(model).name,
        "slices": len(slices),
        "metrics_before": checkpoint.metadata.get("metrics"),
    }
    metadata["training"] = {**dict(metadata.get("training") or {}), "fixed_norms": record}
    return write_model_from_cache(generator.state_dict(), metadata, out, cache), record
