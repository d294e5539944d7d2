"""A hot write path for SQLite: one `sqlite3` connection in its own thread, one thread hop a batch.

Through SQLAlchemy's async layer a one-row insert and its commit cost several hops to aiosqlite's
thread and most of a millisecond of Python; a usage record written while its request finishes pays
that on every request. `SqliteWriter.executemany` runs the statement and the commit in one call in
the writer's thread. Same file, same pragmas as the engine's connections (WAL, `synchronous=NORMAL`:
a commit survives the process crashing; the busy timeout makes writers wait their turn).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sentinel.db.engine import SQLITE_BUSY_TIMEOUT_MS, sqlite_file
from sentinel.errors import GovernanceUnavailable


class SqliteWriter:
    """Runs write statements on a private connection to the SQLite database file at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentinel-sqlite-writer")
        self._connection: sqlite3.Connection | None = None

    @classmethod
    def for_url(cls, url: str) -> SqliteWriter | None:
        """A writer for a file-backed SQLite URL; None for another database or an in-memory SQLite."""
        path = sqlite_file(url)
        return None if path is None else cls(path)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._connection = connection
        return self._connection

    def _run(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        connection = self._connect()
        before = connection.total_changes
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(sql, rows)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return connection.total_changes - before

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run `sql` for every row and commit, in one transaction; how many rows changed.
        GovernanceUnavailable when the database cannot be written (nothing was)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, sql, rows)
        except sqlite3.Error as exc:
            raise GovernanceUnavailable(f"database unavailable: {type(exc).__name__}") from None

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        def _close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
