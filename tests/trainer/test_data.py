from __future__ import annotations

import builtins
import dataclasses
import gzip
import pickle
import struct
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import needs_fashion_mnist
from trainer.config import TrainConfig
from trainer.data import DATASETS, DATASETS_ENV, FILE_SETS, POINT_SETS, DataError, digits_arrays, load_dataset
from trainer.metrics import FeatureError, InceptionFeatures
from trainer.train import train


def test_digits_read_from_sklearns_file_are_load_digits() -> None:
    from sklearn.datasets import load_digits

    images, labels = digits_arrays()
    digits = load_digits()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, digits.images)
    assert np.array_equal(labels, digits.target)


def test_digits_without_sklearns_file_come_from_load_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, labels = digits_arrays()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,) and set(labels.tolist()) == set(range(10))


def test_digits_scaled_to_unit_range() -> None:
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8)
    assert data.x.min() == -1 and data.x.max() == 1
    assert data.labels is not None and int(data.labels.max()) == 9


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_mixtures_match_pacgan(name: str) -> None:
    data = load_dataset(name)
    centres, std = np.array(POINT_SETS[name].centres), POINT_SETS[name].std
    assert len(centres) == (8 if name == "ring8" else 25)
    assert data.modes is not None
    nearest = torch.cdist(data.x, data.modes).min(1).values
    assert float(nearest.max()) < 6 * std
    assert float(nearest.pow(2).mean().sqrt()) == pytest.approx(std * np.sqrt(2), rel=0.05)
    if name == "ring8":
        assert np.allclose(np.linalg.norm(centres, axis=1), 1.0)
    else:
        assert sorted(set(centres[:, 0])) == [-4, -2, 0, 2, 4]


def test_point_sets_are_the_registry_entries_without_images() -> None:
    assert [k for k, source in DATASETS.items() if source.points] == list(POINT_SETS) == ["ring8", "grid25"]


def test_an_unknown_data_set_is_an_error_naming_the_registry() -> None:
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="unknown data set 'folder:'"):
        load_dataset("folder:")  # the prefix entry needs a path
    shown = "digits, ring8, grid25, mnist, fashion-mnist, cifar10, folder:PATH"
    with pytest.raises(ValueError, match=f"dataset: 'folder:' is not one of {shown}"):
        TrainConfig.from_dict({"dataset": "folder:"})


