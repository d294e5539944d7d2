"""Start-up migrations: create the schema, stay idempotent, survive concurrent migrators."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from sentinel.db.engine import MIGRATIONS_DIR, alembic_config, create_engine, migrate
from sentinel.db.models import Base
from tests.db.support import SENTINEL_TABLES

EXPECTED_TABLES = {*SENTINEL_TABLES, "alembic_version"}


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def _snapshot(url: str) -> dict[str, Any]:
    """Tables, columns, indexes and the Alembic revision of the database at `url`."""

    def collect(conn: Connection) -> dict[str, Any]:
        insp = inspect(conn)
        tables = sorted(insp.get_table_names())
        return {
            "tables": tables,
            "columns": {t: [c["name"] for c in insp.get_columns(t)] for t in tables},
            "indexes": {t: sorted(i["name"] or "" for i in insp.get_indexes(t)) for t in tables},
            "versions": [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
            if "alembic_version" in tables
            else [],
        }

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(collect)
    finally:
        await engine.dispose()


async def test_migrate_creates_schema_at_head(empty_db_url: str) -> None:
    assert (await _snapshot(empty_db_url))["tables"] == []
    await migrate(empty_db_url)
    snap = await _snapshot(empty_db_url)
    assert set(snap["tables"]) == EXPECTED_TABLES
    assert snap["versions"] == [_head()]
    assert "ix_usage_ledger_external_id_finished_at" in snap["indexes"]["usage_ledger"]
    assert "ix_api_keys_key_hash" in snap["indexes"]["api_keys"]


async def test_migrate_twice_is_a_noop(empty_db_url: str) -> None:
    await migrate(empty_db_url)
    first = await _snapshot(empty_db_url)
    await migrate(empty_db_url)
    assert await _snapshot(empty_db_url) == first


async def test_models_match_migrations(empty_db_url: str) -> None:
    """The ORM models and the migrated schema agree (what autogenerate would diff is empty)."""
    await migrate(empty_db_url)
    engine = create_engine(empty_db_url)

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": False}
        )
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_downgrade_to_base_then_migrate_again(empty_db_url: str) -> None:
    await migrate(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "base"))
            await conn.commit()
    finally:
        await engine.dispose()
    assert set((await _snapshot(empty_db_url))["tables"]) == {"alembic_version"}
    await migrate(empty_db_url)
    assert set((await _snapshot(empty_db_url))["tables"]) == EXPECTED_TABLES


async def test_concurrent_migrations_in_one_process(empty_db_url: str) -> None:
    await asyncio.gather(*(migrate(empty_db_url) for _ in range(6)))
    snap = await _snapshot(empty_db_url)
    assert set(snap["tables"]) == EXPECTED_TABLES
    assert snap["versions"] == [_head()]


@pytest.mark.slow
def test_concurrent_migrations_from_several_processes(empty_db_url: str) -> None:
    """Several Sentinel processes starting at once on one empty database all succeed."""
    code = "import asyncio, sys; from sentinel.db.engine import migrate; asyncio.run(migrate(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    snap = asyncio.run(_snapshot(empty_db_url))
    assert set(snap["tables"]) == EXPECTED_TABLES
    assert snap["versions"] == [_head()]


async def test_sqlite_file_gets_its_directory_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()
    assert path.is_file()


async def test_in_memory_sqlite_is_one_shared_database() -> None:
    engine = create_engine("sqlite+aiosqlite://")
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert names == EXPECTED_TABLES
    finally:
        await engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    """An installed package can migrate: env.py and the revisions live under sentinel/db/."""
    assert MIGRATIONS_DIR.parts[-3:] == ("sentinel", "db", "migrations")
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("0001_*.py"))


class _Cut(Exception):
    """The process ending in the middle of a migration (SIGTERM during a first start, a crash)."""


async def test_a_migration_cut_short_leaves_nothing_behind(empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite each CREATE TABLE of a migration was committed on its own (the driver began a
    transaction only before INSERT/UPDATE/DELETE): cut short after its first revision, a migration
    left its tables without the revision, and every later start and command failed on "table users
    already exists". The whole migration is now one transaction there too, as on PostgreSQL."""
    import sentinel.db.engine as engine_module

    upgrade = engine_module.command.upgrade

    def cut_after_the_first_revision(config: Any, revision: str) -> None:
        upgrade(config, "0001")
        raise _Cut

    monkeypatch.setattr(engine_module.command, "upgrade", cut_after_the_first_revision)
    with pytest.raises(_Cut):
        await migrate(empty_db_url)
    assert (await _snapshot(empty_db_url))["tables"] == []  # rolled back, all of it
    monkeypatch.setattr(engine_module.command, "upgrade", upgrade)
    await migrate(empty_db_url)  # the next start
    snap = await _snapshot(empty_db_url)
    assert set(snap["tables"]) == EXPECTED_TABLES and snap["versions"] == [_head()]


async def test_a_sqlite_upgrade_while_another_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred transaction read the revision, then could not take the writer's lock for the
    upgrade once another process (`serve`, writing usage) had committed since: on WAL that is
    "database is locked" at once, with no busy wait — an upgrade failed while the server wrote.
    The upgrade's transaction now takes the writer's lock first: the other process waits instead."""
    import sqlite3

    import sentinel.db.engine as engine_module

    path = tmp_path / "sentinel.db"
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0005"))
            await conn.commit()
    finally:
        await engine.dispose()
    upgrade, wrote = engine_module.command.upgrade, []

    def another_process_writes(config: Any, revision: str) -> None:
        other = sqlite3.connect(path, timeout=0)  # (it would wait its busy timeout: here, it says so)
        try:
            other.execute("INSERT INTO plans (name) VALUES ('meanwhile')")
            other.commit()
            wrote.append(True)
        except sqlite3.OperationalError:  # the migration holds the writer's lock
            wrote.append(False)
        finally:
            other.close()
        upgrade(config, revision)

    monkeypatch.setattr(engine_module.command, "upgrade", another_process_writes)
    await migrate(url)
    assert wrote == [False]
    snap = await _snapshot(url)
    assert snap["versions"] == [_head()]

    def upgrade_at_head(config: Any, revision: str) -> None:
        raise AssertionError("a database at head is only read")

    monkeypatch.setattr(engine_module.command, "upgrade", upgrade_at_head)
    await migrate(url)
