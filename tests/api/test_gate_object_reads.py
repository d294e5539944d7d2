"""Objects read back: fetching a stored response is not doing the work again (one request, no tokens,
whatever `usage` the object shows); a chat completion stored with `store: true` is its creator's
whether it was streamed or not; and no call may have the provider select stored objects across the
account by filter (an eval run over "responses" or "stored_completions": a list in disguise)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis

from sentinel.governance.ownership import FORGOTTEN_ITEM_TTL
from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, ledger_rows, openai_error, recorded_ids
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import wait_for


def test_fetching_a_stored_response_charges_no_tokens(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    made = gw.openai().responses.create(model="gpt-4o-mini", input="tell me a long story about a lighthouse")
    assert made.usage is not None and made.usage.output_tokens > 0
    with gw.client() as alice:
        for _ in range(3):
            fetched = alice.get(f"/v1/responses/{made.id}")
            assert fetched.status_code == 200 and fetched.json()["usage"]["output_tokens"] == made.usage.output_tokens
        assert alice.get(f"/v1/responses/{made.id}/input_items").status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 5)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert rows[0]["output_tokens"] == made.usage.output_tokens  # the call that made it is billed
    reads = rows[1:]
    assert [(r["input_tokens"], r["output_tokens"]) for r in reads] == [(0, 0)] * 4, reads
    assert all(r["status"] == 200 for r in reads)


def test_a_streamed_stored_chat_completion_is_its_creators(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Only a non-streamed one was claimed: a streamed one stayed unowned (unreachable, even to its creator,
    where an operator forwards `/v1/chat/completions/*`)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url)
    chunks = list(gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "keep this"}], stream=True, store=True))
    cid = chunks[0].id
    assert cid
    assert redis.Redis.from_url(redis_url).get(f"sentinel:owner:{cid}") is not None
    unstored = list(gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "not this"}], stream=True))
    assert redis.Redis.from_url(redis_url).get(f"sentinel:owner:{unstored[0].id}") is None


ACCOUNT_WIDE = [
    ("/v1/evals", {"name": "e", "data_source_config": {"type": "logs", "metadata": {"usecase": "x"}},
                   "testing_criteria": []}),
    ("/v1/evals", {"name": "e", "data_source_config": {"type": "stored_completions"}, "testing_criteria": []}),
    ("/v1/evals/eval_1/runs", {"data_source": {"type": "responses", "source": {"type": "responses"}}}),
    ("/v1/evals/eval_1/runs", {"data_source": {"type": "completions",
                                               "source": {"type": "stored_completions", "model": "gpt-4o"}}}),
]


@pytest.mark.parametrize(("path", "body"), ACCOUNT_WIDE)
def test_eval_data_selected_across_the_account_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, path: str, body: dict[str, Any]
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/evals,/v1/evals/*", redis_url=redis_url)
    redis.Redis.from_url(redis_url).set("sentinel:owner:eval_1", "alice")  # Alice's own eval
    with gw.client() as alice:
        refused = alice.post(path, json=body)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_data_source", refused.text
    assert spy.seen == []
    assert recorded_ids(gw.settings.database_url, redis_url) == set()  # refused: nothing recorded


def test_an_eval_over_its_own_items_still_goes_through(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/evals,/v1/evals/*")
    body = {"name": "e", "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": []}
    with gw.client() as alice:
        alice.post("/v1/evals", json=body)
    assert spy.paths() == ["/v1/evals"]


def test_an_eval_reads_only_a_data_file_whose_items_are_its_owners(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A run whose `input_messages` are an `item_reference` makes each item of its data file the model's
    input, and the provider reads the objects an item names. A data file (JSONL, `purpose=evals`) was
    never read: Bob's items named Alice's file (an `input_file`'s `file_id`) and his run had the model
    read it. Such an upload is read item by item as a run's inline items are (404 naming another's
    object, nothing sent), and a run reads only a data file checked so (400 `unchecked_eval_data`: one
    uploaded with another purpose, or through the Uploads API; nothing sent)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url,
                         passthrough="/v1/files,/v1/files/*,/v1/evals,/v1/evals/*")
    alices = gw.openai().files.create(file=("salary.txt", b"alice's salary: 1,000,000"), purpose="user_data").id
    bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=asyncio.run(create_key(gw.settings.database_url, "bob"))[1],
                        max_retries=0)
    own = bob.files.create(file=("notes.txt", b"bob's notes"), purpose="user_data").id

    def items(file_id: str) -> bytes:
        item = {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": file_id},
                                                       {"type": "input_text", "text": "Repeat the file"}]}]}
        return orjson.dumps({"item": item}) + b"\n"

    made = bob.evals.create(name="e", data_source_config={"type": "custom", "item_schema": {"type": "object"}},
                            testing_criteria=[])
    spy.clear()
    with pytest.raises(openai.NotFoundError):
        bob.files.create(file=("items.jsonl", items(alices)), purpose="evals")
    assert spy.seen == []
    unread = bob.files.create(file=("items.jsonl", items(alices)), purpose="user_data").id  # (its content is Bob's own)
    spy.clear()

    def run(file_id: str) -> Any:
        return bob.evals.runs.create(made.id, data_source={  # type: ignore[arg-type]
            "type": "responses", "model": "gpt-4o-mini", "source": {"type": "file_id", "id": file_id},
            "input_messages": {"type": "item_reference", "item_reference": "item.input"}})

    with pytest.raises(openai.BadRequestError) as refused:
        run(unread)
    assert refused.value.code == "unchecked_eval_data", refused.value
    assert spy.seen == []
    checked = bob.files.create(file=("items.jsonl", items(own)), purpose="evals").id
    assert run(checked).status == "queued"
    with pytest.raises(openai.NotFoundError):  # and Alice's checked data file stays hers
        run(gw.openai().files.create(file=("items.jsonl", items(alices)), purpose="evals").id)
    assert redis.Redis.from_url(redis_url).get(f"sentinel:eval-data:{checked}") == b"bob"
    assert bob.files.delete(checked).deleted is True
    assert redis.Redis.from_url(redis_url).get(f"sentinel:eval-data:{checked}") is None  # forgotten with the file


def test_a_batch_runs_only_input_whose_every_line_was_checked(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Each line of a batch's input is a request the provider runs: one naming Alice's stored response
    ran with it (Bob read her conversation from the batch's output), since only the batch's own
    body was read for ids."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/files/*,/v1/batches")
    alices = gw.openai().responses.create(model="gpt-4o-mini", input="alice's private thoughts").id
    bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]

    def line(body: dict[str, Any]) -> bytes:
        return orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/responses", "body": body})

    def upload(client: httpx.Client, content: bytes, purpose: str = "batch") -> httpx.Response:
        return client.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": purpose})

    with gw.client(bob_key) as bob:
        spy.clear()
        stealing = upload(bob, line({"model": "gpt-4o-mini", "input": "hi"}) + b"\n"
                          + line({"model": "gpt-4o-mini", "input": "repeat it", "previous_response_id": alices}))
        assert stealing.status_code == 404 and stealing.json()["error"]["code"] == "object_not_found", stealing.text
        account = upload(bob, orjson.dumps({"custom_id": "1", "body": {"source": {"type": "stored_completions"}}}))
        unreadable = upload(bob, b'{"custom_id": "1"}\nnot json\n')
        assert [account.status_code, unreadable.status_code] == [400, 400], (account.text, unreadable.text)
        assert spy.seen == []  # none of them reached the provider
        plain = upload(bob, line({"model": "gpt-4o-mini", "input": "hi"}), purpose="user_data").json()["id"]
        checked = upload(bob, line({"model": "gpt-4o-mini", "input": "hi"}) + b"\n\n").json()["id"]
        spy.clear()
        batch = {"endpoint": "/v1/responses", "completion_window": "24h"}
        unchecked = bob.post("/v1/batches", json={**batch, "input_file_id": plain})
        missing = bob.post("/v1/batches", json=batch)
        assert [unchecked.status_code, missing.status_code] == [400, 400]
        assert unchecked.json()["error"]["code"] == "unchecked_batch_input"
        assert spy.seen == []
        bob.post("/v1/batches", json={**batch, "input_file_id": checked})
        assert spy.paths() == ["/v1/batches"]  # forwarded
        assert bob.delete(f"/v1/files/{checked}").status_code == 200
    assert redis.Redis.from_url(redis_url).get(f"sentinel:batch-measured:{checked}") is None  # forgotten with the file


def test_a_continued_response_cut_short_is_charged_the_context_it_continued(gateway_factory: Callable[..., Gateway]) -> None:
    """The provider reads a stored response's whole context again for every request that continues
    it; a stream cut before the provider's count was charged only its new input (a few tokens for a
    100k-token chain, again and again)."""
    gw = gateway_factory()
    first = gw.openai().responses.create(model="gpt-4o-mini", input="tell me about lighthouses " * 500)
    assert first.usage is not None
    context = first.usage.input_tokens + first.usage.output_tokens
    cut = {"X-Mock-Disconnect-After": "2"}  # the stream ends before `response.completed` and its usage
    with gw.client() as alice:
        with alice.stream("POST", "/v1/responses", headers=cut, json={
                "model": "gpt-4o-mini", "input": "go on", "previous_response_id": first.id, "stream": True}) as answer:
            events = [line for line in answer.iter_lines() if line.startswith("data:")]
        second = orjson.loads(events[0][5:])["response"]["id"]
        with alice.stream("POST", "/v1/responses", headers=cut, json={
                "model": "gpt-4o-mini", "input": "and on", "previous_response_id": second, "stream": True}) as answer:
            answer.read()
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [r["usage_source"] for r in rows] == ["measured", "estimated", "estimated"]
    assert rows[1]["input_tokens"] >= context, (rows[1], context)
    assert rows[2]["input_tokens"] >= rows[1]["input_tokens"] + rows[1]["output_tokens"]  # the chain carries on


def test_batches_and_evals_take_json_only(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A multipart body skipped the JSON checks: a batch over an unchecked file, an eval run over the
    account's stored responses (`data_source[source][type]=responses`)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url,
                         passthrough="/v1/files/*,/v1/batches,/v1/evals,/v1/evals/*")
    redis.Redis.from_url(redis_url).set("sentinel:owner:eval_1", "alice")
    with gw.client() as alice:
        plain = alice.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "user_data"}).json()["id"]
        spy.clear()
        batch = alice.post("/v1/batches", data={"input_file_id": plain, "endpoint": "/v1/responses",
                                                "completion_window": "24h"}, files={"x": ("x", b"")})
        run = alice.post("/v1/evals/eval_1/runs", data={"data_source[type]": "responses",
                                                       "data_source[source][type]": "responses"},
                         files={"x": ("x", b"")})
    assert [batch.status_code, run.status_code] == [400, 400], (batch.text, run.text)
    assert spy.seen == []


def test_a_batch_input_is_read_strictly_and_its_ids_counted_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/files/*")
    redis.Redis.from_url(redis_url).set("sentinel:owner:vs_1", "alice")
    line = orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/responses", "body": {
        "model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}})
    with gw.client() as alice:
        many = alice.post("/v1/files", files={"file": ("a.jsonl", b"\n".join([line] * 1500))},
                          data={"purpose": "batch"})
        assert many.status_code == 200, many.text  # one id named 1,500 times is one id
        twice = b'{"custom_id": "1", "body": {"previous_response_id": "resp_a", "previous_response_id": "resp_b"}}'
        refused = alice.post("/v1/files", files={"file": ("a.jsonl", twice)}, data={"purpose": "batch"})
        assert refused.status_code == 400 and "given twice" in refused.json()["error"]["message"]


def test_updating_a_stored_object_charges_no_tokens(gateway_factory: Callable[..., Gateway], redis_url: str) -> None:
    """`POST /v1/chat/completions/{id}` (the SDK's `update`: metadata) answered with the stored
    completion, whose `usage` was charged again on every update."""
    upstream = ScriptedUpstream()
    stored = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 900, "completion_tokens": 700, "total_tokens": 1600}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url,
                             passthrough="/v1/chat/completions/*")
        upstream.json(stored)
        upstream.json({**stored, "metadata": {"a": "b"}})
        upstream.json({**stored, "metadata": {"a": "c"}})
        with gw.client() as alice:
            made = alice.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "store": True,
                                                            "messages": [{"role": "user", "content": "hi"}]})
            assert made.status_code == 200, made.text
            for value in ("b", "c"):
                updated = alice.post("/v1/chat/completions/chatcmpl-1", json={"metadata": {"a": value}})
                assert updated.status_code == 200, updated.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)  # delivered from Redis
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(900, 700), (0, 0), (0, 0)]


def test_items_given_to_a_conversation_count_as_its_context(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """Items put into a conversation by a pass-through call (no tokens charged there) are read again by
    every response in it: they were never part of its known context."""
    upstream = ScriptedUpstream()
    items = {"items": [{"type": "message", "role": "user", "content": "lighthouse " * 1000}]}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url,
                             passthrough="/v1/conversations,/v1/conversations/*")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json({"object": "list", "data": []})
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json=items).status_code == 200
            created = int(redis.Redis.from_url(redis_url).get("sentinel:context:conv_1") or 0)
            assert alice.post("/v1/conversations/conv_1/items", json=items).status_code == 200
    grown = int(redis.Redis.from_url(redis_url).get("sentinel:context:conv_1") or 0)
    assert created >= len(orjson.dumps(items)) // 4 and grown >= 2 * created


def test_items_count_as_context_when_their_answer_is_relayed_as_it_arrives(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """An answer over 1 MiB (the items added, listed back) is relayed as it arrives: the items of
    such a call were never counted."""
    upstream = ScriptedUpstream()
    items = {"items": [{"type": "message", "role": "user", "content": "lighthouse " * 100_000}]}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/conversations,/v1/conversations/*")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json({"object": "list", "data": [{"type": "message", "role": "user", "id": "msg_1",
                                                   "content": [{"type": "input_text", "text": "x" * (1 << 21)}]}]})
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            added = alice.post("/v1/conversations/conv_1/items", json=items)
            assert added.status_code == 200 and len(added.content) > 1 << 21
    assert int(gw.read_stored("sentinel:context:conv_1") or 0) >= len(orjson.dumps(items)) // 4


def _response(response_id: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "status": "completed", "model": "gpt-4o-mini", "output": [],
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens}}


def test_turns_not_stored_count_as_their_conversations_context(gateway_factory: Callable[..., Gateway]) -> None:
    """The provider adds a `store: false` turn's input and output to its conversation, but only
    stored turns were counted: three 24k-token turns left the conversation at 1 token, and a turn in
    it cut after its first delta was charged its 5 new tokens where the provider billed 72k. Counted
    read whole or streamed; the unstored responses themselves stay unknown (nothing can continue them)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/conversations")
        upstream.json({"id": "conv_1", "object": "conversation"})
        for n in (1, 2):
            upstream.json(_response(f"resp_{n}", 24_000 * n - 100, 100))
        upstream.sse({"type": "response.created", "response": {"id": "resp_3", "object": "response"}},
                     {"type": "response.completed", "response": _response("resp_3", 71_900, 100)}, "[DONE]")
        upstream.sse({"type": "response.created", "response": {"id": "resp_4", "object": "response",
                                                                "status": "in_progress"}},
                     {"type": "response.output_text.delta", "delta": "hel"})  # cut: no usage, no [DONE]
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            for n in (1, 2):
                turn = alice.post("/v1/responses", json={"model": "gpt-4o-mini", "input": f"turn {n}",
                                                         "conversation": "conv_1", "store": False})
                assert turn.status_code == 200, turn.text
            assert gw.read_stored("sentinel:context:conv_1") == b"48000"
            with alice.stream("POST", "/v1/responses", json={"model": "gpt-4o-mini", "input": "turn 3", "stream": True,
                                                             "conversation": "conv_1", "store": False}) as answer:
                assert answer.status_code == 200 and b"response.completed" in answer.read()
            with alice.stream("POST", "/v1/responses", json={"model": "gpt-4o-mini", "input": "hi",
                                                             "conversation": "conv_1", "stream": True}) as answer:
                answer.read()
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 5)
    cut = ledger_rows(gw.settings.database_url, "alice")[-1]
    assert cut["usage_source"] == "estimated" and cut["input_tokens"] >= 72_000, cut
    for n in (1, 2, 3):
        assert gw.read_stored(f"sentinel:context:resp_{n}") is None
        assert gw.read_stored(f"sentinel:owner:resp_{n}") is None


