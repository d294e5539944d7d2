"""A call the provider never answered (an upstream read timeout after the request was sent) counts as
one request and its estimated input on every surface, and is recorded with status 504: the provider
may have spent on it, and were it free a slow enough request could be repeated without limit. A call
that never reached the provider (connection refused) still gives everything back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.accounts import set_user_plan
from tests.support.attack import ledger_rows
from tests.support.metrics import metric
from tests.support.servers import free_port
from tests.support.waiting import wait_for

HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"
SLOW = "hi #mock:latency_ms=3000"  # the mock waits 3 s before its first byte; Sentinel waits 1 s
TIMEOUT = 1.0  # an ordinary request to the mock (the probes) answers well within it, even on a busy machine

CASES: dict[str, tuple[str, dict[str, Any], str, str, str | None]] = {
    # name: (path, body, endpoint recorded, model recorded, native tiers provider or None)
    "chat": ("/v1/chat/completions", {"model": MINI, "messages": [{"role": "user", "content": SLOW}]},
             "chat", MINI, None),
    "chat-stream": ("/v1/chat/completions",
                    {"model": MINI, "stream": True, "messages": [{"role": "user", "content": SLOW}]},
                    "chat", MINI, None),
    "chat-translated": ("/v1/chat/completions", {"model": HAIKU, "messages": [{"role": "user", "content": SLOW}]},
                        "chat", HAIKU, None),
    "messages": ("/v1/messages",
                 {"model": HAIKU, "max_tokens": 20, "messages": [{"role": "user", "content": SLOW}]},
                 "messages", HAIKU, None),
    "messages-translated": ("/v1/messages",
                            {"model": MINI, "max_tokens": 20, "messages": [{"role": "user", "content": SLOW}]},
                            "messages", MINI, None),
    "native": ("/native/v1/chat/completions", {"messages": [{"role": "user", "content": SLOW}]},
               "native", MINI, "openai"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_call_the_provider_never_answered_counts_one_request_and_its_input(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, case: str,
) -> None:
    path, body, endpoint, model, native = CASES[case]
    extra: dict[str, Any] = {"providers_file": tiers_file(tmp_path, native)} if native else {}
    gw = gateway_factory(upstream_timeout_seconds=TIMEOUT, usage_flush_interval_seconds=0.1, **extra)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1d"))
    probe = {"model": MINI, "messages": [{"role": "user", "content": "hi"}]}
    with gw.client() as http:
        timed_out = http.post(path, json=body)
        served = http.post("/v1/chat/completions", json=probe)
    assert timed_out.status_code == 504, timed_out.text
    assert served.status_code == 200, served.text
    # The timed-out call used one of the three requests, the probe another.
    assert served.headers["x-ratelimit-remaining"] == "1"
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) >= 2)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert sorted(r["status"] for r in rows) == [200, 504]
    (row,) = [r for r in rows if r["status"] == 504]
    assert (row["endpoint"], row["model"], row["usage_source"]) == (endpoint, model, "estimated")
    assert row["input_tokens"] > 0  # the admission's estimate of what was sent
    assert row["output_tokens"] > 0  # all it reserved: the provider may have generated (and billed) it


def test_a_call_that_never_reached_the_provider_gives_everything_back(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(openai_api_url=f"http://127.0.0.1:{free_port()}/v1", usage_flush_interval_seconds=0.1)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1d"))
    chat = {"model": MINI, "messages": [{"role": "user", "content": "hi"}]}
    with gw.client() as http:
        first = http.post("/v1/chat/completions", json=chat)
        second = http.post("/v1/chat/completions", json=chat)
    assert first.status_code == second.status_code == 502
    assert second.headers["x-ratelimit-remaining"] == "2"  # only the call in flight is reserved
    time.sleep(0.3)  # a wrongly recorded failure would have been flushed by now
    assert ledger_rows(gw.settings.database_url, "alice") == []


def test_a_timed_out_call_is_not_sent_again_to_another_candidate(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """On a tier with two candidates a read timeout was retried on the other one: the provider that
    timed out may have billed the call, but only the retry was recorded. The timeout now ends the
    request (504), recorded; it does not count against that candidate's health (the caller's request
    was long, not the provider down)."""
    import yaml

    entries = [{"provider": "openai", "model": MINI, "relative_cost": 1},
               {"provider": "anthropic", "model": HAIKU, "relative_cost": 2}]
    tiers = tmp_path / "two.yaml"
    tiers.write_text(yaml.safe_dump({"tiers": {"simple": entries, "moderate": entries, "complex": entries}}))
    gw = gateway_factory(providers_file=tiers, upstream_timeout_seconds=TIMEOUT, usage_flush_interval_seconds=0.1)
    with gw.client() as http:
        r = http.post("/native/v1/chat/completions", json={"messages": [{"role": "user", "content": SLOW}]})
    assert r.status_code == 504, r.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) >= 1)
    rows = ledger_rows(gw.settings.database_url, "alice")
    # One attempt, recorded: whichever candidate the router chose first (both are slow here).
    assert [row["status"] for row in rows] == [504], rows


def test_a_slow_request_does_not_take_the_model_out_of_service(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A read timeout after the request was sent put the provider+model in backoff, shared by every
    process: one user's slow call (a huge max_tokens outlasts any timeout) made a single-model tier
    answer 503 `tier_unavailable` to everyone. It is the caller's request being long, not the
    provider being down: the model stays in service, on both surfaces."""
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"), upstream_timeout_seconds=TIMEOUT)
    with gw.client() as http:
        relayed = http.post("/v1/chat/completions", json={"model": MINI, "messages": [{"role": "user", "content": SLOW}]})
        native = http.post("/native/v1/chat/completions", json={"messages": [{"role": "user", "content": SLOW}]})
        assert (relayed.status_code, native.status_code) == (504, 504), (relayed.text, native.text)
        assert metric(gw.url, "sentinel_provider_health", provider="openai", model=MINI) != 0
        after = http.post("/native/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert after.status_code == 200, after.text  # not 503 tier_unavailable: the model is not in backoff


def test_a_stream_that_never_begins_takes_the_model_out_of_service(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A provider sends a stream's headers at once, however long the answer: a streamed request with
    no answer at all before the timeout is a stuck provider, and still puts the model in backoff
    (else every request of an alias or tier waited for it, then got 504)."""
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"), upstream_timeout_seconds=TIMEOUT)
    ask = [{"role": "user", "content": SLOW}]
    with gw.client() as http:
        relayed = http.post("/v1/chat/completions", json={"model": MINI, "messages": ask, "stream": True})
    assert relayed.status_code == 504, relayed.text
    assert metric(gw.url, "sentinel_provider_health", provider="openai", model=MINI) == 0


# --- a 2xx answer Sentinel cannot read -------------------------------------------------------------------
BROKEN_CALL = {  # a tool call whose arguments are not whole JSON, the answer not cut by its output cap
    # (one cut so, `finish_reason: length`, is kept with no arguments: tests/api/test_cross_format.py)
    "id": "chatcmpl-x", "object": "chat.completion", "created": 1732000000, "model": MINI,
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}}]}}],
    "usage": {"prompt_tokens": 50_000, "completion_tokens": 3, "total_tokens": 50_003},
}


def test_an_answer_that_cannot_be_read_is_recorded_and_does_not_take_the_model_down(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A tool call with broken JSON arguments (a provider's bug; one cut off by `max_tokens` is kept
    with none): the native API (and an OpenAI model on /v1/messages) answers 502. It was given back (free, without limit, billed 50,000
    input tokens a time) and counted as a provider failure: one user took the tier down for everyone.
    Now it is recorded with the answer's own usage and the model stays up."""
    from tests.support.accounts import create_key
    from tests.support.servers import serving
    from tests.support.upstream import ScriptedUpstream

    upstream = ScriptedUpstream()
    tool = {"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"),
                             usage_flush_interval_seconds=0.1)
        asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1d"))
        bob = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]
        with gw.client() as http:
            upstream.json(BROKEN_CALL)
            native = http.post("/native/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "weather?"}], "tools": [tool], "tool_choice": "required",
                "max_tokens": 3})
            upstream.json(BROKEN_CALL)
            messages = http.post("/v1/messages", json={
                "model": MINI, "max_tokens": 3, "messages": [{"role": "user", "content": "weather?"}],
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"}})
            upstream.json(BROKEN_CALL)
            third = http.post("/native/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
            refused = http.post("/native/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        with gw.client(bob) as http:
            upstream.json({**BROKEN_CALL, "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": "sunny"}}]})
            other = http.post("/native/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert [native.status_code, messages.status_code, third.status_code] == [502, 502, 502], (native.text, messages.text)
    assert refused.status_code == 429, refused.text  # three requests a minute: all three counted
    assert other.status_code == 200, other.text  # the model is still up for everyone else
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
    for row in ledger_rows(gw.settings.database_url, "alice"):
        assert (row["status"], row["input_tokens"], row["output_tokens"], row["usage_source"]) == (
            502, 50_000, 3, "measured"), row
