"""The GAT loss: L = L_GAN + λ·L_A, with L_A one of the published gradient regularisers.

Pure functions compute each term (tested alone against hand-computed cases); :class:`GATLoss`
puts them together into the two phases of one training step, in the manner of
stylegan2-ada's ``Loss``: the trainer calls a phase, backpropagates, and steps.

With λ = 0 or ``aux_loss: none`` the regulariser is never built and no random numbers are
drawn for it, so the run is the plain GAN bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GATLoss",
    "consensus_penalty",
    "d_gan_loss",
    "g_gan_loss",
    "input_gradient",
    "r1_penalty",
    "r2_penalty",
    "wgan_gp_penalty",
]


def d_gan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−E[log D(x)] − E[log(1 − D(G(z)))] on logits (softplus form, stable)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss −E[log D(G(z))]."""
    return F.softplus(-fake_logits).mean()


def input_gradient(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∇_x D(x) per sample, kept in the graph so a penalty on it can be backpropagated."""
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.flatten(1)


def r1_penalty(d: nn.Module, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """½·E_real ||∇_x D(x)||² (Mescheder et al. 2018). Returns (penalty, real logits)."""
    x = real.detach().requires_grad_(True)
    logits = d(x)
    return 0.5 * input_gradient(logits, x).square().sum(1).mean(), logits


def r2_penalty(d: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """½·E_fake ||∇_x D(x)||²: R1 on generated samples. Returns (penalty, fake logits)."""
    x = fake.detach().requires_grad_(True)
    logits = d(x)
    return 0.5 * input_gradient(logits, x).square().sum(1).mean(), logits


def wgan_gp_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """E_x̂ (||∇_x̂ D(x̂)||₂ − 1)², x̂ = α·real + (1 − α)·fake (Gulrajani et al. 2017).

    Args:
        alpha: one mixing weight per sample, shape (N,), uniform on [0, 1] in training.
    """
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    norms = input_gradient(d(x_hat), x_hat).norm(dim=1)
    return (norms - 1).square().mean()


def consensus_penalty(
    loss_g: torch.Tensor,
    loss_d: torch.Tensor,
    g_params: Sequence[torch.Tensor],
    d_params: Sequence[torch.Tensor],
) -> torch.Tensor:
    """½·||v||², v = (∇_θ L_G, ∇_φ L_D): the joint gradient field (Mescheder et al. 2017)."""
    v_g = torch.autograd.grad(loss_g, g_params, create_graph=True)
    v_d = torch.autograd.grad(loss_d, d_params, create_graph=True)
    return 0.5 * torch.stack([v.square().sum() for v in (*v_g, *v_d)]).sum()


class GATLoss:
    """The two phases of a GAT step: discriminator (L_D + λ·L_A) and generator (L_G + λ·L_A).

    R1, R2 and WGAN-GP regularise the discriminator only; consensus adds the same penalty to
    both players. Each phase returns the loss to backpropagate into its own player and the
    detached statistics to log.
    """

    def __init__(self, g: nn.Module, d: nn.Module, aux_loss: str, lam: float) -> None:
        self.g, self.d = g, d
        self.aux_loss, self.lam = aux_loss, lam
        self.active = aux_loss != "none" and lam != 0.0

    def discriminator(
        self, real: torch.Tensor, z: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (total loss, L_GAN of D, L_A) for the discriminator's update."""
        aux = self.aux_loss if self.active else "none"
        if aux == "consensus":
            fake = self.g(z)
            fake_logits = self.d(fake)
            loss_d = d_gan_loss(self.d(real), fake_logits)
            reg = self._consensus(loss_d, g_gan_loss(fake_logits))
            return loss_d + self.lam * reg, loss_d.detach(), reg.detach()
        with torch.no_grad():
            fake = self.g(z)
        if aux == "r1":
            reg, real_logits = r1_penalty(self.d, real)
            loss_d = d_gan_loss(real_logits, self.d(fake))
        elif aux == "r2":
            reg, fake_logits = r2_penalty(self.d, fake)
            loss_d = d_gan_loss(self.d(real), fake_logits)
        else:
            loss_d = d_gan_loss(self.d(real), self.d(fake))
            if aux == "wgan-gp":
                alpha = torch.rand(real.shape[0], device=real.device, generator=rng)
                reg = wgan_gp_penalty(self.d, real, fake, alpha)
            else:
                return loss_d, loss_d.detach(), torch.zeros((), device=real.device)
        return loss_d + self.lam * reg, loss_d.detach(), reg.detach()

    def generator(self, real: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (total loss, L_GAN of G) for the generator's update."""
        fake_logits = self.d(self.g(z))
        loss_g = g_gan_loss(fake_logits)
        if self.active and self.aux_loss == "consensus":
            loss_d = d_gan_loss(self.d(real), fake_logits)
            return loss_g + self.lam * self._consensus(loss_d, loss_g), loss_g.detach()
        return loss_g, loss_g.detach()

    def _consensus(self, loss_d: torch.Tensor, loss_g: torch.Tensor) -> torch.Tensor:
        return consensus_penalty(loss_g, loss_d, list(self.g.parameters()), list(self.d.parameters()))