def test_a_conversations_count_is_kept_as_long_as_the_conversation(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A conversation is kept until deleted (its owner too), but its count was kept as a stored
    response's, 31 days: a conversation idle that long was then continued at a count of 0."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, passthrough="/v1/conversations")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json(_response("resp_1", 900, 100))
        upstream.sse({"type": "response.created", "response": {"id": "resp_2", "object": "response"}},
                     {"type": "response.completed", "response": _response("resp_2", 1900, 100)})
        upstream.json(_response("resp_3", 2900, 100))
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            assert gw.stored_ttl("sentinel:owner:conv_1") == -1.0  # kept until deleted
            turn = {"model": "gpt-4o-mini", "input": "hi", "conversation": "conv_1"}
            assert alice.post("/v1/responses", json=turn).status_code == 200
            assert gw.stored_ttl("sentinel:context:conv_1") == -1.0
            with alice.stream("POST", "/v1/responses", json={**turn, "stream": True}) as answer:
                answer.read()
            assert gw.stored_ttl("sentinel:context:conv_1") == -1.0
            assert alice.post("/v1/responses", json={**turn, "store": False}).status_code == 200
    assert gw.read_stored("sentinel:context:conv_1") == b"3000"
    assert gw.stored_ttl("sentinel:context:conv_1") == -1.0
    for stored in ("resp_1", "resp_2"):  # a stored response's, as its owner's: 31 days
        assert 30 * 86400 < (gw.stored_ttl(f"sentinel:context:{stored}") or 0) <= 31 * 86400


def test_a_batch_polled_until_done_is_charged_its_usage_once(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A batch's (or a run's) usage shows only when it is done, in the answer to a GET: not charging
    reads at all left batches unmetered, charging every read charged each poll again."""
    upstream = ScriptedUpstream()
    done = {"id": "batch_1", "object": "batch", "status": "completed", "output_file_id": "file-out",
            "usage": {"input_tokens": 900, "output_tokens": 700, "total_tokens": 1600}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url, passthrough="/v1/batches/*")
        redis.Redis.from_url(redis_url).set("sentinel:owner:batch_1", "alice")
        upstream.json({"id": "batch_1", "object": "batch", "status": "in_progress", "usage": None})
        upstream.json(done)
        upstream.json(done)
        with gw.client() as alice:
            for _ in range(3):
                assert alice.get("/v1/batches/batch_1").status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(0, 0), (900, 700), (0, 0)]


def test_a_batch_made_through_sentinel_is_charged_when_a_read_first_shows_its_usage(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url,
                             passthrough="/v1/batches,/v1/batches/*")
        redis.Redis.from_url(redis_url).set("sentinel:batch-measured:file-in", orjson.dumps(
            {"owner": "alice", "requests": 1, "input_tokens": 10, "output_tokens": 10}))
        redis.Redis.from_url(redis_url).set("sentinel:owner:file-in", "alice")
        upstream.json({"id": "batch_2", "object": "batch", "status": "validating", "usage": None})
        upstream.json({"id": "batch_2", "object": "batch", "status": "completed",
                       "usage": {"input_tokens": 50, "output_tokens": 20, "total_tokens": 70}})
        with gw.client() as alice:
            made = alice.post("/v1/batches", json={"input_file_id": "file-in", "endpoint": "/v1/responses",
                                                   "completion_window": "24h"})
            assert made.status_code == 200, made.text
            assert alice.get("/v1/batches/batch_2").status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(0, 0), (50, 20)]


def test_a_run_is_charged_once_however_it_is_read_and_its_steps_never(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """An update at the run's own path (`POST …/runs/{r}`) charged the finished run's usage every
    time; each step's usage (part of its run's) was charged on top of the run's."""
    upstream = ScriptedUpstream()
    run = {"id": "run_1", "object": "thread.run", "status": "completed",
           "usage": {"prompt_tokens": 300, "completion_tokens": 200, "total_tokens": 500}}
    step = {"id": "step_1", "object": "thread.run.step", "run_id": "run_1",
            "usage": {"prompt_tokens": 300, "completion_tokens": 200, "total_tokens": 500}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url, passthrough="/v1/threads/*")
        redis.Redis.from_url(redis_url).set("sentinel:owner:thread_1", "alice")
        for answer in (run, run, step, run):
            upstream.json(answer)
        with gw.client() as alice:
            assert alice.post("/v1/threads/thread_1/runs/run_1", json={"metadata": {"a": "1"}}).status_code == 200
            assert alice.post("/v1/threads/thread_1/runs/run_1", json={"metadata": {"a": "2"}}).status_code == 200
            assert alice.get("/v1/threads/thread_1/runs/run_1/steps/step_1").status_code == 200
            assert alice.get("/v1/threads/thread_1/runs/run_1").status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 4)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(300, 200), (0, 0), (0, 0), (0, 0)]


