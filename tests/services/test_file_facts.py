"""The facts of a file Sentinel kept nothing of, read from the provider at its first use
(`sentinel.services.file_facts`): once for concurrent first uses, bounded in size, its failures
falling back to the 100-page bound — on each store backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sentinel.domain.files import UNREAD, FileFacts
from sentinel.governance.ownership import Ownership
from sentinel.providers.http import create_session
from sentinel.providers.openai import OpenAICompatUpstream
from sentinel.quota.tokens import TokenCounter
from sentinel.services.file_facts import RETRY_SECONDS, FileFactsReader
from sentinel.store import Store
from tests.support.media import pdf
from tests.support.servers import serving

KEY = "sk-provider"


@dataclass
class Provider:
    """File contents by id (a status for a file it answers with an error); every read's headers. A
    read waits while `held` is clear, `arrived` set when the first read arrived."""

    files: dict[str, bytes | int] = field(default_factory=dict)
    reads: list[dict[str, str]] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.held.set()

    async def content(self, request: Request) -> Response:
        self.reads.append(dict(request.headers))
        self.arrived.set()
        await asyncio.to_thread(self.held.wait, 10)
        found = self.files.get(request.path_params["fid"], 404)
        if isinstance(found, int):
            return Response(b'{"error": {"message": "no"}}', status_code=found, media_type="application/json")
        return Response(found, media_type="application/octet-stream")


@pytest.fixture
def provider() -> Iterator[tuple[Provider, str]]:
    state = Provider()
    with serving(Starlette(routes=[Route("/v1/files/{fid}/content", state.content)])) as server:
        yield state, server.url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def reader_for(store: Store, url: str, **kw: Any) -> tuple[FileFactsReader, Ownership]:
    owners = Ownership(store)
    session = create_session(read_timeout=10, connect_timeout=5)
    upstream = OpenAICompatUpstream("openai", url + "/v1", KEY, session)
    return FileFactsReader(upstream, owners, TokenCounter(), **kw), owners


async def test_concurrent_first_uses_share_one_read_and_keep_the_facts(
    store: Store, provider: tuple[Provider, str]
) -> None:
    state, url = provider
    state.files["file-a"] = pdf(2, compressed=True)
    reader, owners = await reader_for(store, url)
    await owners.claim("file-a", "alice", None)
    try:
        state.held.clear()
        first = asyncio.create_task(reader.complete({}, ["file-a"], {"file-a"}, "alice"))
        assert await asyncio.to_thread(state.arrived.wait, 10)
        others = [asyncio.create_task(reader.complete({}, ["file-a", "file-a"], {"file-a"}, "alice")) for _ in range(5)]
        await asyncio.sleep(0)  # (each joins the read under way)
        state.held.set()
        found = await asyncio.gather(first, *others)
    finally:
        await reader.upstream.session.close()
    assert found == [{"file-a": FileFacts(pages=2)}] * 6
    assert len(state.reads) == 1
    assert state.reads[0]["authorization"] == f"Bearer {KEY}"
    assert (await owners.require(["file-a"], "alice", files=["file-a"])) == {"file-a": FileFacts(pages=2)}


async def test_only_owned_files_are_read_and_another_users_facts_are_not_kept(
    store: Store, provider: tuple[Provider, str]
) -> None:
    state, url = provider
    state.files["file-b"] = b"some text"
    reader, owners = await reader_for(store, url)
    await owners.claim("file-b", "bob", None)
    try:
        assert await reader.complete({}, ["file-b"], set(), "alice") == {}  # not among the ids checked
        assert state.reads == []
        found = await reader.complete({}, ["file-b"], {"file-b"}, "alice")  # (a caller that lied)
    finally:
        await reader.upstream.session.close()
    assert found["file-b"].text
    assert await owners.require(["file-b"], "bob", files=["file-b"]) == {}  # nothing kept: not alice's


async def test_a_file_past_the_cap_or_refused_is_kept_unread_and_a_failure_is_retried_later(
    store: Store, provider: tuple[Provider, str]
) -> None:
    state, url = provider
    clock = Clock()
    state.files.update({"file-big": b"%PDF-1.7\n" + b"x" * 5000, "file-gone": 404, "file-flaky": 503})
    reader, owners = await reader_for(store, url, read_bytes=4096, clock=clock)
    for file_id in ("file-big", "file-gone", "file-flaky"):
        await owners.claim(file_id, "alice", None)
    named = ["file-big", "file-gone", "file-flaky"]
    try:
        found = await reader.complete({}, named, set(named), "alice")
        assert found == {"file-big": UNREAD, "file-gone": UNREAD}  # the flaky one: nothing, the bound
        assert len(state.reads) == 3
        kept = await owners.require(named, "alice", files=named)
        assert kept == {"file-big": UNREAD, "file-gone": UNREAD}
        # the flaky one is not asked again at once (each request would wait on it), but later
        assert await reader.complete(kept, named, set(named), "alice") == kept
        assert len(state.reads) == 3
        clock.now += RETRY_SECONDS
        state.files["file-flaky"] = b"now it reads"
        found = await reader.complete(kept, named, set(named), "alice")
    finally:
        await reader.upstream.session.close()
    assert found["file-flaky"].text and len(state.reads) == 4
