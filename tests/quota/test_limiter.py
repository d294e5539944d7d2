"""The atomic limiter, on every Store backend (memory and a real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sentinel.domain.plans import ExternalUsage, Limit, Plan, parse_plan_spec
from sentinel.errors import StoreRefused, StoreUnavailable
from sentinel.quota.limiter import QuotaLimiter, Reservation
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.store import Store
from tests.support.clock import FakeClock
from tests.support.lost_replies import LostReply

T0 = 1_800_000_000.0  # a multiple of 60 and 3600


async def counts(store: Store, reservation: Reservation) -> list[int]:
    return [int(await store.get(key) or 0) for key in reservation.keys]


async def reserve(
    limiter: QuotaLimiter, plan: Plan, *, i: int = 0, o: int = 0, subject: str = "u1"
) -> Reservation:
    return await limiter.reserve(subject, plan, input_tokens=i, output_tokens=o)


async def test_limit_bites_exactly(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=5/60s")
    results = [await reserve(limiter, plan) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert await counts(store, results[0]) == [5]
    assert [r.decision.remaining for r in results] == [4, 3, 2, 1, 0, 0]
    # Another subject has its own counters.
    assert (await reserve(limiter, plan, subject="u2")).allowed


async def test_token_limit_bites_exactly(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("input_tokens=100/60s")
    assert (await reserve(limiter, plan, i=60)).allowed
    assert (await reserve(limiter, plan, i=40)).allowed
    denied = await reserve(limiter, plan, i=1)
    assert not denied.allowed and await counts(store, denied) == [100]


async def test_deny_reserves_nothing(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,input_tokens=100/60s,output_tokens=1000/1h")
    first = await reserve(limiter, plan, i=60, o=200)
    denied = await reserve(limiter, plan, i=50, o=200)
    assert first.allowed and not denied.allowed
    assert denied.decision.limited_by == Limit("input_tokens", 60, 100)
    assert denied.decision.remaining == 40
    assert await counts(store, first) == [1, 60, 200]  # the denied request added nothing anywhere
    await limiter.commit(denied, input_tokens=999, output_tokens=999)  # no-op: it took nothing
    await limiter.release(denied)
    assert await counts(store, first) == [1, 60, 200]


async def test_each_metric_and_window_has_its_own_counter(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0 + 15))
    plan = parse_plan_spec("requests=3/60s,requests=50/1h,input_tokens=1000/60s,output_tokens=900/1d")
    r = await reserve(limiter, plan, i=7, o=11)
    assert len(set(r.keys)) == 4
    assert r.keys[0] == f"sentinel:quota:{{u1}}:requests:60:{int(T0 // 60)}"
    assert r.keys[1] == f"sentinel:quota:{{u1}}:requests:3600:{int(T0 // 3600)}"
    assert await counts(store, r) == [1, 1, 7, 11]
    for _ in range(2):
        await reserve(limiter, plan, i=7, o=11)
    assert not (await reserve(limiter, plan)).allowed  # 3/60s is spent; the hourly limit is not
    assert await counts(store, r) == [3, 3, 21, 33]


async def test_commit_reconciles_up_and_down(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,input_tokens=1000/60s,output_tokens=1000/60s")
    a = await reserve(limiter, plan, i=100, o=500)
    b = await reserve(limiter, plan, i=100, o=500)
    await limiter.commit(a, input_tokens=130, output_tokens=20)
    assert await counts(store, a) == [2, 230, 520]
    await limiter.commit(a, input_tokens=0, output_tokens=0)  # settled: a second commit does nothing
    assert await counts(store, a) == [2, 230, 520]
    await limiter.commit(b, input_tokens=100, output_tokens=500)  # exact estimate: nothing to change
    assert await counts(store, b) == [2, 230, 520]
    # Reconciling up may pass the limit (the tokens were really used); the next request is denied.
    c = await reserve(limiter, plan, i=10, o=10)
    await limiter.commit(c, input_tokens=900, output_tokens=10)
    assert await counts(store, c) == [3, 1130, 530]
    assert not (await reserve(limiter, plan, i=1, o=1)).allowed


async def test_commit_floors_at_zero(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("input_tokens=1000/60s")
    r = await reserve(limiter, plan, i=100)
    await store.set(r.keys[0], b"30", ttl=100)  # e.g. other reservations were already released
    await limiter.commit(r, input_tokens=0, output_tokens=0)
    assert await counts(store, r) == [0]


async def test_release_reverts_everything(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=1/60s,input_tokens=100/60s,output_tokens=100/60s")
    r = await reserve(limiter, plan, i=40, o=50)
    assert not (await reserve(limiter, plan)).allowed
    await limiter.release(r)
    assert await counts(store, r) == [0, 0, 0]
    again = await reserve(limiter, plan, i=40, o=50)  # a released request did not consume quota
    assert again.allowed
    await limiter.release(again)
    await limiter.release(again)
    assert await counts(store, again) == [0, 0, 0]


async def test_window_rollover_and_retry_after(store: Store) -> None:
    clock = FakeClock(T0 + 15)
    limiter = QuotaLimiter(store, clock=clock)
    plan = parse_plan_spec("requests=2/60s,input_tokens=100/60s")
    old = await reserve(limiter, plan, i=10)
    await reserve(limiter, plan, i=10)
    denied = await reserve(limiter, plan, i=10)
    assert not denied.allowed
    assert denied.decision.reset_at == T0 + 60
    assert denied.decision.retry_after == pytest.approx(45)
    assert denied.decision.headers()["Retry-After"] == "45"
    assert denied.decision.headers()["X-RateLimit-Reset"] == str(int(T0 + 60))
    clock.now = T0 + 59.5
    assert (await reserve(limiter, plan)).decision.retry_after == pytest.approx(0.5)
    clock.now = T0 + 60
    fresh = await reserve(limiter, plan, i=10)
    assert fresh.allowed and fresh.keys != old.keys
    assert fresh.decision.reset_at == T0 + 120
    # A commit after the rollover: usage above the reservation (+40) counts in the window of now,
    # where it still limits something; the window the reservation used keeps what it reserved.
    await limiter.commit(old, input_tokens=50, output_tokens=0)
    assert await counts(store, old) == [2, 20]
    assert await counts(store, fresh) == [1, 50]


async def test_a_denial_shows_the_refusing_limit_that_resets_last(store: Store) -> None:
    """Both limits refuse; the script names the first (the minute's): the decision shows the day's,
    whose reset is when the request can be admitted again."""
    clock = FakeClock(T0 + 15)
    limiter = QuotaLimiter(store, clock=clock)
    plan = parse_plan_spec("requests=1/60s,requests=1/1d,input_tokens=100/1h")
    assert (await reserve(limiter, plan)).allowed
    denied = (await reserve(limiter, plan)).decision
    day_end = (T0 // 86400 + 1) * 86400
    assert not denied.allowed and denied.limited_by == plan.limits[1]
    assert denied.reset_at == day_end and denied.retry_after == pytest.approx(day_end - T0 - 15)
    clock.now = T0 + 60  # the minute's limit admits again; the day's still refuses, as said
    assert (await reserve(limiter, plan)).decision.limited_by == plan.limits[1]


async def test_keys_expire_after_their_window(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0 + 15), ttl_margin=60)
    r = await reserve(limiter, parse_plan_spec("requests=5/60s"))
    ttl = await store.ttl(r.keys[0])
    assert ttl is not None and 100 < ttl <= 105  # 45 s left in the window + 60 s margin


async def test_headers_show_the_tightest_limit(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,input_tokens=1000/1h")
    r = await reserve(limiter, plan, i=900)
    assert r.decision.headers() == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "100",
        "X-RateLimit-Reset": str(int(T0 + 3600)),
    }
    r = await reserve(limiter, plan, i=10)
    assert r.decision.headers()["X-RateLimit-Remaining"] == "90"


async def test_oversized_request_is_denied_and_takes_nothing(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,input_tokens=100/60s")
    r = await reserve(limiter, plan, i=101)
    assert not r.allowed and r.decision.oversized and r.decision.retry_after is None
    assert "alone needs 101 input tokens" in r.decision.message
    assert await counts(store, r) == [0, 0]


async def test_exhausted_limit_denies_even_zero_amounts(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,output_tokens=100/60s")
    r = await reserve(limiter, plan, o=100)
    assert r.allowed
    later = await reserve(limiter, plan, o=0)
    assert not later.allowed and later.decision.limited_by == Limit("output_tokens", 60, 100)


async def test_peek_counts_nothing(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s")
    await reserve(limiter, plan)
    decision = await limiter.peek("u1", plan)
    decision = await limiter.peek("u1", plan)
    assert decision.allowed and decision.remaining == 9


async def test_external_usage_is_added(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))

    def plan(used: int, snapshot: str) -> Plan:
        ext = ExternalUsage(used=used, snapshot=snapshot, resets_at=T0 + 86400)
        return Plan("zion", (Limit("requests", 300, 10, ext), Limit("input_tokens", 300, 1000, ext)))

    first = plan(8, "s1")
    results = [await reserve(limiter, first, i=1) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert results[0].decision.remaining == 1 and results[1].decision.remaining == 0
    assert results[2].decision.reset_at == T0 + 86400
    assert results[0].keys[0].endswith(":requests:300:xs1")
    for done in results[:2]:  # settled (and reported): a new reading includes them
        await limiter.commit(done, input_tokens=1, output_tokens=0)
    # A new reading already includes what was reported; counting restarts from it.
    assert not (await reserve(limiter, plan(10, "s2"))).allowed
    fresh = plan(5, "s3")
    assert [(await reserve(limiter, fresh)).allowed for _ in range(6)] == [True] * 5 + [False]


async def test_empty_plan_allows_without_store_calls() -> None:
    class NoStore:
        async def run(self, *args: object) -> None:
            raise AssertionError("no store call expected")

    limiter = QuotaLimiter(NoStore(), clock=FakeClock(T0))  # type: ignore[arg-type]
    r = await reserve(limiter, Plan("free"))
    assert r.allowed and r.decision.headers() == {}
    await limiter.commit(r, input_tokens=5, output_tokens=5)


async def test_validation_and_ownership(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s")
    with pytest.raises(ValueError):
        await limiter.reserve("u1", plan, input_tokens=-1, output_tokens=0)
    r = await reserve(limiter, plan)
    with pytest.raises(ValueError):
        await limiter.commit(r, input_tokens=-5, output_tokens=0)
    with pytest.raises(ValueError, match="limiter that made it"):
        await QuotaLimiter(store, clock=FakeClock(T0)).commit(r, input_tokens=0, output_tokens=0)


async def test_local_limiter_same_semantics() -> None:
    clock = FakeClock(T0)
    limiter = LocalLimiter(clock=clock)
    plan = parse_plan_spec("requests=2/60s,input_tokens=100/60s")
    a = await reserve(limiter, plan, i=50)
    assert (await reserve(limiter, plan, i=50)).allowed
    assert not (await reserve(limiter, plan, i=1)).allowed
    await limiter.release(a)
    assert (await reserve(limiter, plan, i=50)).allowed
    clock.now = T0 + 60
    assert (await reserve(limiter, plan, i=100)).allowed
    assert limiter.store.backend == "memory"
    # Two local limiters share nothing (one per process).
    assert (await reserve(LocalLimiter(clock=clock), plan, i=100)).allowed


async def test_usage_above_a_reservation_settled_after_its_window_counts_in_the_window_of_now(store: Store) -> None:
    """The difference went to the window the reservation used: settled after that window ended, a
    long uncapped answer's overshoot limited nothing, and the next request was admitted."""
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock)
    plan = parse_plan_spec("output_tokens=20000/60s")
    reservation = await reserve(limiter, plan, o=4096)
    clock.advance(150)  # the answer ends two windows later
    await limiter.commit(reservation, input_tokens=0, output_tokens=100_000)
    assert not (await reserve(limiter, plan, o=1)).allowed  # the overshoot limits the window of now
    refund = await reserve(limiter, plan, o=4096)
    assert not refund.allowed
    clock.advance(60)
    smaller = await reserve(limiter, plan, o=4096)
    assert smaller.allowed
    clock.advance(120)
    await limiter.commit(smaller, input_tokens=0, output_tokens=10)  # a refund stays in its own window
    assert (await reserve(limiter, plan, o=19_000)).allowed


