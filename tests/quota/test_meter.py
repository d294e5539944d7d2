"""QuotaMeter: admit reserves against the plan, settle reconciles and writes one usage record,
release gives everything back, and the three failure modes when the shared store is down.

Real limiters over an in-memory store (that can fail like a lost Redis), a plan source and an
outbox the test controls, a token counter on its byte estimate (deterministic, no encodings).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from sentinel.backoff import Backoff
from sentinel.domain.catalogue import Prices
from sentinel.domain.identity import Identity
from sentinel.domain.plans import Plan, parse_plan_spec
from sentinel.domain.policies import QuotaFailureMode
from sentinel.domain.usage import Usage, UsageRecord, charge_id
from sentinel.errors import (
    GovernanceUnavailable,
    RateLimited,
    ServiceUnavailable,
    StoreRefused,
    StoreUnavailable,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from sentinel.observability.metrics import Metrics
from sentinel.providers.errors import REQUEST_TOO_LARGE
from sentinel.quota.estimate import estimate_input
from sentinel.quota.limiter import HOLD_WITHIN, QuotaLimiter
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.quota.meter import Admission, ModelUsage, ObjectCharge, QuotaMeter, priced
from sentinel.quota.tokens import EncodingUnavailable, TokenCounter
from sentinel.quota.unsettled import Unsettled
from tests.support.clock import FakeClock
from tests.support.lost_replies import LostReply
from tests.support.metrics import counted
from tests.support.stores import FlakyStore
from tests.support.waiting import until

ALICE = Identity("alice", "u1", email="alice@example.com")
PLAN = "requests=2/1m,input_tokens=1000/1m,output_tokens=500/1m"
MODEL = "gpt-4o-mini"


def payload(text: str = "how many tokens is this", max_tokens: int | None = 50) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def no_encodings(name: str) -> Any:
    raise EncodingUnavailable(name)


class FakePlans:
    name = "fake"

    def __init__(self, spec: str = PLAN) -> None:
        self.plan: Plan = parse_plan_spec(spec, "test")
        self.down = False

    async def plan_for(self, identity: Identity) -> Plan:
        if self.down:
            raise GovernanceUnavailable("plans unavailable")
        return self.plan


@dataclass
class RecordingOutbox:
    records: list[UsageRecord] = field(default_factory=list)

    async def put(self, record: UsageRecord) -> None:
        self.records.append(record)


class Setup:
    def __init__(self, mode: QuotaFailureMode = QuotaFailureMode.closed, spec: str = PLAN) -> None:
        self.clock = FakeClock(1_800_000_000.0)
        self.store = FlakyStore(self.clock)
        self.plans = FakePlans(spec)
        self.outbox = RecordingOutbox()
        self.metrics = Metrics()
        self.metrics.known_models.add(MODEL)  # as wiring does for the catalogue's models
        self.counter = TokenCounter(loader=no_encodings)
        self.limiter = QuotaLimiter(self.store, clock=self.clock)
        self.local = LocalLimiter(clock=self.clock)
        self.meter = QuotaMeter(
            plans=self.plans, limiter=self.limiter, local_limiter=self.local, failure_mode=mode,
            counter=self.counter, outbox=self.outbox, metrics=self.metrics,  # type: ignore[arg-type]
            default_max_output=300, clock=self.clock,
        )
        self._ids = 0

    async def admit(self, body: dict[str, Any] | None = None, endpoint: str = "chat") -> Admission:
        self._ids += 1
        return await self.meter.admit(
            ALICE, endpoint=endpoint, model=MODEL, payload=payload() if body is None else body,
            request_id=f"req-{self._ids}",
        )

    async def used(self, limiter: QuotaLimiter | None = None) -> dict[str, int]:
        """What the plan's counters hold now (requests, input, output)."""
        decision = await (limiter or self.limiter).peek(ALICE.external_id, self.plans.plan)
        return {state.limit.metric: state.used for state in decision.states}


async def test_admit_reserves_the_estimate_against_every_limit() -> None:
    s = Setup()
    admission = await s.admit()
    expected_input = estimate_input(s.counter, "chat", MODEL, payload())
    assert (admission.estimate_input, admission.max_output) == (expected_input, 50)
    assert await s.used() == {"requests": 1, "input_tokens": expected_input, "output_tokens": 50}
    assert admission.headers["X-RateLimit-Limit"] == "2" and admission.headers["X-RateLimit-Remaining"] == "1"
    assert admission.reservation is not None and admission.limiter is s.limiter
    assert counted(s.metrics, "sentinel_quota_decisions_total", result="allowed") == 1


async def test_without_max_tokens_the_default_output_is_reserved() -> None:
    s = Setup()
    admission = await s.admit(payload(max_tokens=None))
    assert admission.max_output == 300 and (await s.used())["output_tokens"] == 300


async def test_a_denial_raises_429_with_details_and_reserves_nothing() -> None:
    s = Setup()
    await s.admit()
    await s.admit()
    before = await s.used()
    with pytest.raises(RateLimited) as caught:
        await s.admit()
    err = caught.value
    assert (err.status, err.code) == (429, "quota_exceeded")
    assert err.details is not None
    assert (err.details["metric"], err.details["limit"], err.details["used"]) == ("requests", 2, 2)
    assert err.details["window_seconds"] == 60 and err.details["remaining"] == 0
    assert int(err.headers["Retry-After"]) >= 1 and err.headers["X-RateLimit-Remaining"] == "0"
    assert await s.used() == before
    assert counted(s.metrics, "sentinel_quota_decisions_total", result="limited", limit="requests") == 1


async def test_settle_commits_the_actual_tokens_and_writes_one_record() -> None:
    s = Setup()
    admission = await s.admit()
    admission.prices = Prices(2.5, 10.0)
    await s.meter.settle(admission, usage=Usage(7, 11), output_text="ignored", status=200, provider="openai")
    await s.meter.settle(admission, usage=Usage(99, 99), output_text="", status=499, provider="openai")
    assert await s.used() == {"requests": 1, "input_tokens": 7, "output_tokens": 11}
    (record,) = s.outbox.records
    assert (record.request_id, record.external_id, record.email) == ("req-1", "alice", "alice@example.com")
    assert (record.model, record.provider, record.endpoint, record.status) == (MODEL, "openai", "chat", 200)
    assert (record.input_tokens, record.output_tokens, record.usage_source) == (7, 11, "measured")
    assert record.cost_usd == Prices(2.5, 10.0).cost(7, 11) and record.finished_at >= record.started_at
    assert counted(s.metrics, "sentinel_tokens_total", direction="input", model=MODEL) == 7
    assert counted(s.metrics, "sentinel_tokens_total", direction="output", model=MODEL) == 11
    assert counted(s.metrics, "sentinel_usage_requests_total", model=MODEL, source="measured") == 1
    assert counted(s.metrics, "sentinel_cost_usd_total", provider="openai", model=MODEL) == record.cost_usd


