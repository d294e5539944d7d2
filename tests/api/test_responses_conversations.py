"""A conversation's count of context (what every response continuing it makes the provider read
again: `sentinel.services.answers.remember_context`) as an attacker with a user key would move it:
items added while a turn runs, turns run side by side."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import wait_for

ITEMS = {"items": [{"type": "message", "role": "user", "content": "lighthouse " * 40_000}]}  # ~440 KB: ~110k tokens


def _response(response_id: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "status": "completed", "model": "gpt-4o-mini", "output": [],
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens}}


def _count(gw: Gateway) -> int:
    return int(gw.read_stored("sentinel:context:conv_1") or 0)


def test_items_added_while_a_turn_runs_stay_counted(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A turn's end set the conversation's count to the turn's own tokens: ~110k tokens of items added
    while it streamed were forgotten (the provider's conversation holds them), and every later turn
    cut before its usage was charged without them — the count never grew back."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/conversations,/v1/conversations/*")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.sse({"type": "response.created", "response": {"id": "resp_1", "object": "response"}},
                     {"type": "response.output_text.delta", "delta": "hel"}, hold=True)
        upstream.json({"object": "list", "data": []})
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            created = _count(gw)  # (the turn's input reads these again)
            with alice.stream("POST", "/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "stream": True,
                                                             "conversation": "conv_1"}) as turn:
                assert turn.status_code == 200
                chunks = turn.iter_bytes()  # (kept: a dropped iterator closes the stream)
                next(chunks)  # the turn is under way
                assert alice.post("/v1/conversations/conv_1/items", json=ITEMS).status_code == 200
                added = _count(gw)
                assert added >= 100_000
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
        assert wait_for(lambda: _count(gw) != added)  # the turn's count is kept after its record
        cut = next(r for r in ledger_rows(gw.settings.database_url, "alice") if r["endpoint"] == "responses")
        assert cut["usage_source"] == "estimated" and cut["input_tokens"] < 100  # (the items came after it began)
        assert _count(gw) == added - created + cut["input_tokens"] + cut["output_tokens"]


def test_turns_run_side_by_side_both_stay_counted(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Two turns admitted at the same count: the one ending last set the count to its own tokens,
    dropping the other's 50k (both are in the provider's conversation)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, passthrough="/v1/conversations")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.sse({"type": "response.created", "response": {"id": "resp_1", "object": "response"}},
                     {"type": "response.output_text.delta", "delta": "hel"}, hold=True)
        upstream.json(_response("resp_2", 50_000, 100))
        turn = {"model": "gpt-4o-mini", "input": "hi", "conversation": "conv_1"}
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            created = _count(gw)
            with alice.stream("POST", "/v1/responses", json={**turn, "stream": True}) as first:
                chunks = first.iter_bytes()
                next(chunks)
                second = alice.post("/v1/responses", json=turn)
                assert second.status_code == 200, second.text
                assert _count(gw) == 50_100
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
        assert wait_for(lambda: _count(gw) != 50_100)
    cut = next(r for r in ledger_rows(gw.settings.database_url, "alice") if r["status"] == 499)
    assert _count(gw) == 50_100 - created + cut["input_tokens"] + cut["output_tokens"]


def test_a_conversation_a_turn_shrank_keeps_the_turns_count(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """The provider's count of a turn is the conversation as it read it (truncated, say): a count
    that did not grow meanwhile is that turn's, lower or not."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, passthrough="/v1/conversations")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json(_response("resp_1", 9_000, 1_000))
        upstream.json(_response("resp_2", 4_000, 500))
        turn = {"model": "gpt-4o-mini", "input": "hi", "conversation": "conv_1"}
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            assert alice.post("/v1/responses", json=turn).status_code == 200
            assert _count(gw) == 10_000
            assert alice.post("/v1/responses", json={**turn, "truncation": "auto"}).status_code == 200
            assert _count(gw) == 4_500




def test_images_given_to_a_conversation_count_as_images(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Items were counted a token per 4 bytes: 40 images by URL (~3 KB, 1,445 tokens each to gpt-4o:
    57,800) were 800 tokens of context, and a turn in the conversation cut before its usage was
    charged those — where the same images in a response's own input reserve and charge 57,800."""
    upstream = ScriptedUpstream()
    image = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "high"}
    items = {"items": [{"type": "message", "role": "user", "content": [image] * 20}]}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/conversations,/v1/conversations/*")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json({"object": "list", "data": []})
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json=items).status_code == 200
            assert _count(gw) >= 20 * 1445
            assert alice.post("/v1/conversations/conv_1/items", json=items).status_code == 200
            assert _count(gw) >= 40 * 1445


def test_items_given_to_a_conversation_by_reference_count_as_references(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """An item given to a conversation by id (an `item_reference`, or `{"id": …}` without a type) puts
    the stored item's whole text in the conversation, which every later turn reads again: it was
    counted as the ~40 bytes of its reference (10 tokens), where the same reference in a response's
    own input reserves `SENTINEL_REFERENCE_INPUT_TOKENS` — a turn cut before its usage was charged
    ~10 tokens a referenced item, whatever its size."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/conversations,/v1/conversations/*", reference_input_tokens=5_000)
        for item in ("msg_1", "msg_2", "msg_3", "msg_4"):
            gw.write_stored(f"sentinel:owner:{item}", b"alice", 3600)
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json({"object": "list", "data": []})
        with gw.client() as alice:
            created = alice.post("/v1/conversations", json={"items": [{"type": "item_reference", "id": "msg_1"}]})
            assert created.status_code == 200, created.text
            assert 5_000 <= _count(gw) < 5_100
            added = alice.post("/v1/conversations/conv_1/items", json={"items": [{"id": f"msg_{n}"} for n in (2, 3, 4)]})
            assert added.status_code == 200, added.text
            assert 20_000 <= _count(gw) < 20_200
