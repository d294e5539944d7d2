"""A large body is counted off the event loop, after a cheap check that the plan has room at all; so
is a long answer the provider gave no usage for, and its record is stored even if the caller is
cancelled while it is counted."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sentinel.domain.identity import Identity
from sentinel.domain.plans import Plan, parse_plan_spec
from sentinel.domain.policies import QuotaFailureMode
from sentinel.errors import RateLimited
from sentinel.observability.metrics import Metrics
from sentinel.offload import OFF_LOOP_SIZE
from sentinel.quota.limiter import QuotaLimiter
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.quota.media import NO_FILES
from sentinel.quota.meter import QuotaMeter
from sentinel.quota.tokens import TokenCounter
from sentinel.store import MemoryStore
from tests.quota.test_meter import RecordingOutbox
from tests.support.waiting import eventually

ALICE = Identity(external_id="alice", user_id="u1")


class ThreadRecordingCounter(TokenCounter):
    """A real counter that remembers which threads counted chat requests and texts; `gate`, when
    set, holds every text count until it opens."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []
        self.text_threads: list[threading.Thread] = []
        self.gate: threading.Event | None = None

    def count_chat(
        self, messages: Any, model: str, tools: Any = None, *, user: str | None = None, images: Any = None,
        files: Any = NO_FILES,
    ) -> int:
        self.threads.append(threading.current_thread())
        return super().count_chat(messages, model, tools, user=user, images=images, files=files)

    def count_text(self, text: str, model: str, *, user: str | None = None) -> int:
        self.text_threads.append(threading.current_thread())
        if self.gate is not None:
            self.gate.wait(timeout=10)
        return super().count_text(text, model, user=user)


class FixedPlan:
    name = "fixed"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    async def plan_for(self, identity: Identity) -> Plan:
        return self.plan


def meter(counter: TokenCounter, spec: str, outbox: RecordingOutbox | None = None) -> QuotaMeter:
    return QuotaMeter(
        plans=FixedPlan(parse_plan_spec(spec)), limiter=QuotaLimiter(MemoryStore()), local_limiter=LocalLimiter(),
        failure_mode=QuotaFailureMode.closed, counter=counter, outbox=outbox,  # type: ignore[arg-type]
        metrics=Metrics(), default_max_output=16,
    )


def chat(size: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x " * (size // 2)}]}


async def test_small_bodies_are_counted_inline_and_large_ones_in_a_worker_thread() -> None:
    counter = ThreadRecordingCounter()
    m = meter(counter, "requests=100/1m")
    await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(100), request_id="r1", size=100)
    await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(OFF_LOOP_SIZE),
                  request_id="r2", size=OFF_LOOP_SIZE)
    loop_thread = threading.current_thread()
    assert counter.threads[0] is loop_thread
    assert counter.threads[1] is not loop_thread


async def test_an_exhausted_user_is_refused_before_a_large_body_is_counted() -> None:
    counter = ThreadRecordingCounter()
    m = meter(counter, "requests=1/1m")
    await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(10), request_id="r1", size=10)
    counted = len(counter.threads)
    with pytest.raises(RateLimited):
        await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(OFF_LOOP_SIZE),
                      request_id="r2", size=OFF_LOOP_SIZE)
    assert len(counter.threads) == counted  # refused without counting the large body


async def test_a_long_answer_without_usage_is_counted_in_a_worker_thread_and_a_short_one_inline() -> None:
    """960,000 spaces cost ~0.45 s to count: a stream that ends without the provider's usage must not
    hold the event loop for it."""
    counter, outbox = ThreadRecordingCounter(), RecordingOutbox()
    m = meter(counter, "requests=100/1m", outbox)
    for i, text in enumerate([" " * 200_000, "a short answer", " " * OFF_LOOP_SIZE]):
        admission = await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(10), request_id=f"r{i}")
        await m.settle(admission, usage=None, output_text=text, status=200, provider="openai")
    loop_thread = threading.current_thread()
    assert [thread is loop_thread for thread in counter.text_threads] == [False, True, False]
    assert [record.output_tokens for record in outbox.records] == [
        counter.count_text(text, "gpt-4o-mini") for text in (" " * 200_000, "a short answer", " " * OFF_LOOP_SIZE)]


async def test_a_caller_cancelled_while_its_answer_is_counted_still_leaves_its_record() -> None:
    """A served answer is recorded once settling starts (the server stopping past its deadline
    cancels what still runs): counted inline, its write starts before any wait; counted in a
    thread, the count and the write go on without the caller."""
    counter, outbox = ThreadRecordingCounter(), RecordingOutbox()
    m = meter(counter, "requests=100/1m", outbox)
    admission = await m.admit(ALICE, endpoint="chat", model="gpt-4o-mini", payload=chat(10), request_id="r1")
    counter.gate = threading.Event()

    async def counting() -> bool:
        return bool(counter.text_threads)

    async def recorded() -> bool:
        return bool(outbox.records)

    settling = asyncio.create_task(m.settle(admission, usage=None, output_text=" " * 200_000, status=200,
                                            provider="openai"))
    assert await eventually(counting, within=10, every=0.01)
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    assert outbox.records == []  # still counting
    counter.gate.set()
    assert await eventually(recorded, within=10, every=0.01)
    (record,) = outbox.records
    assert record.request_id == "r1" and record.output_tokens > 0
