"""Reading the runs a thread's messages name from an answer too large to parse (`RunIdScanner`), and
the model an object's charge is of (`RunCharges.charge`), and a cancelled run read again until it
ended (`until_ended`)."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from sentinel.domain.catalogue import Prices
from sentinel.domain.usage import Usage
from sentinel.governance.ownership import Ownership
from sentinel.offload import OFF_LOOP_SIZE
from sentinel.quota.meter import ObjectCharge
from sentinel.quota.tokens import TokenCounter
from sentinel.services.run_usage import MAX_NAMED_RUNS, RunCharges, RunIdScanner, named_runs, until_ended
from sentinel.store import MemoryStore


def _messages(*run_ids: str | None, text: str = "hi", metadata: dict[str, str] | None = None) -> bytes:
    return orjson.dumps({"object": "list", "data": [
        {"id": f"msg_{i}", "object": "thread.message", "thread_id": "thread_1", "metadata": metadata or {},
         "content": [{"type": "text", "text": {"value": text, "annotations": []}}], "run_id": run_id}
        for i, run_id in enumerate(run_ids)], "has_more": False})


def _scanned(*chunks: bytes) -> list[str]:
    scanner = RunIdScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.named


def test_the_scanner_reads_the_runs_a_parse_reads_however_the_answer_is_cut() -> None:
    answer = _messages("run_a", None, "run_b", "run_a", text='he wrote "run_id": "run_text" and {"run_id":"run_x"}\\')
    expected = named_runs(orjson.loads(answer))
    assert expected == ["run_a", "run_b"]
    for cut in range(1, len(answer)):
        assert _scanned(answer[:cut], answer[cut:]) == expected, cut


def test_the_scanner_ignores_a_run_id_in_a_messages_metadata_however_the_answer_is_cut() -> None:
    """A message's `metadata` is the caller's: a `run_id` key there (listed before the runs' own
    messages) took the place of the real runs (fetched: not found, never charged)."""
    answer = _messages(None, None, "run_real", metadata={"run_id": "run_fake", "note": '"run_id": "run_in_value"'})
    assert b'"run_id":"run_fake"' in answer
    expected = named_runs(orjson.loads(answer))
    assert expected == ["run_real"]
    for cut in range(1, len(answer)):
        assert _scanned(answer[:cut], answer[cut:]) == expected, cut
    for first in range(1, len(answer), 7):  # cut three ways: every stretch of the metadata split
        for second in range(first + 1, min(first + 40, len(answer))):
            assert _scanned(answer[:first], answer[first:second], answer[second:]) == expected, (first, second)


def test_the_scanner_reads_one_message_and_no_deeper_object_of_it() -> None:
    message: dict[str, Any] = {"id": "msg_1", "object": "thread.message", "metadata": {"run_id": "run_fake"},
                               "attachments": [{"file_id": "file_1", "tools": [{"run_id": "run_deep"}]}],
                               "run_id": "run_real"}
    answer = orjson.dumps(message)
    assert named_runs(orjson.loads(answer)) == ["run_real"]
    assert _scanned(*(answer[i : i + 1] for i in range(len(answer)))) == ["run_real"]


def test_the_scanner_reads_one_byte_at_a_time_and_stops_at_the_most_named() -> None:
    runs = [f"run_{i}" for i in range(MAX_NAMED_RUNS + 5)]
    answer = _messages(*runs)
    assert _scanned(*(answer[i : i + 1] for i in range(len(answer)))) == named_runs(orjson.loads(answer)) \
        == runs[:MAX_NAMED_RUNS]


PRICES = Prices(0.15, 0.60)


@pytest.mark.parametrize(("shown", "model", "prices"), [
    ({"object": "thread.run", "model": "gpt-4o-mini"}, "gpt-4o-mini", PRICES),
    ({"object": "response", "model": "gpt-4o-2024-08-06"}, "gpt-4o-2024-08-06", None),  # (not the catalogue's)
    ({"object": "fine_tuning.job", "model": "gpt-4o-mini"}, "gpt-4o-mini", None),  # (training rates)
    ({"object": "batch", "model": "x" * 201}, None, None),
    ({"object": "batch", "model": ["gpt-4o-mini"]}, None, None),
    ({"object": "batch"}, None, None),
    (None, None, None),
])
def test_a_charge_is_of_the_model_its_object_names(shown: Any, model: str | None, prices: Prices | None) -> None:
    charges = RunCharges(Ownership(MemoryStore()), lambda name: PRICES if name == "gpt-4o-mini" else None)
    assert charges.charge("obj_1", Usage(3, 4), "pending", shown) == ObjectCharge(
        "obj_1", Usage(3, 4), False, model, prices)


def _reads(*answers: Any) -> tuple[list[str], Any]:
    """A run fetch answering `answers` in turn (the last one again after them), and its reads."""
    reads: list[str] = []

    async def fetch(run_id: str) -> Any:
        reads.append(run_id)
        return answers[min(len(reads), len(answers)) - 1]

    return reads, fetch


async def test_a_cancelled_run_is_read_again_until_it_ended_waiting_between_reads() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    ended = {"id": "run_1", "status": "cancelled", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    reads, fetch = _reads({"id": "run_1", "status": "cancelling"}, {"id": "run_1", "status": "cancelling"}, ended)
    assert await until_ended(fetch, (1.0, 2.0, 4.0, 8.0), sleep)("run_1") == ended
    assert reads == ["run_1"] * 3 and slept == [1.0, 2.0]


async def test_a_run_that_never_ends_is_read_a_bounded_number_of_times() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    still = {"id": "run_1", "status": "cancelling"}
    reads, fetch = _reads(still)
    assert await until_ended(fetch, (1.0, 2.0), sleep)("run_1") == still
    assert len(reads) == 3 and slept == [1.0, 2.0]
    for failed in (None, {"error": "gone"}):  # a failed read, or no run: not tried again
        reads, fetch = _reads(failed)
        assert await until_ended(fetch, (1.0, 2.0), sleep)("run_1") == failed
        assert len(reads) == 1


@pytest.mark.parametrize(("size", "in_a_thread"), [(10, False), (OFF_LOOP_SIZE, True)])
async def test_a_shown_steps_tool_calls_are_counted_off_the_event_loop_when_long(size: int, in_a_thread: bool) -> None:
    """A run waiting in `requires_action` is charged its tool calls' names and arguments, which the
    model wrote (up to an answer's MiB): they were encoded on the event loop, every other request
    waiting meanwhile. Counts of that size go to the counts' pool, as every count of a body does."""
    counter = TokenCounter()
    threads: list[str] = []
    count_text = counter.count_text

    def recording(text: str, model: str | None = None) -> int:
        threads.append(threading.current_thread().name)
        return count_text(text, model)

    counter.count_text = recording  # type: ignore[method-assign]
    charges = RunCharges(Ownership(MemoryStore()), lambda name: PRICES, counter)
    arguments = orjson.dumps({"q": "x" * size}).decode()
    run = {"object": "thread.run", "id": "run_abc", "model": "gpt-4o-mini", "status": "requires_action",
           "required_action": {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}]}}}
    (charge,) = await charges.shown_steps(run, ttl=None)
    assert charge.usage.output_tokens == count_text("lookup" + arguments, "gpt-4o-mini") > 0
    assert len(threads) == 1
    assert (threads[0] != threading.current_thread().name) is in_a_thread
