"""`sentinel.providers.http`: the one place aiohttp's and asyncio's failures become UpstreamErrors,
unit by unit and over real sockets (refused, timed out, cut mid-body)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohappyeyeballs
import aiohttp
import pytest

from sentinel.errors import Overloaded, UpstreamConnectionError, UpstreamError, UpstreamTimeout
from sentinel.providers.http import create_session, send, translate_errors
from sentinel.routing.failover import is_provider_failure
from tests.providers.conftest import Mock
from tests.support.servers import free_port
from tests.support.upstream import UPSTREAM_KEY
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"}
CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
STREAM = CHAT[:-1] + b', "stream": true}'


@pytest.mark.parametrize(
    ("raised", "expected", "code", "sent"),
    [
        (TimeoutError(), UpstreamTimeout, "upstream_timeout", True),
        (aiohttp.ServerTimeoutError("read"), UpstreamTimeout, "upstream_timeout", True),
        (aiohttp.ConnectionTimeoutError("connect"), UpstreamTimeout, "upstream_timeout", False),
        # A connection dropped once it was made: the request may have reached the provider.
        (aiohttp.ServerDisconnectedError(), UpstreamConnectionError, "upstream_unreachable", True),
        (aiohttp.ClientOSError(104, "reset"), UpstreamConnectionError, "upstream_unreachable", True),
        (aiohttp.ClientPayloadError("cut"), UpstreamConnectionError, "upstream_unreachable", True),
        (ConnectionResetError(), UpstreamConnectionError, "upstream_unreachable", True),
    ],
)
def test_foreign_failures_are_translated_once(
    raised: Exception, expected: type[UpstreamError], code: str, sent: bool
) -> None:
    with pytest.raises(expected) as caught, translate_errors("acme"):
        raise raised
    assert (caught.value.code, caught.value.provider, getattr(caught.value, "sent", None)) == (code, "acme", sent)
    assert "acme" in caught.value.message
    assert caught.value.__cause__ is raised


def test_our_own_errors_pass_through_unchanged() -> None:
    ours = UpstreamError("already ours", code="provider_error")
    with pytest.raises(UpstreamError) as caught, translate_errors("acme"):
        raise ours
    assert caught.value is ours


def test_anything_else_is_not_swallowed() -> None:
    with pytest.raises(ValueError), translate_errors("acme"):
        raise ValueError("a bug, not an upstream failure")


async def test_a_refused_connection_names_the_reason() -> None:
    async with create_session(read_timeout=5, connect_timeout=5) as http:
        with pytest.raises(UpstreamConnectionError) as caught:
            await send(http, "acme", "GET", f"http://127.0.0.1:{free_port()}/v1/models", headers={})
    assert caught.value.message.startswith("Cannot connect to upstream acme")
    assert caught.value.sent is False  # never sent: given back, and may go to another target


async def test_an_idle_read_past_the_timeout_is_a_timeout(mock: Mock) -> None:
    async with create_session(read_timeout=0.2, connect_timeout=5) as http:
        with pytest.raises(UpstreamTimeout):
            await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=CHAT,
                       headers={**AUTH, "x-mock-latency-ms": "2000"})


async def test_a_body_cut_mid_way_is_a_connection_error(mock: Mock) -> None:
    async with create_session(read_timeout=5, connect_timeout=5) as http:
        answer = await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=CHAT,
                            headers={**AUTH, "x-mock-disconnect-after": "1"})
        assert answer.status == 200
        with pytest.raises(UpstreamConnectionError):
            await answer.read()
        answer.close()


async def test_a_wait_for_a_busy_pool_is_overload_not_a_provider_failure(mock: Mock) -> None:
    """Every connection of the pool busy (this process's load): a request that waited past the connect
    timeout for one was a connect timeout, a provider failure — the provider's models went into
    backoff for everyone, and the request to another provider, while the provider was fine."""
    async with create_session(read_timeout=5, connect_timeout=0.2, limit=1) as http:
        held = await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=STREAM,
                          headers={**AUTH, "x-mock-chunk-delay-ms": "2000"})  # its connection busy a while
        try:
            with pytest.raises(Overloaded) as caught:
                await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=CHAT, headers=AUTH)
        finally:
            held.close()
        answer = await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=CHAT, headers=AUTH)
        answer.close()  # a free connection again: sent as ever
    assert (caught.value.status, caught.value.code, caught.value.provider) == (503, "overloaded", "mock")
    assert not is_provider_failure(caught.value)
    assert answer.status == 200


@pytest.mark.parametrize("connect_seconds", [1.2, 3.0])
async def test_a_connect_after_a_long_wait_for_the_pool_has_its_whole_timeout(
    mock: Mock, monkeypatch: pytest.MonkeyPatch, connect_seconds: float
) -> None:
    """aiohttp's connect timeout covered the wait for a pooled connection and the connect after it: a
    request that waited 1.2 s of its 2 s for a connection (this process's load) then had 0.8 s to
    connect, and a provider that takes 1.2 s (a slow TLS handshake, a far region) was a connect
    timeout — a provider failure, its model put in backoff for everyone. The wait and the connect
    have a connect timeout each: it connects; a provider that takes longer than the timeout to
    connect is still a connect timeout, a provider failure. (The slow connect is simulated: every
    new connection once `slow` is set takes `connect_seconds` more to open.)"""
    slow = asyncio.Event()
    opened = aiohappyeyeballs.start_connection

    async def start_connection(*args: Any, **kwargs: Any) -> Any:
        if slow.is_set():
            await asyncio.sleep(connect_seconds)
        return await opened(*args, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", start_connection)
    log = mock.app.state.mock.log
    log.clear()
    async with create_session(read_timeout=5, connect_timeout=2, limit=1) as http:

        async def hold() -> None:  # the pool's one connection, busy for 1.2 s, then dropped mid-stream
            held = await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=STREAM,
                              headers={**AUTH, "x-mock-latency-ms": "1200", "x-mock-chunk-delay-ms": "2000"})
            held.close()

        async def arrived() -> bool:
            return len(log) > 0

        holding = asyncio.create_task(hold())
        assert await eventually(arrived)  # it holds the connection
        slow.set()
        try:
            answer = await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=CHAT, headers=AUTH)
        except UpstreamTimeout as exc:
            failed: UpstreamTimeout | None = exc
        else:
            failed = None
            answer.close()
        await holding
    if connect_seconds < 2:
        assert failed is None and answer.status == 200
    else:
        assert failed is not None and not failed.sent and is_provider_failure(failed)


async def test_answers_keep_status_headers_and_unread_body(mock: Mock) -> None:
    async with create_session(read_timeout=5, connect_timeout=5) as http:
        answer = await send(http, "mock", "POST", mock.url + "/v1/chat/completions", body=CHAT,
                            headers={**AUTH, "x-mock-status": "429"})
        try:
            assert answer.status == 429 and answer.provider == "mock"
            assert answer.content_type.startswith("application/json")
            assert any(k.lower() == "retry-after" for k, _ in answer.headers)
            assert b"error" in await answer.read()
        finally:
            answer.release()
