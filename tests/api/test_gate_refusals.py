"""Calls the provider refuses still count; answers Sentinel could not meter are refused up front;
method-override headers never reach the provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.routing.test_failover_http import per_minute_limited
from tests.support.accounts import set_user_plan
from tests.support.attack import ledger_rows, wait_for
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream


def last_upstream_request(gw: Gateway) -> dict:
    base = str(gw.settings.openai_api_url).removesuffix("/v1")
    return httpx.get(base + "/__mock/last_request", timeout=5).json()


def test_a_request_the_provider_refuses_counts_as_a_request_and_is_recorded(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory()
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1d"))
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


HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"


def _messages(model: str, *, stream: bool = False) -> Callable[[int | None], tuple[str, dict[str, Any], dict[str, str]]]:
    """A /v1/messages call whose upstream answers `status` (None: served); the failure is forced by the
    mock's `#mock:status=` directive, which also reaches a translated (OpenAI-format) provider."""
    def call(status: int | None) -> tuple[str, dict[str, Any], dict[str, str]]:
        text = "hi" if status is None else f"hi #mock:status={status}"
        body: dict[str, Any] = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]}
        return "/v1/messages", {**body, "stream": True} if stream else body, {}
    return call


def _count_tokens(status: int | None) -> tuple[str, dict[str, Any], dict[str, str]]:
    body = {"model": HAIKU, "messages": [{"role": "user", "content": "count me"}]}
    return "/v1/messages/count_tokens", body, {} if status is None else {"X-Mock-Status": str(status)}


def _chat(model: str, *, stream: bool = False) -> Callable[[int | None], tuple[str, dict[str, Any], dict[str, str]]]:
    def call(status: int | None) -> tuple[str, dict[str, Any], dict[str, str]]:
        text = "hi" if status is None else f"hi #mock:status={status}"
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
        return "/v1/chat/completions", {**body, "stream": True} if stream else body, {}
    return call


def _native(status: int | None) -> tuple[str, dict[str, Any], dict[str, str]]:
    text = "hi" if status is None else f"hi #mock:status={status}"
    return "/native/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}, {}


Build = Callable[[int | None], tuple[str, dict[str, Any], dict[str, str]]]
REFUSAL_CASES: dict[str, tuple[Build, str, str, str | None]] = {
    # name: (request builder, endpoint recorded, model recorded, native tiers provider or None)
    "messages": (_messages(HAIKU), "messages", HAIKU, None),
    "messages-stream": (_messages(HAIKU, stream=True), "messages", HAIKU, None),
    "count_tokens": (_count_tokens, "messages/count_tokens", HAIKU, None),
    "messages-translated": (_messages(MINI), "messages", MINI, None),
    "messages-translated-stream": (_messages(MINI, stream=True), "messages", MINI, None),
    "chat-translated": (_chat(HAIKU), "chat", HAIKU, None),
    "chat-translated-stream": (_chat(HAIKU, stream=True), "chat", HAIKU, None),
    "native": (_native, "native", MINI, "openai"),
}


@pytest.mark.parametrize("case", list(REFUSAL_CASES))
def test_provider_refusals_count_on_every_surface_and_failures_give_back(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, case: str,
) -> None:
    """The /v1/messages surface (relayed, streamed, count_tokens), translated chat both ways and the
    native API: a 400 from the provider costs one request and leaves one record (its status, no
    tokens); a 503 or a 429 from the provider gives the reservation back and records nothing."""
    build, endpoint, model, native = REFUSAL_CASES[case]
    extra: dict[str, Any] = {"providers_file": tiers_file(tmp_path, native)} if native else {}
    gw = gateway_factory(usage_flush_interval_seconds=0.1, **extra)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=4/1d"))
    # The native API's tier router puts a failed provider in backoff (its next call would be refused
    # before admission): there the 503 comes last and a /v1 call (same quota) reads what was left.
    failures = (503,) if native else (503, 429)
    probe = _chat(MINI) if native else build
    with gw.client() as http:
        path, body, headers = build(400)
        refused = http.post(path, json=body, headers=headers)
        failed = [http.post(p, json=b, headers=h) for p, b, h in map(build, failures)]
        path_, body, headers = probe(None)
        served = http.post(path_, json=body, headers=headers)
    assert refused.status_code == 400, refused.text
    error = refused.json()
    if path.startswith("/v1/messages"):  # the provider's refusal, relayed in the Anthropic shape
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
    else:
        assert error["error"]["type"] == "invalid_request_error", error
    assert [r.status_code for r in failed] == [{503: 502, 429: 429}[s] for s in failures]
    assert served.status_code == 200, served.text
    # The refused call used one of the four requests; the failed and the limited one gave theirs back.
    assert refused.headers["x-ratelimit-remaining"] == "3"
    assert served.headers["x-ratelimit-remaining"] == "2"
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) >= 2)
    time.sleep(0.3)  # a wrongly recorded failure would have been flushed by now
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert sorted(r["status"] for r in rows) == [200, 400]
    (row,) = [r for r in rows if r["status"] == 400]
    assert (row["endpoint"], row["model"], row["input_tokens"], row["output_tokens"]) == (endpoint, model, 0, 0)


