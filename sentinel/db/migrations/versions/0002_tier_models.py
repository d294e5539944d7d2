"""Tier table managed with `sentinel tiers set` (built-in governance).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tier_models",
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("relative_cost", sa.Integer(), nullable=False),
        sa.Column("input_price_per_million", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("output_price_per_million", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("tier", "position", name="pk_tier_models"),
        sa.CheckConstraint("tier IN ('simple', 'moderate', 'complex')", name="ck_tier_models_tier"),
        sa.CheckConstraint("relative_cost BETWEEN 1 AND 10", name="ck_tier_models_relative_cost"),
    )


def downgrade() -> None:
    op.drop_table("tier_models")
