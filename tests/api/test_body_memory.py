"""Request bodies in memory, through the in-process app (ASGI calls, no server): a refused body is
freed when its request ends, not at the next full collection; one caller cannot take the whole
body budget; a body's bytes leave the budget once its answer begins."""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from sentinel.api.body_budget import BodyBudget
from sentinel.api.middleware import RequestMiddleware
from sentinel.app import SentinelApp, create_app
from sentinel.config import Settings
from tests.api.conftest import UPSTREAM_KEY
from tests.support.accounts import create_key

CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def padded(size: int, payload: bytes = CHAT) -> bytes:
    """`payload` (a JSON object) padded with spaces to `size` bytes: valid JSON, parsed to nothing more."""
    return payload[:-1] + b" " * (size - len(payload)) + b"}"


@dataclass
class Exchange:
    """One request sent to the app by hand: its body's parts, then (`hold`) nothing until released."""

    parts: list[bytes]
    hold: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    frames_at_start: list[str] | None = None  # `request_frames()` when its answer began (gc disabled)
    held_at_start: int | None = None  # the app's `BodyBudget.held` then
    budget: BodyBudget | None = None
    waiting: asyncio.Event = field(default_factory=asyncio.Event)  # its body was read up to the hold
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def receive(self) -> dict[str, Any]:
        if self.parts:
            part = self.parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(self.parts) or self.hold}
        self.waiting.set()
        await self.released.wait()  # held: the client sends no more (until it leaves)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.frames_at_start = request_frames() if not gc.isenabled() else None
            self.held_at_start = self.budget.held if self.budget is not None else None
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def scope_for(
    path: str, key: str | None, *, length: int | None, client: str = "127.0.0.1", method: str = "POST",
) -> dict[str, Any]:
    headers = [(b"host", b"sentinel.test"), (b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": (client, 40000), "server": ("127.0.0.1", 8080),
    }


async def post(
    app: SentinelApp, path: str, key: str | None, parts: list[bytes], *, chunked: bool = False, hold: bool = False,
    announced: int | None = None,
) -> Exchange:
    """POST `parts` to `app` (with a Content-Length of their size, or `announced`, unless `chunked`)."""
    exchange = Exchange(list(parts), hold=hold)
    length = None if chunked else (announced if announced is not None else sum(map(len, parts)))
    await app(scope_for(path, key, length=length), exchange.receive, exchange.send)
    return exchange


@pytest.fixture
def no_collection() -> Iterator[None]:
    """Only reference counting frees objects: what a cycle holds stays (as between a served process's
    rare full collections, `SentinelApp.startup` with `owns_process`)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@dataclass
class App:
    app: SentinelApp
    keys: dict[str, str]

    @property
    def budget(self) -> BodyBudget:
        middleware = self.app._http
        assert isinstance(middleware, RequestMiddleware) and middleware.bodies is not None
        return middleware.bodies


@pytest.fixture
async def make_app(tmp_path: Path, mock_upstream: str) -> AsyncIterator[Any]:
    started: list[SentinelApp] = []

    async def start(**overrides: Any) -> App:
        values: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/s{len(started)}.db", "access_log": False,
            "redis_url": None, "openai_api_url": mock_upstream + "/v1", "openai_api_key": UPSTREAM_KEY,
            **overrides,
        }
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        keys = {user: (await create_key(settings.database_url, user))[1] for user in ("alice", "bob")}
        app = create_app(settings)
        await app.startup()
        started.append(app)
        return App(app, keys)

    yield start
    for app in started:
        await app.shutdown()


def request_frames() -> list[str]:
    """The frames of Sentinel's request-serving code still alive (a frame only exists once
    something, such as a traceback, needed it; an exception's traceback keeps its frames)."""
    return sorted(
        f"{o.f_code.co_filename.rsplit('/', 1)[-1]}:{o.f_code.co_name}" for o in gc.get_objects()
        if isinstance(o, types.FrameType) and "/sentinel/api/" in o.f_code.co_filename
    )


async def holding(gw: App, user: str, size: int, *, announced: int) -> tuple[Exchange, asyncio.Task[None]]:
    """A request of `user` whose body of `announced` bytes arrives up to `size` and then waits (its
    bytes counted in the budget by the time this returns); `released` makes its client leave."""
    exchange = Exchange([b" " * size], hold=True, budget=gw.budget)
    scope = scope_for("/v1/chat/completions", gw.keys[user], length=announced)
    task = asyncio.ensure_future(gw.app(scope, exchange.receive, exchange.send))
    await exchange.waiting.wait()
    return exchange, task


async def leave(held: tuple[Exchange, asyncio.Task[None]]) -> None:
    held[0].released.set()
    await held[1]


REFUSALS = {
    "invalid_json": 400, "model_not_found": 404, "request_too_large": 413, "request_timeout": 408,
    "overloaded": 503, "too_many_in_flight": 429,
}


@pytest.mark.usefixtures("no_collection")
@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_a_refused_body_is_freed_when_its_request_ends(make_app: Any, refusal: str) -> None:
    """The middleware kept the error it rendered in a local: its traceback holds that same frame, a
    cycle, and the traceback (its `__context__` chain too) every frame the error came through —
    `read_within`'s chunks, the handler's body and payload. A served process collects cycles
    rarely (`gc.freeze` and a first threshold of 50,000): 10 MiB bodies refused at once (400, 408,
    413, 503) grew it by 20 MiB a request until then. Now no frame of the request outlives it."""
    gw = await make_app(max_body_bytes=200_000, max_body_bytes_in_flight=300_000,  # 200,000 a caller
                        body_timeout_seconds=0.05 if refusal == "request_timeout" else 30)
    key, path = gw.keys["alice"], "/v1/chat/completions"
    others = []
    if refusal == "invalid_json":
        answer = await post(gw.app, path, key, [b"{" + b" " * 150_000])
    elif refusal == "model_not_found":  # read and parsed, refused by the handler's service
        answer = await post(gw.app, path, key, [padded(150_000, CHAT.replace(b"gpt-4o-mini", b"no-such-model"))])
    elif refusal == "request_too_large":  # no Content-Length: refused once past the limit
        answer = await post(gw.app, path, key, [b" " * 80_000] * 3, chunked=True)
    elif refusal == "request_timeout":  # most of it, then nothing until the body deadline
        answer = await post(gw.app, path, key, [b" " * 150_000], hold=True, announced=180_000)
    else:  # past the process's bytes (another caller holds 150,000), or past alice's own share
        others.append(await holding(gw, "bob" if refusal == "overloaded" else "alice", 150_000, announced=160_000))
        answer = await post(gw.app, path, key, [b" " * 160_000], announced=170_000)
    assert answer.status == REFUSALS[refusal], answer.body
    assert orjson.loads(answer.body)["error"]["code"] == refusal, answer.body
    # Not even while the error is answered (its send can wait on a client that does not read).
    assert answer.frames_at_start == []
    for held in others:  # and a client that left mid-body (499) leaves nothing either
        await leave(held)
    # The task's step holds the CancelledError of the body deadline (and so its traceback) until the
    # task next waits: one loop turn, with nothing else to run.
    await asyncio.sleep(0)
    assert request_frames() == []
    assert gw.budget.held == 0


async def test_one_caller_holding_its_share_cannot_have_another_callers_body_refused(make_app: Any) -> None:
    """The body budget was one pool: one key's bodies just under the size limit, their last byte
    held back until the body deadline, took all of it, and every other caller's request got 503
    `overloaded`. A caller holds at most its share (an eighth of the budget, at least one body):
    its next body is 429 `too_many_in_flight`, and everyone else's are read."""
    gw = await make_app(max_body_bytes=100_000, max_body_bytes_in_flight=400_000)  # a share: 100,000
    held = []
    refused = []
    try:
        for _ in range(8):  # on one pool, 6 x 60,000 of alice's filled it
            exchange = Exchange([b" " * 60_000], hold=True, budget=gw.budget)
            scope = scope_for("/v1/chat/completions", gw.keys["alice"], length=90_000)
            task = asyncio.ensure_future(gw.app(scope, exchange.receive, exchange.send))
            done = asyncio.ensure_future(exchange.waiting.wait())
            await asyncio.wait([task, done], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                done.cancel()
                refused.append(exchange)
            else:
                held.append((exchange, task))
        assert gw.budget.held_by("user:alice") == gw.budget.held == 60_000
        bob = await post(gw.app, "/v1/chat/completions", gw.keys["bob"], [padded(90_000)])
        assert bob.status == 200, bob.body
    finally:
        for pair in held:
            await leave(pair)
    assert len(held) == 1 and len(refused) == 7
    for exchange in refused:
        assert exchange.status == 429, exchange.body
        assert orjson.loads(exchange.body)["error"]["code"] == "too_many_in_flight"
        assert (b"retry-after", b"1") in exchange.messages[0]["headers"]
    assert gw.budget.held == 0


async def test_a_streams_body_bytes_are_given_back_once_its_answer_begins(make_app: Any) -> None:
    """A request's body bytes were counted until the end of its answer: 100 streams with bodies
    padded to 10 MiB kept 1,000 MiB of the budget (every other caller's body refused) for as long
    as the streams lasted, though each body had been parsed, and let go, before the first event."""
    gw = await make_app()
    body = padded(500_000, orjson.dumps({**orjson.loads(CHAT), "stream": True}))
    answer = Exchange([body], budget=gw.budget)
    held_during: list[int] = []
    send = answer.send

    async def watching(message: dict[str, Any]) -> None:
        await send(message)
        if message["type"] == "http.response.body" and message.get("more_body"):
            held_during.append(gw.budget.held)

    await gw.app(scope_for("/v1/chat/completions", gw.keys["alice"], length=len(body)), answer.receive, watching)
    assert answer.status == 200 and answer.body.rstrip().endswith(b"data: [DONE]"), answer.body
    assert answer.held_at_start == 0
    assert held_during and set(held_during) == {0}


@pytest.mark.usefixtures("no_collection")
async def test_a_refused_docs_document_leaves_no_frame(make_app: Any) -> None:
    """The docs' OpenAPI route raised the 401 it kept in a local: the same cycle, for every request
    without the docs key."""
    gw = await make_app(docs_api_key="docs-key-for-tests-0123")
    answer = Exchange([b""])
    await gw.app(scope_for("/native/docs/openapi.json", None, length=None, method="GET"), answer.receive, answer.send)
    assert answer.status == 401
    assert request_frames() == []


async def test_an_empty_body_leaves_no_caller_entry(make_app: Any) -> None:
    """A body's stream ends with an empty chunk: counted for a caller that held nothing else, it
    left a 0-byte entry in the per-caller table that no answer gave back (the answer gives back only
    a request that holds bytes) — one entry per caller for ever."""
    gw = await make_app()
    for user in ("alice", "bob"):
        answer = await post(gw.app, "/v1/chat/completions", gw.keys[user], [CHAT])
        assert answer.status == 200, answer.body
        empty = await post(gw.app, "/v1/chat/completions", gw.keys[user], [b""])
        assert empty.status == 400, empty.body
    assert gw.budget.held == 0 and gw.budget._held_by == {}