KEY_CASES: dict[str, tuple[Build, str, str, str | None]] = {
    "chat": (_chat(MINI), "chat", MINI, None),
    "messages": (_messages(HAIKU), "messages", HAIKU, None),
    "chat-translated": (_chat(HAIKU), "chat", HAIKU, None),
    "native": (_native, "native", MINI, "openai"),
}


@pytest.mark.parametrize("case", list(KEY_CASES))
def test_a_403_a_client_causes_counts_a_refusal_of_the_key_gives_back(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, case: str,
) -> None:
    """A 403 refuses what was asked (OpenAI's and Anthropic's `permission_error`: a model or feature
    the key may not use, a client's beta switch), which a client causes at will: it reached the
    company's account and counts one request, recorded with its status, as any refusal. It was given
    back as a refusal of Sentinel's own key is (a 401 typed `authentication_error` or coded
    `invalid_api_key`, which stays free: the operator's to fix), so it could be repeated without end,
    past a plan's request limit."""
    build, endpoint, model, native = KEY_CASES[case]
    extra: dict[str, Any] = {"providers_file": tiers_file(tmp_path, native)} if native else {}
    gw = gateway_factory(usage_flush_interval_seconds=0.1, **extra)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=4/1d"))
    with gw.client() as http:
        answers = [http.post(p, json=b, headers=h) for p, b, h in map(build, (403, 401))]
        path, body, headers = _chat(MINI)(None)  # (a key refusal puts the native tier's model in backoff)
        served = http.post(path, json=body, headers=headers)
    assert [r.status_code for r in answers] == [502, 502], [r.text for r in answers]
    assert served.status_code == 200, served.text
    assert served.headers["x-ratelimit-remaining"] == "2"  # the 403's request and this one's
    # (records are stored in the order of their requests: the 401's, had it one, before the 200's)
    assert wait_for(lambda: 200 in {r["status"] for r in ledger_rows(gw.settings.database_url, "alice")})
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert sorted(r["status"] for r in rows) == [200, 403]
    (row,) = [r for r in rows if r["status"] == 403]
    assert (row["endpoint"], row["model"], row["input_tokens"], row["output_tokens"]) == (endpoint, model, 0, 0)


