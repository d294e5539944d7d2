"""Calls the provider refuses still count; answers Sentinel could not meter are refused up front;
method-override headers never reach the provider."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.api.conftest import Gateway
from tests.support.accounts import set_user_plan
from tests.support.attack import ledger_rows, wait_for


def last_upstream_request(gw: Gateway) -> dict:
    base = str(gw.settings.openai_api_url).removesuffix("/v1")
    return httpx.get(base + "/__mock/last_request", timeout=5).json()


def test_a_request_the_provider_refuses_counts_as_a_request_and_is_recorded(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory()
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1m"))
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with gw.client() as http:
        refused = http.post("/v1/chat/completions", json=chat, headers={"X-Mock-Status": "400"})
        after = http.post("/v1/chat/completions", json=chat)
        unavailable = http.post("/v1/chat/completions", json=chat, headers={"X-Mock-Status": "503"})
        last = http.post("/v1/chat/completions", json=chat)
    assert refused.status_code == 400  # the provider's own 400, relayed
    # The refused call reached the company's account: it used one of the three requests...
    assert refused.headers["x-ratelimit-remaining"] == "2" and after.headers["x-ratelimit-remaining"] == "1"
    # A provider failure (5xx) served nothing: its reservation is given back.
    assert unavailable.status_code == 502 and last.headers["x-ratelimit-remaining"] == "0"
    # ...and it is in the ledger with its status and no tokens.
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)
    statuses = sorted((r["status"], r["input_tokens"], r["output_tokens"]) for r in ledger_rows(gw.settings.database_url, "alice"))
    assert [s[0] for s in statuses] == [200, 200, 400] and statuses[2] == (400, 0, 0)


def test_background_responses_are_refused_before_admission(gateway: Gateway) -> None:
    with gateway.client() as http:
        r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "background": True})
        seen = last_upstream_request(gateway)
    assert r.status_code == 400 and r.json()["error"]["details"]["param"] == "background"
    assert "x-ratelimit-remaining" not in r.headers
    assert seen.get("body", {}).get("background") is not True


def test_method_override_headers_are_not_forwarded(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(passthrough="/v1/moderations")
    with gw.client() as http:
        r = http.post("/v1/moderations", json={"input": "x"},
                      headers={"X-HTTP-Method-Override": "GET", "X-Method-Override": "DELETE", "X-HTTP-Method": "PUT"})
        seen = last_upstream_request(gw)
    assert r.status_code == 200 and seen["method"] == "POST"
    assert not {"x-http-method-override", "x-method-override", "x-http-method"} & set(seen["headers"])