async def test_metrics_count_only_the_rows_the_plan_counted() -> None:
    """A read that records an object's charge (or a run's model part) another read claimed first
    (`counted` False) writes the row again under the same key: the ledger keeps one, and the
    tokens, requests and cost metrics counted that read's copy on top of the first's."""
    s = Setup(spec="requests=10/1m,input_tokens=100000/1m,output_tokens=100000/1m")
    s.metrics.known_models.add("grader")
    admission = await s.admit()
    admission.prices = Prices(2.5, 10.0)
    first, again = Usage(3, 4), Usage(70, 110)
    grader, seen = ModelUsage("grader", Usage(5, 6), Prices(1.0, 1.0), of="run-1"), Usage(50, 60)
    await s.meter.settle(
        admission, usage=first.plus(again), output_text="", status=200, provider="openai",
        charges=[ObjectCharge("obj-1", first), ObjectCharge("obj-2", again, counted=False)],
        models=[grader, ModelUsage("grader", seen, Prices(1.0, 1.0), of="run-2", counted=False)],
    )
    assert len(s.outbox.records) == 4  # every row is written: the ledger keeps each key once
    assert counted(s.metrics, "sentinel_tokens_total", direction="input", model=MODEL) == first.input_tokens
    assert counted(s.metrics, "sentinel_tokens_total", direction="output", model=MODEL) == first.output_tokens
    assert counted(s.metrics, "sentinel_tokens_total", direction="input", model="grader") == grader.usage.input_tokens
    assert counted(s.metrics, "sentinel_usage_requests_total", source="measured") == 2
    assert counted(s.metrics, "sentinel_cost_usd_total", provider="openai", model=MODEL) == Prices(2.5, 10.0).cost(3, 4)
    assert counted(s.metrics, "sentinel_cost_usd_total", provider="openai", model="grader") == Prices(1.0, 1.0).cost(5, 6)


async def test_an_object_charge_is_of_the_model_its_object_names_at_that_models_prices() -> None:
    """`ObjectCharge.model`: a run's charge is recorded of the run's model, priced at its prices (none:
    no cost, never the read's); a charge naming no model keeps the read's model and prices. The
    key is the object's either way (`charge_id`: exactly once across a crash)."""
    s = Setup(spec="requests=10/1m,input_tokens=100000/1m,output_tokens=100000/1m")
    admission = await s.admit()
    admission.prices = Prices(2.5, 10.0)
    ran, snapshot, unnamed = Usage(300, 40, 0, 100), Usage(20, 2), Usage(7, 1)
    await s.meter.settle(
        admission, usage=ran.plus(snapshot).plus(unnamed), output_text="", status=200, provider="openai",
        charges=[ObjectCharge("run_1", ran, model="gpt-4o", prices=Prices(5.0, 15.0, cache_read=2.5)),
                 ObjectCharge("run_2", snapshot, model="gpt-4o-2024-08-06"), ObjectCharge("resp_1", unnamed)],
    )
    assert [(r.request_id, r.model, r.cost_usd) for r in s.outbox.records] == [
        (charge_id(ALICE.external_id, "run_1"), "gpt-4o", Prices(5.0, 15.0, cache_read=2.5).cost(300, 40, 0, 100)),
        (charge_id(ALICE.external_id, "run_2"), "gpt-4o-2024-08-06", None),
        (charge_id(ALICE.external_id, "resp_1"), MODEL, Prices(2.5, 10.0).cost(7, 1)),
    ]


async def test_steps_of_another_model_are_priced_at_its_prices() -> None:
    """`within`: parts of the usage another model ran (an advisor's steps) keep the record's tokens
    but are priced at their own prices; a part of unknown prices at the request's. Not for an
    estimated record (no usage: no steps were read)."""
    s = Setup(spec="requests=10/1m,input_tokens=100000/1m,output_tokens=100000/1m")
    admission = await s.admit()
    request, advisor = Prices(1.0, 5.0, cache_read=0.1), Prices(15.0, 75.0, cache_read=1.5)
    admission.prices = request
    advice, unknown = Usage(5_000, 400, 0, 1_000), Usage(300, 20)
    await s.meter.settle(admission, usage=Usage(8_000, 600, 0, 1_500), output_text="", status=200, provider="anthropic",
                         within=[ModelUsage("claude-opus-4-8", advice, advisor), ModelUsage("x", unknown, Prices())])
    (record,) = s.outbox.records
    assert (record.input_tokens, record.output_tokens, record.cache_read_tokens) == (8_000, 600, 1_500)
    # (the unknown part at the request's prices, with the rest: 3,000 in all, 500 of them cache reads)
    own, advised = request.cost(3_000, 200, 0, 500), advisor.cost(5_000, 400, 0, 1_000)
    assert own is not None and advised is not None
    assert record.cost_usd == pytest.approx(own + advised)
    assert priced(request, Usage(10, 1), [ModelUsage("m", Usage(50, 5), advisor)]) == advisor.cost(50, 5)  # (no less)
    assert priced(Prices(), Usage(10, 1), [ModelUsage("m", advice, advisor)]) is None  # the request's unknown
    estimated = await s.admit()
    estimated.prices = request
    await s.meter.settle(estimated, usage=None, output_text="x", status=200, provider="anthropic",
                         within=[ModelUsage("claude-opus-4-8", advice, advisor)])
    assert s.outbox.records[-1].cost_usd == request.cost(estimated.estimate_input, s.outbox.records[-1].output_tokens)


async def test_settle_without_usage_counts_the_output_text() -> None:
    s = Setup()
    admission = await s.admit()
    text = "a reply the provider did not count for us"
    await s.meter.settle(admission, usage=None, output_text=text, status=200, provider="openai")
    (record,) = s.outbox.records
    assert record.usage_source == "estimated"
    assert record.input_tokens == admission.estimate_input
    assert record.output_tokens == s.counter.count_text(text, MODEL) > 0
    assert record.cost_usd is None  # no prices known
    assert (await s.used())["output_tokens"] == record.output_tokens


