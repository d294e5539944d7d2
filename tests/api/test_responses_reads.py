"""Reads of a stored response as an attacker with a user key would make them to get its output
without its usage being charged: its events streamed again (`GET /v1/responses/{id}?stream=true`,
resumed with `starting_after`), which carry the usage only in an event Sentinel does not read on a
read."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from sentinel.domain.usage import charge_id
from sentinel.governance.ownership import MAX_CUT_TURNS
from sentinel.services.answers import MAX_BUFFERED
from tests.api.conftest import Gateway
from tests.api.test_gate_settlement import _cut_stream, recorded
from tests.support.attack import ledger_rows
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import wait_for

USAGE = {"input_tokens": 700, "output_tokens": 9000, "total_tokens": 9700}
ANSWER = {"id": "resp_cut", "object": "response", "status": "completed", "model": "gpt-4o-mini",
          "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                      "content": [{"type": "output_text", "text": "the whole answer", "annotations": []}]}],
          "usage": USAGE}
CREATED = {"type": "response.created", "sequence_number": 0,
           "response": {**ANSWER, "status": "in_progress", "output": [], "usage": None}}
# A stored response streamed and left after its first event (charged a few tokens).
CUT = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 9000}


@pytest.mark.parametrize("query", ["stream=true", "stream=true&starting_after=0", "stream=True", "stream=1",
                                   "stream=false&stream=on"])
def test_a_cut_response_streamed_again_is_refused_and_left_to_the_read_that_charges_it(
    gateway_factory: Callable[..., Gateway], query: str,
) -> None:
    """A stored response whose stream the client cut was charged its few streamed tokens, its usage
    left to the first read showing it. Read again as a stream (`?stream=true`, the Responses API's
    way to resume one, `starting_after` an event's number), its answer is events — the whole output,
    then `response.completed` with the usage — which a read does not parse: relayed whole, charged
    nothing, the 9,700 tokens free however often. Such a read is 400 `stream_not_supported` before
    anything is reserved or sent (no background response is ever made through Sentinel: nothing is
    left to stream); a plain read still charges the usage."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.sse(CREATED, hold=True)
            cut = _cut_stream(gw, http, CUT)
            assert cut["input_tokens"] + cut["output_tokens"] < 9000, cut
            sent = len(upstream.received)
            upstream.sse(CREATED, {"type": "response.output_text.delta", "sequence_number": 1, "delta": "the whole answer"},
                         {"type": "response.completed", "sequence_number": 2, "response": ANSWER})
            replay = http.get(f"/v1/responses/resp_cut?{query}")
            assert replay.status_code == 400, replay.text
            error = replay.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "stream_not_supported",
                                                                     "stream")
            assert "x-ratelimit-remaining" not in replay.headers  # (refused before admission)
            assert len(upstream.received) == sent  # never sent
            assert recorded(gw, replay.headers["x-request-id"]) == []
            upstream.drop_queued()  # (the replay queued above was never asked for)
            upstream.json(ANSWER)
            read = http.get("/v1/responses/resp_cut")
            assert read.status_code == 200, read.text
            charge = charge_id(cut["external_id"], "resp_cut")
            assert wait_for(lambda: len(recorded(gw, charge)) == 1)
            assert [(r["input_tokens"], r["output_tokens"]) for r in recorded(gw, charge)] == [(700, 9000)]


def test_a_read_asking_for_no_stream_is_relayed(gateway_factory: Callable[..., Gateway]) -> None:
    """`stream=false` (or an empty value) asks for none: relayed with the rest of the query."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.json(ANSWER)
            assert http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"}).status_code == 200
            upstream.json(ANSWER)
            read = http.get("/v1/responses/resp_cut?stream=false&include=message.output_text.logprobs")
    assert read.status_code == 200, read.text
    assert read.json()["id"] == "resp_cut"


def test_a_stored_response_read_as_events_all_the_same_is_not_relayed(gateway_factory: Callable[..., Gateway]) -> None:
    """A read of a stored response the provider answers with its events all the same (a stream asked
    another way than `stream`: an `Accept` header, say) is not relayed — its output would be read
    with its usage unread —: read to its end and recorded as a call whose answer could not be read (502), its
    output never given."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.json(ANSWER)
            assert http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"}).status_code == 200
            upstream.sse(CREATED, {"type": "response.output_text.delta", "sequence_number": 1, "delta": "the whole answer"},
                         {"type": "response.completed", "sequence_number": 2, "response": ANSWER})
            read = http.get("/v1/responses/resp_cut", headers={"Accept": "text/event-stream"})
            assert read.status_code == 502, read.text
            assert "the whole answer" not in read.text
            assert read.json()["error"]["code"] == "provider_bad_response"
            rid = read.headers["x-request-id"]
            assert wait_for(lambda: len(recorded(gw, rid)) == 1)
            assert [r["status"] for r in recorded(gw, rid)] == [502]


