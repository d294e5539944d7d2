"""An upstream the test drives step by step, for tests of a client leaving at a chosen moment.

`HeldUpstream` answers each request with the next queued `Script`: its status and content type, then
its parts, each sent once the test opens the gate before it (`Step.gate`, a `threading.Event`); the
test learns where the answer is from `reached` (set when the upstream waits at that gate) and whether
the gateway left it (`left`). No latency is guessed: every wait is on an event.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.support.upstream import lifespan, read_body


@dataclass
class Step:
    """`body` sent once `gate` is set; `reached` is set when the upstream begins to wait on `gate`."""

    body: bytes
    gate: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)


@dataclass
class Script:
    """One answer: the head (sent once `head.gate` is set), then `steps`; `end` whether the body ends."""

    content_type: bytes
    steps: list[Step]
    status: int = 200
    head: Step = field(default_factory=lambda: Step(b""))
    end: bool = True
    left: threading.Event = field(default_factory=threading.Event)  # the gateway closed the connection
    done: threading.Event = field(default_factory=threading.Event)  # the whole answer was sent

    def open_all(self) -> None:
        self.head.gate.set()
        for step in self.steps:
            step.gate.set()


class HeldUpstream:
    """Answers each request (any path, any wire format) with the next queued `Script`."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.received: list[bytes] = []
        self.arrived = threading.Event()

    def queue(self, script: Script) -> Script:
        self.scripts.append(script)
        return script

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        self.received.append(await read_body(receive))
        script = self.scripts.popleft()
        self.arrived.set()
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            if not await _wait(script.head, gone):
                return
            await send({"type": "http.response.start", "status": script.status,
                        "headers": [(b"content-type", script.content_type)]})
            for step in script.steps:
                if not await _wait(step, gone):
                    return
                await send({"type": "http.response.body", "body": step.body, "more_body": True})
            if script.end:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                script.done.set()
            await gone
        finally:
            if gone.done():
                script.left.set()
            gone.cancel()


async def _wait(step: Step, gone: asyncio.Future[None]) -> bool:
    """Wait for `step.gate`; False when the gateway left first."""
    step.reached.set()
    opened = asyncio.ensure_future(asyncio.to_thread(step.gate.wait))
    await asyncio.wait({opened, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not opened.done():
        step.gate.set()  # (ends the waiting thread)
        return False
    return True


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