async def test_release_gives_everything_back_and_writes_nothing() -> None:
    s = Setup()
    admission = await s.admit()
    await s.meter.release(admission)
    await s.meter.settle(admission, usage=Usage(5, 5), output_text="", status=200, provider="openai")
    assert await s.used() == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    assert s.outbox.records == []


@pytest.mark.parametrize(("error", "status"), [
    (UpstreamTimeout("timed out", provider="openai"), 504),
    (UpstreamConnectionError("dropped", provider="openai", sent=True), 502),
])
async def test_a_call_the_provider_never_answered_counts_its_request_and_input(error: BaseException, status: int) -> None:
    """A read timeout, or a connection dropped after the request was sent: the request may have
    reached the provider, which may have generated (and billed) all of it; a long generation made to
    outlast the timeout had its output for free, and so had a dropped one (given back in full)."""
    s = Setup()
    admission = await s.admit()
    await s.meter.fail(admission, error)
    (record,) = s.outbox.records
    assert (record.status, record.provider, record.usage_source) == (status, "openai", "estimated")
    assert record.input_tokens == admission.estimate_input > 0
    assert record.output_tokens == admission.max_output > 0
    assert await s.used() == {"requests": 1, "input_tokens": admission.estimate_input,
                              "output_tokens": admission.max_output}


async def test_a_call_cancelled_at_shutdown_is_not_charged_output_even_when_it_asked_for_reasoning() -> None:
    """Reasoning asked for (`thinking`) is charged as reserved when a stream ends without the
    provider's count, and so is a call whose answer timed out; a call Sentinel cancelled itself
    (shutting down) is charged no output."""
    s = Setup()
    admissions = []
    for error in (UpstreamTimeout("timed out", provider="openai"), asyncio.CancelledError()):
        admission = await s.admit({**payload(), "thinking": {"type": "enabled", "budget_tokens": 1024}}, "messages")
        assert admission.hidden_output
        await s.meter.fail(admission, error)
        admissions.append(admission)
    assert [r.output_tokens for r in s.outbox.records] == [admissions[0].max_output, 0]


async def test_a_call_cancelled_mid_way_counts_like_one_never_answered() -> None:
    """Cancelled (the server stopping past its shutdown deadline) while the provider may already
    have it: recorded as 499 with its request and estimated input; before, the reservation stayed
    in the counters until its window ended and nothing was recorded."""
    s = Setup()
    admission = await s.admit()
    await s.meter.fail(admission, asyncio.CancelledError())
    (record,) = s.outbox.records
    assert (record.status, record.usage_source, record.output_tokens) == (499, "estimated", 0)
    assert await s.used() == {"requests": 1, "input_tokens": admission.estimate_input, "output_tokens": 0}


@pytest.mark.parametrize("error", [
    KeyError("a bug"),  # the client gets a 500 and no answer
    UpstreamTimeout("connect timed out", provider="openai", sent=False),
    UpstreamConnectionError("refused", provider="openai", sent=False),
    UpstreamStatusError("boom", upstream_status=503, provider="openai"),
    RateLimited("provider limit", provider="openai"),
])
async def test_a_call_that_failed_before_the_provider_spent_gives_everything_back(error: BaseException) -> None:
    s = Setup()
    admission = await s.admit()
    await s.meter.fail(admission, error)
    assert await s.used() == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    assert s.outbox.records == []


async def test_a_request_the_provider_refused_as_too_large_counts_one_request() -> None:
    """A 429 refusing the request itself as larger than the account's per-minute limit (its input and
    `max_tokens`, which the client names): a refusal, not a failure — one request, no tokens, recorded;
    a rate limit of the traffic (above) is given back."""
    s = Setup()
    admission = await s.admit()
    await s.meter.fail(admission, RateLimited("too large", code=REQUEST_TOO_LARGE, provider="openai"))
    (record,) = s.outbox.records
    assert (record.status, record.provider, record.input_tokens, record.output_tokens) == (429, "openai", 0, 0)
    assert await s.used() == {"requests": 1, "input_tokens": 0, "output_tokens": 0}


async def test_a_plan_source_outage_refuses_before_reserving() -> None:
    s = Setup()
    s.plans.down = True
    with pytest.raises(GovernanceUnavailable):
        await s.admit()
    s.plans.down = False
    assert await s.used() == {"requests": 0, "input_tokens": 0, "output_tokens": 0}


async def test_store_down_and_failure_mode_closed_refuses_with_503() -> None:
    s = Setup(QuotaFailureMode.closed)
    s.store.fail("run")
    with pytest.raises(ServiceUnavailable) as caught:
        await s.admit()
    assert (caught.value.status, caught.value.code) == (503, "quota_unavailable")
    assert counted(s.metrics, "sentinel_quota_store_failures_total", mode="closed") == 1


async def test_store_down_and_failure_mode_open_admits_unchecked_but_still_records() -> None:
    s = Setup(QuotaFailureMode.open)
    s.store.fail("run")
    admissions = [await s.admit() for _ in range(4)]  # past the plan's 2 requests: nothing is checked
    assert all(a.reservation is None and a.headers == {} for a in admissions)
    await s.meter.settle(admissions[0], usage=Usage(3, 4), output_text="", status=200, provider="openai")
    assert [r.input_tokens for r in s.outbox.records] == [3]
    assert counted(s.metrics, "sentinel_quota_store_failures_total", mode="open") == 4


