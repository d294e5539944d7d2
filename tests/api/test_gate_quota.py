"""Quota arithmetic that cannot be gamed: multipliers reserve, wrong types are refused before
admission, a refused request touches no session, and `[DONE]` follows the usage record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.api.test_quotas import set_plan
from tests.support.accounts import create_key
from tests.support.attack import (
    SpyUpstream,
    bearer,
    ledger_rows,
    openai_error,
    read_until,
    recorded_ids,
    wait_for,
)
from tests.support.clock import FakeClock
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
EMBEDDING = {"model": "text-embedding-3-small", "input": "hi"}
RESPONSE = {"model": "gpt-4o-mini", "input": "hi"}
BASE = {"chat/completions": CHAT, "completions": COMPLETION, "embeddings": EMBEDDING, "responses": RESPONSE}
NATIVE = "/native/v1/chat/completions"


def new_user(gw: Gateway, user: str, spec: str) -> str:
    key = asyncio.run(create_key(gw.settings.database_url, user))[1]
    set_plan(gw.settings.database_url, user, f"plan-{user}", spec)
    return key


# --- n and best_of multiply the output reservation ---------------------------------------------
MULTIPLIED = [
    ("chat/completions", {"n": 20, "max_tokens": 50}, 1000),
    ("chat/completions", {"n": 20, "max_completion_tokens": 50}, 1000),
    # Both caps reserve the larger: `max_tokens` is what some OpenAI-compatible servers read.
    ("chat/completions", {"max_completion_tokens": 10, "max_tokens": 150}, 150),
    ("chat/completions", {"n": 3, "max_tokens": 50, "stream": True}, 150),
    ("completions", {"best_of": 20, "max_tokens": 50}, 1000),
    ("completions", {"n": 2, "best_of": 3, "max_tokens": 50}, 150),
    ("completions", {"n": 5, "max_tokens": 50}, 250),
    ("completions", {"prompt": ["a", "b", "c"], "max_tokens": 50}, 150),  # one completion per prompt
    ("completions", {"prompt": [[64], [65]], "n": 2, "max_tokens": 30}, 120),
]
FITTING = [
    ("chat/completions", {"n": 2, "max_tokens": 50}, 2),
    ("completions", {"best_of": 2, "max_tokens": 50}, None),  # the mock's completions answer one choice
    ("completions", {"n": 2, "max_tokens": 50}, None),
    ("completions", {"prompt": [64, 65, 66], "max_tokens": 50}, None),  # one prompt, as token ids
]


def test_n_and_best_of_multiply_the_output_reservation(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    for i, (path, extra, requested) in enumerate(MULTIPLIED):
        key = new_user(gw, f"greedy-{i}", "requests=100/1m,output_tokens=100/1m")
        with gw.client(key) as http:
            r = http.post(f"/v1/{path}", json={**BASE[path], **extra})
        assert r.status_code == 429, (path, extra, r.text)
        error = openai_error(r.json())
        assert "output" in error["message"], error
        details = error["details"]
        assert (details["metric"], details["limit"], details["used"], details["remaining"]) == (
            "output_tokens", 100, 0, 100), details
        assert details["requested"] == requested, details
        assert datetime.fromisoformat(details["reset_at"]).timestamp() > 0
        assert r.headers["x-ratelimit-limit"]
    assert spy.seen == []
    assert recorded_ids(gw.settings.database_url) == set()
    for i, (path, extra, choices) in enumerate(FITTING):
        key = new_user(gw, f"modest-{i}", "requests=100/1m,output_tokens=100/1m")
        with gw.client(key) as http:
            r = http.post(f"/v1/{path}", json={**BASE[path], **extra})
        assert r.status_code == 200, (path, extra, r.text)
        assert choices is None or len(r.json()["choices"]) == choices


def test_best_of_candidates_are_charged_when_the_answer_has_no_usage(gateway: Gateway) -> None:
    """`best_of` has the provider generate (and bill) that many completions and return the best `n`:
    without the provider's usage, counting the text shown charged `best_of: 20` of 100 tokens each 3
    output tokens (one "Echo: hi"). The candidates never shown are charged as reserved, as hidden
    reasoning is; the text shown is what is counted when nothing is hidden."""
    with gateway.client() as http:
        hidden = http.post("/v1/completions", json={**COMPLETION, "best_of": 20, "max_tokens": 100},
                           headers={"X-Mock-No-Usage": "1"})
        shown = http.post("/v1/completions", json={**COMPLETION, "n": 2, "best_of": 2, "max_tokens": 100},
                          headers={"X-Mock-No-Usage": "1"})
    assert [hidden.status_code, shown.status_code] == [200, 200], [hidden.text, shown.text]
    assert wait_for(lambda: len(ledger_rows(gateway.settings.database_url)) == 2)
    rows = {row["request_id"]: row for row in ledger_rows(gateway.settings.database_url)}
    assert (rows[hidden.headers["x-request-id"]]["usage_source"],
            rows[hidden.headers["x-request-id"]]["output_tokens"]) == ("estimated", 20 * 100)
    assert 0 < rows[shown.headers["x-request-id"]]["output_tokens"] < 20


def test_reasoning_the_client_turned_off_is_charged_when_the_answer_has_no_usage(gateway: Gateway) -> None:
    """vLLM and OpenRouter stream a reasoning model's reasoning unless the client turns it off
    (`include_reasoning: false`, OpenRouter's `reasoning.exclude`); it is generated and billed all the
    same. Without the provider's usage, counting the text shown charged none of it: such a request is
    charged the output it reserved, as one asking OpenAI for hidden reasoning is."""
    asks = [{"include_reasoning": False}, {"reasoning": {"effort": "high", "exclude": True}}, {}]
    with gateway.client() as http:
        answers = [http.post("/v1/chat/completions", json={**CHAT, **ask, "max_tokens": 300},
                             headers={"X-Mock-No-Usage": "1"}) for ask in asks]
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert wait_for(lambda: len(ledger_rows(gateway.settings.database_url)) == 3)
    rows = {row["request_id"]: row for row in ledger_rows(gateway.settings.database_url)}
    charged = [(rows[r.headers["x-request-id"]]["usage_source"], rows[r.headers["x-request-id"]]["output_tokens"])
               for r in answers]
    assert charged[:2] == [("estimated", 300)] * 2, charged
    assert charged[2][0] == "estimated" and 0 < charged[2][1] < 20, charged



def test_definitions_count_against_the_input_limit(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """Tool definitions and schemas are prompt text: a request whose tools alone exceed the plan's
    input limit is refused before it is sent (once estimated at 4 tokens and served: 24,920 input
    tokens on a 1,000-token plan)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    tools = [{"type": "function", "name": f"tool_{i}", "description": "lorem ipsum dolor sit amet " * 40,
              "parameters": {"type": "object", "properties": {}}} for i in range(10)]
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
        "type": "object", "description": "lorem ipsum dolor sit amet " * 400}}}
    bodies = {
        "responses": {**RESPONSE, "tools": tools},
        "responses ": {**RESPONSE, "text": {"format": {"type": "json_schema", "name": "w",
                                                        "schema": schema["json_schema"]["schema"]}}},
        "chat/completions": {**CHAT, "response_format": schema},
        "completions": {**COMPLETION, "suffix": "lorem ipsum dolor sit amet " * 400},
    }
    for i, (path, body) in enumerate(bodies.items()):
        key = new_user(gw, f"schemer-{i}", "requests=100/1h,input_tokens=1000/1h")
        with gw.client(key) as http:
            r = http.post(f"/v1/{path.strip()}", json=body)
        assert r.status_code == 429, (path, r.text)
        assert openai_error(r.json())["details"]["metric"] == "input_tokens", r.text
    assert spy.seen == []


