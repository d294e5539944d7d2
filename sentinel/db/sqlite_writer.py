"""A hot write path for SQLite: batches written on the event loop while the file is free.

Through SQLAlchemy's async layer a one-row insert and its commit cost several hops to aiosqlite's
thread and most of a millisecond of Python; a usage record written while its request finishes pays
that on every request. `SqliteWriter.executemany` runs the statement and the commit in one call.

Where it runs: a WAL commit with `synchronous=NORMAL` does not wait for the disk (~45 µs for one
row here), while handing it to a thread costs two thread wake-ups (~100–200 µs measured here), so a
batch of up to `INLINE_MAX_ROWS` rows is written on the event loop's own connection, which never
waits: its busy timeout is 0 and it never checkpoints. When another connection holds the write
lock, or the batch is larger, the batch goes to the writer's thread, which waits its turn (busy
timeout) without holding up the loop. Every `checkpoint_every` commits on the loop a PASSIVE
checkpoint runs in the thread, so the WAL stays bounded and the disk is touched off the loop.

`transact(work)` runs a larger background transaction (the ledger's roll-ups) in the same thread,
on the same connection, so it waits its turn like any other write and never holds up the loop.

Same file, same pragmas as the engine's connections (WAL, `synchronous=NORMAL`: a commit survives
the process crashing). A batch refused on the loop wrote nothing (its transaction was rolled back)
and is retried whole in the thread; the ledger's inserts ignore request ids already stored. A value
the database refuses (`REFUSED_VALUES`: a constraint, a value too big) is no outage: raised as it is,
nothing written, never retried in the thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sentinel.db.engine import DEFAULT_TIMEOUT_SECONDS, WAL_SIZE_LIMIT, busy_timeout_ms, sqlite_file
from sentinel.errors import GovernanceUnavailable

log = logging.getLogger("sentinel.db")

T = TypeVar("T")

# What sqlite3 raises for a row's value (a NOT NULL or CHECK constraint, a value too big), not for an
# outage: the caller may write the batch's other rows without it (`SqlLedgerSink`).
REFUSED_VALUES = (sqlite3.IntegrityError, sqlite3.DataError)

INLINE_MAX_ROWS = 64  # larger batches are written in the thread (the loop is not held for long)
CHECKPOINT_EVERY = 256  # commits on the loop between two checkpoints in the thread


class SqliteWriter:
    """Runs write statements on private connections to the SQLite database file at `path`."""

    def __init__(
        self, path: Path, *, checkpoint_every: int = CHECKPOINT_EVERY, busy_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wal_size_limit: int = WAL_SIZE_LIMIT,
    ) -> None:
        self.path = path
        self.wal_size_limit = wal_size_limit  # what a WAL grown past it is cut back to (`WAL_SIZE_LIMIT`)
        self.busy_timeout = busy_timeout  # the thread's wait for a lock held elsewhere (DATABASE_TIMEOUT_SECONDS)
        self.checkpoint_every = checkpoint_every
        self.inline_commits = 0  # batches committed on the event loop
        self.thread_commits = 0  # batches committed in the writer's thread
        self.checkpoints = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentinel-sqlite-writer")
        self._connection: sqlite3.Connection | None = None  # the thread's
        self._inline: sqlite3.Connection | None = None  # the event loop's
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Future[None] | None = None

    @classmethod
    def for_url(cls, url: str, *, busy_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> SqliteWriter | None:
        """A writer for a file-backed SQLite URL; None for another database or an in-memory SQLite."""
        path = sqlite_file(url)
        return None if path is None else cls(path, busy_timeout=busy_timeout)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.path, timeout=busy_timeout_ms(self.busy_timeout) / 1000, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA journal_size_limit={int(self.wal_size_limit)}")
            self._connection = connection
        return self._connection

    def _connect_inline(self) -> sqlite3.Connection:
        if self._inline is None:
            connection = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            try:
                if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    raise sqlite3.OperationalError("not in WAL mode yet")  # the thread's connection sets it
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in the thread
                # This connection makes most commits, so it is most often the one to start the WAL
                # afresh after a checkpoint: it cuts a WAL grown past the limit back then.
                connection.execute(f"PRAGMA journal_size_limit={int(self.wal_size_limit)}")
            except BaseException:
                connection.close()
                raise
            self._inline = connection
        return self._inline

    @staticmethod
    def _transaction(connection: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        before = connection.total_changes
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(sql, rows)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return connection.total_changes - before

    def _run(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._transaction(self._connect(), sql, rows)

    async def transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in one write transaction in the writer's thread (for background
        batches too large for the loop): committed when it returns, rolled back when it raises.
        GovernanceUnavailable when the database cannot be written (nothing was)."""

        def run() -> T:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except sqlite3.Error as exc:
            raise GovernanceUnavailable(f"database unavailable: {type(exc).__name__}") from None
        self.thread_commits += 1
        return result

    def _try_inline(self, sql: str, rows: Sequence[Sequence[Any]]) -> int | None:
        """The batch committed on the loop's connection, or None when it has to go to the thread."""
        try:
            return self._transaction(self._connect_inline(), sql, rows)
        except REFUSED_VALUES:
            raise
        except sqlite3.Error as exc:
            log.debug("sqlite write handed to the writer thread: %s", exc)
            return None

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run `sql` for every row and commit, in one transaction; how many rows changed.
        GovernanceUnavailable when the database cannot be written (nothing was); one of
        REFUSED_VALUES, as it is, when it refused a row's value (nothing was written either)."""
        if len(rows) <= INLINE_MAX_ROWS:
            changed = self._try_inline(sql, rows)
            if changed is not None:
                self.inline_commits += 1
                self._after_inline_commit()
                return changed
        try:
            changed = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, sql, rows)
        except REFUSED_VALUES:
            raise
        except sqlite3.Error as exc:
            raise GovernanceUnavailable(f"database unavailable: {type(exc).__name__}") from None
        self.thread_commits += 1
        return changed

    def _after_inline_commit(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint < self.checkpoint_every or (self._checkpoint and not self._checkpoint.done()):
            return
        self._since_checkpoint = 0
        self._checkpoint = asyncio.get_running_loop().run_in_executor(self._executor, self._run_checkpoint)

    def _run_checkpoint(self) -> None:
        try:
            self._connect().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one retries; a WAL that waits is not an error
            log.debug("sqlite checkpoint skipped: %s", exc)
            return
        self.checkpoints += 1

    async def drain(self) -> None:
        """Wait for the checkpoint in progress, if any."""
        if self._checkpoint is not None:
            await self._checkpoint

    async def close(self) -> None:
        """Close the connections and stop the thread."""
        await self.drain()
        if self._inline is not None:
            self._inline.close()
            self._inline = None

        def _close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
