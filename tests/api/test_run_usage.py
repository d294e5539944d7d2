"""Runs whose usage a pass-through read shows apart from an answer's own `usage`: an eval run's tokens
are reported per model (`per_model_usage`), charged per model once a read first shows the run done;
an Assistants run read only through its thread's messages is fetched and charged once. Both went
uncharged: an eval run counted one request, a run never read itself nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest

from sentinel.domain.usage import charge_id
from sentinel.mock.openai_runs import ACTION_STEPS, ACTION_USAGE, GRADED, RUN_USAGE, SAMPLED, TOOL_ARGUMENTS
from sentinel.quota.tokens import TokenCounter
from sentinel.services.run_usage import MAX_FETCHED_RUNS
from tests.api.conftest import Gateway, scripted_gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, ledger_rows
from tests.support.runs import (
    HELLO,
    WEATHER,
    eval_and_run,
    thread_with_run,
    thread_with_runs,
    thread_with_tool_run,
)
from tests.support.waiting import wait_for

EVALS = "/v1/evals,/v1/evals/*"
THREADS = "/v1/assistants,/v1/threads,/v1/threads/*"


def _tokens(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["model"], r["input_tokens"], r["output_tokens"], r["cache_read_tokens"]) for r in rows]


def test_an_eval_run_is_charged_per_model_once_when_a_read_first_shows_it_done(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=EVALS)
    client = gw.openai()
    made, run = eval_and_run(client)
    assert run.status == "queued"
    done = client.evals.runs.retrieve(run.id, eval_id=made.id)
    assert done.status == "completed" and {u.run_model_name for u in done.per_model_usage} == {"gpt-4o-mini", "gpt-4o"}
    assert client.evals.runs.retrieve(run.id, eval_id=made.id).status == "completed"
    assert [r.id for r in client.evals.runs.list(made.id)] == [run.id]
    rows = gw.settled_rows(7)
    # made the eval, made the run, the first read and its two models, a read, a list: nothing more
    assert _tokens(rows) == [
        (None, 0, 0, 0), (None, 0, 0, 0), (None, 0, 0, 0),
        ("gpt-4o-mini", SAMPLED["prompt_tokens"], SAMPLED["completion_tokens"], SAMPLED["cached_tokens"]),
        ("gpt-4o", GRADED["prompt_tokens"], GRADED["completion_tokens"], GRADED["cached_tokens"]),
        (None, 0, 0, 0), (None, 0, 0, 0)]
    # each model's share keyed by the run: a read recording it again adds no row
    owner = rows[3]["external_id"]
    assert [r["request_id"] for r in rows[3:5]] == [charge_id(owner, run.id, m) for m in ("gpt-4o-mini", "gpt-4o")]
    assert all(r["endpoint"] == "/v1/evals/*" and r["status"] == 200 for r in rows[2:5])
    # priced as the catalogue prices each model (gpt-4o-mini: $0.15 / $0.60 per million)
    assert rows[3]["cost_usd"] == pytest.approx((120 * 0.15 + 40 * 0.60) / 1e6)


def test_a_list_of_eval_runs_charges_each_done_run_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=EVALS)
    client = gw.openai()
    made, run = eval_and_run(client)
    for _ in range(2):
        assert [r.status for r in client.evals.runs.list(made.id)] == ["completed"]
    assert client.evals.runs.retrieve(run.id, eval_id=made.id).status == "completed"
    charged = [r for r in gw.settled_rows(7) if r["model"] is not None]
    assert _tokens(charged) == [("gpt-4o-mini", 120, 40, 20), ("gpt-4o", 200, 10, 0)]


def test_an_eval_run_is_charged_once_across_replicas(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Two replicas on one Redis: the charged-once mark is shared, so only the first read charges."""
    first = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=EVALS)
    second = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=EVALS,
                             database_url=first.settings.database_url)
    made, run = eval_and_run(first.openai())
    for gw in (first, second, first, second):
        assert gw.openai().evals.runs.retrieve(run.id, eval_id=made.id).status == "completed"
    charged = [r for r in first.settled_rows(8) if r["model"] is not None]
    assert _tokens(charged) == [("gpt-4o-mini", 120, 40, 20), ("gpt-4o", 200, 10, 0)]


def test_no_one_is_charged_for_another_users_eval_run(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=EVALS)
    made, run = eval_and_run(gw.openai())
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    with gw.client(bob_key) as bob:
        assert bob.get(f"/v1/evals/{made.id}/runs/{run.id}").status_code == 404
        assert bob.get(f"/v1/evals/{made.id}/runs").status_code == 404
    assert spy.seen[-1].method == "POST"  # (neither reached the provider)
    assert gw.openai().evals.runs.retrieve(run.id, eval_id=made.id).status == "completed"
    assert [r["model"] for r in gw.settled_rows(5)][3:] == ["gpt-4o-mini", "gpt-4o"]
    assert all(r["input_tokens"] == r["output_tokens"] == 0 for r in ledger_rows(gw.settings.database_url, "bob"))


RUN_ROW = (RUN_USAGE["prompt_tokens"], RUN_USAGE["completion_tokens"])  # a thread run's ledger tokens


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(r["input_tokens"], r["output_tokens"]) for r in rows]


