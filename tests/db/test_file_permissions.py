"""The SQLite database holds key digests, emails, usage and the audit log: only its owner reads it."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from sentinel.db.engine import create_engine, migrate


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_directory_are_the_owners_alone(tmp_path: Path) -> None:
    db = tmp_path / "data" / "sentinel.db"

    async def start() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            await migrate(engine)
            async with engine.connect() as connection:  # the WAL files exist while a connection is open
                await connection.exec_driver_sql("SELECT count(*) FROM usage_ledger")
                wal = [p for p in db.parent.iterdir() if p.name.endswith(("-wal", "-shm"))]
                assert wal and all(_mode(p) & 0o077 == 0 for p in wal), [(p.name, oct(_mode(p))) for p in wal]
        finally:
            await engine.dispose()

    asyncio.run(start())
    assert _mode(db) == 0o600 and _mode(db.parent) == 0o700


def test_an_existing_database_keeps_the_permissions_its_operator_gave_it(tmp_path: Path) -> None:
    db = tmp_path / "sentinel.db"
    db.touch(mode=0o640)
    db.chmod(0o640)

    async def start() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(start())
    assert _mode(db) == 0o640