CONVERSATION = {"id": "conv_1", "object": "conversation", "created_at": 1, "metadata": {}}
ANSWER_ITEM = {**ANSWER["output"][0], "id": "msg_1"}  # (the cut turn's whole answer, as its conversation holds it)


def cut_in_conversation(gw: Gateway, upstream: ScriptedUpstream) -> openai.OpenAI:
    """Alice's client, once she made `conv_1` and cut a stored turn's stream in it at its first
    event (charged what it streamed: the conversation's row, then the cut turn's)."""
    alice = gw.openai()
    upstream.json(CONVERSATION)
    assert alice.conversations.create().id == "conv_1"
    upstream.sse(CREATED, hold=True)
    stream = alice.responses.create(model="gpt-4o-mini", input="hi", conversation="conv_1", stream=True,
                                    store=True, max_output_tokens=9000)
    assert next(iter(stream)).type == "response.created"
    stream.close()
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    return alice


@pytest.mark.parametrize("read", ["list", "item", "large"])  # (large: a list over MAX_BUFFERED, relayed as it comes)
def test_a_cut_turns_answer_read_through_its_conversations_items_is_charged_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, read: str,
) -> None:
    """A turn in a conversation whose stream the client cut was charged its few streamed tokens, its
    usage (9,700 tokens) left to the first read of the stored response. The provider finishes it and
    adds its whole answer to the conversation: read through the conversation's items (listed, or the
    item by its id) it was served and the response never read — every answer free for a client that
    cuts each stream at its first event. A read of the conversation's items now first fetches each
    cut turn of the reader's no read charged yet and charges its usage, as the response's own read
    would, under the same key: once — neither a second read of the items nor one of the response
    charges it again, nor fetches it."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, usage_flush_interval_seconds=0.1,
                             passthrough="/v1/conversations,/v1/conversations/*")
        alice = cut_in_conversation(gw, upstream)
        cut = ledger_rows(gw.settings.database_url, "alice")[1]
        assert cut["input_tokens"] + cut["output_tokens"] < 9000, cut

        def read_items(*fetched: dict[str, Any]) -> str:
            """The conversation's items read (`fetched`: what the provider answers Sentinel's fetches after)."""
            if read != "item":
                large = [] if read == "list" else [{**ANSWER_ITEM, "id": "msg_0", "content": [
                    {"type": "output_text", "text": "", "annotations": [], "padding": "x" * MAX_BUFFERED}]}]
                upstream.json({"object": "list", "data": [*large, ANSWER_ITEM], "has_more": False,
                               "first_id": "msg_1", "last_id": "msg_1"})
            else:
                upstream.json(ANSWER_ITEM)
            for answer in fetched:
                upstream.json(answer)
            if read != "item":
                return "".join(part.text for item in alice.conversations.items.list("conv_1")
                               for part in getattr(item, "content", []))
            item = alice.conversations.items.retrieve("msg_1", conversation_id="conv_1")
            return "".join(part.text for part in getattr(item, "content", []))

        sent = len(upstream.received)
        assert read_items(ANSWER) == "the whole answer"  # (the stored response, fetched for its usage)
        assert len(upstream.received) == sent + 2
        charge = charge_id("alice", "resp_cut")
        assert wait_for(lambda: len(recorded(gw, charge)) == 1)
        assert [(r["input_tokens"], r["output_tokens"]) for r in recorded(gw, charge)] == [(700, 9000)]
        assert gw.stored_ttl("sentinel:cut-turns:conv_1") is None  # (charged: no longer listed)
        assert read_items() == "the whole answer"  # charged already: not fetched again
        assert len(upstream.received) == sent + 3
        upstream.json(ANSWER)
        assert alice.responses.retrieve("resp_cut").usage is not None
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 5)
    assert [(r["input_tokens"], r["output_tokens"]) for r in recorded(gw, charge)] == [(700, 9000)]
    reads = ledger_rows(gw.settings.database_url, "alice")[3:]
    assert [(r["input_tokens"], r["output_tokens"]) for r in reads] == [(0, 0), (0, 0)]  # charged nothing again


def test_a_cut_turn_that_ended_without_usage_is_fetched_by_one_items_read_not_every_one(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A cut turn whose stored response ended showing no usage (cancelled, failed) stayed listed as
    one still at work does: every read of its conversation's items fetched it again from the provider
    at Sentinel's cost — with 32 such turns, 32 upstream reads per read of the items, for as long as
    a response is kept. One read fetches it; it is then done with."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1,
                             passthrough="/v1/conversations,/v1/conversations/*")
        alice = cut_in_conversation(gw, upstream)
        listed = {"object": "list", "data": [ANSWER_ITEM], "has_more": False, "first_id": "msg_1", "last_id": "msg_1"}
        sent = len(upstream.received)
        upstream.json(listed)
        upstream.json({**ANSWER, "status": "cancelled", "usage": None})  # (the cut response, fetched)
        assert len(alice.conversations.items.list("conv_1").data) == 1
        assert len(upstream.received) == sent + 2
        assert wait_for(lambda: gw.stored_ttl("sentinel:cut-turns:conv_1") is None)
        upstream.json(listed)
        assert len(alice.conversations.items.list("conv_1").data) == 1
        assert len(upstream.received) == sent + 3  # the list only: nothing fetched again


LATER = {**ANSWER, "id": "resp_2", "output": [{**ANSWER["output"][0], "id": "msg_2"}],
         "usage": {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25}}
LATEST = {**LATER, "id": "resp_3", "output": [{**ANSWER["output"][0], "id": "msg_3"}]}
# A later response's input items as the provider lists them: the context it read — the earlier
# turns of its conversation (or `previous_response_id` chain), the cut turn's whole answer among them.
INPUT_ITEMS = {"object": "list", "data": [{"type": "message", "id": "msg_0", "role": "user", "status": "completed",
                                           "content": [{"type": "input_text", "text": "hi"}]}, ANSWER_ITEM],
               "has_more": False, "first_id": "msg_0", "last_id": "msg_1"}


@pytest.mark.parametrize("made", ["conversation", "previous", "chain"])
def test_a_cut_turns_answer_read_through_a_later_responses_input_items_is_charged_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, made: str,
) -> None:
    """A stored response whose stream the client cut was charged its few streamed tokens, its usage
    (9,700 tokens) left to the first read of it. A later response made in its conversation, or
    continuing it by `previous_response_id` (directly or down a chain), lists the context the
    provider read as its input items — the cut turn's whole answer among them: read through
    `GET /v1/responses/{later}/input_items` it was served and never charged. Such a read now first
    fetches each cut turn it shows of the reader's that no read charged yet and charges its usage as
    the response's own read would, under the same key: once — neither a second read nor the cut
    response's own read charges it again, nor fetches it."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, usage_flush_interval_seconds=0.1,
                             passthrough="/v1/conversations,/v1/conversations/*")
        alice = gw.openai()
        rows = 0
        where: dict[str, Any] = {}
        if made == "conversation":
            upstream.json(CONVERSATION)
            assert alice.conversations.create().id == "conv_1"
            where, rows = {"conversation": "conv_1"}, 1
        upstream.sse(CREATED, hold=True)
        stream = alice.responses.create(model="gpt-4o-mini", input="hi", stream=True, store=True,
                                        max_output_tokens=9000, **where)
        assert next(iter(stream)).type == "response.created"
        stream.close()  # cut: charged what it streamed
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == rows + 1)
        upstream.json(LATER)
        later = alice.responses.create(model="gpt-4o-mini", input="more", store=True,
                                       **(where or {"previous_response_id": "resp_cut"}))
        if made == "chain":
            upstream.json(LATEST)
            later = alice.responses.create(model="gpt-4o-mini", input="again", store=True,
                                           previous_response_id=later.id)
        rows += 3 if made == "chain" else 2
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == rows)
        charge = charge_id("alice", "resp_cut")
        assert recorded(gw, charge) == []

        sent = len(upstream.received)
        upstream.json(INPUT_ITEMS)
        upstream.json(ANSWER)  # (the cut response, fetched for its usage)
        shown = alice.responses.input_items.list(later.id)
        assert [getattr(item, "id", None) for item in shown.data] == ["msg_0", "msg_1"]
        assert len(upstream.received) == sent + 2
        assert wait_for(lambda: len(recorded(gw, charge)) == 1)
        assert [(r["input_tokens"], r["output_tokens"]) for r in recorded(gw, charge)] == [(700, 9000)]
        upstream.json(INPUT_ITEMS)
        assert len(alice.responses.input_items.list(later.id).data) == 2  # charged already: not fetched again
        assert len(upstream.received) == sent + 3
        upstream.json(ANSWER)
        assert alice.responses.retrieve("resp_cut").usage is not None
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == rows + 3)
    assert [(r["input_tokens"], r["output_tokens"]) for r in recorded(gw, charge)] == [(700, 9000)]
    reads = ledger_rows(gw.settings.database_url, "alice")[rows + 1:]
    assert [(r["input_tokens"], r["output_tokens"]) for r in reads] == [(0, 0), (0, 0)]  # charged nothing again


