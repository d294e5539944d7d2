"""Plan changes whose follow-up failed are kept until a gateway finishes them: `unfinished_plan_changes`.

A plan change saved while the store (or the database, for the seed) could not take its follow-up —
its users' cached plans dropped, the counters of its new windows seeded from the ledger — is written
here, and a running gateway finishes it once both answer, then deletes the row (see
`sentinel.services.plan_finisher`). A new table: nothing existing is touched.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "unfinished_plan_changes",
        sa.Column("id", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("users", sa.Text(), nullable=False),
        sa.Column("plan_before", sa.Text(), nullable=True),
        sa.Column("plan_after", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_unfinished_plan_changes"),
    )


def downgrade() -> None:
    """Drop the table: the changes still in it are then finished only by making them again."""
    op.drop_table("unfinished_plan_changes")
