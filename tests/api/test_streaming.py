"""Streaming: chunks pass as they arrive, a client that leaves closes the upstream request, and a
stream ends at the upstream's final event whether or not the upstream closes its connection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows, wait_for
from tests.support.servers import serving
from tests.support.upstream import lifespan


class SlowStreamUpstream:
    """An OpenAI-like upstream that streams one chunk every 50 ms, up to 200, and records its end."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = threading.Event()
        self.finished_normally = False

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            for i in range(200):
                if disconnected.is_set():
                    return
                chunk = b'data: {"choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n' % i
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.sent += 1
                await asyncio.sleep(0.05)
            self.finished_normally = True
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            watcher.cancel()
            self.closed.set()


@contextmanager
def gateway_in_front_of(gateway_factory: Callable[..., Gateway], upstream: SlowStreamUpstream) -> Iterator[Gateway]:
    with serving(upstream) as srv:
        yield gateway_factory(openai_api_url=srv.url + "/v1")


@contextmanager
def open_stream(gw: Gateway) -> Iterator[httpx.Response]:
    """A streamed chat completion relayed by `gw`, open for reading."""
    with gw.client() as http, http.stream(
        "POST", "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ) as r:
        assert r.status_code == 200
        yield r


def test_chunks_arrive_before_the_stream_ends(gateway_factory: Callable[..., Gateway]) -> None:
    upstream = SlowStreamUpstream()
    with gateway_in_front_of(gateway_factory, upstream) as gw, open_stream(gw) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        first = next(r.iter_raw())
        # The first relayed bytes came while the upstream had sent only a few of its 200 chunks.
        assert b"w0" in first
        assert upstream.sent < 50


def test_client_disconnect_closes_upstream(gateway_factory: Callable[..., Gateway]) -> None:
    upstream = SlowStreamUpstream()
    with gateway_in_front_of(gateway_factory, upstream) as gw:
        with open_stream(gw) as r:
            for _ in r.iter_raw():
                if upstream.sent >= 3:
                    break
        # Leaving the `with` closed our connection; the upstream must see its request end soon.
        assert upstream.closed.wait(timeout=5)
    # The upstream handler has returned (`closed` is set on its way out): it stopped early.
    assert not upstream.finished_normally
    assert upstream.sent < 200


class HeldOpenUpstream:
    """An OpenAI-like upstream that sends a whole stream, `[DONE]` included, then keeps its connection
    open until the other side closes it (some servers and proxies do)."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for delta, finish in (({"role": "assistant", "content": "Hello"}, None), ({}, "stop")):
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self.closed.set()


ASK = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 50, "messages": ASK, "stream": True}),
    ("/native/v1/chat/completions", {"messages": ASK, "max_tokens": 50, "stream": True}),
])
def test_a_stream_ends_at_the_final_event_though_the_upstream_keeps_its_connection_open(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    """Translated and native streams read on until the upstream closed: the client's end (and the usage
    record) waited for the upstream read timeout, which then turned a whole answer into an error."""
    upstream = HeldOpenUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"),
                             upstream_timeout_seconds=30)
        with gw.client() as http:
            r = http.post(path, json=body, timeout=10)  # the old code fails on this, not by hanging
        assert r.status_code == 200 and "Hello" in r.text, r.text
        assert "event: message_stop" in r.text or r.text.endswith("data: [DONE]\n\n"), r.text
        assert upstream.closed.wait(timeout=5)  # Sentinel let go of the upstream's connection
    rid = r.headers["x-request-id"]
    assert wait_for(lambda: [row["status"] for row in ledger_rows(gw.settings.database_url)
                             if row["request_id"] == rid] == [200])


def test_a_relayed_stream_says_its_cache_policy_once(gateway: Gateway) -> None:
    """The upstream's own `cache-control` (OpenAI sends one on a stream) was relayed beside Sentinel's:
    two headers a proxy may read as `no-cache, no-cache` or take either of."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with gateway.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.read()
        assert r.status_code == 200
        assert r.headers.get_list("cache-control") == ["no-cache"]
        assert r.headers.get_list("x-accel-buffering") == ["no"]
