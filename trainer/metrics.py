"""FID in layers, as pytorch-fid has it: features → Gaussian statistics → distance; and
precision, recall, density and coverage on the same features.

:func:`frechet_distance` and :func:`prdc` are plain float64 numpy with no model in sight.
Feature extractors turn samples into vectors; each has a ``key`` that names the features
(results carry it, so numbers on different features are never compared by accident).
Real-data statistics, and the real side of PRDC, are computed once per (data set,
extractor) and cached on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import PRDC_K
from trainer.data import Dataset

__all__ = [
    "PRDC_K",
    "ClassifierFeatures",
    "FeatureError",
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomCNNFeatures",
    "RawFeatures",
    "RealNeighbours",
    "frechet_distance",
    "gaussian_stats",
    "inception_weights",
    "knn_radii",
    "make_extractor",
    "mode_coverage",
    "prdc",
    "real_neighbours",
    "real_stats",
]

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
CLASSIFIER_VERSION = 1  # bump when the classifier's architecture or training changes
# Pixels per forward pass of the small CNN extractors on a CPU (128 images at 28 px, 1,568
# at 8 px): their activations then stay in the CPU's caches, and Fashion-MNIST's features
# come about 2.5x faster than 2,048 images at a time (bench/feature_chunk.py, RESULTS.md).
# A GPU keeps the large passes (not measured there: fewer, larger kernels is the rule).
CNN_CHUNK_PIXELS = 128 * 28 * 28


def cnn_chunk(sample_shape: tuple[int, ...], device: torch.device, otherwise: int) -> int:
    """Images per forward pass for samples of this shape (C, H, W) on this device;
    ``otherwise`` off the CPU."""
    if device.type != "cpu":
        return otherwise
    return max(1, CNN_CHUNK_PIXELS // (sample_shape[-1] * sample_shape[-2]))


RANDCNN_VERSION = 1  # bump when the random network's architecture, seed or init changes
PRDC_REAL_MAX = 5000  # real samples on PRDC's real side at most


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


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of a and of b, (len(a), len(b)), in
    float32 (the features' own precision; twice as fast as float64 at these sizes) and in
    place on the one (len(a), len(b)) array: its size is what costs."""
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    d = a @ b.T
    d *= -2.0
    d += (a * a).sum(1)[:, None]
    d += (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def _sq_radii(f: np.ndarray, k: int) -> np.ndarray:
    if len(f) <= k:
        raise ValueError(f"knn_radii: {len(f)} samples, need more than k={k}")
    out = np.empty(len(f))
    for i in range(0, len(f), 1024):  # rows in blocks: 5,000 x 5,000 at once is 200 MB
        block = _sq_distances(f[i : i + 1024], f)
        out[i : i + 1024] = np.partition(block, k, axis=1)[:, k]  # index 0 is the sample itself
    return out


def knn_radii(features: Any, k: int = PRDC_K) -> np.ndarray:
    """Each sample's distance to its k-th nearest neighbour in the same set, itself excluded."""
    return np.sqrt(_sq_radii(_f64(features), k))


def prdc(real: Any, fake: Any, k: int = PRDC_K, real_radii: np.ndarray | None = None) -> dict[str, float]:
    """Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al.
    2020) of fake features against real ones, as the ``prdc`` package computes them.

    A sample's ball has the radius of its k-th nearest neighbour in its own set (itself
    excluded); "inside" is strictly inside. precision: the fraction of fakes inside some real
    ball; recall: the fraction of reals inside some fake ball; density: the number of real
    balls holding a fake, summed over fakes, over k·M; coverage: the fraction of reals whose
    nearest fake lies inside their own ball. Identical sets give 1, 1, ≈1, 1.

    Args:
        real, fake: features, one row a sample (N, d) and (M, d); numpy arrays or tensors.
        k: the neighbour that sets the radii.
        real_radii: the real features' radii when already known (knn_radii(real, k)).
    """
    r, f = _f64(real), _f64(fake)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"prdc: feature shapes differ: real {r.shape}, fake {f.shape}")
    # Squared distances against squared radii throughout: no square root of the big array.
    sq_r = _sq_radii(r, k) if real_radii is None else np.square(np.asarray(real_radii, dtype=np.float64))
    sq_r, sq_f = sq_r.astype(np.float32), _sq_radii(f, k).astype(np.float32)
    dist = _sq_distances(r, f)  # (N, M)
    in_real = dist < sq_r[:, None]  # fake j inside real ball i
    return {
        "precision": float(in_real.any(0).mean()),
        "recall": float((dist < sq_f[None, :]).any(1).mean()),
        "density": float(in_real.sum(0).mean() / k),
        "coverage": float((dist.min(1) < sq_r).mean()),
    }


class FeatureExtractor(Protocol):
    """Samples in [-1, 1] → feature vectors. ``key`` names it in cache file names."""

    key: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class RawFeatures:
    """The samples themselves, flattened: for 2-D data (and pixel-space FID)."""

    key = "raw"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float()


