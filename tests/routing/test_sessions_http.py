"""Sticky sessions over HTTP, on the in-memory store and on a real Redis (`backend_url`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from sentinel.mock.app import create_mock_app
from sentinel.routing.sessions import SessionStore
from tests.api.conftest import Gateway
from tests.conftest import REDIS_BIN, unavailable
from tests.routing.helpers import (
    AN_HAIKU,
    AN_SONNET,
    OA_4O,
    OA_MINI,
    THREE,
    chat,
    entry,
    served,
    start,
    stored,
)
from tests.support.accounts import create_key
from tests.support.attack import recorded_ids
from tests.support.lost_replies import LostReply
from tests.support.metrics import metric
from tests.support.process import RedisServerProcess
from tests.support.servers import free_port, serving
from tests.support.upstream import ScriptedUpstream


def test_fifty_turns_of_one_conversation_hit_one_model(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    gw = start(gateway_factory, tmp_path, backend_url)
    with gw.client() as http:
        # Three equally cheap candidates over two providers: without a session the choice varies.
        fresh = {served(chat(http, f"question {i}"))[2] for i in range(30)}
        assert len(fresh) >= 2
        messages: list[dict[str, Any]] = []
        seen = set()
        for i in range(50):
            messages.append({"role": "user", "content": f"turn {i}"})
            r = chat(http, messages=messages, conv="conv-fifty")
            seen.add(served(r))
            messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
    assert len(seen) == 1
    tier, provider, model = seen.pop()
    session = stored(gw, "conv-fifty")
    assert session is not None and (session["tier"], session["provider"], session["model"]) == (tier, provider, model)
    assert session["external_id"] == "alice"
    assert metric(gw.url, "sentinel_sessions_total", event="created") == 1
    assert metric(gw.url, "sentinel_sessions_total", event="hit") == 49
    assert metric(gw.url, "sentinel_model_selections_total", tier="simple") == 31  # hits never re-select
    assert metric(gw.url, "sentinel_model_selections_total", tier="simple", provider=provider, model=model)


def test_upgrade_moves_up_and_never_down(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    gw = start(gateway_factory, tmp_path, backend_url)
    with gw.client() as http:
        tier, provider, _ = served(chat(http, "start", conv="conv-up"))
        assert tier == "simple"
        upgraded = served(chat(http, "harder", conv="conv-up", tier="complex"))
        assert upgraded[:2] == ("complex", provider)  # the upgrade prefers the session's provider
        assert served(chat(http, "easy again", conv="conv-up", tier="simple")) == upgraded
        assert served(chat(http, "no tier", conv="conv-up")) == upgraded
    session = stored(gw, "conv-up")
    assert session is not None and (session["tier"], session["provider"], session["model"]) == upgraded
    assert metric(gw.url, "sentinel_sessions_total", event="upgraded") == 1
    assert metric(gw.url, "sentinel_model_selections_total", tier="complex") == 1


def test_another_users_conversation_is_neither_reached_nor_held_by_the_same_id(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """Conversation ids are each user's own: bob naming alice's id starts his own conversation,
    never sees or changes hers — and cannot squat an id she has not used yet (keyed by the id
    alone, his session there answered her 403 for as long as he kept it alive)."""
    gw = start(gateway_factory, tmp_path, backend_url)
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    with gw.client(bob_key) as bob:
        served(chat(bob, "squatting", conv="conv-later"))
    with gw.client() as alice:
        first = served(chat(alice, "mine", conv="conv-owned"))
        assert served(chat(alice, "not held by bob", conv="conv-later"))
    before = stored(gw, "conv-owned")
    with gw.client(bob_key) as bob:
        for tier in (None, "complex"):
            r = chat(bob, "let me in", conv="conv-owned", tier=tier)
            assert r.status_code == 200, r.text
    assert stored(gw, "conv-owned") == before
    assert (stored(gw, "conv-owned", "bob") or {}).get("external_id") == "bob"
    with gw.client() as alice:
        assert served(chat(alice, "still mine", conv="conv-owned")) == first


def test_a_derived_conversation_id_cannot_be_taken_by_another_user(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """SESSION_AUTO_KEY: bob can compute the id Sentinel derives for alice's opening messages, but
    may not send it (nor any id with the reserved prefix): alice's conversation stays hers."""
    from sentinel.routing.sessions import auto_conversation_id

    gw = start(gateway_factory, tmp_path, backend_url, session_auto_key=True)
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    opening = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    derived = auto_conversation_id("alice", "You are terse.", "Hi")
    with gw.client(bob_key) as bob:
        for conv in (derived, "auto-mine"):
            r = chat(bob, messages=opening, conv=conv)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert "conversation_id" in r.json()["error"]["message"]
    assert stored(gw, derived) is None
    with gw.client() as alice:
        first = served(chat(alice, messages=opening))
        assert served(chat(alice, messages=[*opening, {"role": "assistant", "content": "Hello."},
                                            {"role": "user", "content": "again"}])) == first
    session = stored(gw, derived)
    assert session is not None and session["external_id"] == "alice"


