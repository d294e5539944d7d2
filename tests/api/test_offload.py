"""A large request body's parse, checks, tool-schema checks and translations run in a worker thread
(`sentinel.offload`); a small one's on the event loop. Either way a request gets the same answer and
the same error, and while a large body is walked the process goes on serving other requests.

Where each walk ran is recorded by wrapping it (`walks`): in a worker thread there is no running
event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import sentinel.domain.json_body as json_body
import sentinel.native.types as native_types
import sentinel.services.messages as messages
import sentinel.services.relay as relay
from sentinel.mock.app import create_mock_app
from sentinel.offload import (
    OFF_LOOP_BYTES,
    OFF_LOOP_CONTAINERS,
    OFF_LOOP_SIZE,
    ON_LOOP_CHARS,
    count_off_loop,
    large,
    spend,
)
from sentinel.quota.meter import QuotaMeter
from sentinel.services.native_chat import NativeChat
from sentinel.services.objects import referenced_ids
from sentinel.services.translated_chat import TranslatedChat
from tests.api.conftest import Gateway
from tests.api.test_body_memory import Exchange, make_app, padded, scope_for
from tests.api.test_native import tiers_file
from tests.support.attack import spying

__all__ = ["make_app"]  # a fixture

USER = [{"role": "user", "content": "Say hi"}]
CLAUDE = "claude-3-5-haiku-20241022"
BIG = 2 * OFF_LOOP_BYTES
Walks = list[tuple[str, bool]]


def on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> Walks:
    """(name, whether it ran on the event loop) of every call of the walks a request body costs."""
    seen: Walks = []

    def record(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def recording(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, on_loop()))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recording)

    for owner, name in [
        (json_body, "json_containers_exceed"), (relay, "referenced_ids"), (relay, "read_batch_input"),
        (messages, "anthropic_object_reference"), (native_types, "_check_schema"),
        (TranslatedChat, "translate"), (NativeChat, "_translate"),
    ]:
        record(owner, name)
    return seen


def tools() -> list[dict[str, Any]]:
    """A tool whose schema was never checked before (checked schemas are remembered)."""
    schema = {"type": "object", "properties": {f"city_{uuid.uuid4().hex}": {"type": "string"}}}
    return [{"type": "function", "function": {"name": "weather", "description": "The weather", "parameters": schema}}]


def bad_tools() -> list[dict[str, Any]]:
    schema = {"type": "object", "minLength": -1, "x": uuid.uuid4().hex}
    return [{"type": "function", "function": {"name": "weather", "description": "The weather", "parameters": schema}}]


def both_sides(http: httpx.Client, path: str, payload: dict[str, Any], walks: Walks, **kw: Any) -> list[httpx.Response]:
    """`payload` POSTed as a small body, then padded with spaces to BIG bytes (the same JSON); the
    walks of the small one all ran on the event loop, those of the large one all in a worker thread
    (a tool schema's check, in a thread for either)."""
    answers = []
    for size in (0, BIG):
        raw = orjson.dumps(payload)
        raw = padded(size, raw) if size else raw
        assert large(raw) is bool(size)
        walks.clear()
        answers.append(http.post(path, content=raw, headers={"content-type": "application/json"}, **kw))
        where = {on for name, on in walks if name != "_check_schema"}
        assert walks and where == ({False} if size else {True}), (size, walks, answers[-1].text)
        assert all(not on for name, on in walks if name == "_check_schema"), walks  # (any size: see below)
    return answers


def same(answers: list[httpx.Response], status: int) -> dict[str, Any]:
    """The error both answers gave (status, body), or the first answer's body when both succeeded."""
    small, big = answers
    assert small.status_code == big.status_code == status, (small.text, big.text)
    if status >= 400:  # (an Anthropic error names its request)
        assert small.json()["error"] == big.json()["error"]
    return dict(small.json())


def test_large_bytes_or_many_containers_go_to_a_thread() -> None:
    assert not large(b" " * (OFF_LOOP_BYTES - 1))
    assert large(b" " * OFF_LOOP_BYTES)
    assert not large(b"[" * OFF_LOOP_CONTAINERS)
    assert large(b"{" * (OFF_LOOP_CONTAINERS + 1))
    assert not large(orjson.dumps({"model": "gpt-4o-mini", "messages": USER}))


def test_openai_chat_answers_alike_on_both_sides_of_the_threshold(gateway: Gateway, walks: Walks) -> None:
    """Parse, metered fields, the ids the body names: same answers, same errors (400, 404)."""
    with gateway.client() as http:
        served = same(both_sides(http, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": USER}, walks), 200)
        bad = same(both_sides(http, "/v1/chat/completions",
                              {"model": "gpt-4o-mini", "messages": USER, "max_tokens": "x"}, walks), 400)
        unknown = same(both_sides(http, "/v1/chat/completions", {"model": "no-such-model", "messages": USER}, walks), 404)
        file = [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-of-someone-else"}}]}]
        foreign = same(both_sides(http, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": file}, walks), 404)
        nested: list[Any] = []
        for _ in range(70):
            nested = [nested]
        deep = same(both_sides(http, "/v1/chat/completions",
                               {"model": "gpt-4o-mini", "messages": USER, "metadata": {"a": nested}}, walks), 400)
    assert served["choices"][0]["message"]["content"]
    assert bad["error"]["details"] == {"param": "max_tokens"}
    assert unknown["error"]["code"] == "model_not_found"
    assert foreign["error"]["code"] == "object_not_found"
    assert deep["error"]["code"] == "invalid_json"


def test_a_translated_chat_and_its_tools_schemas_are_checked_in_a_thread(
    gateway: Gateway, walks: Walks
) -> None:
    """Reading a request for another wire format checks its tools' schemas (~0.5 ms and up each time
    for a schema not seen before): in a thread whenever the request has a tool schema not remembered,
    whatever its size; a small request without tools, or with tools checked before, is translated on
    the loop."""
    with gateway.client() as http:
        served = same(both_sides(http, "/v1/chat/completions", {"model": CLAUDE, "messages": USER}, walks), 200)
        bad = http.post("/v1/chat/completions", json={"model": CLAUDE, "messages": USER, "tools": bad_tools()})
        big_bad = http.post("/v1/chat/completions", content=padded(BIG, orjson.dumps(
            {"model": CLAUDE, "messages": USER, "tools": bad_tools()})), headers={"content-type": "application/json"})
        walks.clear()
        fresh = tools()
        with_tools = http.post("/v1/chat/completions", json={"model": CLAUDE, "messages": USER, "tools": fresh})
        first = list(walks)
        walks.clear()  # the same tools again (a conversation's next turn): remembered, read on the loop
        again = http.post("/v1/chat/completions", json={"model": CLAUDE, "messages": USER, "tools": fresh})
    assert again.status_code == 200, again.text
    assert ("translate", True) in walks and ("translate", False) not in walks, walks
    assert not [name for name, _ in walks if name == "_check_schema"], walks
    walks[:] = first
    assert served["choices"][0]["message"]["content"]
    assert bad.status_code == big_bad.status_code == 400, (bad.text, big_bad.text)
    assert "has invalid schema" in bad.json()["error"]["message"]
    assert bad.json()["error"]["message"].split(": ")[:2] == big_bad.json()["error"]["message"].split(": ")[:2]
    assert with_tools.status_code == 200, with_tools.text
    checked = [(name, loop) for name, loop in walks if name == "_check_schema"]
    assert checked == [("_check_schema", False)], walks
    assert ("translate", False) in walks  # its reading and translation for the check, in a thread


def test_anthropic_messages_answer_alike_on_both_sides_of_the_threshold(gateway: Gateway, walks: Walks) -> None:
    with gateway.client() as http:
        base = {"model": CLAUDE, "max_tokens": 20, "messages": USER}
        served = same(both_sides(http, "/v1/messages", base, walks), 200)
        file = [{"role": "user", "content": [{"type": "document", "source": {"type": "file", "file_id": "file_1"}}]}]
        refused = same(both_sides(http, "/v1/messages", {**base, "messages": file}, walks), 400)
        counted = same(both_sides(http, "/v1/messages/count_tokens", {"model": "gpt-4o-mini", "messages": USER},
                                  walks), 200)
        walks.clear()
        translated = http.post("/v1/messages", json={**base, "model": "gpt-4o-mini", "tools": [
            {"name": "weather", "input_schema": tools()[0]["function"]["parameters"]}]})
    assert served["content"][0]["text"]
    assert refused["error"]["type"] == "invalid_request_error" and "messages.0.content.0" in refused["error"]["message"]
    assert counted["input_tokens"] > 0
    assert translated.status_code == 200, translated.text
    assert [loop for name, loop in walks if name == "_check_schema"] == [False], walks


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_native_chat_answers_alike_on_both_sides_of_the_threshold(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, walks: Walks, provider: str
) -> None:
    gw = gateway_factory(providers_file=tiers_file(tmp_path, provider))
    with gw.client() as http:
        served = same(both_sides(http, "/native/v1/chat/completions", {"messages": USER}, walks), 200)
        unknown = same(both_sides(http, "/native/v1/chat/completions", {"messages": USER, "modle": "x"}, walks), 400)
        bad = same(both_sides(http, "/native/v1/chat/completions", {"messages": USER, "tools": bad_tools()}, walks), 400)
        walks.clear()
        with_tools = http.post("/native/v1/chat/completions", json={"messages": USER, "tools": tools()})
    assert served["choices"][0]["message"]["content"]
    assert unknown["error"]["details"] == {"param": "modle"}
    assert "has invalid schema" in bad["error"]["message"]
    assert with_tools.status_code == 200, with_tools.text
    assert [loop for name, loop in walks if name == "_check_schema"] == [False], walks


def test_pass_through_bodies_and_batch_inputs_answer_alike_on_both_sides_of_the_threshold(
    gateway_factory: Callable[..., Gateway], walks: Walks
) -> None:
    line = (b'{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", '
            b'"body": {"model": "%s", "messages": [{"role": "user", "content": "yes?"}]}}')
    batch = line % (b"1", b"gpt-4o-mini") + b"\n" + line % (b"2", b"o1-pro")
    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/moderations,/v1/files")
        with gw.client() as http:
            foreign = same(both_sides(http, "/v1/moderations", {"input": "hi", "file_id": "file-someone-else"}, walks),
                           404)
            streamed = same(both_sides(http, "/v1/moderations", {"input": "hi", "stream": True}, walks), 400)
            refused = []
            for content in (batch, batch + b"\n" + b" " * BIG):  # a blank line is skipped: the same input
                walks.clear()
                refused.append(http.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", content)}))
                assert [loop for name, loop in walks if name == "read_batch_input"] == [len(refused) == 1], walks
            assert spy.seen == []
    assert foreign["error"]["code"]
    assert streamed["error"]["code"] == "stream_not_supported"
    same(refused, 400)
    assert "Line 2 of the batch input names the model 'o1-pro'" in refused[0].json()["error"]["message"]


def test_other_requests_are_served_while_a_large_body_is_walked(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids of a large body are read while the test holds the walk: meanwhile the same process
    answers another request (on the loop, the walk would hold every other request until it ends)."""
    entered, release = threading.Event(), threading.Event()
    original = referenced_ids

    def held(body: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(body, dict) and body.get("user") == "held":
            entered.set()
            release.wait(30)
        return original(body, *args, **kwargs)

    monkeypatch.setattr(relay, "referenced_ids", held)
    body = padded(BIG, orjson.dumps({"model": "gpt-4o-mini", "messages": USER, "user": "held"}))
    with gateway.client() as http, gateway.client() as other, ThreadPoolExecutor(1) as pool:
        walked = pool.submit(http.post, "/v1/chat/completions", content=body,
                             headers={"content-type": "application/json"})
        try:
            assert entered.wait(30)
            meanwhile = other.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": USER},
                                   timeout=10)
            still_held = not release.is_set() and not walked.done()
        finally:
            release.set()
        answer = walked.result()
    assert meanwhile.status_code == 200, meanwhile.text
    assert still_held
    assert answer.status_code == 200, answer.text


async def test_a_request_cancelled_while_its_body_is_walked_holds_nothing(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request cancelled while its walk runs in its thread leaves at once: its in-flight slot and
    its body's bytes are given back, nothing was reserved; the walk's result is dropped when it ends."""
    gw = await make_app(max_in_flight_per_user=1)
    entered, release, ended = threading.Event(), threading.Event(), threading.Event()
    original = referenced_ids

    def held(body: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(body, dict) and body.get("user") == "held":
            assert not on_loop()
            entered.set()
            release.wait(30)
            ended.set()
        return original(body, *args, **kwargs)

    monkeypatch.setattr(relay, "referenced_ids", held)
    key = gw.keys["alice"]
    body = padded(BIG, orjson.dumps({"model": "gpt-4o-mini", "messages": USER, "user": "held"}))
    exchange = Exchange([body], budget=gw.budget)
    task = asyncio.ensure_future(
        gw.app(scope_for("/v1/chat/completions", key, length=len(body)), exchange.receive, exchange.send))
    try:
        assert await asyncio.to_thread(entered.wait, 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled() and not ended.is_set()  # it left while its walk still ran
        assert gw.budget.held == 0
    finally:
        release.set()
    assert await asyncio.to_thread(ended.wait, 30)
    small = orjson.dumps({"model": "gpt-4o-mini", "messages": USER})
    exchange = Exchange([small])
    await gw.app(scope_for("/v1/chat/completions", key, length=len(small)), exchange.receive, exchange.send)
    assert exchange.status == 200, exchange.body  # its one slot was given back
    meter = gw.app.runtime.native.meter
    assert isinstance(meter, QuotaMeter) and meter._open == 0  # no admission left open


async def test_walks_held_in_their_threads_leave_the_loops_default_executor_free() -> None:
    """The walks run in a pool of their own: the event loop's default executor — where aiohttp looks
    up a provider's address, redis-py reconnects and `/metrics` renders — stays free however many
    large bodies are walked. Run there, one caller's walks (up to its 128 in-flight slots) queued a
    DNS lookup past the connect timeout: a provider failure, counted for everyone."""
    from sentinel.offload import off_loop

    release = threading.Event()
    default_workers = min(32, (os.cpu_count() or 1) + 4)  # `ThreadPoolExecutor`'s default size
    held = [asyncio.ensure_future(off_loop(lambda: release.wait(30), True)) for _ in range(default_workers + 2)]
    try:
        await asyncio.sleep(0)  # the walks are submitted
        looked_up = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, lambda: "found"), 10)
        assert looked_up == "found" and not any(task.done() for task in held)
    finally:
        release.set()
    assert all(await asyncio.gather(*held))


async def test_large_token_counts_run_in_their_own_pool_and_small_ones_on_the_loop() -> None:
    """Counting a large body or text (tiktoken, ~0.5 ms per 1,000 characters) ran in the event loop's
    default executor, where it queued before the upstream DNS lookups: it has a pool of its own."""
    def where() -> str:
        return threading.current_thread().name

    assert (await count_off_loop(where, OFF_LOOP_SIZE)).startswith("sentinel-count")
    assert await count_off_loop(where, OFF_LOOP_SIZE - 1) == threading.current_thread().name


async def test_a_small_count_that_encodes_much_goes_on_in_the_counts_pool() -> None:
    """A body under OFF_LOOP_SIZE was counted on the event loop whatever it held: 64 K characters of
    spaces or of one letter (tiktoken's slowest, ~0.5 µs each) held it ~30 ms a request. Past
    ON_LOOP_CHARS encoded on the loop, the count starts again in the counts' pool."""
    ran: list[str] = []

    def count(chars: int) -> Callable[[], int]:
        def counting() -> int:
            ran.append(threading.current_thread().name)
            spend(chars)
            return chars

        return counting

    here = threading.current_thread().name
    assert await count_off_loop(count(ON_LOOP_CHARS), OFF_LOOP_SIZE - 1) == ON_LOOP_CHARS
    assert ran == [here]
    ran.clear()
    assert await count_off_loop(count(ON_LOOP_CHARS + 1), OFF_LOOP_SIZE - 1) == ON_LOOP_CHARS + 1
    assert ran[0] == here and ran[1].startswith("sentinel-count") and len(ran) == 2
    spend(10**9)  # outside a count on the loop: no limit


def test_a_body_under_the_size_with_much_text_is_counted_in_a_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60,000 spaces in a chat body of ~60 KB: encoded in the counts' pool, not on the event loop;
    a short message still on the loop (its count costs less than the hop)."""
    import tiktoken

    encoded: list[tuple[int, str]] = []
    encode = tiktoken.Encoding.encode_ordinary

    def recording(self: tiktoken.Encoding, text: str) -> list[int]:
        encoded.append((len(text), threading.current_thread().name))
        return encode(self, text)

    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", recording)
    spaces = "x" + " " * 60_000 + uuid.uuid4().hex
    with gateway.client() as http:
        long = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": spaces}]})
        long_encodes = [where for size, where in encoded if size > ON_LOOP_CHARS]
        encoded.clear()
        short = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": USER})
    assert long.status_code == short.status_code == 200, (long.text, short.text)
    assert long_encodes and all(where.startswith("sentinel-count") for where in long_encodes), long_encodes
    assert encoded and not any(where.startswith("sentinel-count") for _, where in encoded), encoded
