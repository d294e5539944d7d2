"""A PostgreSQL that accepts connections but never answers (its host hung, packets dropped): every
wait on it is bounded by DATABASE_TIMEOUT_SECONDS, so a request is answered — 503 in its surface's
shape (529 on /v1/messages) when it needs the database (an API key not cached), 200 when it does not (its usage record
kept in memory) — and its in-flight slot is given back; the readiness probe says 503.

Before, the engine's own bounds applied (10 s to connect or wait for a pooled connection, 30 s a
statement, the pre-ping of a pooled connection included): a cached key's answer waited ~40 s for
its usage record (the ledger, then the SQL outbox on the same database), the probe ~30 s. The
clients here wait 20 s: the bound, not a timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from sqlalchemy import text

from sentinel.db.engine import create_engine, migrate
from tests.api.conftest import Gateway
from tests.db.support import SENTINEL_TABLES
from tests.support.accounts import create_key, ledger_request_ids
from tests.support.hung_db import hung_proxy
from tests.support.metrics import metric
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-3-5-haiku-latest", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


async def _empty(url: str) -> None:
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(SENTINEL_TABLES)} RESTART IDENTITY CASCADE"))
    await engine.dispose()


def _client(gw: Gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=20)


def test_a_hung_database_is_a_bounded_503_and_frees_the_slot(
    gateway_factory: Callable[..., Gateway], pg_url: str
) -> None:
    asyncio.run(_empty(pg_url))
    with hung_proxy(pg_url) as (proxy, url):
        gw = gateway_factory(database_url=url, database_timeout_seconds=0.5)
        with _client(gw, gw.key) as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # the key is cached now
        _, uncached = asyncio.run(create_key(pg_url, "bob"))
        proxy.hang()

        with _client(gw, gw.key) as client:
            answer = client.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200, answer.text  # its usage record waits in memory

        with _client(gw, uncached) as client:
            refused = client.post("/v1/chat/completions", json=CHAT)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "governance_unavailable"
            refused = client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": uncached})
            assert refused.status_code == 529  # Sentinel's 503s, as Anthropic sends them
            assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "overloaded_error"

        ready = httpx.get(gw.url + "/health/ready", timeout=20)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"]["status"] == "unhealthy"
        assert metric(gw.url, "sentinel_requests_in_flight") == 0

        proxy.resume()  # back: the record memory held reaches the ledger
        assert wait_for(lambda: len(asyncio.run(ledger_request_ids(pg_url))) == 2, timeout=30)


async def test_the_operators_usage_reports_may_run_longer_than_a_request_may_wait(pg_url: str) -> None:
    """DATABASE_TIMEOUT_SECONDS bounds every statement a request waits on; an export or a top list of
    a large ledger (`/admin/export.csv`, `/admin/api/usage.csv`, the console) reads it whole, and was
    cut at that bound too (503 where it had been a slow answer). The reports have their own sessions,
    whose statements are bounded by DATABASE_REPORT_TIMEOUT_SECONDS (120 s) instead; the requests'
    stay bounded."""
    from sqlalchemy.exc import SQLAlchemyError

    from sentinel.app import create_app
    from sentinel.config import Settings

    await _empty(pg_url)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=pg_url, access_log=False, redis_url=None,
        # 1 s, not less: start-up's own connects and statements wait on it too (a busy CI machine
        # took more than 0.2 s for one), and the statements below sleep well past it.
        openai_api_url="http://127.0.0.1:9/v1", openai_api_key="k", database_timeout_seconds=1.0,
    )
    app = create_app(settings)
    await app.startup()
    try:
        assert app.runtime is not None and app.runtime.admin is not None
        admin = app.runtime.admin
        async with admin.reports.ledger._sessions() as session:
            await session.execute(text("SELECT pg_sleep(2.5)"))  # a long report: answered
        try:
            async with admin.ledger._sessions() as session:
                await session.execute(text("SELECT pg_sleep(2.5)"))
        except (SQLAlchemyError, TimeoutError):
            pass  # what a request waits on is bounded
        else:
            raise AssertionError("a request's statement outlasted DATABASE_TIMEOUT_SECONDS")
    finally:
        await app.shutdown()


def test_an_operators_usage_report_on_a_hung_database_is_a_bounded_503(
    gateway_factory: Callable[..., Gateway], pg_url: str
) -> None:
    """The reports' own sessions had no statement bound at all: on a database that accepts
    connections and never answers, an export (`/admin/api/usage.csv`, `/admin/export.csv`), the
    totals and the top lists waited until their caller gave up — the pre-ping of the pooled report
    connection alone never returned. DATABASE_REPORT_TIMEOUT_SECONDS bounds them now (longer than a
    request's bound: a large ledger's export is still answered): past it, 503 in the admin API's
    shape. The client waits 20 s: the bound, not a timing."""
    from tests.api.test_admin_api import ADMIN_KEY

    asyncio.run(_empty(pg_url))
    with hung_proxy(pg_url) as (proxy, url):
        gw = gateway_factory(database_url=url, admin_key=ADMIN_KEY, database_timeout_seconds=0.5,
                             database_report_timeout_seconds=1.0)
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=20) as admin:
            assert admin.get("/admin/api/usage.csv").status_code == 200  # a report connection is pooled
            assert admin.get("/admin/api/usage/totals", params={"user": "alice"}).status_code == 200
            proxy.hang()
            for path, params in (("/admin/api/usage.csv", {}), ("/admin/api/usage/totals", {"user": "alice"})):
                refused = admin.get(path, params=params)
                assert refused.status_code == 503, (path, refused.status_code, refused.text)
                assert refused.json()["error"]["code"] == "governance_unavailable"
            proxy.resume()
            assert wait_for(lambda: admin.get("/admin/api/usage.csv").status_code == 200, timeout=30)
