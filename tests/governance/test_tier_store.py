"""The built-in tier table: `TierRepository` on SQLite and PostgreSQL, and `DbTiers`' re-read TTL
and outage behaviour with an injected clock (no sleeping)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.domain.tiers import TIERS, TierModelEntry, TierTable
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.tier_store import DbTiers, TierRepository, parse_entry
from tests.support.clock import FakeClock

MINI = TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1)
SONNET = TierModelEntry(provider="anthropic", model="claude-sonnet-4-20250514", relative_cost=4,
                        input_price_per_million=3.0, output_price_per_million=15.0)
FALLBACK: TierTable = {"simple": [MINI], "moderate": [MINI], "complex": [MINI]}


class FakeRepo:
    """The repository seam: a table the test edits, a switch for outages, a read counter."""

    def __init__(self) -> None:
        self.stored: TierTable = {}
        self.down = False
        self.reads = 0

    async def table(self) -> TierTable:
        self.reads += 1
        if self.down:
            raise GovernanceUnavailable("tier store unavailable")
        return {tier: list(entries) for tier, entries in self.stored.items()}


def tiers_over(repo: FakeRepo, clock: FakeClock, ttl: float = 10) -> DbTiers:
    return DbTiers(repo, FALLBACK, ttl, clock=clock)  # type: ignore[arg-type]


async def test_the_table_is_read_again_after_the_ttl_and_not_before() -> None:
    repo, clock = FakeRepo(), FakeClock()
    tiers = tiers_over(repo, clock)
    assert (await tiers.table())["simple"] == [MINI]
    repo.stored = {"simple": [SONNET]}
    clock.advance(9.9)
    assert (await tiers.table())["simple"] == [MINI]  # within the TTL: the table read before
    assert repo.reads == 1
    clock.advance(0.2)
    assert (await tiers.table())["simple"] == [SONNET]
    assert repo.reads == 2


async def test_tiers_without_rows_fall_back_to_the_catalog() -> None:
    repo = FakeRepo()
    repo.stored = {"complex": [SONNET]}
    table = await tiers_over(repo, FakeClock()).table()
    assert set(table) == set(TIERS)
    assert table == {"simple": [MINI], "moderate": [MINI], "complex": [SONNET]}


async def test_database_down_keeps_the_last_table_and_retries_later() -> None:
    repo, clock = FakeRepo(), FakeClock()
    tiers = tiers_over(repo, clock, ttl=60)
    repo.stored = {"simple": [SONNET]}
    first = await tiers.table()
    repo.down = True
    clock.advance(61)
    assert await tiers.table() == first
    reads = repo.reads
    clock.advance(29)
    assert await tiers.table() == first and repo.reads == reads  # an outage is retried after min(ttl, 30) s
    clock.advance(2)
    repo.down = False
    repo.stored = {}
    assert (await tiers.table())["simple"] == [MINI]


async def test_database_down_before_any_read_serves_the_catalog() -> None:
    repo = FakeRepo()
    repo.down = True
    assert await tiers_over(repo, FakeClock()).table() == FALLBACK


def test_parse_entry() -> None:
    assert parse_entry("anthropic/claude-sonnet-4-20250514:4:3:15") == SONNET
    assert parse_entry("openai/gpt-4o-mini:1") == MINI
    for junk in ("gpt-4o", "openai/gpt-4o", "openai/:1", "/m:1", "openai/m:1:2", "openai/m:x", "openai/m\x1b[2J:1",
                 "open\nai/m:1"):
        with pytest.raises(ValueError):
            parse_entry(junk)


async def test_repository_round_trip(sessions: async_sessionmaker[AsyncSession]) -> None:
    repo = TierRepository(sessions)
    assert await repo.table() == {}
    await repo.set_tier("simple", [SONNET, MINI])
    await repo.set_tier("complex", [MINI])
    assert await repo.table() == {"simple": [SONNET, MINI], "complex": [MINI]}
    await repo.set_tier("simple", [MINI])  # replaces, in order
    assert (await repo.table())["simple"] == [MINI]
    await repo.clear("complex")
    assert await repo.table() == {"simple": [MINI]}
    await repo.clear()
    assert await repo.table() == {}
    with pytest.raises(ValueError):
        await repo.set_tier("huge", [MINI])