def _messages_read_twice(client: Any, spy: SpyUpstream, thread: Any, run: Any, **params: Any) -> list[Any]:
    """Two reads of the thread's messages: the first fetches the run for its usage (to charge it),
    the second finds it charged and fetches nothing; the first read's messages."""
    messages = f"/v1/threads/{thread.id}/messages"
    spy.clear()
    first = client.beta.threads.messages.list(thread.id, **params)
    assert spy.paths() == [messages, f"/v1/threads/{thread.id}/runs/{run.id}"]
    spy.clear()
    client.beta.threads.messages.list(thread.id, **params)
    assert spy.paths() == [messages]  # charged already
    return list(first.data)


def test_a_run_read_only_through_its_threads_messages_is_charged_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    thread, run = thread_with_run(client)
    # fetched once by Sentinel for its usage; a later read finds it charged and fetches nothing
    assert [m.run_id for m in _messages_read_twice(client, spy, thread, run)] == [run.id, None]
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).usage is not None  # charged already
    assert _pairs(gw.settled_rows(6)) == [(0, 0), (0, 0), (0, 0), RUN_ROW, (0, 0), (0, 0)]


def test_a_run_read_through_messages_too_large_to_parse_is_charged_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A thread whose messages list is over 1 MiB (a long message) is relayed as it arrives: the runs
    its messages name are read from its bytes, fetched and charged as a small list's (they went
    uncharged: the run's answer read for free)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    thread, run = thread_with_run(client, {"role": "user", "content": "long " * 250_000})
    assert [m.run_id for m in _messages_read_twice(client, spy, thread, run)] == [run.id, None]
    assert _pairs(gw.settled_rows(5)) == [(0, 0), (0, 0), (0, 0), RUN_ROW, (0, 0)]


