"""The version of Optuna's schema in the database (Optuna's own Alembic table)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def schema_version(conn: Connection) -> str | None:
    """Optuna's schema version as stored; sqlalchemy's ProgrammingError when Optuna's tables
    were never made."""
    version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return None if version is None else str(version)
