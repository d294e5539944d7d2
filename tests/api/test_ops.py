"""Health probes and Prometheus metrics over HTTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from sentinel.api.ops import OpsRoutes
from sentinel.api.throttle import FailedAuthThrottle
from sentinel.errors import SentinelError, StoreUnavailable
from sentinel.observability.metrics import Metrics
from sentinel.store import MemoryStore, Ping
from tests.api.conftest import Gateway
from tests.support.clock import FakeClock
from tests.support.metrics import sample_sum
from tests.support.servers import free_port
from tests.support.waiting import until


def test_health_endpoints(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        health = http.get("/health").json()
        assert http.get("/health/live").json() == {"status": "healthy"}
        assert http.get("/health/ready").status_code == 200
    assert health["status"] == "healthy"
    assert health["checks"]["store"]["backend"] == "memory"
    assert health["checks"]["database"]["status"] == "healthy"
    assert health["uptime_seconds"] >= 0 and health["version"]


def test_ready_is_503_when_redis_is_unreachable(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with httpx.Client(base_url=gw.url) as http:
        ready = http.get("/health/ready")
        live = http.get("/health/live")
        health = http.get("/health")
    assert ready.status_code == 503
    assert live.status_code == 200
    assert health.status_code == 503 and health.json()["checks"]["store"]["status"] == "unhealthy"


def test_metrics_exposition(gateway: Gateway) -> None:
    with gateway.client() as http:
        http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "m"}]})
        text = http.get("/metrics").text
    for name in (
        "sentinel_http_requests_total",
        "sentinel_http_request_duration_seconds_bucket",
        "sentinel_upstream_duration_seconds_bucket",
        "sentinel_overhead_seconds_bucket",
        "sentinel_cache_lookups_total",
    ):
        assert name in text, name
    assert 'route="/v1/chat/completions"' in text


class _PartlyDownCluster(MemoryStore):
    """A store whose ping reports some nodes down (a Redis Cluster with a dead primary), or all."""

    backend = "redis-cluster"

    def __init__(self, unreachable: tuple[str, ...], *, down: bool = False) -> None:
        super().__init__()
        self.unreachable = unreachable
        self.down = down

    async def ping(self) -> Ping:
        if self.down:
            raise StoreUnavailable("Redis is unavailable: no primary of the cluster answered")
        return Ping(0.001, self.unreachable)


@pytest.mark.parametrize(
    ("store", "status", "code"),
    [
        (_PartlyDownCluster(()), "healthy", 200),
        (_PartlyDownCluster(("10.0.0.2:7001",)), "degraded", 200),
        (_PartlyDownCluster((), down=True), "unhealthy", 503),
    ],
)
async def test_a_cluster_with_a_dead_primary_is_degraded_but_ready(
    tmp_path: Path, store: _PartlyDownCluster, status: str, code: int
) -> None:
    """Every replica sees the same dead primary: readiness stays 200 (taking them all out of
    rotation would refuse every user, not only that primary's), and says which node is down."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    app = Starlette(routes=OpsRoutes(store, engine, Metrics()).routes())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as http:
            ready, health = await http.get("/health/ready"), await http.get("/health")
    finally:
        await engine.dispose()
    for answer in (ready, health):
        assert answer.status_code == code
        assert answer.json()["status"] == status
    check = ready.json()["checks"]["store"]
    assert check["status"] == status and check["backend"] == "redis-cluster"
    assert check.get("unreachable_nodes", 0) == len(store.unreachable)
    assert "10.0.0.2" not in ready.text and "10.0.0.2" not in health.text  # public: no node addresses


class _FailingStore(MemoryStore):
    """A store whose ping fails with a message quoting a node, as a Redis Cluster redirection does."""

    async def ping(self) -> Ping:
        raise StoreUnavailable("Redis command failed: MOVED 1234 10.0.0.5:6379")


async def test_a_failing_store_check_does_not_quote_the_store_publicly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`/health` is public: it returned the driver's message, with a node's address in it."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    app = Starlette(routes=OpsRoutes(_FailingStore(), engine, Metrics()).routes())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as http:
            with caplog.at_level("WARNING", logger="sentinel.health"):
                answers = [await http.get("/health"), await http.get("/health/ready")]
    finally:
        await engine.dispose()
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["checks"]["store"] == {"status": "unhealthy", "backend": "memory", "error": "unreachable"}
        assert "10.0.0.5" not in answer.text and "MOVED" not in answer.text
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert any("10.0.0.5" in str(getattr(r, "error", "")) for r in caplog.records)  # the operator still sees it


def test_a_made_up_method_is_counted_as_other_not_a_series_of_its_own(gateway: Gateway) -> None:
    """The `method` label was whatever the client sent (a 405 is answered before authentication):
    34 made-up methods on every route grew /metrics from 3.5 KB to 171 KB. The usual methods keep
    their name; any other is "other"."""
    with httpx.Client(base_url=gateway.url) as http:
        for method in ("PROPFIND", "MKCOL", "PURGE", "LOCK"):
            assert http.request(method, "/v1/chat/completions").status_code == 405
        assert http.request("DELETE", "/v1/chat/completions").status_code == 405
        text = http.get("/metrics").text
    methods = set(re.findall(r'sentinel_http_requests_total\{[^}]*method="([^"]*)"', text))
    assert methods == {"DELETE", "other"}, methods
    assert sample_sum(text, "sentinel_http_requests_total", route="/v1/chat/completions", method="other") == 4


class _FlakyStore(MemoryStore):
    """A store whose ping fails while `down`."""

    down = True

    async def ping(self) -> Ping:
        if self.down:
            raise StoreUnavailable("Redis is unavailable: connection refused")
        return Ping(0.001, ())


async def test_a_store_down_is_logged_once_a_minute_not_once_a_probe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every unauthenticated `/health` logged a warning while the store was down: a log flood at
    whatever rate a client probes. Its failure is logged when first seen, then once a minute, and its
    return once."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    store, clock = _FlakyStore(), FakeClock()
    app = Starlette(routes=OpsRoutes(store, engine, Metrics(), clock=clock).routes())

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "sentinel.health"]

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as http:
            with caplog.at_level("INFO", logger="sentinel.health"):
                statuses = [(await http.get(path)).status_code for path in ["/health", "/health/ready"] * 50]
                assert logged() == ["health check: the store is unavailable"]
                clock.advance(59.9)
                await http.get("/health")
                assert len(logged()) == 1
                clock.advance(0.1)
                await http.get("/health")
                assert logged() == ["health check: the store is unavailable"] * 2
                store.down = False
                back = [(await http.get("/health")).status_code for _ in range(3)]
                store.down = True
                await http.get("/health")  # down again: said at once
    finally:
        await engine.dispose()
    assert statuses == [503] * 100 and back == [200] * 3
    assert logged() == ["health check: the store is unavailable"] * 2 + [
        "health check: the store answers again", "health check: the store is unavailable"]