def test_a_request_one_candidate_cannot_carry_goes_to_another_not_to_a_400(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """An empty user message is valid for OpenAI, not for Anthropic. With Anthropic the cheaper
    draw of the tier, a new conversation (or none) is served by OpenAI every time instead of
    getting a 400 whenever the draw lands on Anthropic; a conversation bound to Anthropic keeps it."""
    tiers = {"simple": [entry(AN_HAIKU, cost=1), entry(OA_4O, cost=50)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers=tiers)
    empty = [{"role": "user", "content": ""}]
    with gw.client() as http:
        for i in range(8):
            assert served(chat(http, messages=empty)) == ("simple", *OA_4O)
            assert served(chat(http, messages=empty, conv=f"conv-empty-{i}")) == ("simple", *OA_4O)
        session = stored(gw, "conv-empty-0")
        assert session is not None and (session["provider"], session["model"]) == OA_4O
        bound = next(f"conv-claude-{i}" for i in range(50)
                     if served(chat(http, "hello", conv=f"conv-claude-{i}")) == ("simple", *AN_HAIKU))
        r = chat(http, messages=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                                 {"role": "user", "content": ""}], conv=bound)
        assert r.status_code == 400, r.text
        kept = stored(gw, bound)
        assert kept is not None and (kept["provider"], kept["model"]) == AN_HAIKU


def test_a_whitespace_only_message_goes_to_a_candidate_that_can_carry_it(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """Anthropic refuses a message of only whitespace as it does an empty one ("text content blocks
    must contain non-whitespace text"); OpenAI takes it. With Anthropic the cheaper draw, it went to
    Anthropic nearly every time (a provider's 400); it goes to OpenAI, and the session with it."""
    tiers = {"simple": [entry(AN_HAIKU, cost=1), entry(OA_4O, cost=50)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers=tiers)
    blank = [{"role": "user", "content": " \n"}]
    with gw.client() as http:
        for i in range(8):
            assert served(chat(http, messages=blank)) == ("simple", *OA_4O)
            assert served(chat(http, messages=blank, conv=f"conv-blank-{i}")) == ("simple", *OA_4O)
    session = stored(gw, "conv-blank-0")
    assert session is not None and (session["provider"], session["model"]) == OA_4O


def test_a_conversation_bound_to_claude_goes_on_after_claude_answered_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Claude may end a turn with no text; the native answer's content is then `""`, and a client
    replays it as the assistant's turn. That turn was refused as an empty message, so under `keep`
    every later turn of the conversation, bound to Claude, was a 400 until its session expired."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = start(gateway_factory, tmp_path, None, {"simple": [entry(AN_HAIKU)]}, anthropic_api_url=srv.url)
        with gw.client() as http:
            upstream.json({"id": "msg_1", "type": "message", "role": "assistant", "model": AN_HAIKU[1],
                           "content": [], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 5, "output_tokens": 0}})
            first = chat(http, "hi", conv="conv-quiet")
            assert served(first) == ("simple", *AN_HAIKU)
            said = first.json()["choices"][0]["message"]
            assert said == {"role": "assistant", "content": ""}
            upstream.json({"id": "msg_2", "type": "message", "role": "assistant", "model": AN_HAIKU[1],
                           "content": [{"type": "text", "text": "Hello again."}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 9, "output_tokens": 3}})
            again = chat(http, messages=[{"role": "user", "content": "hi"}, said,
                                         {"role": "user", "content": "are you there?"}], conv="conv-quiet")
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["message"]["content"] == "Hello again."
        sent = json.loads(upstream.received[-1])
        assert [turn["role"] for turn in sent["messages"]] == ["user"]


def test_a_whitespace_only_stop_sequence_goes_to_a_candidate_that_can_carry_it(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Anthropic refuses a stop sequence of only whitespace (`"\\n"`, a common one); OpenAI takes it. It
    went to Anthropic nearly every draw (a provider's 400, charged); it goes to OpenAI. With Claude
    alone it is a 400 naming `stop`, before anything is sent or recorded."""
    tiers = {"simple": [entry(AN_HAIKU, cost=1), entry(OA_4O, cost=50)]}
    gw = start(gateway_factory, tmp_path, None, tiers=tiers)
    with gw.client() as http:
        for i in range(8):
            assert served(chat(http, f"lines {i}", stop="\n")) == ("simple", *OA_4O)
    alone = start(gateway_factory, tmp_path, None, tiers={"simple": [entry(AN_HAIKU)]})
    with alone.client() as http:
        r = chat(http, "lines", stop=["END", "\n"])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("stop.1: ")
    assert recorded_ids(alone.settings.database_url) == set()


TOOL_HISTORY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, cloudy"},
    {"role": "user", "content": "Sum that up in one line."},
]


def test_a_tool_history_without_tools_goes_to_a_candidate_that_can_carry_it(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Anthropic refuses a conversation holding tool calls or results without `tools` ("Requests which
    include `tool_use` or `tool_result` blocks must define tools"); OpenAI takes it (a history of tool
    turns asked to be summed up). It went to Claude nearly every draw (a provider's 400, charged); it
    goes to OpenAI. With Claude alone it is a 400 naming `tools`, before anything is sent or recorded,
    and the same history with its tools (calls forbidden) is served by Claude."""
    tiers = {"simple": [entry(AN_HAIKU, cost=1), entry(OA_4O, cost=50)]}
    gw = start(gateway_factory, tmp_path, None, tiers=tiers)
    with gw.client() as http:
        for i in range(8):
            assert served(chat(http, messages=TOOL_HISTORY, conv=f"conv-tools-{i}")) == ("simple", *OA_4O)
    session = stored(gw, "conv-tools-0")
    assert session is not None and (session["provider"], session["model"]) == OA_4O
    alone = start(gateway_factory, tmp_path, None, tiers={"simple": [entry(AN_HAIKU)]})
    with alone.client() as http:
        r = chat(http, messages=TOOL_HISTORY, conv="conv-claude")
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "tools" and r.json()["error"]["code"] == "invalid_request"
        assert recorded_ids(alone.settings.database_url) == set()
        assert stored(alone, "conv-claude") is None
        weather = {"type": "function", "function": {"name": "weather", "description": "The weather in a city",
                                                    "parameters": {"type": "object"}}}
        ok = chat(http, messages=TOOL_HISTORY, conv="conv-claude", tools=[weather], tool_choice="none")
        assert served(ok) == ("simple", *AN_HAIKU)


def test_a_request_that_fails_validation_creates_no_session(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    gw = start(gateway_factory, tmp_path, backend_url, tiers={"simple": [entry(AN_HAIKU)]})
    bad_tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "string"}}}
    with gw.client() as http:
        r = chat(http, "tools", conv="conv-invalid", tools=[bad_tool])
        assert r.status_code == 400 and "parameters" in r.json()["error"]["message"]
        # Valid in the unified format, refused by the Anthropic translation (after routing decided).
        assistant_first = [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "hi"}]
        r = chat(http, messages=assistant_first, conv="conv-invalid")
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "First non-system message must be from user" in r.json()["error"]["message"]
        assert metric(gw.url, "sentinel_model_selections_total", tier="simple") == 1  # routing had decided
        assert stored(gw, "conv-invalid") is None
        assert metric(gw.url, "sentinel_sessions_total", event="created") is None
        assert served(chat(http, "now valid", conv="conv-invalid"))[1] == "anthropic"
    assert stored(gw, "conv-invalid") is not None


def test_a_request_no_model_answers_creates_or_changes_no_session(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """The session was written before the upstream call: a first turn the providers refused (5xx, 429:
    the reservation given back) bound the conversation to a model that never served it — under
    `keep` for good, that model's failures then the conversation's answers — and a refused upgrade
    moved it up. Now a first turn no model answered removes the session it created before its call,
    and only an answer upgrades or moves one (a stream's once it began)."""
    tiers = {"simple": [entry(OA_MINI), entry(AN_HAIKU)], "moderate": [entry(OA_4O)], "complex": [entry(AN_SONNET)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers)
    with gw.client() as http:
        assert served(chat(http, "answered", conv="conv-stream", stream=True))[0] == "simple"
        assert stored(gw, "conv-stream") is not None  # a stream that began binds its conversation
        start_turn = served(chat(http, "start", conv="conv-up", tier="moderate"))
        refused = chat(http, "harder #mock:status=500", conv="conv-up", tier="complex")  # its only model fails
        assert refused.status_code == 502, refused.text
        session = stored(gw, "conv-up")
        assert session is not None and (session["tier"], session["provider"], session["model"]) == start_turn
        assert metric(gw.url, "sentinel_sessions_total", event="upgraded") is None
        first = chat(http, "refuse me #mock:status=500", conv="conv-500")  # both candidates, the retry too
        assert first.status_code == 502, first.text
        limited = chat(http, "limit me #mock:status=429", conv="conv-429", tier="moderate", stream=True)
        assert limited.status_code == 429, limited.text
        assert stored(gw, "conv-500") is None and stored(gw, "conv-429") is None
    assert metric(gw.url, "sentinel_sessions_total", event="created") == 2  # conv-stream, conv-up


SMALL, BIG = ("scripted", "small-model"), ("scripted", "big-model")
OVERLOADED = {"error": {"message": "Overloaded", "type": "overloaded_error"}}  # an OpenAI-style error chunk


def test_a_stream_that_failed_before_its_first_chunk_binds_no_session(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """A stream's session was written as soon as the provider answered 200, before its first event
    was read: a stream whose first event was an error (or that ended before any) bound a new
    conversation to the model that produced nothing, and moved an upgraded one to it. Now it is
    written with the first chunk; a stream that failed before any is a turn no model answered."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(SMALL)], "complex": [entry(BIG)]},
                   {"scripted": f"{srv.url}/v1"})
        with gw.client() as http:
            upstream.sse(OVERLOADED)  # the first event an error
            failed = chat(http, "hi", conv="conv-new", stream=True)
            assert failed.status_code == 200 and '"stream_error"' in failed.text, failed.text
            upstream.sse()  # the stream ended before any event
            cut = chat(http, "hi", conv="conv-cut", stream=True)
            assert cut.status_code == 200 and "connection_closed" in cut.text, cut.text
            assert stored(gw, "conv-new") is None and stored(gw, "conv-cut") is None


MESSAGE_START = {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": AN_HAIKU[1], "content": [],
    "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 0}}}
ANTHROPIC_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
OPENING = {"id": "c0", "object": "chat.completion.chunk", "created": 1, "model": SMALL[1],
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_a_stream_that_failed_after_its_bare_opening_chunk_binds_no_session(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, wire: str
) -> None:
    """Anthropic opens every stream with `message_start` before the model generates anything, and its
    `overloaded_error` often comes right after it; OpenAI's first chunk holds only the role too. That
    opening chunk (the unified stream's `role`, no content) bound a new conversation to the model that
    then failed it, and `keep` held every later turn there; it upgraded a session, too. Only a chunk of
    the answer binds: such a stream is a turn no model answered."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        if wire == "openai":
            gw = start(gateway_factory, tmp_path, None, {"simple": [entry(SMALL)], "complex": [entry(BIG)]},
                       {"scripted": f"{srv.url}/v1"})
            opening, overloaded = OPENING, OVERLOADED
        else:
            gw = start(gateway_factory, tmp_path, None, {"simple": [entry(AN_HAIKU)], "complex": [entry(AN_HAIKU)]},
                       anthropic_api_url=srv.url)
            opening, overloaded = MESSAGE_START, ANTHROPIC_OVERLOADED
        with gw.client() as http:
            upstream.sse(opening, overloaded)
            failed = chat(http, "hi", conv="conv-opened", stream=True)
            assert failed.status_code == 200 and '"stream_error"' in failed.text, failed.text
            assert stored(gw, "conv-opened") is None
        if wire == "openai":  # an upgrade that failed so leaves the session on the model that served it
            with gw.client() as http:
                upstream.json({"id": "c1", "object": "chat.completion", "created": 1, "model": SMALL[1],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                            "finish_reason": "stop"}]})
                assert served(chat(http, "start", conv="conv-up")) == ("simple", *SMALL)
                upstream.sse({**OPENING, "model": BIG[1]}, overloaded)
                upgrade = chat(http, "harder", conv="conv-up", tier="complex", stream=True)
                assert upgrade.headers["x-sentinel-model"] == BIG[1] and '"stream_error"' in upgrade.text
            session = stored(gw, "conv-up")
            assert session is not None and (session["tier"], session["model"]) == ("simple", SMALL[1])


def test_a_stream_that_failed_before_its_first_chunk_upgrades_no_session(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """The upgrade's half of the test above: the session keeps its model until a stream began."""
    small, big = SMALL, BIG
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(small)], "complex": [entry(big)]},
                   {"scripted": f"{srv.url}/v1"})
        with gw.client() as http:
            upstream.json({"id": "c1", "object": "chat.completion", "created": 1, "model": small[1],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                        "finish_reason": "stop"}]})
            assert served(chat(http, "start", conv="conv-up")) == ("simple", *small)
            upstream.sse(OVERLOADED)
            upgrade = chat(http, "harder", conv="conv-up", tier="complex", stream=True)
            assert upgrade.headers["x-sentinel-model"] == big[1] and '"stream_error"' in upgrade.text
            session = stored(gw, "conv-up")
            assert session is not None and (session["tier"], session["provider"], session["model"]) == ("simple", *small)

            # A stream that began (one chunk, then an error) has been served by its model: bound.
            upstream.sse({"id": "c2", "object": "chat.completion.chunk", "created": 1, "model": big[1],
                          "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                                       "finish_reason": None}]}, OVERLOADED)
            began = chat(http, "harder", conv="conv-up", tier="complex", stream=True)
            assert '"Hel"' in began.text and '"stream_error"' in began.text, began.text
            session = stored(gw, "conv-up")
            assert session is not None and (session["tier"], session["provider"], session["model"]) == ("complex", *big)
    assert metric(gw.url, "sentinel_sessions_total", event="upgraded") == 1


def test_a_refused_first_turn_that_followed_a_concurrent_one_leaves_its_session(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Concurrent first turns follow the first one's session (created before the upstream call). One
    that followed it and that no model answered removes only a session it created itself: the one it
    followed stays, on its model (not moved by the refused retry either)."""
    from sentinel.routing.sessions import Session

    tiers = {"simple": [entry(OA_MINI), entry(AN_HAIKU)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers)
    sessions = gw.runtime.native.router.sessions
    create = sessions.create
    winners: list[Session] = []

    async def after_a_concurrent_first_turn(session: Session) -> Session:
        winner = Session(session.conversation_id, session.external_id, "simple", *AN_HAIKU, 1.0, 1.0)
        winners.append(await create(winner))  # created between this turn's read and its write
        return await create(session)

    monkeypatch.setattr(sessions, "create", after_a_concurrent_first_turn)
    with gw.client() as http:
        refused = chat(http, "refuse me #mock:status=500", conv="conv-raced")  # the retry too
        assert refused.status_code == 502, refused.text
    assert len(winners) == 1
    session = stored(gw, "conv-raced")
    assert session is not None and (session["provider"], session["model"]) == AN_HAIKU
    assert session["created_at"] == 1.0


class HeldUpstream:
    """The mock provider, except that the request carrying `marker` is held until `release` is set
    and then fails (a 500): a model that answers one turn slowly with an error and others at once."""

    def __init__(self, marker: bytes) -> None:
        self.mock = create_mock_app()
        self.marker = marker
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.mock(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self.marker in body:
            self.arrived.set()
            released = await asyncio.to_thread(self.release.wait, 30)
            assert released, "the test never released the held request"
            failed = JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=500)
            await failed(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.mock(scope, replay, send)


def test_a_first_turns_retry_leaves_a_session_a_concurrent_turn_was_answered_with(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two first turns of one new conversation: A is drawn onto X, which answers it slowly with a
    5xx; B, sent meanwhile, follows A's session and X answers it. A's retry, answered by Y, moved
    the session to Y (its compare ignored B's refresh): under `keep` a conversation X had served
    was moved to another model, uncounted. It stays on X; A's answer from Y is still served."""
    held = HeldUpstream(b"turn A")
    x = ("held", "gpt-4o-mini")
    with serving(held) as upstream:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(x), entry(OA_MINI)]},
                   {"held": upstream.url + "/v1"})
        selector = gw.runtime.native.router.selector
        draw = selector.choose
        monkeypatch.setattr(selector, "choose", lambda healthy: next(
            (e for e in healthy if (e.provider, e.model) == x), None) or draw(healthy))  # X whenever healthy
        with ThreadPoolExecutor(1) as pool, gw.client() as http_a, gw.client() as http_b:
            turn_a = pool.submit(chat, http_a, "turn A", conv="conv-raced")
            assert held.arrived.wait(30)  # A created its session on X, and X holds A
            assert served(chat(http_b, "turn B", conv="conv-raced")) == ("simple", *x)  # X served it
            held.release.set()  # X fails A: retried on Y
            assert served(turn_a.result(30)) == ("simple", *OA_MINI)
        session = stored(gw, "conv-raced")
        assert session is not None and (session["provider"], session["model"], session["migrations"]) == (*x, 0)
        assert metric(gw.url, "sentinel_sessions_total", event="created") == 1  # A's
        assert metric(gw.url, "sentinel_sessions_total", event="hit") == 1  # B's
        assert metric(gw.url, "sentinel_sessions_total", event="migrated") is None
        with gw.client() as http:
            assert served(chat(http, "turn C", conv="conv-raced")) == ("simple", *x)