async def test_usage_of_a_call_that_reserved_no_tokens_counts(store: Store) -> None:
    """A pass-through call reserves one request and no tokens, so no token counter existed for its
    usage to be added to: what its answer showed (an image generation, a batch read) limited nothing."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=100/1h,output_tokens=1000/1h")
    call = await reserve(limiter, plan)
    await limiter.commit(call, input_tokens=0, output_tokens=50_000)
    assert not (await reserve(limiter, plan, o=1)).allowed


async def test_a_refund_never_lands_on_a_zion_counter_made_again_after_it_expired(store: Store) -> None:
    """A Zion-mode counter lives `window + margin` after its last increment: a reservation still
    running after that (a long stream) found, at its refund, the counter a later reservation had
    made again under the same name, and took that one's amount back (16,100 admitted of 10,000)."""
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock)
    ext = ExternalUsage(used=0, snapshot="s1", resets_at=T0 + 86400)
    plan = Plan("zion", (Limit("output_tokens", 1260, 10_000, ext),))
    first = await reserve(limiter, plan, o=8000)
    clock.advance(1320)  # the counter's TTL (1,260 s + the 60 s margin) passes while `first` streams
    await store.delete(*first.keys)  # what that TTL did (a test Redis keeps its own clock)
    second = await reserve(limiter, plan, o=8000)
    assert second.allowed and second.keys == first.keys
    await limiter.commit(first, input_tokens=0, output_tokens=100)  # `first` used 100 of its 8,000
    assert await counts(store, second) == [8000]
    assert not (await reserve(limiter, plan, o=8000)).allowed
    # A refund within the counter's life still lands (the usual case).
    await limiter.commit(second, input_tokens=0, output_tokens=100)
    assert await counts(store, second) == [100]


