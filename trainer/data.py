"""Data sets, loaded whole into one tensor on the training device.

Every image set is scaled to [-1, 1] and shaped (N, C, H, W); the 2-D mixtures are (N, 2).
The registry :data:`DATASETS` maps each ``dataset`` name to its loader; the allowed names
are its keys (trainer.config reads them; PyTorch and NumPy are imported on first use).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.lazy import LazyModule

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
else:
    np = LazyModule("numpy")
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")

__all__ = [
    "DATASETS",
    "POINT_SETS",
    "DataError",
    "DataSource",
    "Dataset",
    "PointSet",
    "dataset_source",
    "default_data_dir",
    "load_dataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIXTURE_POINTS = 20_000
MIXTURE_SEED = 1234  # the data set is fixed; the run's seed only drives training


@dataclass(frozen=True)
class PointSet:
    """A 2-D mixture of Gaussians: its centres (the modes) and their common spread."""

    centres: tuple[tuple[float, float], ...]
    std: float


# The 2-D point sets, named here only. PacGAN's benchmarks: 8 modes on a ring of radius 1
# (std 0.01), a 5x5 grid (std 0.05).
POINT_SETS: dict[str, PointSet] = {
    "ring8": PointSet(tuple((math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)) for k in range(8)), 0.01),
    "grid25": PointSet(tuple((float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)), 0.05),
}


class DataError(RuntimeError):
    """A data set that cannot be loaded; the message says what to do."""


@dataclass
class Dataset:
    """One data set, resident on a device.

    Attributes:
        name: the config's ``dataset`` value.
        x: samples, (N, C, H, W) in [-1, 1] for images, (N, 2) for points.
        labels: class labels (N,) when the data set has them, for the classifier features.
        key: a content hash, so caches (classifier, real statistics) follow the data.
        modes, mode_std: the mixture's centres and spread (2-D sets only).
    """

    name: str
    x: torch.Tensor
    labels: torch.Tensor | None
    key: str
    modes: torch.Tensor | None = None
    mode_std: float | None = None

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.name,
            self.x.to(device),
            None if self.labels is None else self.labels.to(device),
            self.key,
            None if self.modes is None else self.modes.to(device),
            self.mode_std,
        )


def default_data_dir() -> Path:
    """``GAT_TUNE_DATA_DIR``, else ``.gat-tune`` in the working directory."""
    return Path(os.environ.get("GAT_TUNE_DATA_DIR") or ".gat-tune")


def load_dataset(name: str, *, image_size: int = 0, data_dir: Path | None = None) -> Dataset:
    """Load a data set on the CPU (move it with :meth:`Dataset.to`).

    Args:
        name: a key of :data:`DATASETS` (``digits``, ``ring8``, ``grid25``, ``mnist``,
            ``fashion-mnist``, ``cifar10``) or ``folder:PATH``.
        image_size: resize images to this many pixels a side; 0 keeps the native size
            (32 for a folder).
        data_dir: where downloaded data sets live (``<data_dir>/datasets``).

    Raises:
        DataError: one line saying what is missing and where to put it.
    """
    source = dataset_source(name)
    if source is None:
        raise DataError(f"dataset: unknown data set '{name}'")
    return source.load(name, data_dir or default_data_dir(), image_size)


def _images(name: str, x: torch.Tensor, labels: torch.Tensor | None, image_size: int) -> Dataset:
    """An image set, resized to ``image_size`` (0: as it is)."""
    if image_size and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True).clamp(-1, 1)
    return Dataset(name, x.contiguous(), labels, _digest(x))


def _digest(x: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_digits(name: str, data_dir: Path, image_size: int) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
    return _images(name, x, torch.tensor(digits.target, dtype=torch.long), image_size)


def _load_points(name: str, data_dir: Path, image_size: int) -> Dataset:
    point_set = POINT_SETS[name]
    centres = np.array(point_set.centres, dtype=float)
    rng = np.random.default_rng(MIXTURE_SEED)
    which = rng.integers(len(centres), size=MIXTURE_POINTS)
    points = centres[which] + point_set.std * rng.standard_normal((MIXTURE_POINTS, 2))
    x = torch.tensor(points, dtype=torch.float32)
    modes = torch.tensor(centres, dtype=torch.float32)
    return Dataset(name, x, torch.tensor(which), _digest(x), modes, point_set.std)


def _torchvision(class_name: str) -> Loader:
    def load(name: str, data_dir: Path, image_size: int) -> Dataset:
        return _images(name, *_load_torchvision(name, class_name, data_dir / "datasets"), image_size)

    return load


def _load_torchvision(name: str, class_name: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError(f"dataset '{name}' needs torchvision: pip install 'gat-tune[vision]'") from None
    cls = getattr(tvd, class_name)
    try:
        ds = cls(str(root), train=True, download=False)
    except RuntimeError:
        try:
            ds = cls(str(root), train=True, download=True)
        except Exception:  # any download failure gets the same advice
            raise DataError(
                f"dataset '{name}': not found under {root / class_name} and could not be "
                f"downloaded; put the torchvision files there (or set GAT_TUNE_DATA_DIR) and retry"
            ) from None
    data = torch.as_tensor(np.asarray(ds.data))
    x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)


def _load_folder_set(name: str, data_dir: Path, image_size: int) -> Dataset:
    return _images(name, *_load_folder(Path(name[len("folder:") :]), image_size or 32), image_size)


def _load_folder(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images under ``root``; sub-folders, when there are two or more, are the labels."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"dataset 'folder:{root}': no such directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"dataset 'folder:{root}': no .png/.jpg/.jpeg images found")
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                arrays.append(np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
        except (UnidentifiedImageError, OSError):
            raise DataError(f"dataset 'folder:{root}': cannot read image {path}") from None
    x = torch.tensor(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]):
        x = x[:, :1]  # every image is grey: keep one channel
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    labels = None
    if len(classes) >= 2 and all(len(p.relative_to(root).parts) > 1 for p in files):
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[p.relative_to(root).parts[0]] for p in files])
    return x, labels


# (name, data dir, image size) -> the data set
Loader = Callable[[str, Path, int], Dataset]


@dataclass(frozen=True)
class DataSource:
    """One ``dataset`` entry.

    Attributes:
        load: reads the data set.
        points: a 2-D point set (no images: no dcgan, no classifier or inception features).
        prefix: the key is a prefix, followed by a path (``folder:PATH``).
    """

    load: Loader
    points: bool = False
    prefix: bool = False

    def shown(self, key: str) -> str:
        return f"{key}PATH" if self.prefix else key


# The allowed dataset names are this table's keys (trainer.config reads them).
DATASETS: dict[str, DataSource] = {
    "digits": DataSource(_load_digits),
    **{name: DataSource(_load_points, points=True) for name in POINT_SETS},
    "mnist": DataSource(_torchvision("MNIST")),
    "fashion-mnist": DataSource(_torchvision("FashionMNIST")),
    "cifar10": DataSource(_torchvision("CIFAR10")),
    "folder:": DataSource(_load_folder_set, prefix=True),
}


def dataset_source(name: str) -> DataSource | None:
    """The entry for a ``dataset`` value: its key, or a prefix entry followed by a path."""
    source = DATASETS.get(name)
    if source is not None and not source.prefix:
        return source
    for key, source in DATASETS.items():
        if source.prefix and name.startswith(key) and len(name) > len(key):
            return source
    return None
