"""Reading the runs a thread's messages name from an answer too large to parse (`RunIdScanner`)."""

from __future__ import annotations

import orjson

from sentinel.services.run_usage import MAX_FETCHED_RUNS, RunIdScanner, named_runs


def _messages(*run_ids: str | None, text: str = "hi") -> bytes:
    return orjson.dumps({"object": "list", "data": [
        {"id": f"msg_{i}", "object": "thread.message", "thread_id": "thread_1", "run_id": run_id,
         "content": [{"type": "text", "text": {"value": text, "annotations": []}}]}
        for i, run_id in enumerate(run_ids)], "has_more": False})


def test_the_scanner_reads_the_runs_a_parse_reads_however_the_answer_is_cut() -> None:
    answer = _messages("run_a", None, "run_b", "run_a", text='he wrote "run_id": "run_text" and {"run_id":"run_x"}')
    expected = named_runs(orjson.loads(answer))
    assert expected == ["run_a", "run_b"]
    for cut in range(1, len(answer)):
        scanner = RunIdScanner()
        scanner.feed(answer[:cut])
        scanner.feed(answer[cut:])
        assert scanner.named == expected, cut


def test_the_scanner_reads_one_byte_at_a_time_and_stops_at_the_most_fetched() -> None:
    runs = [f"run_{i}" for i in range(MAX_FETCHED_RUNS + 5)]
    answer = _messages(*runs)
    scanner = RunIdScanner()
    for byte in range(len(answer)):
        scanner.feed(answer[byte : byte + 1])
    assert scanner.named == named_runs(orjson.loads(answer)) == runs[:MAX_FETCHED_RUNS]
