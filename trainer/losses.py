"""The GAT loss: L = L_GAN + λ·L_A, with L_A one of the published gradient regularisers.

Pure functions compute each term (tested alone against hand-computed cases); the registry
:data:`REGULARISERS` maps each ``aux_loss`` name to its terms, and :class:`GATLoss` puts them
together into the two phases of one training step, in the manner of stylegan2-ada's
``Loss``: the trainer calls a phase, backpropagates, and steps. Adding a regulariser is one
entry; a name without one is an error.

With λ = 0 or ``aux_loss: none`` the regulariser is never built and no random numbers are
drawn for it, so the run is the plain GAN bit for bit.

Every term works on one run's tensors (logits (B,), a scalar loss) and, unchanged, on a
packed run's (trainer.packed: logits (K, B), one loss per member, (K,)): reductions are over
the trailing sample dimensions only, so a member in a pack runs exactly these functions.

PyTorch is imported on first use (trainer.lazy), so the config can read the names alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainer.lazy import LazyModule

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn

    # one stream for a run, one per member for a pack
    Streams = torch.Generator | Sequence[torch.Generator] | None
    # (g, d, real, z, rng, index of this D step in the run) -> (L_GAN of D, L_A)
    DTerm = Callable[
        [nn.Module, nn.Module, torch.Tensor, torch.Tensor, Streams, int],
        tuple[torch.Tensor, torch.Tensor],
    ]
    # (g, d, real, fake logits, L_GAN of G) -> L_A
    GTerm = Callable[[nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
else:
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")

__all__ = [
    "R1_LAZY_INTERVAL",
    "REGULARISERS",
    "GATLoss",
    "Regulariser",
    "consensus_penalty",
    "d_gan_loss",
    "g_gan_loss",
    "input_gradient",
    "r1_penalty",
    "r2_penalty",
    "uniform",
    "wgan_gp_penalty",
]


def d_gan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−E[log D(x)] − E[log(1 − D(G(z)))] on logits (softplus form, stable)."""
    return F.softplus(-real_logits).mean(-1) + F.softplus(fake_logits).mean(-1)


def g_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss −E[log D(G(z))]."""
    return F.softplus(-fake_logits).mean(-1)


def input_gradient(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∇_x D(x) per sample, flattened, kept in the graph so a penalty on it can be
    backpropagated: (B, features) for a run, (K, B, features) for a pack."""
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.flatten(logits.dim())