class StoredResponses:
    """The provider as a read of each stored response finds it (`GET /v1/responses/{id}`: finished,
    its usage shown), whatever the order the reads come in; every other call answered by `rest`."""

    def __init__(self, rest: ScriptedUpstream) -> None:
        self.rest = rest
        self.fetched: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        response_id = path.removeprefix("/v1/responses/")
        if scope["type"] != "http" or scope["method"] != "GET" or not response_id.startswith("resp_") or "/" in response_id:
            return await self.rest(scope, receive, send)
        self.fetched.append(response_id)
        body = json.dumps({**ANSWER, "id": response_id}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def test_a_conversations_cut_turns_past_what_a_read_charges_are_each_charged(
    gateway_factory: Callable[..., Gateway], backend_url: str | None,
) -> None:
    """A conversation lists the stored turns cut in it that no read charged yet, at most
    MAX_CUT_TURNS, and a read of its items charges them; the oldest was dropped to make room for
    the next, and the provider still adds its whole answer to the conversation: a client that cut
    33 streams at their first event and listed the items had the first answer for free (and one
    more for each turn cut after). A cut turn the list has no room for is charged its reservation
    at once (its `max_output_tokens`), and no later read charges it again; the turns listed stay
    listed, each charged by the read."""
    upstream = ScriptedUpstream()
    stored = StoredResponses(upstream)
    with serving(stored) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, usage_flush_interval_seconds=0.1,
                             passthrough="/v1/conversations,/v1/conversations/*")
        alice = gw.openai()
        upstream.json(CONVERSATION)
        assert alice.conversations.create().id == "conv_1"
        turns = [f"resp_c{n}" for n in range(MAX_CUT_TURNS + 1)]
        cut: list[str] = []
        for n, response_id in enumerate(turns):
            upstream.sse({**CREATED, "response": {**CREATED["response"], "id": response_id}}, hold=True)
            raw = alice.responses.with_raw_response.create(
                model="gpt-4o-mini", input="hi", conversation="conv_1", stream=True, store=True, max_output_tokens=9000,
            )
            stream = raw.parse()
            assert next(iter(stream)).type == "response.created"
            stream.close()
            cut.append(raw.headers["x-request-id"])
            assert wait_for(lambda n=n: len(ledger_rows(gw.settings.database_url, "alice")) == n + 2)
        overflow = recorded(gw, cut[-1])
        assert [(r["usage_source"], r["output_tokens"]) for r in overflow] == [("estimated", 9000)]
        assert all(recorded(gw, rid)[0]["output_tokens"] < 9000 for rid in cut[:-1])

        upstream.json({"object": "list", "data": [ANSWER_ITEM], "has_more": False, "first_id": "msg_1",
                       "last_id": "msg_1"})
        assert len(alice.conversations.items.list("conv_1").data) == 1
        assert sorted(stored.fetched) == sorted(turns[:-1])  # the oldest among them
        for response_id in turns[:-1]:
            assert wait_for(lambda r=response_id: len(recorded(gw, charge_id("alice", r))) == 1)
        assert recorded(gw, charge_id("alice", turns[-1])) == []
        read = alice.responses.with_raw_response.retrieve(turns[-1])
        assert read.parse().usage is not None
        assert wait_for(lambda: len(recorded(gw, read.headers["x-request-id"])) == 1)
        assert recorded(gw, charge_id("alice", turns[-1])) == []  # charged already: nothing again


