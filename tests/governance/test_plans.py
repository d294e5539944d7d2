"""Plans: window/limit parsing, and the plan repository on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import await_only

from sentinel.domain.plans import (
    MAX_WINDOW_SECONDS,
    Limit,
    Plan,
    format_window,
    parse_limit,
    parse_limits,
    parse_plan_spec,
    parse_window,
)
from sentinel.errors import NotFound
from sentinel.governance.plans import PlanExists, PlanRepository


@pytest.mark.parametrize(
    ("text_", "seconds"),
    [("90s", 90), ("1m", 60), ("1h", 3600), ("1d", 86400), ("30d", 2_592_000), ("2w", 1_209_600), ("45", 45)],
)
def test_parse_window(text_: str, seconds: int) -> None:
    assert parse_window(text_) == seconds
    assert parse_window(format_window(seconds)) == seconds


@pytest.mark.parametrize("junk", ["", "m", "1x", "-1m", "0s", "0", "1.5h", "1 h", "1H", "h1", "1mm", "1d2h"])
def test_parse_window_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_window(junk)


@pytest.mark.parametrize("junk", ["\u00b2", "\u00b2h", "\u0661h", "\uff11h", "1\u00b2s"])
def test_parse_window_takes_ascii_digits_only(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_window(junk)


def test_a_window_is_at_most_366_days() -> None:
    assert MAX_WINDOW_SECONDS == 366 * 86400
    assert parse_window("366d") == MAX_WINDOW_SECONDS and parse_window("52w") == 52 * 604800
    for too_long in ("367d", "53w", "31622401", "99999999999999d"):
        with pytest.raises(ValueError, match="at most 366d"):
            parse_window(too_long)
    with pytest.raises(ValueError):
        parse_window("9" * 5000)  # past int()'s digit limit: still a ValueError
    with pytest.raises(ValueError, match="at most 366d"):
        parse_limit("requests=1/367d")
    with pytest.raises(ValueError, match="at most 366d"):
        parse_plan_spec("requests=100/60s,output_tokens=5/99999999999999d")


def test_format_window_picks_the_largest_unit() -> None:
    assert [format_window(s) for s in (90, 60, 3600, 86400, 604800, 2_592_000)] == [
        "90s",
        "1m",
        "1h",
        "1d",
        "1w",
        "30d",
    ]


def test_parse_limit() -> None:
    assert parse_limit("requests=100/1m") == Limit("requests", 60, 100)
    assert parse_limit(" input_tokens = 50000 / 1d ") == Limit("input_tokens", 86400, 50000)
    assert str(Limit("output_tokens", 3600, 7)) == "output_tokens=7/1h"
    assert parse_limits("requests=100/60s, output_tokens=1000/1h,") == [
        Limit("requests", 60, 100),
        Limit("output_tokens", 3600, 1000),
    ]


@pytest.mark.parametrize(
    "junk", ["requests=100", "requests/1m", "tokens=5/1m", "requests=-1/1m", "requests=1/0s", "requests=\u00b2/1m",
             "requests=\u0661/1m"]
)
def test_parse_limit_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_limit(junk)


def test_plan_limit_validates() -> None:
    with pytest.raises(ValueError):
        Limit("tokens", 60, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Limit("requests", 0, 1)
    with pytest.raises(ValueError):
        Limit("requests", 60, -1)


@pytest.fixture
def plans(sessions: async_sessionmaker[AsyncSession]) -> PlanRepository:
    return PlanRepository(sessions)


async def test_set_and_get_plan(plans: PlanRepository) -> None:
    assert await plans.get_plan("pro") is None
    await plans.set_plan(
        "pro",
        [
            Limit("requests", 86400, 10_000),
            Limit("requests", 60, 100),
            Limit("input_tokens", 60, 10**12),
        ],
    )
    assert await plans.get_plan("pro") == Plan(
        "pro",
        (
            Limit("input_tokens", 60, 10**12),
            Limit("requests", 60, 100),
            Limit("requests", 86400, 10_000),
        ),
    )


async def test_set_plan_replaces_limits(plans: PlanRepository, db_engine: AsyncEngine) -> None:
    await plans.set_plan("pro", [Limit("requests", 60, 100), Limit("output_tokens", 3600, 5)])
    await plans.set_plan("pro", [Limit("requests", 60, 200)])
    assert await plans.get_plan("pro") == Plan("pro", (Limit("requests", 60, 200),))
    await plans.set_plan("pro", [])
    assert await plans.get_plan("pro") == Plan("pro", ())
    async with db_engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM plans"))).scalar() == 1
        assert (await conn.execute(text("SELECT count(*) FROM plan_limits"))).scalar() == 0


async def test_set_plan_rejects_duplicate_limits(plans: PlanRepository) -> None:
    with pytest.raises(ValueError):
        await plans.set_plan("x", [Limit("requests", 60, 1), Limit("requests", 60, 2)])
    assert await plans.get_plan("x") is None


async def test_list_plans(plans: PlanRepository) -> None:
    assert await plans.list_plans() == []
    await plans.set_plan("zeta", [Limit("requests", 60, 1)])
    await plans.set_plan("alpha", [])
    await plans.set_plan("mid", [Limit("requests", 60, 5), Limit("output_tokens", 60, 9)])
    assert await plans.list_plans() == [
        Plan("alpha", ()),
        Plan("mid", (Limit("output_tokens", 60, 9), Limit("requests", 60, 5))),
        Plan("zeta", (Limit("requests", 60, 1),)),
    ]


async def test_user_plans(plans: PlanRepository, db_engine: AsyncEngine) -> None:
    await plans.set_plan("pro", [Limit("requests", 60, 100)])
    assert await plans.plan_for_user("newbie") is None
    await plans.set_user_plan("newbie", "pro")  # creates the user
    assert await plans.plan_for_user("newbie") == Plan("pro", (Limit("requests", 60, 100),))
    await plans.set_user_plan("newbie", None)
    assert await plans.plan_for_user("newbie") is None
    async with db_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT plan_name FROM users WHERE external_id = 'newbie'"))).all()
    assert [tuple(r) for r in rows] == [(None,)]


async def test_set_user_plan_to_unknown_plan_is_not_found(
    plans: PlanRepository, db_engine: AsyncEngine
) -> None:
    with pytest.raises(NotFound) as caught:
        await plans.set_user_plan("someone", "no-such-plan")
    assert caught.value.status == 404
    async with db_engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar() == 0


async def test_deleted_plan_no_longer_applies(plans: PlanRepository) -> None:
    await plans.set_plan("pro", [Limit("requests", 60, 100)])
    await plans.set_user_plan("u", "pro")
    assert await plans.delete_plan("pro") == ["u"]
    assert await plans.delete_plan("pro") is None
    assert await plans.get_plan("pro") is None
    assert await plans.plan_for_user("u") is None


async def test_concurrent_set_plan_leaves_one_complete_version(plans: PlanRepository) -> None:
    versions = [[Limit("requests", 60, n), Limit("output_tokens", 3600, n * 10)] for n in range(1, 7)]
    await asyncio.gather(*(plans.set_plan("busy", v) for v in versions))
    plan = await plans.get_plan("busy")
    assert plan is not None
    assert sorted(plan.limits, key=str) in [sorted(v, key=str) for v in versions]


async def _plan_names(db_engine: AsyncEngine) -> dict[str, str | None]:
    async with db_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT external_id, plan_name FROM users"))).all()
    return {external_id: plan_name for external_id, plan_name in rows}


async def test_deleting_a_plan_returns_its_users_to_the_default_plan(
    plans: PlanRepository, db_engine: AsyncEngine
) -> None:
    """Its users kept the deleted plan's name: a plan created later under that name applied to them."""
    await plans.set_plan("gold", [Limit("requests", 60, 1000)])
    await plans.set_plan("silver", [Limit("requests", 60, 10)])
    for user, plan in (("alice", "gold"), ("bob", "gold"), ("carol", "silver"), ("dave", None)):
        await plans.set_user_plan(user, plan)
    assert sorted(await plans.delete_plan("gold") or []) == ["alice", "bob"]  # who moved to the default
    assert await _plan_names(db_engine) == {"alice": None, "bob": None, "carol": "silver", "dave": None}
    await plans.set_plan("gold", [Limit("requests", 60, 999_999)])  # the same name again, later
    assert await plans.plan_for_user("alice") is None
    assert await plans.plan_for_user("carol") == Plan("silver", (Limit("requests", 60, 10),))
    assert await plans.delete_plan("silver") == ["carol"]
    assert await plans.delete_plan("silver") is None


