"""Zion limits count requests still running across readings, on every Store backend.

A Zion limit counts locally per reading (`x<snapshot>`), offset by Zion's `used`, which holds only
usage delivered to Zion. A request still running when a new reading came was in neither figure:
each reading admitted the whole limit again next to the streams of the one before (190,000 of
100,000 reserved). Running reservations now keep an entry in `{base}:inflight`, and a reading's
count starts at what is still running.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sentinel.domain.plans import Plan, parse_plan_spec
from sentinel.governance.zion import MetricReading, UserLimit, ZionLimits, plan_from_limits
from sentinel.quota.limiter import QuotaLimiter, Reservation
from sentinel.store import MemoryStore, Script, Store
from sentinel.store.base import ScriptArg
from tests.support.clock import FakeClock

T0 = 1_800_000_000.0
WINDOW = 1260  # what CACHE_TTL_SECONDS + GOVERNANCE_GRACE_SECONDS + 60 make by default
END = datetime(2027, 2, 1, tzinfo=UTC)


def reading(used: int, limit: int = 100_000, *, monthly: tuple[int, int] | None = None) -> Plan:
    """A Zion reading of a user's aiOutputTokens (and, with `monthly`, a second entry's (limit, used))."""
    entries = [UserLimit("daily", None, {"aiOutputTokens": MetricReading(limit, used, None)}, "DAILY", None, END)]
    if monthly is not None:
        meter = MetricReading(monthly[0], monthly[1], None)
        entries.append(UserLimit("monthly", None, {"aiOutputTokens": meter}, "MONTHLY", None, END))
    return plan_from_limits(ZionLimits("usr_1", "u1", tuple(entries)), max_window_seconds=WINDOW)


async def reserve(limiter: QuotaLimiter, plan: Plan, o: int) -> Reservation:
    return await limiter.reserve("u1", plan, requests=1, input_tokens=0, output_tokens=o)


async def room(limiter: QuotaLimiter, plan: Plan) -> int:
    """What the reading admits now (a peek, counting nothing)."""
    decision = await limiter.peek("u1", plan)
    return min(s.limit.limit - s.used for s in decision.states)


async def test_streams_running_across_new_readings_still_count(store: Store) -> None:
    """The reviewer's case: 10 streams of 9,000 admitted; a small request is delivered, Zion's
    `used` moves, and the next reading admitted another 99,999 next to the 90,000 still running."""
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock)
    first = reading(0)
    streams = [await reserve(limiter, first, 9000) for _ in range(10)]
    assert all(s.allowed for s in streams)
    clock.advance(30)
    second = reading(1)  # one small request's token was delivered; the 10 still run
    assert await room(limiter, second) == 100_000 - 1 - 90_000
    assert not (await reserve(limiter, second, 10_000)).allowed
    last = await reserve(limiter, second, 9999)
    assert last.allowed and not (await reserve(limiter, second, 1)).allowed
    for stream in streams:  # each used 5,000 of its 9,000 and is delivered
        clock.advance(1)
        await limiter.commit(stream, input_tokens=0, output_tokens=5000)
    # Until the next reading they count here at what they reserved (against the user, never for).
    assert not (await reserve(limiter, second, 1)).allowed
    third = reading(1 + 50_000)  # includes the 10; `last` still runs
    assert await room(limiter, third) == 100_000 - 50_001 - 9999
    big = await reserve(limiter, third, 40_000)
    assert big.allowed and not (await reserve(limiter, third, 1)).allowed
    await limiter.release(last)  # never sent after all
    assert await room(limiter, reading(50_002)) == 100_000 - 50_002 - 40_000  # `big` still runs


async def test_an_entry_left_by_a_crashed_process_stops_counting_at_its_deadline(store: Store) -> None:
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock)
    orphan = await reserve(limiter, reading(0), 10_000)  # its process dies: never settled
    assert orphan.allowed
    clock.advance(WINDOW - 1)
    assert await room(limiter, reading(5)) == 100_000 - 5 - 10_000
    assert len(orphan.in_flight) == 1
    clock.advance(1)  # `window_seconds` after the reservation
    assert await room(limiter, reading(6)) == 100_000 - 6
    assert await store.ttl(orphan.in_flight[0]) is None  # pruned, and the hash went with its last entry
    # Settled after all, so late: its refund is skipped (see the module docstring), its entry goes.
    await limiter.commit(orphan, input_tokens=0, output_tokens=10)
    assert await store.ttl(orphan.in_flight[0]) is None


async def test_commit_and_release_take_the_entry_out(store: Store) -> None:
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock)
    first = reading(0)
    a = await reserve(limiter, first, 10_000)
    b = await reserve(limiter, first, 20_000)
    c = await reserve(limiter, first, 30_000)
    await limiter.commit(a, input_tokens=0, output_tokens=3000)
    await limiter.release(b)
    assert await room(limiter, reading(3000)) == 100_000 - 3000 - 30_000  # only `c` still runs
    assert a.in_flight == b.in_flight == c.in_flight and await store.ttl(a.in_flight[0]) is not None
    await limiter.commit(c, input_tokens=0, output_tokens=30_000)  # exactly its reservation: delta 0
    assert await store.ttl(a.in_flight[0]) is None
    assert await room(limiter, reading(33_000)) == 100_000 - 33_000
    # A denied reservation (and a peek: `room`) leaves no entry.
    assert not (await reserve(limiter, reading(33_000), 70_000)).allowed
    assert await store.ttl(a.in_flight[0]) is None


async def test_two_zion_limits_on_one_metric_both_count_what_runs(store: Store) -> None:
    """A DAILY and a MONTHLY entry capped to one window share one in-flight record."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    running = [await reserve(limiter, reading(0, monthly=(1_000_000, 500_000)), 10_000) for _ in range(5)]
    assert all(r.allowed for r in running)
    decision = await limiter.peek("u1", reading(1, monthly=(1_000_000, 500_001)))
    assert [s.used for s in decision.states] == [50_001, 550_001]
    assert len(running[0].in_flight) == 1


class Recording(MemoryStore):
    """A memory store that notes the name of every script it runs, with its keys."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[str, list[str]]] = []

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        self.scripts.append((script.name, list(keys)))
        return await super().run(script, keys, args)


async def test_only_plans_with_zion_limits_run_the_in_flight_scripts() -> None:
    """A plan of ordinary windows (the benchmarked path) runs the plain scripts and writes no hash; a
    Zion plan with the default plan's throttle keeps every key of one call in the user's slot."""
    store = Recording()
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    ordinary = parse_plan_spec("requests=100/1m,output_tokens=100000/1d")
    r = await reserve(limiter, ordinary, 500)
    await limiter.commit(r, input_tokens=0, output_tokens=20)
    assert [name for name, _ in store.scripts] == ["sentinel_quota_reserve", "sentinel_quota_adjust"]
    assert r.in_flight == () and await store.scan("*inflight*") == []
    store.scripts.clear()
    mixed = Plan("zion:daily+default", reading(0).limits + parse_plan_spec("requests=100/1m").limits)
    z = await reserve(limiter, mixed, 500)
    await limiter.commit(z, input_tokens=0, output_tokens=20)
    names = [name for name, _ in store.scripts]
    assert names == ["sentinel_quota_reserve_external", "sentinel_quota_adjust_external"]
    assert all(key.startswith("sentinel:quota:{u1}:") for _, keys in store.scripts for key in keys)
    assert z.in_flight == ("sentinel:quota:{u1}:output_tokens:1260:inflight",)
    assert await store.scan("*inflight*") == []  # settled: nothing runs