async def test_a_store_outage_is_one_warning_a_minute_not_one_a_request(caplog: pytest.LogCaptureFixture) -> None:
    """Each admission, reconciliation and release during an outage logged a warning: at 2,000
    requests/s, thousands of identical lines a second. Now each is written once, then once a
    minute with the count of those it stands for."""
    s = Setup(QuotaFailureMode.open, spec="requests=1000/1m,input_tokens=10000000/1m,output_tokens=10000000/1m")
    admitted = [await s.admit() for _ in range(40)]  # reserved while the store answers
    s.store.fail("run")
    with caplog.at_level("WARNING", logger="sentinel.meter"):
        unchecked = [await s.admit() for _ in range(50)]
        for admission in admitted[:20]:
            await s.meter.settle(admission, usage=Usage(3, 4), output_text="", status=200, provider="openai")
        for admission in admitted[20:]:
            await s.meter.release(admission)
        s.clock.advance(60)
        await s.admit()
        await s.meter.release(unchecked[0])  # nothing reserved: nothing to give back, nothing logged
    lines = [(r.getMessage(), getattr(r, "suppressed", None)) for r in caplog.records if r.name == "sentinel.meter"]
    assert lines == [
        ("quota store unavailable; admitting without a quota check (QUOTA_FAILURE_MODE=open)", None),
        ("the store did not take a quota reconciliation; it is sent again once it answers", None),
        ("the store did not take a quota release; it is sent again once it answers", None),
        ("quota store unavailable; admitting without a quota check (QUOTA_FAILURE_MODE=open)", 49),
    ]
    assert len(s.outbox.records) == 20  # every settlement's record, written all the same
    assert counted(s.metrics, "sentinel_quota_store_failures_total", mode="open") == 51


async def test_store_down_and_failure_mode_local_enforces_the_plan_in_process() -> None:
    s = Setup(QuotaFailureMode.local)
    s.store.fail("run")
    first = await s.admit()
    await s.admit()
    with pytest.raises(RateLimited):
        await s.admit()
    assert first.limiter is s.local
    await s.meter.settle(first, usage=Usage(7, 11), output_text="", status=200, provider="openai")
    second_estimate = estimate_input(s.counter, "chat", MODEL, payload())
    assert (await s.used(s.local))["input_tokens"] == 7 + second_estimate
    s.store.recover()
    assert await s.used() == {"requests": 0, "input_tokens": 0, "output_tokens": 0}  # shared counters untouched
    assert counted(s.metrics, "sentinel_quota_store_failures_total", mode="local") == 3


async def test_what_the_local_limiter_charged_is_handed_back_once_redis_answers() -> None:
    """QUOTA_FAILURE_MODE=local: the local limiter's counts stayed in the process, and a user who
    used the plan there had it whole again on Redis. Once Redis answers, the next reservation of the
    user is checked after her settled usage was handed back; one still open when Redis came back is
    handed back once it settles (in the background, `Unsettled`), as it settled."""
    s = Setup(QuotaFailureMode.local, spec="requests=3/1m,input_tokens=1000/1m,output_tokens=500/1m")
    s.meter.unsettled = Unsettled(backoff=Backoff(base=0.0, cap=0.0))
    s.store.fail("run")
    first, second = await s.admit(), await s.admit()
    await s.meter.settle(first, usage=Usage(7, 11), output_text="", status=200, provider="openai")
    s.store.recover()
    third = await s.admit()  # the last of the plan: the first handed back, the second still open here
    assert third.limiter is s.limiter and third.headers["X-RateLimit-Remaining"] == "1"
    assert (await s.used())["input_tokens"] == 7 + third.estimate_input
    await s.meter.settle(second, usage=Usage(5, 2), output_text="", status=200, provider="openai")
    await until(lambda: len(s.meter.unsettled) == 0)
    assert await s.used() == {"requests": 3, "input_tokens": 7 + 5 + third.estimate_input, "output_tokens": 13 + 50}
    assert await s.used(s.local) == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    with pytest.raises(RateLimited):
        await s.admit()


async def test_a_settlement_the_store_cannot_reconcile_still_writes_its_record() -> None:
    s = Setup()
    admission = await s.admit()
    s.store.fail("run")
    await s.meter.settle(admission, usage=Usage(7, 11), output_text="", status=200, provider="openai")
    assert [r.request_id for r in s.outbox.records] == [admission.request_id]
    s.store.recover()
    assert (await s.used())["input_tokens"] == admission.estimate_input  # the estimate stays reserved


def test_cost_from_prices_per_million() -> None:
    assert Prices().cost(1000, 1000) is None  # no prices known
    assert Prices(0.0, 0.0).cost(1000, 1000) is None
    assert Prices(2.5, 10.0).cost(1_000_000, 500_000) == 2.5 + 5.0
    assert Prices(0.15, 0.6).cost(1, 1) == round(0.75 / 1_000_000, 8)
    # cache writes/reads cost the input price unless priced themselves
    assert Prices(1.0, 0.0, cache_read=0.1).cost(1_000_000, 0, cache_read=1_000_000) == 0.1


async def test_admit_remembers_the_callers_long_texts_for_their_next_request() -> None:
    s = Setup(spec="requests=5/1m,input_tokens=100000/1m,output_tokens=5000/1m")
    s.meter.counter = s.counter = TokenCounter()  # real encodings: the remembered counts are theirs
    body = payload("Answer as the ACME support assistant and cite the policy section. " * 10)
    first = await s.admit(body)
    second = await s.admit(body)
    assert first.estimate_input == second.estimate_input == estimate_input(TokenCounter(), "chat", MODEL, body)
    assert (s.counter.inputs.misses, s.counter.inputs.hits) == (1, 1)
    assert {user for (user, _, _) in s.counter.inputs._counts} == {ALICE.external_id}