def test_a_large_answer_about_an_object_is_charged_once_too(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """Answers over 1 MiB are relayed as they arrive: a read of one charged nothing, ever."""
    upstream = ScriptedUpstream()
    big = {"id": "batch_big", "object": "batch", "status": "completed", "metadata": {"pad": "x" * (1 << 21)},
           "usage": {"input_tokens": 40, "output_tokens": 60, "total_tokens": 100}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url, passthrough="/v1/batches/*")
        redis.Redis.from_url(redis_url).set("sentinel:owner:batch_big", "alice")
        upstream.json(big)
        upstream.json(big)
        with gw.client() as alice:
            for _ in range(2):
                answer = alice.get("/v1/batches/batch_big")
                assert answer.status_code == 200 and len(answer.content) > 1 << 21
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(40, 60), (0, 0)]


def test_pass_through_calls_are_not_streamed(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """A streamed pass-through answer (a run, a transcription, partial images) carries its usage in
    events Sentinel does not read: it went unmetered."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/images/*,/v1/audio/*")
    with gw.client() as alice:
        images = alice.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "a cat", "stream": True})
        spoken = alice.post("/v1/audio/transcriptions", data={"model": "gpt-4o-transcribe", "stream": "true"},
                            files={"file": ("a.wav", b"RIFF....")})
    assert [images.status_code, spoken.status_code] == [400, 400], (images.text, spoken.text)
    assert images.json()["error"]["code"] == "stream_not_supported"
    assert spy.seen == []


def test_a_pass_through_answer_streamed_all_the_same_is_never_relayed_for_nothing(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """A pass-through answer arriving as an event stream — asked for in a way Sentinel did not read,
    or streamed unasked — was read as one complete answer: not JSON, so no usage; relayed, and
    recorded 200 with 0 tokens. It is now read to its end for the usage its events show, recorded
    with it, and not relayed (502 `provider_bad_response`): pass-through streams are not offered."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/audio/*,/v1/images/*")
        upstream.sse({"type": "transcript.text.delta", "delta": "a secret transcript"},
                     {"type": "transcript.text.done", "text": "a secret transcript",
                      "usage": {"type": "tokens", "input_tokens": 900, "output_tokens": 50, "total_tokens": 950}})
        upstream.sse({"type": "image_generation.partial_image", "b64_json": "AAAA", "partial_image_index": 0},
                     {"type": "image_generation.completed", "b64_json": "AAAA",
                      "usage": {"input_tokens": 30, "output_tokens": 4000, "total_tokens": 4030}})
        upstream.json({"object": "list", "data": [{"b64_json": "AAAA"}],
                       "usage": {"input_tokens": 30, "output_tokens": 4000, "total_tokens": 4030}})
        with gw.client() as alice:
            spoken = alice.post("/v1/audio/transcriptions", data={"model": "gpt-4o-transcribe"},
                                files={"file": ("a.wav", b"RIFF....")})
            drawn = alice.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "a cat"})
            plain = alice.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "a cat"})
    for streamed in (spoken, drawn):
        assert streamed.status_code == 502, streamed.text
        assert openai_error(streamed.json())["code"] == "provider_bad_response"
        assert "secret" not in streamed.text and "AAAA" not in streamed.text
    assert plain.status_code == 200, plain.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        (502, 900, 50), (502, 30, 4000), (200, 30, 4000)]