def test_a_chain_past_the_cut_turns_a_read_charges_is_read_first(
    gateway_factory: Callable[..., Gateway], backend_url: str | None,
) -> None:
    """Each stored response continuing another (`previous_response_id`) lists the cut turns its input
    items show — the continued one's list, and that one while charged nothing —, at most
    MAX_CUT_TURNS: a chain of 33 streams each cut at its first event, then one more response, dropped
    the oldest from that one's list, and its input items showed the first answer for free. A
    request whose response would list more is refused (400 `cut_turns_unread`, naming
    `previous_response_id`) before anything is reserved or sent; a read of the continued response's
    input items charges them, and the chain goes on."""
    upstream = ScriptedUpstream()
    stored = StoredResponses(upstream)
    with serving(stored) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, usage_flush_interval_seconds=0.1)
        alice = gw.openai()
        turns = [f"resp_c{n}" for n in range(MAX_CUT_TURNS + 1)]
        for n, response_id in enumerate(turns):
            upstream.sse({**CREATED, "response": {**CREATED["response"], "id": response_id}}, hold=True)
            stream = alice.responses.create(model="gpt-4o-mini", input="go on", stream=True, store=True,
                                            max_output_tokens=9000, previous_response_id=turns[n - 1] if n else None)
            assert next(iter(stream)).type == "response.created"
            stream.close()
            assert wait_for(lambda n=n: len(ledger_rows(gw.settings.database_url, "alice")) == n + 1)
        sent = len(upstream.received)
        with pytest.raises(openai.BadRequestError) as refused:
            alice.responses.create(model="gpt-4o-mini", input="more", previous_response_id=turns[-1])
        error = refused.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"]) == ("cut_turns_unread", "previous_response_id"), error
        assert turns[-1] in error["message"]
        assert "x-ratelimit-remaining" not in refused.value.response.headers  # (refused before admission)
        assert len(upstream.received) == sent
        assert len(ledger_rows(gw.settings.database_url, "alice")) == len(turns)

        upstream.json(INPUT_ITEMS)
        assert len(alice.responses.input_items.list(turns[-1]).data) == 2
        assert sorted(stored.fetched) == sorted(turns[:-1])  # each listed, the oldest among them
        for response_id in turns[:-1]:
            assert wait_for(lambda r=response_id: len(recorded(gw, charge_id("alice", r))) == 1)
        upstream.json({**LATER, "id": "resp_more"})
        assert alice.responses.create(model="gpt-4o-mini", input="more", previous_response_id=turns[-1]).id == "resp_more"