# --- a settlement begun is carried out, whatever becomes of its caller -------------------------------
class GatedOutbox(RecordingOutbox):
    """Holds every write at `gate` (when set) until it opens; `waiting` says one is held."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.waiting = False

    async def put(self, record: UsageRecord) -> None:
        if self.gate is not None:
            self.waiting = True
            await self.gate.wait()
        await super().put(record)


class GatedStore(FlakyStore):
    """Holds every script (a reservation's commit or release) at `gate` (when set) until it opens."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.gate: asyncio.Event | None = None
        self.waiting = False

    async def run(self, script: Any, keys: Any, args: Any) -> Any:
        if self.gate is not None:
            self.waiting = True
            await self.gate.wait()
        return await super().run(script, keys, args)


def gated_setup() -> tuple[Setup, GatedOutbox, GatedStore]:
    s = Setup()
    outbox, store = GatedOutbox(), GatedStore(s.clock)
    s.outbox, s.store = outbox, store
    s.limiter = s.meter.limiter = QuotaLimiter(store, clock=s.clock)
    s.meter.outbox = outbox  # type: ignore[assignment]
    return s, outbox, store


@pytest.mark.parametrize("held_at", ["write", "commit"])
async def test_a_settlement_cancelled_at_any_wait_still_stores_its_record_and_reconciles(held_at: str) -> None:
    """Settling sets `settled` first, so `fail` after a cancellation does nothing: a caller cancelled
    while the record was written lost the record (no log), one cancelled while the reservation was
    reconciled kept the estimate counted until its window ended (reserved 8,000, used 7). The
    count, the write and the reconciliation now go on without the caller (the count: see
    test_meter_offload)."""
    s, outbox, store = gated_setup()
    admission = await s.admit(payload(max_tokens=400))
    gate = asyncio.Event()
    held: GatedOutbox | GatedStore = outbox if held_at == "write" else store
    held.gate = gate
    settling = asyncio.create_task(
        s.meter.settle(admission, usage=Usage(7, 3), output_text="", status=200, provider="openai"))
    await until(lambda: held.waiting)
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    await s.meter.fail(admission, asyncio.CancelledError())  # what a cancelled service does next: nothing
    gate.set()
    await s.meter.drain(10)
    assert [(r.request_id, r.input_tokens, r.output_tokens, r.status) for r in outbox.records] == [
        (admission.request_id, 7, 3, 200)]
    held.gate = None
    assert await s.used() == {"requests": 1, "input_tokens": 7, "output_tokens": 3}
    assert admission.recorded == Usage(7, 3)


async def test_a_release_cancelled_mid_way_still_gives_everything_back() -> None:
    s, _, store = gated_setup()
    admission = await s.admit()
    store.gate = gate = asyncio.Event()
    releasing = asyncio.create_task(s.meter.release(admission))
    await until(lambda: store.waiting)
    releasing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await releasing
    gate.set()
    await s.meter.drain(10)
    store.gate = None
    assert await s.used() == {"requests": 0, "input_tokens": 0, "output_tokens": 0}


async def test_drain_waits_for_the_settlements_under_way_and_no_longer_than_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s, outbox, _ = gated_setup()
    admission = await s.admit()
    outbox.gate = gate = asyncio.Event()
    settling = asyncio.create_task(
        s.meter.settle(admission, usage=Usage(7, 3), output_text="", status=200, provider="openai"))
    await until(lambda: outbox.waiting)
    await s.meter.drain(0)  # bounded: gives up at once, and says so
    assert outbox.records == [] and "still under way at shutdown" in caplog.text
    draining = asyncio.create_task(s.meter.drain(10))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not draining.done()
    gate.set()
    await draining
    assert [r.request_id for r in outbox.records] == [admission.request_id]
    await settling


class RefusingStore(GatedStore):
    """While `refusing`, refuses every script before running it (a full Redis: `StoreRefused`)."""

    refusing = False

    async def run(self, script: Any, keys: Any, args: Any) -> Any:
        if self.refusing:
            raise StoreRefused("Redis command failed: OOM command not allowed when used memory > 'maxmemory'")
        return await super().run(script, keys, args)


async def test_refused_settlements_sent_again_at_shutdown_keep_to_its_deadline_and_nothing_outlives_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reconciliations a full Redis refused are tried once more at shutdown — one by one, each
    bounded only by the store's timeout: 100,000 of them (Redis back just then, answering each in
    a millisecond) held shutdown for minutes past its deadline, the usage outbox's flush (the next
    closer) waiting behind them. And one refused after that (a settlement still under way past the
    deadline) started a task that outlived shutdown."""
    s, _, _ = gated_setup()
    store = RefusingStore(s.clock)
    s.store, s.limiter = store, QuotaLimiter(store, clock=s.clock)
    s.meter.limiter = s.limiter
    first, second = await s.admit(), await s.admit()
    store.refusing = True
    await s.meter.settle(first, usage=Usage(7, 3), output_text="", status=200, provider="openai")
    assert len(s.meter.unsettled) == 1
    store.refusing, store.gate = False, asyncio.Event()  # Redis back, too slow for what is left
    await asyncio.wait_for(s.meter.drain(0.05), 5)
    assert "left unsent at shutdown" in caplog.text and len(s.meter.unsettled) == 0
    store.gate, store.refusing = None, True
    await s.meter.settle(second, usage=Usage(7, 3), output_text="", status=200, provider="openai")
    assert "did not take at shutdown is left unsent" in caplog.text
    assert not [task for task in asyncio.all_tasks() if "Unsettled" in repr(task.get_coro())]


async def test_drain_waits_for_an_admission_whose_settlement_has_not_begun() -> None:
    """A request the server cancelled reaches its settlement (or release) some loop turns after the
    cancel; drain saw nothing under way and returned, and shutdown closed the outbox first. An
    admission not yet settled or released now holds drain (bounded) until it is."""
    s, outbox, _ = gated_setup()
    admission = await s.admit()
    released = await s.admit()
    await s.meter.drain(0)  # bounded as before
    draining = asyncio.create_task(s.meter.drain(10))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not draining.done()
    await s.meter.release(released)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not draining.done()
    await s.meter.settle(admission, usage=Usage(7, 3), output_text="", status=499, provider="openai")
    await asyncio.wait_for(draining, 5)
    assert [r.request_id for r in outbox.records] == [admission.request_id]
    await s.meter.settle(admission, usage=Usage(7, 3), output_text="", status=499, provider="openai")  # once
    await asyncio.wait_for(s.meter.drain(10), 5)


async def test_a_settlement_that_fails_after_its_caller_was_cancelled_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The settlement goes on without a cancelled caller; if it then failed, its exception went
    nowhere (the shield marks it retrieved): a lost record without a line in the log."""
    s, outbox, _ = gated_setup()
    admission = await s.admit()
    outbox.gate = gate = asyncio.Event()

    async def broken(record: UsageRecord) -> None:
        outbox.waiting = True
        await gate.wait()
        raise RuntimeError("the outbox broke")

    outbox.put = broken  # type: ignore[method-assign]
    settling = asyncio.create_task(
        s.meter.settle(admission, usage=Usage(7, 3), output_text="", status=200, provider="openai"))
    await until(lambda: outbox.waiting)
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    gate.set()
    await s.meter.drain(10)
    failed = [r for r in caplog.records if "failed after its request was cancelled" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert "the outbox broke" in caplog.text


async def test_a_settlement_that_fails_under_its_waiting_caller_is_raised_to_it_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s, outbox, _ = gated_setup()
    admission = await s.admit()

    async def broken(record: UsageRecord) -> None:
        raise RuntimeError("the outbox broke")

    outbox.put = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="the outbox broke"):
        await s.meter.settle(admission, usage=Usage(7, 3), output_text="", status=200, provider="openai")
    await s.meter.drain(10)
    assert "failed after its request was cancelled" not in caplog.text


