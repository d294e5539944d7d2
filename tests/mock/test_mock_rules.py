"""The mock's pure rules (text shaping, tool arguments, knob parsing) and in-process ASGI use."""

from __future__ import annotations

import httpx
import pytest

from sentinel.mock import Faults, create_mock_app, start_mock_in_thread
from sentinel.mock.faults import WireError, directive_knobs, header_knobs, query_knobs, strip_directives
from sentinel.mock.text import example_arguments, prompt_tokens, shape_text
from tests.mock.mockwire import OPENAI_AUTH


def test_shape_text_words_stops_and_limits() -> None:
    full = shape_text("Echo: a b c", None)
    assert (full.pieces, full.reason, full.tokens) == (["Echo:", " a", " b", " c"], "stop", 4)
    assert "".join(full.pieces) == full.text
    limited = shape_text("Echo: a b c", 2)
    assert (limited.text, limited.reason) == ("Echo: a", "length")
    stopped = shape_text("Echo: a XX b", 10, ["b", "XX"])
    assert (stopped.text, stopped.reason, stopped.stop_sequence) == ("Echo: a ", "stop_sequence", "XX")
    # the word budget runs out before the stop sequence is reached
    assert shape_text("Echo: a b c STOP", 2, ["STOP"]).reason == "length"
    newlines = shape_text("Echo: line1\nline2", None)
    assert "".join(newlines.pieces) == "Echo: line1\nline2"


def test_example_arguments_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "e": {"enum": ["x", "y"]},
            "c": {"const": 7},
            "d": {"type": "string", "default": "dflt"},
            "n": {"type": ["null", "number"]},
            "i": {"type": "integer", "minimum": 5},
            "b": {"type": "boolean"},
            "a": {"type": "array", "items": {"type": "integer"}},
            "o": {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]},
            "skipped": {"type": "string"},
        },
        "required": ["s", "e", "c", "d", "n", "i", "b", "a", "o"],
    }
    assert example_arguments(schema) == {
        "s": "mock-s", "e": "x", "c": 7, "d": "dflt", "n": 1.5, "i": 5, "b": True, "a": [1],
        "o": {"k": "mock-k"},
    }  # fmt: skip
    assert example_arguments(None) == {} and example_arguments({"type": "object"}) == {}


def test_prompt_tokens_rule() -> None:
    assert prompt_tokens([]) == 3
    assert prompt_tokens(["abcd", "abcde"]) == 3 + (3 + 1) + (3 + 2)


def test_fault_sources_and_precedence() -> None:
    headers = header_knobs([("x-mock-status", "503"), ("x-mock-malformed-chunk", ""), ("other", "1")])
    query = query_knobs({"mock_status": "429", "mock_latency_ms": "12.5", "unrelated": "x"})
    directives = directive_knobs("hi #mock:status=500 #mock:no_usage #mock:disconnect_after=2")
    faults = Faults.resolve(headers, query, directives)
    assert faults == Faults(status=503, malformed=True, latency_ms=12.5, no_usage=True, disconnect_after=2)
    err = faults.error()
    assert err is not None and err.status == 503 and err.headers == {"retry-after": "1"}
    assert Faults().error() is None and Faults(status=200).error() is None
    assert Faults.resolve({"no_usage": "off"}).no_usage is False


@pytest.mark.parametrize("knobs", [{"status": "x"}, {"latency_ms": "-1"}, {"malformed": "maybe"}])
def test_bad_knob_values(knobs: dict[str, str]) -> None:
    with pytest.raises(WireError) as caught:
        Faults.resolve(knobs)
    assert caught.value.status == 400


def test_directives_parse_and_strip() -> None:
    with pytest.raises(WireError):
        directive_knobs("#mock:nonsense")
    assert directive_knobs("no directives here") == {}
    assert strip_directives("a #mock:status=500 b  #mock:malformed") == "a b"


async def test_in_process_asgi_and_bounded_history() -> None:
    app = create_mock_app(history=2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
        for word in ("first", "second", "third"):
            r = await client.post(
                "/v1/chat/completions",
                headers=OPENAI_AUTH,
                json={"model": "m", "messages": [{"role": "user", "content": word}]},
            )
            assert r.json()["choices"][0]["message"]["content"] == f"Echo: {word}"
        log = app.state.mock.log  # type: ignore[attr-defined]
        assert len(log) == 2
        recorded = (await client.get("/__mock/requests")).json()["data"]
        assert [c["body"]["messages"][0]["content"] for c in recorded] == ["second", "third"]
        assert (await client.delete("/__mock/requests")).status_code == 200
        assert (await client.get("/__mock/last_request")).status_code == 404
        assert (await client.get("/__mock/health")).json()["status"] == "ok"


def test_start_in_thread_and_stop() -> None:
    url, stop = start_mock_in_thread()
    assert httpx.get(url + "/__mock/health").status_code == 200
    stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/__mock/health", timeout=2)
