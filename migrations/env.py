"""Alembic environment for gat-tune's own tables, with their own version table so that
Optuna's `alembic_version` is never touched (the Optuna/MLflow collision, optuna#2812)."""

from __future__ import annotations

from alembic import context

from service.tables import VERSION_TABLE, metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `gat-tune db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=lambda name, type_, parent: type_ != "table" or name.startswith("gt_"),
)
with context.begin_transaction():
    context.run_migrations()
