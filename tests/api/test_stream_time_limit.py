"""A streamed answer lasts at most `SENTINEL_STREAM_MAX_SECONDS`, on every surface that streams from a
provider. The read timeout bounds only the gap between bytes: a provider that sent pings or comments
(or anything) now and then kept the stream, its in-flight slot and its reservation for as long as the
client stayed. Past the limit the stream ends as a stream Sentinel cuts: an error event the SDKs
raise, the usage record (502, charged as a cut stream), the reservation settled, the slot freed.

The mock upstream's `pings_after` knob sends a few events, then only pings until its client leaves;
the gateways' streams read a `TickingClock` (each reading one step), so the limit is reached after a
number of chunks, never after a wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.accounts import set_user_plan
from tests.support.attack import ledger_rows, wait_for
from tests.support.metrics import metric
from tests.support.servers import serving
from tests.support.time_limits import limited_gateway
from tests.support.upstream import ScriptedUpstream

pytestmark = pytest.mark.timeout(60)  # on a gateway without the limit, the pinging streams never end

HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"
PINGING = "one two three four five six seven eight #mock:pings_after=5"  # a few events, then only pings
CUT = "Upstream {} stream cut: it ran past the 10 s a streamed answer may last"


def ask(text: str = PINGING) -> list[Any]:
    return [{"role": "user", "content": text}]


def read_openai_chat(gw: Gateway, model: str) -> openai.APIError:
    with pytest.raises(openai.APIError) as cut:  # noqa: PT012 - the error comes while reading
        for _ in gw.openai(timeout=30).chat.completions.create(model=model, messages=ask(), stream=True, max_tokens=50):
            pass
    return cut.value


def read_openai_completion(gw: Gateway) -> openai.APIError:
    with pytest.raises(openai.APIError) as cut:  # noqa: PT012
        for _ in gw.openai(timeout=30).completions.create(model=MINI, prompt=PINGING, stream=True, max_tokens=50):
            pass
    return cut.value


def read_claude(gw: Gateway, model: str) -> anthropic.APIStatusError:
    with pytest.raises(anthropic.APIStatusError) as cut:  # noqa: PT012
        for _ in gw.anthropic(timeout=30).messages.create(model=model, max_tokens=50, messages=ask(), stream=True):
            pass
    return cut.value


@pytest.mark.parametrize("model", [MINI, HAIKU])  # relayed, translated from Anthropic's stream
def test_a_chat_stream_past_its_time_limit_ends_with_an_error_the_openai_sdk_raises(
    gateway_factory: Callable[..., Gateway], model: str
) -> None:
    gw = limited_gateway(gateway_factory)
    provider = "anthropic" if model == HAIKU else "openai"
    error = read_openai_chat(gw, model)
    assert error.body == {"message": CUT.format(provider), "type": "stream_error", "code": "stream_time_limit"}
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert (row["status"], row["model"]) == (502, model) and row["input_tokens"] > 0, row  # a cut stream
    assert metric(gw.url, "sentinel_upstream_errors_total", provider=provider, kind="stream_time_limit") == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_native_stream_past_its_time_limit_ends_with_its_error_event(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, provider: str
) -> None:
    """The native API's chunks are chat's: its error event is the `{"error": …}` chunk (no SDK names
    a tier instead of a model, so it is read as it comes)."""
    gw = limited_gateway(gateway_factory, providers_file=tiers_file(tmp_path, provider))
    with gw.client() as http:
        r = http.post("/native/v1/chat/completions", json={"messages": ask(), "max_tokens": 50, "stream": True})
    assert r.status_code == 200
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events and orjson.loads(events[0])["choices"], events[:2]  # what came before
    assert orjson.loads(events[-1]) == {"error": {
        "message": CUT.format(provider), "type": "stream_error", "code": "stream_time_limit"}}
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert row["status"] == 502 and row["input_tokens"] > 0, row


def test_a_completions_stream_past_its_time_limit_ends_with_an_error_the_openai_sdk_raises(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = limited_gateway(gateway_factory)
    error = read_openai_completion(gw)
    assert error.body == {"message": CUT.format("openai"), "type": "stream_error", "code": "stream_time_limit"}
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    assert ledger_rows(gw.settings.database_url)[0]["status"] == 502


def test_a_responses_stream_past_its_time_limit_ends_with_its_error_event(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = limited_gateway(gateway_factory)
    events = list(gw.openai(timeout=30).responses.create(model=MINI, input=PINGING, stream=True))
    last = events[-1]
    assert (last.type, last.code, last.message) == ("error", "stream_time_limit", CUT.format("openai"))
    assert "response.created" in [event.type for event in events]  # what came before was relayed
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    assert ledger_rows(gw.settings.database_url)[0]["status"] == 502


@pytest.mark.parametrize("model", [HAIKU, MINI])  # relayed, translated from OpenAI's stream
def test_a_messages_stream_past_its_time_limit_ends_with_an_error_the_anthropic_sdk_raises(
    gateway_factory: Callable[..., Gateway], model: str
) -> None:
    gw = limited_gateway(gateway_factory)
    provider = "anthropic" if model == HAIKU else "openai"
    error = read_claude(gw, model)
    assert error.body == {"type": "error", "error": {"type": "api_error", "message": CUT.format(provider)}}
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert (row["status"], row["model"]) == (502, model) and row["input_tokens"] > 0, row
    assert metric(gw.url, "sentinel_upstream_errors_total", provider=provider, kind="stream_time_limit") == 1


def test_a_stream_whose_upstream_goes_quiet_is_cut_at_the_limit_not_at_the_read_timeout(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """No byte comes after the first event: no chunk's arrival checks the clock, so a timer on the
    event loop ends the wait at the limit (0.2 s of real time here; the read timeout, 5 minutes,
    would have kept the stream), and the upstream connection is closed."""
    first = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MINI,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", stream_max_seconds=0.2, upstream_timeout_seconds=300,
                             usage_flush_interval_seconds=0.1)
        upstream.sse(first, hold=True)
        with pytest.raises(openai.APIError) as cut:  # noqa: PT012
            for _ in gw.openai(timeout=60).chat.completions.create(model=MINI, messages=ask("hi"), stream=True):
                pass
        assert upstream.left.wait(timeout=10)  # the upstream's connection was closed
    assert cut.value.body == {"message": "Upstream openai stream cut: it ran past the 0.2 s a streamed answer may "
                                         "last", "type": "stream_error", "code": "stream_time_limit"}
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    assert ledger_rows(gw.settings.database_url)[0]["status"] == 502


@pytest.mark.parametrize(("path", "model"), [("/v1/chat/completions", MINI), ("/v1/messages", HAIKU),
                                             ("/v1/messages", MINI)])
def test_a_stream_cut_at_its_time_limit_settles_its_reservation_and_frees_its_slot(
    gateway_factory: Callable[..., Gateway], path: str, model: str
) -> None:
    """While the pinging stream ran it held 600 of the user's 1,000 output tokens and their one
    request slot. Cut, it is charged what it streamed (a few tokens), so a second request reserving
    600 fits, and the slot is free for it."""
    gw = limited_gateway(gateway_factory, max_in_flight_per_user=1)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=100/1d,output_tokens=1000/1d"))
    body: dict[str, Any] = {"model": model, "max_tokens": 600, "messages": ask(), "stream": True}
    with gw.client() as http:
        cut = http.post(path, json=body)
        assert cut.status_code == 200
        assert "stream_time_limit" in cut.text if path.endswith("completions") else '"type":"error"' in cut.text
        assert wait_for(lambda: metric(gw.url, "sentinel_requests_in_flight") == 0)
        second = http.post(path, json={**body, "stream": False, "messages": ask("hi")})
    assert second.status_code == 200, second.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    first, _ = ledger_rows(gw.settings.database_url)
    assert first["request_id"] == cut.headers["x-request-id"]
    assert first["status"] == 502 and first["usage_source"] == "estimated", first
    assert 0 < first["output_tokens"] < 600, first  # what it streamed, not all it reserved
    text = cut.text
    if path.endswith("completions"):
        assert text.rstrip().endswith(orjson.dumps({"error": {
            "message": CUT.format("openai"), "type": "stream_error", "code": "stream_time_limit"}}).decode())


def test_a_pass_through_answer_streamed_unasked_is_read_no_longer_than_the_limit(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A pass-through call answered with an event stream is read to its end for its usage, never
    relayed: one that never ended held the request (its slot, its reservation) for as long as the
    provider kept it open. Past the limit it is recorded with the usage its events showed, as an
    answer Sentinel could not read (0.2 s of real time here: the upstream sends nothing more)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/images/*", stream_max_seconds=0.2,
                             usage_flush_interval_seconds=0.1)
        upstream.sse({"type": "image_generation.partial_image", "b64_json": "AAAA", "partial_image_index": 0,
                      "usage": {"input_tokens": 30, "output_tokens": 400, "total_tokens": 430}}, hold=True)
        with gw.client() as alice:
            drawn = alice.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "a cat"})
        assert upstream.left.wait(timeout=10)  # the upstream's connection was closed
    assert drawn.status_code == 502, drawn.text
    assert drawn.json()["error"]["code"] == "provider_bad_response"
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    (row,) = ledger_rows(gw.settings.database_url, "alice")
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (502, 30, 400), row
