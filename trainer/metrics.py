"""FID in layers, as pytorch-fid has it: features → Gaussian statistics → distance.

:func:`frechet_distance` is plain float64 numpy with no model in sight. Feature extractors
turn samples into vectors; real-data statistics are computed once per (data set, extractor)
and cached on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.data import Dataset

__all__ = [
    "ClassifierFeatures",
    "FeatureError",
    "FeatureExtractor",
    "InceptionFeatures",
    "RawFeatures",
    "frechet_distance",
    "gaussian_stats",
    "make_extractor",
    "mode_coverage",
    "real_stats",
]

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
CLASSIFIER_VERSION = 1  # bump when the classifier's architecture or training changes


class FeatureError(RuntimeError):
    """A feature extractor that cannot be used here; the message says why and what to do."""


def _f64(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """The Fréchet distance between two Gaussians, in float64.

    ``||μ1 − μ2||² + tr Σ1 + tr Σ2 − 2·tr (Σ1 Σ2)^½``, with ``tr (Σ1 Σ2)^½`` taken as
    ``tr (Σ1^½ Σ2 Σ1^½)^½``: both matrices under the root are symmetric positive
    semi-definite, so two symmetric eigendecompositions give it exactly, with no complex
    arithmetic and no trouble at singular covariances (where ``sqrtm`` needs an ε offset).

    Args:
        mu1, mu2: means, shape (d,); numpy arrays or tensors.
        sigma1, sigma2: covariances, shape (d, d).
    """
    m1, m2, s1, s2 = _f64(mu1), _f64(mu2), _f64(sigma1), _f64(sigma2)
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.size, m1.size):
        raise ValueError(f"frechet_distance: shapes differ: mu {m1.shape}/{m2.shape}, sigma {s1.shape}/{s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = m1 - m2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of features, one row a sample."""
    f = _f64(features)
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def mode_coverage(samples: torch.Tensor, modes: torch.Tensor, std: float) -> dict[str, float]:
    """Modes covered and the fraction of high-quality samples (within 3 std of a mode).

    A mode is covered when at least one high-quality sample lies next to it (PacGAN's
    measure for ring8/grid25).
    """
    dist = torch.cdist(samples.float(), modes.float())
    nearest, which = dist.min(1)
    good = nearest <= 3 * std
    return {"modes": int(which[good].unique().numel()), "hq_fraction": float(good.float().mean())}


class FeatureExtractor(Protocol):
    """Samples in [-1, 1] → feature vectors. ``key`` names it in cache file names."""

    key: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class RawFeatures:
    """The samples themselves, flattened: for 2-D data (and pixel-space FID)."""

    key = "raw"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float()


class _Classifier(nn.Module):
    """A small CNN: stride-2 convolutions down to ≤ 4 px, a 128-d feature layer, logits."""

    def __init__(self, in_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        c, size = in_shape[0], in_shape[-1]
        layers: list[nn.Module] = [nn.Conv2d(c, 32, 3, 1, 1), nn.ReLU()]
        ch = 32
        while size > 4:
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1), nn.ReLU()]
            ch, size = ch * 2, (size + 1) // 2
        layers += [nn.Flatten(), nn.Linear(ch * size * size, 128), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ClassifierFeatures:
    """The 128-d feature layer of a classifier trained on the data set's own labels.

    Trained once per data set (seed 0, 80 % of the data; accuracy on the other 20 %
    recorded) and cached under ``<data_dir>/features/``.
    """

    def __init__(self, data: Dataset, data_dir: Path, train_steps: int = 600) -> None:
        if data.labels is None or not data.is_image:
            raise FeatureError(
                f"feature_extractor 'classifier' needs labelled images; dataset '{data.name}' has none "
                "(use 'raw', or 'inception'; a folder gets labels from sub-folders)"
            )
        self.key = f"classifier{CLASSIFIER_VERSION}-{data.key}"
        path = data_dir / "features" / f"{self.key}.pt"
        with torch.random.fork_rng(devices=[]):  # the same classifier whatever ran before
            torch.manual_seed(0)
            self.net = _Classifier(tuple(data.x.shape[1:]), int(data.labels.max()) + 1)
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(saved["state_dict"])
            self.accuracy = float(saved["accuracy"])
        else:
            self.accuracy = self._fit(data, train_steps)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"state_dict": self.net.state_dict(), "accuracy": self.accuracy}, tmp)
            os.replace(tmp, path)  # atomic: parallel workers may train the same one
            path.with_suffix(".json").write_text(json.dumps({"accuracy": self.accuracy, "dataset": data.name}))
        self.net.eval().requires_grad_(False).to(data.x.device)

    def _fit(self, data: Dataset, steps: int) -> float:
        assert data.labels is not None
        gen = torch.Generator().manual_seed(0)
        x, y = data.x.cpu(), data.labels.cpu()
        order = torch.randperm(len(x), generator=gen)
        n_train = int(0.8 * len(x))
        tr, te = order[:n_train], order[n_train:]
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = tr[torch.randint(n_train, (128,), generator=gen)]
            loss = F.cross_entropy(self.net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = torch.cat([self.net(x[te][i : i + 1024]).argmax(1) for i in range(0, len(te), 1024)])
        return float((pred == y[te]).float().mean())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net.features(x[i : i + 2048]) for i in range(0, len(x), 2048)])


