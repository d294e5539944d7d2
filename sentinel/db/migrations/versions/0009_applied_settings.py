"""The settings a start applied: `applied_settings` (name, value), one row `default_plan` holding the
DEFAULT_PLAN the gateway last seeded quota windows for (`sentinel.services.startup_seed`).

A new table, empty: the first start after it seeds every window of its DEFAULT_PLAN (never lowering
a counter) and records the plan.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "applied_settings",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("name", name="pk_applied_settings"),
    )


def downgrade() -> None:
    """Drop the table: the next start after upgrading again seeds every window of its DEFAULT_PLAN."""
    op.drop_table("applied_settings")
