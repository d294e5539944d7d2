"""Operator console: the audit log, the ledger's rollups (per minute and per hour with latency
histograms; per hour and per day by user and by model), counts of every API answer (per minute and
per hour) and an index on the ledger's finish time.

Existing ledger rows are rolled up here once; from then on the rollup worker adds new rows (marked
`rolled_up = false` until it has) in batches. The latency bounds are frozen
here (a copy of `sentinel.db.models.LATENCY_BOUNDS_MS` at the time of writing), as migrations are.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
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


def _series(name: str, key: str) -> None:
    op.create_table(
        name,
        sa.Column(key, sa.BigInteger(), nullable=False, autoincrement=False),
        *_measures(),
        _count("latency_ms_sum"),
        *(_count(lat) for lat in LAT),
        sa.PrimaryKeyConstraint(key, name=f"pk_{name}"),
    )


def _by(name: str, key: tuple[str, Any], *names: tuple[str, int]) -> None:
    op.create_table(
        name,
        sa.Column(key[0], key[1], nullable=False, autoincrement=False),
        *(sa.Column(column, sa.String(size), nullable=False) for column, size in names),
        *_measures(),
        sa.PrimaryKeyConstraint(key[0], *(column for column, _ in names), name=f"pk_{name}"),
    )


def upgrade() -> None:
    op.create_index("ix_usage_ledger_finished_at", "usage_ledger", ["finished_at"])
    # Rows not yet rolled up, for the rollup worker (recording stays one insert).
    with op.batch_alter_table("usage_ledger") as batch:
        batch.add_column(sa.Column("rolled_up", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index(
        "ix_usage_ledger_pending_rollup", "usage_ledger", ["id"],
        postgresql_where=sa.text("NOT rolled_up"), sqlite_where=sa.text("NOT rolled_up"),
    )
    _series("usage_minutes", "minute")
    _series("usage_hours", "hour")
    _by("usage_hourly_users", ("hour", sa.BigInteger()), ("external_id", 255))
    _by("usage_hourly_models", ("hour", sa.BigInteger()), ("model", 200), ("provider", 100))
    _by("usage_daily_users", ("day", sa.Integer()), ("external_id", 255))
    op.create_index("ix_usage_daily_users_external_id_day", "usage_daily_users", ["external_id", "day"])
    _by("usage_daily_models", ("day", sa.Integer()), ("model", 200), ("provider", 100))
    for name, key in (("request_minutes", "minute"), ("request_hours", "hour")):
        op.create_table(
            name,
            sa.Column(key, sa.BigInteger(), nullable=False, autoincrement=False),
            *(_count(c) for c in ("requests", "client_errors", "rate_limited", "server_errors")),
            sa.PrimaryKeyConstraint(key, name=f"pk_{name}"),
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
    op.execute(sa.text("UPDATE usage_ledger SET rolled_up = true"))


def _utc(value: Any) -> datetime:
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite: text
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _add(target: dict[str, float], row: Any, ms: int | None = None) -> None:
    target["requests"] += 1
    target["errors"] += 1 if row.status >= 400 else 0
    target["input_tokens"] += row.input_tokens
    target["output_tokens"] += row.output_tokens
    target["cost_usd"] += row.cost_usd or 0.0
    if ms is not None:
        target["latency_ms_sum"] += ms
        target[LAT[sum(1 for bound in BOUNDS_MS if ms > bound)]] += 1


def _blank(series: bool = False) -> dict[str, float]:
    return dict.fromkeys((*MEASURES, "cost_usd", *(("latency_ms_sum", *LAT) if series else ())), 0)


def _backfill(bind: sa.Connection) -> None:
    """Roll up the rows already in the ledger (streamed, so a large ledger is not held in memory)."""
    groups: dict[str, dict[Any, dict[str, float]]] = {name: {} for name, _ in TABLES}
    query = sa.text(
        "SELECT external_id, model, provider, input_tokens, output_tokens, status, started_at, finished_at, cost_usd "
        "FROM usage_ledger"
    )
    # Options on the statement: Connection.execution_options() would change the connection in place.
    for row in bind.execute(query, execution_options={"stream_results": True, "yield_per": 5000}):
        finished = _utc(row.finished_at)
        seconds = int(finished.timestamp())
        ms = max(0, int((finished - _utc(row.started_at)).total_seconds() * 1000))
        hour, day, model = seconds // 3600, seconds // 86400, (row.model or "", row.provider or "")
        _add(groups["usage_minutes"].setdefault((seconds // 60,), _blank(True)), row, ms)
        _add(groups["usage_hours"].setdefault((hour,), _blank(True)), row, ms)
        _add(groups["usage_hourly_users"].setdefault((hour, row.external_id), _blank()), row)
        _add(groups["usage_hourly_models"].setdefault((hour, *model), _blank()), row)
        _add(groups["usage_daily_users"].setdefault((day, row.external_id), _blank()), row)
        _add(groups["usage_daily_models"].setdefault((day, *model), _blank()), row)
    for table, keys in TABLES:
        rows = [{**dict(zip(keys, key, strict=True)), **values} for key, values in groups[table].items()]
        if not rows:
            continue
        columns = list(rows[0])
        statement = sa.text(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
        )
        for start in range(0, len(rows), 1000):
            bind.execute(statement, rows[start : start + 1000])


TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("usage_minutes", ("minute",)),
    ("usage_hours", ("hour",)),
    ("usage_hourly_users", ("hour", "external_id")),
    ("usage_hourly_models", ("hour", "model", "provider")),
    ("usage_daily_users", ("day", "external_id")),
    ("usage_daily_models", ("day", "model", "provider")),
)


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("request_hours")
    op.drop_table("request_minutes")
    op.drop_index("ix_usage_daily_users_external_id_day", table_name="usage_daily_users")
    for table, _ in reversed(TABLES):
        op.drop_table(table)
    op.drop_index("ix_usage_ledger_pending_rollup", table_name="usage_ledger")
    with op.batch_alter_table("usage_ledger") as batch:
        batch.drop_column("rolled_up")
    op.drop_index("ix_usage_ledger_finished_at", table_name="usage_ledger")
