"""Operator console: the audit log, the ledger's rollups (per minute, per day by user and by model)
and an index on the ledger's finish time.

Existing ledger rows are rolled up here once; from then on `SqlLedger.record_batch` keeps the
rollups in step in the same transaction as the rows it inserts. The latency bounds are frozen
here (a copy of `sentinel.db.models.LATENCY_BOUNDS_MS` at the time of writing), as migrations are.

Revision ID: 0005
Revises: 0002 (re-chained after 0003/0004 at merge)
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BOUNDS_MS = (5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 30000, 60000)
LAT = [f"lat_{i:02d}" for i in range(len(BOUNDS_MS) + 1)]
MEASURES = ("requests", "errors", "input_tokens", "output_tokens")


def _count(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))


def _measures() -> list[sa.Column[Any]]:
    cost = sa.Column("cost_usd", sa.Float(), nullable=False, server_default=sa.text("0"))
    return [*(_count(m) for m in MEASURES), cost]


def upgrade() -> None:
    op.create_index("ix_usage_ledger_finished_at", "usage_ledger", ["finished_at"])
    op.create_table(
        "usage_minutes",
        sa.Column("minute", sa.BigInteger(), nullable=False, autoincrement=False),
        *_measures(),
        _count("latency_ms_sum"),
        *(_count(name) for name in LAT),
        sa.PrimaryKeyConstraint("minute", name="pk_usage_minutes"),
    )
    op.create_table(
        "usage_daily_users",
        sa.Column("day", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        *_measures(),
        sa.PrimaryKeyConstraint("day", "external_id", name="pk_usage_daily_users"),
    )
    op.create_table(
        "usage_daily_models",
        sa.Column("day", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        *_measures(),
        sa.PrimaryKeyConstraint("day", "model", "provider", name="pk_usage_daily_models"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("address", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    _backfill(op.get_bind())


def _utc(value: Any) -> datetime:
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite: text
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _add(target: dict[str, float], row: Any) -> None:
    target["requests"] += 1
    target["errors"] += 1 if row.status >= 400 else 0
    target["input_tokens"] += row.input_tokens
    target["output_tokens"] += row.output_tokens
    target["cost_usd"] += row.cost_usd or 0.0


def _blank(extra: Sequence[str] = ()) -> dict[str, float]:
    return dict.fromkeys((*MEASURES, "cost_usd", *extra), 0)


def _backfill(bind: sa.Connection) -> None:
    """Roll up the rows already in the ledger (streamed, so a large ledger is not held in memory)."""
    minutes: dict[int, dict[str, float]] = {}
    users: dict[tuple[int, str], dict[str, float]] = {}
    models: dict[tuple[int, str, str], dict[str, float]] = {}
    query = sa.text(
        "SELECT external_id, model, provider, input_tokens, output_tokens, status, started_at, finished_at, cost_usd "
        "FROM usage_ledger"
    )
    # Options on the statement: Connection.execution_options() would change the connection in place.
    for row in bind.execute(query, execution_options={"stream_results": True, "yield_per": 5000}):
        finished = _utc(row.finished_at)
        seconds = int(finished.timestamp())
        ms = max(0, int((finished - _utc(row.started_at)).total_seconds() * 1000))
        minute = minutes.setdefault(seconds // 60, _blank(["latency_ms_sum", *LAT]))
        _add(minute, row)
        minute["latency_ms_sum"] += ms
        minute[LAT[sum(1 for bound in BOUNDS_MS if ms > bound)]] += 1
        day = seconds // 86400
        _add(users.setdefault((day, row.external_id), _blank()), row)
        _add(models.setdefault((day, row.model or "", row.provider or ""), _blank()), row)
    tables = (
        ("usage_minutes", ("minute",), minutes),
        ("usage_daily_users", ("day", "external_id"), users),
        ("usage_daily_models", ("day", "model", "provider"), models),
    )
    for table, keys, groups in tables:
        if not groups:
            continue
        rows: list[dict[str, Any]] = []
        for key, values in groups.items():
            parts = key if isinstance(key, tuple) else (key,)
            rows.append({**dict(zip(keys, parts, strict=True)), **values})
        columns = list(rows[0])
        statement = sa.text(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
        )
        for start in range(0, len(rows), 1000):
            bind.execute(statement, rows[start : start + 1000])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("usage_daily_models")
    op.drop_table("usage_daily_users")
    op.drop_table("usage_minutes")
    op.drop_index("ix_usage_ledger_finished_at", table_name="usage_ledger")
