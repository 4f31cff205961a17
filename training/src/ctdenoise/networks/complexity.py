"""Parameter and FLOP counts of the networks.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on meta tensors (shapes
only, no arithmetic, so a 512x512 pass of the seed generator takes well under a second). It
counts the multiply-adds of convolutions and transposed convolutions as 2 FLOPs each (for a
transposed convolution: every input pixel times the whole kernel). It does not count bias
additions, instance norm, activations, padding or the residual additions: a few operations per
activation, under 1% of the convolutions for these networks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from ctdenoise.networks.discriminators import build_discriminator
from ctdenoise.networks.generators import GENERATOR_PRESETS, build_generator


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, height: int = 512, width: int = 512, channels: int = 1) -> int:
    """Convolution FLOPs (2 per multiply-add) of one forward pass on a single (1, channels, H, W) slice.

    The model is left untouched: the pass runs with meta copies of its parameters and buffers.
    """
    state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    }
    x = torch.empty(1, channels, height, width, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        functional_call(model, state, (x,))
    return int(counter.get_total_flops())


def model_summary_rows(height: int = 512, width: int = 512) -> list[dict[str, Any]]:
    """One row per generator preset and for the discriminator, for a (height x width) slice.

    Each row has ``name``, ``role`` ("generator" or "discriminator"), ``parameters``, ``gflops``
    (per slice) and ``ratio_to_seed`` (FLOPs relative to the seed generator's).
    """
    with torch.device("meta"):  # shapes suffice: no weights are allocated
        models = [(name, "generator", build_generator(name)) for name in GENERATOR_PRESETS]
        models.append(("patchgan", "discriminator", build_discriminator()))
    flops = {name: count_flops(model, height, width) for name, _, model in models}
    return [
        {
            "name": name,
            "role": role,
            "parameters": count_parameters(model),
            "gflops": flops[name] / 1e9,
            "ratio_to_seed": flops[name] / flops["seed"],
        }
        for name, role, model in models
    ]