async def test_a_limit_of_0_bans_its_metric_and_nothing_else(store: Store) -> None:
    """`output_tokens=0/1d` (an embeddings-only plan) refused an embeddings request (no output) with
    a 429 and a Retry-After that never helped: `current + max(amount, 1) > 0` held for every amount."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=100/1m,output_tokens=0/1d")
    results = [await reserve(limiter, plan, i=20) for _ in range(3)]
    assert all(r.allowed for r in results)
    assert await counts(store, results[0]) == [3, 0]
    # The headers show the limit that is a budget, not the banned metric's "0 remaining".
    assert results[-1].decision.headers()["X-RateLimit-Limit"] == "100"
    assert results[-1].decision.remaining == 97
    assert (await limiter.peek("u1", plan)).allowed
    # Usage counted there anyway (a pass-through answer that showed output) bans nothing more.
    await limiter.commit(results[0], input_tokens=20, output_tokens=7)
    assert (await reserve(limiter, plan, i=20)).allowed
    # Any amount of the banned metric is refused as never admittable: no Retry-After.
    r = await reserve(limiter, plan, o=16)
    assert not r.allowed and r.decision.oversized and r.decision.retry_after is None
    assert r.decision.limited_by == Limit("output_tokens", 86400, 0)
    assert "allows no output tokens" in r.decision.message and "never be admitted" in r.decision.message
    assert "Retry-After" not in r.decision.headers() and r.decision.to_error().retry_after is None
    assert await counts(store, r) == [4, 7]


async def test_a_never_admittable_request_is_told_so_even_when_another_limit_refused_first(store: Store) -> None:
    """A Retry-After from an exhausted request limit would only lead to the oversized refusal."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=1/1m,output_tokens=0/1d")
    assert (await reserve(limiter, plan)).allowed
    assert not (await reserve(limiter, plan)).decision.oversized  # exhausted: retry in a minute
    r = await reserve(limiter, plan, o=5)
    assert not r.allowed and r.decision.oversized and r.decision.retry_after is None
    assert r.decision.limited_by == Limit("output_tokens", 86400, 0)


