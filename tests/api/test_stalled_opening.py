"""An Anthropic stream's opening (`message_start`, `ping`s) is held back, with the response's headers,
until its first block — so that an overload right after `message_start` can be retried elsewhere — but
for at most `SENTINEL_STREAM_HOLD_SECONDS`: a provider that stalls after `message_start` (sending
nothing, or only pings) left the client without headers until the upstream read timeout (an SDK may
time out first, a proxy in front may drop the connection). Past the bound the held opening is relayed,
the stream goes on as it comes and is charged as any other; an overload after that point breaks the
stream (not retried: the client has the opening). On every surface that holds it: `/v1/messages`,
a Claude model's chat translated for an OpenAI client, the native API.

The upstream (`StalledOpening`) stalls until the test resumes it, which it does once its client got
the stream's first event: before the bound, nothing reaches the client, and the upstream's stall
ends on its own (`timed_out`) first. A silent stall is ended by the hold's timer on the event loop
(0.2 s of real time here); a pinging one on the gateway's stream clock, a `TickingClock` (each
reading one second: the default 5 s after a few pings), never after a wait."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import orjson
import pytest
import yaml

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows
from tests.support.clock import TickingClock
from tests.support.metrics import metric
from tests.support.servers import serving
from tests.support.upstream import StalledOpening
from tests.support.waiting import wait_for

HAIKU, SONNET = "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514"
ASK = [{"role": "user", "content": "one two three"}]


@contextmanager
def stalled(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, *, pinging: bool, overloaded: bool = False,
) -> Iterator[tuple[Gateway, StalledOpening]]:
    """A gateway whose Anthropic provider (also every native tier's model) stalls after `message_start`."""
    upstream = StalledOpening(ping_every=0.02 if pinging else 0, overloaded=overloaded)
    bound = {"stream_clock": TickingClock(1.0), "stream_max_seconds": 1000} if pinging else {
        "stream_hold_seconds": 0.2}
    with serving(upstream) as srv:
        yield gateway_factory(anthropic_api_url=srv.url, providers_file=tiers_file(tmp_path, "anthropic"),
                              usage_flush_interval_seconds=0.1, **bound), upstream


def charged_as_streamed(gw: Gateway) -> None:
    """One usage record: the input `message_start` reported, the output `message_delta` did."""
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    (row,) = ledger_rows(gw.settings.database_url, "alice")
    assert (row["status"], row["model"]) == (200, HAIKU), row
    assert (row["input_tokens"], row["output_tokens"]) == (StalledOpening.INPUT_TOKENS,
                                                          StalledOpening.OUTPUT_TOKENS), row


@pytest.mark.parametrize("pinging", [False, True], ids=["silent", "pinging"])
def test_a_messages_stream_stalled_after_message_start_gets_its_headers_and_opening(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, pinging: bool,
) -> None:
    with stalled(gateway_factory, tmp_path, pinging=pinging) as (gw, upstream), \
            gw.anthropic(timeout=60).messages.with_streaming_response.create(
                model=HAIKU, max_tokens=200, stream=True, messages=ASK) as raw:
        assert raw.headers["x-sentinel-model"] == HAIKU
        events = iter(raw.parse())
        first = next(events)
        upstream.resume()
        rest = list(events)
    assert not upstream.timed_out  # the opening came while the provider stalled
    assert first.type == "message_start", first
    assert [e.type for e in rest] == ["content_block_start", "content_block_delta", "content_block_stop",
                                      "message_delta", "message_stop"], rest
    charged_as_streamed(gw)


def test_a_translated_stream_stalled_after_message_start_gets_its_headers_and_first_chunk(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    with stalled(gateway_factory, tmp_path, pinging=False) as (gw, upstream), \
            gw.openai(timeout=60).chat.completions.with_streaming_response.create(
                model=HAIKU, stream=True, messages=ASK, stream_options={"include_usage": True}) as raw:
        assert raw.headers["x-sentinel-model"] == HAIKU
        chunks = iter(raw.parse())
        first = next(chunks)
        upstream.resume()
        rest = list(chunks)
    assert not upstream.timed_out
    assert first.choices[0].delta.role == "assistant", first
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == StalledOpening.TEXT
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == StalledOpening.OUTPUT_TOKENS
    charged_as_streamed(gw)


def test_a_native_stream_stalled_after_message_start_gets_its_headers_and_first_chunk(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    with stalled(gateway_factory, tmp_path, pinging=True) as (gw, upstream), gw.client() as http, \
            http.stream("POST", "/native/v1/chat/completions",
                        json={"tier": "simple", "stream": True, "messages": ASK}) as answer:
        assert answer.status_code == 200 and answer.headers["x-sentinel-model"] == HAIKU
        lines = (line.removeprefix("data: ") for line in answer.iter_lines() if line.startswith("data: "))
        first = orjson.loads(next(lines))
        upstream.resume()
        rest = list(lines)
    assert not upstream.timed_out
    assert first["choices"][0]["delta"]["role"] == "assistant", first
    assert rest[-1] == "[DONE]" and StalledOpening.TEXT in "".join(rest), rest
    charged_as_streamed(gw)


def test_an_overload_after_the_opening_was_released_breaks_the_stream(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, mock_upstream: str,
) -> None:
    """Once the held opening went to the client, an alias's next target cannot take the stream over:
    the overload is relayed as the stream breaking (as one after the first block is), counted against
    the model's health, one usage record (502) for the target that began it."""
    upstream = StalledOpening(overloaded=True)
    with serving(upstream) as srv:
        path = tmp_path / "providers.yaml"
        path.write_text(yaml.safe_dump({
            "providers": [{"name": "anthropic", "kind": "anthropic", "base_url": mock_upstream, "api_key": "sk-ant-x"},
                          {"name": "stuck", "kind": "anthropic", "base_url": srv.url, "api_key": "sk-ant-x"}],
            "models": [{"name": "stuck-haiku", "provider": "stuck", "upstream_name": HAIKU},
                       {"name": SONNET, "provider": "anthropic"}],
            "aliases": {"claudes": ["stuck-haiku", SONNET]},
        }))
        gw = gateway_factory(providers_file=path, stream_hold_seconds=0.2, usage_flush_interval_seconds=0.1)
        seen: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: PT012
            for event in gw.anthropic(timeout=60).messages.create(
                model="claudes", max_tokens=200, stream=True, messages=ASK,
            ):
                seen.append(event.type)
                upstream.resume()
    assert not upstream.timed_out and upstream.arrived == 1
    assert seen == ["message_start"], seen
    assert caught.value.body["error"]["type"] == "overloaded_error", caught.value.body  # type: ignore[index]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    (row,) = ledger_rows(gw.settings.database_url, "alice")
    assert (row["status"], row["model"]) == (502, "stuck-haiku"), row
    assert metric(gw.url, "sentinel_provider_health", provider="stuck", model=HAIKU) == 0
    assert metric(gw.url, "sentinel_upstream_errors_total", provider="stuck", kind="provider_error") is None
