"""gat-tune's tables: studies, trial leases, workers, API tokens, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "gt_studies",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("optuna_study_id", sa.Integer, nullable=False, unique=True),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.Column("max_parallel", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_table(
        "gt_trial_leases",
        sa.Column("optuna_trial_id", sa.Integer, primary_key=True),
        sa.Column("study_name", sa.Text, sa.ForeignKey("gt_studies.name", ondelete="CASCADE"), nullable=False),
        sa.Column("worker_id", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_index("ix_gt_trial_leases_study", "gt_trial_leases", ["study_name"])
    op.create_index("ix_gt_trial_leases_expires", "gt_trial_leases", ["expires_at"])
    op.create_table(
        "gt_workers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="idle"),
        sa.Column("current_trial_id", sa.Integer, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_table(
        "gt_api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("token_sha256", sa.Text, nullable=False, unique=True),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_table(
        "gt_idempotency_keys",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("request_sha256", sa.Text, nullable=False),
        sa.Column("study_name", sa.Text, sa.ForeignKey("gt_studies.name", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )


def downgrade() -> None:
    for table in ("gt_idempotency_keys", "gt_api_tokens", "gt_workers", "gt_trial_leases", "gt_studies"):
        op.drop_table(table)
