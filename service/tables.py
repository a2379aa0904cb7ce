"""The service's own tables (Optuna owns its own). Created only by migrations/."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "VERSION_TABLE",
    "gt_api_tokens",
    "gt_idempotency_keys",
    "gt_studies",
    "gt_trial_leases",
    "gt_workers",
    "metadata",
]

# Alembic's version table for our migrations; Optuna keeps `alembic_version` for its own.
VERSION_TABLE = "gat_tune_alembic_version"

metadata = sa.MetaData()

gt_studies = sa.Table(
    "gt_studies",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("optuna_study_id", sa.Integer, nullable=False, unique=True),
    sa.Column("spec", JSONB, nullable=False),
    # running → paused ⇄ running → stopped; completed when n_trials have finished
    sa.Column("status", sa.Text, nullable=False, server_default="running"),
    sa.Column("n_trials", sa.Integer, nullable=False),
    sa.Column("max_parallel", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

gt_trial_leases = sa.Table(
    "gt_trial_leases",
    metadata,
    sa.Column("optuna_trial_id", sa.Integer, primary_key=True),
    sa.Column("study_name", sa.Text, sa.ForeignKey("gt_studies.name", ondelete="CASCADE"), nullable=False),
    sa.Column("worker_id", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("ix_gt_trial_leases_study", "study_name"),
    sa.Index("ix_gt_trial_leases_expires", "expires_at"),
)

gt_workers = sa.Table(
    "gt_workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="idle"),
    sa.Column("current_trial_id", sa.Integer, nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

gt_api_tokens = sa.Table(
    "gt_api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("token_sha256", sa.Text, nullable=False, unique=True),
    sa.Column("scopes", sa.Text, nullable=False),  # space-separated: read write admin
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

gt_idempotency_keys = sa.Table(
    "gt_idempotency_keys",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("request_sha256", sa.Text, nullable=False),
    sa.Column("study_name", sa.Text, sa.ForeignKey("gt_studies.name", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
