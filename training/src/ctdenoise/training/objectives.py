"""The two CycleGAN objectives as modules: one forward computes a whole loss.

A CycleGAN step runs each generator three times (fake, cycle, identity) and each discriminator on
real and fake images. Wrapping each side's loss in one module gives
:class:`~torch.nn.parallel.DistributedDataParallel` what it expects, one forward per backward, so
gradients are all-reduced in buckets while the backward pass is still running.
"""

from __future__ import annotations

import torch
from torch import nn

from ctdenoise.losses import (
    cycle_loss,
    discriminator_loss,
    generator_adversarial_loss,
    generator_total_loss,
    identity_loss,
)


class GeneratorObjective(nn.Module):
    """The generators' loss: adversarial (through frozen critics), cycle and identity terms.

    The discriminators are held outside the module's parameters, so a DDP wrapper reduces the
    generators' gradients only.
    """

    def __init__(
        self,
        g_f2q: nn.Module,
        g_q2f: nn.Module,
        critics: tuple[nn.Module, nn.Module],
        lambda_cycle: float,
        lambda_identity: float,
    ) -> None:
        super().__init__()
        self.g_f2q, self.g_q2f = g_f2q, g_q2f
        self.critics = critics  # a tuple: not registered as submodules
        self.lambda_cycle, self.lambda_identity = lambda_cycle, lambda_identity

    def forward(
        self, real_f: torch.Tensor, real_q: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(total loss, its terms, fake full dose, fake quarter dose) for one batch."""
        d_f, d_q = self.critics
        fake_f, fake_q = self.g_q2f(real_q), self.g_f2q(real_f)
        total, terms = generator_total_loss(
            generator_adversarial_loss(d_f(fake_f).float()),
            generator_adversarial_loss(d_q(fake_q).float()),
            cycle_loss(self.g_q2f(fake_q).float(), real_f),
            cycle_loss(self.g_f2q(fake_f).float(), real_q),
            identity_loss(self.g_q2f(real_f).float(), real_f),
            identity_loss(self.g_f2q(real_q).float(), real_q),
            lambda_cycle=self.lambda_cycle,
            lambda_identity=self.lambda_identity,
        )
        return total, terms, fake_f, fake_q


class DiscriminatorObjective(nn.Module):
    """Both discriminators' least-squares loss on real images and (pooled) fakes."""

    def __init__(self, d_f: nn.Module, d_q: nn.Module) -> None:
        super().__init__()
        self.d_f, self.d_q = d_f, d_q

    def forward(
        self, real_f: torch.Tensor, fake_f: torch.Tensor, real_q: torch.Tensor, fake_q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss of D_F, loss of D_Q)."""
        return (
            discriminator_loss(self.d_f(real_f).float(), self.d_f(fake_f).float()),
            discriminator_loss(self.d_q(real_q).float(), self.d_q(fake_q).float()),
        )