class InceptionFeatures:
    """The standard FID network (pt_inception-2015-12-05 weights) through pytorch-fid.

    The weights file is looked up in ``GAT_TUNE_INCEPTION_WEIGHTS``, then in
    ``<data_dir>/weights/``; when absent, pytorch-fid downloads it where the network allows.
    """

    key = "inception"

    def __init__(self, data_dir: Path, device: torch.device) -> None:
        try:
            from pytorch_fid.inception import InceptionV3
        except ImportError:
            raise FeatureError(
                "feature_extractor 'inception' needs pytorch-fid: pip install 'gat-tune[vision]'"
            ) from None
        hub = data_dir / "weights" / "torch-hub"
        named = os.environ.get("GAT_TUNE_INCEPTION_WEIGHTS")
        local = Path(named) if named else data_dir / "weights" / INCEPTION_WEIGHTS
        if local.exists():
            (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
            target = hub / "checkpoints" / INCEPTION_WEIGHTS
            if not target.exists():
                target.symlink_to(local.resolve())
        old_hub = torch.hub.get_dir()
        torch.hub.set_dir(str(hub))
        try:
            self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(device)
        except Exception:  # a failed download surfaces in many forms
            raise FeatureError(
                f"feature_extractor 'inception': weights {INCEPTION_WEIGHTS} not found and not downloadable; "
                f"put the file at {data_dir / 'weights' / INCEPTION_WEIGHTS} or set GAT_TUNE_INCEPTION_WEIGHTS"
            ) from None
        finally:
            torch.hub.set_dir(old_hub)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), 200):
            batch = (x[i : i + 200] + 1) / 2
            if batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
            out.append(self.net(batch)[0].flatten(1))
        return torch.cat(out)


def make_extractor(name: str, data: Dataset, data_dir: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The extractor a config names; ``auto`` is raw for points, classifier for labelled images."""
    if name == "auto":
        name = "classifier" if data.is_image and data.labels is not None else "raw"
    if name == "raw":
        return RawFeatures()
    if name == "classifier":
        return ClassifierFeatures(data, data_dir)
    if name == "inception":
        if not data.is_image:
            raise FeatureError(f"feature_extractor 'inception' needs images; dataset '{data.name}' is 2-D points")
        return InceptionFeatures(data_dir, data.x.device)
    raise FeatureError(f"feature_extractor: unknown extractor '{name}'")


def real_stats(data: Dataset, extractor: Any, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of the whole real data set under this extractor, cached on disk."""
    path = data_dir / "stats" / f"{data.key}-{extractor.key}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    mu, sigma = gaussian_stats(extractor(data.x))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma)
    os.replace(tmp, path)
    return mu, sigma