def test_a_list_of_runs_charges_each_runs_usage_once(gateway_factory: Callable[..., Gateway], redis_url: str) -> None:
    """`GET /v1/threads/{t}/runs` shows each run's usage: reading runs only that way charged nothing."""
    upstream = ScriptedUpstream()
    usage = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
    runs = {"object": "list", "data": [{"id": "run_a", "object": "thread.run", "usage": usage},
                                       {"id": "run_b", "object": "thread.run", "usage": usage},
                                       {"id": "run_c", "object": "thread.run", "usage": None}]}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url, passthrough="/v1/threads/*")
        redis.Redis.from_url(redis_url).set("sentinel:owner:thread_1", "alice")
        upstream.json(runs)
        upstream.json(runs)
        with gw.client() as alice:
            assert alice.get("/v1/threads/thread_1/runs").status_code == 200
            assert alice.get("/v1/threads/thread_1/runs").status_code == 200
    # the first read's row is one per run it charges, each keyed by its run (see `ObjectCharge`)
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(30, 20), (30, 20), (0, 0)]


def test_a_large_stored_answer_charged_as_reserved_is_not_charged_again_when_fetched(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """An answer over 1 MiB without a usage Sentinel could read is charged all it reserved; the
    object was not marked charged, so fetching it later charged its usage a second time."""
    upstream = ScriptedUpstream()
    made = {"id": "resp_big", "object": "response", "status": "completed", "model": "gpt-4o-mini",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]}],
            "metadata": {"pad": "y" * (1 << 21)}}
    fetched = {**made, "metadata": {}, "usage": {"input_tokens": 7, "output_tokens": 9, "total_tokens": 16}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url)
        upstream.json(made)
        upstream.json(fetched)
        with gw.client() as alice:
            created = alice.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 64})
            assert created.status_code == 200 and len(created.content) > 1 << 21
            assert alice.get("/v1/responses/resp_big").status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert rows[0]["output_tokens"] == 64  # all it reserved
    assert (rows[1]["input_tokens"], rows[1]["output_tokens"]) == (0, 0)


