"""A client that leaves a stream at a chosen moment, over a real socket, against an upstream the test
drives step by step (`HeldUpstream`): the stream's settlement runs once, whatever the moment."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sentinel.governance.ownership import Ownership
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows, wait_for
from tests.support.held_upstream import HeldUpstream, Script, Step
from tests.support.raw_http import port_of
from tests.support.servers import serving
from tests.support.waiting import until


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


RESPONSE = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4o-mini", "status": "in_progress",
            "output": []}
RESPONSE_EVENTS = [
    event("response.created", {"type": "response.created", "response": RESPONSE}),
    event("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_1",
                                         "output_index": 0, "content_index": 0, "delta": "hello world"}),
    event("response.completed", {"type": "response.completed", "response": {
        **RESPONSE, "status": "completed", "usage": {"input_tokens": 50, "output_tokens": 40, "total_tokens": 90}}}),
]


def post(gw: Gateway, path: str, body: dict[str, Any]) -> socket.socket:
    """A request sent on a socket of its own, its answer left unread (the test closes the socket)."""
    raw = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port_of(gw)), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: sentinel\r\nAuthorization: Bearer {gw.key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return sock


def in_flight(gw: Gateway) -> float:
    metrics = httpx.get(gw.url + "/metrics").text
    return float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("sentinel_requests_in_flight ")))


def test_a_client_leaving_during_the_settlement_adds_its_turn_to_the_conversation_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client left while its stream's settlement ran (the record stored, the answer's object
    being claimed): the settlement ran a second time alongside, and the turn's 90 tokens were added
    to the conversation's count twice (180) — every later turn in it reserved, and was charged on a
    cut stream, 90 tokens of context that were never there."""
    upstream = HeldUpstream()
    claiming, gate = threading.Event(), threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []
    claim = Ownership.claim

    async def held_claim(self: Ownership, object_id: str, owner: str, ttl: float | None) -> bool:
        if object_id == "resp_1":  # the answer's object, claimed once the record is stored
            loops.append(asyncio.get_running_loop())
            claiming.set()
            await asyncio.to_thread(gate.wait, 30)
        return await claim(self, object_id, owner, ttl)

    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, usage_flush_interval_seconds=0.1)
        gw.write_stored("sentinel:owner:conv_1", b"alice", 3600)  # alice's conversation
        monkeypatch.setattr(Ownership, "claim", held_claim)
        upstream.queue(Script(b"text/event-stream", [Step(e) for e in RESPONSE_EVENTS])).open_all()
        sock = post(gw, "/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True,
                                          "conversation": "conv_1"})
        assert claiming.wait(10)
        sock.close()  # the client leaves while the settlement runs

        async def left() -> None:  # the gateway saw it go, and its relay had the turns to act on it
            await until(lambda: not gw.server.server.server_state.connections)
            for _ in range(200):
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(left(), loops[0]).result(10)
        gate.set()
        assert wait_for(lambda: in_flight(gw) == 0)  # the request, its settlement(s) included, has ended
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
        assert gw.read_stored("sentinel:context:resp_1") == b"90"
        row = ledger_rows(gw.settings.database_url, "alice")[0]
        assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, 50, 40)
        assert gw.read_stored("sentinel:context:conv_1") == b"90"
