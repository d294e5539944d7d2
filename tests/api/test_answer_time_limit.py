"""An answer's body is read for at most `SENTINEL_STREAM_MAX_SECONDS`, streamed or not. The read timeout
bounds only the gap between bytes: a provider (or anything between) sending a non-streamed answer one
byte at a time held the request, its in-flight slot and its reservation for ever.

A body read before anything was answered (a non-streamed answer, a small download) that runs past the
limit is 504 `answer_time_limit` in the surface's error shape, charged as a read timeout after the
request was sent (the provider may have served it: its estimated input and all the output it
reserved), never counted against the provider's health (a client can make a long answer). A large
answer already being passed through when it runs past the limit ends as a cut stream does there.

The mock upstream's `trickle_ms` knob sends a body one byte at a time; the gateways read a
`TickingClock` (each reading one step), so the limit is reached after a number of bytes, never after
a wait. On a gateway without the limit these answers end after the whole trickle, as 200."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from sentinel.services.answers import MAX_BUFFERED
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.accounts import set_user_plan
from tests.support.attack import ledger_rows, wait_for
from tests.support.clock import FakeClock
from tests.support.metrics import metric
from tests.support.servers import serving
from tests.support.time_limits import LIMIT, limited_gateway
from tests.support.upstream import ScriptedUpstream

pytestmark = pytest.mark.timeout(60)  # on a gateway without the limit, the trickling download never ends

HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"
TRICKLING = "one two three #mock:trickle_ms=10"  # the answer's body comes one byte every 10 ms
CUT = "Upstream {} timed out: its answer took longer than the 10 s an answer may take"


def ask(text: str = TRICKLING) -> list[Any]:
    return [{"role": "user", "content": text}]


def charged_as_reserved(gw: Gateway, model: str) -> None:
    """The one record: 504, its estimated input and all the 50 output tokens it reserved."""
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert (row["status"], row["model"], row["usage_source"]) == (504, model, "estimated"), row
    assert row["input_tokens"] > 0 and row["output_tokens"] == 50, row


@pytest.mark.parametrize("model", [MINI, HAIKU])  # relayed, translated to Anthropic's wire
def test_a_chat_answer_read_past_the_limit_is_a_504_the_openai_sdk_raises(
    gateway_factory: Callable[..., Gateway], model: str
) -> None:
    gw = limited_gateway(gateway_factory)
    provider = "anthropic" if model == HAIKU else "openai"
    with pytest.raises(openai.APIStatusError) as cut:
        gw.openai(timeout=30).chat.completions.create(model=model, messages=ask(), max_tokens=50)
    assert cut.value.status_code == 504
    assert cut.value.body == {"message": CUT.format(provider), "type": "timeout_error", "param": None, "code": "answer_time_limit",
                              "provider": provider}
    charged_as_reserved(gw, model)
    # A client can make a long answer: the model is not put in backoff.
    assert metric(gw.url, "sentinel_provider_health", provider=provider, model=model) != 0


@pytest.mark.parametrize("model", [HAIKU, MINI])  # relayed, translated to OpenAI's wire
def test_a_messages_answer_read_past_the_limit_is_a_504_the_anthropic_sdk_raises(
    gateway_factory: Callable[..., Gateway], model: str
) -> None:
    gw = limited_gateway(gateway_factory)
    provider = "anthropic" if model == HAIKU else "openai"
    with pytest.raises(anthropic.APIStatusError) as cut:
        gw.anthropic(timeout=30).messages.create(model=model, max_tokens=50, messages=ask())
    assert cut.value.status_code == 504
    assert cut.value.body == {"type": "error", "error": {"type": "timeout_error", "message": CUT.format(provider)},
                              "request_id": cut.value.response.headers["x-request-id"]}
    charged_as_reserved(gw, model)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_native_answer_read_past_the_limit_is_a_504_and_the_tier_stays_up(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, provider: str
) -> None:
    gw = limited_gateway(gateway_factory, providers_file=tiers_file(tmp_path, provider))
    with gw.client() as http:
        cut = http.post("/native/v1/chat/completions", json={"messages": ask(), "max_tokens": 50})
        after = http.post("/native/v1/chat/completions", json={"messages": ask("hi"), "max_tokens": 50})
    assert cut.status_code == 504, cut.text
    assert cut.json()["error"] | {"provider": provider} == {
        "message": CUT.format(provider), "type": "timeout_error", "param": None, "code": "answer_time_limit", "provider": provider}
    assert after.status_code == 200, after.text  # not 503 tier_unavailable: the model is not in backoff
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    row = next(r for r in ledger_rows(gw.settings.database_url) if r["request_id"] == cut.headers["x-request-id"])
    assert row["status"] == 504 and row["output_tokens"] == 50, row


def test_a_download_read_past_the_limit_is_a_504_and_frees_its_slot(gateway_factory: Callable[..., Gateway]) -> None:
    """A file's content passed through (small: read whole before it is answered) that trickles in."""
    gw = limited_gateway(gateway_factory, passthrough="/v1/files/*", max_in_flight_per_user=1)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=100/1d"))
    with gw.client() as alice:
        made = alice.post("/v1/files", files={"file": ("notes.txt", b"a line of notes\n" * 20)},
                          data={"purpose": "user_data"})
        assert made.status_code == 200, made.text
        content = f"/v1/files/{made.json()['id']}/content"
        cut = alice.get(content, params={"mock_trickle_ms": "10"})
        assert cut.status_code == 504, cut.text
        assert cut.json()["error"]["code"] == "answer_time_limit"
        assert cut.json()["error"]["message"] == CUT.format("openai")
        assert alice.get(content).status_code == 200  # its one request slot is free again
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 3)
    statuses = {r["request_id"]: r["status"] for r in ledger_rows(gw.settings.database_url)}
    assert statuses[cut.headers["x-request-id"]] == 504