def test_a_suffix_counts_once_for_each_prompt_it_follows(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """A legacy completion completes each prompt of its list on its own, followed by the `suffix`: the
    provider reads the suffix once a prompt. Counted once, 20 prompts with a ~300-token suffix were
    admitted against a 1,000-token input limit and read ~6,000 tokens."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    suffix = "lorem ipsum dolor sit amet " * 50
    many = {**COMPLETION, "prompt": [f"p{i}" for i in range(20)], "suffix": suffix, "max_tokens": 5}
    key = new_user(gw, "suffixed", "requests=100/1h,input_tokens=1000/1h")
    with gw.client(key) as http:
        refused = http.post("/v1/completions", json=many)
        assert refused.status_code == 429, refused.text
        details = openai_error(refused.json())["details"]
        assert details["metric"] == "input_tokens" and details["requested"] > 20 * 250, details
        assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()  # refused: nothing sent or kept
        served = http.post("/v1/completions", json={**many, "prompt": many["prompt"][:2]})
    assert served.status_code == 200, served.text
    # Two prompts reserved the suffix twice (the input limit is the tightest: its remaining is shown),
    # as the provider reads it (the mock counts it once a prompt too).
    assert int(served.headers["x-ratelimit-remaining"]) < 1000 - 2 * 250
    assert served.json()["usage"]["prompt_tokens"] > 2 * 250


def test_a_null_cap_does_not_hide_the_cap_in_force(gateway: Gateway) -> None:
    """`max_completion_tokens: null` is not set, so `max_tokens` is the cap: the gate reserves it and
    a translated request (a Claude model through /v1/chat/completions) sends that same cap upstream,
    not the provider default — the answer can never exceed what was reserved."""
    key = new_user(gateway, "nullcap", "requests=100/1m,output_tokens=50/1m")
    long_prompt = " ".join(f"word{i}" for i in range(400))
    body = {"model": "claude-3-5-haiku-20241022", "max_completion_tokens": None, "max_tokens": 5,
            "messages": [{"role": "user", "content": long_prompt}]}
    with gateway.client(key) as http:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 5, r.json()["usage"]
        assert r.json()["choices"][0]["finish_reason"] == "length"
    rows = ledger_rows(gateway.settings.database_url, "nullcap")
    assert [row["output_tokens"] for row in rows] == [r.json()["usage"]["completion_tokens"]]


# --- metered fields are type-checked before admission -------------------------------------------
MISSING = object()
BAD_FIELDS: list[tuple[str, str, Any, str]] = [
    # (path, field, value, the parameter the 400 names)
    *[("chat/completions", "stream", v, "stream") for v in (1, 0, "true", "false", [], {})],
    ("chat/completions", "stream_options", "include_usage", "stream_options"),
    *[("chat/completions", "max_tokens", v, "max_tokens") for v in (0, -1, 1.5, "10", True, [10])],
    *[("chat/completions", "max_completion_tokens", v, "max_completion_tokens") for v in (0, "5", False)],
    *[("chat/completions", "n", v, "n") for v in (0, -1, 129, "2", True, 2.5)],
    ("chat/completions", "messages", [1], "messages.0"),
    ("chat/completions", "messages", "hi", "messages"),
    ("chat/completions", "messages", [], "messages"),
    ("chat/completions", "messages", {"role": "user"}, "messages"),
    ("chat/completions", "messages", MISSING, "messages"),
    ("chat/completions", "messages", [{"content": "x"}], "messages.0.role"),
    ("chat/completions", "messages", [{"role": 1, "content": "x"}], "messages.0.role"),
    ("chat/completions", "messages", [{"role": "user", "content": 5}], "messages.0.content"),
    ("chat/completions", "messages", [{"role": "user", "content": [1]}], "messages.0.content.0"),
    ("chat/completions", "messages", [{"role": "user", "content": [{"text": "x"}]}], "messages.0.content.0"),
    *[("chat/completions", "model", v, "model") for v in (5, "", "m" * 201, MISSING, ["gpt-4o-mini"])],
    ("chat/completions", "tools", "get_weather", "tools"),
    ("chat/completions", "tools", [1], "tools"),
    *[("completions", "prompt", v, "prompt") for v in (5, {"a": 1}, [1, "a"], MISSING, True, [[1, "a"]])],
    *[("completions", "max_tokens", v, "max_tokens") for v in (0, "10")],
    *[("completions", "n", v, "n") for v in (0, "2")],
    *[("completions", "best_of", v, "best_of") for v in (0, 21, "2")],
    ("completions", "stream", 1, "stream"),
    *[("embeddings", "input", v, "input") for v in (5, MISSING, {"a": 1}, [1, "a"], True)],
    *[("responses", "instructions", v, "instructions") for v in (123, ["x"], {"a": 1})],
    *[("responses", "input", v, "input") for v in (5, {"a": 1})],
    *[("responses", "input", v, "input.0") for v in ([1], ["x"])],
    *[("responses", "max_output_tokens", v, "max_output_tokens") for v in (0, -5, "5", 1.5)],
    # An id is a string, not blank: "" and "  " name nothing (they went to the provider, charged a request).
    *[("responses", "previous_response_id", v, "previous_response_id")
      for v in (5, ["resp_1"], "", "  ", "\t\n", True, {"id": "resp_1"})],
    # A conversation is its id or an object naming it by id; a reference names an item by a string id.
    *[("responses", "conversation", v, "conversation") for v in (5, "", " ", ["conv_1"], True)],
    *[("responses", "conversation", v, "conversation.id")
      for v in ({}, {"id": 5}, {"id": ""}, {"id": "  "}, {"id": ["conv_1"]})],
    *[("responses", "input", [item], "input.0.id") for item in (
        {"type": "item_reference", "id": 5}, {"type": "item_reference"}, {"type": "item_reference", "id": ""},
        {"type": "item_reference", "id": " "},
        {"type": "item_reference", "id": ["msg_1"]}, {"id": 5}, {"id": {"id": "msg_1"}}, {"type": None, "id": ""})],
    *[("responses", "stream", v, "stream") for v in ("true", 1)],
]


def body_with(path: str, field: str, value: Any) -> dict[str, Any]:
    body = dict(BASE[path])
    if value is MISSING:
        body.pop(field, None)
    else:
        body[field] = value
    return body


def test_wrong_types_are_refused_before_any_quota_is_taken(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    # A still window clock: on the wall clock the minute could end between the first request and the
    # last (a hundred 400s in between), and the count restart with it.
    gw = gateway_factory(openai_api_url=spy.url + "/v1", window_clock=FakeClock())
    set_plan(gw.settings.database_url, "alice", "big", "requests=1000/1m,input_tokens=100000/1m")
    with gw.client() as http:
        first = http.post("/v1/chat/completions", json=CHAT)
        assert first.status_code == 200
        remaining = int(first.headers["x-ratelimit-remaining"])
        for path, field, value, param in BAD_FIELDS:
            r = http.post(f"/v1/{path}", json=body_with(path, field, value))
            assert r.status_code == 400, (path, field, value, r.status_code, r.text)
            error = openai_error(r.json())
            assert error["type"] == "invalid_request_error", error
            assert error["details"]["param"] == param, (path, field, value, error)
            assert "x-ratelimit-remaining" not in r.headers
        n_below_best_of = http.post("/v1/completions", json={**COMPLETION, "n": 3, "best_of": 2})
        assert n_below_best_of.status_code == 400 and n_below_best_of.json()["error"]["details"]["param"] == "best_of"
        last = http.post("/v1/chat/completions", json=CHAT)
    assert last.status_code == 200
    assert int(last.headers["x-ratelimit-remaining"]) == remaining - 1  # the 400s cost nothing
    assert spy.paths() == ["/v1/chat/completions"] * 2
    assert recorded_ids(gw.settings.database_url) == {first.headers["x-request-id"], last.headers["x-request-id"]}


def test_a_malformed_conversation_or_item_reference_is_refused_through_the_sdk_before_any_quota(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A Responses `conversation` or `item_reference` id of the wrong shape went to the provider and
    was charged a request, while a malformed `previous_response_id` was refused here — but for a
    blank one (`""`, `"  "`), which went on too: each is a 400 naming its field, through the official
    SDK, nothing reserved, sent or recorded."""
    import openai

    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    client = gw.openai()
    for extra, param in (
        ({"conversation": {"id": 5}}, "conversation.id"), ({"conversation": ""}, "conversation"),
        ({"previous_response_id": ""}, "previous_response_id"), ({"previous_response_id": " "}, "previous_response_id"),
        ({"conversation": "  "}, "conversation"), ({"conversation": {"id": "\n"}}, "conversation.id"),
        ({"input": [{"type": "item_reference", "id": 7}]}, "input.0.id"),
        ({"input": [{"role": "user", "content": "hi"}, {"type": "item_reference", "id": None}]}, "input.1.id"),
    ):
        with pytest.raises(openai.BadRequestError) as error:
            client.responses.create(**{**RESPONSE, **extra})
        assert error.value.status_code == 400 and error.value.code == "invalid_request", error.value.body
        assert isinstance(error.value.body, dict) and error.value.body["details"]["param"] == param, error.value.body
        assert "x-ratelimit-remaining" not in error.value.response.headers
    assert spy.paths() == []
    assert recorded_ids(gw.settings.database_url) == set()


# --- a refused request touches no session ---------------------------------------------------------
def test_a_refused_native_request_creates_or_changes_no_session(
    gateway_factory: Callable[..., Gateway], redis_url: str, tmp_path: Path
) -> None:
    gw = gateway_factory(redis_url=redis_url, debug=True, providers_file=tiers_file(tmp_path, "openai"))
    bob_key = new_user(gw, "bob", "requests=1/1d")
    store = redis.Redis.from_url(redis_url)

    def session(conv: str, user: str = "bob") -> bytes | None:
        from sentinel.routing.sessions import SessionStore

        raw: bytes | None = store.get(SessionStore.key(user, conv))
        return raw

    def chat(http: httpx.Client, conv: str, **extra: Any) -> httpx.Response:
        return http.post(NATIVE, json={"messages": [{"role": "user", "content": "hello"}], "conversation_id": conv,
                                       **extra})

    with gw.client(bob_key) as bob, gw.client() as alice:
        assert chat(bob, "bob-own").status_code == 200
        before = session("bob-own")
        assert before is not None and orjson.loads(before)["external_id"] == "bob"
        # over quota: denied, whatever the conversation
        for conv, extra in (("bob-own", {}), ("bob-own", {"tier": "complex"}), ("alice-conv", {}), ("bob-new", {}),
                            ("alice-conv", {"stream": True})):
            r = chat(bob, conv, **extra)
            assert r.status_code == 429, (conv, r.text)
        # invalid, or not authenticated at all: denied too
        assert bob.post(NATIVE, json={"messages": "hello", "conversation_id": "bob-invalid"}).status_code == 400
        assert httpx.post(gw.url + NATIVE, json={"messages": [{"role": "user", "content": "x"}],
                                                 "conversation_id": "anon"}).status_code == 401
        assert session("bob-own") == before  # neither extended nor changed
        for conv in ("alice-conv", "bob-new", "bob-invalid", "anon"):
            assert session(conv) is None and session(conv, "alice") is None, conv
        missing = bob.get("/debug/sessions/bob-new")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
        # the conversation id Bob tried is Alice's to start (ids are each user's own)
        started = chat(alice, "alice-conv")
        assert started.status_code == 200, started.text
        mine = alice.get("/debug/sessions/alice-conv")
        assert mine.status_code == 200 and mine.json()["external_id"] == "alice"
        assert bob.get("/debug/sessions/alice-conv").status_code == 404  # Bob has none by that id
    store.close()


# --- [DONE] only after the usage record is durable --------------------------------------------------
@pytest.fixture(params=["sql-outbox", "redis-outbox"])
def outbox_redis(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sql-outbox" else request.getfixturevalue("redis_url")


def test_a_client_that_stops_at_done_finds_its_usage_recorded(
    gateway_factory: Callable[..., Gateway], outbox_redis: str | None
) -> None:
    """The sync `openai` SDK stops reading at `data: [DONE]` and closes: by then the record is durable."""
    gw = gateway_factory(redis_url=outbox_redis)
    client = gw.openai()
    db = gw.settings.database_url
    for i in range(3):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"count me {i}"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert f"count me {i}" in text
        assert stream.response.headers["x-request-id"] in recorded_ids(db, outbox_redis)
        completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=f"legacy {i}", stream=True)
        assert "".join(c.choices[0].text for c in completion if c.choices)
        assert completion.response.headers["x-request-id"] in recorded_ids(db, outbox_redis)


def test_done_follows_the_record_while_the_connection_stays_open(
    gateway_factory: Callable[..., Gateway], outbox_redis: str | None
) -> None:
    gw = gateway_factory(redis_url=outbox_redis)
    db = gw.settings.database_url
    # A Responses stream ends with `response.completed` (no [DONE]): it was sent at once, before the
    # record (and the response's owner, so a follow-up naming it was a 404).
    finals = [("/v1/chat/completions", CHAT, b"data: [DONE]"), ("/v1/completions", COMPLETION, b"data: [DONE]"),
              ("/v1/responses", RESPONSE, b'"type":"response.completed"')]
    for path, body, final in finals:
        for i in range(3):
            rid = f"done-probe-{path.count('/')}-{path[-3:]}-{i}"
            headers = {**bearer(gw.key), "X-Request-Id": rid}
            with read_until(gw.url, path, final, headers=headers,
                            body=orjson.dumps({**body, "stream": True})) as seen:
                assert final in seen, seen[-300:]
                assert any(r.startswith(rid + "~") for r in recorded_ids(db, outbox_redis)), path


def test_a_large_answer_is_recorded_from_its_tail_before_its_last_bytes(
    gateway_factory: Callable[..., Gateway], outbox_redis: str | None
) -> None:
    """An answer over 1 MiB is relayed as it arrives; its usage (at the very end of the JSON) is
    still measured, and the record is durable by the time the client has the whole body."""
    gw = gateway_factory(redis_url=outbox_redis, usage_flush_interval_seconds=0.1)
    inputs = [f"embedding input number {i} " * 5 for i in range(80)]
    with gw.client() as http:
        r = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": inputs})
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        assert rid in recorded_ids(gw.settings.database_url, outbox_redis)
    assert len(r.content) > 1024 * 1024, len(r.content)
    answer = r.json()
    assert len(answer["data"]) == len(inputs)
    assert wait_for(lambda: any(row["request_id"] == rid for row in ledger_rows(gw.settings.database_url)))
    row = next(row for row in ledger_rows(gw.settings.database_url) if row["request_id"] == rid)
    assert (row["usage_source"], row["input_tokens"], row["status"]) == (
        "measured", answer["usage"]["prompt_tokens"], 200)



def test_a_large_answer_is_charged_its_own_usage_not_an_echoed_one(gateway_factory: Callable[..., Gateway]) -> None:
    """A Responses answer echoes the request's `tools` and ends with its `metadata`, after `usage`:
    a `"usage"` the client put in either (a schema, a metadata key) is not the answer's (once the
    last `"usage"` in the tail was taken, and 498,630 input tokens were recorded as 4)."""
    upstream = ScriptedUpstream()
    fake = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    tools = [{"type": "function", "name": f"tool_{i}", "description": "lorem ipsum " * 100,
              "parameters": {"type": "object", "properties": {}, "usage": fake}} for i in range(1000)]
    usage = {"input_tokens": 300_000, "output_tokens": 7, "total_tokens": 300_007}
    answer = {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4o-mini", "output": [],
              "tools": tools, "usage": usage, "user": None,
              "metadata": {"usage": orjson.dumps(fake).decode(), 'x"usage': "{}"}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.json(answer)
            r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "store": False})
    assert r.status_code == 200 and len(r.content) > 1024 * 1024, (r.status_code, len(r.content))
    rid = r.headers["x-request-id"]
    assert wait_for(lambda: any(row["request_id"] == rid for row in ledger_rows(gw.settings.database_url)))
    row = next(row for row in ledger_rows(gw.settings.database_url) if row["request_id"] == rid)
    assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("measured", 300_000, 7), row