def write_images(root: Path, mode: str, classes: list[str], per_class: int = 4, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


def test_folder_grayscale_with_labels(tmp_path: Path) -> None:
    write_images(tmp_path, "L", ["cats", "dogs"])
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert data.x.shape == (8, 1, 16, 16)
    assert data.labels is not None and sorted(data.labels.tolist()) == [0] * 4 + [1] * 4


@pytest.mark.slow
def test_folder_rgb_without_labels_trains_on_random_cnn_features(tmp_path: Path) -> None:
    write_images(tmp_path, "RGB", [""], per_class=6)
    data = load_dataset(f"folder:{tmp_path}")
    assert data.x.shape == (6, 3, 32, 32) and data.labels is None
    config = TrainConfig.from_dict(
        {"dataset": f"folder:{tmp_path}", "model": "dcgan", "g_width": 16, "d_width": 16, "steps": 4,
         "eval_every": 4, "eval_samples": 8, "batch_size": 4}
    )  # fmt: skip
    result = train(config)
    assert result.fid > 0 and result.features == "randcnn1"  # not raw pixels: 3,072 dimensions
    with pytest.raises(FeatureError, match="needs labelled images"):
        train(config.replace(feature_extractor="classifier"))


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match=r"no \.png/\.jpg/\.jpeg images"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset(f"folder:{tmp_path}")


def block_imports(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    real_import = builtins.__import__

    def blocked(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith(prefixes):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)


def test_inception_without_pytorch_fid_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    block_imports(monkeypatch, "pytorch_fid")
    with pytest.raises(FeatureError, match=r"needs pytorch-fid"):
        InceptionFeatures(Path("."), torch.device("cpu"))


# -- the standard files: IDX (MNIST, Fashion-MNIST) and CIFAR-10's python batches --------------
def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    """The IDX format: 0, 0, type 0x08 (unsigned byte), the rank, big-endian uint32 sizes."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.write_bytes(gzip.compress(raw))
    else:
        path.with_suffix("").write_bytes(raw)


def write_mnist(
    folder: Path, n_train: int = 6, n_test: int = 4, *, first_label: int = 0, compress: bool = True
) -> None:
    rng = np.random.default_rng(first_label)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            compress=compress,
        )
        write_idx(
            folder / f"{prefix}-labels-idx1-ubyte.gz",
            ((np.arange(n) + first_label) % 10).astype(np.uint8),
            compress=compress,
        )


def write_cifar(folder: Path, per_batch: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = np.zeros((per_batch, 3072), dtype=np.uint8)
        data[:, :1024], data[:, 1024:2048], data[:, 2048:] = 255, 0, 10 * i  # red plane, green, blue
        batch = {b"batch_label": name.encode(), b"labels": [i] * per_batch, b"data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))  # as CIFAR's own: Python 2 bytes keys


@pytest.fixture
def no_datasets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATASETS_ENV, raising=False)


@pytest.mark.usefixtures("no_datasets_env")
def test_idx_files_load_with_both_splits(tmp_path: Path) -> None:
    write_mnist(tmp_path / "datasets" / "mnist")
    train_set = load_dataset("mnist", data_dir=tmp_path)
    assert train_set.x.shape == (6, 1, 28, 28) and train_set.x.dtype == torch.float32
    raw = np.frombuffer(
        gzip.decompress((tmp_path / "datasets/mnist/train-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8
    )
    assert torch.equal(train_set.x.flatten(), torch.tensor(raw, dtype=torch.float32) / 127.5 - 1)
    assert train_set.labels is not None and train_set.labels.tolist() == [0, 1, 2, 3, 4, 5]
    test_set = load_dataset("mnist", data_dir=tmp_path, split="test")
    assert test_set.x.shape == (4, 1, 28, 28) and test_set.key != train_set.key
    assert load_dataset("mnist", data_dir=tmp_path, image_size=32).x.shape == (6, 1, 32, 32)


@pytest.mark.usefixtures("no_datasets_env")
def test_cifar_batches_load_channels_first(tmp_path: Path) -> None:
    write_cifar(tmp_path / "datasets" / "cifar-10-batches-py")  # where the archive extracts to
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x.shape == (10, 3, 32, 32)
    assert data.labels is not None and data.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert (data.x[:, 0] == 1).all() and (data.x[:, 1] == -1).all()
    assert torch.allclose(data.x[-1, 2], torch.tensor(40 / 127.5 - 1))
    test = load_dataset("cifar10", data_dir=tmp_path, split="test")
    assert test.x.shape == (2, 3, 32, 32) and test.labels is not None and test.labels.tolist() == [5, 5]


def test_lookup_order_env_then_data_dir_then_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr-share" / "fashion-mnist"
    monkeypatch.setitem(FILE_SETS, "fashion-mnist", dataclasses.replace(FILE_SETS["fashion-mnist"], system=system))
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path / "env"))
    data_dir = tmp_path / "data"

    def first_label() -> int:
        labels = load_dataset("fashion-mnist", data_dir=data_dir).labels
        assert labels is not None
        return int(labels[0])

    write_mnist(system, first_label=3)
    assert first_label() == 3
    write_mnist(data_dir / "datasets" / "FashionMNIST" / "raw", first_label=2, compress=False)  # torchvision's
    assert first_label() == 2
    write_mnist(tmp_path / "env" / "fashion_mnist", first_label=1)
    assert first_label() == 1
    write_mnist(tmp_path / "env" / "mnist", first_label=7)  # another set's folder is never read
    assert first_label() == 1


@pytest.mark.usefixtures("no_datasets_env")
def test_missing_files_name_them_the_places_searched_and_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block_imports(monkeypatch, "torchvision")
    monkeypatch.setitem(
        FILE_SETS, "fashion-mnist", dataclasses.replace(FILE_SETS["fashion-mnist"], system=tmp_path / "nowhere")
    )
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(
        "dataset 'fashion-mnist': train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz not found in"
    )
    assert f"{tmp_path / 'datasets' / 'fashion-mnist'}, {tmp_path / 'nowhere'} ({DATASETS_ENV} unset)" in text
    assert "apt-get install dataset-fashion-mnist" in text

    monkeypatch.setenv(DATASETS_ENV, str(tmp_path / "env"))
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz not found in .*env/mnist, .*datasets/mnist;",
    ) as err:
        load_dataset("mnist", data_dir=tmp_path, split="test")
    assert "unset" not in str(err.value) and f"in {tmp_path / 'datasets' / 'mnist'}/" in str(err.value)
    with pytest.raises(DataError, match=r"data_batch_1, .*data_batch_5 not found .* extract cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.usefixtures("no_datasets_env")
def test_torchvision_is_only_a_fallback_for_absent_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, bool, bool]] = []

    class MNIST:  # torchvision.datasets.MNIST's interface, downloading only "online"
        def __init__(self, root: str, train: bool, download: bool) -> None:
            asked.append((root, train, download))
            if "offline" in root:
                raise RuntimeError("no network")
            self.data, self.targets = np.full((3, 28, 28), 255, np.uint8), [1, 2, 3]

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = MNIST  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    online = tmp_path / "online"
    data = load_dataset("mnist", data_dir=online)
    assert data.x.shape == (3, 1, 28, 28) and (data.x == 1).all()
    assert asked == [(str(online / "datasets"), True, True)]
    write_mnist(online / "datasets" / "mnist")
    assert load_dataset("mnist", data_dir=online).x.shape == (6, 1, 28, 28) and len(asked) == 1, "files first"
    pattern = r"t10k-images.* not found in .*; put MNIST's .* \(torchvision could not download them\)$"
    with pytest.raises(DataError, match=pattern):
        load_dataset("mnist", data_dir=tmp_path / "offline", split="test")
    assert asked[-1] == (str(tmp_path / "offline" / "datasets"), False, True)


@pytest.mark.usefixtures("no_datasets_env")
def test_broken_files_are_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "datasets" / "mnist"
    write_mnist(folder)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\0\0\x0d\x01" + struct.pack(">I", 6) + bytes(24))
    )
    with pytest.raises(DataError, match="not an IDX file of unsigned bytes"):
        load_dataset("mnist", data_dir=tmp_path)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 6) + bytes(5))
    )
    with pytest.raises(DataError, match=r"5 data bytes, the header says \(6,\)"):
        load_dataset("mnist", data_dir=tmp_path)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match=r"holds \(6, 28, 28\).*holds \(5,\)"):
        load_dataset("mnist", data_dir=tmp_path)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist", data_dir=tmp_path)
    write_cifar(tmp_path / "datasets" / "cifar10")
    (tmp_path / "datasets" / "cifar10" / "data_batch_3").write_bytes(pickle.dumps({b"labels": []}))
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR-10 python batch"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_only_file_sets_have_a_held_out_split() -> None:
    with pytest.raises(DataError, match="dataset 'digits' has no held-out split"):
        load_dataset("digits", split="test")
    with pytest.raises(DataError, match="split: 'valid' is not one of train, test"):
        load_dataset("digits", split="valid")
    assert [name for name, source in DATASETS.items() if source.files] == list(FILE_SETS)


@needs_fashion_mnist
@pytest.mark.usefixtures("no_datasets_env")
def test_real_fashion_mnist_from_debian(tmp_path: Path) -> None:
    started = time.perf_counter()
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    seconds = time.perf_counter() - started
    assert data.x.shape == (60_000, 1, 28, 28) and data.x.min() == -1 and data.x.max() == 1
    assert data.labels is not None and torch.bincount(data.labels).tolist() == [6000] * 10
    test = load_dataset("fashion-mnist", data_dir=tmp_path, split="test")
    assert test.x.shape == (10_000, 1, 28, 28)
    assert test.labels is not None and torch.bincount(test.labels).tolist() == [1000] * 10
    assert seconds < 30, f"loading Fashion-MNIST took {seconds:.1f}s"