async def test_a_zion_limit_of_0_with_usage_admits_requests_needing_none(store: Store) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    ext = ExternalUsage(used=50, snapshot="s1", resets_at=T0 + 86400)
    plan = Plan("zion", (Limit("output_tokens", 1260, 0, ext), Limit("requests", 60, 100)))
    assert (await reserve(limiter, plan, i=10)).allowed
    refused = await reserve(limiter, plan, o=5)
    assert not refused.allowed and refused.decision.oversized and refused.decision.retry_after is None


async def test_a_held_reservation_is_settled_once_by_any_replica(store: Store) -> None:
    """A batch's reservation outlives the call that made it: held in the store, it is settled to the
    batch's usage by whichever replica first reads it — once, however many race to it — and a
    provider-refused batch's lines are given back but for one request."""
    clock = FakeClock(T0)
    making, reading = QuotaLimiter(store, clock=clock), QuotaLimiter(store, clock=clock)  # two replicas
    plan = parse_plan_spec("requests=100/1h,input_tokens=10000/1h,output_tokens=10000/1h")
    batch = await making.reserve("u1", plan, requests=20, input_tokens=3000, output_tokens=2000)
    assert await making.hold(batch, "batch_1", None)
    await making.commit(batch, input_tokens=0, output_tokens=0)  # held: no longer this call's to settle
    assert await counts(store, batch) == [20, 3000, 2000]
    assert not await reading.settle_held("u2", "batch_1", input_tokens=1, output_tokens=1)  # another user's name
    # A call on the held batch is checked against the request limits, with room for its own lines.
    assert await reading.beside_held("u1", "batch_1", plan) == Plan(plan.name, (Limit("requests", 3600, 120),))
    assert await reading.beside_held("u2", "batch_1", plan) is None
    settled = [await reading.settle_held("u1", "batch_1", input_tokens=2500, output_tokens=2600) for _ in range(2)]
    assert settled == [True, False]
    assert await reading.beside_held("u1", "batch_1", plan) is None  # (its settling call's mark is no reservation)
    assert await counts(store, batch) == [20, 2500, 2600]  # the usage replaced the estimate, once
    refused = await making.reserve("u1", plan, requests=20, input_tokens=3000, output_tokens=2000)
    await making.commit(refused, input_tokens=0, output_tokens=0, requests=1)
    assert await counts(store, batch) == [21, 2500, 2600]


