"""The failed-authentication throttle shared by every process on one store (Redis): failures counted
through one count in all, the in-memory store's count stays in its process, an outage falls back to
each process's own count."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
import redis

from sentinel.api.throttle import PREFIX, FailedAuthThrottle, shared_key
from sentinel.errors import AuthenticationError, RateLimited, StoreUnavailable
from sentinel.store import MemoryStore, Script, Store
from sentinel.store.base import ScriptArg
from sentinel.store.redis import RedisStore
from tests.api.conftest import Gateway
from tests.support.clock import FakeClock
from tests.support.servers import free_port

ADDRESS = "198.51.100.20"
MINUTE = 1_700_000_040.0  # the start of a minute (a multiple of 60)


@pytest.fixture
async def two_stores(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two processes' connections to one Redis."""
    first, second = RedisStore(redis_url, timeout=5.0), RedisStore(redis_url, timeout=5.0)
    yield first, second
    await first.close()
    await second.close()


async def _refused(throttle: FailedAuthThrottle, address: str = ADDRESS) -> bool:
    try:
        await throttle.check(address)
    except RateLimited:
        return True
    return False


async def test_failures_counted_by_one_process_count_in_the_other(two_stores: tuple[RedisStore, RedisStore]) -> None:
    """Each process counted its own failures: two replicas on one Redis admitted twice the limit."""
    clock = FakeClock(MINUTE + 5)
    one = FailedAuthThrottle(3, clock=clock, store=two_stores[0])
    other = FailedAuthThrottle(3, clock=clock, store=two_stores[1])
    await one.failed(ADDRESS)
    await other.failed(ADDRESS)
    assert not await _refused(one) and not await _refused(other)
    await one.failed(ADDRESS)
    assert await _refused(other) and await _refused(one)
    assert not await _refused(other, "198.51.100.21")  # another client
    assert not await _refused(other, "cross-origin " + ADDRESS)  # the address's second bucket
    clock.advance(55)  # the next minute: a fresh count
    assert not await _refused(other) and not await _refused(one)