def sampled(model: str | None, kind: str = "completions") -> dict[str, Any]:
    source: dict[str, Any] = {"type": kind, "source": {"type": "file_id", "id": "file-items"},
                              "input_messages": {"type": "template", "template": [
                                  {"role": "user", "content": "{{item.question}}"}]}}
    return {"data_source": source if model is None else {**source, "model": model}}


def drawn(model: object) -> dict[str, Any]:
    """A run sampling a catalogue model whose image generation tool runs `model`."""
    run = sampled("gpt-4o-mini", "responses")
    return {"data_source": {**run["data_source"], "sampling_params": {
        "tools": [{"type": "image_generation", "model": model}]}}}


def graded(model: str) -> dict[str, Any]:
    return {"name": "e", "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": [
                {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "operation": "eq",
                 "reference": "yes"},
                {"type": "label_model", "name": "l", "model": model, "labels": ["a"], "passing_labels": ["a"],
                 "input": [{"role": "user", "content": "{{item.q}}"}]}]}


def scored(model: str) -> dict[str, Any]:
    return {**graded("gpt-4o-mini"), "testing_criteria": [
        {"type": "score_model", "name": "s", "model": model, "input": [{"role": "user", "content": "x"}]}]}


RUNS = "/v1/evals/eval_1/runs"