async def test_a_held_batch_makes_room_only_for_the_lines_it_counted_in_the_window_now_current(store: Store) -> None:
    """The room a call on a held batch gets is what the batch counted in each request limit's
    current window: a window that ended since took the lines' count with it, and gives no room (the
    new window's count is the user's other calls alone); a Zion limit is never raised."""
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock)
    ext = ExternalUsage(used=0, snapshot="s1", resets_at=T0 + 86400)
    plan = Plan("p", (Limit("requests", 60, 30), Limit("requests", 86400, 100), Limit("requests", 3600, 50, ext),
                      Limit("output_tokens", 86400, 10_000)))
    batch = await limiter.reserve("u1", plan, requests=25, input_tokens=0, output_tokens=500)
    assert batch.decision.allowed and await limiter.hold(batch, "batch_1", None)
    assert await limiter.beside_held("u1", "batch_1", plan) == Plan("p", (
        Limit("requests", 60, 55), Limit("requests", 86400, 125), Limit("requests", 3600, 50, ext)))
    clock.advance(60)  # the minute's window ended: its count of the lines too
    assert await limiter.beside_held("u1", "batch_1", plan) == Plan("p", (
        Limit("requests", 60, 30), Limit("requests", 86400, 125), Limit("requests", 3600, 50, ext)))


async def test_a_held_reservation_on_zion_limits_leaves_its_in_flight_entry_when_settled(store: Store) -> None:
    """On Zion limits a running reservation has an in-flight entry a new reading starts its count at:
    held, it stays there until the batch is settled, then it is gone."""
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock)
    plan = Plan("zion", (Limit("input_tokens", 3600, 10_000, ExternalUsage(used=0, snapshot="s1")),))
    batch = await limiter.reserve("u1", plan, requests=5, input_tokens=4000, output_tokens=0)
    assert await limiter.hold(batch, "batch_1", 3600)
    later = Plan("zion", (Limit("input_tokens", 3600, 10_000, ExternalUsage(used=0, snapshot="s2")),))
    assert (await limiter.peek("u1", later)).states[0].used == 4000  # a new reading counts it, running
    assert await limiter.settle_held("u1", "batch_1", input_tokens=1000, output_tokens=0)
    newest = Plan("zion", (Limit("input_tokens", 3600, 10_000, ExternalUsage(used=1000, snapshot="s3")),))
    assert (await limiter.peek("u1", newest)).states[0].used == 1000  # settled: counted by Zion alone