async def test_settle_without_usage_adds_what_the_provider_gave_the_model_to_read() -> None:
    """An Anthropic stream with server tools reports only its first step's input in message_start;
    the results it streamed (a fetched page) are read by the steps after it. Cut before the final
    usage, the record was charged message_start's figure alone: `read_input` is added to it (the
    text counted, in a worker thread when long, plus the tokens counted already), and to the
    estimate when nothing was reported; a measured usage ignores it."""
    s = Setup(spec="requests=10/1m,input_tokens=10000000/1m,output_tokens=500/1m")
    page = "fetched page words " * 5000  # 95,000 characters: counted off the loop
    page_tokens = s.counter.count_text(page, MODEL)
    reported = Usage(50, 0, 0, 20)
    cut, unreported, measured = await s.admit(), await s.admit(), await s.admit()
    await s.meter.settle(cut, usage=None, output_text="", status=200, provider="anthropic",
                         reported_input=reported, read_input=(page, 7))
    await s.meter.settle(unreported, usage=None, output_text="", status=499, provider="anthropic",
                         read_input=(page, 0))
    await s.meter.settle(measured, usage=Usage(60, 3), output_text="", status=200, provider="anthropic",
                         reported_input=reported, read_input=(page, 7))
    records = {r.request_id: r for r in s.outbox.records}
    assert records[cut.request_id].input_tokens == 50 + page_tokens + 7 > 50
    assert records[cut.request_id].cache_read_tokens == 20
    assert records[unreported.request_id].input_tokens == unreported.estimate_input + page_tokens
    assert records[measured.request_id].input_tokens == 60
    assert (await s.used())["input_tokens"] == 50 + page_tokens + 7 + unreported.estimate_input + page_tokens + 60


async def test_a_request_is_counted_as_the_model_the_provider_is_sent_and_recorded_as_named() -> None:
    """A catalogue name of the company's own for gpt-4o-mini: the estimate follows gpt-4o-mini's
    rules (an image of unknown size: 2833 + 8 x 5667), the record keeps the name the client used."""
    s = Setup(spec="requests=5/1m,input_tokens=100000/1m,output_tokens=500/1m")
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
    body = {"model": "house-vision", "messages": [image], "max_tokens": 5}
    as_named = await s.meter.admit(ALICE, endpoint="chat", model="house-vision", payload=body, request_id="r1")
    await s.meter.release(as_named)
    sent = await s.meter.admit(ALICE, endpoint="chat", model="house-vision", payload=body, request_id="r2",
                               counted_as="gpt-4o-mini")
    assert sent.estimate_input - as_named.estimate_input == (2833 + 8 * 5667) - (85 + 8 * 170)
    await s.meter.settle(sent, usage=None, output_text="fine", status=200, provider="openai")
    (record,) = s.outbox.records
    assert record.model == "house-vision" and record.input_tokens == sent.estimate_input


def test_a_model_usage_record_is_keyed_beside_its_request_within_the_ledgers_key() -> None:
    """An eval run's per-model records are keyed `<request id>#<n>`; a request id already at the
    ledger's 128 characters (a client's X-Request-Id with Sentinel's nonce) gets fresh keys instead of
    ones the ledger's VARCHAR(128) refuses."""
    from sentinel.domain.usage import MAX_REQUEST_ID
    from sentinel.quota.meter import part_id

    assert part_id("0190abc", 2) == "0190abc#2"
    long_id = "r" * 115 + "~" + "0" * 12
    keys = {part_id(long_id, n) for n in (1, 2)}
    assert len(keys) == 2 and all(len(k) <= MAX_REQUEST_ID and "#" not in k for k in keys)


async def test_a_settlement_whose_outcome_is_unknown_is_sent_again_and_counts_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reconciliation whose reply was lost (a timeout, a connection lost after sending) was not
    sent again — run twice, its refund would have been given twice — so the request kept all it
    reserved counted until the window ended. It is sent again now (it runs once, whatever the
    first send did), and so is a give-back."""
    s = Setup()
    s.meter.unsettled = Unsettled(backoff=Backoff(base=0.0, cap=0.0))
    served, unserved = await s.admit(), await s.admit()
    lost = LostReply(s.store, monkeypatch, "EVALSHA", f"sentinel:quota:{{{ALICE.external_id}}}:")  # ran, reply lost
    await s.meter.settle(served, usage=Usage(7, 3), output_text="", status=200, provider="openai")
    assert lost.lost == 1
    s.store.fail("run")  # then the store is away: the give-back waits too
    await s.meter.release(unserved)
    assert len(s.meter.unsettled) == 1
    s.store.recover()
    await until(lambda: len(s.meter.unsettled) == 0)
    assert await s.used() == {"requests": 1, "input_tokens": 7, "output_tokens": 3}  # each applied once
    assert [r.request_id for r in s.outbox.records] == [served.request_id]


async def test_a_settlement_that_keeps_failing_is_dropped_in_the_end(caplog: pytest.LogCaptureFixture) -> None:
    """One the store keeps failing (not refusing: an error every time) cannot hold those behind it forever."""
    unsettled = Unsettled(backoff=Backoff(base=0.0, cap=0.0), max_unknown=3)
    sent: list[str] = []

    async def failing() -> None:
        sent.append("failing")
        raise StoreUnavailable("Redis command failed: ERR")

    async def fine() -> None:
        sent.append("fine")

    unsettled.add(failing)
    unsettled.add(fine)
    await until(lambda: len(unsettled) == 0)
    assert sent == ["failing"] * 3 + ["fine"] and "kept failing and is dropped" in caplog.text


async def test_a_settlement_failing_with_a_bug_is_dropped_and_logged_not_holding_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One that fails with an error that is no store's (a bug) ended the background task with it,
    kept at the head of the queue: every settlement added after it met the same error first, and
    none was sent until shutdown. It is logged with its traceback and dropped; the others are sent."""
    unsettled = Unsettled(backoff=Backoff(base=0.0, cap=0.0))
    sent: list[str] = []

    async def broken() -> None:
        sent.append("broken")
        raise ValueError("a reservation must be settled by the limiter that made it")

    async def fine() -> None:
        sent.append("fine")

    unsettled.add(broken)
    unsettled.add(fine)
    await until(lambda: len(unsettled) == 0)
    assert sent == ["broken", "fine"]
    assert "could not be sent (a bug)" in caplog.text and "ValueError" in caplog.text


