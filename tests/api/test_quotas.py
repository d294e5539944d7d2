"""Quotas over HTTP: limits bite, headers are sent, usage lands in the ledger exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import Gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "quota please"}]}


def set_plan(database_url: str, external_id: str, plan: str, spec: str) -> None:
    from sentinel.db.engine import create_engine, migrate, session_factory
    from sentinel.domain.plans import parse_limits
    from sentinel.governance.plans import PlanRepository

    async def go() -> None:
        engine = create_engine(database_url)
        try:
            await migrate(engine)
            repo = PlanRepository(session_factory(engine))
            await repo.set_plan(plan, parse_limits(spec))
            await repo.set_user_plan(external_id, plan)
        finally:
            await engine.dispose()

    asyncio.run(go())


def ledger_totals(database_url: str, external_id: str) -> dict[str, int]:
    from sentinel.db.engine import create_engine, session_factory
    from sentinel.governance.ledger import SqlLedger

    async def go() -> list[dict]:
        engine = create_engine(database_url)
        try:
            return await SqlLedger(session_factory(engine)).totals(external_id)
        finally:
            await engine.dispose()

    rows = asyncio.run(go())
    return {k: sum(r[k] for r in rows) for k in ("requests", "input_tokens", "output_tokens")}


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


def test_request_limit_bites_with_headers(gateway_factory: Callable[..., Gateway], store_url: str | None) -> None:
    gw = gateway_factory(redis_url=store_url)
    set_plan(gw.settings.database_url, "alice", "tiny", "requests=3/1m")
    with gw.client() as http:
        answers = [http.post("/v1/chat/completions", json=CHAT) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in answers[:3]] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in answers)
    denied = answers[3]
    assert int(denied.headers["retry-after"]) >= 1
    assert int(denied.headers["x-ratelimit-reset"]) > time.time()
    error = denied.json()["error"]
    assert error["type"] == "rate_limit_error" and "requests" in error["message"]


def test_token_limits_have_their_own_counters(gateway_factory: Callable[..., Gateway], store_url: str | None) -> None:
    gw = gateway_factory(redis_url=store_url)
    set_plan(gw.settings.database_url, "alice", "tokens", "requests=1000/1m,input_tokens=40/1m,output_tokens=100000/1m")
    with gw.client() as http:
        statuses = []
        for _ in range(6):
            r = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 50})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert "input tokens" in r.json()["error"]["message"]
                break
    assert statuses[0] == 200 and statuses[-1] == 429


def test_plan_change_applies_within_cache_ttl(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(cache_ttl_seconds=1)
    set_plan(gw.settings.database_url, "alice", "one", "requests=1/1m")
    with gw.client() as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 429
        set_plan(gw.settings.database_url, "alice", "more", "requests=50/1h")
        time.sleep(1.2)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_default_plan_applies_to_users_without_one(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(default_plan="requests=2/1m")
    with gw.client() as http:
        codes = [http.post("/v1/chat/completions", json=CHAT).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_usage_reaches_the_ledger_exactly(gateway_factory: Callable[..., Gateway], store_url: str | None) -> None:
    gw = gateway_factory(redis_url=store_url, usage_flush_interval_seconds=0.1)
    seen = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    client = gw.openai()
    for i in range(3):
        result = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"usage number {i}"}]
        )
        seen["requests"] += 1
        seen["input_tokens"] += result.usage.prompt_tokens
        seen["output_tokens"] += result.usage.completion_tokens
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "streamed usage"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage][0]
    seen["requests"] += 1
    seen["input_tokens"] += usage.prompt_tokens
    seen["output_tokens"] += usage.completion_tokens
    assert wait_for(lambda: ledger_totals(gw.settings.database_url, "alice") == seen), (
        ledger_totals(gw.settings.database_url, "alice"),
        seen,
    )
    with httpx.Client(base_url=gw.url) as http:
        metrics = http.get("/metrics").text
    assert 'sentinel_tokens_total{direction="input",model="gpt-4o-mini"}' in metrics


def test_reused_client_request_id_still_counts_every_request(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    with gw.client() as http:
        answers = [http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "same-id"}) for _ in range(3)]
    assert all(r.status_code == 200 and r.headers["x-request-id"] == "same-id" for r in answers)
    assert wait_for(lambda: ledger_totals(gw.settings.database_url, "alice")["requests"] == 3)
