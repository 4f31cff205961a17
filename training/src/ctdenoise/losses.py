"""CycleGAN losses exactly as the seed writes them: least-squares adversarial terms, L1 cycle and identity.

Naming: F is full dose, Q is quarter (low) dose; ``G_Q2F`` denoises, ``G_F2Q`` adds noise, ``D_F``
and ``D_Q`` judge full- and low-dose slices. The generator objective is

    L_G = (adv_F + adv_Q) + lambda_cycle * (cycle_F + cycle_Q) + lambda_identity * (identity_F + identity_Q)

with adv_F = mean((D_F(G_Q2F(x_Q)) - 1)^2), cycle_F = mean|G_Q2F(G_F2Q(x_F)) - x_F| and
identity_F = mean|G_Q2F(x_F) - x_F| (Q alike). Each discriminator minimises half its
least-squares loss, as the seed does.
"""

from __future__ import annotations

import torch

from ctdenoise.errors import CTDenoiseError

LOSS_TERMS = ("adv_F", "adv_Q", "cycle_F", "cycle_Q", "identity_F", "identity_Q")
"""Keys of the per-term dictionary returned by :func:`generator_total_loss` (besides ``total``)."""


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Halved least-squares loss: 0.5 * (mean((d_real - 1)^2) + mean(d_fake^2)).

    Pass the scores of fakes computed from detached generator outputs.
    """
    return 0.5 * (torch.mean((d_real - 1.0) ** 2) + torch.mean(d_fake**2))


def generator_adversarial_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares generator loss: mean((d_fake - 1)^2)."""
    return torch.mean((d_fake - 1.0) ** 2)


def _l1(prediction: torch.Tensor, target: torch.Tensor, what: str) -> torch.Tensor:
    """Mean absolute difference of two tensors of identical shape."""
    if prediction.shape != target.shape:
        raise CTDenoiseError(
            f"{what} loss got shapes {tuple(prediction.shape)} and {tuple(target.shape)}: pass tensors of the same shape"
        )
    return torch.mean(torch.abs(prediction - target))


def cycle_loss(reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 cycle-consistency loss: mean |reconstructed - real|."""
    return _l1(reconstructed, real, "cycle")


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 identity loss: mean |G(real of the target domain) - real|."""
    return _l1(same, real, "identity")


def generator_total_loss(
    adv_f: torch.Tensor,
    adv_q: torch.Tensor,
    cyc_f: torch.Tensor,
    cyc_q: torch.Tensor,
    idt_f: torch.Tensor,
    idt_q: torch.Tensor,
    lambda_cycle: float = 10.0,
    lambda_identity: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Combine the six scalar generator terms into L_G.

    Returns:
        ``(total, terms)``: the differentiable total and a dictionary of detached scalar tensors
        with the keys of :data:`LOSS_TERMS` plus ``total``, for logging (kept on the device so a
        training step does not wait for the GPU; convert with ``float()`` when logging).

    Raises:
        CTDenoiseError: a negative weight.
    """
    if lambda_cycle < 0 or lambda_identity < 0:
        raise CTDenoiseError(
            f"loss weights must be >= 0, got lambda_cycle={lambda_cycle} and lambda_identity={lambda_identity}"
        )
    total = (adv_f + adv_q) + lambda_cycle * (cyc_f + cyc_q) + lambda_identity * (idt_f + idt_q)
    values = (adv_f, adv_q, cyc_f, cyc_q, idt_f, idt_q)
    terms = {name: value.detach() for name, value in zip(LOSS_TERMS, values)}
    terms["total"] = total.detach()
    return total, terms
