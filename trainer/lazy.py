"""A module imported on its first use.

The registries (trainer.losses' regularisers, trainer.data's data sets) are where the config
reads the allowed names from; the config is imported by ``gat-tune train --help`` and by the
service's API process, which must not load PyTorch just to list names.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyModule"]


class LazyModule:
    """Stands for the module ``name``; the first attribute read imports it, and each
    attribute read is then kept, so a hot loop pays a plain attribute lookup."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)
        return value