def r1_penalty(d: nn.Module, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """½·E_real ||∇_x D(x)||² (Mescheder et al. 2018). Returns (penalty, real logits)."""
    x = real.detach().requires_grad_(True)
    logits = d(x)
    return 0.5 * input_gradient(logits, x).square().sum(-1).mean(-1), logits


def r2_penalty(d: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """½·E_fake ||∇_x D(x)||²: R1 on generated samples. Returns (penalty, fake logits)."""
    x = fake.detach().requires_grad_(True)
    logits = d(x)
    return 0.5 * input_gradient(logits, x).square().sum(-1).mean(-1), logits


def wgan_gp_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """E_x̂ (||∇_x̂ D(x̂)||₂ − 1)², x̂ = α·real + (1 − α)·fake (Gulrajani et al. 2017).

    Args:
        alpha: one mixing weight per sample, shape (N,) (a pack: (K, N)), uniform on
            [0, 1] in training.
    """
    a = alpha.view(*alpha.shape, *([1] * (real.dim() - alpha.dim())))
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    norms = input_gradient(d(x_hat), x_hat).norm(dim=-1)
    return (norms - 1).square().mean(-1)


def consensus_penalty(
    loss_g: torch.Tensor,
    loss_d: torch.Tensor,
    g_params: Sequence[torch.Tensor],
    d_params: Sequence[torch.Tensor],
    slots: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """½·||v||², v = (∇_θ L_G, ∇_φ L_D): the joint gradient field (Mescheder et al. 2017).

    For a pack, the losses are one per member (K,) and every parameter is stacked over
    members: members share no parameter, so the gradient of the summed losses is each
    member's own, and the norm is taken per member. ``slots``: for each parameter (g's then
    d's), the members its leading dimension holds, when not all of them (a pack grouped by
    width).
    """
    members = loss_g.dim()
    v_g = torch.autograd.grad(loss_g.sum(), g_params, create_graph=True)
    v_d = torch.autograd.grad(loss_d.sum(), d_params, create_graph=True)
    squares = [v.square().flatten(members).sum(-1) for v in (*v_g, *v_d)]
    if slots is None:
        return 0.5 * torch.stack(squares).sum(0)
    total = loss_g.new_zeros(loss_g.shape)
    for square, at in zip(squares, slots, strict=True):
        total = total.index_add(0, at, square)
    return 0.5 * total


# -- the terms each registry entry is made of -----------------------------------------------
def _fake(g: nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return g(z)


def _plain_d(
    g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor, rng: Streams, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    loss_d = d_gan_loss(d(real), d(_fake(g, z)))
    return loss_d, torch.zeros_like(loss_d)


def _r1_d(
    g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor, rng: Streams, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    fake = _fake(g, z)
    reg, real_logits = r1_penalty(d, real)
    return d_gan_loss(real_logits, d(fake)), reg


R1_LAZY_INTERVAL = 16  # StyleGAN2's R1 interval (Karras et al. 2020, §3.1)


def _r1_lazy_d(
    g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor, rng: Streams, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """R1 with lazy regularisation (StyleGAN2): on the discriminator's step t,

        L_A = k · ½·E_real ||∇_x D(x)||²   when t mod k = 0,   else 0,   k = 16,

    so the penalty costs a double backward one step in k and weighs, on average over steps,
    what R1 weighs. (StyleGAN2 also scales Adam's rate and betas by k/(k+1); not done here.)
    """
    if index % R1_LAZY_INTERVAL:
        return _plain_d(g, d, real, z, rng, index)
    loss_d, reg = _r1_d(g, d, real, z, rng, index)
    return loss_d, R1_LAZY_INTERVAL * reg


def _r2_d(
    g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor, rng: Streams, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    reg, fake_logits = r2_penalty(d, _fake(g, z))
    return d_gan_loss(d(real), fake_logits), reg


def _wgan_gp_d(
    g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor, rng: Streams, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    fake = _fake(g, z)
    real_logits = d(real)
    loss_d = d_gan_loss(real_logits, d(fake))
    return loss_d, wgan_gp_penalty(d, real, fake, uniform(real_logits.shape, real.device, rng))


def uniform(shape: torch.Size, device: torch.device, rng: Streams) -> torch.Tensor:
    """U[0, 1) of this shape from a run's stream, or for a pack (K, ...) a row from each
    member's stream: a member draws what it would draw alone."""
    if rng is None or isinstance(rng, torch.Generator):
        return torch.rand(shape, device=device, generator=rng)
    return torch.stack([torch.rand(shape[1:], device=device, generator=r) for r in rng])


def _consensus(g: nn.Module, d: nn.Module, loss_d: torch.Tensor, loss_g: torch.Tensor) -> torch.Tensor:
    slots = None
    g_slots, d_slots = getattr(g, "param_slots", None), getattr(d, "param_slots", None)
    if g_slots is not None and d_slots is not None:  # a pack grouped by width (trainer.packed.GroupedMLP)
        slots = [*g_slots(), *d_slots()]
    return consensus_penalty(loss_g, loss_d, list(g.parameters()), list(d.parameters()), slots)


def _consensus_d(
    g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor, rng: Streams, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    fake_logits = d(g(z))  # the generator's graph is kept: the penalty differentiates through it
    loss_d = d_gan_loss(d(real), fake_logits)
    return loss_d, _consensus(g, d, loss_d, g_gan_loss(fake_logits))


def _consensus_g(
    g: nn.Module, d: nn.Module, real: torch.Tensor, fake_logits: torch.Tensor, loss_g: torch.Tensor
) -> torch.Tensor:
    return _consensus(g, d, d_gan_loss(d(real), fake_logits), loss_g)


@dataclass(frozen=True)
class Regulariser:
    """One ``aux_loss``: what it adds to each player's loss.

    Attributes:
        discriminator: (L_GAN of D, L_A) for the discriminator's step; None: D's plain loss.
        generator: L_A for the generator's step; None: G's plain loss.
        generator_needs_real: the generator term reads a real batch (drawn for it).
        help: one line for the docs.
    """

    discriminator: DTerm | None
    generator: GTerm | None = None
    generator_needs_real: bool = False
    help: str = ""


# The allowed aux_loss names are this table's keys (trainer.config reads them).
REGULARISERS: dict[str, Regulariser] = {
    "r1": Regulariser(_r1_d, help="λ/2·E_real ||∇_x D(x)||² on D (Mescheder et al. 2018)"),
    "r2": Regulariser(_r2_d, help="the same on generated samples"),
    "wgan-gp": Regulariser(_wgan_gp_d, help="λ·E_x̂ (||∇D(x̂)||₂ − 1)², x̂ between real and fake (Gulrajani 2017)"),
    "consensus": Regulariser(
        _consensus_d, _consensus_g, generator_needs_real=True, help="λ/2·||v||² on both players (Mescheder 2017)"
    ),
    "none": Regulariser(None, help="the plain GAN; λ is ignored"),
    "r1-lazy": Regulariser(_r1_lazy_d, help="R1 on every 16th D step, times 16 (StyleGAN2's lazy regularisation)"),
}


class GATLoss:
    """The two phases of a GAT step: discriminator (L_D + λ·L_A) and generator (L_G + λ·L_A).

    The regulariser's entry in :data:`REGULARISERS` says which players it adds a term to
    (R1, R2 and WGAN-GP the discriminator only; consensus both). Each phase returns the loss
    to backpropagate into its own player and the detached statistics to log.

    Raises:
        ValueError: ``aux_loss`` names no regulariser.
    """

    def __init__(self, g: nn.Module, d: nn.Module, aux_loss: str, lam: float | torch.Tensor) -> None:
        """``lam`` is a number for a run, one per member (K,) for a pack (trainer.packed),
        whose members are either all regularised (λ > 0) or none."""
        entry = REGULARISERS.get(aux_loss)
        if entry is None:
            raise ValueError(f"aux_loss: '{aux_loss}' is not one of {', '.join(REGULARISERS)}")
        self.g, self.d = g, d
        self.aux_loss, self.lam = aux_loss, lam
        regularised = bool((lam != 0).all()) if isinstance(lam, torch.Tensor) else lam != 0.0
        self._d_term = entry.discriminator if regularised else None
        self._g_term = entry.generator if regularised else None
        self.active = self._d_term is not None or self._g_term is not None
        self.generator_needs_real = self._g_term is not None and entry.generator_needs_real

    def discriminator(
        self, real: torch.Tensor, z: torch.Tensor, rng: Streams = None, index: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (total loss, L_GAN of D, L_A) for the discriminator's update.

        Args:
            index: this discriminator step's number in the run (0, 1, …), for a
                regulariser applied on some steps only.
        """
        if self._d_term is None:
            loss_d, zero = _plain_d(self.g, self.d, real, z, rng, index)
            return loss_d, loss_d.detach(), zero
        loss_d, reg = self._d_term(self.g, self.d, real, z, rng, index)
        return loss_d + self.lam * reg, loss_d.detach(), reg.detach()

    def generator(self, real: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (total loss, L_GAN of G) for the generator's update."""
        fake_logits = self.d(self.g(z))
        loss_g = g_gan_loss(fake_logits)
        if self._g_term is not None:
            return loss_g + self.lam * self._g_term(self.g, self.d, real, fake_logits, loss_g), loss_g.detach()
        return loss_g, loss_g.detach()
