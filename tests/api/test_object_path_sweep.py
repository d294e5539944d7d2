"""User B never reaches user A's objects by spelling their paths another way.

For every collection of per-account objects (`COLLECTIONS`, so one added later is swept too), A's
object is named by B through encoded separators and dot segments, double encoding, other cases,
trailing and doubled slashes, `;` parameters, `?` and `#` tricks, Unicode look-alikes, control
characters, and padding a lenient server strips: each is refused (400, 403, 404 or 405, in the
OpenAI shape), never a 5xx, and nothing of it reaches the provider. A's own calls do reach it, so
the refusals are the path's, not the route's. In-process (ASGI calls), every `/v1` path allowed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from sentinel.app import SentinelApp, create_app
from sentinel.config import Settings
from sentinel.governance.ownership import Ownership
from sentinel.services.objects import COLLECTIONS
from tests.api.conftest import UPSTREAM_KEY
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, openai_error
from tests.support.inprocess import Answer, call

SECRET = b"alice's salary: 1,000,000"
# Words called below an object, by collection (besides the object's own path).
BELOW = {"files": ["content"], "responses": ["input_items", "cancel"], "batches": ["cancel"],
         "conversations": ["items"], "threads": ["runs", "messages"], "vector_stores": ["files"],
         "uploads": ["parts"], "videos": ["content", "remix"], "fine_tuning/jobs": ["events"]}
LOOK_ALIKES = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "c": "\u0441", "i": "\u0131", "s": "\u017f",
               "k": "\u212a"}


@dataclass
class World:
    app: SentinelApp
    spy: SpyUpstream
    alice: dict[str, str]
    bob: dict[str, str]
    objects: dict[str, str]  # collection -> an object of alice's
    bobs: dict[str, str]  # collection -> an object of bob's


@pytest.fixture
async def world(tmp_path: Path, spy: SpyUpstream) -> AsyncIterator[World]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/objects.db", access_log=False, redis_url=None,
        openai_api_url=spy.url + "/v1", openai_api_key=UPSTREAM_KEY, passthrough="/v1/*",
        auth_failures_per_minute=1_000_000, default_plan="requests=1000000/60s",
    )
    alice = {"Authorization": f"Bearer {(await create_key(settings.database_url, 'alice'))[1]}"}
    bob = {"Authorization": f"Bearer {(await create_key(settings.database_url, 'bob'))[1]}"}
    app = create_app(settings)
    await app.startup()
    try:
        assert app.runtime is not None
        ownership = Ownership(app.runtime.store)
        # Objects the mock upstream really makes (and serves back to their owner) ...
        upload = httpx.Request("POST", "http://x/v1/files", files={"file": ("salary.txt", SECRET)},
                               data={"purpose": "user_data"})
        made = await call(app, "POST", "/v1/files", headers={**alice, "Content-Type": upload.headers["content-type"]},
                          body=upload.read())
        assert made.status == 200, made.body
        response = await call(app, "POST", "/v1/responses", headers={**alice, "Content-Type": "application/json"},
                              body=orjson.dumps({"model": "gpt-4o-mini", "input": "remember 1,000,000"}))
        assert response.status == 200, response.body
        objects = {"files": made.json()["id"], "responses": response.json()["id"]}
        # ... and one of every other collection, its owner recorded as an answer would have.
        bobs: dict[str, str] = {}
        for collection in COLLECTIONS:
            name = collection.replace("/", "_")
            if collection not in objects:
                objects[collection] = f"obj_{name}_Ab12"
                assert await ownership.claim(objects[collection], "alice", None)
            bobs[collection] = f"obj_{name}_Bb34"
            assert await ownership.claim(bobs[collection], "bob", None)
        yield World(app, spy, alice, bob, objects, bobs)
    finally:
        await app.shutdown()


def _encoded(text: str) -> str:
    return quote(text, safe="")


def _look_alike(text: str) -> str | None:
    """`text` with its first letter that has a look-alike replaced by it, percent-encoded (UTF-8)."""
    for at, char in enumerate(text):
        if char.lower() in LOOK_ALIKES:
            return text[:at] + _encoded(LOOK_ALIKES[char.lower()]) + text[at + 1 :]
    return None


def disguises(collection: str, object_id: str, own: str, below: str) -> list[str]:
    """Request targets that name `collection`'s `object_id` (and `below` it) in another spelling;
    `own` is an object of the caller's in that collection."""
    c, x, b = collection, object_id, f"/{below}" if below else ""
    head, _, tail = c.partition("/")
    fullwidth = "".join(chr(ord(ch) + 0xFEE0) if ch.isalpha() else ch for ch in head)
    targets = [
        # encoded separators and dot segments, double encoding
        f"/v1/{c}%2F{x}{b}", f"/v1/{c}%2f{x}{b}", f"/v1/{c}/{x}%2F{b[1:]}", f"/v1/{c}/%2E%2E/{c}/{x}{b}",
        f"/v1/{c}/{own}/%2e%2e/{x}{b}", f"/v1/{c}/{own}/../{x}{b}", f"/v1/{c}/./{x}{b}", f"/v1/{c}/{own}/%2E./{x}{b}",
        f"/v1/{c}%252F{x}{b}", f"/v1/{c}/{x}%252F{b[1:]}", f"/v1/{c}/{own}/%252E%252E/{x}{b}",
        f"/v1/{c}%5C{x}{b}", f"/v1/{c}\\{x}{b}", f"/v1/{c}/{own}%5C..%5C{x}{b}",
        # other cases
        f"/v1/{c.upper()}/{x}{b}", f"/v1/{c.title()}/{x}{b}", f"/v1/{c}/{x.upper()}{b}", f"/v1/{c}/{x.swapcase()}{b}",
        f"/v1/{c}/{x}{b.upper()}",
        # slashes
        f"/v1/{c}//{x}{b}", f"/v1//{c}/{x}{b}", f"//v1/{c}/{x}{b}", f"/v1/{c}/{x}{b}//",
        # `;` parameters (a Java server drops them: `..;` is `..` to it)
        f"/v1/{c};x/{x}{b}", f"/v1/{c};/{x}{b}", f"/v1/{c}/{x};x{b}", f"/v1/{c}/{x};{b}", f"/v1/;/{c}/{x}{b}",
        f"/v1/{c}/{own}/..;/{x}{b}", f"/v1/{c}/{own}/..;x/{x}{b}", f"/v1/{c}/{own}/.;/{x}{b}",
        f"/v1/{c}/{own}/..%3B/{x}{b}", f"/v1/{c}/{own}/%2e%2e;/{x}{b}", f"/v1/{c}/;/{x}{b}",
        # `?` and `#`
        f"/v1/{c}/{x}%3F{b}", f"/v1/{c}%3F/{x}{b}", f"/v1/{c}?/{x}{b}", f"/v1/{c}/?{x}", f"/v1/{c}/{x}%23{b}",
        f"/v1/{c}%23/{x}{b}", f"/v1/{c}/{own}%3F/../{x}{b}",
        # Unicode look-alikes (in the collection, in the id), fullwidth letters, invisible characters
        f"/v1/{_encoded(fullwidth)}{'/' + tail if tail else ''}/{x}{b}", f"/v1/{c}/{x}%E2%80%8B{b}",
        f"/v1/{c}/%EF%BB%BF{x}{b}", f"/v1/{c}/{x}%C2%A0{b}", f"/v1/{c}%E2%80%8B/{x}{b}",
        # control characters, encoded
        f"/v1/{c}/{x}%00{b}", f"/v1/{c}/%00{x}{b}", f"/v1/{c}/{x}%0a{b}", f"/v1/{c}/{x}%0D%0A{b}", f"/v1/{c}/{x}%09{b}",
        f"/v1/{c}/{x}%7f{b}", f"/v1/{c}/{x}%1b{b}", f"/v1/{c}%00/{x}{b}",
        # padding a lenient server strips: spaces, trailing dots
        f"/v1/{c}/{x}%20{b}", f"/v1/{c}/%20{x}{b}", f"/v1/{c}%20/{x}{b}", f"/v1/{c}./{x}{b}", f"/v1/{c}/{x}.{b}",
        f"/v1/{c}/{own}/..%20/{x}{b}", f"/v1/{c}/{own}/.../{x}{b}", f"/v1/{c}/{own}/%20/{x}{b}",
        # the very path, some of its characters escaped (the same path: A's object)
        f"/v1/{c}/%{ord(x[0]):02X}{x[1:]}{b}", f"/v1/%{ord(c[0]):02x}{c[1:]}/{x}{b}",
        # a trailing slash (the object's own path)
        f"/v1/{c}/{x}{b}/",
    ]
    for named in (c, x):
        alike = _look_alike(named)
        if alike is not None:
            targets.append(f"/v1/{alike}/{x}{b}" if named == c else f"/v1/{c}/{alike}{b}")
    return targets


