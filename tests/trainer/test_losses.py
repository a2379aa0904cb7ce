"""The regularisers against hand-computed cases and a torch.func reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from trainer.losses import (
    REGULARISERS,
    GATLoss,
    consensus_penalty,
    d_gan_loss,
    g_gan_loss,
    r1_penalty,
    r2_penalty,
    wgan_gp_penalty,
)


def linear_d(w: list[float], b: float = 0.3) -> nn.Linear:
    """D(x) = w·x + b: its input gradient is w for every sample."""
    d = nn.Linear(len(w), 1)
    with torch.no_grad():
        d.weight.copy_(torch.tensor([w]))
        d.bias.fill_(b)
    return d


class Squeeze(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).squeeze(1)


def test_gan_losses_are_the_softplus_form() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected_d = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert torch.allclose(d_gan_loss(real, fake), expected_d)
    assert torch.allclose(g_gan_loss(fake), -torch.log(torch.sigmoid(fake)).mean())


def test_r1_value_and_gradient_on_a_linear_discriminator() -> None:
    w = [3.0, -4.0]  # ||w||² = 25
    d = Squeeze(linear_d(w))
    x = torch.randn(5, 2)
    penalty, logits = r1_penalty(d, x)
    assert torch.allclose(penalty, torch.tensor(12.5))  # ½·||w||²
    assert torch.allclose(logits, x @ torch.tensor(w) + 0.3)
    penalty.backward()
    assert torch.allclose(d.inner.weight.grad, torch.tensor([w]))  # ∂(½||w||²)/∂w = w
    assert d.inner.bias.grad is None  # the input gradient of a linear map does not depend on its bias


def test_r2_is_r1_on_fakes() -> None:
    d = Squeeze(linear_d([1.0, 2.0, 2.0]))  # ||w||² = 9
    penalty, _ = r2_penalty(d, torch.randn(4, 3))
    assert torch.allclose(penalty, torch.tensor(4.5))


def test_wgan_gp_value_and_gradient_on_a_linear_discriminator() -> None:
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5: penalty (5 − 1)² = 16
    d = Squeeze(linear_d(w.tolist()))
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    penalty = wgan_gp_penalty(d, real, fake, torch.rand(6))
    assert torch.allclose(penalty, torch.tensor(16.0))
    penalty.backward()
    expected = 2 * (5 - 1) * w / 5  # ∂(||w|| − 1)²/∂w
    assert torch.allclose(d.inner.weight.grad, expected.unsqueeze(0))


def test_wgan_gp_uses_the_interpolates() -> None:
    # D(x) = ½||x||²: ∇D(x̂) = x̂, so the penalty is (||x̂|| − 1)² at x̂ = α·real + (1−α)·fake.
    class Quadratic(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x.square().sum(1)

    real, fake, alpha = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0.25])
    assert torch.allclose(wgan_gp_penalty(Quadratic(), real, fake, alpha), torch.tensor(0.25))  # (0.5 − 1)²


def small_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    d = Squeeze(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)))
    return g, d


def test_consensus_matches_a_torch_func_reference() -> None:
    g, d = small_pair()
    real, z, lam = torch.randn(16, 2), torch.randn(16, 3), 0.7
    g_p = {k: v.detach() for k, v in g.named_parameters()}
    d_p = {k: v.detach() for k, v in d.named_parameters()}

    def losses(gp: dict, dp: dict) -> tuple[torch.Tensor, torch.Tensor]:
        fake_logits = functional_call(d, dp, (functional_call(g, gp, (z,)),))
        real_logits = functional_call(d, dp, (real,))
        return g_gan_loss(fake_logits), d_gan_loss(real_logits, fake_logits)

    def half_sq_norm_v(gp: dict, dp: dict) -> torch.Tensor:
        v_g = grad(lambda p: losses(p, dp)[0])(gp)
        v_d = grad(lambda p: losses(gp, p)[1])(dp)
        return 0.5 * sum(t.square().sum() for t in (*v_g.values(), *v_d.values()))

    ref_reg = half_sq_norm_v(g_p, d_p)
    ref_d_grads = grad(lambda p: losses(g_p, p)[1] + lam * half_sq_norm_v(g_p, p))(d_p)
    ref_g_grads = grad(lambda p: losses(p, d_p)[0] + lam * half_sq_norm_v(p, d_p))(g_p)

    loss_g, loss_d = losses(dict(g.named_parameters()), dict(d.named_parameters()))
    reg = consensus_penalty(loss_g, loss_d, list(g.parameters()), list(d.parameters()))
    assert torch.allclose(reg, ref_reg, rtol=1e-5)

    gat = GATLoss(g, d, "consensus", lam)
    total_d, _, _ = gat.discriminator(real, z)
    total_d.backward(inputs=list(d.parameters()))
    for name, p in d.named_parameters():
        assert torch.allclose(p.grad, ref_d_grads[name], rtol=1e-4, atol=1e-6), name
    total_g, _ = gat.generator(real, z)
    total_g.backward(inputs=list(g.parameters()))
    for name, p in g.named_parameters():
        assert torch.allclose(p.grad, ref_g_grads[name], rtol=1e-4, atol=1e-6), name


def test_lambda_zero_builds_no_regulariser() -> None:
    g, d = small_pair()
    real, z = torch.randn(8, 2), torch.randn(8, 3)
    plain = GATLoss(g, d, "none", 5.0)
    for aux in REGULARISERS:  # every entry, the ones added later too
        gat = GATLoss(g, d, aux, 0.0)
        rng = torch.Generator().manual_seed(1)
        total, _, reg = gat.discriminator(real, z, rng)
        assert torch.equal(total, plain.discriminator(real, z)[0])
        assert reg.item() == 0.0
        assert torch.equal(rng.get_state(), torch.Generator().manual_seed(1).get_state()), "drew random numbers"
        assert torch.equal(gat.generator(real, z)[0], plain.generator(real, z)[0])


def test_an_unknown_regulariser_is_an_error_not_the_plain_gan() -> None:
    # Before the registry, a name GATLoss did not know trained the plain GAN without a word.
    g, d = small_pair()
    with pytest.raises(ValueError, match=r"aux_loss: 'r3' is not one of r1, r2, wgan-gp, consensus"):
        GATLoss(g, d, "r3", 1.0)


def test_each_entry_adds_terms_to_the_players_it_names() -> None:
    g, d = small_pair()
    real, z = torch.randn(8, 2), torch.randn(8, 3)
    plain = GATLoss(g, d, "none", 1.0)
    assert not plain.active and not plain.generator_needs_real
    for name, entry in REGULARISERS.items():
        gat = GATLoss(g, d, name, 1.0)
        assert gat.active == (entry.discriminator is not None or entry.generator is not None), name
        assert gat.generator_needs_real == entry.generator_needs_real, name
        total_g, _ = gat.generator(real, z)
        assert torch.equal(total_g, plain.generator(real, z)[0]) == (entry.generator is None), name


def test_r1_lazy_is_16_times_r1_on_every_16th_d_step_and_nothing_between() -> None:
    w = [3.0, -4.0]  # ½·||w||² = 12.5, so L_A = 16 · 12.5 = 200 on a regularised step
    d = Squeeze(linear_d(w))
    g = nn.Linear(3, 2)
    real, z, lam = torch.randn(5, 2), torch.randn(5, 3), 0.1
    lazy, plain = GATLoss(g, d, "r1-lazy", lam), GATLoss(g, d, "none", lam)
    plain_loss = plain.discriminator(real, z)[0]
    regs = []
    for index in range(33):
        total, loss_d, reg = lazy.discriminator(real, z, index=index)
        expected = 200.0 if index in (0, 16, 32) else 0.0
        assert torch.allclose(reg, torch.tensor(expected)), index
        assert torch.allclose(loss_d, plain_loss) and torch.allclose(total, plain_loss + lam * expected), index
        regs.append(reg.item())
    assert sum(regs[:16]) / 16 == 12.5  # on average over k steps, R1 itself

    plain_loss.backward()
    assert d.inner.weight.grad is not None
    plain_grad = d.inner.weight.grad.clone()
    d.zero_grad()
    lazy.discriminator(real, z, index=16)[0].backward()
    assert torch.allclose(d.inner.weight.grad, plain_grad + lam * 16 * torch.tensor([w]))  # ∂(16·½||w||²)/∂w
    d.zero_grad()
    lazy.discriminator(real, z, index=17)[0].backward()
    assert torch.allclose(d.inner.weight.grad, plain_grad)
