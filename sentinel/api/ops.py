"""Operator endpoints: health probes and Prometheus metrics (public by design, no secrets: a failing
check says what failed, never the driver's message, which may name hosts and ports; that is logged).

With `METRICS_TOKEN` set, `/metrics` asks for it (`Authorization: Bearer <token>`, compared as
digests in constant time; 401 otherwise, a wrong one counted by the failed-authentication throttle
like a wrong key): its counts are the provider account's spend and traffic by model, and live
enough to tell when someone uses a rarely used model and with how many tokens. The health probes
stay public (an orchestrator's probes carry no credential)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.routing import Route

from sentinel import __version__
from sentinel.api.responses import NOSNIFF, RawResponse, operator_json
from sentinel.api.throttle import FailedAuthThrottle, client_of
from sentinel.errors import AuthenticationError, StoreUnavailable
from sentinel.flight import SingleFlight
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.store import Store

log = logging.getLogger("sentinel.health")
STORE_DOWN = "health check: the store is unavailable"


class OpsRoutes:
    """`/health`, `/health/live`, `/health/ready`, `/metrics`."""

    def __init__(
        self, store: Store, engine: AsyncEngine, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic,
        metrics_token: str | None = None, throttle: FailedAuthThrottle | None = None,
    ) -> None:
        self.store = store
        self._token_digest = _digest(metrics_token) if metrics_token else None
        self.throttle = throttle
        self.engine = engine
        self.metrics = metrics
        self.clock = clock
        self.started = time.monotonic()
        # While the store is down, its failure is logged when a check first finds it (and it comes
        # back), and again at most once a minute: the probes are public, as frequent as any client makes them.
        self._repeated = Repeated(log, clock=clock)
        self._running: SingleFlight[None, dict[str, dict[str, Any]]] = SingleFlight()  # the checks under way
        self._rendering: SingleFlight[None, bytes] = SingleFlight()  # the metrics render under way

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
        ]

    async def _checks(self) -> dict[str, dict[str, Any]]:
        """The store's and the database's checks. The probes are public and exempt from the in-flight
        cap: each ran its own PING and `SELECT 1`, so a flood of them held the database pool's
        connections (and users' key lookups waited for one). Probes that arrive while a check runs
        share its answer; one that arrives after it ends starts a new one (nothing is cached). A
        probe that leaves does not cancel the check the others wait for."""
        return await self._running.run(None, self._run_checks)

    async def _run_checks(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        try:
            ping = await self.store.ping()
            checks["store"] = {
                "status": "degraded" if ping.unreachable else "healthy",
                "backend": self.store.backend,
                "latency_ms": round(ping.latency * 1000, 3),
            }
            if ping.unreachable:  # a Redis Cluster with primaries down: their users wait for the failover
                # How many, not which: these endpoints are public, node addresses are not.
                checks["store"]["unreachable_nodes"] = len(ping.unreachable)
            if (suppressed := self._repeated.forget(STORE_DOWN)) is not None:
                log.info("health check: the store answers again", extra={"suppressed": suppressed} if suppressed else None)
        except StoreUnavailable as exc:  # its message may quote the server (`MOVED 1234 10.0.0.5:6379`): logged only
            self._repeated.warning(STORE_DOWN, extra={"error": exc.message})
            checks["store"] = {"status": "unhealthy", "backend": self.store.backend, "error": "unreachable"}
        started = time.perf_counter()
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = {
                "status": "healthy",
                "backend": self.engine.dialect.name,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        except Exception as exc:  # noqa: BLE001 - any driver failure means "not ready"
            checks["database"] = {"status": "unhealthy", "backend": self.engine.dialect.name, "error": type(exc).__name__}
        return checks

    async def health(self, request: Request) -> RawResponse:
        checks = await self._checks()
        status = _overall(checks)
        uptime = round(time.monotonic() - self.started, 3)
        body = {
            "status": status,
            "version": __version__,
            "uptime_seconds": uptime,
            "timestamp": datetime.now(UTC).isoformat(),
            "checks": checks,
        }
        return operator_json(body, 503 if status == "unhealthy" else 200)

    async def live(self, request: Request) -> RawResponse:
        return operator_json({"status": "healthy"})

    async def ready(self, request: Request) -> RawResponse:
        checks = await self._checks()
        status = _overall(checks)
        return operator_json({"status": status, "checks": checks}, 503 if status == "unhealthy" else 200)

    async def render_metrics(self, request: Request) -> RawResponse:
        """The exposition, rendered in a thread (~20 ms of CPU with a realistic registry, more with
        `--workers`: on the event loop, a flood of these public scrapes starved every request); scrapes
        arriving while a render runs share it, one arriving after it ends renders again."""
        await self._check_token(request)
        body = await self._rendering.run(None, self._render)
        return RawResponse(200, body, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"), NOSNIFF])

    async def _render(self) -> bytes:
        self.metrics.flush()  # (here, on the event loop's thread: the one that adds)
        return await asyncio.to_thread(self.metrics.render)

    async def _check_token(self, request: Request) -> None:
        """Nothing without METRICS_TOKEN; else AuthenticationError (401) unless the request carries it
        (a wrong one is counted as a failed authentication of its address: 429 past the limit)."""
        if self._token_digest is None:
            return
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise AuthenticationError(
                "Send the metrics token (METRICS_TOKEN) as Authorization: Bearer <token>", code="missing_metrics_token"
            )
        address = client_of(request)
        if self.throttle is not None:
            await self.throttle.check(address)
        if not hmac.compare_digest(_digest(given), self._token_digest):
            if self.throttle is not None:
                await self.throttle.failed(address)
            raise AuthenticationError("Wrong metrics token", code="invalid_metrics_token")


def _digest(token: str) -> bytes:
    """What tokens are compared as: equal digests, whatever the lengths (`compare_digest`)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _overall(checks: dict[str, dict[str, Any]]) -> str:
    """`unhealthy` when a check is (503: take this process out of rotation), `degraded` when one is
    (still 200: every replica sees the same partial outage, and most users are served), else
    `healthy`."""
    statuses = {c["status"] for c in checks.values()}
    for status in ("unhealthy", "degraded"):
        if status in statuses:
            return status
    return "healthy"