def test_fake_run_ids_in_messages_metadata_do_not_hide_a_real_run_of_a_large_answer(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A message's `metadata` is the caller's: 20 messages whose metadata holds a `run_id` key, listed
    before the run's own message in a messages answer over 1 MiB, filled every run a read fetches
    with fakes (not found: never charged, the same on every read) — the real run was never charged."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    fakes = [{"role": "user", "content": "x", "metadata": {"run_id": f"run_fake{i}"}} for i in range(MAX_FETCHED_RUNS)]
    thread, run = thread_with_run(client, *fakes, {"role": "user", "content": "long " * 250_000})
    first = _messages_read_twice(client, spy, thread, run, order="asc")
    assert [m.metadata for m in first[:2]] == [{"run_id": "run_fake0"}, {"run_id": "run_fake1"}]
    assert first[-1].run_id == run.id
    assert _pairs(gw.settled_rows(5)) == [(0, 0), (0, 0), (0, 0), RUN_ROW, (0, 0)]


def test_runs_charged_already_do_not_hide_the_threads_other_runs(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A read fetches at most MAX_FETCHED_RUNS runs, of those not charged yet: listed oldest first,
    runs charged already took every place, and a later run (its answer read) was never charged."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    thread, made = thread_with_runs(client, runs=MAX_FETCHED_RUNS + 1)
    runs = [run.id for run in made]
    spy.clear()
    listed = client.beta.threads.messages.list(thread.id, order="asc")
    assert [m.run_id for m in listed.data] == [None, *runs]
    assert [s.path for s in spy.seen[1:]] == [f"/v1/threads/{thread.id}/runs/{r}" for r in runs[:MAX_FETCHED_RUNS]]
    spy.clear()
    client.beta.threads.messages.list(thread.id, order="asc")
    assert [s.path for s in spy.seen[1:]] == [f"/v1/threads/{thread.id}/runs/{runs[-1]}"]
    spy.clear()
    client.beta.threads.messages.list(thread.id, order="asc")
    assert [s.path for s in spy.seen] == [f"/v1/threads/{thread.id}/messages"]  # all charged

    def charged() -> list[tuple[int, int]]:
        return [pair for pair in _pairs(ledger_rows(gw.settings.database_url, "alice")) if any(pair)]

    assert wait_for(lambda: len(charged()) == len(runs))
    assert charged() == [RUN_ROW] * len(runs)  # each run once


# A `requires_action` step's charge: its tool call (the function's name and arguments) as output, and
# as input what its turn read (its instructions and tools as the run shows them, its thread's messages).
STEP = TokenCounter().count_text(WEATHER["function"]["name"] + TOOL_ARGUMENTS, "gpt-4o-mini")
STEP_ROW = (0, STEP)
# The step of a run given the `weather` tool on a thread of one "hello": the tool and the message read
# by the turn that called it, as input.
STEP_INPUT = TokenCounter().count_chat([HELLO], "gpt-4o-mini", [WEATHER])
TOOL_STEP_ROW = (STEP_INPUT, STEP)
# A thread's messages as a scripted upstream answers the fetch of them: none.
NO_MESSAGES = {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
# A run cancelled after its tool call: its usage beyond the step charged when the call was shown.
ACTION_ROW = (ACTION_USAGE["prompt_tokens"] - STEP_INPUT, ACTION_USAGE["completion_tokens"] - STEP)


def test_a_run_cancelled_after_requires_action_is_charged_its_usage_once_on_the_cancel(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A run in `requires_action` shows the model's tool call (model output) with no `usage`: a
    client that read it and cancelled the run was never charged (its cancel answered `cancelling`,
    no usage either). The cancel reads the run again until it is `cancelled` and charges its usage,
    under the run's key: later reads — of the run, the thread's runs, its messages — charge nothing."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    thread, run = thread_with_tool_run(client)
    shown = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert shown.status == "requires_action" and shown.usage is None
    assert shown.required_action is not None
    assert shown.required_action.submit_tool_outputs.tool_calls[0].function.arguments == TOOL_ARGUMENTS
    spy.clear()
    assert client.beta.threads.runs.cancel(run.id, thread_id=thread.id).status == "cancelling"
    run_path = f"/v1/threads/{thread.id}/runs/{run.id}"
    assert spy.paths() == [run_path + "/cancel", run_path]  # read again: cancelled, its usage shown
    rows = gw.settled_rows(5)  # the cancel's row is the run's charge (its key), as a read charging one's is
    assert _pairs(rows) == [(0, 0), (0, 0), (0, 0), TOOL_STEP_ROW, ACTION_ROW]
    assert rows[-1]["request_id"] == charge_id(rows[-1]["external_id"], run.id)
    assert rows[-1]["model"] == "gpt-4o-mini"
    spy.clear()
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled"
    assert [r.status for r in client.beta.threads.runs.list(thread.id)] == ["cancelled"]
    client.beta.threads.messages.list(thread.id)
    assert spy.paths() == [run_path, f"/v1/threads/{thread.id}/runs", f"/v1/threads/{thread.id}/messages"]
    assert _pairs(gw.settled_rows(8))[5:] == [(0, 0)] * 3  # charged already: no second charge, no fetch


def test_a_run_abandoned_in_requires_action_is_charged_the_tool_calls_it_showed_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A run in `requires_action` shows the model's tool call (model output) with no `usage`; a client
    that read it and left the run there (no cancel, no further read) was never charged. The first
    read showing the step charges its tool call as output and the tool its turn read as input,
    under the step's key: later reads — the run again, the thread's runs — charge nothing more."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    thread, run = thread_with_tool_run(client)
    shown = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert shown.status == "requires_action" and shown.usage is None and shown.required_action is not None
    (call,) = shown.required_action.submit_tool_outputs.tool_calls
    rows = gw.settled_rows(4)
    assert _pairs(rows) == [(0, 0), (0, 0), (0, 0), TOOL_STEP_ROW]
    from sentinel.services.run_usage import (
        step_key,  # (after the rows: their charge is what the old code missed)
    )

    assert rows[-1]["request_id"] == charge_id(rows[-1]["external_id"], str(step_key(run.id, [call.id])))
    assert rows[-1]["model"] == "gpt-4o-mini"
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    assert [r.status for r in client.beta.threads.runs.list(thread.id)] == ["requires_action"]
    assert _pairs(gw.settled_rows(6))[4:] == [(0, 0), (0, 0)]  # the step was charged already


# Heavy instructions a run is given (the input of each of its turns): ~1,000 tokens.
INSTRUCTIONS = "Answer in the tersest way you can, and call the weather tool first. " * 70
INSTRUCTED_INPUT = TokenCounter().count_chat([{"role": "system", "content": INSTRUCTIONS}, HELLO], "gpt-4o-mini",
                                             [WEATHER])


def test_a_run_abandoned_in_requires_action_is_charged_the_input_its_step_read_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A run given heavy instructions, its tool call read and the run left there, was charged its
    call alone as output — its turn's input, which the provider bills once the run expires, went
    uncharged: heavy-input runs for the price of their tool calls. The first read showing the step
    now charges as input what the run shows its turn read (its instructions and tools), once; its
    usage, once shown (a cancel), is charged beyond that input and output, never below zero."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    assistant = client.beta.assistants.create(model="gpt-4o-mini", name="helper")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id, tools=[WEATHER],
                                          instructions=INSTRUCTIONS)
    assert INSTRUCTED_INPUT > ACTION_USAGE["prompt_tokens"] + 900
    for _ in range(2):
        shown = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        assert shown.status == "requires_action" and shown.instructions == INSTRUCTIONS
    assert [r.status for r in client.beta.threads.runs.list(thread.id)] == ["requires_action"]
    rows = gw.settled_rows(6)
    assert _pairs(rows) == [(0, 0), (0, 0), (0, 0), (INSTRUCTED_INPUT, STEP), (0, 0), (0, 0)]
    # its usage (the mock's fixed figures: less input than the step was charged) charged beyond it
    assert client.beta.threads.runs.cancel(run.id, thread_id=thread.id).status == "cancelling"
    assert _pairs(gw.settled_rows(7))[6] == (0, ACTION_USAGE["completion_tokens"] - STEP)
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled"
    assert _pairs(gw.settled_rows(8))[7] == (0, 0)


# A heavy message of a thread (the input of each turn of its runs): ~1,000 tokens.
HEAVY = {"role": "user", "content": "Summarise the weather report below in one terse line, please. " * 90}
# A message showing an image (by URL, low detail: its model's image rule's flat figure).
PICTURE = {"role": "user", "content": [{"type": "text", "text": "What is the weather in this picture?"},
                                       {"type": "image_url",
                                        "image_url": {"url": "https://example.com/sky.png", "detail": "low"}}]}


def test_a_run_abandoned_in_requires_action_is_charged_its_threads_messages_as_input_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A run whose heavy input is its thread's messages (not its instructions), its tool call read
    and the run left there, was charged only its tools and call: the messages its turn read, which
    the provider bills once the run expires, went free, run after run. The first read showing the
    step now fetches the thread's messages at Sentinel's cost (one page: the newest 100) and
    charges those the run read (its `additional_messages` too) as input, once."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    assistant = client.beta.assistants.create(model="gpt-4o-mini", name="helper")
    thread = client.beta.threads.create(messages=[HEAVY])
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id, tools=[WEATHER],
                                          additional_messages=[HELLO])
    spy.clear()
    for _ in range(2):
        assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    assert [r.status for r in client.beta.threads.runs.list(thread.id)] == ["requires_action"]
    read = TokenCounter().count_chat([HEAVY, HELLO], "gpt-4o-mini", [WEATHER])
    assert read > STEP_INPUT + 900
    assert _pairs(gw.settled_rows(6)) == [(0, 0)] * 3 + [(read, STEP), (0, 0), (0, 0)]
    fetched = [s.query for s in spy.seen if s.path == f"/v1/threads/{thread.id}/messages"]
    assert fetched == [b"limit=100&order=desc"]  # once: the step's first read


def test_a_steps_thread_messages_are_the_last_its_truncation_strategy_keeps(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A run told to read only its thread's last messages (`truncation_strategy`) is charged those:
    here the last one, showing an image, counted by the image rule of the run's model."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=THREADS)
    client = gw.openai()
    assistant = client.beta.assistants.create(model="gpt-4o-mini", name="helper")
    thread = client.beta.threads.create(messages=[HEAVY, PICTURE])
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id, tools=[WEATHER],
                                          truncation_strategy={"type": "last_messages", "last_messages": 1})
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    read = TokenCounter().count_chat([PICTURE], "gpt-4o-mini", [WEATHER])
    # (its image: gpt-4o-mini's rule's flat 2,833 tokens at low detail)
    assert read > TokenCounter().count_chat([], "gpt-4o-mini", [WEATHER]) + 2833
    assert _pairs(gw.settled_rows(4))[3] == (read, STEP)


def test_a_steps_thread_messages_that_cannot_be_fetched_leave_its_charge_as_the_run_shows_it(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """When the thread's messages cannot be fetched (an error answer), the step is charged what the
    run shows its turn read — its instructions and tools — and the client's read is answered as
    ever; only messages up to the run's own are counted: not the run's own answer, nor later ones."""
    run = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "requires_action",
           "model": "gpt-4o-mini", "usage": None, "created_at": 1000, "instructions": "Be terse.",
           "tools": [WEATHER], "required_action": {"submit_tool_outputs": {"tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": TOOL_ARGUMENTS}}]}}}
    second = {**run, "id": "run_2", "required_action": {"submit_tool_outputs": {"tool_calls": [
        {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": TOOL_ARGUMENTS}}]}}}

    def message(run_id: str | None, created_at: int, text: str) -> dict[str, Any]:
        return {"id": f"msg_{created_at}", "object": "thread.message", "thread_id": "thread_1", "role": "user",
                "created_at": created_at, "run_id": run_id,
                "content": [{"type": "text", "text": {"value": text, "annotations": []}}]}

    page = {"object": "list", "has_more": False, "data": [
        message(None, 1001, "later " * 500), message("run_2", 1000, "its own " * 500), message(None, 999, "hello")]}
    with scripted_gateway(gateway_factory, (), "thread_1",
                          redis_url=redis_url, passthrough="/v1/threads/*") as (gw, upstream):
        upstream.json(run)
        upstream.json({"error": {"message": "No thread found", "type": "invalid_request_error"}}, status=404)
        upstream.json(second)
        upstream.json(page)
        with gw.client() as alice:
            assert alice.get("/v1/threads/thread_1/runs/run_1").status_code == 200
            assert alice.get("/v1/threads/thread_1/runs/run_2").status_code == 200
    system = [{"role": "system", "content": "Be terse."}]
    assert _pairs(gw.settled_rows(2)) == [
        (TokenCounter().count_chat(system, "gpt-4o-mini", [WEATHER]), STEP),
        (TokenCounter().count_chat([*system, HELLO], "gpt-4o-mini", [WEATHER]), STEP),
    ]


def test_a_steps_input_is_never_charged_beyond_the_runs_max_prompt_tokens(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A run whose `max_prompt_tokens` caps the input of all its turns is charged no more input for
    its steps than that cap, however long its instructions."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=THREADS)
    client = gw.openai()
    assistant = client.beta.assistants.create(model="gpt-4o-mini", name="helper")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id, tools=[WEATHER],
                                          instructions=INSTRUCTIONS, max_prompt_tokens=600)
    for _ in range(ACTION_STEPS):
        shown = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        assert shown.status == "requires_action" and shown.required_action is not None
        (call,) = shown.required_action.submit_tool_outputs.tool_calls
        client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id,
                                                     tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}])
    charged = [pair for pair in _pairs(gw.settled_rows(3 + 2 * ACTION_STEPS)) if any(pair)]
    assert charged == [(600, STEP), (0, STEP)]  # the second step: the cap spent by the first


def test_a_run_listed_in_requires_action_is_charged_its_step_once_across_replicas(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A list of the thread's runs shows the step as a read of the run does; two replicas on one
    Redis share the step's charge mark."""
    first = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=THREADS)
    second = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=THREADS,
                             database_url=first.settings.database_url)
    thread, run = thread_with_tool_run(first.openai())
    assert [r.status for r in first.openai().beta.threads.runs.list(thread.id)] == ["requires_action"]
    assert second.openai().beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    assert _pairs(first.settled_rows(5)) == [(0, 0), (0, 0), (0, 0), TOOL_STEP_ROW, (0, 0)]


def test_each_requires_action_step_is_charged_once_and_the_run_its_usage_beyond_them(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A run given its tool outputs stops in `requires_action` again with new tool calls: each step is
    charged once, by the first read showing it (the SDK's create-and-poll, a retrieve); the run's
    usage, once shown done, is charged beyond what its steps were (never twice)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    assistant = client.beta.assistants.create(model="gpt-4o-mini", name="helper")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, tools=[WEATHER],
                                                   poll_interval_ms=1)
    calls = []
    for step in range(ACTION_STEPS):
        if step:
            run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        assert run.status == "requires_action" and run.required_action is not None
        (call,) = run.required_action.submit_tool_outputs.tool_calls
        calls.append(call.id)
        client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)  # shown again: charged already
        client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id,
                                                     tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}])
    assert len(set(calls)) == ACTION_STEPS
    done = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert done.status == "completed" and done.usage is not None
    client.beta.threads.runs.list(thread.id)
    client.beta.threads.messages.list(thread.id)
    charged = [(r["input_tokens"], r["output_tokens"]) for r in gw.settled_rows(2 + 1 + 3 * ACTION_STEPS + 3)
               if r["input_tokens"] or r["output_tokens"]]
    beyond = (RUN_USAGE["prompt_tokens"] - ACTION_STEPS * STEP_INPUT, RUN_USAGE["completion_tokens"] - ACTION_STEPS * STEP)
    assert charged == [TOOL_STEP_ROW] * ACTION_STEPS + [beyond]