class RandomCNNFeatures:
    """A fixed, randomly initialised CNN: FID and PRDC features for images without labels
    when no Inception weights are configured.

    Randomly initialised networks give usable embeddings for FID/PRDC outside ImageNet's
    domain (Naeem et al. 2020, section 5). Fixed architecture: 3x3 convolutions, 32
    channels at full size, then stride 2 with the channels doubled (up to 256) until the map
    is at most 4 px, LeakyReLU(0.2) after each; 2x2 average pooling of the last map and a
    linear projection to 256 dimensions. Weights He-normal from a CPU ``torch.Generator``
    seeded 0, biases 0, drawn in a fixed order: the same numbers on every machine (for one
    torch version), so ``randcnn1`` FIDs compare across machines. Cheap: about 1 % of the
    raw-pixel FID's time at 32 px (bench/RESULTS.md).
    """

    key = f"randcnn{RANDCNN_VERSION}"
    DIM = 256

    def __init__(self, in_shape: tuple[int, ...], device: torch.device) -> None:
        self.chunk = cnn_chunk(in_shape, device, otherwise=1024)
        c, size = in_shape[0], in_shape[-1]
        layers: list[nn.Module] = [nn.Conv2d(c, 32, 3, 1, 1), nn.LeakyReLU(0.2)]
        ch = 32
        while size > 4:
            layers += [nn.Conv2d(ch, min(ch * 2, 256), 3, 2, 1), nn.LeakyReLU(0.2)]
            ch, size = min(ch * 2, 256), (size + 1) // 2
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(ch * 4, self.DIM)]
        self.net = nn.Sequential(*layers)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for module in self.net:
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                    if module.bias is not None:
                        module.bias.zero_()
        self.net.eval().requires_grad_(False).to(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(batch) for batch in x.split(self.chunk)])


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
        self.chunk = cnn_chunk(data.sample_shape, data.x.device, otherwise=2048)
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
            path.with_suffix(".json").write_text(
                json.dumps({"accuracy": self.accuracy, "dataset": data.name, "train_steps": train_steps})
            )
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
            pred = torch.cat([self.net(batch).argmax(1) for batch in x[te].split(self.chunk)])
        return float((pred == y[te]).float().mean())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net.features(batch) for batch in x.split(self.chunk)])


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
        local = inception_weights(data_dir)
        if local is not None:
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


def inception_weights(data_dir: Path) -> Path | None:
    """The Inception weights file configured here (GAT_TUNE_INCEPTION_WEIGHTS, then
    ``<data_dir>/weights/``), when it exists; never a download."""
    named = os.environ.get("GAT_TUNE_INCEPTION_WEIGHTS")
    path = Path(named) if named else data_dir / "weights" / INCEPTION_WEIGHTS
    return path if path.is_file() else None


def make_extractor(name: str, data: Dataset, data_dir: Path) -> FeatureExtractor:
    """The extractor a config names. ``auto``: raw for 2-D points; for labelled images the
    classifier; for images without labels Inception when its weights are configured here
    (never downloaded), else the fixed random CNN. Raw pixels are not a perceptual space,
    and their FID at 32 px RGB (3,072 dimensions) costs far more than the training."""
    if name == "auto":
        if not data.is_image:
            name = "raw"
        elif data.labels is not None:
            name = "classifier"
        else:
            name = "inception" if inception_weights(data_dir) else "randcnn"
    if name == "raw":
        return RawFeatures()
    if name == "classifier":
        return ClassifierFeatures(data, data_dir)
    if name not in ("inception", "randcnn"):
        raise FeatureError(f"feature_extractor: unknown extractor '{name}'")
    if not data.is_image:
        raise FeatureError(f"feature_extractor '{name}' needs images; dataset '{data.name}' is 2-D points")
    if name == "inception":
        return InceptionFeatures(data_dir, data.x.device)
    return RandomCNNFeatures(data.sample_shape, data.x.device)


def real_stats(data: Dataset, extractor: FeatureExtractor, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
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


@dataclasses.dataclass
class RealNeighbours:
    """PRDC's real side: the features of a fixed subset of the real data and their k-NN radii."""

    features: np.ndarray
    radii: np.ndarray


def real_neighbours(data: Dataset, extractor: FeatureExtractor, data_dir: Path, n: int) -> RealNeighbours:
    """The first ``min(n, PRDC_REAL_MAX, len(data))`` real samples of a fixed permutation
    (seed 0; smaller sets nest in larger ones), their features and their radii, cached on
    disk next to the real statistics."""
    n = min(n, PRDC_REAL_MAX, len(data.x))
    path = data_dir / "stats" / f"{data.key}-{extractor.key}-prdc{PRDC_K}-{n}.npz"
    if path.exists():
        with np.load(path) as f:
            return RealNeighbours(f["features"], f["radii"])
    pick = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))[:n]
    features = _f64(extractor(data.x[pick.to(data.x.device)]))
    found = RealNeighbours(features, knn_radii(features))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, features=found.features, radii=found.radii)
    os.replace(tmp, path)
    return found
