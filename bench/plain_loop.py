"""The reference: a minimal plain PyTorch GAN loop with R1, written without the trainer.

The same networks, optimisers, data and random-number discipline as ``trainer.train``, and
nothing else: no eval hooks, no loss buffer, no checkpoints. The speed benchmark measures
``train`` against it, and a test checks that ``train`` with λ = 0 reproduces it bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.models import build_models


def plain_gan(config: TrainConfig, data: Dataset, steps: int | None = None, fused: bool = True) -> torch.nn.Module:
    """Train G and D for ``steps`` (default config.steps); R1 at config.lam when aux_loss is r1.
    ``fused``: Adam's fused update, as ``train`` makes it; False: torch's default loop."""
    device = data.x.device
    torch.manual_seed(config.seed)
    g, d = build_models(config, data.sample_shape)
    g, d = g.to(device), d.to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2), fused=fused)
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2), fused=fused)
    rng = torch.Generator(device).manual_seed(config.seed)
    r1 = config.lam if config.aux_loss == "r1" else 0.0
    n, b = len(data.x), config.batch_size
    for _ in range(config.steps if steps is None else steps):
        real = data.x[torch.randint(n, (b,), device=device, generator=rng)]
        z = torch.randn(b, config.z_dim, device=device, generator=rng)
        with torch.no_grad():
            fake = g(z)
        if r1:
            real = real.detach().requires_grad_(True)
        real_logits = d(real)
        loss_d = F.softplus(-real_logits).mean() + F.softplus(d(fake)).mean()
        if r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            loss_d = loss_d + r1 * 0.5 * grad.flatten(1).square().sum(1).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

        z = torch.randn(b, config.z_dim, device=device, generator=rng)
        loss_g = F.softplus(-d(g(z))).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return g
