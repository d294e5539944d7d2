"""Helpers shared by the database test fixtures (tests/conftest.py and tests/db)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy.engine import make_url

# Parameters of a fixture that runs a test on SQLite, then on PostgreSQL.
SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SENTINEL_TABLES = (
    "users", "api_keys", "plans", "plan_limits", "usage_ledger", "usage_outbox", "tier_models",
    "usage_minutes", "usage_hours", "usage_hourly_users", "usage_hourly_models", "usage_daily_users",
    "usage_daily_models", "request_minutes", "request_hours", "audit_log", "unfinished_plan_changes",
    "applied_settings",
)


def _plain_dsn(url: str) -> str:
    """An asyncpg DSN for a SQLAlchemy `postgresql+asyncpg://` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_database(server_url: str) -> str:
    """A new empty database on the server of `server_url`; returns its SQLAlchemy URL."""
    name = f"sentinel_db_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_plain_dsn(server_url), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, url: str) -> None:
    """Drop the database of `url` (made by `create_database`), connecting through `server_url`."""
    name = make_url(url).database
    conn = await asyncpg.connect(_plain_dsn(server_url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