# --- a settlement whose outcome is unknown is sent again, and counts once -------------------------
async def test_a_settlement_whose_reply_was_lost_is_sent_again_and_counts_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconciliation that ran but whose reply was lost (a read timeout) fails with its outcome
    unknown; sent again, it ran a second time and gave its refund twice — 450 output tokens free
    for a request that reserved 500 and used 50. Now the second run finds the reservation's marker
    gone and changes nothing, so sending it again is safe whatever the failure."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,input_tokens=1000/60s,output_tokens=1000/1h")
    other = await reserve(limiter, plan, i=100, o=500)  # another request of the same user, still running
    r = await reserve(limiter, plan, i=100, o=500)
    lost = LostReply(store, monkeypatch, "EVALSHA", "sentinel:quota:{u1}:")
    with pytest.raises(StoreUnavailable) as failed:
        await limiter.commit(r, input_tokens=130, output_tokens=50)
    assert lost.lost == 1 and not isinstance(failed.value, StoreRefused)  # it ran: the outcome is unknown
    await limiter.commit(r, input_tokens=130, output_tokens=50)  # sent again
    assert await counts(store, r) == [2, 230, 550]  # once: 100 + 130, 500 + 50
    await limiter.release(other)
    assert await counts(store, r) == [1, 130, 50]


async def test_a_give_back_sent_twice_gives_back_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,output_tokens=1000/1h")
    kept = await reserve(limiter, plan, o=300)
    r = await reserve(limiter, plan, o=300)
    LostReply(store, monkeypatch, "EVALSHA", "sentinel:quota:{u1}:")
    with pytest.raises(StoreUnavailable):
        await limiter.release(r)
    await limiter.release(r)
    assert await counts(store, kept) == [1, 300]  # the other request's reservation is still counted


async def test_a_zion_settlement_sent_twice_counts_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    ext = ExternalUsage(used=0, snapshot="s1", resets_at=T0 + 86400)
    plan = Plan("zion", (Limit("output_tokens", 86400, 10_000, ext), Limit("requests", 60, 100)))
    kept = await reserve(limiter, plan, o=400)
    r = await reserve(limiter, plan, o=400)
    LostReply(store, monkeypatch, "EVALSHA", "sentinel:quota:{u1}:")
    with pytest.raises(StoreUnavailable):
        await limiter.commit(r, input_tokens=0, output_tokens=100)
    await limiter.commit(r, input_tokens=0, output_tokens=100)
    assert await counts(store, kept) == [500, 2]
    later = Plan("zion", (Limit("output_tokens", 86400, 10_000, ExternalUsage(0, "s2", T0 + 86400)),))
    assert (await limiter.peek("u1", later)).states[0].used == 400  # the settled one's entry is gone, once


async def test_markers_go_with_their_settlement_and_a_peek_leaves_none(store: Store) -> None:
    """A reservation's marker lives until it is settled (even a settlement changing no counter: a
    plan of request limits alone) or until it expires: memory goes with the reservations in flight."""
    clock = FakeClock(T0)
    limiter = QuotaLimiter(store, clock=clock, settle_within=3600)
    plan = parse_plan_spec("requests=10/60s")
    await limiter.peek("u1", plan)
    assert await store.scan("sentinel:quota:{u1}:reserved:*") == []
    settled, running = await reserve(limiter, plan), await reserve(limiter, plan)
    assert sorted(await store.scan("sentinel:quota:{u1}:reserved:*")) == sorted([settled.marker, running.marker])
    assert 3500 < (await store.ttl(running.marker) or 0) <= 3600  # the longer of its own and its counters'
    await limiter.commit(settled, input_tokens=0, output_tokens=0)  # no counter changes
    assert await store.scan("sentinel:quota:{u1}:reserved:*") == [running.marker]
    assert (await reserve(limiter, plan, subject="u}x")).marker.startswith("sentinel:quota:{u%7Dx}:reserved:")


