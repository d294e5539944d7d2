"""Statements shared by the SQL repositories: dialect-neutral insert-or-ignore, upsert-adding,
get-or-create user."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import CTE, BigInteger, Select, case, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.functions import FunctionElement

from sentinel.db.models import Base, User, utcnow
from sentinel.domain.numbers import MAX_INT64


class added_up(FunctionElement[Any]):  # noqa: N801 - an SQL function, named as one
    """`SUM(x)` that never fails for its size: SQLite's `sum()` of integers raises "integer overflow"
    past 2^63 - 1 (roll-up rows that each stop at it, `_added`, summed over days; a user's ledger
    rows over all time), so there it is `total()` (a float: exact up to 2^53, far beyond any real
    sum); PostgreSQL sums BIGINT as NUMERIC already. Read it back with `summed`."""

    inherit_cache = True
    name = "added_up"


def summed(value: Any) -> int:
    """An `added_up` sum as read back (a float on SQLite, a Decimal on PostgreSQL): an int, at most
    MAX_INT64, where a roll-up's sum stops too (`_added`). Rows that each hold it, added up, passed
    2^64: no JSON answer carries such a number (orjson refuses it), and the report was a 500."""
    return min(int(value), MAX_INT64)


@compiles(added_up)
def _added_up(element: added_up, compiler: Any, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(added_up, "sqlite")
def _added_up_sqlite(element: added_up, compiler: Any, **kw: Any) -> str:
    return f"total({compiler.process(element.clauses, **kw)})"


def insert_ignoring(session: AsyncSession, model: type[Base], conflict_columns: Sequence[str]) -> Insert:
    """`INSERT ... ON CONFLICT (conflict_columns) DO NOTHING` for the session's dialect.

    Add `.values(...)` (one dict or a list) and optionally `.returning(...)` to learn which rows
    were new.
    """
    dialect = session.get_bind().dialect.name
    table: Any = model.__table__
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict_columns))
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict_columns))
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


@functools.cache
def _upsert_statement(dialect: str, model: type[Base], keys: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    """One immutable statement per (dialect, table, keys, columns), built once: SQLAlchemy's compiled
    cache then serves every later batch (building the expression dominated small batches' cost)."""
    table: Any = model.__table__
    if dialect == "postgresql":
        insert: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        insert = sqlite.insert(table)
    else:
        raise NotImplementedError(f"unsupported database dialect {dialect!r}")
    excluded = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=list(keys), set_={name: _added(table.c[name], excluded[name]) for name in columns}
    )


def _added(column: Any, new: Any) -> Any:
    """`column + new`; for a BIGINT column, at most MAX_INT64 (`new` is never negative). Provider
    counts are believed up to MAX_TOKENS each, so 9.2 million of them overflowed a day's sum: on
    PostgreSQL the statement failed (the roll-up retried for ever, no row rolled up again), on SQLite
    the sum became an inexact REAL. The test never overflows: `MAX_INT64 - new` fits."""
    if not isinstance(column.type, BigInteger):
        return column + new
    largest = literal_column(str(MAX_INT64), BigInteger)  # inline: no placeholder of its own
    return case((column > largest - new, largest), else_=column + new)


@functools.cache
def sqlite_upsert_adding(model: type[Base], keys: tuple[str, ...], columns: tuple[str, ...]) -> tuple[str, list[str]]:
    """`upsert_adding`'s statement for a raw sqlite3 connection (`SqliteWriter`): its SQL with `?`
    placeholders, and the row keys whose values fill them, in order."""
    compiled = _upsert_statement("sqlite", model, keys, columns).compile(dialect=sqlite.dialect())
    return str(compiled), list(compiled.positiontup or ())


async def upsert_adding(
    session: AsyncSession,
    model: type[Base],
    keys: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
) -> None:
    """Insert `rows`; where a row with the same `keys` exists, add the new values of `columns` to it.

    Keys must be unique within `rows` (PostgreSQL refuses to update one row twice in a statement).
    Does not commit.
    """
    if rows:
        dialect = session.get_bind().dialect.name
        await session.execute(_upsert_statement(dialect, model, tuple(keys), tuple(columns)), list(rows))


async def ensure_user(session: AsyncSession, external_id: str, email: str | None = None) -> str:
    """The id of the user with `external_id`, creating the row if missing (race-free).

    A non-empty `email` different from the stored one replaces it. Does not commit.
    """
    if not external_id:
        raise ValueError("external_id must not be empty")
    found = (
        await session.execute(select(User.id, User.email).where(User.external_id == external_id))
    ).one_or_none()
    if found is None:
        # Another process may create the same user between our SELECT and INSERT: ignore and re-read.
        await session.execute(
            insert_ignoring(session, User, ["external_id"]).values(
                id=str(uuid.uuid4()), external_id=external_id, email=email, created_at=utcnow()
            )
        )
        found = (
            await session.execute(select(User.id, User.email).where(User.external_id == external_id))
        ).one()
    user_id, stored_email = found
    if email and email != stored_email:
        await session.execute(update(User).where(User.id == user_id).values(email=email))
    return str(user_id)


async def ensure_user_email(session: AsyncSession, external_id: str, email: str | None) -> tuple[str, str | None]:
    """`ensure_user`, its row held first (on PostgreSQL locked, on SQLite the write lock taken): the
    user's id and the email stored before `email` (non-empty) replaced it, read under that hold, so
    concurrent changes of one user's email each see the one before (their audit entries chain).
    Does not commit."""
    user_id = await ensure_user(session, external_id)
    await session.execute(update(User).where(User.id == user_id).values(email=User.email))
    before: str | None = await session.scalar(select(User.email).where(User.id == user_id))
    if email and email != before:
        await session.execute(update(User).where(User.id == user_id).values(email=email))
    return user_id, before


def picked_once(session: AsyncSession, query: Select[Any], name: str, *, skip_locked: bool) -> CTE:
    """`query` as a CTE evaluated once, for an `UPDATE ... WHERE id IN (picked) RETURNING` claim. On
    PostgreSQL its rows are locked (FOR UPDATE, in the query's order) and it is MATERIALIZED: as a
    plain subquery the planner may run it again for each row the UPDATE touches, each run locking
    and returning further rows past the LIMIT. On SQLite the UPDATE itself takes the write lock."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=skip_locked).cte(name).prefix_with("MATERIALIZED")
    return query.cte(name)