def test_an_unstored_turn_cut_in_a_conversation_is_charged_as_reserved(
    gateway_factory: Callable[..., Gateway], backend_url: str | None,
) -> None:
    """A `store: false` turn joins its conversation all the same: the provider adds its whole answer
    to the items. Cut at its first event, it was charged what it streamed (nothing) and, never stored,
    no read could charge its usage: every answer read free through the items by a client cutting
    each such stream. It is charged the output it reserved (its `max_output_tokens`) instead; one
    read to its end showed its whole answer, charged as counted."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, usage_flush_interval_seconds=0.1,
                             passthrough="/v1/conversations,/v1/conversations/*")
        alice = gw.openai()
        upstream.json(CONVERSATION)
        assert alice.conversations.create().id == "conv_1"
        upstream.sse(CREATED, hold=True)
        raw = alice.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", conversation="conv_1",
                                                       stream=True, store=False, max_output_tokens=9000)
        stream = raw.parse()
        assert next(iter(stream)).type == "response.created"
        stream.close()
        assert wait_for(lambda: len(recorded(gw, raw.headers["x-request-id"])) == 1)
        cut = recorded(gw, raw.headers["x-request-id"])[0]
        assert (cut["usage_source"], cut["output_tokens"]) == ("estimated", 9000)
        upstream.sse(CREATED, hold=True)
        alone = alice.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", stream=True, store=False,
                                                         max_output_tokens=9000)  # (in no conversation: as before)
        stream = alone.parse()
        assert next(iter(stream)).type == "response.created"
        stream.close()
        assert wait_for(lambda: len(recorded(gw, alone.headers["x-request-id"])) == 1)
        assert recorded(gw, alone.headers["x-request-id"])[0]["output_tokens"] < 9000
        upstream.sse(CREATED, {"type": "response.output_text.delta", "sequence_number": 1, "delta": "the whole answer"},
                     {"type": "response.completed", "sequence_number": 2, "response": {**ANSWER, "usage": None}})
        whole = alice.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", conversation="conv_1",
                                                         stream=True, store=False, max_output_tokens=9000)
        assert [event.type for event in whole.parse()][-1] == "response.completed"  # (read to its end, no usage)
        assert wait_for(lambda: len(recorded(gw, whole.headers["x-request-id"])) == 1)
        assert recorded(gw, whole.headers["x-request-id"])[0]["output_tokens"] < 9000  # (its text, counted)