def test_a_first_turn_whose_session_claims_reply_was_lost_follows_its_retry(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first turn's session write (SET NX) ran and its reply was lost (a read timeout): the turn
    took the session it had written for another's, so when its model failed and the retry answered,
    the session stayed on the model that had failed (under `keep`, for good: its errors became the
    conversation's answers). The claim read back is the turn's own: the retry's answer moves it."""
    dead = ("dead", "gpt-4o-mini")
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(dead), entry(OA_MINI)]},
               {"dead": f"http://127.0.0.1:{free_port()}/v1"}, debug=True)
    selector = gw.runtime.native.router.selector
    draw = selector.choose
    monkeypatch.setattr(selector, "choose", lambda healthy: next(
        (e for e in healthy if (e.provider, e.model) == dead), None) or draw(healthy))  # dead whenever healthy
    lost = LostReply(gw.runtime.store, monkeypatch, "SET", "sentinel:session:")
    with gw.client() as http:
        assert served(chat(http, "first", conv="conv-lost")) == ("simple", *OA_MINI)  # dead failed: retried
        assert lost.lost == 1
        session = stored(gw, "conv-lost")
        assert session is not None and (session["provider"], session["model"]) == OA_MINI
        assert served(chat(http, "second", conv="conv-lost")) == ("simple", *OA_MINI)
        view = http.get("/debug/sessions/conv-lost")
    assert metric(gw.url, "sentinel_sessions_total", event="created") == 1
    assert metric(gw.url, "sentinel_sessions_total", event="store_error") is None
    assert view.status_code == 200 and view.json()["model"] == OA_MINI[1]
    assert "claim" not in view.json()  # the token stays inside