@pytest.mark.parametrize(("path", "body", "fine", "param"), [
    (RUNS, sampled("o1-pro"), sampled("gpt-4o-mini"), "data_source.model"),
    (RUNS, sampled("o1-pro", "responses"), sampled("gpt-4o-mini", "responses"), "data_source.model"),
    (RUNS, sampled(None), sampled("gpt-4o-mini"), "data_source.model"),
    (RUNS, sampled("claude-3-5-haiku-20241022"), sampled("gpt-4o-mini"), "data_source.model"),
    (RUNS, drawn("gpt-image-1"), drawn("gpt-4o-mini"), "data_source.sampling_params.tools.0.model"),
    (RUNS, drawn(["gpt-image-1"]), drawn("gpt-4o-mini"), "data_source.sampling_params.tools.0.model"),
    ("/v1/evals", graded("o1-pro"), graded("gpt-4o-mini"), "testing_criteria.model"),
    ("/v1/evals", scored("gpt-4.5-preview"), scored("gpt-4o-mini"), "testing_criteria.model"),
], ids=["run", "responses-run", "run-without-model", "other-provider", "tool", "tool-not-a-string", "label-grader",
        "score-grader"])
def test_an_eval_runs_only_a_model_the_gateway_offers(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, path: str, body: dict[str, Any],
    fine: dict[str, Any], param: str,
) -> None:
    """An eval run samples the model its data source names and a model grader runs its own: Bob had
    the company's account run any model (`o1-pro`), outside the catalogue. As a batch's lines, they
    must name a catalogue model the OpenAI upstream serves under that very name (400 otherwise,
    nothing reaches the provider)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/evals,/v1/evals/*")
    owners = redis.Redis.from_url(redis_url)
    owners.set("sentinel:owner:eval_1", "alice")
    owners.set("sentinel:owner:file-items", "alice")
    owners.set("sentinel:eval-data:file-items", "alice")  # (uploaded as an eval's data: its items read)
    assert_only_the_offered_model_runs(gw, spy, path, body, fine, param)


def assert_only_the_offered_model_runs(
    gw: Gateway, spy: SpyUpstream, path: str, body: dict[str, Any], fine: dict[str, Any], param: str,
) -> None:
    """`body` (naming a model the gateway does not offer at `param`) is refused, 400, before anything
    reaches the provider; `fine` (an offered model) is forwarded (the mock makes an eval, and has no
    eval `eval_1` nor any other such call: 404)."""
    with gw.client() as alice:
        refused = alice.post(path, json=body)
        assert spy.seen == []
        offered = alice.post(path, json=fine)
    assert refused.status_code == 400, refused.text
    error = openai_error(refused.json())
    assert error["details"]["param"] == param and "catalogue" in error["message"], error
    assert offered.status_code == (200 if path == "/v1/evals" else 404), offered.text
    assert [s.path for s in spy.seen] == [path]


def grader(model: str) -> dict[str, Any]:
    return {"type": "multi", "name": "m", "calculate_output": "a + b", "graders": {
        "a": {"type": "string_check", "name": "a", "input": "{{sample.output_text}}", "operation": "eq",
              "reference": "yes"},
        "b": {"type": "score_model", "name": "b", "model": model, "input": [{"role": "user", "content": "x"}]}}}


def tuned(model: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "training_file": "file-items",
            "method": {"type": "reinforcement", "reinforcement": {"grader": grader(model)}}}


@pytest.mark.parametrize(("path", "body", "fine", "param"), [
    ("/v1/fine_tuning/alpha/graders/run", {"grader": grader("o1-pro"), "model_sample": "yes"},
     {"grader": grader("gpt-4o-mini"), "model_sample": "yes"}, "grader.model"),
    ("/v1/fine_tuning/alpha/graders/validate", {"grader": {**grader("x")["graders"]["b"], "model": "o1-pro"}},
     {"grader": grader("gpt-4o-mini")["graders"]["b"]}, "grader.model"),
    ("/v1/fine_tuning/jobs", tuned("o1-pro"), tuned("gpt-4o-mini"), "method.reinforcement.grader.model"),
], ids=["grader-run", "grader-validate", "reinforcement-job"])
def test_a_grader_runs_only_a_model_the_gateway_offers(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, path: str, body: dict[str, Any],
    fine: dict[str, Any], param: str,
) -> None:
    """A grader run or validated on its own, and a reinforcement fine-tuning job's grader, had the
    provider run any model (`o1-pro`): the rule of an eval's graders and a batch's lines holds."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/fine_tuning/*")
    redis.Redis.from_url(redis_url).set("sentinel:owner:file-items", "alice")
    assert_only_the_offered_model_runs(gw, spy, path, body, fine, param)