async def test_a_settlement_dropped_for_room_while_it_is_sent_takes_no_other_with_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full queue drops its oldest settlement to take a new one — maybe the one being sent. When
    that send ended, the settlement first in line then (the new one, never sent) was taken out in its
    place: lost without a word, its reservation counted until its window ended."""
    unsettled = Unsettled(limit=1, backoff=Backoff(base=0.0, cap=0.0))
    sent: list[str] = []
    answered = asyncio.Event()

    async def slow() -> None:
        sent.append("slow")
        await answered.wait()

    async def fine() -> None:
        sent.append("fine")

    unsettled.add(slow)
    await until(lambda: sent == ["slow"])
    unsettled.add(fine)  # full: `slow`, the oldest, is dropped while its send is under way
    assert "the oldest is dropped" in caplog.text and len(unsettled) == 1
    answered.set()
    await until(lambda: len(unsettled) == 0)
    assert sent == ["slow", "fine"]


async def test_a_read_showing_several_batches_settles_each_held_reservation_once() -> None:
    """A list read that shows the usage of several batches first settles the reservation each one
    holds to its own usage; a usage no reservation holds (an object that holds none) is charged on
    the read's own; a second settlement of the same batches finds nothing held and charges it all."""
    s = Setup(spec="requests=100/1m,input_tokens=100000/1m,output_tokens=100000/1m")
    for name in ("batch_a", "batch_b"):
        made = await s.meter.admit_batch(ALICE, endpoint="/v1/batches", request_id=name, requests=10,
                                         input_tokens=5000, output_tokens=2000)
        await s.meter.hold(made, name, None)
        await s.meter.settle(made, usage=None, output_text="", status=200, provider="openai")
    assert await s.used() == {"requests": 20, "input_tokens": 10000, "output_tokens": 4000}
    read = await s.meter.admit_call(ALICE, endpoint="/v1/threads/*", request_id="list")
    shown = [("batch_a", Usage(300, 40)), ("batch_b", Usage(0, 0)), ("run_c", Usage(5, 6))]
    await s.meter.settle(read, usage=Usage(305, 46), output_text="", status=200, provider="openai", settles=shown)
    # batch_a: its usage; batch_b ran nothing: one request, no tokens; run_c on the read's own
    assert await s.used() == {"requests": 10 + 1 + 1, "input_tokens": 305, "output_tokens": 46}
    again = await s.meter.admit_call(ALICE, endpoint="/v1/threads/*", request_id="again")
    await s.meter.settle(again, usage=Usage(305, 46), output_text="", status=200, provider="openai", settles=shown)
    assert await s.used() == {"requests": 13, "input_tokens": 610, "output_tokens": 92}


@pytest.mark.parametrize("mode", list(QuotaFailureMode))
async def test_a_reservation_whose_reply_was_lost_is_given_back_and_the_failure_mode_applies(
    monkeypatch: pytest.MonkeyPatch, mode: QuotaFailureMode
) -> None:
    """The reservation script ran, its reply lost (a timeout, a connection cut after sending): the
    request got what the failure mode says — 503 `quota_unavailable`, admitted unchecked, or
    reserved by the local limiter — while its shared reservation stayed counted with nobody to
    settle it (all its estimate until the window ended; with `local` or `open`, on top of what the
    request served was charged). It is given back now, once: the request is charged as its failure
    mode charges one the store never saw."""
    s = Setup(mode)
    s.meter.unsettled = Unsettled(backoff=Backoff(base=0.0, cap=0.0))
    lost = LostReply(s.store, monkeypatch, "EVALSHA", f"sentinel:quota:{{{ALICE.external_id}}}:")  # ran, reply lost
    if mode is QuotaFailureMode.closed:
        with pytest.raises(ServiceUnavailable) as caught:
            await s.admit()
        assert (caught.value.status, caught.value.code) == (503, "quota_unavailable")
    else:
        admission = await s.admit()
        assert admission.limiter is (s.local if mode is QuotaFailureMode.local else None)
        await s.meter.settle(admission, usage=Usage(7, 3), output_text="", status=200, provider="openai")
        assert [(r.input_tokens, r.output_tokens) for r in s.outbox.records] == [(7, 3)]
    assert lost.lost == 1
    await until(lambda: len(s.meter.unsettled) == 0)
    if mode is QuotaFailureMode.local:
        # Given back, and what the local limiter charged handed back in its place: once.
        assert await s.used() == {"requests": 1, "input_tokens": 7, "output_tokens": 3}
        assert await s.used(s.local) == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    else:
        assert await s.used() == {"requests": 0, "input_tokens": 0, "output_tokens": 0}  # given back
    assert await s.store.scan("sentinel:quota:*:reserved:*") == []


async def _a_held_batch_and_its_read() -> tuple[Setup, Admission]:
    """ALICE's batch `batch_a` holding its reservation (10 requests, 5,000 in, 2,000 out), settlements
    the store did not take sent again at once, and the admission of a read of it."""
    s = Setup(spec="requests=100/1m,input_tokens=100000/1m,output_tokens=100000/1m")
    s.meter.unsettled = Unsettled(backoff=Backoff(base=0.0, cap=0.0))
    made = await s.meter.admit_batch(ALICE, endpoint="/v1/batches", request_id="batch_a", requests=10,
                                     input_tokens=5000, output_tokens=2000)
    await s.meter.hold(made, "batch_a", None)
    await s.meter.settle(made, usage=None, output_text="", status=200, provider="openai")
    return s, await s.meter.admit_call(ALICE, endpoint="/v1/batches/*", request_id="read")


