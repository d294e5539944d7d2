"""GroupCommit: items submitted in the same turn of the event loop, or the turn after the write was
scheduled, share one write; a write's error reaches every caller in it; a cancelled caller does not
cut the write its item is in."""

from __future__ import annotations

import asyncio

import pytest

from sentinel.quota.group_commit import GroupCommit


class Writes:
    """The batches written; with `gated`, each write waits for `gate` to open."""

    def __init__(self, fail: Exception | None = None, *, gated: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.gate = asyncio.Event() if gated else None

    async def __call__(self, items: list[int]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append(items)


async def turns(n: int = 3) -> None:
    """Let the event loop turn `n` times (enough for a scheduled write to start)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_items_submitted_in_the_next_turn_join_the_same_write() -> None:
    writes = Writes()
    commit = GroupCommit(writes)
    first = asyncio.ensure_future(commit.submit(1))
    await asyncio.sleep(0)  # the first submit runs and schedules the write
    second = asyncio.ensure_future(commit.submit(2))  # submitted while the write waits for its turn
    await asyncio.gather(first, second)
    assert writes.batches == [[1, 2]]
    await commit.submit(3)  # an idle commit writes at once
    assert writes.batches == [[1, 2], [3]]


async def test_items_submitted_during_a_write_go_in_the_next_one() -> None:
    writes = Writes(gated=True)
    commit = GroupCommit(writes)
    first = asyncio.ensure_future(commit.submit(1))
    await turns()  # the write of [1] has started and waits on the gate
    later = [asyncio.ensure_future(commit.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    assert writes.gate is not None
    writes.gate.set()
    await asyncio.gather(first, *later)
    assert writes.batches == [[1], [2, 3]]


async def test_a_failed_write_fails_every_caller_in_it() -> None:
    commit = GroupCommit(Writes(fail=RuntimeError("disk full")))
    results = await asyncio.gather(commit.submit(1), commit.submit(2), return_exceptions=True)
    assert [str(r) for r in results] == ["disk full", "disk full"]


async def test_a_cancelled_caller_does_not_cut_the_write() -> None:
    writes = Writes(gated=True)
    commit = GroupCommit(writes)
    caller = asyncio.ensure_future(commit.submit(1))
    await turns()  # the write of [1] has started and waits on the gate
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert writes.gate is not None
    writes.gate.set()
    await commit.submit(2)
    assert writes.batches == [[1], [2]]
