"""Plan sources: the built-in one over the database, and `CachedPlans`' TTL and stale-while-down
grace with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.domain.identity import Identity
from sentinel.domain.plans import ExternalUsage, Limit, Plan, parse_limits, parse_plan_spec
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.plan_source import BuiltinPlanSource, CachedPlans, plan_from_json, plan_to_json
from sentinel.governance.plans import PlanRepository
from sentinel.store import MemoryStore
from tests.support.clock import FakeClock

ALICE = Identity("alice", "u1")
SMALL = parse_plan_spec("requests=1/1m", "small")
LARGE = parse_plan_spec("requests=50/1h,input_tokens=1000/1d", "large")


class FakePlans:
    """A plan source the test controls: the plan it answers, an outage switch, a call counter."""

    name = "fake"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.down = False
        self.calls = 0

    async def plan_for(self, identity: Identity) -> Plan:
        self.calls += 1
        if self.down:
            raise GovernanceUnavailable("plans unavailable")
        return self.plan


def cached(source: FakePlans, clock: FakeClock, **kw: float) -> CachedPlans:
    store = MemoryStore(clock=clock)
    return CachedPlans(store, source, ttl=kw.get("ttl", 10), grace=kw.get("grace", 20), clock=clock)


async def test_a_plan_change_applies_after_the_ttl_and_not_before() -> None:
    source, clock = FakePlans(SMALL), FakeClock()
    plans = cached(source, clock)
    assert await plans.plan_for(ALICE) == SMALL
    source.plan = LARGE
    clock.advance(9.9)
    assert await plans.plan_for(ALICE) == SMALL
    assert source.calls == 1
    clock.advance(0.2)
    assert await plans.plan_for(ALICE) == LARGE
    assert source.calls == 2


async def test_a_stale_plan_is_enforced_while_the_source_is_down_within_the_grace() -> None:
    source, clock = FakePlans(SMALL), FakeClock()
    plans = cached(source, clock)
    await plans.plan_for(ALICE)
    source.down = True
    clock.advance(25)  # past the TTL, within TTL + grace
    assert await plans.plan_for(ALICE) == SMALL
    clock.advance(10)  # past the grace: the entry is gone from the store
    with pytest.raises(GovernanceUnavailable):
        await plans.plan_for(ALICE)


async def test_nothing_cached_and_the_source_down_is_governance_unavailable() -> None:
    source = FakePlans(SMALL)
    source.down = True
    with pytest.raises(GovernanceUnavailable):
        await cached(source, FakeClock()).plan_for(ALICE)


async def test_users_are_cached_separately() -> None:
    source, clock = FakePlans(SMALL), FakeClock()
    plans = cached(source, clock)
    await plans.plan_for(ALICE)
    source.plan = LARGE
    assert await plans.plan_for(Identity("bob", "u2")) == LARGE
    assert await plans.plan_for(ALICE) == SMALL


class GatedPlans(FakePlans):
    """A FakePlans whose next answer waits until `release` is set, holding the plan it read first."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def plan_for(self, identity: Identity) -> Plan:
        read = await super().plan_for(identity)
        self.reading.set()
        await self.release.wait()
        return read


async def test_a_lookup_that_read_the_plan_before_a_change_does_not_cache_it_after() -> None:
    """A request whose plan lookup had read the old plan when an operator changed it (and dropped
    the cached plan) cached the old plan after the change: enforced for CACHE_TTL_SECONDS more (a
    user moved to a smaller plan kept the larger one)."""
    source, clock = GatedPlans(LARGE), FakeClock()
    plans = cached(source, clock)
    in_flight = asyncio.ensure_future(plans.plan_for(ALICE))
    await source.reading.wait()  # read LARGE, not answered yet
    source.plan = SMALL  # the operator's change...
    await plans.forget(ALICE.external_id)  # ...and its cache drop
    source.release.set()
    assert await in_flight == LARGE  # the request that began before the change runs on what it read
    assert await plans.plan_for(ALICE) == SMALL
    clock.advance(5)
    assert await plans.plan_for(ALICE) == SMALL