def test_a_request_too_large_for_the_providers_minute_counts_as_its_refusal(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """OpenAI refuses a request whose input and `max_tokens` pass the account's tokens-per-minute limit
    with a 429 ("Request too large"): a refusal of that request, which a client makes at will (it names
    the cap), not of the traffic. It counts one request with no tokens and is recorded with its
    status, as any provider refusal; given back, it was free and repeatable past any request limit."""
    with serving(per_minute_limited(30_000)) as upstream:
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", usage_flush_interval_seconds=0.1)
        asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=3/1d"))
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        with gw.client() as http:
            refused = http.post("/v1/chat/completions", json={**chat, "max_tokens": 50_000})
            served = http.post("/v1/chat/completions", json={**chat, "max_tokens": 10})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "provider_request_too_large", refused.text
    assert served.status_code == 200 and served.headers["x-ratelimit-remaining"] == "1", served.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = sorted((r["status"], r["input_tokens"], r["output_tokens"]) for r in ledger_rows(gw.settings.database_url, "alice"))
    assert rows[0][0] == 200 and rows[1] == (429, 0, 0)


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


# Refusals of Sentinel's own setup, as an OpenAI-compatible provider answers them (the mock's knobs):
SETUP_REFUSALS = {
    "out-of-credit": "#mock:status=402",  # OpenRouter's and others' 402: the account's billing
    "region": "#mock:status=403 #mock:error_code=unsupported_country_region_territory",  # the host's region
    # Gemini's OpenAI-compatible endpoint: a list of one Google error, its ErrorInfo reason the key's
    "google-blocked": "#mock:status=403 #mock:error_shape=google_list #mock:error_code=API_KEY_SERVICE_BLOCKED",
    "google-invalid": "#mock:status=400 #mock:error_shape=google #mock:error_code=API_KEY_INVALID",
}


@pytest.mark.parametrize("fault", list(SETUP_REFUSALS))
def test_a_refusal_of_sentinels_own_setup_is_no_users_cost_and_a_provider_failure(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, fault: str,
) -> None:
    """A provider refusing Sentinel's account or key for what no request can change — out of credit
    (402), the host's region blocked, a Google key blocked or invalid — refuses every request until an
    operator fixes it: on the /v1 surface and the native API alike it is 502 `provider_auth_error`
    (the provider's text, which names the account, never shown), its reservation given back (no
    request counted, no record), and a provider failure (the model in backoff). It was charged as
    a refusal of the request (a 402 relayed as the provider's own), every user paying for the
    operator's setup."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1, providers_file=tiers_file(tmp_path, "openai"))
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=4/1d"))
    text = f"hi {SETUP_REFUSALS[fault]}"
    with gw.client() as http:
        refused = [  # (the native API first: its tier's one model is in backoff after this)
            http.post("/native/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]}),
            http.post("/v1/chat/completions", json={"model": MINI, "messages": [{"role": "user", "content": text}]}),
            http.post("/v1/messages", json={"model": MINI, "max_tokens": 20,
                                            "messages": [{"role": "user", "content": text}]}),
        ]
        backoff = gw.read_stored(ProviderHealth.key("openai", MINI))  # (a success, below, clears it)
        path, body, headers = _chat(MINI)(None)
        served = http.post(path, json=body, headers=headers)
    assert [r.status_code for r in refused] == [502, 502, 502], [r.text for r in refused]
    codes = [r.json()["error"].get("code") for r in refused]
    assert codes == ["provider_auth_error", "provider_auth_error", None], [r.text for r in refused]
    assert all(r.json()["error"]["type"] in {"upstream_error", "api_error"} for r in refused)
    assert not any(word in r.text for r in refused for word in ("credits", "permission", "Mock upstream"))
    assert served.status_code == 200, served.text
    assert served.headers["x-ratelimit-remaining"] == "3"  # only the served request counted
    assert backoff is not None  # a provider failure
    assert wait_for(lambda: ledger_rows(gw.settings.database_url, "alice"))
    time.sleep(0.3)  # a wrongly recorded refusal would have been flushed by now
    assert [r["status"] for r in ledger_rows(gw.settings.database_url, "alice")] == [200]


# Anthropic answers an account out of credit, or past the monthly spend limit its console sets, with
# a 400 `invalid_request_error` (no 402), on /v1/messages and count_tokens alike.
ANTHROPIC_ACCOUNT_REFUSALS = {
    "out-of-credit": "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
                     "to upgrade or purchase credits.",
    "spend-limit": "You have reached your specified API usage limits. You will regain access on 2026-01-01 at "
                   "00:00 UTC.",
}


@pytest.mark.parametrize("fault", list(ANTHROPIC_ACCOUNT_REFUSALS))
def test_anthropics_400_refusing_the_account_is_no_users_cost_and_a_provider_failure(
    gateway_factory: Callable[..., Gateway], fault: str,
) -> None:
    """Anthropic's own answer for the company's account out of credit or past its spend limit is a 400
    `invalid_request_error`: it was relayed to the user as a refusal of their request (the account's
    billing state in its message, "go to Plans & Billing"), charged to them, and the model stayed in
    service for everyone (no backoff, an alias never moved on). It is now what a 402 is — with a
    client's beta switch too (Claude Code always sends one; no beta runs an account dry): 502
    (Anthropic's `api_error` shape, a generic message), nothing charged, the model in backoff."""
    upstream = ScriptedUpstream()
    upstream.json({"type": "error", "error": {"type": "invalid_request_error",
                                              "message": ANTHROPIC_ACCOUNT_REFUSALS[fault]}}, status=400)
    with serving(upstream) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url)
        asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=4/1d"))
        with pytest.raises(anthropic.APIStatusError) as refused:
            gw.anthropic().messages.create(model=HAIKU, max_tokens=20, messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
        backoff = gw.read_stored(ProviderHealth.key("anthropic", HAIKU))
        with gw.client() as http:  # (the session's mock serves the OpenAI-format model)
            served = http.post("/v1/messages", json={"model": MINI, "max_tokens": 20,
                                                     "messages": [{"role": "user", "content": "hi"}]})
    assert refused.value.status_code == 502, refused.value.response.text
    body = refused.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert not any(word in refused.value.response.text.lower() for word in ("credit", "billing", "usage limits"))
    assert served.status_code == 200, served.text
    assert served.headers["x-ratelimit-remaining"] == "3"  # only the served request counted
    assert backoff is not None  # a provider failure
    assert wait_for(lambda: ledger_rows(gw.settings.database_url, "alice"))
    assert [r["status"] for r in ledger_rows(gw.settings.database_url, "alice")] == [200]
