"""SingleFlight: one run of the work per key at a time, shared by the callers that arrive meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from sentinel.flight import SingleFlight
from tests.support.waiting import until


async def test_callers_share_one_run_and_its_key_is_dropped_when_it_ends() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return runs

    callers = [asyncio.create_task(flights.run("a", work)) for _ in range(5)]
    await until(lambda: runs == 1)
    assert "a" in flights and "b" not in flights
    release.set()
    assert await asyncio.gather(*callers) == [1] * 5
    await until(lambda: len(flights) == 0)  # nothing is kept once the work ended
    assert await flights.run("a", work) == 2  # a new run, not the old outcome


async def test_a_cancelled_caller_leaves_the_work_to_the_others_and_errors_reach_them_all() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        raise LookupError("no such thing")

    first = asyncio.create_task(flights.run("a", work))
    await until(lambda: "a" in flights)
    others = [asyncio.create_task(flights.run("a", work)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    outcomes = await asyncio.gather(*others, return_exceptions=True)
    assert [type(o) for o in outcomes] == [LookupError] * 3
    await until(lambda: len(flights) == 0)


async def test_work_nobody_waits_for_any_more_runs_to_its_end_quietly() -> None:
    """Every caller gone: the work is not cancelled, and its exception is retrieved (the loop
    reports no 'exception was never retrieved')."""
    import gc

    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()
    finished: list[str] = []
    reports: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, report: reports.append(report))

    async def work() -> int:
        await release.wait()
        finished.append("ran to its end")
        raise LookupError("no such thing")

    caller = asyncio.create_task(flights.run("a", work))
    await until(lambda: "a" in flights)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await until(lambda: len(flights) == 0)
    del caller
    gc.collect()
    assert finished == ["ran to its end"] and reports == []
