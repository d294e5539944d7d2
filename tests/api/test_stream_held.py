"""A translated or native stream holds at most `HELD_CHARS` of tool calls (`sentinel.native.kept`).

A provider streaming one call's arguments without end (the mock upstream's `endless_tool_args`
knob: 64 KiB fragments until its client leaves) grew the gateway's memory until
`SENTINEL_STREAM_MAX_SECONDS`: the normalisers kept every fragment (the call is made of them), and a
translated Anthropic stream held a later parallel call whole until the end. Now the stream ends at
the bound with an error event in the client's surface's shape (the SDKs raise it), the upstream
connection closed, and it is settled as a broken stream: a 502 record charged what it streamed, the
reservation and the in-flight slot given back.

The gateways' streams read a `TickingClock` (a second per chunk read) against a time limit far past
what reaching the bound takes: without the bound, the stream is cut there instead (and fails the
test) rather than growing the test process's memory until the test times out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows, wait_for
from tests.support.clock import TickingClock
from tests.support.metrics import metric

pytestmark = pytest.mark.timeout(120)  # on a gateway without the bound, the endless streams never end

HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"
ENDLESS = "look it up #mock:endless_tool_args"
PARALLEL = ENDLESS + " #mock:parallel_tools"
CUT = "Upstream {} stream cut: its tool calls ran past the 8,388,608 characters a stream may hold"
PARAMETERS = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
OA_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": name, "description": name, "parameters": PARAMETERS}}
    for name in ("lookup", "clock")
]
AN_TOOLS: list[Any] = [{"name": "lookup", "input_schema": PARAMETERS}, {"name": "clock", "input_schema": PARAMETERS}]


def bounded_gateway(gateway_factory: Callable[..., Gateway], **overrides: Any) -> Gateway:
    """A gateway whose streams end at 1,000 chunk reads (reaching the bound takes some tens)."""
    return gateway_factory(stream_clock=TickingClock(1.0), stream_max_seconds=1000,
                           usage_flush_interval_seconds=0.1, **overrides)


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def settled_once(gw: Gateway, provider: str) -> dict[str, Any]:
    """The stream's one usage record: a broken stream's (502), charged the output it streamed."""
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert row["status"] == 502 and row["input_tokens"] > 0, row
    # Charged what it streamed (about 8 M characters of arguments: far more than any reservation).
    assert row["output_tokens"] > 1_000_000, row
    assert wait_for(lambda: metric(gw.url, "sentinel_requests_in_flight") == 0)
    return row


def test_an_openai_client_of_a_claude_model_whose_call_never_ends_gets_an_error_the_sdk_raises(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = bounded_gateway(gateway_factory)
    stream = gw.openai(timeout=60).chat.completions.create(
        model=HAIKU, messages=ask(ENDLESS), tools=OA_TOOLS, stream=True, max_tokens=50)
    relayed = 0
    with pytest.raises(openai.APIError) as cut:  # noqa: PT012 - the error comes while reading
        for chunk in stream:
            for call in chunk.choices[0].delta.tool_calls or ():
                relayed += len(call.function.arguments or "") if call.function else 0
    assert cut.value.body == {"message": CUT.format("anthropic"), "type": "stream_error", "code": "stream_too_large"}
    assert 8 * 1024 * 1024 - 64 * 1024 < relayed <= 8 * 1024 * 1024  # relayed as they came, to the bound
    row = settled_once(gw, "anthropic")
    assert row["model"] == HAIKU
    assert metric(gw.url, "sentinel_upstream_errors_total", provider="anthropic", kind="stream_too_large") == 1


@pytest.mark.parametrize("text", [ENDLESS, PARALLEL])  # the first call streamed; a later one held
def test_an_anthropic_client_of_an_openai_model_whose_call_never_ends_gets_an_error_the_sdk_raises(
    gateway_factory: Callable[..., Gateway], text: str,
) -> None:
    gw = bounded_gateway(gateway_factory)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as cut:  # noqa: PT012
        for event in gw.anthropic(timeout=60).messages.create(
                model=MINI, max_tokens=50, messages=ask(text), tools=AN_TOOLS, stream=True):
            if event.type == "content_block_start":
                seen.append(event.content_block.type)
    assert cut.value.body == {"type": "error", "error": {"type": "api_error", "message": CUT.format("openai")}}
    assert seen == ["tool_use"]  # the first call streamed as it came; a held one was never sent
    settled_once(gw, "openai")
    assert metric(gw.url, "sentinel_upstream_errors_total", provider="openai", kind="stream_too_large") == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_native_stream_whose_call_never_ends_ends_with_its_error_event(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, provider: str
) -> None:
    gw = bounded_gateway(gateway_factory, providers_file=tiers_file(tmp_path, provider))
    body = {"messages": ask(ENDLESS), "tools": OA_TOOLS, "max_tokens": 50, "stream": True}
    with gw.client() as http:
        r = http.post("/native/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert any(orjson.loads(event)["choices"][0]["delta"].get("tool_calls") for event in events[:-1])
    assert orjson.loads(events[-1]) == {"error": {
        "message": CUT.format(provider), "type": "stream_error", "code": "stream_too_large"}}
    settled_once(gw, provider)
