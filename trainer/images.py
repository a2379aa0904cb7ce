"""PNG pictures of samples: a grid for images, a scatter plot for 2-D points (Pillow only)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["save_samples"]


def save_samples(x: torch.Tensor, path: Path, modes: torch.Tensor | None = None) -> None:
    """Write up to 64 images as an 8x8 grid, or 2-D points as a 512 px scatter plot."""
    x = x.detach().float().cpu()
    pixels = _grid(x[:64]) if x.dim() == 4 else _scatter(x, modes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, path)


def _grid(x: torch.Tensor, pad: int = 1) -> np.ndarray:
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = max(1, 32 // h)  # tiny 8x8 digits become visible
    canvas = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    img = ((canvas.clamp(-1, 1) + 1) * 127.5).round().byte()
    img = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return (img[0] if c == 1 else img.permute(1, 2, 0)).numpy()


def _scatter(points: torch.Tensor, modes: torch.Tensor | None, size: int = 512) -> np.ndarray:
    ref = modes if modes is not None else points
    lim = float(ref.abs().max()) * 1.25 + 1e-6
    canvas = np.full((size, size, 3), 255, np.uint8)

    def to_px(p: torch.Tensor) -> np.ndarray:
        finite = p[torch.isfinite(p).all(1)]
        px = ((finite / lim + 1) / 2 * (size - 1)).round().long().numpy()
        return px[((px >= 0) & (px < size)).all(1)]

    if modes is not None:
        for mx, my in to_px(modes):
            canvas[max(size - 1 - my - 4, 0) : size - my + 4, max(mx - 4, 0) : mx + 5] = (255, 200, 200)
    for px, py in to_px(points):
        canvas[size - 1 - py, px] = (20, 60, 200)
    return canvas
