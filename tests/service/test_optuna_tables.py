"""Every statement on Optuna's tables lives in service/optuna_tables/ (issue 12): no other
module of the service names one of those tables in SQL, so an Optuna schema change is
met in one package and no SQL text crosses a module boundary to reach them."""

from __future__ import annotations

import re
from pathlib import Path

import service
from service import optuna_tables

SERVICE = Path(service.__file__).parent
PACKAGE = Path(optuna_tables.__file__).parent

# An SQL keyword followed by one of Optuna's tables (its own Alembic table included).
OPTUNA_TABLE = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+(?:trials|trial_\w+|studies|study_\w+|version_info|alembic_version)\b"
)


def test_no_module_outside_optuna_tables_writes_sql_on_optunas_tables() -> None:
    offenders = [
        f"{path.relative_to(SERVICE)}:{text[: m.start()].count(chr(10)) + 1}: {m.group()}"
        for path in SERVICE.rglob("*.py")
        if PACKAGE not in path.parents
        for text in [path.read_text()]
        for m in OPTUNA_TABLE.finditer(text)
    ]
    assert offenders == []


def test_the_pattern_finds_what_it_looks_for() -> None:
    """The check above would see a statement of the kind that used to sit elsewhere."""
    assert OPTUNA_TABLE.search("SELECT 1 FROM trials t JOIN trial_values v ON true")
    assert OPTUNA_TABLE.search("INSERT INTO trial_params (trial_id) VALUES (1)")
    assert not OPTUNA_TABLE.search("SELECT * FROM gt_studies WHERE status = 'running'")