def test_an_eval_run_through_the_sdk_names_a_catalogue_model(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/evals/*")
    owners = redis.Redis.from_url(redis_url)
    owners.set("sentinel:owner:eval_1", "alice")
    owners.set("sentinel:owner:file-items", "alice")
    owners.set("sentinel:eval-data:file-items", "alice")  # (uploaded as an eval's data: its items read)
    with pytest.raises(openai.BadRequestError, match="o1-pro"):
        gw.openai().evals.runs.create("eval_1", data_source=sampled("o1-pro")["data_source"])  # type: ignore[arg-type]
    assert spy.seen == []
    with pytest.raises(openai.NotFoundError):  # forwarded: the mock has no evals
        gw.openai().evals.runs.create("eval_1", data_source=sampled("gpt-4o-mini")["data_source"])  # type: ignore[arg-type]
    assert spy.paths() == [RUNS]


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/v1/evals", {"name": "e", "testing_criteria": [{"type": ["label_model"]}]}, 200),
    ("/v1/evals", {"name": "e", "testing_criteria": [{"type": {"a": 1}, "model": "x"}]}, 400),
    ("/v1/evals", {"name": "e", "data_source_config": {"type": []}}, 200),
    (RUNS, {"data_source": {"type": ["completions"]}}, 404),
    (RUNS, {"data_source": {"type": "jsonl", "source": {"type": []}}}, 404),
], ids=["grader-type-list", "grader-type-object", "config-type-list", "source-type-list", "nested-source-type"])
def test_an_eval_whose_type_is_not_a_string_is_no_such_type(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, path: str, body: dict[str, Any],
    status: int,
) -> None:
    """A `type` that is a list or an object was looked up in a set of types (unhashable): an ordinary
    user's key made a 500 with a traceback. It is no type Sentinel checks for (as a `source` that is
    not an object is no source): forwarded unless it names a model the catalogue does not offer."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/evals,/v1/evals/*")
    redis.Redis.from_url(redis_url).set("sentinel:owner:eval_1", "alice")
    with gw.client() as alice:
        answer = alice.post(path, json=body)
    assert answer.status_code == status, answer.text
    if status == 400:  # a grader with a model is a model grader, whatever its type
        assert openai_error(answer.json())["details"]["param"] == "testing_criteria.model", answer.text
        assert spy.seen == []
    else:  # forwarded (the mock makes an eval of anything, and has no `eval_1`)
        assert [s.path for s in spy.seen] == [path]


def test_a_pass_through_event_stream_with_an_event_too_large_to_read_is_still_recorded(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """An event over the 16 MiB an event may hold made the inspector raise a plain upstream error:
    the meter took it for a call the provider never served and gave the reservation back — no
    record of a call the provider billed. It is recorded with the usage the events showed."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/audio/*")
        upstream.sse({"type": "transcript.text.done", "text": "heard",
                      "usage": {"type": "tokens", "input_tokens": 700, "output_tokens": 20, "total_tokens": 720}},
                     {"type": "transcript.text.delta", "delta": "x" * (17 * 1024 * 1024)})
        with gw.client() as alice:
            spoken = alice.post("/v1/audio/transcriptions", data={"model": "gpt-4o-transcribe"},
                                files={"file": ("a.wav", b"RIFF....")})
    assert spoken.status_code == 502, spoken.text
    assert openai_error(spoken.json())["code"] == "provider_bad_response"
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    (row,) = ledger_rows(gw.settings.database_url, "alice")
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (502, 700, 20)


def test_the_read_charging_a_cut_turns_usage_corrects_its_conversations_count(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A turn in a conversation whose stream was cut before the provider's count left the
    conversation's count at the cut exchange's charge (~1,000 here), even once the first read of the
    stored response charged its real usage (9,950): a later turn in it was estimated, and charged when
    cut, at the too-low count. That read now corrects the count by the difference — once (a second
    read charges nothing and moves nothing), and only while the count is still what the cut turn
    left: after a later turn ended (its count the provider's, the cut turn included) it stays."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, passthrough="/v1/conversations")
        with gw.client() as alice:
            for conversation in ("conv_1", "conv_2"):
                upstream.json({"id": conversation, "object": "conversation"})
                assert alice.post("/v1/conversations", json={}).status_code == 200
                upstream.json(_response(f"{conversation}_resp_1", 900, 100))
                turn = {"model": "gpt-4o-mini", "input": "hi", "conversation": conversation}
                assert alice.post("/v1/responses", json=turn).status_code == 200
                upstream.sse({"type": "response.created", "response": {
                    "id": f"{conversation}_resp_2", "object": "response", "status": "in_progress"}},
                    {"type": "response.output_text.delta", "delta": "hel"})  # cut: no usage, no [DONE]
                with alice.stream("POST", "/v1/responses", json={**turn, "stream": True}) as answer:
                    answer.read()
                left = int(gw.read_stored(f"sentinel:context:{conversation}") or b"0")
                assert 1000 < left < 1100, left
            upstream.json(_response("conv_2_resp_3", 5000, 100))  # conv_2 goes on: its count the provider's
            assert alice.post("/v1/responses", json={
                "model": "gpt-4o-mini", "input": "more", "conversation": "conv_2"}).status_code == 200
            assert gw.read_stored("sentinel:context:conv_2") == b"5100"
            for conversation in ("conv_1", "conv_2", "conv_1"):
                upstream.json(_response(f"{conversation}_resp_2", 1950, 8000))
                assert alice.get(f"/v1/responses/{conversation}_resp_2").status_code == 200
    assert gw.read_stored("sentinel:context:conv_1") == b"9950"  # the cut turn's real exchange
    assert gw.read_stored("sentinel:context:conv_2") == b"5100"  # counted by the later turn already
    for conversation in ("conv_1", "conv_2"):
        assert gw.read_stored(f"sentinel:context:{conversation}_resp_2") == b"9950"
        assert gw.read_stored(f"sentinel:cut-turn:{conversation}_resp_2") is None
def test_deleting_a_conversations_item_drops_it_from_the_conversations_list(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """An item a read showed is listed beside its conversation's owner record (for the conversation's
    DELETE to end it), kept as long as the conversation — for good. An item deleted on its own stayed
    listed: adding, reading and deleting items grew that list without bound. Now it leaves the list."""
    upstream = ScriptedUpstream()
    children = "{sentinel:owner:conv_1}:charged-children"
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/conversations,/v1/conversations/*")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json({"object": "list", "data": [{"type": "message", "role": "user", "id": f"msg_{n}",
                                                   "content": [{"type": "input_text", "text": "hi"}]} for n in (1, 2)]})
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            assert alice.get("/v1/conversations/conv_1/items").status_code == 200
            assert gw.stored_ttl(children) == -1.0  # (listed, kept as long as the conversation)
            for n in (1, 2):
                upstream.json({"id": "conv_1", "object": "conversation"})  # (an item's DELETE answers its conversation)
                assert alice.delete(f"/v1/conversations/conv_1/items/msg_{n}").status_code == 200
    assert gw.stored_ttl(children) is None  # its last item gone: no list left
    assert gw.read_stored("sentinel:owner:conv_1") is not None


def test_deleting_a_conversation_ends_its_items_owners(gateway_factory: Callable[..., Gateway]) -> None:
    """The items a conversation's reads show become their reader's for as long as the conversation
    is kept (no TTL); its DELETE left each one's owner record in the store for good. Now they end in
    31 days (`FORGOTTEN_ITEM_TTL`: a stored response may show an item until then)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/conversations,/v1/conversations/*")
        upstream.json({"id": "conv_1", "object": "conversation"})
        upstream.json({"object": "list", "data": [{"type": "message", "role": "user", "id": f"msg_{n}",
                                                   "content": [{"type": "input_text", "text": "hi"}]} for n in (1, 2)]})
        upstream.json({"id": "conv_1", "object": "conversation.deleted", "deleted": True})
        with gw.client() as alice:
            assert alice.post("/v1/conversations", json={}).status_code == 200
            assert alice.get("/v1/conversations/conv_1/items").status_code == 200
            assert [gw.stored_ttl(f"sentinel:owner:msg_{n}") for n in (1, 2)] == [-1.0, -1.0]
            assert alice.delete("/v1/conversations/conv_1").status_code == 200
    for n in (1, 2):
        left = gw.stored_ttl(f"sentinel:owner:msg_{n}")
        assert left is not None and 0 < left <= FORGOTTEN_ITEM_TTL
    assert gw.read_stored("sentinel:owner:conv_1") is None


def test_a_conversation_answered_with_another_users_id_never_sets_its_context(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A conversation's creation counts the items given to it as its context (what each later turn
    in it reserves). A provider answering Bob's creation with Alice's conversation id (its owner kept:
    Alice's) had Bob's count replace hers: his few items made her 20,000-token conversation count as
    a few tokens (each of her turns reserved as if it held none), or his many a small one of hers
    count as his. The count is now set only for the conversation's owner."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/conversations,/v1/conversations/*")
        bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]
        with gw.client() as alice, gw.client(bob_key) as bob:
            upstream.json({"id": "conv_a", "object": "conversation"})
            long = {"items": [{"type": "message", "role": "user", "content": "lighthouse " * 8000}]}
            assert alice.post("/v1/conversations", json=long).status_code == 200
            hers = gw.read_stored("sentinel:context:conv_a")
            assert hers is not None and int(hers) >= len(orjson.dumps(long)) // 4
            upstream.json({"id": "conv_a", "object": "conversation"})  # (a provider answering with her id)
            assert bob.post("/v1/conversations", json={"items": []}).status_code == 200
    assert gw.read_stored("sentinel:owner:conv_a") == b"alice"
    assert gw.read_stored("sentinel:context:conv_a") == hers