# --- a reservation whose own reply was lost is given back, once, only if it ran -------------------
ZION_DAY = Plan("zion", (Limit("output_tokens", 86400, 10_000, ExternalUsage(0, "s1", T0 + 86400)),
                         Limit("requests", 60, 100)))


@pytest.mark.parametrize("plan", [parse_plan_spec("output_tokens=1000/1h,requests=10/60s"), ZION_DAY],
                         ids=["plain", "zion"])
async def test_a_reservation_whose_reply_was_lost_is_given_back_once(
    store: Store, monkeypatch: pytest.MonkeyPatch, plan: Plan
) -> None:
    """The reservation script ran and its reply was lost (a read timeout): the request never heard
    of it, so nobody settled it — 300 output tokens and a request counted until the window ended
    for a request refused with a 503. Its token is made before it is sent, so the caller gets the
    reservation it may have made (`on_lost`); given back, it applies once however often sent."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    kept = await reserve(limiter, plan, o=300)  # another request of the user, still running
    lost: list[Reservation] = []
    LostReply(store, monkeypatch, "EVALSHA", "sentinel:quota:{u1}:")
    with pytest.raises(StoreUnavailable) as failed:
        await limiter.reserve("u1", plan, input_tokens=0, output_tokens=300, on_lost=lost.append)
    assert not isinstance(failed.value, StoreRefused)
    [r] = lost
    assert r.lost and r.marker and await counts(store, kept) == [600, 2]  # it ran: counted
    LostReply(store, monkeypatch, "EVALSHA", "sentinel:quota:{u1}:reserved:")  # the give-back's reply lost too
    with pytest.raises(StoreUnavailable):
        await limiter.release(r)
    await limiter.release(r)  # sent again
    assert await counts(store, kept) == [300, 1]  # given back once: the other's still counted
    if plan.external:
        later = Plan("zion", (Limit("output_tokens", 86400, 10_000, ExternalUsage(0, "s2", T0 + 86400)),))
        assert (await limiter.peek("u1", later)).states[0].used == 300  # its in-flight entry is gone
    # (the second send left a tombstone: a run of the reservation arriving now would count nothing)
    assert sorted(await store.scan("sentinel:quota:{u1}:reserved:*")) == sorted([kept.marker, r.marker])
    assert await store.get(r.marker) == b"0" and await store.get(kept.marker) == b"1"


async def test_a_lost_reservation_that_never_ran_gives_nothing_back_and_counts_nothing_if_it_runs_late(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reservation's outcome is unknown and it had not run (the connection cut before Redis read
    it — or its command still waiting to be read): the give-back finds no marker and changes
    nothing (no refund of another request's amounts), and leaves a tombstone in the marker's place,
    so the reservation arriving after it counts nothing."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,output_tokens=1000/1h")
    kept = await reserve(limiter, plan, o=300)
    real_run, late = store.run, []

    async def unsent(script: Any, keys: Any, args: Any) -> Any:
        late.append((script, keys, args))  # not run (yet)
        raise StoreUnavailable("Redis is unavailable: TimeoutError")

    monkeypatch.setattr(store, "run", unsent)
    lost: list[Reservation] = []
    with pytest.raises(StoreUnavailable):
        await limiter.reserve("u1", plan, input_tokens=0, output_tokens=300, on_lost=lost.append)
    monkeypatch.undo()
    await limiter.release(lost[0])
    assert await counts(store, kept) == [1, 300]  # nothing given back: it never ran
    [(script, keys, args)] = late
    await real_run(script, keys, args)  # the reservation reaches Redis after its give-back
    assert await counts(store, kept) == [1, 300]  # and counts nothing
    assert (await reserve(limiter, plan, o=700)).allowed  # the user still has all the rest


async def test_a_refused_reservation_is_no_lost_one(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reservation the store refused did not run: nothing to give back."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))

    async def refused(script: Any, keys: Any, args: Any) -> Any:
        raise StoreRefused("Redis is unavailable (circuit open)")

    monkeypatch.setattr(store, "run", refused)
    lost: list[Reservation] = []
    with pytest.raises(StoreRefused):
        await limiter.reserve("u1", parse_plan_spec("requests=10/60s"), input_tokens=0, output_tokens=0,
                              on_lost=lost.append)
    assert lost == []


async def test_a_reservation_cancelled_while_its_script_ran_is_a_lost_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request cancelled while its reservation was on its way (the server stopping; the script
    may have run): nobody would settle it. It is handed over as lost, and given back once."""
    limiter = QuotaLimiter(store, clock=FakeClock(T0))
    plan = parse_plan_spec("requests=10/60s,output_tokens=1000/1h")
    real_run, ran = store.run, asyncio.Event()

    async def run_then_wait(script: Any, keys: Any, args: Any) -> Any:
        await real_run(script, keys, args)
        ran.set()
        await asyncio.Event().wait()  # its reply never comes

    monkeypatch.setattr(store, "run", run_then_wait)
    lost: list[Reservation] = []
    task = asyncio.ensure_future(limiter.reserve("u1", plan, input_tokens=0, output_tokens=300, on_lost=lost.append))
    await ran.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.undo()
    [r] = lost
    assert await counts(store, r) == [1, 300]
    await limiter.release(r)
    assert await counts(store, r) == [0, 0]


