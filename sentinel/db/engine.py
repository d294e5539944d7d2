"""Async SQL engines, sessions and start-up migrations for SQLite and PostgreSQL.

`create_engine` tunes the engine per backend (SQLite: parent directory, WAL, busy timeout,
foreign keys; PostgreSQL: a pre-pinged asyncpg pool). `migrate` runs Alembic `upgrade head`
programmatically from the migrations shipped inside the package, serialised across processes
(a PostgreSQL advisory lock, a file lock beside a SQLite file) so every instance can call it at
start-up. `database_errors` is the one place SQLAlchemy/driver outages become Sentinel errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from sentinel.breaker import CircuitBreaker, State
from sentinel.errors import GovernanceUnavailable, ServiceUnavailable

try:  # POSIX only; elsewhere concurrent SQLite migrations are not serialised.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("sentinel.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Arbitrary but fixed: every Sentinel process migrating one PostgreSQL database takes this lock.
MIGRATION_LOCK_KEY = 0x53454E54494E454C  # "SENTINEL"
_UPGRADING = "sentinel_upgrading"  # execution option: a SQLite migration's transaction that writes
# DATABASE_TIMEOUT_SECONDS: the longest wait for a PostgreSQL connection (its connect, or a pooled
# one), and for any statement's answer; on SQLite for a lock another connection holds (busy timeout). A database that accepts connections but never answers must
# not hold a request (its in-flight slot, its reservation) for minutes: the caller gets a 503.
DEFAULT_TIMEOUT_SECONDS = 5.0

__all__ = [
    "MIGRATIONS_DIR",
    "DatabaseCircuitOpen",
    "DatabaseUnreachable",
    "SchemaTooNew",
    "alembic_config",
    "close_engine",
    "create_engine",
    "database_errors",
    "hold_server_lock",
    "migrate",
    "session_factory",
]


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for any other URL or an in-memory SQLite."""
    parsed = make_url(url)
    return _sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None


def _sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory or URI-style database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(database)


def create_engine(
    url: str | URL, *, pool_size: int = 10, max_overflow: int = 10, echo: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS, bound_statements: bool = True, breaker: CircuitBreaker | None = None,
    statement_timeout: float | None = None,
) -> AsyncEngine:
    """An AsyncEngine for `sqlite+aiosqlite://` or `postgresql+asyncpg://` URLs, tuned per backend.

    `timeout` bounds every wait on PostgreSQL: the connect (TCP and start-up), a pooled connection
    (`pool_timeout`: past it SQLAlchemy's TimeoutError, an outage for `database_errors`), the
    pre-ping of a pooled connection and each statement (asyncpg's `command_timeout`, which cancels
    the statement on the server; not with `bound_statements` False: migrations, which may rewrite
    large tables, or wait for another process's; with `statement_timeout`, that bound instead: the
    operators' usage reports, which read the whole ledger). On SQLite a write waits `timeout` for a lock held
    elsewhere (the busy timeout: the command line writing, say), then fails ("database is locked"),
    and so does a wait for a pooled connection. PostgreSQL's new connections go through `breaker`
    (one per engine unless given; see `_guard_connects`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo=echo, timeout=timeout)
    engine = create_async_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=timeout,
        connect_args={
            "timeout": timeout,
            "command_timeout": statement_timeout or (timeout if bound_statements else None),
            "server_settings": {"application_name": "sentinel"},
        },
    )
    _guard_connects(engine, breaker or CircuitBreaker(on_change=_breaker_changed))
    return engine


class DatabaseCircuitOpen(ConnectionError):
    """New connections to the database failed `threshold` times in a row: none is tried until the
    breaker's cooldown has passed (an outage for `database_errors`: 503, at once)."""


def _guard_connects(engine: AsyncEngine, breaker: CircuitBreaker) -> None:
    """Every new PostgreSQL connection goes through `breaker`: a database that is down or hung costs
    a connect timeout per caller only until it opens (3 failures in a row), then callers fail at
    once, and one connect per cooldown (2 s) probes it. A pooled connection found hung is dropped by
    its pre-ping (one timeout), and its replacement meets the breaker."""

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        if not breaker.allow():
            raise DatabaseCircuitOpen(f"the database failed to connect; next try in {breaker.retry_after():.1f} s")
        try:
            connection = dialect.connect(*cargs, **cparams)
        except Exception:
            breaker.failure()
            raise
        breaker.success()
        return connection


