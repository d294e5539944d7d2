"""A batch is held to its maker's plan: its lines are reserved when it is made, as the requests they
are, and its usage settles that reservation when a read first shows it.

Before, `POST /v1/batches` reserved one request and no tokens, and a batch's usage was charged only
when a read first showed it: a user on a small plan uploaded a 50,000-line input and made a batch of
it, the plan's token and request limits never stopped it, and the company paid for all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from sentinel.domain.numbers import MAX_TOKENS
from sentinel.mock.app import create_mock_app
from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, ledger_rows, spying
from tests.support.clock import FakeClock
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import wait_for

ADMIN_KEY = "admin-key-for-batch-tests"
PASSTHROUGH = "/v1/files,/v1/files/*,/v1/batches,/v1/batches/*"
LINES = 20
CAP = 100  # each line's max_tokens


def _input() -> tuple[bytes, list[dict[str, Any]]]:
    bodies = [{"model": "gpt-4o-mini", "max_tokens": CAP,
               "messages": [{"role": "user", "content": f"question {n}: " + "why is the sky blue? " * 20}]}
              for n in range(LINES)]
    lines = [orjson.dumps({"custom_id": str(n), "method": "POST", "url": "/v1/chat/completions", "body": body})
             for n, body in enumerate(bodies)]
    return b"\n".join(lines) + b"\n", bodies


def _gateway(gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None, plan: str) -> Gateway:
    return gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=PASSTHROUGH,
                           default_plan=plan, admin_key=ADMIN_KEY)


def _upload(client: openai.OpenAI) -> str:
    content, _ = _input()
    return client.files.create(file=("in.jsonl", content), purpose="batch").id


def test_a_batch_past_the_plan_is_refused_before_it_is_made(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """20 lines of max_tokens 100 reserve 2,000 output tokens: on a plan of 1,000 a day the batch can
    never fit (429, not to be retried), nothing reaches the provider, nothing stays counted."""
    gw = _gateway(gateway_factory, spy, backend_url, "requests=1000/1d,output_tokens=1000/1d")
    client = gw.openai()
    file_id = _upload(client)
    spy.clear()
    with pytest.raises(openai.RateLimitError) as caught:
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    error = caught.value.response.json()["error"]
    assert error["code"] == "quota_exceeded" and error["details"]["metric"] == "output_tokens", error
    assert error["details"]["requested"] == LINES * CAP
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert spy.seen == []  # no batch was made upstream
    assert gw.quota_used() == {"requests": 1, "output_tokens": 0}  # the upload alone


def test_a_batch_reserves_its_lines_and_its_first_read_settles_them(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """Made, a batch counts its lines' estimate (their input as a chat request of each would be
    estimated, their caps as output, a request each); its first read showing its usage replaces that
    estimate with the usage — charged once, not on top of the estimate —; later reads change nothing."""
    gw = _gateway(gateway_factory, spy, backend_url,
                  "requests=1000/1d,input_tokens=1000000/1d,output_tokens=100000/1d")
    client = gw.openai()
    file_id = _upload(client)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert gw.quota_used()["output_tokens"] == LINES * CAP  # (before: 0, the batch reserved nothing)
    estimates = [gw.runtime.relay.meter.batch_line("/v1/chat/completions", body) for body in _input()[1]]
    estimated_input = sum(estimate[0] for estimate in estimates)
    assert estimated_input > LINES * 20 and all(estimate[1] == CAP for estimate in estimates)
    assert gw.quota_used() == {"requests": 1 + LINES, "input_tokens": estimated_input, "output_tokens": LINES * CAP}

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.usage is not None
    real = (done.usage.input_tokens, done.usage.output_tokens)
    assert real != (estimated_input, LINES * CAP)
    settled = {"requests": 2 + LINES, "input_tokens": real[0], "output_tokens": real[1]}
    assert gw.quota_used() == settled
    client.batches.retrieve(batch.id)
    assert gw.quota_used() == {**settled, "requests": 3 + LINES}  # a read more: one request, no tokens

    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 4)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(0, 0), (0, 0), real, (0, 0)]


def test_a_batch_the_provider_refuses_gives_its_reservation_back(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """Refused by the provider (a 400), the batch ran nothing: one request is counted, no token."""
    gw = _gateway(gateway_factory, spy, backend_url,
                  "requests=1000/1d,input_tokens=1000000/1d,output_tokens=100000/1d")
    client = gw.openai()
    file_id = _upload(client)
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                              extra_query={"mock_status": "400"})
    assert gw.quota_used() == {"requests": 2, "input_tokens": 0, "output_tokens": 0}


def test_a_batch_using_up_a_token_limit_can_still_be_cancelled_and_read(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A batch reserves its lines' output caps: one that used up a token limit of its maker's plan
    left every call of theirs refused (429) — the `cancel` that stops it and the read that settles it
    to what it spent too — until the window ended (a day here, a month on a 30-day limit), for tokens
    it never spent. A read or a cancel of a batch whose reservation is held is admitted against the
    plan's request limits alone: the read settles it, and what its lines did not spend is free again.
    Any other call is still refused while the limit is used up."""
    gw = _gateway(gateway_factory, spy, backend_url,
                  f"requests=1000/1d,input_tokens=1000000/1d,output_tokens={LINES * CAP}/1d")
    client = gw.openai()
    file_id = _upload(client)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert gw.quota_used()["output_tokens"] == LINES * CAP  # the whole limit
    with pytest.raises(openai.RateLimitError):
        client.files.retrieve(file_id)

    assert client.batches.cancel(batch.id).status == "cancelling"  # (before: 429)
    assert client.batches.retrieve(batch.id).status == "cancelled"
    assert gw.quota_used() == {"requests": 4, "input_tokens": 0, "output_tokens": 0}  # upload, batch, cancel, read

    again = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    done = client.batches.retrieve(again.id)
    assert done.status == "completed" and done.usage is not None
    used = gw.quota_used()
    assert (used["input_tokens"], used["output_tokens"]) == (done.usage.input_tokens, done.usage.output_tokens)
    assert used["requests"] == 4 + LINES + 1  # its lines, and the read
    client.files.retrieve(file_id)  # the limit has room again


