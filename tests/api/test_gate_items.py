"""Responses API items (`msg_…`, `fc_…`, `rs_…`) belong to the user Sentinel showed them to.

Every user shares the provider account: an `item_reference` (or an input item given with its `id`)
naming another user's item had the model read it. Sentinel makes an item its caller's as it relays
it — a response's output, plain or streamed, stored or not; a response's input items; a
conversation's items — and answers any other id as one that does not exist, before anything is
reserved or sent. With the official openai SDK against the mock upstream, on a real Redis and on
the in-memory store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest

from sentinel.services.answers import MAX_BUFFERED
from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, openai_error
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

MODEL = "gpt-4o-mini"


def start(gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None) -> Gateway:
    return gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url)


def sdk(gw: Gateway, user: str) -> openai.OpenAI:
    key = gw.key if user == "alice" else asyncio.run(create_key(gw.settings.database_url, user))[1]
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def output_item(client: openai.OpenAI, *, stream: bool, **extra: Any) -> str:
    """The id of the first output item of a response `client` makes."""
    if not stream:
        return str(client.responses.create(model=MODEL, input="alice's secret plan", **extra).output[0].id)
    events = list(client.responses.create(model=MODEL, input="alice's secret plan", stream=True, **extra))
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done, [e.type for e in events]
    return str(done[0].item.id)


def refer(client: openai.OpenAI, item_id: str, *, by_id: bool = False) -> Any:
    """A response whose input names `item_id`: by an `item_reference`, or (`by_id`) as an item given with its id."""
    named: dict[str, Any] = (
        {"type": "message", "id": item_id, "role": "assistant", "content": "(as you said)"} if by_id
        else {"type": "item_reference", "id": item_id}
    )
    return client.responses.create(model=MODEL, input=[{"role": "user", "content": "repeat that"}, named])


def refused(attempt: Callable[[], Any]) -> openai.NotFoundError:
    with pytest.raises(openai.NotFoundError) as caught:
        attempt()
    assert caught.value.status_code == 404
    openai_error(caught.value.response.json())
    return caught.value


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("store", [True, False], ids=["stored", "unstored"])
def test_another_users_output_item_is_not_found(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None, stream: bool, store: bool,
) -> None:
    """Bob names Alice's output item — by reference, or as an item with its id: the 404 an id that does
    not exist gets, and nothing reaches the provider nor is recorded. Alice names her own: served."""
    gw = start(gateway_factory, spy, backend_url)
    alice, bob = sdk(gw, "alice"), sdk(gw, "bob")
    item = output_item(alice, stream=stream, store=store)
    ghost = item[:4] + "0" * (len(item) - 4)
    spy.clear()
    for by_id in (False, True):
        theirs = refused(lambda by_id=by_id: refer(bob, item, by_id=by_id))
        missing = refused(lambda by_id=by_id: refer(bob, ghost, by_id=by_id))
        assert theirs.response.text.replace(item, "<id>") == missing.response.text.replace(ghost, "<id>")
    assert spy.seen == []  # refused before anything was sent
    assert refer(alice, item).status == "completed"
    assert refer(alice, item, by_id=True).status == "completed"


def test_input_items_listed_become_their_callers(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
) -> None:
    """The provider gives a response's input items ids Sentinel first sees when their owner lists them:
    then they are the owner's to name, never another's."""
    gw = start(gateway_factory, spy, backend_url)
    alice, bob = sdk(gw, "alice"), sdk(gw, "bob")
    response = alice.responses.create(model=MODEL, input=[{"role": "user", "content": "my diary"}])
    listed = alice.responses.input_items.list(response.id)
    given = str(listed.data[0].id)
    assert given.startswith("msg_")
    refused(lambda: refer(bob, given))
    assert refer(alice, given).status == "completed"


def test_a_conversations_items_are_its_owners(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A conversation's items — added, listed, read one by one — are its owner's: Bob can neither have
    a response read one nor add one to his own conversation; Alice can. Deleted, an item is no one's."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/conversations,/v1/conversations/*")
        alice, bob = sdk(gw, "alice"), sdk(gw, "bob")
        upstream.json({"id": "conv_a", "object": "conversation", "created_at": 1, "metadata": {}})
        upstream.json({"id": "conv_b", "object": "conversation", "created_at": 1, "metadata": {}})
        message = {"type": "message", "role": "user", "status": "completed",
                   "content": [{"type": "input_text", "text": "the vault code is 1234"}]}
        upstream.json({"object": "list", "data": [{**message, "id": "msg_added"}], "has_more": False,
                       "first_id": "msg_added", "last_id": "msg_added"})
        upstream.json({"object": "list", "data": [{**message, "id": "msg_listed"}], "has_more": False,
                       "first_id": "msg_listed", "last_id": "msg_listed"})
        upstream.json({**message, "id": "msg_read"})
        assert alice.conversations.create().id == "conv_a"
        assert bob.conversations.create().id == "conv_b"
        alice.conversations.items.create("conv_a", items=[{"type": "message", "role": "user", "content": "x"}])
        alice.conversations.items.list("conv_a")
        assert alice.conversations.items.retrieve("msg_read", conversation_id="conv_a").id == "msg_read"
        sent = len(upstream.received)
        for item in ("msg_added", "msg_listed", "msg_read"):
            refused(lambda item=item: refer(bob, item))
            refused(lambda item=item: bob.conversations.items.create(
                "conv_b", items=[{"type": "item_reference", "id": item}]))
        assert len(upstream.received) == sent  # none of Bob's attempts reached the provider
        upstream.json({"id": "resp_1", "object": "response", "status": "completed", "model": MODEL, "output": [],
                       "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}})
        assert refer(alice, "msg_added").status == "completed"
        upstream.json({"id": "conv_a", "object": "conversation", "created_at": 1, "metadata": {}})
        alice.conversations.items.delete("msg_read", conversation_id="conv_a")
        refused(lambda: refer(alice, "msg_read"))  # deleted: its record went with it


def draw(client: openai.OpenAI, text: str, **extra: Any) -> Any:
    """A response with an image (an `image_generation_call` whose base64 makes the answer over 1 MiB,
    relayed as it arrives), checked to be that large."""
    raw = client.responses.with_raw_response.create(
        model=MODEL, input=text, tools=[{"type": "image_generation", "model": MODEL}], **extra)
    assert len(raw.content) > MAX_BUFFERED
    return raw.parse()


@pytest.mark.parametrize("store", [True, False], ids=["stored", "unstored"])
def test_a_large_answers_items_are_its_callers(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None, store: bool,
) -> None:
    """An answer over 1 MiB (an image's base64) was relayed unparsed and its items never became the
    caller's: the SDK's `input = previous.output + [...]` got 404 for the caller's own items. Its
    items are read as they pass: Alice gives them back; Bob still gets 404, nothing sent."""
    gw = start(gateway_factory, spy, backend_url)
    alice, bob = sdk(gw, "alice"), sdk(gw, "bob")
    previous = draw(alice, "draw a cat", store=store)
    ids = [str(item.id) for item in previous.output]
    assert [i[:3] for i in ids] == ["ig_", "msg"], ids
    spy.clear()
    for item in ids:
        for by_id in (False, True):
            refused(lambda item=item, by_id=by_id: refer(bob, item, by_id=by_id))
    assert spy.seen == []
    again = alice.responses.create(model=MODEL, input=[*previous.output, {"role": "user", "content": "again"}])
    assert again.status == "completed"
    assert refer(alice, ids[0]).status == "completed"
    if store:  # its input items, listed: over 1 MiB too (the image given back); the provider named "again"
        listed = alice.responses.input_items.with_raw_response.list(again.id)
        assert len(listed.content) > MAX_BUFFERED
        given = str(listed.parse().data[-1].id)
        assert given not in ids and given.startswith("msg_")
        refused(lambda: refer(bob, given))
        assert refer(alice, given).status == "completed"


def test_what_a_large_answer_echoes_claims_no_item(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
) -> None:
    """Only an item's own `"id"` is read from a large answer: not `"id":"msg_victim"` in the model's
    text (its quotes escaped), nor a `metadata` key `id` the caller chose (an object echoed as the
    caller sent it): either would have made an item no one was shown Bob's."""
    gw = start(gateway_factory, spy, backend_url)
    bob = sdk(gw, "bob")
    forged = 'say "id":"msg_victim" and \\"id\\":\\"msg_victim\\"'
    answer = draw(bob, forged, metadata={"id": "msg_victim"})
    assert "msg_victim" in answer.output_text and answer.metadata == {"id": "msg_victim"}
    spy.clear()
    for by_id in (False, True):
        refused(lambda by_id=by_id: refer(bob, "msg_victim", by_id=by_id))
    assert spy.seen == []
    assert refer(bob, str(answer.output[1].id)).status == "completed"  # his own item is his


def test_a_conversation_turns_items_stay_owned_when_their_response_is_read(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A turn's output items are kept as long as its conversation (which keeps them until they are
    deleted); reading the turn's response (`GET /v1/responses/{id}`, its `input_items`) claimed them
    again for a response's 31 days, and the owner's own claim set that expiry: a month on, the
    conversation still held them, but naming one was 404 — to its owner too."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/responses/*")
        gw.write_stored("sentinel:owner:conv_a", b"alice", 3600)
        turn = {"id": "resp_1", "object": "response", "status": "completed", "model": MODEL,
                "output": [{"type": "message", "id": "msg_out", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
                "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}}
        upstream.json(turn)
        upstream.json(turn)
        upstream.json({"object": "list", "data": [{"type": "message", "id": "msg_out", "role": "assistant",
                                                    "content": []}], "has_more": False})
        alice = sdk(gw, "alice")
        alice.responses.create(model=MODEL, input="hello", conversation="conv_a")
        assert gw.stored_ttl("sentinel:owner:msg_out") == -1.0  # the conversation's: until deleted
        assert alice.responses.retrieve("resp_1").id == "resp_1"
        alice.responses.input_items.list("resp_1")
        assert gw.stored_ttl("sentinel:owner:msg_out") == -1.0
        assert gw.stored_ttl("sentinel:owner:resp_1") is not None  # (the response itself: 31 days)


@pytest.mark.parametrize("theirs", ["msg_alice", "file-alice"], ids=["item", "file"])
def test_a_delete_under_ones_own_conversation_never_forgets_another_users_object(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, theirs: str,
) -> None:
    """Bob names Alice's item — or any object of hers, a file — as an item of his own conversation in
    a DELETE (`/v1/conversations/{his}/items/{hers}`), and a provider answers it 2xx: her owner record
    was dropped with all Sentinel kept of it, her item or file no one's (404 to her from then on). As
    a DELETE of another's run under one's own eval, it now ends only an item of the caller's."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/conversations,/v1/conversations/*,/v1/files/*")
        alice, bob = sdk(gw, "alice"), sdk(gw, "bob")
        message = {"type": "message", "role": "user", "status": "completed",
                   "content": [{"type": "input_text", "text": "the vault code is 1234"}]}
        upstream.json({"id": "conv_a", "object": "conversation", "created_at": 1, "metadata": {}})
        upstream.json({"object": "list", "data": [{**message, "id": "msg_alice"}], "has_more": False,
                       "first_id": "msg_alice", "last_id": "msg_alice"})
        upstream.json({"id": "file-alice", "object": "file", "bytes": 4, "created_at": 1, "filename": "a.txt",
                       "purpose": "user_data", "status": "processed"})
        upstream.json({"id": "conv_b", "object": "conversation", "created_at": 1, "metadata": {}})
        assert alice.conversations.create().id == "conv_a"
        alice.conversations.items.list("conv_a")
        assert alice.files.create(file=("a.txt", b"1234"), purpose="user_data").id == "file-alice"
        assert bob.conversations.create().id == "conv_b"
        upstream.json({"id": "conv_b", "object": "conversation", "created_at": 1, "metadata": {}})
        bob.conversations.items.delete(theirs, conversation_id="conv_b")  # (a provider answering it 2xx)
        assert gw.read_stored(f"sentinel:owner:{theirs}") == b"alice"
        refused(lambda: refer(bob, theirs))
        upstream.json({"id": "resp_1", "object": "response", "status": "completed", "model": MODEL, "output": [],
                       "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}})
        named = refer(alice, theirs) if theirs.startswith("msg_") else alice.responses.create(
            model=MODEL, input=[{"role": "user", "content": [{"type": "input_file", "file_id": theirs}]}])
        assert named.status == "completed"


@pytest.mark.parametrize("way", ["plain", "large", "streamed"])
def test_a_response_answered_with_another_users_id_never_sets_its_context(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, way: str,
) -> None:
    """A stored response's context (its exchange's tokens) is what a request continuing it reserves.
    A provider answering Bob's request with Alice's response id (its owner kept: Alice's) had Bob's
    few tokens replace her 5,000: a request of hers continuing it reserved as if it held almost
    nothing. The count is now kept only for a response its caller owns."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url)
        alice, bob = sdk(gw, "alice"), sdk(gw, "bob")

        def answer(tokens: int, output: list[Any] | None = None) -> dict[str, Any]:
            return {"id": "resp_alice", "object": "response", "status": "completed", "model": MODEL,
                    "output": output or [],
                    "usage": {"input_tokens": tokens, "output_tokens": 1, "total_tokens": tokens + 1}}

        upstream.json(answer(5000))
        assert alice.responses.create(model=MODEL, input="alice's long story").id == "resp_alice"
        hers = gw.read_stored("sentinel:context:resp_alice")
        assert hers == b"5001"
        if way == "streamed":
            upstream.sse({"type": "response.completed", "sequence_number": 0, "response": answer(3)})
            assert [e.type for e in bob.responses.create(model=MODEL, input="hi", stream=True)] == ["response.completed"]
        else:  # (large: relayed as it arrives, past MAX_BUFFERED)
            text = "x" * (MAX_BUFFERED + 1 if way == "large" else 1)
            upstream.json(answer(3, [{"type": "message", "id": "msg_bob", "role": "assistant", "status": "completed",
                                      "content": [{"type": "output_text", "text": text, "annotations": []}]}]))
            bob.responses.create(model=MODEL, input="hi")
    assert gw.read_stored("sentinel:owner:resp_alice") == b"alice"
    assert gw.read_stored("sentinel:context:resp_alice") == hers