async def test_an_assignment_racing_a_delete_never_names_the_deleted_plan(
    plans: PlanRepository, db_engine: AsyncEngine
) -> None:
    """`set_user_plan` found the plan, then wrote its name: a delete committed in between (its users'
    names already cleared) left the user on a plan that no longer existed — and on any plan made
    later under that name. Here the delete runs while the assignment is about to write the name."""
    await plans.set_plan("gold", [Limit("requests", 60, 1000)])
    await plans.set_plan("silver", [Limit("requests", 60, 10)])
    await plans.set_user_plan("alice", "silver")
    deleting: list[asyncio.Task[list[str] | None]] = []

    def delete_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if deleting or not statement.startswith("UPDATE users SET plan_name") or "EXISTS" not in statement:
            return  # (not the row's hold before it: the assignment itself)
        deleting.append(asyncio.get_running_loop().create_task(plans.delete_plan("gold")))
        await_only(asyncio.sleep(0.5))  # the delete commits, or waits for this assignment (PostgreSQL's lock)

    event.listen(db_engine.sync_engine, "before_cursor_execute", delete_first)
    try:
        try:
            await plans.set_user_plan("alice", "gold")
            assigned = True
        except NotFound:
            assigned = False
    finally:
        event.remove(db_engine.sync_engine, "before_cursor_execute", delete_first)
    moved = await deleting[0]
    # Either the delete came first and the assignment is refused, or it waited and cleared her too.
    assert (moved, (await _plan_names(db_engine))["alice"]) == ((["alice"], None) if assigned else ([], "silver"))
    # The assignment holds the plan's row (PostgreSQL) or the write lock (SQLite, taken to read the
    # user's plan before it): the delete waits for it, then clears her.
    assert assigned
    await plans.set_plan("gold", [Limit("requests", 60, 999_999)])
    assert await plans.plan_for_user("alice") == (None if assigned else Plan("silver", (Limit("requests", 60, 10),)))


