"""A connection the provider dropped after the request was sent — before its answer, or while a 2xx
answer was read — counts against the provider+model's health only when it came at once (within
`QUICK_DROP_SECONDS` of the sending). A load balancer in front of a provider cuts a request it held
too long tens of seconds in, and a caller can make any request that long: one user's long request
put the model in backoff for everyone (a single-model tier answering 503 `tier_unavailable`), again
every backoff period. A provider that fails at once (crashed, restarting) still does.

The mock upstream's `drop_after_ms` knob closes the connection before any answer, `disconnect_after`
(not streamed) mid-answer; the gateway's upstream requests are timed on a `TickingClock` (each reading
one step): a step of 60 s makes every drop a late one, a step of 0 an immediate one — never a wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.accounts import create_key
from tests.support.attack import ledger_rows
from tests.support.clock import TickingClock
from tests.support.metrics import metric
from tests.support.waiting import wait_for

HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"
NATIVE = "/native/v1/chat/completions"
DROPS = {  # where the connection drops: the directive, and the error the client gets
    "before the answer": ("#mock:drop_after_ms=0", "upstream_unreachable"),
    "while the answer is read": ("#mock:disconnect_after=0", "provider_bad_response"),
}


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def dropping_gateway(factory: Callable[..., Gateway], tmp_path: Path, step: float) -> Gateway:
    """A gateway whose native tiers are OpenAI's gpt-4o-mini alone, timing its upstream requests on a
    clock that moves `step` seconds at each reading."""
    return factory(providers_file=tiers_file(tmp_path, "openai"), upstream_clock=TickingClock(step),
                   usage_flush_interval_seconds=0.1)


@pytest.mark.parametrize("where", list(DROPS))
def test_a_connection_dropped_late_does_not_take_the_model_out_of_service(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, where: str,
) -> None:
    directive, code = DROPS[where]
    gw = dropping_gateway(gateway_factory, tmp_path, step=60.0)
    with gw.client() as http:
        native = http.post(NATIVE, json=ask(f"a long one {directive}"))
        relayed = http.post("/v1/chat/completions", json={"model": MINI, **ask(f"a long one {directive}")})
        messages = http.post("/v1/messages", json={"model": HAIKU, "max_tokens": 20, **ask(f"long {directive}")})
        for dropped in (native, relayed, messages):
            assert dropped.status_code == 502, dropped.text
            # Not served: the SDKs may retry it (only an answer served unreadable says otherwise).
            assert "x-should-retry" not in dropped.headers, dropped.headers
        assert native.json()["error"]["code"] == code, native.text
        after = http.post(NATIVE, json=ask("hi"))
    assert after.status_code == 200, after.text  # not 503 tier_unavailable: the model is not in backoff
    assert metric(gw.url, "sentinel_provider_health", provider="openai", model=MINI) != 0
    for pair in (("openai", MINI), ("anthropic", HAIKU)):
        assert gw.read_stored(ProviderHealth.key(*pair)) is None, pair
    # Still recorded as reserved (the provider may have served and billed it), one request each.
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 4)
    statuses = sorted(row["status"] for row in ledger_rows(gw.settings.database_url, "alice"))
    assert statuses == [200, 502, 502, 502], statuses


@pytest.mark.parametrize("where", list(DROPS))
def test_a_connection_dropped_at_once_still_puts_the_model_in_backoff(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, where: str,
) -> None:
    """A provider that crashed or restarts drops a call as soon as it arrives: that says it is down —
    once a second user's call was dropped too. One user's alone does not count: a request's content
    can make a proxy in front of a provider reset it at once (an oversized body instead of a 413),
    which put the model in backoff for everyone, at will and free. Two users' (two keys of one
    person meet the rule) start a soft backoff: it steers a tier, but this one-model tier still serves."""
    directive, code = DROPS[where]
    gw = dropping_gateway(gateway_factory, tmp_path, step=0.0)
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    with gw.client() as http, gw.client(bob_key) as bob:
        for _ in range(3):
            native = http.post(NATIVE, json=ask(f"hi {directive}"))
            assert native.status_code == 502 and native.json()["error"]["code"] == code, native.text
            messages = http.post("/v1/messages", json={"model": HAIKU, "max_tokens": 20, **ask(f"hi {directive}")})
            assert messages.status_code == 502, messages.text
        assert http.post(NATIVE, json=ask("hi")).status_code == 200  # alice's own drops alone: in service
        assert gw.read_stored(ProviderHealth.key("anthropic", HAIKU)) is None
        native = bob.post(NATIVE, json=ask(f"hi {directive}"))
        assert native.status_code == 502 and native.json()["error"]["code"] == code, native.text
        assert metric(gw.url, "sentinel_provider_health", provider="openai", model=MINI) == 0
        state = gw.read_stored(ProviderHealth.key("openai", MINI))
        assert state is not None and orjson.loads(state)["soft"] is True
        after = http.post(NATIVE, json=ask("hi"))
        messages = bob.post("/v1/messages", json={"model": HAIKU, "max_tokens": 20, **ask(f"hi {directive}")})
    assert after.status_code == 200, after.text  # not 503 tier_unavailable: no other model, a soft backoff
    assert messages.status_code == 502, messages.text
    assert gw.read_stored(ProviderHealth.key("anthropic", HAIKU)) is not None  # on /v1/messages too
