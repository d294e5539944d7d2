"""Usage outbox rows remember their delivery batch (`batch_key`), so a retried batch keeps its key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows claimed under the old scheme keep a NULL key: they are batched afresh once their lease ends.
    with op.batch_alter_table("usage_outbox") as batch:
        batch.add_column(sa.Column("batch_key", sa.String(64), nullable=True))
        batch.create_index("ix_usage_outbox_batch_key", ["batch_key"])


def downgrade() -> None:
    with op.batch_alter_table("usage_outbox") as batch:
        batch.drop_index("ix_usage_outbox_batch_key")
        batch.drop_column("batch_key")