def test_a_batch_using_up_a_request_limit_can_still_be_cancelled_and_read(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A batch's lines count as requests (they run): one whose lines used up a request limit left its
    maker unable to cancel it or read its results — each one request more, refused — until the
    window ended. A call on a batch whose reservation is held gets room for the requests the batch
    itself counted; any other call is still refused, and so is a read once the batch is settled."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=PASSTHROUGH,
                         default_plan=f"requests={LINES + 1}/1d", admin_key=ADMIN_KEY, window_clock=(clock := FakeClock()))
    client = gw.openai()
    file_id = _upload(client)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert gw.quota_used()["requests"] == LINES + 1  # the upload and the lines: the whole limit
    with pytest.raises(openai.RateLimitError):
        client.files.retrieve(file_id)

    assert client.batches.cancel(batch.id).status == "cancelling"  # (before: 429)
    assert client.batches.retrieve(batch.id).status == "cancelled"  # settles it: no line ran
    assert gw.quota_used()["requests"] == 4  # upload, batch, cancel, read
    client.files.retrieve(file_id)  # the limit has room again

    clock.advance(86_400)  # the next day
    client.files.retrieve(file_id)
    spent = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert gw.quota_used()["requests"] == LINES + 1
    assert client.batches.retrieve(spent.id).status == "completed"  # held: room for its own lines
    with pytest.raises(openai.RateLimitError):  # settled, its lines ran: no room any more
        client.batches.retrieve(spent.id)
    assert gw.quota_used()["requests"] == LINES + 2


class StillRunningFirst:
    """The mock, except that the first read of a batch shows it still at work (`status`, as given)
    with the usage of the lines run so far: half of what it shows done."""

    def __init__(self, status: str) -> None:
        self.app = create_mock_app()
        self.status = status
        self.read: set[str] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "GET" or not path.startswith("/v1/batches/") \
                or path in self.read:
            await self.app(scope, receive, send)
            return
        self.read.add(path)
        sent: list[Any] = []

        async def keep(message: Any) -> None:
            sent.append(message)

        await self.app(scope, receive, keep)
        batch = orjson.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
        batch["status"] = self.status
        batch["usage"] = {**batch["usage"], "input_tokens": batch["usage"]["input_tokens"] // 2,
                          "output_tokens": batch["usage"]["output_tokens"] // 2}
        body = orjson.dumps(batch)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("status", ["in_progress", "finalizing", "cancelling"])
def test_a_batch_still_at_work_settles_nothing_until_its_usage_is_final(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, status: str
) -> None:
    """A read of a batch still at work (running, finalizing, or cancelling while its lines in flight
    finish) that shows the usage of the lines run so far settled the batch's reservation to that
    part and marked its usage charged: the read that showed it done charged nothing, and the rest of
    the batch was never counted (here half of it; a batch read just after it started, nearly all)."""
    with spying(StillRunningFirst(status)) as (_, upstream):
        gw = _gateway(gateway_factory, upstream, backend_url,
                      "requests=1000/1d,input_tokens=1000000/1d,output_tokens=100000/1d")
        client = gw.openai()
        batch = client.batches.create(input_file_id=_upload(client), endpoint="/v1/chat/completions",
                                      completion_window="24h")
        reserved = gw.quota_used()
        running = client.batches.retrieve(batch.id)
        assert running.status == status and running.usage is not None
        assert gw.quota_used() == {**reserved, "requests": reserved["requests"] + 1}  # still the estimate

        done = client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.usage is not None
        real = (done.usage.input_tokens, done.usage.output_tokens)
        assert gw.quota_used() == {"requests": reserved["requests"] + 2, "input_tokens": real[0], "output_tokens": real[1]}
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 4)
        rows = ledger_rows(gw.settings.database_url, "alice")
        assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(0, 0), (0, 0), (0, 0), real]


