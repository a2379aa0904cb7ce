"""Generator and discriminator pairs. The discriminator returns logits, one per sample.

No normalisation layers in a discriminator: batch statistics would couple the samples that
the gradient penalties (R1, R2, WGAN-GP) treat one by one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import ConfigError, TrainConfig

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator", "build_models"]


class MLPGenerator(nn.Module):
    """noise → width → … → width → output (``depth`` hidden layers), tanh for images."""

    def __init__(self, z_dim: int, width: int, depth: int, out_shape: tuple[int, ...], bounded: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = z_dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, math.prod(out_shape)))
        if bounded:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.out_shape = out_shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    """input → width → … → width → one logit (``depth`` hidden layers, LeakyReLU)."""

    def __init__(self, in_shape: tuple[int, ...], width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.LeakyReLU(0.2)]
            fan_in = width
        layers.append(nn.Linear(fan_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def _halvings(size: int) -> int:
    """How many 2x up/down-samplings take ``size`` to a base of at least 4 px."""
    k = 0
    while size % (2 ** (k + 1)) == 0 and size // 2 ** (k + 1) >= 4:
        k += 1
    return k


class DCGANGenerator(nn.Module):
    """Linear to a small base grid, then stride-2 transposed convolutions (28/32/64 px…)."""

    def __init__(self, z_dim: int, width: int, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        channels, size = out_shape[0], out_shape[-1]
        ups = _halvings(size)
        self.base, self.c0 = size // 2**ups, width
        self.fc = nn.Sequential(nn.Linear(z_dim, width * self.base**2), nn.BatchNorm1d(width * self.base**2), nn.ReLU())
        layers: list[nn.Module] = []
        c = width
        for _ in range(ups):
            c_next = max(c // 2, 8)
            layers += [nn.ConvTranspose2d(c, c_next, 4, 2, 1), nn.BatchNorm2d(c_next), nn.ReLU()]
            c = c_next
        layers += [nn.Conv2d(c, channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], self.c0, self.base, self.base))


class DCGANDiscriminator(nn.Module):
    """Stride-2 convolutions down to the base grid, channels doubling up to ``width``."""

    def __init__(self, in_shape: tuple[int, ...], width: int) -> None:
        super().__init__()
        channels, size = in_shape[0], in_shape[-1]
        downs = _halvings(size)
        widths = [max(width // 2 ** (downs - 1 - i), 8) for i in range(downs)] or [width]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, 1, 1), nn.LeakyReLU(0.2)]
        c = widths[0]
        for w in widths:
            layers += [nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2)]
            c = w
        base = size // 2**downs
        layers += [nn.Flatten(), nn.Linear(c * base * base, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def build_models(config: TrainConfig, sample_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair the config asks for, for samples of this shape."""
    is_image = len(sample_shape) == 3
    if config.model == "mlp":
        g: nn.Module = MLPGenerator(config.z_dim, config.g_width, config.depth, sample_shape, bounded=is_image)
        d: nn.Module = MLPDiscriminator(sample_shape, config.d_width, config.depth)
        return g, d
    if not is_image:
        raise ConfigError(f"model: 'dcgan' needs images; dataset '{config.dataset}' is 2-D points, use 'mlp'")
    return DCGANGenerator(config.z_dim, config.g_width, sample_shape), DCGANDiscriminator(sample_shape, config.d_width)
