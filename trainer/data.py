"""Data sets, loaded whole into one tensor on the training device.

Every image set is scaled to [-1, 1] and shaped (N, C, H, W); the 2-D mixtures are (N, 2).
The registry :data:`DATASETS` maps each ``dataset`` name to its loader; the allowed names
are its keys (trainer.config reads them; PyTorch and NumPy are imported on first use).

``mnist``, ``fashion-mnist`` and ``cifar10`` are read from their standard files with numpy
alone (the IDX ``.gz`` files; CIFAR-10's python pickle batches), looked up in this order:

1. ``$GAT_TUNE_DATASETS/<name>/`` (a directory holding one sub-folder per set),
2. ``<data_dir>/datasets/<name>/``,
3. Debian's install location, for Fashion-MNIST only (``apt-get install
   dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist/``).

Each base directory is also searched for the usual other spellings of the sub-folder:
``fashion_mnist/``, torchvision's ``FashionMNIST/raw/`` and ``MNIST/raw/``, and the
``cifar-10-batches-py/`` that CIFAR-10's archive extracts to (also under ``cifar10/``).
Uncompressed IDX files are read too. Only when the files are nowhere and torchvision is
installed does torchvision get a try (it downloads into ``<data_dir>/datasets`` where the
network allows).

The training data set is the standard training split (60,000 images; 50,000 for CIFAR-10).
``split="test"`` loads the held-out split (10,000 images), which training never sees: the
benchmarks use it for the classifier's accuracy and for the real-data FID floor (held-out
images against the training set).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
import pickle
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
    "DATASETS_ENV",
    "FILE_SETS",
    "POINT_SETS",
    "DataError",
    "DataSource",
    "Dataset",
    "FileSet",
    "PointSet",
    "dataset_source",
    "default_data_dir",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIXTURE_POINTS = 20_000
MIXTURE_SEED = 1234  # the data set is fixed; the run's seed only drives training
DATASETS_ENV = "GAT_TUNE_DATASETS"
SPLITS = ("train", "test")


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


def load_dataset(name: str, *, image_size: int = 0, data_dir: Path | None = None, split: str = "train") -> Dataset:
    """Load a data set on the CPU (move it with :meth:`Dataset.to`).

    Args:
        name: a key of :data:`DATASETS` (``digits``, ``ring8``, ``grid25``, ``mnist``,
            ``fashion-mnist``, ``cifar10``) or ``folder:PATH``.
        image_size: resize images to this many pixels a side; 0 keeps the native size
            (32 for a folder).
        data_dir: where data sets are looked up (``<data_dir>/datasets``) and downloaded.
        split: ``train`` (the data set every run trains on) or ``test``, the held-out split
            of ``mnist``, ``fashion-mnist`` and ``cifar10`` (benchmarks only).

    Raises:
        DataError: one line saying what is missing and where to put it.
    """
    source = dataset_source(name)
    if source is None:
        raise DataError(f"dataset: unknown data set '{name}'")
    if split not in SPLITS:
        raise DataError(f"split: '{split}' is not one of {', '.join(SPLITS)}")
    if split != "train" and source.files is None:
        raise DataError(f"dataset '{name}' has no held-out split (only {', '.join(FILE_SETS)} have one)")
    return source.load(name, data_dir or default_data_dir(), image_size, split)


def _images(name: str, x: torch.Tensor, labels: torch.Tensor | None, image_size: int) -> Dataset:
    """An image set, resized to ``image_size`` (0: as it is)."""
    if image_size and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True).clamp(-1, 1)
    return Dataset(name, x.contiguous(), labels, _digest(x))


def _digest(x: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.detach().cpu().contiguous().numpy().data)  # the buffer itself: no 200 MB copy
    return h.hexdigest()[:16]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8), values 0-16, and labels.

    Read from the file ``load_digits`` reads (sklearn/datasets/data/digits.csv.gz: each row
    64 pixels, then the label), found without importing sklearn.datasets, whose import costs
    about 0.9 s of every slot's and every run's start-up on a 2-core CPU. Where that file is
    not there, ``load_digits`` itself."""
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None else None
    path = Path(next(iter(roots))) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def _load_digits(name: str, data_dir: Path, image_size: int, split: str) -> Dataset:
    images, labels = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
    return _images(name, x, torch.tensor(labels, dtype=torch.long), image_size)