async def test_the_shared_count_lives_one_minute_in_the_store(redis_url: str,
                                                               two_stores: tuple[RedisStore, RedisStore]) -> None:
    clock = FakeClock(MINUTE + 30)
    throttle = FailedAuthThrottle(5, clock=clock, store=two_stores[0])
    await throttle.failed("2001:db8:9:9::1")
    await throttle.failed("2001:db8:9:9::2")  # the same /64: one client
    key = shared_key(int(MINUTE // 60), "2001:db8:9:9::/64")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.get(key) == b"2"
        assert 0 < client.pttl(key) <= 60_000  # gone once its minute is over (set on the first failure)
        assert [k.decode() for k in client.scan_iter(match=PREFIX + "*")] == [key]
    finally:
        client.close()


async def test_a_client_at_its_limit_through_another_process_is_refused_here_after_one_read(
    two_stores: tuple[RedisStore, RedisStore],
) -> None:
    """The check before a lookup reads the shared count: a client at its limit through another
    replica gets no lookup here, and this process then refuses it without asking the store again."""
    clock = FakeClock(MINUTE)
    one = FailedAuthThrottle(2, clock=clock, store=two_stores[0])
    other = FailedAuthThrottle(2, clock=clock, store=two_stores[1])
    await other.failed(ADDRESS)
    await other.failed(ADDRESS)
    asked: list[str] = []
    real_get = two_stores[0].get

    async def counted(key: str) -> bytes | None:
        asked.append(key)
        return await real_get(key)

    two_stores[0].get = counted  # type: ignore[method-assign]
    with pytest.raises(RateLimited) as refused:
        await one.check(ADDRESS)
    assert refused.value.code == "auth_rate_limited" and refused.value.retry_after == 60
    with pytest.raises(RateLimited):
        await one.check(ADDRESS)
    with pytest.raises(RateLimited):
        one.check_here(ADDRESS)  # what this process learnt holds for requests that ask no store
    assert len(asked) == 1


async def test_concurrent_made_up_tokens_wait_for_the_shared_count_too(
    two_stores: tuple[RedisStore, RedisStore],
) -> None:
    """A failure is in this process's count before the store's round trip: the lookups waiting for a
    turn, woken as a failed one ends, do not pass while the store is still counting it."""
    import asyncio

    throttle = FailedAuthThrottle(3, clock=FakeClock(MINUTE), store=two_stores[0])
    release, three_in = asyncio.Event(), asyncio.Event()
    looked_up = 0

    async def made_up() -> str:
        nonlocal looked_up
        try:
            async with throttle.lookup(ADDRESS):
                looked_up += 1
                if looked_up == 3:
                    three_in.set()
                await release.wait()
                raise AuthenticationError()
        except AuthenticationError:
            await throttle.failed(ADDRESS)
            return "401"
        except RateLimited:
            return "429"

    tasks = [asyncio.create_task(made_up()) for _ in range(12)]
    await three_in.wait()
    release.set()
    assert sorted(await asyncio.gather(*tasks)) == ["401"] * 3 + ["429"] * 9
    assert looked_up == 3
    assert await _refused(FailedAuthThrottle(3, clock=FakeClock(MINUTE), store=two_stores[1]))


class _Recording:
    """A shared store that records the keys the throttle reads and counts (and can fail)."""

    backend = "recording"
    shared = True

    def __init__(self, inner: Store, *, down: bool = False) -> None:
        self.inner = inner
        self.down = down
        self.keys: list[str] = []

    async def get(self, key: str) -> bytes | None:
        self.keys.append(key)
        if self.down:
            raise StoreUnavailable("Redis is unavailable (circuit open)")
        return await self.inner.get(key)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        self.keys.extend(keys)
        if self.down:
            raise StoreUnavailable("Redis is unavailable (circuit open)")
        return await self.inner.run(script, keys, args)


async def test_a_store_outage_falls_back_to_each_processs_own_count() -> None:
    """Neither locked out nor let through: while the store cannot answer, the process counts alone."""
    store = _Recording(MemoryStore(), down=True)
    throttle = FailedAuthThrottle(3, clock=FakeClock(MINUTE), store=store)  # type: ignore[arg-type]
    for _ in range(2):
        await throttle.check(ADDRESS)  # not refused for want of an answer
        await throttle.failed(ADDRESS)
    await throttle.check(ADDRESS)
    await throttle.failed(ADDRESS)
    assert await _refused(throttle)  # still counted: the third failure reached the limit
    assert store.keys  # the store was asked, and failed


async def test_a_dead_redis_falls_back_to_the_local_count() -> None:
    """The real thing: a Redis nobody listens on (connection refused, then the breaker open)."""
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        throttle = FailedAuthThrottle(2, clock=FakeClock(MINUTE), store=dead)
        await throttle.check(ADDRESS)
        await throttle.failed(ADDRESS)
        await throttle.check(ADDRESS)
        await throttle.failed(ADDRESS)
        assert await _refused(throttle)
        assert not await _refused(throttle, "198.51.100.21")
    finally:
        await dead.close()


async def test_the_in_memory_store_keeps_the_count_in_its_process() -> None:
    """The embedded default (one process) counts in the throttle's table, as before: the store is
    never asked, and a second throttle on the same store counts apart."""
    inner = MemoryStore()
    store = _Recording(inner)
    store.shared = False  # as MemoryStore says of itself
    one = FailedAuthThrottle(2, clock=FakeClock(MINUTE), store=store)  # type: ignore[arg-type]
    other = FailedAuthThrottle(2, clock=FakeClock(MINUTE), store=inner)
    assert one.store is None and other.store is None
    await one.failed(ADDRESS)
    await one.failed(ADDRESS)
    assert await _refused(one)
    assert not await _refused(other)
    assert store.keys == [] and await inner.scan(PREFIX + "*") == []


def test_a_long_client_name_is_stored_under_a_digest() -> None:
    odd = "x" * 500
    assert shared_key(7, odd).startswith(PREFIX + "7:sha256:") and len(shared_key(7, odd)) < 100
    assert shared_key(7, "cross-origin 2001:db8::/64") == PREFIX + "7:cross-origin 2001:db8::/64"


# --- through HTTP: two Sentinels on one Redis -----------------------------------------------------

def _recording_throttles(monkeypatch: pytest.MonkeyPatch) -> list[FailedAuthThrottle]:
    """The throttles of the gateways started next, as made (their clock is the gateway's
    `window_clock`: a still one keeps a test's failures in one minute)."""
    made: list[FailedAuthThrottle] = []

    def make(*args: Any, **kw: Any) -> FailedAuthThrottle:
        made.append(FailedAuthThrottle(*args, **kw))
        return made[-1]

    monkeypatch.setattr("sentinel.app.FailedAuthThrottle", make)
    return made


def _wrong(gw: Gateway, n: int) -> httpx.Response:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        return http.get("/v1/models", headers={"Authorization": f"Bearer sk-sentinel-made-up-{n}"})


def test_two_sentinels_on_one_redis_share_the_failed_authentication_limit(
    gateway_factory: Callable[..., Gateway], redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two replicas on one Redis admitted 2 x SENTINEL_AUTH_FAILURES_PER_MINUTE wrong keys a minute
    from one address (each counted its own): 3 wrong keys through the first and 1 through the second
    left both serving lookups. They count one total now."""
    throttles = _recording_throttles(monkeypatch)
    clock = FakeClock()  # one minute for both: the count is theirs together
    first = gateway_factory(redis_url=redis_url, auth_failures_per_minute=4, window_clock=clock)
    second = gateway_factory(redis_url=redis_url, auth_failures_per_minute=4, window_clock=clock)
    assert [_wrong(first, n).status_code for n in range(3)] == [401] * 3
    assert _wrong(second, 3).status_code == 401
    for gw, n in ((second, 4), (first, 5)):
        refused = _wrong(gw, n)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "auth_rate_limited"
        assert refused.json()["error"]["type"] == "rate_limit_error"
    # An Anthropic-shaped refusal on /v1/messages from the same address, through the second.
    with httpx.Client(base_url=second.url, timeout=30) as http:
        messages = http.post("/v1/messages", headers={"x-api-key": "sk-sentinel-made-up-6"},
                             json={"model": "claude-3-5-haiku", "max_tokens": 5, "messages": []})
    assert messages.status_code == 429 and messages.json()["error"]["type"] == "rate_limit_error"
    assert len(throttles) == 2 and all(t.store is not None for t in throttles)


def test_a_cached_key_costs_the_throttle_no_store_round_trip(
    gateway_factory: Callable[..., Gateway], redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hot path stays free: a key whose identity is cached asks the throttle nothing of the
    store, nor does a request without any credential; a wrong key reads and counts its client."""
    throttles = _recording_throttles(monkeypatch)
    gw = gateway_factory(redis_url=redis_url, auth_failures_per_minute=4, window_clock=FakeClock())
    (throttle,) = throttles
    assert throttle.store is not None
    recording = _Recording(throttle.store)
    throttle.store = recording  # type: ignore[assignment]
    with gw.client() as http:
        assert http.get("/v1/models").status_code == 200  # looked up once: the check before it reads the count
        asked = len(recording.keys)
        assert [http.get("/v1/models").status_code for _ in range(5)] == [200] * 5  # cached now
        assert http.get("/v1/models", headers={"Authorization": ""}).status_code == 401
    assert len(recording.keys) == asked == 1
    assert _wrong(gw, 1).status_code == 401
    assert len(recording.keys) == asked + 2  # the check, then the count
    assert all(key.startswith(PREFIX) for key in recording.keys)