def test_a_batch_that_ended_having_run_nothing_gives_its_tokens_back(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A batch whose input failed the provider's validation (here: its lines' `url` is not its
    `endpoint`) ends `failed`, without usage: it ran nothing. Its whole estimate stayed counted until
    its windows ended, refusing the user for quota never used; now the read that shows it ended
    settles it to no tokens and one request, once — a second read changes nothing but its own request."""
    gw = _gateway(gateway_factory, spy, backend_url,
                  "requests=1000/1d,input_tokens=1000000/1d,output_tokens=100000/1d")
    client = gw.openai()
    batch = client.batches.create(input_file_id=_upload(client), endpoint="/v1/responses", completion_window="24h")
    assert gw.quota_used()["output_tokens"] == LINES * CAP  # reserved

    failed = client.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.usage is None and failed.errors is not None
    assert gw.quota_used() == {"requests": 3, "input_tokens": 0, "output_tokens": 0}  # upload, batch, read
    client.batches.retrieve(batch.id)
    assert gw.quota_used() == {"requests": 4, "input_tokens": 0, "output_tokens": 0}
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 4)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(0, 0)] * 4


def test_a_list_read_showing_a_batchs_usage_first_settles_its_reservation_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Any read showing a batch's final usage first settles the reservation the batch holds, as a
    read of the batch alone does — here a list (the provider's answer to a list under an object of
    the caller's). It charged the usage on the list read's own reservation and left the batch's
    estimate counted on top until its windows ended (the user refused for quota never used), and no
    later read settled it (its usage was marked charged)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, admin_key=ADMIN_KEY,
                             passthrough=PASSTHROUGH + ",/v1/threads,/v1/threads/*",
                             default_plan="requests=1000/1d,input_tokens=1000000/1d,output_tokens=100000/1d")
        client = gw.openai()
        upstream.json({"id": "file-in", "object": "file", "bytes": 1, "purpose": "batch", "filename": "in.jsonl"})
        upstream.json({"id": "batch_1", "object": "batch", "status": "validating", "input_file_id": "file-in",
                       "request_counts": {"total": 0, "completed": 0, "failed": 0}, "usage": None})
        upstream.json({"id": "thread_1", "object": "thread"})
        done = {"id": "batch_1", "object": "batch", "status": "completed", "input_file_id": "file-in",
                "request_counts": {"total": LINES, "completed": LINES, "failed": 0},
                "usage": {"input_tokens": 700, "output_tokens": 90, "total_tokens": 790}}
        upstream.json({"object": "list", "data": [done], "has_more": False})
        upstream.json(done)
        file_id = _upload(client)
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        assert gw.quota_used()["output_tokens"] == LINES * CAP  # reserved
        with gw.client() as alice:
            assert alice.post("/v1/threads", json={}).status_code == 200
            assert alice.get("/v1/threads/thread_1/runs").status_code == 200
            settled = {"requests": 3 + LINES, "input_tokens": 700, "output_tokens": 90}
            assert gw.quota_used() == settled  # (before: the estimate, and the usage on top)
            assert alice.get("/v1/batches/batch_1").status_code == 200
        assert gw.quota_used() == {**settled, "requests": 4 + LINES}  # a read more: one request, no tokens


def _continuing(previous: str, lines: int) -> bytes:
    """A batch input of `lines` Responses requests, each a word continuing the response `previous`."""
    return b"".join(orjson.dumps({"custom_id": str(n), "method": "POST", "url": "/v1/responses", "body": {
        "model": "gpt-4o-mini", "input": "go on", "previous_response_id": previous, "max_output_tokens": 16,
    }}) + b"\n" for n in range(lines))


def test_a_batch_continuing_several_stored_responses_reserves_each_ones_context(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """The contexts of all the responses a batch's lines continue are read together when it is made
    (one batched store read): each line reserves the context of the response it continues, and an
    id continued by several lines is counted once a line."""
    gw = _gateway(gateway_factory, spy, backend_url,
                  "requests=1000/1d,input_tokens=1000000/1d,output_tokens=100000/1d")
    client = gw.openai()
    stored = [client.responses.create(model="gpt-4o-mini", input="the sky is blue " * words, max_output_tokens=16)
              for words in (300, 900, 1500)]
    contexts = [response.usage.input_tokens + response.usage.output_tokens for response in stored]
    content = b"".join(_continuing(response.id, lines) for response, lines in zip(stored, (1, 2, 4), strict=True))
    upload = client.files.create(file=("in.jsonl", content), purpose="batch").id
    before = gw.quota_used()["input_tokens"]
    client.batches.create(input_file_id=upload, endpoint="/v1/responses", completion_window="24h")
    reserved = gw.quota_used()["input_tokens"] - before
    read_along = contexts[0] + 2 * contexts[1] + 4 * contexts[2]
    assert read_along < reserved < read_along + 7 * 100  # each line's context, and its own few words


def test_a_batch_whose_lines_continue_a_stored_response_reserves_the_context_each_reads(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """Each line naming a `previous_response_id` (or a `conversation`) has the provider read that
    context again, and bill it, as a metered request continuing it is charged (its `carried_input`).
    The lines were estimated by their own text alone: a 6,000-token response continued by 40 lines
    reserved ~400 input tokens where the provider bills ~240,000 — a plan of 100,000 a day made the
    batch, its limit never stopping it (50,000 lines: 300 M tokens)."""
    gw = _gateway(gateway_factory, spy, backend_url,
                  "requests=1000/1d,input_tokens=100000/1d,output_tokens=100000/1d")
    client = gw.openai()
    stored = client.responses.create(model="gpt-4o-mini", input="the sky is blue " * 1500, max_output_tokens=16)
    context = stored.usage.input_tokens + stored.usage.output_tokens
    assert context > 5000
    many = client.files.create(file=("in.jsonl", _continuing(stored.id, 40)), purpose="batch").id
    few = client.files.create(file=("in.jsonl", _continuing(stored.id, 3)), purpose="batch").id
    spy.clear()
    with pytest.raises(openai.RateLimitError) as caught:
        client.batches.create(input_file_id=many, endpoint="/v1/responses", completion_window="24h")
    error = caught.value.response.json()["error"]
    assert error["code"] == "quota_exceeded" and error["details"]["metric"] == "input_tokens", error
    assert error["details"]["requested"] > 40 * context
    assert spy.seen == []  # no batch was made upstream

    before = gw.quota_used()["input_tokens"]
    client.batches.create(input_file_id=few, endpoint="/v1/responses", completion_window="24h")
    assert gw.quota_used()["input_tokens"] - before > 3 * context  # each line's context, and its own words


def test_a_list_read_charges_at_most_max_tokens_whatever_its_items_add_up_to(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """The usages a list answer shows first are summed (one row per object, together the sum): the
    sum is a count a provider reports like any other, at most MAX_TOKENS. It was not capped: a hostile or broken
    provider listing 12,000 items of 10**12 tokens (within the 1 MiB read) made a record of
    1.2 * 10**16 tokens — past 2**53, which a JSON number in JavaScript (Zion, the console) cannot
    hold, and ~770 of them in an hour overflowed the PostgreSQL rollups' BIGINT, stopping the
    console's roll-ups for everyone — while the quota was charged MAX_TOKENS (the ledger and the
    quota disagreed)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", admin_key=ADMIN_KEY,
                             passthrough=PASSTHROUGH + ",/v1/threads,/v1/threads/*",
                             default_plan="requests=1000/1d")
        upstream.json({"id": "thread_1", "object": "thread"})
        done = [{"id": f"run_{n}", "object": "thread.run", "status": "completed",
                 "usage": {"prompt_tokens": MAX_TOKENS, "completion_tokens": MAX_TOKENS, "total_tokens": 2 * MAX_TOKENS}}
                for n in range(3)]
        upstream.json({"object": "list", "data": done, "has_more": False})
        with gw.client() as alice:
            assert alice.post("/v1/threads", json={}).status_code == 200
            assert alice.get("/v1/threads/thread_1/runs").status_code == 200
        # one row per run the read charges (`ObjectCharge`), together what the plan was charged
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 4)
        listed = ledger_rows(gw.settings.database_url, "alice")[1:]
        assert (sum(r["input_tokens"] for r in listed), sum(r["output_tokens"] for r in listed)) == (MAX_TOKENS, MAX_TOKENS)


