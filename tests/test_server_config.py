"""How `sentinel serve` configures uvicorn: connection limits, and X-Forwarded-* only from named proxies."""

from __future__ import annotations

from sentinel.config import Settings
from sentinel.protocol import GuardedHttpToolsProtocol
from sentinel.server import _config


def app() -> None:  # a stand-in: uvicorn.Config does not load it here
    return None


def test_forwarded_headers_are_ignored_unless_proxies_are_named() -> None:
    plain = _config(app, Settings(_env_file=None), 1)  # type: ignore[call-arg]
    assert plain.proxy_headers is False
    trusted = _config(app, Settings(_env_file=None, forwarded_allow_ips="10.0.0.5,10.0.0.6"), 1)  # type: ignore[call-arg]
    assert trusted.proxy_headers is True and trusted.forwarded_allow_ips == "10.0.0.5,10.0.0.6"


def test_the_connection_limits_reach_the_protocol() -> None:
    config = _config(app, Settings(_env_file=None, header_timeout_seconds=3, max_headers=50), 1)  # type: ignore[call-arg]
    assert config.http is GuardedHttpToolsProtocol
    assert config.sentinel_limits.header_timeout == 3 and config.sentinel_limits.max_headers == 50  # type: ignore[attr-defined]


def test_a_shutdown_deadline_under_a_second_is_not_zero() -> None:
    """`int(0.5)` gave uvicorn no time at all: every request in flight was cut at SIGTERM."""
    config = _config(app, Settings(_env_file=None, shutdown_timeout_seconds=0.5), 1)  # type: ignore[call-arg]
    assert config.timeout_graceful_shutdown == 1
