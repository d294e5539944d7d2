"""Zion limits as quota plans: windows, external usage, snapshots, and enforcement by the limiter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sentinel.backoff import Backoff
from sentinel.domain.identity import Identity
from sentinel.domain.plans import parse_plan_spec
from sentinel.domain.usage import UsageRecord
from sentinel.governance.zion import (
    MetricReading,
    UserLimit,
    ZionClient,
    ZionLimits,
    ZionPlanSource,
    plan_from_limits,
)
from sentinel.governance.zion_sources import ZionPlans
from sentinel.quota.limiter import QuotaLimiter
from sentinel.store import MemoryStore
from tests.support.fake_zion import FakeZion
from tests.support.servers import serving

END = datetime(2024, 2, 1, tzinfo=UTC)


def limits(period: str | None = "MONTHLY", *, requests: MetricReading | None = None, **extra: MetricReading) -> ZionLimits:
    metrics = {"aiRequests": requests or MetricReading(100, 40, 60), **extra}
    return ZionLimits("usr_1", "ext-1", (UserLimit("ai_usage", "AI usage", metrics, period, None, END),))


def test_each_limited_metric_becomes_a_limit_with_external_usage() -> None:
    plan = plan_from_limits(
        limits(aiInputTokens=MetricReading(5000, 1200, 3800), aiOutputTokens=MetricReading(None, 7, None))
    )
    by_metric = {limit.metric: limit for limit in plan.limits}
    assert set(by_metric) == {"requests", "input_tokens"}  # a null limit is unlimited
    requests = by_metric["requests"]
    assert (requests.limit, requests.window_seconds) == (100, 30 * 86400)
    assert requests.external is not None
    assert (requests.external.used, requests.external.resets_at) == (40, END.timestamp())
    assert by_metric["input_tokens"].offset == 1200
    assert plan.name == "zion:ai_usage"


@pytest.mark.parametrize(
    ("period", "window"),
    [("DAILY", 86400), ("WEEKLY", 604800), ("MONTHLY", 2592000), ("NEVER", 315360000), (None, 315360000)],
)
def test_the_window_follows_the_reset_period(period: str | None, window: int) -> None:
    (limit,) = plan_from_limits(limits(period)).limits
    assert limit.window_seconds == window
    (capped,) = plan_from_limits(limits(period), max_window_seconds=3600).limits
    assert capped.window_seconds == 3600


def test_negative_limits_are_unlimited_and_overdrawn_usage_is_kept() -> None:
    plan = plan_from_limits(limits(requests=MetricReading(-1, 5, None), aiInputTokens=MetricReading(10, 12, -2)))
    (limit,) = plan.limits
    assert limit.metric == "input_tokens" and limit.offset == 12


def test_the_snapshot_changes_exactly_when_the_reading_does() -> None:
    def snapshot(meter: MetricReading) -> str:
        (limit,) = plan_from_limits(limits(requests=meter)).limits
        assert limit.external is not None
        return limit.external.snapshot

    assert snapshot(MetricReading(100, 40, 60)) == snapshot(MetricReading(100, 40, 60))
    assert snapshot(MetricReading(100, 40, 60)) != snapshot(MetricReading(100, 41, 59))
    assert snapshot(MetricReading(100, 40, 60)) != snapshot(MetricReading(200, 40, 160))


@pytest.fixture
def fake() -> Iterator[FakeZion]:
    zion = FakeZion()
    zion.add_user("tok", "ext-1", "a@example.com", requests=10, used_requests=7, reset_period="DAILY")
    with serving(zion) as server:
        zion.url = server.url
        yield zion


@pytest.fixture
async def client(fake: FakeZion) -> AsyncIterator[ZionClient]:
    zion = ZionClient(fake.url, fake.api_key, timeout=1.0, backoff=Backoff(base=0.01, cap=0.05, attempts=3))
    yield zion
    await zion.aclose()


async def test_the_limiter_enforces_zion_used_plus_local_admissions(client: ZionClient) -> None:
    source = ZionPlanSource(client)
    assert await source.plan_for_user("nobody") is None
    plan = await source.plan_for_user("ext-1")
    assert plan is not None
    limiter = QuotaLimiter(MemoryStore(), clock=lambda: 1_700_000_000.0)

    async def admit() -> bool:
        assert plan is not None
        reservation = await limiter.reserve("ext-1", plan, input_tokens=1, output_tokens=1)
        return reservation.allowed

    assert [await admit() for _ in range(4)] == [True, True, True, False]  # 7 used + 3 admitted = 10
    # Reporting the 3 admissions makes Zion's reading 10/10: the new snapshot restarts the local
    # count, and the limit stays exhausted.
    now = datetime.now(UTC)
    records = [
        UsageRecord(f"r{i}", "ext-1", "a@example.com", "m", "p", "chat", 1, 1, "measured", 200, now, now)
        for i in range(3)
    ]
    assert len((await client.batch_increment(records, "k")).applied) == 3
    plan = await source.plan_for_user("ext-1")
    assert plan is not None
    assert {limit.metric: limit.offset for limit in plan.limits} == {
        "requests": 10,
        "input_tokens": 3,
        "output_tokens": 3,
    }
    assert not await admit()


async def test_default_plan_limits_are_added_to_zion_limits_unless_off(client: ZionClient) -> None:
    default = parse_plan_spec("requests=100/60s,input_tokens=5000/1d", "default")
    merged = await ZionPlans(client, default, max_window_seconds=3600).plan_for(Identity("ext-1", "usr_1"))
    zion_only = await ZionPlans(client, default, max_window_seconds=3600, apply_default=False).plan_for(
        Identity("ext-1", "usr_1")
    )
    assert zion_only.name == "zion:ai_usage" and all(limit.external for limit in zion_only.limits)
    assert merged.name == "zion:ai_usage+default"
    assert merged.limits == zion_only.limits + default.limits
    # A user Zion does not know gets DEFAULT_PLAN once, not twice.
    assert await ZionPlans(client, default, max_window_seconds=3600).plan_for(Identity("nobody", "u")) == default
    limiter = QuotaLimiter(MemoryStore(), clock=lambda: 1_700_000_000.0)
    tight = parse_plan_spec("requests=2/60s", "default")
    plan = await ZionPlans(client, tight, max_window_seconds=3600).plan_for(Identity("ext-1", "usr_1"))
    allowed = [(await limiter.reserve("ext-1", plan, input_tokens=1, output_tokens=1)).allowed for _ in range(3)]
    assert allowed == [True, True, False]  # Zion would allow 3 more; the default plan's 2/60s decides


@pytest.mark.parametrize("meter", [100, [100], "x", True])
def test_a_metric_that_is_not_an_object_is_an_outage_not_no_limit(meter: object) -> None:
    """`"aiRequests": 100` was skipped: the plan came out without that limit (unlimited)."""
    from sentinel.governance.zion import _parse_limits

    assert _parse_limits({"userId": "usr_1", "limits": []}).limits == ()  # the rest of the answer is readable
    from sentinel.errors import GovernanceUnavailable

    with pytest.raises(GovernanceUnavailable):
        _parse_limits({"userId": "usr_1", "limits": [{"name": "d", "resetPeriod": "DAILY", "aiRequests": meter}]})


def test_two_unnamed_limits_capped_to_one_window_make_a_plan() -> None:
    """A DAILY and a MONTHLY entry without names, capped to the same window, read alike: building
    the plan raised (a 500 on every request)."""
    same = {"aiRequests": MetricReading(100, 0, 100)}
    both = ZionLimits("usr_1", "ext-1", (UserLimit("limit", None, same, "DAILY", None, None),
                                         UserLimit("limit", None, same, "MONTHLY", None, None)))
    plan = plan_from_limits(both, max_window_seconds=3600)
    assert len(plan.limits) == 2 and {lim.window_seconds for lim in plan.limits} == {3600}


@pytest.mark.parametrize("end", [datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                                 datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))])
def test_a_period_end_at_the_ends_of_the_calendar_gives_a_429_not_a_500(end: datetime) -> None:
    """A denial computed its reset date from a period end in year 9999 (or 1) shifted: year 10000."""
    over = ZionLimits("usr_1", "ext-1", (UserLimit("d", None, {"aiRequests": MetricReading(10, 10, 0)},
                                                   "MONTHLY", None, end),))
    plan = plan_from_limits(over)

    async def denied() -> object:
        limiter = QuotaLimiter(MemoryStore())
        reservation = await limiter.reserve("ext-1", plan, input_tokens=1, output_tokens=1)
        assert not reservation.allowed
        return reservation.decision.to_error()

    error = asyncio.run(denied())
    assert getattr(error, "status", None) == 429


def test_limits_past_the_largest_are_clamped_from_zion_and_refused_in_config() -> None:
    huge = ZionLimits("usr_1", "ext-1", (UserLimit("d", None, {"aiRequests": MetricReading(10**20, 0, None)},
                                                   "DAILY", None, None),))
    (limit,) = plan_from_limits(huge).limits
    assert limit.limit == 10**15
    with pytest.raises(ValueError, match="a whole number from 0 to 1,000,000,000,000,000"):
        parse_plan_spec("requests=100/1m,output_tokens=100000000000000000000/30d")


@pytest.mark.parametrize("used", [False, "", [], {}])
def test_a_used_figure_of_a_wrong_type_is_an_outage_not_nothing_used(used: object) -> None:
    """`used` null or absent is nothing used; a falsy value of another type was read as 0 too, so a
    user at their limit got it all back."""
    from sentinel.errors import GovernanceUnavailable
    from sentinel.governance.zion import _parse_limits

    meter = {"limit": 10, "used": None}
    assert _parse_limits({"userId": "usr_1", "limits": [{"aiRequests": meter}]}).limits[0].metrics[
        "aiRequests"].used == 0
    with pytest.raises(GovernanceUnavailable):
        _parse_limits({"userId": "usr_1", "limits": [{"aiRequests": {"limit": 10, "used": used}}]})
