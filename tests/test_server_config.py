"""How `sentinel serve` configures uvicorn: connection limits, and X-Forwarded-* only from named proxies."""

from __future__ import annotations

from pathlib import Path

import httpx

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.protocol import GuardedHttpToolsProtocol
from sentinel.server import _config
from tests.support.servers import serving


def app() -> None:  # a stand-in: uvicorn.Config does not load it here
    return None


def test_forwarded_headers_are_ignored_unless_proxies_are_named() -> None:
    plain = _config(app, Settings(_env_file=None), 1)  # type: ignore[call-arg]
    assert plain.proxy_headers is False
    trusted = _config(app, Settings(_env_file=None, forwarded_allow_ips="10.0.0.5,10.0.0.6"), 1)  # type: ignore[call-arg]
    assert trusted.proxy_headers is True and trusted.forwarded_allow_ips == "10.0.0.5,10.0.0.6"


def test_behind_a_named_proxy_the_client_is_the_rightmost_address_it_did_not_add(tmp_path: Path) -> None:
    """Served as `serve` configures uvicorn, with the loopback named as the proxy: the client is the
    last X-Forwarded-For entry that is not a named proxy, so a client rotating the entries it writes
    itself (the leftmost) is still one client to the failed-authentication throttle (`*` took the
    leftmost: every guess was a new client). Without X-Forwarded-For the client is the socket's."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db", redis_url=None, access_log=False,
        openai_api_url="http://127.0.0.1:9/v1", openai_api_key="k", auth_failures_per_minute=3,
        forwarded_allow_ips="127.0.0.1",
    )
    app = create_app(settings)
    config = _config(app, settings, 1)
    with serving(app, proxy_headers=config.proxy_headers, forwarded_allow_ips=config.forwarded_allow_ips) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:

        def guess(forwarded_for: str | None) -> int:
            headers = {"Authorization": "Bearer sk-sentinel-not-a-key"}
            if forwarded_for is not None:
                headers["X-Forwarded-For"] = forwarded_for
            return client.get("/v1/models", headers=headers).status_code

        rotating = [guess(f"198.51.100.{i}, 203.0.113.7, 127.0.0.1") for i in range(5)]
        assert rotating == [401, 401, 401, 429, 429]  # 203.0.113.7 failed three times
        assert guess("203.0.113.7") == 429
        assert guess("198.51.100.1") == 401  # another client
        assert guess(None) == 401  # the proxy itself


def test_the_connection_limits_reach_the_protocol() -> None:
    config = _config(app, Settings(_env_file=None, header_timeout_seconds=3, max_headers=50), 1)  # type: ignore[call-arg]
    assert config.http is GuardedHttpToolsProtocol
    assert config.sentinel_limits.header_timeout == 3 and config.sentinel_limits.max_headers == 50  # type: ignore[attr-defined]


def test_a_shutdown_deadline_under_a_second_is_not_zero() -> None:
    """`int(0.5)` gave uvicorn no time at all: every request in flight was cut at SIGTERM."""
    config = _config(app, Settings(_env_file=None, shutdown_timeout_seconds=0.5), 1)  # type: ignore[call-arg]
    assert config.timeout_graceful_shutdown == 1
