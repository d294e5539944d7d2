"""The exception tree's own behaviour (each surface's error shapes are tested over HTTP in tests/api)."""

from __future__ import annotations

import orjson

from sentinel.errors import InvalidRequest


def test_a_message_quoting_a_lone_surrogate_is_shown_escaped() -> None:
    """A message may quote client text read by Python's json, which takes a lone surrogate: no JSON
    answer or log line can hold one (orjson refused it: the error answer itself was a 500)."""
    error = InvalidRequest("Unknown model 'gpt-\ud800'")
    assert error.message == "Unknown model 'gpt-\\ud800'"
    assert orjson.loads(orjson.dumps({"message": error.message}))["message"] == error.message
    assert InvalidRequest("Unknown model 'gpt-é'").message == "Unknown model 'gpt-é'"  # text stays as it is
