"""An object's usage a read shows (a batch's, a run's) is charged exactly once, even when the read
that charges it dies half-way.

Before, the object was marked charged in the store before the record of its usage was stored: a
process killed in between (`kill -9`, the OOM killer) left the mark and no record, and every later
read found it charged — the usage was lost for good. Now a read claims the charge, records it under a
key derived from the object (`charge_id`) and only then confirms the mark: a read finding a claim
never confirmed records it again, and the ledger keeps one row per key.

The death is an injected fault at the step after the claim (the record's outbox `put`) or after the
record (the confirmation); the next read goes through another gateway on the same Redis and
database (a fresh process: the one that died is gone), or — the in-process store, which dies with
its process — the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from sentinel.domain.usage import charge_id
from sentinel.governance.ownership import FORGOTTEN_CHILD_TTL
from sentinel.mock.openai_runs import RUN_USAGE
from tests.api.conftest import Gateway, scripted_gateway
from tests.support.attack import SpyUpstream
from tests.support.runs import EVAL_SOURCE, eval_and_run, thread_with_run

ADMIN_KEY = "admin-key-for-charge-once"
PASSTHROUGH = "/v1/files,/v1/files/*,/v1/batches,/v1/batches/*,/v1/evals,/v1/evals/*"
PLAN = "requests=1000/1d,input_tokens=10000000/1d,output_tokens=1000000/1d"


class Killed(Exception):
    """The process died here (an injected fault)."""


def _gateways(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> tuple[Gateway, Gateway]:
    """The gateway whose read dies, and the one that reads next (on a shared Redis, a second one)."""
    first = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=PASSTHROUGH,
                            default_plan=PLAN, admin_key=ADMIN_KEY)
    if backend_url is None:
        return first, first
    second = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough=PASSTHROUGH,
                             default_plan=PLAN, admin_key=ADMIN_KEY, database_url=first.settings.database_url)
    return first, second


def _dies_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Make `owner.name` raise Killed the first time it is called, as the process dying there;
    the calls it died in are counted in the list returned."""
    real = getattr(owner, name)
    died: list[int] = []

    async def dying(*args: Any, **kwargs: Any) -> Any:
        if not died:
            died.append(1)
            raise Killed(name)
        return await real(*args, **kwargs)

    monkeypatch.setattr(owner, name, dying)
    return died


