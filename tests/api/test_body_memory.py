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
    headers = [(b"content-type", b"application/json")]
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


@pytest.mark.usefixtures("no_collection")
@pytest.mark.parametrize("refusal", ["invalid_json", "model_not_found", "request_too_large", "request_timeout"])
async def test_a_refused_body_is_freed_when_its_request_ends(make_app: Any, refusal: str) -> None:
    """The middleware kept the error it rendered in a local: its traceback holds that same frame, a
    cycle, and the traceback (its `__context__` chain too) every frame the error came through —
    `read_within`'s chunks, the handler's body and payload. A served process collects cycles
    rarely (`gc.freeze` and a first threshold of 50,000): 10 MiB bodies refused at once (400, 408,
    413) grew it by 20 MiB a request until then. Now no frame of the request outlives it."""
    gw = await make_app(max_body_bytes=200_000, body_timeout_seconds=0.05)
    key, path = gw.keys["alice"], "/v1/chat/completions"
    if refusal == "invalid_json":
        answer = await post(gw.app, path, key, [b"{" + b" " * 150_000])
    elif refusal == "model_not_found":  # read and parsed, refused by the handler's service
        answer = await post(gw.app, path, key, [padded(150_000, CHAT.replace(b"gpt-4o-mini", b"no-such-model"))])
    elif refusal == "request_too_large":  # no Content-Length: refused once past the limit
        answer = await post(gw.app, path, key, [b" " * 80_000] * 3, chunked=True)
    else:  # most of it, then nothing until the body deadline
        answer = await post(gw.app, path, key, [b" " * 150_000], hold=True, announced=180_000)
    status = {"invalid_json": 400, "model_not_found": 404, "request_too_large": 413, "request_timeout": 408}[refusal]
    assert answer.status == status and orjson.loads(answer.body)["error"]["code"] == refusal, answer.body
    # The task's step holds the CancelledError of the body deadline (and so its traceback) until the
    # task next waits: one loop turn, with nothing else to run.
    await asyncio.sleep(0)
    assert request_frames() == []
    assert gw.budget.held == 0


@pytest.mark.usefixtures("no_collection")
async def test_a_refused_docs_document_leaves_no_frame(make_app: Any) -> None:
    """The docs' OpenAPI route raised the 401 it kept in a local: the same cycle, for every request
    without the docs key."""
    gw = await make_app(docs_api_key="docs-key-for-tests-0123")
    answer = Exchange([b""])
    await gw.app(scope_for("/native/docs/openapi.json", None, length=None, method="GET"), answer.receive, answer.send)
    assert answer.status == 401
    assert request_frames() == []
