"""Prompt-cache tokens in the usage ledger: cache writes and reads, as part of input_tokens.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_ledger") as batch:
        batch.add_column(sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    with op.batch_alter_table("usage_ledger") as batch:
        batch.drop_column("cache_read_tokens")
        batch.drop_column("cache_write_tokens")
