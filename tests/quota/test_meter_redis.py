"""QuotaMeter on a real Redis: a request's settlement (the quota script) and its usage record (the
stream entry) are issued together and travel in one round trip; both land."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from sentinel.domain.identity import Identity
from sentinel.domain.plans import Limit, Plan
from sentinel.domain.policies import QuotaFailureMode
from sentinel.domain.usage import Usage
from sentinel.errors import StoreRefused
from sentinel.observability.metrics import Metrics
from sentinel.quota.limiter import QuotaLimiter
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.quota.meter import QuotaMeter
from sentinel.quota.outbox import RedisStreamOutbox
from sentinel.quota.tokens import TokenCounter
from sentinel.store.redis import RedisStore
from tests.conftest import REDIS_BIN, unavailable
from tests.quota.test_meter import PLAN, FakePlans, no_encodings, payload
from tests.support.process import RedisServerProcess

ALICE = Identity("alice", "u1", email="alice@example.com")


async def test_the_settlement_and_the_usage_record_share_one_round_trip(redis_url: str) -> None:
    store = RedisStore(redis_url)
    limiter = QuotaLimiter(store)
    plans = FakePlans(PLAN)
    meter = QuotaMeter(
        plans=plans, limiter=limiter, local_limiter=LocalLimiter(), failure_mode=QuotaFailureMode.closed,
        counter=TokenCounter(loader=no_encodings), outbox=RedisStreamOutbox(store),  # type: ignore[arg-type]
        metrics=Metrics(), default_max_output=300,
    )  # fmt: skip
    client = aioredis.Redis.from_url(redis_url)
    try:
        await store.stream_add("s:warm", {"w": b"1"})  # scripts loaded, connection open: no extra rounds
        warm = await meter.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=payload(), request_id="r0")
        await meter.settle(warm, usage=Usage(1, 1), output_text="", status=200, provider="openai")
        admission = await meter.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=payload(), request_id="r1")
        pipeline = store._pipeline  # noqa: SLF001 - the store's own auto-pipeline, observed
        assert pipeline is not None
        sends, commands = pipeline.sends, pipeline.commands
        await meter.settle(admission, usage=Usage(7, 11), output_text="", status=200, provider="openai")
        assert (pipeline.sends - sends, pipeline.commands - commands) == (1, 2)
        used = {s.limit.metric: s.used for s in (await limiter.peek("alice", plans.plan)).states}
        assert used == {"requests": 2, "input_tokens": 8, "output_tokens": 12}
        entries = await client.xrange(RedisStreamOutbox.KEY)
        assert [orjson.loads(fields[b"r"])["request_id"] for _, fields in entries] == ["r0", "r1"]
    finally:
        await client.aclose()
        await store.close()


async def test_a_held_settlement_runs_on_a_full_redis(tmp_path: Path) -> None:
    """A full Redis (`maxmemory` under `noeviction`) refuses a script whose first write is one that
    may take memory (SET, INCRBY) but lets a script that already wrote go on: a batch's held
    settlement, which frees memory (a record replaced by a short mark, a marker deleted), still runs
    there, as a reconciliation does — its first write is the marker's DEL."""
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as server:
        store = RedisStore(server.url)
        limiter = QuotaLimiter(store)
        plan = Plan("p", (Limit("requests", 3600, 100), Limit("output_tokens", 3600, 10_000)))
        held = await limiter.reserve("u1", plan, input_tokens=0, output_tokens=500)
        assert await limiter.hold(held, "batch_1", None)
        admin = redis.Redis(port=server.port)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            with pytest.raises(StoreRefused):  # (Redis is full indeed)
                await limiter.reserve("u1", plan, input_tokens=0, output_tokens=1)
            assert await limiter.settle_held("u1", "batch_1", input_tokens=0, output_tokens=80)
        finally:
            admin.config_set("maxmemory", "0")
        assert [int(admin.get(key) or 0) for key in held.keys] == [1, 80]
        admin.close()
        await store.close()
