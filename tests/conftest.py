"""Shared fixtures. The data directory (classifier and statistics caches) is one per test
session, so the digits classifier is trained once, not once per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings


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


def settings_variables() -> set[str]:
    """Every environment variable service.config.Settings reads."""
    return {field.alias or "GAT_TUNE_" + name.upper() for name, field in Settings.model_fields.items()}
