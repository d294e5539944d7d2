"""MeteredStream, driven through the transport's real `StreamingRelay` with a scripted client.

A stream's usage is settled before its final bytes (`[DONE]` or an error event) reach the client;
a client that leaves early is settled as 499; a client that leaves while the settlement is being
written cannot cancel it; and however the stream ends, one settlement takes effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sentinel.api.responses import StreamingRelay
from sentinel.services.exchange import Ending, MeteredStream
from tests.support.waiting import until

DONE = b"data: [DONE]\n\n"


class Client:
    """The ASGI side of one response: records what was sent, disconnects when told to."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.got_body = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.log.append(("sent", message["body"]))
            if message["body"]:
                self.got_body.set()

    def leave(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    def bodies(self) -> list[bytes]:
        return [body for kind, body in self.log if kind == "sent" and body]


class Settlements:
    """A settle callback that is idempotent like the meter's: the first call takes effect."""

    def __init__(self, log: list[tuple[str, Any]], gate: asyncio.Event | None = None) -> None:
        self.log = log
        self.gate = gate
        self.calls: list[int] = []
        self.recorded: list[int] = []

    async def __call__(self, status: int) -> None:
        self.calls.append(status)
        if self.calls[1:]:
            return  # already settled (or settling)
        self.log.append(("settle", status))
        if self.gate is not None:
            await self.gate.wait()
        self.recorded.append(status)
        self.log.append(("settled", status))


def producing(*chunks: bytes, last: bytes = DONE, status: int = 200, hang: bool = False
              ) -> Callable[[Ending], AsyncIterator[bytes]]:
    async def produce(ending: Ending) -> AsyncIterator[bytes]:
        ending.status = status
        for chunk in chunks:
            yield chunk
        if hang:  # an upstream that stops sending without ending
            await asyncio.Event().wait()
        ending.last = last

    return produce


async def serve(metered: MeteredStream, client: Client) -> None:
    await StreamingRelay(200, [], metered.chunks(), metered.on_close)({}, client.receive, client.send)


async def test_the_final_bytes_reach_the_client_only_after_the_settlement() -> None:
    log: list[tuple[str, Any]] = []
    settle, ended = Settlements(log), []

    async def on_end() -> None:
        ended.append(True)
        log.append(("end", None))

    client = Client(log)
    await serve(MeteredStream(producing(b"a", b"b"), settle, on_end), client)
    assert log == [
        ("sent", b"a"), ("sent", b"b"), ("settle", 200), ("settled", 200), ("sent", DONE), ("sent", b""), ("end", None)
    ]
    assert settle.recorded == [200] and set(settle.calls) == {200} and ended == [True]


async def test_the_status_the_producer_chose_is_settled_before_its_error_event() -> None:
    log: list[tuple[str, Any]] = []
    settle = Settlements(log)
    error_event = b'data: {"error": {"message": "cut"}}\n\n'
    client = Client(log)
    await serve(MeteredStream(producing(b"a", last=error_event, status=502), settle), client)
    assert client.bodies() == [b"a", error_event]
    assert log.index(("settled", 502)) < log.index(("sent", error_event))
    assert settle.recorded == [502] and set(settle.calls) == {502}


async def test_a_stream_without_final_bytes_ends_after_its_settlement() -> None:
    log: list[tuple[str, Any]] = []
    settle = Settlements(log)
    client = Client(log)
    await serve(MeteredStream(producing(b"a", last=b""), settle), client)
    assert client.bodies() == [b"a"] and settle.recorded == [200]


async def test_a_client_that_leaves_is_settled_499_once_and_gets_no_final_bytes() -> None:
    log: list[tuple[str, Any]] = []
    settle, ended = Settlements(log), []

    async def on_end() -> None:
        ended.append(True)

    client = Client(log)
    served = asyncio.ensure_future(serve(MeteredStream(producing(b"a", hang=True), settle, on_end), client))
    await asyncio.wait_for(client.got_body.wait(), 5)
    client.leave()
    await asyncio.wait_for(served, 5)
    assert settle.calls == [499] and settle.recorded == [499]
    assert client.bodies() == [b"a"]
    assert ended == [True]


async def test_leaving_during_the_settlement_cannot_cancel_it_nor_run_it_again() -> None:
    """The settlement is run once: a client leaving while it ran had `on_close` run it again,
    alongside — harmless for the meter's part, which is idempotent, but not for the rest of a
    settlement (a Responses turn's tokens were added to its conversation's count twice)."""
    log: list[tuple[str, Any]] = []
    gate = asyncio.Event()
    settle, ended = Settlements(log, gate), []

    async def on_end() -> None:
        ended.append(settle.recorded[:])

    client, closed = Client(log), []
    metered = MeteredStream(producing(b"a"), settle, on_end)

    async def on_close(disconnected: bool) -> None:
        closed.append(disconnected)
        await metered.on_close(disconnected)

    served = asyncio.ensure_future(
        StreamingRelay(200, [], metered.chunks(), on_close)({}, client.receive, client.send)
    )
    await until(lambda: ("settle", 200) in log)  # the settlement started and waits on the gate
    client.leave()
    await until(lambda: bool(closed))  # the relay saw the client go, closed the stream and called `on_close`
    gate.set()
    await asyncio.wait_for(served, 5)
    assert settle.calls == [200] and settle.recorded == [200]  # once, with the status the stream ended with
    assert ended == [[200]]  # `on_end` after the settlement it waited for
    assert DONE not in client.bodies()  # the client left before the final bytes


async def test_a_stream_the_server_cuts_is_settled_as_cut_not_as_a_success() -> None:
    """The server stopping past its shutdown deadline cancels the request: the client did not leave
    (`on_close(False)`), but the stream never reached its end. It was recorded with the status it
    began with (200, a success); it is cut, as a cancelled request is: 499."""
    log: list[tuple[str, Any]] = []
    settle = Settlements(log)
    client = Client(log)
    served = asyncio.ensure_future(serve(MeteredStream(producing(b"a", hang=True), settle), client))
    await asyncio.wait_for(client.got_body.wait(), 5)
    served.cancel()  # uvicorn's Server.shutdown, its graceful timeout passed
    with pytest.raises(asyncio.CancelledError):
        await served
    assert settle.calls == [499] and settle.recorded == [499]
    assert client.bodies() == [b"a"]
