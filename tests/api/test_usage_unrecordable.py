"""While no durable outbox takes usage records (the outbox table and the ledger both down, on the
embedded default), the records of served requests are held in this process's memory — up to
SENTINEL_MAX_UNSTORED_RECORDS. At the limit new metered requests are refused before admission (503
`usage_unrecordable` in each surface's shape, Retry-After), changing nothing; the records held are
kept, and stored once the outage ends, after which requests are admitted again. Before, memory grew
without a bound through a long outage until the process was killed, losing every record it held.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.ledger import SqlLedgerSink
from sentinel.quota.batch import Batch
from sentinel.quota.outbox import SqlOutbox
from sentinel.routing.sessions import SessionStore
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows, openai_error, outbox_records
from tests.support.metrics import metric
from tests.support.waiting import wait_for

MINI = "gpt-4o-mini"
HAIKU = "claude-3-5-haiku-20241022"
ASK = [{"role": "user", "content": "hello"}]
UNSTORED = "sentinel_usage_unstored_records"


class Outage:
    """The database behind the outbox table and the built-in ledger, down while `down` is set: both
    refuse every write as an unreachable database does (the deliverer's sink, the ledger, too)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        put, adopt, deliver = SqlOutbox.put, SqlOutbox.adopt, SqlLedgerSink.deliver

        async def outbox_put(outbox: SqlOutbox, record: UsageRecord) -> None:
            if self.down:
                raise GovernanceUnavailable("usage outbox unavailable: database unreachable")
            await put(outbox, record)

        async def outbox_adopt(outbox: SqlOutbox, batch: Batch, retry_in: float) -> None:
            if self.down:
                raise GovernanceUnavailable("usage outbox unavailable: database unreachable")
            await adopt(outbox, batch, retry_in)

        async def ledger_deliver(sink: SqlLedgerSink, records: list[UsageRecord], key: str) -> list[str]:
            if self.down:
                raise GovernanceUnavailable("usage ledger unavailable: database unreachable")
            return await deliver(sink, records, key)

        monkeypatch.setattr(SqlOutbox, "put", outbox_put)
        monkeypatch.setattr(SqlOutbox, "adopt", outbox_adopt)
        monkeypatch.setattr(SqlLedgerSink, "deliver", ledger_deliver)


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> Outage:
    return Outage(monkeypatch)


def stored_ids(gw: Gateway) -> list[str]:
    """Request ids of the usage records stored durably (the ledger and the outbox table)."""
    url = gw.settings.database_url
    return sorted([r["request_id"] for r in ledger_rows(url)] + [r["request_id"] for r in outbox_records(url)])


def refused_shape(path: str, status: int, body: Any) -> None:
    if path == "/v1/messages":  # Anthropic's shape: Sentinel's 503s are its 529 overloaded_error
        assert status == 529 and body["type"] == "error", body
        assert body["error"]["type"] == "overloaded_error" and "Usage cannot be recorded" in body["error"]["message"]
    else:  # Sentinel's (OpenAI's) shape on /v1 and /native
        assert status == 503, body
        error = openai_error(body)
        assert (error["type"], error["code"]) == ("service_unavailable", "usage_unrecordable"), body


def test_at_the_limit_new_requests_are_refused_and_the_held_records_are_kept_then_stored(
    gateway_factory: Callable[..., Gateway], outage: Outage, tmp_path: Path,
) -> None:
    gw = gateway_factory(max_unstored_records=2, usage_flush_interval_seconds=0.05, usage_lease_seconds=0.3,
                         providers_file=tiers_file(tmp_path, "openai"))
    outage.down = True
    with gw.client() as http:
        served = [http.post("/v1/chat/completions", json={"model": MINI, "messages": ASK}) for _ in range(2)]
        assert [r.status_code for r in served] == [200, 200], [r.text for r in served]
        assert served[1].headers["x-ratelimit-remaining"] == "98"  # DEFAULT_PLAN: 100 a minute
        assert metric(gw.url, UNSTORED) == 2  # held in memory: the limit

        conversation = "conv-refused"
        attempts = {
            "/v1/chat/completions": {"model": MINI, "messages": ASK},
            "/v1/messages": {"model": HAIKU, "max_tokens": 20, "messages": ASK},
            "/native/v1/chat/completions": {"conversation_id": conversation, "messages": ASK},
        }
        refused = []
        for path, body in attempts.items():
            answer = http.post(path, json=body)
            refused_shape(path, answer.status_code, answer.json())
            assert answer.headers["retry-after"] == "5"
            refused.append(answer.headers["x-request-id"])
        models = http.get("/v1/models")  # a metered call with no tokens: refused as well
        refused_shape("/v1/models", models.status_code, models.json())

        # Nothing changed: no session, no record, the held records still there (none dropped).
        assert gw.read_stored(SessionStore.key("alice", conversation)) is None
        assert metric(gw.url, UNSTORED) == 2 and stored_ids(gw) == []

        outage.down = False  # the database is back: the deliverer stores what memory held
        assert wait_for(lambda: metric(gw.url, UNSTORED) == 0)
        after = http.post("/v1/chat/completions", json={"model": MINI, "messages": ASK})
        assert after.status_code == 200, after.text
        # One request counted since the two served: the refused ones reserved nothing.
        assert after.headers["x-ratelimit-remaining"] == "97"
        native = http.post("/native/v1/chat/completions", json=attempts["/native/v1/chat/completions"])
        assert native.status_code == 200, native.text
        assert gw.read_stored(SessionStore.key("alice", conversation)) is not None  # (where a session goes)
    held = sorted(r.headers["x-request-id"] for r in served)
    assert wait_for(lambda: set(held) <= set(stored_ids(gw)))
    assert wait_for(lambda: {after.headers["x-request-id"], native.headers["x-request-id"]} <= set(stored_ids(gw)))
    assert not set(refused) & set(stored_ids(gw))
