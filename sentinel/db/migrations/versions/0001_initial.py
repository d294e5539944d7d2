"""Initial schema: users, api_keys, plans, plan_limits, usage_ledger, usage_outbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BIG_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False, now: bool = False) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.func.now() if now else None
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("plan_name", sa.String(100), nullable=True),
        _ts("created_at", now=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("external_id", name="uq_users_external_id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        _ts("created_at", now=True),
        _ts("revoked_at", nullable=True),
        _ts("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_api_keys_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])

    op.create_table(
        "plans",
        sa.Column("name", sa.String(100), nullable=False),
        _ts("created_at", now=True),
        _ts("updated_at", now=True),
        sa.PrimaryKeyConstraint("name", name="pk_plans"),
    )
    op.create_table(
        "plan_limits",
        sa.Column("plan_name", sa.String(100), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("limit", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("plan_name", "metric", "window_seconds", name="pk_plan_limits"),
        sa.ForeignKeyConstraint(
            ["plan_name"], ["plans.name"], name="fk_plan_limits_plan_name_plans", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "metric IN ('requests', 'input_tokens', 'output_tokens')", name="ck_plan_limits_metric"
        ),
        sa.CheckConstraint("window_seconds > 0", name="ck_plan_limits_window"),
        sa.CheckConstraint('"limit" >= 0', name="ck_plan_limits_limit"),
    )

    op.create_table(
        "usage_ledger",
        sa.Column("id", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("provider", sa.String(100), nullable=True),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("usage_source", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_usage_ledger"),
        sa.UniqueConstraint("request_id", name="uq_usage_ledger_request_id"),
        sa.CheckConstraint("usage_source IN ('measured', 'estimated')", name="ck_usage_ledger_usage_source"),
    )
    op.create_index("ix_usage_ledger_external_id_finished_at", "usage_ledger", ["external_id", "finished_at"])

    op.create_table(
        "usage_outbox",
        sa.Column("id", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        _ts("created_at", now=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _ts("next_attempt_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_usage_outbox"),
        sa.UniqueConstraint("request_id", name="uq_usage_outbox_request_id"),
    )
    op.create_index("ix_usage_outbox_next_attempt_at", "usage_outbox", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_outbox_next_attempt_at", table_name="usage_outbox")
    op.drop_table("usage_outbox")
    op.drop_index("ix_usage_ledger_external_id_finished_at", table_name="usage_ledger")
    op.drop_table("usage_ledger")
    op.drop_table("plan_limits")
    op.drop_table("plans")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_index("ix_api_keys_key_hash", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("users")
