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


def save_curve(history: list[dict[str, float]], path: Path, size: tuple[int, int] = (480, 320)) -> None:
    """FID (log scale, blue) and the discriminator loss (grey) against the step."""
    from PIL import ImageDraw

    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 12, 12, height - 28
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    steps = [h["step"] for h in history]
    if steps:
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)

        def x(step: float) -> float:
            return left + (step - s0) / (s1 - s0) * (right - left)

        for key, colour, log in (("loss_d", (150, 150, 150), False), ("fid", (20, 60, 200), True)):
            pts = [
                (h["step"], h[key]) for h in history if key in h and math.isfinite(h[key]) and (h[key] > 0 or not log)
            ]
            if not pts:
                continue
            vals = [math.log10(v) if log else v for _, v in pts]
            lo, hi = min(vals), max(vals)
            hi = hi if hi > lo else lo + 1
            xy = [(x(s), bottom - (v - lo) / (hi - lo) * (bottom - top)) for (s, _), v in zip(pts, vals, strict=True)]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for px, py in xy:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
            if key == "fid":
                draw.text((4, top), f"{10**hi:.3g}", fill=colour)
                draw.text((4, bottom - 10), f"{10**lo:.3g}", fill=colour)
        draw.text((left, bottom + 8), f"step {s0}", fill=(0, 0, 0))
        draw.text((right - 70, bottom + 8), f"step {max(steps)}", fill=(0, 0, 0))
        draw.text((left + 80, bottom + 8), "FID (log, blue)  loss_D (grey)", fill=(0, 0, 0))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