def test_a_large_answer_passed_through_past_the_limit_ends_as_a_cut_stream(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A download over 1 MiB is relayed as it arrives: once its first bytes went out, a cut can only
    end it (recorded as 502, as a broken one is), and its upstream connection is closed. The
    gateway's clock moves when the test says: after the answer began."""
    clock = FakeClock()
    upstream = ScriptedUpstream()
    head = b"y" * (MAX_BUFFERED + 1)
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/files/*", stream_clock=clock,
                             stream_max_seconds=LIMIT, usage_flush_interval_seconds=0.1)
        upstream.json({"id": "file-big", "object": "file", "bytes": len(head), "purpose": "user_data"})
        upstream.typed(b"application/octet-stream", head, trickle=0.01)  # then a byte every 10 ms, no end
        with gw.client() as alice:
            made = alice.post("/v1/files", files={"file": ("big.bin", b"y")}, data={"purpose": "user_data"})
            assert made.status_code == 200, made.text
            received = 0
            with alice.stream("GET", "/v1/files/file-big/content") as download:
                assert download.status_code == 200
                for chunk in download.iter_raw():
                    if not received:
                        clock.advance(LIMIT)  # the answer began; its time is up
                    received += len(chunk)
        assert upstream.left.wait(timeout=10)  # the upstream's connection was closed
    assert received >= len(head)  # what was read before the cut was relayed
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    statuses = {r["request_id"]: r["status"] for r in ledger_rows(gw.settings.database_url)}
    assert statuses[download.headers["x-request-id"]] == 502


def test_an_error_answer_read_past_the_limit_is_answered_without_its_details(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """An error answer's body is read for its message: one that trickles in is read no longer than
    the limit either, and answered as an error body that breaks off is (its status, no details)."""
    gw = limited_gateway(gateway_factory)
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json={"model": MINI, "messages": ask(TRICKLING + " #mock:status=400")})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": "no details", "type": "invalid_request_error", "param": None,
                                 "code": "provider_rejected_request", "provider": "openai"}
