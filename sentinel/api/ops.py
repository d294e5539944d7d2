"""Operator endpoints: health probes and Prometheus metrics (public by design, no secrets)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.routing import Route

from sentinel import __version__
from sentinel.api.responses import RawResponse, json_response
from sentinel.errors import StoreUnavailable
from sentinel.observability.metrics import Metrics
from sentinel.store import Store


class OpsRoutes:
    """`/health`, `/health/live`, `/health/ready`, `/metrics`."""

    def __init__(self, store: Store, engine: AsyncEngine, metrics: Metrics) -> None:
        self.store = store
        self.engine = engine
        self.metrics = metrics
        self.started = time.monotonic()

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
        ]

    async def _checks(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        try:
            latency = await self.store.ping()
            checks["store"] = {"status": "healthy", "backend": self.store.backend, "latency_ms": round(latency * 1000, 3)}
        except StoreUnavailable as exc:
            checks["store"] = {"status": "unhealthy", "backend": self.store.backend, "error": exc.message}
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
        healthy = all(c["status"] == "healthy" for c in checks.values())
        uptime = round(time.monotonic() - self.started, 3)
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "version": __version__,
            "uptime_seconds": uptime,
            "timestamp": datetime.now(UTC).isoformat(),
            "checks": checks,
        }
        return json_response(body, 200 if healthy else 503)

    async def live(self, request: Request) -> RawResponse:
        return json_response({"status": "healthy"})

    async def ready(self, request: Request) -> RawResponse:
        checks = await self._checks()
        healthy = all(c["status"] == "healthy" for c in checks.values())
        return json_response({"status": "healthy" if healthy else "unhealthy", "checks": checks}, 200 if healthy else 503)

    async def render_metrics(self, request: Request) -> RawResponse:
        return RawResponse(
            200, self.metrics.render(), [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
        )
