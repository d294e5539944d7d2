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

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from sentinel.domain.usage import charge_id
from sentinel.mock.app import create_mock_app
from tests.api.conftest import Gateway
from tests.support.attack import SpyUpstream, ledger_rows, spying
from tests.support.waiting import wait_for

ADMIN_KEY = "admin-key-for-charge-once"
PASSTHROUGH = "/v1/files,/v1/files/*,/v1/batches,/v1/batches/*,/v1/evals,/v1/evals/*"
PLAN = "requests=1000/1d,input_tokens=10000000/1d,output_tokens=1000000/1d"


class Killed(Exception):
    """The process died here (an injected fault)."""


@pytest.fixture
def spy() -> Iterator[SpyUpstream]:
    with spying(create_mock_app()) as (_, recorder):
        yield recorder


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


def _used(gw: Gateway) -> dict[str, int]:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
        quota = admin.get("/admin/api/users/alice/quota")
    assert quota.status_code == 200, quota.text
    return {limit["metric"]: limit["used"] for limit in quota.json()["limits"]}


def _charged_rows(gw: Gateway, rows: int) -> list[dict[str, Any]]:
    """Alice's ledger rows with tokens, once it holds `rows` rows."""
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == rows)
    return [r for r in ledger_rows(gw.settings.database_url, "alice") if r["input_tokens"] or r["output_tokens"]]


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
    counted = _used(dying)
    done = reader.openai().batches.retrieve(batch_id)
    assert done.usage is not None
    assert _used(reader) == {**counted, "requests": counted["requests"] + 1}  # the read, no tokens more
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
    made = client.evals.create(
        name="e", data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[{"type": "score_model", "name": "s", "model": "gpt-4o",
                           "input": [{"role": "user", "content": "{{sample.output_text}}"}]}],
    )
    run = client.evals.runs.create(made.id, data_source={
        "type": "completions", "model": "gpt-4o-mini",
        "source": {"type": "file_content", "content": [{"item": {"q": "a"}}]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
    })
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
