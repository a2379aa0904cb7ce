from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import TrainConfig
from trainer.data import DATASETS, POINT_SETS, DataError, load_dataset
from trainer.metrics import FeatureError, InceptionFeatures
from trainer.train import train


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


def test_vision_sets_without_torchvision_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torchvision(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("torchvision") or name.startswith("pytorch_fid"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(DataError, match=r"needs torchvision: pip install 'gat-tune\[vision\]'"):
        load_dataset("mnist")
    with pytest.raises(FeatureError, match=r"needs pytorch-fid"):
        InceptionFeatures(Path("."), torch.device("cpu"))
