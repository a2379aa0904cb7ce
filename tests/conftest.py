"""Shared fixtures. The data directory (classifier and statistics caches) is one per test
session, so the digits classifier is trained once, not once per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


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