async def test_local_counts_are_handed_back_once_even_when_the_reply_is_lost(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the in-process limiter (QUOTA_FAILURE_MODE=local) counted while Redis was away stayed in
    that process: Redis knew nothing of it, and the user had the whole plan again. It is now added to
    the shared counters once they answer — exactly once, though the first hand-back's reply was lost
    and it was sent again — and then taken off locally; a reservation still open here is handed back
    when it settles, as settled."""
    clock = FakeClock(T0)
    shared, local = QuotaLimiter(store, clock=clock), LocalLimiter(clock=clock)
    plan = parse_plan_spec("requests=5/60s,input_tokens=1000/1h")
    done = await reserve(local, plan, i=100)
    await local.commit(done, input_tokens=40, output_tokens=0)
    running = await reserve(local, plan, i=100)
    assert local.owing and local.owes("u1") and not local.owes("u2")
    lost = LostReply(store, monkeypatch, "EVALSHA", "sentinel:quota:{u1}:handed:")
    with pytest.raises(StoreUnavailable):
        await local.hand_back(shared)
    assert lost.lost == 1
    await local.hand_back(shared, "u1")  # sent again: it counts once
    assert await counts(store, done) == [1, 40]
    assert await counts(local.store, done) == [1, 100]  # what is still open stays here
    await local.commit(running, input_tokens=30, output_tokens=0)
    await local.hand_back(shared)
    assert await counts(store, done) == [2, 70] and await counts(local.store, done) == [0, 0]
    await local.hand_back(shared)
    assert not local.owing  # nothing left: the user is forgotten
    for key in done.keys:  # a counter made by the hand-back lives as its window's would
        assert 0 < (await store.ttl(key) or 0) <= 3600 + 60
    # On Redis the user has what is left of the plan, not the whole of it again.
    assert [(await reserve(shared, plan, i=1)).allowed for _ in range(4)] == [True, True, True, False]


async def test_a_window_ended_before_redis_answers_is_not_handed_back(store: Store) -> None:
    clock = FakeClock(T0)
    shared, local = QuotaLimiter(store, clock=clock), LocalLimiter(clock=clock)
    plan = parse_plan_spec("requests=5/60s,requests=50/1h")
    await local.commit(await reserve(local, plan), input_tokens=0, output_tokens=0)
    clock.advance(60)  # the minute ended; the hour goes on
    await local.hand_back(shared)
    minute, hour = (f"sentinel:quota:{{u1}}:requests:{w}:{int(T0) // w}" for w in (60, 3600))
    assert await store.get(minute) is None and await store.get(hour) == b"1"
    later = await reserve(local, plan)
    await local.commit(later, input_tokens=0, output_tokens=0)
    clock.advance(3600)  # both of its windows ended before Redis answered: nothing is sent
    await local.hand_back(shared)
    assert [await store.get(key) for key in later.keys] == [None, b"1"]  # (the hour's: the first hand-back's)
    assert await store.scan("sentinel:quota:{u1}:handed:*") != [] and not local.owing
