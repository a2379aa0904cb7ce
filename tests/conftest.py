"""Shared fixtures. The data directory (classifier and statistics caches) is one per test
session, so the digits (and Fashion-MNIST) classifier is trained once, not once per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from trainer.data import FILE_SETS, load_dataset

# Real Fashion-MNIST from Debian's dataset-fashion-mnist, which CI installs (.ci/run).
FASHION_MNIST = FILE_SETS["fashion-mnist"].system
needs_fashion_mnist = pytest.mark.skipif(
    FASHION_MNIST is None or not FILE_SETS["fashion-mnist"].has(FASHION_MNIST, "test"),
    reason=f"real Fashion-MNIST is not installed at {FASHION_MNIST} (apt-get install dataset-fashion-mnist)",
)
# The first test to ask for fashion_mnist_cache trains the classifier (a minute on 2 cores).
FASHION_MNIST_TIMEOUT = 900
# The tests' Fashion-MNIST classifier trains a sixth of the product's steps (ClassifierFeatures'
# default, 600: 88 % held out, bench/RESULTS.md): 83 % here, a minute less on 2 cores.
FASHION_CLASSIFIER_STEPS = 100


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("gat-tune-data")
    old = os.environ.get("GAT_TUNE_DATA_DIR")
    os.environ["GAT_TUNE_DATA_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GAT_TUNE_DATA_DIR", None)
    else:
        os.environ["GAT_TUNE_DATA_DIR"] = old


@pytest.fixture(scope="session")
def fashion_mnist_cache(data_dir: Path) -> Path:
    """Fashion-MNIST's FID classifier and real statistics in the session's data directory,
    made once per session; the worker pools' data directories get copies (``pool_env``)."""
    from trainer.metrics import ClassifierFeatures, real_stats  # torch: only when asked for

    data = load_dataset("fashion-mnist")
    real_stats(data, ClassifierFeatures(data, data_dir, train_steps=FASHION_CLASSIFIER_STEPS), data_dir)
    return data_dir


def settings_variables() -> set[str]:
    """Every environment variable service.config.Settings reads."""
    return {field.alias or "GAT_TUNE_" + name.upper() for name, field in Settings.model_fields.items()}