def _load_points(name: str, data_dir: Path, image_size: int, split: str) -> Dataset:
    point_set = POINT_SETS[name]
    centres = np.array(point_set.centres, dtype=float)
    rng = np.random.default_rng(MIXTURE_SEED)
    which = rng.integers(len(centres), size=MIXTURE_POINTS)
    points = centres[which] + point_set.std * rng.standard_normal((MIXTURE_POINTS, 2))
    x = torch.tensor(points, dtype=torch.float32)
    modes = torch.tensor(centres, dtype=torch.float32)
    return Dataset(name, x, torch.tensor(which), _digest(x), modes, point_set.std)


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (``.gz`` or not) as a uint8 array: (N,) labels or (N, H, W) images.

    The format: two zero bytes, a type byte (0x08: unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32, then the data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(shape):
        raise DataError(f"{path}: {len(raw) - offset} data bytes, the header says {shape} (truncated file?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images (N, 3, 32, 32) uint8 and labels (N,).

    The format is a pickle, which can run code: it is only read from the data-set
    directories above, which the operator controls (a study names a set, never a file).
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the batches were pickled by Python 2
        data, labels = batch[b"data"], batch[b"labels"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _read_idx_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(_idx_file(folder, images)), read_idx(_idx_file(folder, labels))
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{folder}: {images} holds {x.shape}, {labels} holds {y.shape}; expected (N, H, W) and (N,)")
    return x[:, None], y.astype(np.int64)


def _idx_file(folder: Path, name: str) -> Path:
    packed = folder / name
    return packed if packed.is_file() else folder / name.removesuffix(".gz")


@dataclass(frozen=True)
class FileSet:
    """A data set read from its standard files.

    Attributes:
        files: per split, the files that make it up (IDX: the ``.gz`` name; the
            uncompressed file is accepted too).
        folders: sub-folder names it is found under in a data-sets directory, the first
            being the canonical one.
        read: (folder, split) -> uint8 images (N, C, H, W) and labels (N,).
        get: how to get the files, for the error message ({dir}: where to put them).
        system: a directory a system package installs them to, searched last.
        torchvision: the torchvision class that can download it.
    """

    files: dict[str, tuple[str, ...]]
    folders: tuple[str, ...]
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    get: str
    torchvision: str
    system: Path | None = None

    def has(self, folder: Path, split: str) -> bool:
        return all(_idx_file(folder, f).is_file() for f in self.files[split])

    def search_bases(self, data_dir: Path) -> list[Path]:
        env = os.environ.get(DATASETS_ENV)  # absolute: a message names the folder a worker looked in
        return [*([Path(env).absolute()] if env else []), data_dir.absolute() / "datasets"]

    def find(self, data_dir: Path, split: str) -> Path | None:
        candidates = [base / sub for base in self.search_bases(data_dir) for sub in self.folders]
        for folder in [*candidates, *([self.system] if self.system else [])]:
            if self.has(folder, split):
                return folder
        return None

    def missing(self, name: str, data_dir: Path, split: str) -> DataError:
        searched = [str(base / self.folders[0]) for base in self.search_bases(data_dir)]
        if self.system:
            searched.append(str(self.system))
        env = "" if os.environ.get(DATASETS_ENV) else f" ({DATASETS_ENV} unset)"
        where = data_dir.absolute() / "datasets" / self.folders[0]
        return DataError(
            f"dataset '{name}': {', '.join(self.files[split])} not found in {', '.join(searched)}{env}; "
            + self.get.format(dir=where)
        )


def _idx_reader(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    return _read_idx_pair(folder, f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")


def _cifar_reader(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    batches = [read_cifar_batch(folder / f) for f in FILE_SETS["cifar10"].files[split]]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _idx_files(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")


# The data sets read from their standard files (see the module docstring for the lookup).
FILE_SETS: dict[str, FileSet] = {
    "mnist": FileSet(
        {"train": _idx_files("train"), "test": _idx_files("t10k")},
        ("mnist", "MNIST/raw", "MNIST"),
        _idx_reader,
        "put MNIST's four IDX .gz files (yann.lecun.com/exdb/mnist or a mirror) in {dir}/, "
        f"or in mnist/ under ${DATASETS_ENV}",
        "MNIST",
    ),
    "fashion-mnist": FileSet(
        {"train": _idx_files("train"), "test": _idx_files("t10k")},
        ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
        _idx_reader,
        "install them with 'apt-get install dataset-fashion-mnist', or put the four IDX .gz files "
        "(github.com/zalandoresearch/fashion-mnist) in {dir}/",
        "FashionMNIST",
        Path("/usr/share/datasets/fashion-mnist"),
    ),
    "cifar10": FileSet(
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        ("cifar10", "cifar-10-batches-py", "cifar10/cifar-10-batches-py", "CIFAR10/cifar-10-batches-py"),
        _cifar_reader,
        "extract cifar-10-python.tar.gz (www.cs.toronto.edu/~kriz/cifar.html) and put the files of its "
        "cifar-10-batches-py/ in {dir}/",
        "CIFAR10",
    ),
}


def _load_file_set(name: str, data_dir: Path, image_size: int, split: str) -> Dataset:
    file_set = FILE_SETS[name]
    folder = file_set.find(data_dir, split)
    if folder is not None:
        images, labels = file_set.read(folder, split)
        x = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1)  # in place: one float copy
        return _images(name, x, torch.from_numpy(labels), image_size)
    try:
        import torchvision  # noqa: F401  (only to know whether it can download)
    except ImportError:
        raise file_set.missing(name, data_dir, split) from None
    # The files are nowhere, but torchvision may download them (where the network allows).
    return _images(name, *_load_torchvision(name, file_set, data_dir, split), image_size)


def _load_torchvision(name: str, file_set: FileSet, data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, file_set.torchvision)
    root, train = str(data_dir / "datasets"), split == "train"
    try:
        ds = cls(root, train=train, download=True)
    except Exception:  # any download failure gets the same advice
        raise DataError(f"{file_set.missing(name, data_dir, split)} (torchvision could not download them)") from None
    data = torch.as_tensor(np.asarray(ds.data))
    x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)


def _load_folder_set(name: str, data_dir: Path, image_size: int, split: str) -> Dataset:
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


# (name, data dir, image size, split) -> the data set
Loader = Callable[[str, Path, int, str], Dataset]


@dataclass(frozen=True)
class DataSource:
    """One ``dataset`` entry.

    Attributes:
        load: reads the data set.
        points: a 2-D point set (no images: no dcgan, no classifier or inception features).
        prefix: the key is a prefix, followed by a path (``folder:PATH``).
        files: read from standard files, with a held-out ``test`` split (:data:`FILE_SETS`).
    """

    load: Loader
    points: bool = False
    prefix: bool = False
    files: FileSet | None = None

    def shown(self, key: str) -> str:
        return f"{key}PATH" if self.prefix else key


# The allowed dataset names are this table's keys (trainer.config reads them).
DATASETS: dict[str, DataSource] = {
    "digits": DataSource(_load_digits),
    **{name: DataSource(_load_points, points=True) for name in POINT_SETS},
    **{name: DataSource(_load_file_set, files=file_set) for name, file_set in FILE_SETS.items()},
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