def test_two_instances_share_sessions_and_backoff(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, redis_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    tiers = {**THREE, "moderate": [entry(("dead", "gpt-4o"))], "complex": [entry(("dead", "gpt-4o")), entry(OA_4O)]}
    a = start(gateway_factory, tmp_path, redis_url, tiers, {"dead": dead})
    b = start(gateway_factory, tmp_path, redis_url, tiers, {"dead": dead}, debug=True)
    with a.client() as http:
        on_a = served(chat(http, "begin on A", conv="conv-shared"))
        r = chat(http, "only the dead one", tier="moderate")
        assert r.status_code == 502 and r.json()["error"]["provider"] == "dead"
    assert metric(a.url, "sentinel_provider_health", provider="dead", model="gpt-4o") == 0
    with b.client() as http:
        for i in range(5):
            assert served(chat(http, f"continue on B {i}", conv="conv-shared")) == on_a
        # Without the shared backoff, B would pick the dead model half the time.
        for i in range(20):
            assert served(chat(http, f"complex {i}", tier="complex"))[1:] == OA_4O
        health = http.get("/debug/health").json()["candidates"]
    assert metric(b.url, "sentinel_sessions_total", event="hit") == 5
    assert metric(b.url, "sentinel_sessions_total", event="created") is None
    assert metric(b.url, "sentinel_model_selections_total", provider="dead") is None
    dead_row = next(c for c in health if c["provider"] == "dead")
    assert (dead_row["available"], dead_row["failures"], dead_row["backoff_seconds"]) == (False, 1, 30)


def test_a_session_naming_a_model_no_tier_may_hold_starts_afresh(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """A session an earlier version stored for a tier model named outside printable ASCII (which
    the tier table no longer accepts): its conversation was served by that model and every answer
    was a 500 (`X-Sentinel-Model` cannot carry it). It is no session now: the turn starts afresh."""
    gw = start(gateway_factory, tmp_path, backend_url)
    now = time.time()
    old = {"conversation_id": "conv-old", "external_id": "alice", "tier": "simple", "provider": "openai",
           "model": "gpt-4o-mini\u2713", "created_at": now, "last_seen_at": now, "migrations": 0}
    gw.write_stored(SessionStore.key("alice", "conv-old"), orjson.dumps(old), 1000)
    with gw.client() as http:
        first = served(chat(http, "hello again", conv="conv-old"))
        assert first[2] != old["model"]
        assert served(chat(http, "and again", conv="conv-old")) == first
    session = stored(gw, "conv-old")
    assert session is not None and (session["tier"], session["provider"], session["model"]) == first


def test_a_session_naming_a_provider_no_tier_may_hold_starts_afresh(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """A stored session naming a provider of more than the 40 characters a tier entry may name (set
    by hand, another version): every turn of its conversation was a 500 (the bare tier entry built
    for it could not be). It is no session: the turn starts afresh, and its session replaces it."""
    gw = start(gateway_factory, tmp_path, backend_url)
    now = time.time()
    old = {"conversation_id": "conv-long", "external_id": "alice", "tier": "simple", "provider": "p" * 41,
           "model": "gpt-4o-mini", "created_at": now, "last_seen_at": now, "migrations": 0}
    gw.write_stored(SessionStore.key("alice", "conv-long"), orjson.dumps(old), 1000)
    with gw.client() as http:
        first = served(chat(http, "hello again", conv="conv-long"))
        assert served(chat(http, "and again", conv="conv-long")) == first
    session = stored(gw, "conv-long")
    assert session is not None and (session["tier"], session["provider"], session["model"]) == first


def test_activity_refreshes_the_session_ttl(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, redis_url: str
) -> None:
    gw = start(gateway_factory, tmp_path, redis_url, session_ttl_seconds=1000)
    client = redis.Redis.from_url(redis_url)
    try:
        with gw.client() as http:
            served(chat(http, "one", conv="conv-ttl"))
            key = SessionStore.key("alice", "conv-ttl")
            assert 0 < client.ttl(key) <= 1000
            client.expire(key, 10)
            served(chat(http, "two", conv="conv-ttl"))
        assert client.ttl(key) > 500
    finally:
        client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServerProcess]:
    """A redis-server of this test's own, so the test can kill it mid-run."""
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as server:
        yield server


def test_redis_stopped_mid_run_means_no_stickiness_never_a_500(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, own_redis: RedisServerProcess
) -> None:
    gw = start(gateway_factory, tmp_path, own_redis.url, quota_failure_mode="local")
    with gw.client() as http:
        sticky = {served(chat(http, f"turn {i}", conv="conv-outage")) for i in range(3)}
        assert len(sticky) == 1
        own_redis.kill9()  # Redis goes away mid-conversation
        models = set()
        for i in range(20):
            r = chat(http, f"after the outage {i}", conv="conv-outage")
            models.add(served(r)[2])
        assert len(models) >= 2  # fresh selection on each turn
        assert served(chat(http, "stateless"))
        assert served(chat(http, "upgrade attempt", conv="conv-outage", tier="complex"))[0] == "complex"
    assert (metric(gw.url, "sentinel_sessions_total", event="store_error") or 0) >= 20
    assert metric(gw.url, "sentinel_http_requests_total", status="500") is None
