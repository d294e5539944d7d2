"""Migration 0005 rolls up the ledger rows that existed before it, as the runtime would have."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import Connection, text

from sentinel.db.engine import alembic_config, create_engine, session_factory
from sentinel.domain.usage import UsageRecord
from sentinel.governance.rollups import latency_bucket
from tests.support.accounts import record_and_roll_up

T0 = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
COLUMNS = "request_id, external_id, model, provider, endpoint, input_tokens, output_tokens, usage_source, status, " \
          "started_at, finished_at, cost_usd"


def _records() -> list[UsageRecord]:
    return [
        UsageRecord(f"r{i}", f"u{i % 3}", None, ["gpt-4o", None][i % 2], "openai", "chat", 10 + i, i, "measured",
                    502 if i % 5 == 0 else 200, T0 + timedelta(minutes=i) - timedelta(milliseconds=40 * i),
                    T0 + timedelta(minutes=i), 0.01 * i)
        for i in range(40)
    ]


async def _rollups(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            out = {}
            for table, order in (("usage_minutes", "minute"), ("usage_hours", "hour"),
                                 ("usage_hourly_users", "hour, external_id"),
                                 ("usage_hourly_models", "hour, model, provider"),
                                 ("usage_daily_users", "day, external_id"), ("usage_daily_models", "day, model, provider")):
                rows = (await conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))).all()
                out[table] = [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]
            return out
    finally:
        await engine.dispose()


async def test_upgrade_rolls_up_existing_rows_like_the_runtime(empty_db_url: str) -> None:
    records = _records()
    engine = create_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0002"))
            await conn.commit()
            for r in records:
                values = r.to_json()
                values["started_at"], values["finished_at"] = r.started_at, r.finished_at
                await conn.execute(
                    text(f"INSERT INTO usage_ledger ({COLUMNS}) VALUES "
                         f"({', '.join(':' + c.strip() for c in COLUMNS.split(','))})"),
                    {c.strip(): values[c.strip()] for c in COLUMNS.split(",")},
                )
            await conn.commit()

            def upgrade(sync: Connection) -> None:
                command.upgrade(alembic_config(sync), "head")

            await conn.run_sync(upgrade)
            await conn.commit()
    finally:
        await engine.dispose()
    backfilled = await _rollups(empty_db_url)
    assert all(backfilled.values())
    assert sum(row[1] for row in backfilled["usage_minutes"]) == 40  # `requests` follows `minute`

    # The runtime's write path over the same records, in a fresh database, gives the same rows.
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            for table in (*backfilled, "usage_ledger"):
                await conn.execute(text(f"DELETE FROM {table}"))
        await record_and_roll_up(session_factory(engine), records)
    finally:
        await engine.dispose()
    assert await _rollups(empty_db_url) == backfilled
    assert latency_bucket(40 * 39) > 0  # the histogram was exercised beyond its first bucket