def test_a_large_answer_without_usage_is_charged_what_it_reserved(gateway: Gateway) -> None:
    """Over 1 MiB the answer's text is not kept; with no `usage` at its end the output cannot be
    counted, so the record charges the output the request reserved, never nothing."""
    prompt = " ".join(f"w{i}" for i in range(2000))
    body = {**CHAT, "messages": [{"role": "user", "content": prompt}], "n": 128, "max_tokens": 2010}
    with gateway.client() as http:
        r = http.post("/v1/chat/completions", json=body, headers={"X-Mock-No-Usage": "1"})
        assert r.status_code == 200, r.text
    assert len(r.content) > 1024 * 1024, len(r.content)
    assert "usage" not in r.json()
    rid = r.headers["x-request-id"]
    row = next(row for row in ledger_rows(gateway.settings.database_url) if row["request_id"] == rid)
    assert (row["usage_source"], row["output_tokens"], row["status"]) == ("estimated", 128 * 2010, 200)
    assert row["input_tokens"] > 2000


def test_large_native_and_count_tokens_bodies_are_counted_off_the_event_loop(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of 64 KiB and more is counted in a worker thread (/v1 did; the native API and
    count_tokens on a non-Anthropic model counted on the event loop, ~0.2 s of stall for 9 MB)."""
    import threading

    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"))
    with gw.client() as http:
        assert http.post(NATIVE, json={"messages": [{"role": "user", "content": "warm up"}]}).status_code == 200
        loop_thread = gw.server.thread
        threads: list[threading.Thread] = []

        def recording(real: Callable[..., int]) -> Callable[..., int]:
            def count(*args: Any, **kwargs: Any) -> int:
                threads.append(threading.current_thread())
                return real(*args, **kwargs)
            return count

        for counter in (gw.runtime.native.meter.counter, gw.runtime.messages.counter):  # type: ignore[attr-defined]
            for name in ("count_chat", "count_text"):
                monkeypatch.setattr(counter, name, recording(getattr(counter, name)))
        big = " ".join(f"w{i}" for i in range(20_000))  # > 64 KiB
        native = http.post(NATIVE, json={"messages": [{"role": "user", "content": big}]})
        counted = http.post("/v1/messages/count_tokens", json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]})
    assert native.status_code == 200 and counted.status_code == 200, (native.text, counted.text)
    assert threads and all(t is not loop_thread and t is not threading.main_thread() for t in threads), threads


def test_the_provider_gets_what_sentinel_read_never_the_clients_bytes(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """A key given twice is read last-wins by Sentinel; a provider reading first-wins would have
    used a cap Sentinel never reserved (or an id it never checked). The body sent is re-encoded
    from what Sentinel read, on /v1/chat/completions, /v1/messages and pass-through paths."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url, passthrough="/v1/moderations")
        with gw.client() as http:
            upstream.json({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
            chat = http.post("/v1/chat/completions", headers={"Content-Type": "application/json"}, content=(
                b'{"max_tokens": 100000, "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],'
                b' "max_tokens": 5}'))
            upstream.json({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
                           "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 1, "output_tokens": 1}})
            messages = http.post("/v1/messages", headers={"Content-Type": "application/json"}, content=(
                b'{"max_tokens": 100000, "model": "claude-3-5-haiku-20241022",'
                b' "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}'))
            upstream.json({"id": "modr-1", "results": []})
            batch = http.post("/v1/moderations", headers={"Content-Type": "application/json"},
                              content=b'{"input": "first", "input": "last"}')
            upstream.json({"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
            # a Content-Encoding the body does not have (Sentinel read it plain): not passed on
            labelled = http.post("/v1/chat/completions", json=CHAT, headers={"Content-Encoding": "gzip"})
    assert [r.status_code for r in (chat, messages, batch, labelled)] == [200] * 4, [chat.text, labelled.text]
    assert "content-encoding" not in upstream.received_headers[3], upstream.received_headers[3]
    sent = [orjson.loads(body) for body in upstream.received]
    assert [body.get("max_tokens") for body in sent[:2]] == [5, 5]
    assert sent[2] == {"input": "last"}
    assert all(body.count(b'"max_tokens"') <= 1 and body.count(b'"completion_window"') <= 1
               for body in upstream.received)


class LingeringUpstream:
    """Streams the queued Responses events at once, then keeps the connection open for `linger` s
    (as a proxy in front of a provider may): only a relay that holds the final event back until the
    record is stored, and stops reading once it came, answers the client at once."""

    def __init__(self, linger: float = 5.0) -> None:
        self.linger = linger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio as aio

        from tests.support.upstream import lifespan

        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        events = [
            {"type": "response.created", "response": {"id": "resp_linger1", "object": "response", "status": "in_progress"}},
            {"type": "response.output_text.delta", "delta": "hello"},
            {"type": "response.completed", "response": {"id": "resp_linger1", "object": "response", "status": "completed",
                                                        "usage": {"input_tokens": 11, "output_tokens": 22}}},
        ]
        body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await aio.sleep(self.linger)
        await send({"type": "http.response.body", "body": b""})


def test_a_responses_stream_ends_for_the_client_once_recorded_and_owned(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """`response.completed` is held back until the record is durable and the response is its
    caller's: a follow-up naming it at once is served, and the stream is complete (not a 499)."""
    with serving(LingeringUpstream()) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        rid = "linger-probe"
        with read_until(gw.url, "/v1/responses", b'"type":"response.completed"',
                        headers={**bearer(gw.key), "X-Request-Id": rid},
                        body=orjson.dumps({**RESPONSE, "stream": True}), timeout=4) as seen:
            assert b'"type":"response.completed"' in seen, seen[-300:]
            assert any(r.startswith(rid + "~") for r in recorded_ids(gw.settings.database_url, None))
            assert gw.read_stored("sentinel:owner:resp_linger1") == b"alice"
    rows = [r for r in ledger_rows(gw.settings.database_url) if r["request_id"].startswith(rid)]
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [(200, 11, 22)], rows


def test_a_count_of_tokens_that_fails_gives_its_request_back(
    gateway_factory: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    """count_tokens on a non-Anthropic model is counted by Sentinel between its admission and its
    settlement: a count that raised (or was cancelled) kept the request reserved until the window
    ended, so a plan of one request a day was spent by a 500."""
    gw = gateway_factory()
    key = new_user(gw, "carol", "requests=1/1d")
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]}

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug in counting")

    with gw.client(key) as http:
        monkeypatch.setattr(gw.runtime.messages.counter, "count_text", broken)
        assert http.post("/v1/messages/count_tokens", json=ask).status_code == 500
        monkeypatch.undo()
        counted = http.post("/v1/messages/count_tokens", json=ask)
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0, counted.text
