"""A large body is counted off the event loop, after a cheap check that the plan has room at all."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sentinel.domain.identity import Identity
from sentinel.domain.plans import Plan, parse_plan_spec
from sentinel.domain.policies import QuotaFailureMode
from sentinel.errors import RateLimited
from sentinel.observability.metrics import Metrics
from sentinel.quota.limiter import QuotaLimiter
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.quota.meter import OFF_LOOP_BYTES, QuotaMeter
from sentinel.quota.tokens import TokenCounter
from sentinel.store import MemoryStore

ALICE = Identity(external_id="alice", user_id="u1")


class ThreadRecordingCounter(TokenCounter):
    """A real counter that remembers which threads counted chat requests."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def count_chat(self, messages: Any, model: str, tools: Any = None, *, user: str | None = None) -> int:
        self.threads.append(threading.current_thread())
        return super().count_chat(messages, model, tools, user=user)


class FixedPlan:
    name = "fixed"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    async def plan_for(self, identity: Identity) -> Plan:
        return self.plan


def meter(counter: TokenCounter, spec: str) -> QuotaMeter:
    return QuotaMeter(
        plans=FixedPlan(parse_plan_spec(spec)), limiter=QuotaLimiter(MemoryStore()), local_limiter=LocalLimiter(),
        failure_mode=QuotaFailureMode.closed, counter=counter, outbox=None,  # type: ignore[arg-type]
        metrics=Metrics(), default_max_output=16,
    )


def chat(size: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x " * (size // 2)}]}


async def test_small_bodies_are_counted_inline_and_large_ones_in_a_worker_thread() -> None:
    counter = ThreadRecordingCounter()
    m = meter(counter, "requests=100/1m")
    await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(100), request_id="r1", size=100)
    await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(OFF_LOOP_BYTES),
                  request_id="r2", size=OFF_LOOP_BYTES)
    loop_thread = threading.current_thread()
    assert counter.threads[0] is loop_thread
    assert counter.threads[1] is not loop_thread


async def test_an_exhausted_user_is_refused_before_a_large_body_is_counted() -> None:
    counter = ThreadRecordingCounter()
    m = meter(counter, "requests=1/1m")
    await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(10), request_id="r1", size=10)
    counted = len(counter.threads)
    with pytest.raises(RateLimited):
        await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(OFF_LOOP_BYTES),
                      request_id="r2", size=OFF_LOOP_BYTES)
    assert len(counter.threads) == counted  # refused without counting the large body
