"""Health probes and Prometheus metrics over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.api.conftest import Gateway
from tests.support.servers import free_port


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