class _GatedStore(MemoryStore):
    """A store whose ping waits until the test opens the gate, counting pings and pingers waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.pings = 0

    async def ping(self) -> Ping:
        self.pings += 1
        await self.gate.wait()
        return Ping(0.001, ())


async def test_probes_arriving_together_share_one_check(tmp_path: Path) -> None:
    """The probes are public and not under the in-flight cap: each ran a PING and a `SELECT 1` of
    its own, so a flood of unauthenticated `/health` held the database pool (users' key lookups
    waited for a connection). Probes arriving while a check runs share it — one that leaves does not
    cancel it for the others — and a later probe checks again (nothing is cached)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    selects = 0

    def count(*_: object) -> None:
        nonlocal selects
        selects += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    store = _GatedStore()
    entered = 0

    class CountingOps(OpsRoutes):
        async def _checks(self) -> dict[str, dict[str, Any]]:
            nonlocal entered
            entered += 1
            return await super()._checks()

    app = Starlette(routes=CountingOps(store, engine, Metrics()).routes())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as http:
            probes = [asyncio.create_task(http.get(path)) for path in ["/health", "/health/ready"] * 10]
            await until(lambda: entered == len(probes))  # every probe waits for a check before the gate opens
            probes[0].cancel()  # this prober leaves
            await until(lambda: probes[0].done())
            store.gate.set()
            answers = await asyncio.gather(*probes[1:])
            assert (store.pings, selects) == (1, 1)
            later = await http.get("/health")
    finally:
        await engine.dispose()
    assert [a.status_code for a in answers] == [200] * 19
    assert all(a.json()["checks"]["database"]["status"] == "healthy" for a in answers)
    assert later.status_code == 200 and (store.pings, selects) == (2, 2)


