"""gt_json(text): a stored JSON text as json, for the read routes that render JSON in SQL.

Optuna stores attributes with Python's json.dumps, which writes NaN and Infinity: not JSON,
so a plain ::json cast of one fails the whole page. gt_json maps those tokens to null (as
the pages already show non-finite values), and anything still not JSON to its text.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE FUNCTION gt_json(value text) RETURNS json LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN value::json;
EXCEPTION WHEN invalid_text_representation THEN
  BEGIN
    RETURN regexp_replace(value, '-?\mInfinity\M|\mNaN\M', 'null', 'g')::json;
  EXCEPTION WHEN invalid_text_representation THEN
    RETURN to_json(value);
  END;
END $$
"""
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION gt_json(text)")