def test_a_batch_and_its_results_are_its_makers_alone_and_charged_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """The whole flow through the official SDK: alice's batch, read done, shows her its output file,
    which she downloads twice — its usage charged by the first read alone, each later call one
    request. Bob, who knows every id, can neither read, cancel nor list her batch (a cursor naming it
    included), nor read her output file; nor can alice list the account's batches."""
    gw = _gateway(gateway_factory, spy, backend_url,
                  "requests=1000/1d,input_tokens=1000000/1d,output_tokens=100000/1d")
    alice = gw.openai()
    bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=asyncio.run(create_key(gw.settings.database_url, "bob"))[1], max_retries=0)
    batch = alice.batches.create(input_file_id=_upload(alice), endpoint="/v1/chat/completions",
                                 completion_window="24h")
    done = alice.batches.retrieve(batch.id)
    assert done.status == "completed" and done.usage is not None and done.output_file_id is not None
    charged = gw.quota_used()
    assert (charged["input_tokens"], charged["output_tokens"]) == (done.usage.input_tokens, done.usage.output_tokens)
    results = [alice.files.content(done.output_file_id).text for _ in range(2)]
    assert results[0] == results[1] and len(results[0].splitlines()) == LINES
    assert gw.quota_used() == {**charged, "requests": charged["requests"] + 2}  # two requests, no tokens

    for attempt in (lambda: bob.batches.retrieve(batch.id), lambda: bob.batches.cancel(batch.id),
                    lambda: bob.files.content(done.output_file_id), lambda: bob.files.retrieve(done.output_file_id),
                    lambda: bob.batches.list(after=batch.id), lambda: bob.batches.list(),
                    lambda: alice.batches.list(), lambda: alice.batches.list(after=batch.id)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert gw.quota_used("bob") == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    assert [seen.path for seen in spy.seen if seen.path.startswith("/v1/batches") and seen.method == "GET"] \
        == [f"/v1/batches/{batch.id}"]  # only alice's one read reached the provider


@pytest.mark.parametrize("url", ["/v1/responses", "/v1/unknown"])  # (a url Sentinel does not know is read as Responses')
def test_a_batch_line_asking_for_a_background_response_is_refused_at_upload(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, url: str
) -> None:
    """The metered /v1/responses refuses `background: true` (the provider would generate after the
    call is answered, a queued response whose usage no answer shows); a batch's Responses line
    asking for it was uploaded and run: its output line a `queued` response without usage, the batch
    settled without what it went on to generate. Refused at upload, as the metered call is, before
    anything reaches the provider."""
    gw = _gateway(gateway_factory, spy, None, "requests=1000/1d")
    client = gw.openai()
    line = {"custom_id": "0", "method": "POST", "url": url,
            "body": {"model": "gpt-4o-mini", "input": "write a long story", "background": True}}
    spy.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("in.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and "background" in error["message"], error
    assert spy.seen == []
    assert gw.quota_used().get("requests", 0) == 0


@pytest.mark.parametrize(("url", "field", "value"), [
    ("/v1/chat/completions", "max_tokens", 1e6),  # a float the estimate read as no cap
    ("/v1/chat/completions", "max_completion_tokens", "100000"),
    ("/v1/chat/completions", "n", 2.0),
    ("/v1/chat/completions", "n", True),  # (a boolean is an int to Python)
    ("/v1/completions", "best_of", 1e308),
    ("/v1/responses", "max_output_tokens", 0),
    ("/v1/unknown", "max_tokens", -1),  # a line Sentinel cannot place: held to every endpoint's rule
])
def test_a_batch_lines_reserved_fields_are_held_to_the_metered_endpoints_rule(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, url: str, field: str, value: Any
) -> None:
    """A line's cap, `n` or `best_of` that is no whole number in range was read by its estimate as not
    given (the default reserved, one completion), and uploaded: a provider that takes `1e6` for a
    million, or `2.0` for two, ran the line past what the batch reserved. The metered endpoints refuse
    such a value (400) before anything is reserved; a batch line is refused so at upload (400 naming
    the line and `body.<field>`), nothing sent."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough=PASSTHROUGH)
    client = gw.openai()
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                            "prompt": "hi", "input": "hi", field: value}
    good = orjson.dumps({"custom_id": "1", "method": "POST", "url": url, "body": {**body, field: 2}})
    bad = orjson.dumps({"custom_id": "2", "method": "POST", "url": url, "body": body})
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("in.jsonl", good + b"\n" + bad + b"\n"), purpose="batch")
    assert f"body.{field}" in refused.value.message and "Line 2" in refused.value.message, refused.value.body
    assert spy.seen == []
    assert client.files.create(file=("in.jsonl", good + b"\n"), purpose="batch").id