async def test_after_a_change_the_plan_is_cached_again_by_a_lookup_begun_after_it() -> None:
    """The change holds values off only from lookups that began before it (within the clocks' margin):
    one begun later caches its answer, so a plan change does not cost a source read per request."""
    source, clock = FakePlans(SMALL), FakeClock()
    plans = cached(source, clock, ttl=300)
    await plans.plan_for(ALICE)
    source.plan = LARGE
    await plans.forget(ALICE.external_id)
    assert await plans.plan_for(ALICE) == LARGE  # within the margin: read, not cached
    assert await plans.plan_for(ALICE) == LARGE
    calls = source.calls
    clock.advance(3)  # past the margin: the next lookup caches
    assert [await plans.plan_for(ALICE) for _ in range(3)] == [LARGE] * 3
    assert source.calls == calls + 1


def test_plan_json_round_trip_keeps_external_usage() -> None:
    plan = Plan(
        "zion",
        (
            Limit("requests", 60, 100),
            Limit("input_tokens", 2_678_400, 5000, ExternalUsage(1200, "snap-1", 1_706_745_600.0)),
            Limit("output_tokens", 86_400, 10, ExternalUsage(0, "snap-2")),
        ),
    )
    assert plan_from_json(plan_to_json(plan)) == plan
    with pytest.raises((KeyError, TypeError, ValueError)):
        plan_from_json({"name": "x", "limits": [{"metric": "requests"}]})


async def test_builtin_source_answers_the_users_plan_or_the_default(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    repo = PlanRepository(sessions)
    await repo.set_plan("gold", parse_limits("requests=500/1m"))
    await repo.set_user_plan("alice", "gold")
    default = parse_plan_spec("requests=5/1m", "default")
    source = BuiltinPlanSource(repo, default)
    assert (await source.plan_for(ALICE)).spec() == "requests=500/1m"
    assert await source.plan_for(Identity("nobody", "u9")) == default


async def test_concurrent_lookups_of_one_users_plan_share_one_read_of_the_source() -> None:
    """A busy user's requests whose cached plan ran out read the source once, not once each (a burst
    of 64 was 64 database queries at once); another user's lookup is its own."""
    source, clock = GatedPlans(LARGE), FakeClock()
    plans = cached(source, clock)
    burst = [asyncio.ensure_future(plans.plan_for(ALICE)) for _ in range(8)]
    other = asyncio.ensure_future(plans.plan_for(Identity("bob", "u2")))
    await source.reading.wait()
    source.release.set()
    assert await asyncio.gather(*burst, other) == [LARGE] * 9
    assert source.calls == 2


async def test_a_lookup_begun_after_a_change_does_not_join_one_begun_before_it() -> None:
    """Joined to a lookup that read the plan before an operator changed it, a request arriving after
    the change would run on the old plan: after `forget`, the next lookup reads the source again."""
    source, clock = GatedPlans(LARGE), FakeClock()
    plans = cached(source, clock)
    before = asyncio.ensure_future(plans.plan_for(ALICE))
    await source.reading.wait()  # read LARGE, not answered yet
    source.plan = SMALL
    await plans.forget(ALICE.external_id)
    after = asyncio.ensure_future(plans.plan_for(ALICE))
    await asyncio.sleep(0)
    source.release.set()
    assert (await before, await after) == (LARGE, SMALL)
    assert source.calls == 2


async def test_a_plan_cached_under_another_configuration_is_read_again_and_served_only_in_an_outage() -> None:
    """A plan cached by a process of another configuration (`basis`: DEFAULT_PLAN changed at a
    restart) is not fresh to this one: the source is asked, and its answer replaces it; while the
    source is down it is served as any stale plan is (within the grace), not a 503."""
    source, clock = FakePlans(SMALL), FakeClock()
    store = MemoryStore(clock=clock)
    old = CachedPlans(store, source, ttl=300, grace=900, clock=clock, basis="old")
    new = CachedPlans(store, source, ttl=300, grace=900, clock=clock, basis="new")
    assert await old.plan_for(ALICE) == SMALL
    source.plan, source.down = LARGE, True
    assert await new.plan_for(ALICE) == SMALL  # the source is down: the plan it had
    source.down = False
    assert await new.plan_for(ALICE) == LARGE and source.calls == 3
    assert await new.plan_for(ALICE) == LARGE and source.calls == 3  # cached under its own basis now
    assert await old.plan_for(ALICE) == LARGE and source.calls == 4  # and the other process reads it again