async def close_engine(engine: AsyncEngine, within: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Close `engine`'s pooled connections, `within` seconds in all. `dispose()` closes them one by
    one, each waiting for the server's goodbye up to the statement timeout: on a hung database 20
    pooled connections held a stopping process ~100 s (with 5 s), past any grace period. Those not
    closed in time are let go unclosed (the process is ending; its sockets close with it)."""
    try:
        await asyncio.wait_for(engine.dispose(), within)
    except TimeoutError:
        log.warning("the database did not answer while its connections were closed; the rest let go unclosed")
        await engine.dispose(close=False)


def _breaker_changed(old: State, new: State) -> None:
    if old == "closed":
        log.warning("the database cannot be reached; new connections are refused at once, one tried "
                    "every 2 s until it answers")
    elif new == "closed":
        log.info("the database answers again")


# The size a SQLite WAL is cut back to when a commit starts it afresh after a checkpoint (SQLite's
# `journal_size_limit`). A read held open (a backup, a `sqlite3` shell) stops checkpoints and the WAL
# grows by every commit meanwhile; without a limit the file kept that size for good.
WAL_SIZE_LIMIT = 16 * 1024 * 1024


def _sqlite_engine(url: URL, *, echo: bool, timeout: float) -> AsyncEngine:
    path = _sqlite_file(url)
    kwargs: dict[str, Any] = {}
    if path is None:
        # One shared connection, or every session would see its own empty database.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    else:
        _create_private(path)
        kwargs = {"pool_timeout": timeout}  # all pooled connections busy: 503, not a 30 s wait
    engine = create_async_engine(url, echo=echo, **kwargs)
    wal = path is not None

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms(timeout)}")
        if wal:
            # Readers never block the writer; persistent in the file once set.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def busy_timeout_ms(timeout: float) -> int:
    """SQLite's busy timeout for DATABASE_TIMEOUT_SECONDS `timeout` (at least 1 ms: 0 never waits)."""
    return max(1, round(timeout * 1000))


def _create_private(path: Path) -> None:
    """Create the database file (and its directory) readable by this user only, if missing: it holds
    key digests, emails, usage and the audit log. SQLite gives its `-wal` and `-shm` files the
    database file's permissions. An existing file keeps the permissions its operator gave it."""
    with _unopenable(path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
        except FileExistsError:
            pass


@contextlib.contextmanager
def _unopenable(path: Path) -> Iterator[None]:
    """DatabaseUnreachable for an OSError (other than a lock held elsewhere) creating or opening the
    SQLite file `path` or a file beside it: its directory is a file, missing or not writable."""
    try:
        yield
    except BlockingIOError:
        raise
    except OSError as exc:
        raise DatabaseUnreachable(
            f"cannot open the database (DATABASE_URL): {type(exc).__name__}: {exc.strerror or exc} ({path})"
        ) from None


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions bound to `engine`; objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for the packaged migrations (no alembic.ini needed).

    With `connection`, the migration environment runs on it instead of opening its own.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine_or_url: AsyncEngine | str, *, connect_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Bring the database to the newest schema (`alembic upgrade head`); a no-op when it already is.

    Safe to call at every start-up and from several processes at once.
    """
    if isinstance(engine_or_url, AsyncEngine) and engine_or_url.dialect.name == "sqlite" and (
        _sqlite_file(engine_or_url.url) is None
    ):
        await _migrate(engine_or_url)  # an in-memory database lives in this engine only
        return
    # Its own connection, whose statements are not bounded by DATABASE_TIMEOUT_SECONDS: a migration
    # may rewrite a large table, and a second migrator waits for the first one's lock.
    url = engine_or_url.url if isinstance(engine_or_url, AsyncEngine) else engine_or_url
    engine = create_engine(url, pool_size=1, max_overflow=0, timeout=connect_timeout, bound_statements=False)
    if engine.dialect.name == "sqlite":
        _ddl_in_the_transaction(engine)
    try:
        await _migrate(engine)
    finally:
        await engine.dispose()


def _ddl_in_the_transaction(engine: AsyncEngine) -> None:
    """Make a SQLite migration one transaction, as it is on PostgreSQL (SQLAlchemy's recipe for
    pysqlite). The driver began a transaction only before INSERT/UPDATE/DELETE, so each CREATE, ALTER
    and DROP was committed on its own: a migration cut short (SIGTERM during the first start, a
    crash) left tables without their revision, and every later start and command failed on "table
    users already exists" until the file was deleted. Now the driver begins nothing and SQLAlchemy's
    BEGIN covers the whole migration: cut short, SQLite rolls all of it back."""

    @event.listens_for(engine.sync_engine, "connect")
    def _driver_begins_nothing(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        # Deferred to read whether the database is at head (a command while `serve` writes waits for
        # no lock); immediate to upgrade it: the writer's lock first, waiting the busy timeout. A
        # deferred transaction that read first could not take it once another process had written
        # since (WAL: "database is locked" at once, no busy wait): an upgrade failed while `serve` wrote.
        writes = connection.get_execution_options().get(_UPGRADING, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached (or its SQLite file created or opened) at start-up."""


async def _migrate(engine: AsyncEngine) -> None:
    path = _sqlite_file(engine.url) if engine.dialect.name == "sqlite" else None
    # On SQLite the migrators' lock comes first, the reachability check inside it: a first connect
    # switches a new file to WAL, which another migrator's transaction under way refused at once
    # ("database is locked", no busy wait) — six concurrent migrations of a new file failed now and then.
    async with _file_lock(path):
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (DBAPIError, *_OUTAGES) as exc:
            # The driver's own error, never the URL (it may carry a password) nor a traceback.
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            raise DatabaseUnreachable(
                f"cannot reach the database (DATABASE_URL): {type(cause).__name__}: {cause}"
            ) from None
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # Held until commit: a second migrator waits here, then finds the schema at head.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            elif path is not None:  # a SQLite file (`_ddl_in_the_transaction`): read first, upgrade in its own
                if await conn.run_sync(_at_head):
                    return
                await conn.rollback()
                await conn.execution_options(**{_UPGRADING: True})
            await conn.run_sync(_upgrade_head)
            await conn.commit()


class SchemaTooNew(RuntimeError):
    """The database is at a schema revision these migrations do not know: a newer Sentinel migrated it."""


def _at_head(connection: Connection) -> bool:
    """Whether the database is at the newest revision these migrations know (nothing to upgrade)."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return set(MigrationContext.configure(connection).get_current_heads()) == set(heads)


def _upgrade_head(connection: Connection) -> None:
    config = alembic_config(connection)
    script = ScriptDirectory.from_config(config)
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = sorted(set(MigrationContext.configure(connection).get_current_heads()) - known)
    if unknown:  # Alembic's own "Can't locate revision" is a traceback that says nothing of why
        raise SchemaTooNew(
            f"the database (DATABASE_URL) is at schema revision {', '.join(unknown)}, newer than this Sentinel "
            f"knows (its newest: {', '.join(script.get_heads())}): a newer Sentinel migrated it; run that "
            "version (or a later one), or restore the database from before the upgrade"
        )
    command.upgrade(config, "head")


@contextlib.asynccontextmanager
async def _file_lock(db_path: Path | None) -> AsyncIterator[None]:
    """An exclusive lock on `<db>.migrate-lock` (POSIX); nothing for in-memory databases."""
    if db_path is None or fcntl is None:
        yield
        return
    handle = await asyncio.to_thread(_lock_file, db_path.with_name(db_path.name + ".migrate-lock"))
    try:
        yield
    finally:
        handle.close()  # closing the file releases the lock


def _lock_file(path: Path, *, wait: bool = True) -> BinaryIO:
    """Open `path` and take an exclusive flock on it: wait until this process holds it, or (`wait`
    False) raise BlockingIOError at once when another process does."""
    with _unopenable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # closed by the caller (_file_lock, or the server when it stops)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        handle.close()
        raise
    return handle


def hold_server_lock(url: str) -> BinaryIO | None:
    """Take `<db>.serve-lock` beside the SQLite file of `url`, without waiting: the open handle holds
    it (closing it, or the process ending however it ends, releases it); None for another database
    or where there is no flock. BlockingIOError when another process holds it."""
    path = sqlite_file(url)
    if path is None or fcntl is None:
        return None
    with _unopenable(path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _lock_file(path.with_name(path.name + ".serve-lock"), wait=False)


_OUTAGES = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, OSError, TimeoutError)
# PostgreSQL refusing or ending a session, not a statement: a connection exception (class 08), too
# many connections (53300: max_connections, or a role's or database's CONNECTION LIMIT) and the rest
# of insufficient resources (class 53), a server shutting down or starting (57P01-57P03). asyncpg's
# errors reach SQLAlchemy as a plain DBAPIError, so a server at max_connections was a 500 per request.
_REFUSED_STATES = frozenset({"57P01", "57P02", "57P03"})
# A transaction PostgreSQL rolled back for another's sake (a serialization failure, a deadlock): the
# same statements succeed when tried again, so the caller is asked to retry as in an outage. Raised
# as bugs they were a 500 to a client and a "crashed" usage-deliverer cycle.
_RETRY_STATES = frozenset({"40001", "40P01"})


def _refused(exc: DBAPIError) -> str | None:
    """The SQLSTATE of `exc` when it says the server refused or ended the session, else None."""
    state = getattr(exc.orig, "sqlstate", None)
    if isinstance(state, str) and (state[:2] in ("08", "53") or state in _REFUSED_STATES):
        return state
    return None


@contextlib.contextmanager
def database_errors(
    message: str = "database unavailable", error: type[ServiceUnavailable] = GovernanceUnavailable
) -> Iterator[None]:
    """Translate a database outage (connect failure, lost connection, pool timeout, PostgreSQL out of
    connections or shutting down) and a transaction to try again (`_RETRY_STATES`) into `error`.

    Other SQLAlchemy errors (constraint violations, bad SQL) are bugs and propagate unchanged.
    """
    try:
        yield
    except _OUTAGES as exc:
        raise error(f"{message}: {type(exc).__name__}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise error(f"{message}: connection lost") from exc
        state = getattr(exc.orig, "sqlstate", None)
        if state in _RETRY_STATES:
            raise error(f"{message}: the database rolled the transaction back (SQLSTATE {state})") from exc
        state = _refused(exc)
        if state is None:
            raise
        raise error(f"{message}: the database refused the connection (SQLSTATE {state})") from exc