def refused(answer: Answer) -> bool:
    return answer.status in (400, 403, 404, 405)


async def test_no_spelling_of_a_path_reaches_another_users_object(world: World) -> None:
    # A's own calls reach the provider: the paths are served, and the mock has A's file and response.
    for collection, object_id in world.objects.items():
        world.spy.clear()
        mine = await call(world.app, "GET", f"/v1/{collection}/{object_id}", headers=world.alice)
        assert mine.status < 500 and world.spy.seen, (collection, mine.status, mine.body)
    content = await call(world.app, "GET", f"/v1/files/{world.objects['files']}/content", headers=world.alice)
    assert content.status == 200 and SECRET in content.body
    world.spy.clear()
    failures: list[str] = []
    for collection, object_id in world.objects.items():
        for below in ["", *BELOW.get(collection, [])]:
            for target in disguises(collection, object_id, world.bobs[collection], below):
                # Split at a literal `?`, a target names the collection: a POST there is the caller's
                # own call on it (its query names nothing), a GET a list (refused).
                for method in ("GET", "HEAD") if "?" in target else ("GET", "POST", "DELETE", "HEAD"):
                    body = b"{}" if method == "POST" else b""
                    answer = await call(world.app, method, target, body=body,
                                        headers={**world.bob, "Content-Type": "application/json"})
                    if world.spy.seen:
                        failures.append(f"{method} {target}: sent upstream as {world.spy.seen[0].raw_path!r}")
                        world.spy.clear()
                    elif not refused(answer):
                        failures.append(f"{method} {target}: {answer.status} {answer.body[:200]!r}")
                    elif method != "HEAD":
                        openai_error(answer.json())
                    assert SECRET not in answer.body, target
    assert not failures, f"{len(failures)} disguised paths got through:\n" + "\n".join(failures[:40])