async def test_a_plan_deleted_while_a_change_of_it_begins_is_created_anew_by_that_change(
    plans: PlanRepository, db_engine: AsyncEngine
) -> None:
    """`set_plan` found the plan's row (its insert did nothing), then held it: on PostgreSQL a delete
    committed in between left it holding nothing, and its limits' insert failed on their foreign key
    (IntegrityError: a 500 for the operator). Here the delete runs just before the change holds the
    row: the change then creates the plan anew (as one made after the delete), or on SQLite, where
    the change holds the write lock from its first statement, the delete waits and deletes it."""
    await plans.set_plan("gold", [Limit("requests", 60, 1000)])
    await plans.set_user_plan("alice", "gold")
    deleting: list[asyncio.Task[list[str] | None]] = []

    def delete_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if deleting or not statement.startswith("UPDATE plans SET updated_at"):
            return
        deleting.append(asyncio.get_running_loop().create_task(plans.delete_plan("gold")))
        await_only(asyncio.sleep(0.5))  # the delete commits, or waits for this change (SQLite's write lock)

    event.listen(db_engine.sync_engine, "before_cursor_execute", delete_first)
    try:
        change = await plans.set_plan("gold", [Limit("requests", 60, 5)])
    finally:
        event.remove(db_engine.sync_engine, "before_cursor_execute", delete_first)
    assert await deleting[0] == ["alice"]
    assert await _plan_names(db_engine) == {"alice": None}
    if db_engine.dialect.name == "postgresql":  # the delete first: this change made the plan again
        assert (change.before, change.users) == (None, ())
        assert await plans.get_plan("gold") == Plan("gold", (Limit("requests", 60, 5),))
    else:  # this change first, then the delete
        assert change.before == Plan("gold", (Limit("requests", 60, 1000),)) and change.users == ("alice",)
        assert await plans.get_plan("gold") is None


async def test_a_new_plan_named_as_another_but_for_case_is_refused(plans: PlanRepository) -> None:
    """`Pro` and `pro` could both be created (alike on the console): the second is PlanExists naming
    the first, nothing written; the first is changed as before."""
    await plans.set_plan("Pro", [Limit("requests", 60, 1)])
    for create in (True, False):
        with pytest.raises(PlanExists) as refused:
            await plans.set_plan("pRO", [Limit("requests", 60, 2)], create=create)
        assert refused.value.args == ("Pro",)
    assert [p.name for p in await plans.list_plans()] == ["Pro"]
    await plans.set_plan("Pro", [Limit("requests", 60, 3)])
    assert await plans.get_plan("Pro") == Plan("Pro", (Limit("requests", 60, 3),))


async def test_concurrent_creations_of_names_alike_but_for_case_make_one_plan(plans: PlanRepository) -> None:
    """Each creation checks for the other under one hold (on PostgreSQL an advisory lock keyed on the
    lower-cased name): of `Pro`, `pro`, `PRO` created at once exactly one is made."""
    names = ["Pro", "pro", "PRO", "pRo"]
    results = await asyncio.gather(
        *(plans.set_plan(name, [Limit("requests", 60, 1)], create=True) for name in names), return_exceptions=True
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1, results
    assert all(isinstance(r, PlanExists) for r in results if r not in made), results
    assert [p.name for p in await plans.list_plans()] == [made[0].after.name]


async def test_plans_stored_alike_but_for_case_keep_working(plans: PlanRepository, db_engine: AsyncEngine) -> None:
    """Plans made before the rule (`Pro` beside `pro`) are each read, changed, assigned and deleted."""
    await plans.set_plan("Pro", [Limit("requests", 60, 1)])
    async with db_engine.begin() as conn:
        await conn.execute(text("INSERT INTO plans (name, created_at, updated_at) "
                                "VALUES ('pro', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    await plans.set_plan("pro", [Limit("requests", 60, 2)])
    await plans.set_plan("Pro", [Limit("requests", 60, 3)], merge=True)
    await plans.set_user_plan("u", "pro")
    assert await plans.plan_for_user("u") == Plan("pro", (Limit("requests", 60, 2),))
    assert await plans.get_plan("Pro") == Plan("Pro", (Limit("requests", 60, 3),))
    assert await plans.delete_plan("pro") == ["u"]
    assert [p.name for p in await plans.list_plans()] == ["Pro"]
