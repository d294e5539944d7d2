"""API keys may expire: `api_keys.expires_at` (NULL: the key never expires, as every key before it).

A nullable column added in place on both backends (SQLite's ALTER TABLE ADD COLUMN copies nothing);
the keys issued before keep working as they did.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop the column: every key then works until it is revoked, expired ones too. On SQLite the
    table is copied (nothing references `api_keys`, so dropping the old copy cascades to nothing)."""
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