def _batch(client: openai.OpenAI) -> str:
    line = {"custom_id": "0", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}}
    file_id = client.files.create(file=("in.jsonl", orjson.dumps(line) + b"\n"), purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id


def _charged_rows(gw: Gateway, rows: int) -> list[dict[str, Any]]:
    """Alice's ledger rows with tokens, once it holds `rows` rows."""
    return [r for r in gw.settled_rows(rows) if r["input_tokens"] or r["output_tokens"]]


def test_a_read_that_dies_before_its_record_leaves_the_batch_to_the_next_read(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first read showing a batch's usage dies after claiming its charge, before its record is
    stored: the next read records it — one row, of the batch's tokens, keyed by the batch. (It was
    marked charged first: the next read found it so and the batch's usage was never charged.)"""
    dying, reader = _gateways(gateway_factory, spy, backend_url)
    batch_id = _batch(dying.openai())
    died = _dies_once(monkeypatch, dying.runtime.relay.meter.outbox, "put")
    with pytest.raises(openai.InternalServerError):
        dying.openai().batches.retrieve(batch_id)
    assert died == [1]
    done = reader.openai().batches.retrieve(batch_id)
    assert done.status == "completed" and done.usage is not None
    assert reader.openai().batches.retrieve(batch_id).usage == done.usage  # charged now: nothing more
    # the upload, the batch made, the read that records the batch's usage, the read after it
    charged = _charged_rows(reader, 4)
    assert [(r["input_tokens"], r["output_tokens"]) for r in charged] == [
        (done.usage.input_tokens, done.usage.output_tokens)]
    assert charged[0]["request_id"] == charge_id(charged[0]["external_id"], batch_id)


def test_a_read_that_dies_after_its_record_is_not_charged_again(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first read showing a batch's usage stores its record and dies before marking it charged:
    the next read records it again under the same key — the ledger keeps one row — and counts it
    against the plan no more (the first read's reconciliation did)."""
    dying, reader = _gateways(gateway_factory, spy, backend_url)
    batch_id = _batch(dying.openai())
    died = _dies_once(monkeypatch, dying.runtime.relay.ownership, "confirm_charged")
    with pytest.raises(openai.InternalServerError):
        dying.openai().batches.retrieve(batch_id)
    assert died == [1]
    counted = dying.quota_used()
    done = reader.openai().batches.retrieve(batch_id)
    assert done.usage is not None
    assert reader.quota_used() == {**counted, "requests": counted["requests"] + 1}  # the read, no tokens more
    reader.openai().batches.retrieve(batch_id)
    # the upload, the batch made, the batch's usage (twice recorded, one row), the read after it
    charged = _charged_rows(reader, 4)
    assert [(r["input_tokens"], r["output_tokens"]) for r in charged] == [
        (done.usage.input_tokens, done.usage.output_tokens)]
    assert counted["input_tokens"] == done.usage.input_tokens  # (the first read's settlement counted it)


def test_an_eval_run_whose_read_dies_before_its_records_is_charged_per_model_by_the_next(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An eval run's usage per model (its records apart from the read's): the read charging it dies
    before they are stored; the next read stores them, each once, keyed by the run and its model."""
    dying, reader = _gateways(gateway_factory, spy, backend_url)
    client = dying.openai()
    made, run = eval_and_run(client)
    died = _dies_once(monkeypatch, dying.runtime.relay.meter.outbox, "put")
    with pytest.raises(openai.InternalServerError):
        client.evals.runs.retrieve(run.id, eval_id=made.id)
    assert died == [1]
    for _ in range(2):
        done = reader.openai().evals.runs.retrieve(run.id, eval_id=made.id)
    assert done.status == "completed"
    shown = {u.run_model_name: (u.prompt_tokens, u.completion_tokens) for u in done.per_model_usage}
    # the eval and the run made, the read and its two models, the read after it
    charged = _charged_rows(reader, 6)
    assert {r["model"]: (r["input_tokens"], r["output_tokens"]) for r in charged} == shown
    assert len(charged) == 2
    assert {r["request_id"] for r in charged} == {charge_id(r["external_id"], run.id, r["model"]) for r in charged}


# Reads that charge an object their answer does not show whole: a run read through its steps, a
# fine-tuning job's trained tokens, an eval run read through its output items. Each claims, records
# under the object's key and confirms, as a batch's read does: killed at either step, the next read
# leaves exactly one row of the object's usage, counted against the plan once.
_STEP = {"id": "step_1", "object": "thread.run.step", "thread_id": "thread_1", "run_id": "run_1",
         "status": "completed", "type": "tool_calls", "usage": {"prompt_tokens": 5, "completion_tokens": 1},
         "step_details": {"type": "tool_calls", "tool_calls": []}}
_RUN = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "completed",
        "usage": {"prompt_tokens": 90, "completion_tokens": 30, "total_tokens": 120}}
_JOB = {"id": "ftjob_1", "object": "fine_tuning.job", "model": "gpt-4o-mini-2024-07-18", "created_at": 1,
        "status": "succeeded", "trained_tokens": 48_000, "training_file": "file-1", "result_files": [],
        "fine_tuned_model": "ft:gpt-4o-mini:org::abc", "finished_at": 2, "hyperparameters": {},
        "organization_id": "org", "seed": 1, "validation_file": None, "error": None}
_ITEMS = {"object": "list", "has_more": False, "data": [
    {"id": "outputitem_1", "object": "eval.run.output_item", "eval_id": "eval_1", "run_id": "evalrun_1",
     "status": "pass", "sample": {"output": [{"role": "assistant", "content": "yes"}]}}]}
_EVAL_RUN = {"id": "evalrun_1", "object": "eval.run", "eval_id": "eval_1", "status": "completed", "per_model_usage": [
    {"model_name": "gpt-4o-mini", "prompt_tokens": 120, "completion_tokens": 40, "cached_tokens": 20}]}
# the read's path, what owns it, the answers of a read that fetches (the read's, the object's), the
# answers of a read after the charge, the object charged (and its model's part), its tokens
_READS = {
    "run steps": ("/v1/threads/thread_1/runs/run_1/steps", "thread_1", [{"object": "list", "data": [_STEP]}, _RUN],
                  [{"object": "list", "data": [_STEP]}], ("run_1", ""), (90, 30)),
    "fine-tuning job": ("/v1/fine_tuning/jobs/ftjob_1", "ftjob_1", [_JOB], [_JOB], ("ftjob_1", ""), (48_000, 0)),
    "eval output items": ("/v1/evals/eval_1/runs/evalrun_1/output_items", "eval_1", [_ITEMS, _EVAL_RUN], [_ITEMS],
                          ("evalrun_1", "gpt-4o-mini"), (120, 40)),
}


@pytest.mark.parametrize("read", list(_READS))
@pytest.mark.parametrize("dies_in", ["put", "confirm_charged"])
def test_a_read_charging_an_object_it_fetched_or_read_dies_and_the_next_charges_it_once(
    gateway_factory: Callable[..., Gateway], redis_url: str, monkeypatch: pytest.MonkeyPatch,
    read: str, dies_in: str,
) -> None:
    """Killed before its record is stored (`put`), the read leaves the object to the next read,
    which records it; killed after (`confirm_charged`), the next read records it again under the
    same key — one row — and counts it against the plan no more. (Marked charged first, the object
    killed before its record was never charged.)"""
    path, owned, fetching, after, (object_id, part), tokens = _READS[read]
    with scripted_gateway(gateway_factory, (*fetching, *fetching, *after), owned, redis_url=redis_url,
                          default_plan=PLAN, admin_key=ADMIN_KEY,
                          passthrough="/v1/threads/*,/v1/fine_tuning/*,/v1/evals/*") as (gw, upstream):
        died = _dies_once(monkeypatch, gw.runtime.relay.meter.outbox if dies_in == "put"
                          else gw.runtime.relay.ownership, dies_in)
        with gw.client() as alice:
            assert alice.get(path).status_code == 500
            assert died == [1]
            counted = gw.quota_used()
            assert alice.get(path).status_code == 200  # the next read: records the object's usage
            assert alice.get(path).status_code == 200  # charged now: nothing fetched, nothing more
        assert len(upstream.received) == 2 * len(fetching) + len(after)
    # the object's row (the read's own when it is the object's usage: a run's, a job's) and the last
    # read's; an eval run's read has its own row besides its model's, the dying one too when its died after
    charged = _charged_rows(gw, 2 + ((2 if dies_in == "confirm_charged" else 1) if part else 0))
    assert [(r["input_tokens"], r["output_tokens"]) for r in charged] == [tokens]
    assert charged[0]["request_id"] == charge_id(charged[0]["external_id"], object_id, part)
    if dies_in == "confirm_charged":  # (the dying read's settlement counted it; the next counts none)
        assert gw.quota_used() == {**counted, "requests": counted["requests"] + 2}
        assert counted["input_tokens"] == tokens[0]


def test_a_read_of_long_messages_that_dies_before_its_record_leaves_their_run_to_the_next_read(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread's messages over 1 MiB are relayed as they arrive, the runs they name read from their
    bytes: the read charging such a run claims it too — killed before its record, the next read
    records it, one row keyed by the run. (Marked charged first, the run's usage was lost.)"""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url,
                         passthrough="/v1/assistants,/v1/threads,/v1/threads/*")
    client = gw.openai()
    thread, run = thread_with_run(client, {"role": "user", "content": "long " * 250_000})
    died = _dies_once(monkeypatch, gw.runtime.relay.meter.outbox, "put")
    with gw.client() as alice, pytest.raises(httpx.HTTPError):  # (cut short: its last chunk waits for the record)
        alice.get(f"/v1/threads/{thread.id}/messages").raise_for_status()
    assert died == [1]
    for _ in range(2):  # the next read charges the run; the one after finds it charged
        assert [m.run_id for m in client.beta.threads.messages.list(thread.id).data] == [run.id, None]
    # the assistant, the thread and the run made, the run's row, the read after it
    charged = _charged_rows(gw, 5)
    assert [(r["input_tokens"], r["output_tokens"]) for r in charged] == [
        (RUN_USAGE["prompt_tokens"], RUN_USAGE["completion_tokens"])]
    assert charged[0]["request_id"] == charge_id(charged[0]["external_id"], run.id)


@pytest.mark.parametrize(("path", "owned", "object_id"), [
    ("/v1/threads/thread_1/runs/run_1", "thread_1", "run_1"),
    ("/v1/threads/thread_1/runs/run_1/steps", "thread_1", "run_1"),
    ("/v1/fine_tuning/jobs/ftjob_1", "ftjob_1", "ftjob_1"),
])
def test_a_read_whose_object_is_deleted_before_its_claim_charges_it_and_leaves_no_mark(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, monkeypatch: pytest.MonkeyPatch,
    path: str, owned: str, object_id: str,
) -> None:
    """A read passed the ownership check; a DELETE of the object (the run's thread, the job) forgot
    its owner and its marks before the read claimed the charge (injected: the DELETE's `forget`
    lands there). The read still charges what it showed, once, keyed by the object; but its claim
    made `sentinel:charged:<id>` again — confirmed, and kept for ever (these objects' TTL is None)
    for an object that no longer exists."""
    answers = {"thread_1": [_RUN] if path.endswith("run_1") else [{"object": "list", "data": [_STEP]}, _RUN],
               "ftjob_1": [_JOB]}[owned]
    with scripted_gateway(gateway_factory, answers, owned, redis_url=backend_url,
                          passthrough="/v1/threads/*,/v1/fine_tuning/*") as (gw, _):
        ownership = gw.runtime.relay.ownership
        real = ownership.claim_charge

        async def deleted_meanwhile(*args: Any) -> Any:
            await ownership.forget(owned)
            return await real(*args)

        monkeypatch.setattr(ownership, "claim_charge", deleted_meanwhile)
        with gw.client() as alice:
            assert alice.get(path).status_code == 200
        (row,) = _charged_rows(gw, 1)
        assert row["request_id"] == charge_id(row["external_id"], object_id)
        assert gw.read_stored("sentinel:charged:" + object_id) is None
        assert gw.read_stored("sentinel:owner:" + owned) is None


def test_deleting_an_eval_run_ends_its_mark_a_day_later(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
) -> None:
    """`DELETE /v1/evals/{id}/runs/{run}` deletes the run: its charge mark, kept without a TTL as its
    eval's owner is, stayed in the store until the eval itself was deleted. Now it ends a day later
    (`FORGOTTEN_CHILD_TTL`: a read in flight still finds it charged meanwhile)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, default_plan=PLAN,
                         passthrough="/v1/evals,/v1/evals/*")
    client = gw.openai()
    made, kept = eval_and_run(client)
    deleted = client.evals.runs.create(made.id, data_source=EVAL_SOURCE)
    for run in (kept, deleted):
        assert client.evals.runs.retrieve(run.id, eval_id=made.id).status == "completed"
    assert client.evals.runs.delete(deleted.id, eval_id=made.id).deleted
    left = gw.stored_ttl("sentinel:charged:" + deleted.id)
    assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
    assert gw.stored_ttl("sentinel:charged:" + kept.id) == -1.0  # (the eval's other run: kept as its eval)


def test_deleting_a_thread_or_an_eval_ends_its_runs_marks_and_charges_none_again(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None,
) -> None:
    """A run's charge mark is kept without a TTL, as its thread's (its eval's) owner is; deleting
    the thread left it in the store for good — one key per run, however many threads a user made
    and deleted. Now the DELETE ends it a day later (`FORGOTTEN_CHILD_TTL`; a read in flight still
    finds it charged meanwhile), and the runs were charged once."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, default_plan=PLAN,
                         passthrough="/v1/assistants,/v1/threads,/v1/threads/*,/v1/evals,/v1/evals/*")
    client = gw.openai()
    thread, run = thread_with_run(client)
    made, eval_run = eval_and_run(client)
    for _ in range(2):  # the first read charges each run, the next nothing
        assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "completed"
        assert client.evals.runs.retrieve(eval_run.id, eval_id=made.id).status == "completed"
    marks = ["sentinel:charged:" + run.id, "sentinel:charged:" + eval_run.id]
    assert [gw.stored_ttl(mark) for mark in marks] == [-1.0, -1.0]
    assert client.beta.threads.delete(thread.id).deleted
    assert client.evals.delete(made.id).deleted
    for mark in marks:
        left = gw.stored_ttl(mark)
        assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
    assert gw.stored_ttl("{sentinel:owner:" + thread.id + "}:charged-children") is None
    assert gw.stored_ttl("{sentinel:owner:" + made.id + "}:charged-children") is None
    # the assistant, the thread, the run, the eval and its run made; four reads (the first of the eval
    # run with a row per model besides its own); two deletes: the run and the eval run charged once
    charged = _charged_rows(gw, 13)
    assert sorted(r["request_id"] for r in charged) == sorted(
        [charge_id(charged[0]["external_id"], run.id)]
        + [charge_id(charged[0]["external_id"], eval_run.id, model) for model in ("gpt-4o-mini", "gpt-4o")])
