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
from tests.support.servers import free_port
from tests.support.waiting import wait_for

HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"
SLOW = "hi #mock:latency_ms=1500"  # the mock waits 1.5 s before its first byte; Sentinel waits 0.3 s

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
    gw = gateway_factory(upstream_timeout_seconds=0.3, usage_flush_interval_seconds=0.1, **extra)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1m"))
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
    assert (row["endpoint"], row["model"], row["output_tokens"], row["usage_source"]) == (endpoint, model, 0, "estimated")
    assert row["input_tokens"] > 0  # the admission's estimate of what was sent


def test_a_call_that_never_reached_the_provider_gives_everything_back(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(openai_api_url=f"http://127.0.0.1:{free_port()}/v1", usage_flush_interval_seconds=0.1)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1m"))
    chat = {"model": MINI, "messages": [{"role": "user", "content": "hi"}]}
    with gw.client() as http:
        first = http.post("/v1/chat/completions", json=chat)
        second = http.post("/v1/chat/completions", json=chat)
    assert first.status_code == second.status_code == 502
    assert second.headers["x-ratelimit-remaining"] == "2"  # only the call in flight is reserved
    time.sleep(0.3)  # a wrongly recorded failure would have been flushed by now
    assert ledger_rows(gw.settings.database_url, "alice") == []
