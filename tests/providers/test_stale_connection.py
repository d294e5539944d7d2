"""A pooled upstream connection the provider dropped while it sat idle (it fails at once) is retried
once on a fresh connection; a request that fails on a fresh connection, or on a pooled one only after
a while, is never sent twice; one that received an answer while it sat idle is never reused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sentinel.errors import UpstreamConnectionError
from sentinel.providers.http import create_session, send
from tests.support.waiting import until

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class DroppingUpstream:
    """Answers the first request of each connection; a second request on a connection is dropped
    unanswered (as a provider closing an idle keep-alive connection just as it is reused), and with
    `drop_fresh` even the first request of a fresh connection is dropped."""

    def __init__(self, *, drop_fresh: bool = False) -> None:
        self.drop_fresh = drop_fresh
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                if served or self.drop_fresh:
                    break  # close without answering
                served += 1
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/x"


@pytest.fixture
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[DroppingUpstream]:
    up = DroppingUpstream(drop_fresh=getattr(request, "param", False))
    up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    yield up
    up.server.close()
    await up.server.wait_closed()


async def test_a_dropped_pooled_connection_is_retried_once_on_a_fresh_one(upstream: DroppingUpstream) -> None:
    session = create_session(read_timeout=5, connect_timeout=5)
    try:
        first = await send(session, "p", "POST", upstream.url, headers={}, body=b"{}")
        await first.read()
        first.release()  # back to the pool
        second = await send(session, "p", "POST", upstream.url, headers={}, body=b"{}")
        assert second.status == 200 and await second.read() == b"{}"
        second.release()
    finally:
        await session.close()
    # The second request went out on the pooled connection, was dropped, and went again on a new one.
    assert (upstream.connections, upstream.requests) == (2, 3)


@pytest.mark.parametrize("upstream", [True], indirect=True)
async def test_a_request_dropped_on_a_fresh_connection_is_not_sent_again(upstream: DroppingUpstream) -> None:
    session = create_session(read_timeout=5, connect_timeout=5)
    try:
        with pytest.raises(UpstreamConnectionError):
            await send(session, "p", "POST", upstream.url, headers={}, body=b"{}")
    finally:
        await session.close()
    assert (upstream.connections, upstream.requests) == (1, 1)


async def test_a_pooled_connection_that_fails_only_after_a_while_is_not_sent_again(
    upstream: DroppingUpstream,
) -> None:
    """A pooled connection the provider had closed while idle fails at once; one that failed after a
    while (here: 2 s on the clock) had the request all that time — the provider may be working on it —
    so it is not sent again: the failure says it was sent (recorded, never moved elsewhere)."""
    now = [0.0]

    def clock() -> float:
        now[0] += 2.0
        return now[0]

    session = create_session(read_timeout=5, connect_timeout=5)
    try:
        first = await send(session, "p", "POST", upstream.url, headers={}, body=b"{}")
        await first.read()
        first.release()  # back to the pool
        with pytest.raises(UpstreamConnectionError) as caught:
            await send(session, "p", "POST", upstream.url, headers={}, body=b"{}", clock=clock)
    finally:
        await session.close()
    assert caught.value.sent
    assert (upstream.connections, upstream.requests) == (1, 2)


def _answer(text: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(text), text)


class ChattyUpstream:
    """Answers each request with the request's number; after the first answer, once `go_on` is set,
    it sends one more answer that no request asked for (`UNASKED`: what an upstream, or a proxy in
    between, that writes past its answer leaves on an idle pooled connection)."""

    UNASKED = b'{"answer": "alice\'s"}'

    def __init__(self) -> None:
        self.connections = 0
        self.go_on = asyncio.Event()
        self.unasked_sent = False
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                served += 1
                writer.write(_answer(b'{"answer": %d}' % served))
                await writer.drain()
                if served == 1 and self.connections == 1:
                    await self.go_on.wait()
                    writer.write(_answer(self.UNASKED))
                    await writer.drain()
                    self.unasked_sent = True
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def test_an_answer_that_arrived_on_an_idle_pooled_connection_is_never_the_next_requests() -> None:
    """aiohttp parses and queues what arrives on an idle pooled connection: an answer no request asked
    for was handed to the next request sent on that connection (another user's) as its own. Such a
    connection is closed, and the request goes out on a fresh one."""
    upstream = ChattyUpstream()
    upstream.server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{upstream.server.sockets[0].getsockname()[1]}/v1/x"
    session = create_session(read_timeout=5, connect_timeout=5)
    try:
        first = await send(session, "p", "POST", url, headers={}, body=b"{}")
        assert await first.read() == b'{"answer": 1}'
        first.release()  # back to the pool
        upstream.go_on.set()
        pooled = session.connector._conns  # type: ignore[union-attr]  # (aiohttp's pool: what it queued)
        await until(lambda: upstream.unasked_sent and any(
            protocol.should_close for conns in pooled.values() for protocol, _ in conns))
        second = await send(session, "p", "POST", url, headers={}, body=b"{}")
        assert await second.read() == b'{"answer": 1}'  # the fresh connection's first answer, not UNASKED
        second.release()
    finally:
        await session.close()
        upstream.server.close()
        await upstream.server.wait_closed()
    assert upstream.connections == 2