async def test_scrapes_arriving_together_share_one_render_made_off_the_event_loop(tmp_path: Path) -> None:
    """`/metrics` is public and not under the in-flight cap, and each scrape rendered the registry on
    the event loop (~20 ms of CPU with a realistic registry; more with `--workers`, which reads every
    worker's files): a flood of unauthenticated scrapes starved every request of the process. The
    render now runs in a thread, and scrapes arriving while one runs share it."""
    import threading

    started, release = threading.Event(), threading.Event()
    renders = 0

    class GatedMetrics(Metrics):
        def render(self) -> bytes:
            nonlocal renders
            renders += 1
            started.set()
            release.wait(timeout=2)  # on the event loop (the old way) nothing could release it: 2 s each
            return super().render()

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    entered = 0

    class CountingOps(OpsRoutes):
        async def render_metrics(self, request: Any) -> Any:
            nonlocal entered
            entered += 1
            return await super().render_metrics(request)

    app = Starlette(routes=CountingOps(MemoryStore(), engine, GatedMetrics()).routes())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as http:
            scrapes = [asyncio.create_task(http.get("/metrics")) for _ in range(5)]
            await until(lambda: entered == len(scrapes))
            await asyncio.to_thread(started.wait, 5)
            release.set()
            answers = await asyncio.gather(*scrapes)
            later = await http.get("/metrics")
    finally:
        await engine.dispose()
    assert [a.status_code for a in answers] == [200] * 5 and later.status_code == 200
    assert all(b"sentinel_" in a.content for a in answers)
    assert renders == 2  # one for the five together, one for the later scrape (nothing is cached)


METRICS_TOKEN = "a-long-enough-metrics-token"


def test_with_a_metrics_token_metrics_ask_for_it_and_the_probes_stay_public(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """`/metrics` answered anyone: the provider account's spend and traffic by model (the catalogue's
    names, which /v1/models gives key holders only), live enough to tell when a rarely used model is
    called and with how many tokens. With METRICS_TOKEN set it asks for the token; the orchestrator's
    probes carry none and stay public."""
    gw = gateway_factory(metrics_token=METRICS_TOKEN)
    with gw.client() as http:
        assert http.post("/v1/chat/completions", json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "m"}]}).status_code == 200
    with httpx.Client(base_url=gw.url) as anyone:
        missing = anyone.get("/metrics")
        wrong = anyone.get("/metrics", headers={"Authorization": "Bearer not-the-metrics-token"})
        user_key = anyone.get("/metrics", headers={"Authorization": f"Bearer {gw.key}"})
        scraped = anyone.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        probes = [anyone.get(path).status_code for path in ("/health", "/health/live", "/health/ready")]
    for refused in (missing, wrong, user_key):
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "sentinel_" not in refused.text and "gpt-4o-mini" not in refused.text
    assert missing.json()["error"]["code"] == "missing_metrics_token"
    assert wrong.json()["error"]["code"] == user_key.json()["error"]["code"] == "invalid_metrics_token"
    assert scraped.status_code == 200
    assert sample_sum(scraped.text, "sentinel_tokens_total", model="gpt-4o-mini") > 0
    assert probes == [200, 200, 200]


async def test_wrong_metrics_tokens_are_throttled_like_wrong_keys(tmp_path: Path) -> None:
    """A wrong token counts as a failed authentication of its address: past the limit, 429 — the
    right token too, from that address, for the rest of the minute (as for a key)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    throttle = FailedAuthThrottle(3, clock=lambda: 1000.0)
    ops = OpsRoutes(MemoryStore(), engine, Metrics(), metrics_token=METRICS_TOKEN, throttle=throttle)

    async def refused(request: Request, exc: Exception) -> PlainTextResponse:
        assert isinstance(exc, SentinelError)
        return PlainTextResponse(exc.code, exc.status)

    app = Starlette(routes=ops.routes(), exception_handlers={SentinelError: refused})
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as http:
            right = (await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).status_code
            guesses = [(await http.get("/metrics", headers={"Authorization": f"Bearer guess-{i}"})).text
                       for i in range(4)]
            after = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    finally:
        await engine.dispose()
    assert right == 200
    assert guesses == ["invalid_metrics_token"] * 3 + ["auth_rate_limited"], guesses
    assert after.status_code == 429


def test_without_a_metrics_token_metrics_stay_public(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as anyone:
        assert anyone.get("/metrics").status_code == 200