async def _held_batch(spec: str, window: int) -> tuple[Setup, str]:
    """ALICE's batch `batch_a` (10 requests, 5,000 in, 2,000 out on `spec`) holding its reservation,
    made at the start of a window of `window` seconds; the key it is held under."""
    s = Setup(spec=spec)
    s.clock.now = (s.clock.now // window + 1) * window
    made = await s.meter.admit_batch(ALICE, endpoint="/v1/batches", request_id="batch_a", requests=10,
                                     input_tokens=5000, output_tokens=2000)
    await s.meter.hold(made, "batch_a", None)  # (a batch's owner is kept without expiry: `COLLECTIONS`)
    await s.meter.settle(made, usage=None, output_text="", status=200, provider="openai")
    return s, f"sentinel:quota:{{{ALICE.external_id}}}:held:batch_a"


async def _read_batch_a(s: Setup) -> None:
    read = await s.meter.admit_call(ALICE, endpoint="/v1/batches/*", request_id="read")
    await s.meter.settle(read, usage=Usage(300, 40), output_text="", status=200, provider="openai",
                         settles=[("batch_a", Usage(300, 40))])


async def test_a_batch_never_read_lets_its_held_reservation_go_after_a_week() -> None:
    """A batch's held reservation was kept as long as the batch's owner — for ever: every batch never
    read once done left its record in Redis (under `noeviction`, memory without bound). It goes
    after HOLD_WITHIN (its counters gone long before: 1-minute windows); a read after that charges
    the usage on its own reservation, once."""
    s, key = await _held_batch("requests=100/1m,input_tokens=100000/1m,output_tokens=100000/1m", 60)
    s.clock.advance(HOLD_WITHIN - 1)
    assert await s.store.get(key) is not None  # (a batch ends within a day: it is read well before)
    s.clock.advance(2)
    assert await s.store.get(key) is None
    assert await s.used() == {"requests": 0, "input_tokens": 0, "output_tokens": 0}  # its windows ended
    await _read_batch_a(s)
    assert await s.used() == {"requests": 1, "input_tokens": 300, "output_tokens": 40}  # charged, once


async def test_a_held_reservation_stays_while_its_longest_window_counts_it() -> None:
    """A held reservation counted in a window longer than HOLD_WITHIN stays held until that window's
    counter expires: gone before, a read would charge the usage on top of the estimate still counted."""
    window = 4 * 604800
    s, key = await _held_batch("requests=100/1m,input_tokens=100000/4w,output_tokens=100000/4w", window)
    s.clock.advance(window - 1)  # the last second of the 4-week window, long past HOLD_WITHIN
    assert window - 1 > HOLD_WITHIN and await s.store.get(key) is not None
    await _read_batch_a(s)
    assert await s.used() == {"requests": 1, "input_tokens": 300, "output_tokens": 40}  # the estimate settled


async def test_a_batch_settlement_whose_reply_was_lost_charges_the_usage_once() -> None:
    """The read showing a batch's usage settles the reservation the batch holds; when that script's
    reply was lost (it ran), the usage was charged on the read's own reservation as well — counted
    twice until the windows ended. Now the settlement is sent again (it runs once) and the read's
    own reservation charges nothing of it."""
    s, read = await _a_held_batch_and_its_read()
    with pytest.MonkeyPatch.context() as patch:
        lost = LostReply(s.store, patch, "EVALSHA", f"sentinel:quota:{{{ALICE.external_id}}}:held:")
        await s.meter.settle(read, usage=Usage(300, 40), output_text="", status=200, provider="openai",
                             settles=[("batch_a", Usage(300, 40))])
    assert lost.lost == 1
    await until(lambda: len(s.meter.unsettled) == 0)
    assert await s.used() == {"requests": 10 + 1, "input_tokens": 300, "output_tokens": 40}  # once


async def test_a_batch_settlement_the_store_refused_is_sent_again_and_charges_the_usage_once() -> None:
    """Refused (it did not run): sent again once the store takes it — the batch's estimate replaced
    by its usage, the read's own reservation charged nothing of it (it was charged there, and the
    estimate stayed counted on top)."""
    s, read = await _a_held_batch_and_its_read()
    real_run = s.store.run
    refusing = [True]

    async def run(script: Any, keys: Any, args: Any) -> Any:
        if script.name == "sentinel_quota_settle_held" and refusing and refusing.pop():
            raise StoreRefused("Redis command failed: OOM")
        return await real_run(script, keys, args)

    s.store.run = run  # type: ignore[method-assign]
    await s.meter.settle(read, usage=Usage(300, 40), output_text="", status=200, provider="openai",
                         settles=[("batch_a", Usage(300, 40))])
    await until(lambda: len(s.meter.unsettled) == 0)
    assert await s.used() == {"requests": 10 + 1, "input_tokens": 300, "output_tokens": 40}


@pytest.mark.parametrize(("spec", "asked"), [(PLAN, 1), ("requests=10/60s", 1), (None, 0)])
async def test_a_call_on_a_held_batch_asks_the_store_about_it_only_when_the_plan_has_a_limit(
    spec: str | None, asked: int,
) -> None:
    """A read or cancel of a held batch is checked beside the batch's own reservation (`holding`),
    which needs one store read; a plan without limits has nothing to check it against."""
    s = Setup(spec=spec or PLAN)
    if spec is None:
        s.plans.plan = Plan("unlimited", ())
    names: list[str] = []
    beside_held = s.limiter.beside_held

    async def recording(subject: str, name: str, plan: Plan) -> Plan | None:
        names.append(name)
        return await beside_held(subject, name, plan)

    s.limiter.beside_held = recording  # type: ignore[method-assign]
    admission = await s.meter.admit_call(ALICE, endpoint="batches", request_id="req-read", holding="batch_abc")
    assert names == ["batch_abc"] * asked
    assert admission.reservation is not None or spec is None


async def test_a_batch_made_while_redis_was_away_is_handed_back_as_reserved() -> None:
    """A batch made on the local limiter holds no reservation a read can settle: it stayed open in
    that process, and was never handed back. It counts as reserved, handed back once Redis answers."""
    s = Setup(QuotaFailureMode.local, spec="requests=100/1m,input_tokens=100000/1m,output_tokens=100000/1m")
    s.meter.unsettled = Unsettled(backoff=Backoff(base=0.0, cap=0.0))
    s.store.fail("run")
    made = await s.meter.admit_batch(ALICE, endpoint="/v1/batches", request_id="batch_a", requests=10,
                                     input_tokens=5_000, output_tokens=2_000)
    await s.meter.hold(made, "batch_a", None)
    s.store.recover()
    await until(lambda: len(s.meter.unsettled) == 0)
    assert await s.used() == {"requests": 10, "input_tokens": 5_000, "output_tokens": 2_000}
    assert await s.used(s.local) == {"requests": 0, "input_tokens": 0, "output_tokens": 0}
