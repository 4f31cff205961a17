"""Tests of the CycleGAN losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from ctdenoise.errors import CTDenoiseError
from ctdenoise.losses import (
    LOSS_TERMS,
    cycle_loss,
    discriminator_loss,
    generator_adversarial_loss,
    generator_total_loss,
    identity_loss,
)
from ctdenoise.networks import build_discriminator, build_generator


def test_discriminator_loss_is_halved_least_squares() -> None:
    d_real = torch.tensor([[0.5, 1.5]], requires_grad=True)
    d_fake = torch.tensor([[0.2, -0.4]], requires_grad=True)
    loss = discriminator_loss(d_real, d_fake)
    # real: ((-0.5)^2 + 0.5^2) / 2 = 0.25; fake: (0.04 + 0.16) / 2 = 0.1; halved sum = 0.175
    assert loss.item() == pytest.approx(0.175)
    loss.backward()
    # d/dx 0.5 * mean((x - 1)^2) = (x - 1) / 2 for 2 elements; d/dx 0.5 * mean(x^2) = x / 2
    torch.testing.assert_close(d_real.grad, torch.tensor([[-0.25, 0.25]]))
    torch.testing.assert_close(d_fake.grad, torch.tensor([[0.1, -0.2]]))


def test_discriminator_loss_is_zero_for_a_perfect_discriminator() -> None:
    assert discriminator_loss(torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)).item() == 0.0


def test_generator_adversarial_loss() -> None:
    d_fake = torch.tensor([[0.5, 2.0, 1.0]], requires_grad=True)
    loss = generator_adversarial_loss(d_fake)
    assert loss.item() == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    loss.backward()
    torch.testing.assert_close(d_fake.grad, torch.tensor([[-1 / 3, 2 / 3, 0.0]]))


def test_cycle_loss_is_mean_absolute_error() -> None:
    reconstructed = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    real = torch.tensor([[1.5, 2.0], [2.0, 4.5]])
    loss = cycle_loss(reconstructed, real)
    assert loss.item() == pytest.approx((0.5 + 0.0 + 1.0 + 0.5) / 4)
    loss.backward()
    torch.testing.assert_close(reconstructed.grad, torch.tensor([[-0.25, 0.0], [0.25, -0.25]]))


def test_identity_loss_is_mean_absolute_error() -> None:
    same = torch.tensor([0.0, -1.0])
    real = torch.tensor([0.25, 1.0])
    assert identity_loss(same, real).item() == pytest.approx(1.125)


def test_l1_losses_reject_shape_mismatch() -> None:
    with pytest.raises(CTDenoiseError, match="cycle loss got shapes"):
        cycle_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 1))
    with pytest.raises(CTDenoiseError, match="identity loss"):
        identity_loss(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def test_generator_total_loss_weights_the_terms() -> None:
    values = [0.1, 0.2, 0.3, 0.4, 0.05, 0.15]
    terms_in = [torch.tensor(v, requires_grad=True) for v in values]
    total, terms = generator_total_loss(*terms_in)
    # (0.1 + 0.2) + 10 * (0.3 + 0.4) + 5 * (0.05 + 0.15) = 0.3 + 7 + 1
    assert total.item() == pytest.approx(8.3)
    assert set(terms) == {*LOSS_TERMS, "total"}
    assert float(terms["cycle_Q"]) == pytest.approx(0.4)
    assert float(terms["identity_F"]) == pytest.approx(0.05)
    assert float(terms["total"]) == pytest.approx(8.3)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in terms.values())
    total.backward()
    assert [t.grad.item() for t in terms_in] == [1.0, 1.0, 10.0, 10.0, 5.0, 5.0]


def test_generator_total_loss_custom_weights() -> None:
    total, _ = generator_total_loss(*[torch.tensor(v) for v in (0.1, 0.2, 0.3, 0.4, 0.05, 0.15)], 1.0, 0.0)
    assert total.item() == pytest.approx(1.0)
    with pytest.raises(CTDenoiseError, match="lambda_identity=-1"):
        generator_total_loss(*[torch.tensor(0.0)] * 6, lambda_identity=-1.0)


def test_gradients_reach_every_generator_parameter() -> None:
    """Every generator weight gets a gradient from the total loss (the trainer's own step's isolation of
    generator and discriminator gradients is tested in test_training)."""
    torch.manual_seed(0)
    g_q2f = build_generator("fast", ngf=4, n_res_blocks=1)
    g_f2q = build_generator("fast", ngf=4, n_res_blocks=1)
    d_f, d_q = build_discriminator(ndf=4), build_discriminator(ndf=4)
    for p in [*d_f.parameters(), *d_q.parameters()]:
        p.requires_grad_(False)
    x_f, x_q = torch.randn(2, 1, 72, 72), torch.randn(2, 1, 72, 72)
    fake_f, fake_q = g_q2f(x_q), g_f2q(x_f)
    total, terms = generator_total_loss(
        generator_adversarial_loss(d_f(fake_f)),
        generator_adversarial_loss(d_q(fake_q)),
        cycle_loss(g_q2f(fake_q), x_f),
        cycle_loss(g_f2q(fake_f), x_q),
        identity_loss(g_q2f(x_f), x_f),
        identity_loss(g_f2q(x_q), x_q),
    )
    total.backward()
    for model in (g_q2f, g_f2q):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is None for p in [*d_f.parameters(), *d_q.parameters()])
    assert float(terms["total"]) > 0

    for p in d_f.parameters():
        p.requires_grad_(True)
    d_loss = discriminator_loss(d_f(x_f), d_f(fake_f.detach()))
    d_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d_f.parameters())