def test_a_cancel_naming_another_users_run_charges_no_one_and_the_owner_pays_on_her_own_cancel(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    thread, run = thread_with_tool_run(gw.openai())
    assert gw.openai().beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=bob_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # alice's thread: never reaches the provider
        bob.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    bobs = bob.beta.threads.create()
    with pytest.raises(openai.NotFoundError):  # his own thread: the provider finds no such run in it
        bob.beta.threads.runs.cancel(run.id, thread_id=bobs.id)
    assert gw.openai().beta.threads.runs.cancel(run.id, thread_id=thread.id).status == "cancelling"
    assert _pairs(gw.settled_rows(5))[-1] == ACTION_ROW
    assert all(r["input_tokens"] == r["output_tokens"] == 0 for r in ledger_rows(gw.settings.database_url, "bob"))


def test_a_run_whose_thread_is_another_users_is_never_fetched_nor_charged(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    thread, run = thread_with_run(gw.openai())
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    spy.clear()
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key=bob_key, max_retries=0).beta.threads.messages.list(thread.id)
    assert spy.seen == []
    gw.openai().beta.threads.messages.list(thread.id)
    assert gw.settled_rows(4)[-1]["input_tokens"] == RUN_USAGE["prompt_tokens"]
    assert all(r["input_tokens"] == 0 for r in ledger_rows(gw.settings.database_url, "bob"))


def test_malformed_run_usage_is_ignored_never_a_server_error(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """Counts of the wrong type are not charged (the well-formed entries are), and the read is answered."""
    run = {"id": "evalrun_1", "object": "eval.run", "eval_id": "eval_1", "status": "completed", "per_model_usage": [
        {"model_name": "gpt-4o-mini", "prompt_tokens": "12", "completion_tokens": 3, "cached_tokens": 0},
        {"model_name": ["gpt-4o"], "prompt_tokens": 12, "completion_tokens": 3, "cached_tokens": 0},
        {"model_name": "gpt-4o", "prompt_tokens": 12, "completion_tokens": True, "cached_tokens": 0},
        "gpt-4o",
        {"model_name": "gpt-4o", "prompt_tokens": 50, "completion_tokens": 7, "cached_tokens": None},
        {"model_name": "gpt-4o", "prompt_tokens": 30, "completion_tokens": 4, "cached_tokens": 10},
    ]}
    odd = {**run, "id": "evalrun_2", "per_model_usage": {"gpt-4o": 5}}
    messages = {"object": "list", "data": [{"id": "msg_1", "object": "thread.message", "thread_id": "thread_1",
                                            "run_id": "run_1"}]}
    thread_run = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "completed",
                  "usage": {"prompt_tokens": [1], "completion_tokens": 2, "total_tokens": 3}}
    with scripted_gateway(gateway_factory, (run, odd, messages, thread_run), "eval_1", "thread_1",
                          redis_url=redis_url, passthrough="/v1/evals/*,/v1/threads/*") as (gw, _):
        with gw.client() as alice:
            assert alice.get("/v1/evals/eval_1/runs/evalrun_1").status_code == 200
            assert alice.get("/v1/evals/eval_1/runs/evalrun_2").status_code == 200
            assert alice.get("/v1/threads/thread_1/messages").status_code == 200
    assert _tokens(gw.settled_rows(4)) == [
        (None, 0, 0, 0), ("gpt-4o", 30, 4, 10), (None, 0, 0, 0), (None, 0, 0, 0)]


def test_malformed_requires_action_steps_are_not_charged_never_a_server_error(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A `requires_action` run whose tool calls cannot be told apart (no id, not a list) or carry no
    text is answered as it is; a well-formed step beside them in a list is charged."""

    def run(run_id: str, required_action: Any) -> dict[str, Any]:
        return {"id": run_id, "object": "thread.run", "thread_id": "thread_1", "status": "requires_action",
                "model": "gpt-4o-mini", "usage": None, "required_action": required_action}

    calls = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": 5, "arguments": ["x"]}},
        {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": TOOL_ARGUMENTS}}]}}
    listed = {"object": "list", "data": [
        run("run_1", {"submit_tool_outputs": {"tool_calls": [{"function": {"name": "w", "arguments": "{}"}}]}}),
        run("run_2", {"submit_tool_outputs": {"tool_calls": {"id": "call_9"}}}),
        run("run_3", "requires_action"), run("run_4", None), run("run_5", calls), "run_6"]}
    # (the step charged fetches its thread's messages: none)
    with scripted_gateway(gateway_factory, (listed, NO_MESSAGES, listed), "thread_1",
                          redis_url=redis_url, passthrough="/v1/threads/*") as (gw, _):
        with gw.client() as alice:
            assert alice.get("/v1/threads/thread_1/runs").status_code == 200
            assert alice.get("/v1/threads/thread_1/runs").status_code == 200
    assert _pairs(gw.settled_rows(2)) == [STEP_ROW, (0, 0)]


def test_a_step_shown_by_the_answer_to_tool_outputs_is_charged_once(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A provider that answers a run's tool outputs with its next `requires_action` step (not
    `queued`) shows its tool calls there: that answer charges the step, a read of it after nothing."""
    shown = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "requires_action",
             "model": "gpt-4o-mini", "usage": None, "required_action": {"submit_tool_outputs": {"tool_calls": [
                 {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": TOOL_ARGUMENTS}}]}}}
    with scripted_gateway(gateway_factory, (shown, NO_MESSAGES, shown), "thread_1",
                          redis_url=redis_url, passthrough="/v1/threads/*") as (gw, _):
        with gw.client() as alice:
            outputs = {"tool_outputs": [{"tool_call_id": "call_1", "output": "sunny"}]}
            assert alice.post("/v1/threads/thread_1/runs/run_1/submit_tool_outputs", json=outputs).status_code == 200
            assert alice.get("/v1/threads/thread_1/runs/run_1").status_code == 200
    assert _pairs(gw.settled_rows(2)) == [STEP_ROW, (0, 0)]


def test_a_fine_tuning_job_is_charged_its_trained_tokens_once_when_a_read_first_shows_it_ended(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A fine-tuning job bills its `trained_tokens` (it shows no `usage`): charged as input tokens by
    the first read showing it ended, once — it went uncharged, a request a read whatever it trained."""
    made = {"id": "ftjob_1", "object": "fine_tuning.job", "model": "gpt-4o-mini-2024-07-18", "created_at": 1,
            "status": "validating_files", "trained_tokens": None, "training_file": "file-1", "result_files": [],
            "fine_tuned_model": None, "finished_at": None, "hyperparameters": {}, "organization_id": "org",
            "seed": 1, "validation_file": None, "error": None}
    running = {**made, "status": "running"}
    paused = {**made, "status": "paused", "trained_tokens": 1_000}  # may resume: not ended
    done = {**made, "status": "succeeded", "trained_tokens": 48_000, "fine_tuned_model": "ft:gpt-4o-mini:org::abc"}
    with scripted_gateway(gateway_factory, (made, running, paused, done, done), "file-1",
                          redis_url=redis_url, passthrough="/v1/fine_tuning/*") as (gw, _):
        client = gw.openai()
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file="file-1")
        assert [client.fine_tuning.jobs.retrieve(job.id).status for _ in range(4)] == [
            "running", "paused", "succeeded", "succeeded"]
    rows = gw.settled_rows(5)
    assert _pairs(rows) == [(0, 0), (0, 0), (0, 0), (48_000, 0), (0, 0)]
    assert all(r["endpoint"] == "/v1/fine_tuning/*" for r in rows)


def test_an_eval_run_read_only_through_its_output_items_is_charged_per_model_once(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """An eval run's output items show its samples (the sampled model's answers, the graders'
    verdicts) while only the run reports their tokens: a read of them fetches the run at Sentinel's
    cost and charges it per model once it is done, as a read of the run would — it went uncharged."""
    items = {"object": "list", "has_more": False, "data": [
        {"id": "outputitem_1", "object": "eval.run.output_item", "eval_id": "eval_1", "run_id": "evalrun_1",
         "status": "pass", "sample": {"output": [{"role": "assistant", "content": "yes"}]}}]}
    one = items["data"][0]
    running = {"id": "evalrun_1", "object": "eval.run", "eval_id": "eval_1", "status": "in_progress",
               "per_model_usage": None}
    done = {**running, "status": "completed", "per_model_usage": [
        {"model_name": "gpt-4o-mini", "prompt_tokens": 120, "completion_tokens": 40, "cached_tokens": 20,
         "invocation_count": 2, "total_tokens": 160}]}
    # a read while it runs (fetched, not charged), one once done (charged), then none fetched
    with scripted_gateway(gateway_factory, (items, running, items, done, one, items), "eval_1",
                          redis_url=redis_url, passthrough="/v1/evals/*") as (gw, upstream):
        with gw.client() as alice:
            for path in ("output_items", "output_items", "output_items/outputitem_1", "output_items"):
                assert alice.get(f"/v1/evals/eval_1/runs/evalrun_1/{path}").status_code == 200
        assert len(upstream.received) == 6  # (the queue is used up: a fetch more would be a 500)
    rows = gw.settled_rows(5)
    assert _tokens(rows) == [(None, 0, 0, 0), (None, 0, 0, 0), ("gpt-4o-mini", 120, 40, 20), (None, 0, 0, 0),
                             (None, 0, 0, 0)]
    # the model's share keyed by the run (`charge_id`): a read recording it again adds no row
    assert rows[2]["request_id"] == charge_id(rows[2]["external_id"], "evalrun_1", "gpt-4o-mini")


def test_an_eval_run_read_through_output_items_too_large_to_parse_is_charged(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    items = {"object": "list", "has_more": False, "data": [
        {"id": "outputitem_1", "object": "eval.run.output_item", "eval_id": "eval_1", "run_id": "evalrun_1",
         "status": "pass", "sample": {"output": [{"role": "assistant", "content": "long " * 250_000}]}}]}
    done = {"id": "evalrun_1", "object": "eval.run", "eval_id": "eval_1", "status": "completed", "per_model_usage": [
        {"model_name": "gpt-4o-mini", "prompt_tokens": 120, "completion_tokens": 40, "cached_tokens": 20}]}
    with scripted_gateway(gateway_factory, (items, done), "eval_1",
                          redis_url=redis_url, passthrough="/v1/evals/*") as (gw, _):
        with gw.client() as alice:
            read = alice.get("/v1/evals/eval_1/runs/evalrun_1/output_items")
            assert read.status_code == 200 and len(read.content) > 1024 * 1024
    assert _tokens(gw.settled_rows(2)) == [(None, 0, 0, 0), ("gpt-4o-mini", 120, 40, 20)]


def test_a_run_read_only_through_its_steps_is_charged_once(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A run's steps show its work (a tool's calls and outputs, a code interpreter's logs) but count
    no usage of their own: a read of them fetches the run and charges it once done — it went
    uncharged, its results read through the steps alone."""
    step = {"id": "step_1", "object": "thread.run.step", "thread_id": "thread_1", "run_id": "run_1",
            "status": "completed", "type": "tool_calls", "usage": {"prompt_tokens": 5, "completion_tokens": 1},
            "step_details": {"type": "tool_calls", "tool_calls": [{"id": "call_1", "type": "code_interpreter",
                             "code_interpreter": {"input": "print(6*7)", "outputs": [{"type": "logs", "logs": "42"}]}}]}}
    steps = {"object": "list", "data": [step], "has_more": False}
    running = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "in_progress", "usage": None}
    done = {**running, "status": "completed", "usage": {"prompt_tokens": 90, "completion_tokens": 30, "total_tokens": 120}}
    # a read while it runs (fetched, not charged), one once done (charged), then none fetched
    with scripted_gateway(gateway_factory, (steps, running, steps, done, step, steps), "thread_1",
                          redis_url=redis_url, passthrough="/v1/threads/*") as (gw, upstream):
        with gw.client() as alice:
            for path in ("steps", "steps", "steps/step_1", "steps"):
                assert alice.get(f"/v1/threads/thread_1/runs/run_1/{path}").status_code == 200
        assert len(upstream.received) == 6  # (the queue is used up: a fetch more would be a 500)
    assert _pairs(gw.settled_rows(4)) == [(0, 0), (90, 30), (0, 0), (0, 0)]


def test_a_runs_requires_action_step_read_only_through_its_steps_is_charged_once(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A run's steps read while it waits in `requires_action` show its tool calls (model output) as
    the run does — a read of the steps alone fetched the run, found it not done and charged nothing:
    the client took the calls and left. The step is charged as a read of the run charges it, once,
    and the run's usage beyond it once done."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": TOOL_ARGUMENTS}}
    step = {"id": "step_1", "object": "thread.run.step", "thread_id": "thread_1", "run_id": "run_1",
            "status": "in_progress", "type": "tool_calls", "usage": None,
            "step_details": {"type": "tool_calls", "tool_calls": [call]}}
    steps = {"object": "list", "data": [step], "has_more": False}
    waiting = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "requires_action",
               "model": "gpt-4o-mini", "usage": None,
               "required_action": {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [call]}}}
    done = {**waiting, "status": "completed", "required_action": None,
            "usage": {"prompt_tokens": 90, "completion_tokens": 30, "total_tokens": 120}}
    # each read of the steps fetches the run (not charged yet): waiting (its step charged: its thread's
    # messages fetched), waiting again, then done
    with scripted_gateway(gateway_factory, (steps, waiting, NO_MESSAGES, steps, waiting, steps, done), "thread_1",
                          redis_url=redis_url, passthrough="/v1/threads/*") as (gw, upstream):
        with gw.client() as alice:
            for _ in range(3):
                assert alice.get("/v1/threads/thread_1/runs/run_1/steps").status_code == 200
        assert len(upstream.received) == 7
    assert _pairs(gw.settled_rows(3)) == [STEP_ROW, (0, 0), (90, 30 - STEP)]


def test_a_grader_run_on_its_own_is_charged_what_its_model_graders_used(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A grader run (`/v1/fine_tuning/alpha/graders/run`) has the provider run its model graders and
    shows their tokens only in `metadata.token_usage`: charged as the call's usage — it was charged
    none, a request however long the input its model read."""
    grader = {"type": "score_model", "name": "s", "model": "gpt-4o-mini", "input": [{"role": "user", "content": "x"}]}
    ran = {"reward": 1.0, "sub_rewards": {}, "metadata": {
        "name": "s", "type": "score_model", "execution_time": 1.5, "scores": {"s": 1.0}, "sampled_model_name": None,
        "errors": {}, "token_usage": {"prompt_tokens": 700, "completion_tokens": 9, "cached_tokens": 100,
                                      "total_tokens": 709}},
        "model_grader_token_usage_per_model": {"gpt-4o-mini": {"prompt_tokens": 700, "completion_tokens": 9}}}
    without = {**ran, "metadata": {**ran["metadata"], "token_usage": {"prompt_tokens": 80, "completion_tokens": None}}}
    with scripted_gateway(gateway_factory, (ran, without), redis_url=redis_url,
                          passthrough="/v1/fine_tuning/*") as (gw, _):
        client = gw.openai()
        for _ in range(2):
            assert client.fine_tuning.alpha.graders.run(grader=grader, model_sample="yes").reward == 1.0  # type: ignore[arg-type]
    assert _tokens(gw.settled_rows(2)) == [(None, 700, 9, 100), (None, 80, 0, 0)]


def test_an_eval_run_too_large_to_parse_is_fetched_and_charged_once(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """An eval run over 1 MiB (its inline items echoed in `data_source`) is relayed as it arrives, its
    `per_model_usage` unread: it went uncharged. It is fetched whole and charged once, as read small."""
    done = {"id": "evalrun_1", "object": "eval.run", "eval_id": "eval_1", "status": "completed",
            "data_source": {"type": "completions", "model": "gpt-4o-mini", "source": {
                "type": "file_content", "content": [{"item": {"q": "long " * 250_000}}]}},
            "per_model_usage": [{"model_name": "gpt-4o-mini", "prompt_tokens": 120, "completion_tokens": 40,
                                 "cached_tokens": 20}]}
    # read, fetched, read again (charged: not fetched)
    with scripted_gateway(gateway_factory, [done] * 3, "eval_1",
                          redis_url=redis_url, passthrough="/v1/evals/*") as (gw, upstream):
        with gw.client() as alice:
            for _ in range(2):
                read = alice.get("/v1/evals/eval_1/runs/evalrun_1")
                assert read.status_code == 200 and len(read.content) > 1024 * 1024
        assert len(upstream.received) == 3
    rows = gw.settled_rows(3)
    assert _tokens(rows) == [(None, 0, 0, 0), ("gpt-4o-mini", 120, 40, 20), (None, 0, 0, 0)]
    assert rows[1]["request_id"] == charge_id(rows[1]["external_id"], "evalrun_1", "gpt-4o-mini")


def _cost(prompt: int, completion: int) -> float:
    """What the catalogue charges gpt-4o-mini ($0.15 / $0.60 a million, as the eval run's test says)."""
    return (prompt * 0.15 + completion * 0.60) / 1e6


def test_a_runs_charge_is_of_the_model_it_ran_and_priced_read_through_messages_or_itself(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """A run names its model: its charge — by a read of its thread's messages, or of the run itself —
    is recorded of that model, at the catalogue's prices. It was recorded of no model and no cost:
    operators' reports by model and their cost totals left every Assistants run out."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=THREADS)
    client = gw.openai()
    thread, run = thread_with_run(client)
    other, again = thread_with_run(client)
    client.beta.threads.messages.list(thread.id)
    assert client.beta.threads.runs.retrieve(again.id, thread_id=other.id).model == "gpt-4o-mini"
    rows = [r for r in gw.settled_rows(8) if r["input_tokens"]]
    assert [(r["model"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("gpt-4o-mini", *RUN_ROW)] * 2
    assert [r["request_id"] for r in rows] == [charge_id(rows[0]["external_id"], i) for i in (run.id, again.id)]
    assert [r["cost_usd"] for r in rows] == [pytest.approx(_cost(*RUN_ROW))] * 2


def test_object_charges_record_the_model_the_object_names_priced_only_for_a_catalogue_model(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A stored response read (a catalogue model: priced), a run read through its steps naming a dated
    snapshot (no catalogue model: recorded, no cost), a run whose model holds a NUL (recorded
    storable), a fine-tuning job (its base model: trained tokens bill at training rates the
    catalogue does not hold, no cost), a run naming no model (none, as before)."""
    response = {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4o-mini", "output": [],
                "usage": {"input_tokens": 300, "output_tokens": 50, "total_tokens": 350}}
    steps = {"object": "list", "data": [], "has_more": False}
    run = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "completed",
           "model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 90, "completion_tokens": 30}}
    nul = {**run, "id": "run_2", "model": "gpt\x00x", "usage": {"prompt_tokens": 7, "completion_tokens": 1}}
    unnamed = {**run, "id": "run_3", "model": "x" * 201, "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    job = {"id": "ftjob_1", "object": "fine_tuning.job", "model": "gpt-4o-mini", "status": "succeeded",
           "trained_tokens": 48_000}
    answers = (response, steps, run, nul, unnamed, job)
    with scripted_gateway(gateway_factory, answers, "resp_1", "thread_1", "ftjob_1", redis_url=redis_url,
                          passthrough="/v1/responses/*,/v1/threads/*,/v1/fine_tuning/*") as (gw, _):
        with gw.client() as alice:
            for path in ("/v1/responses/resp_1", "/v1/threads/thread_1/runs/run_1/steps",
                         "/v1/threads/thread_1/runs/run_2", "/v1/threads/thread_1/runs/run_3",
                         "/v1/fine_tuning/jobs/ftjob_1"):
                assert alice.get(path).status_code == 200
    rows = gw.settled_rows(5)
    assert [(r["model"], r["input_tokens"], r["cost_usd"]) for r in rows] == [
        ("gpt-4o-mini", 300, pytest.approx(_cost(300, 50))), ("gpt-4o-mini-2024-07-18", 90, None),
        ("gpt\ufffdx", 7, None), (None, 5, None), ("gpt-4o-mini", 48_000, None)]
    owner = rows[0]["external_id"]  # (keyed by the object alone, as before: exactly once across a crash)
    assert [r["request_id"] for r in rows] == [
        charge_id(owner, i) for i in ("resp_1", "run_1", "run_2", "run_3", "ftjob_1")]
