"""Provider failures over HTTP: retry once before the first byte, never after; keep vs migrate.

Mock fault directives apply to every provider (they travel in the message), so provider-specific
failures come from a provider pointed at a closed port, or at a mock upstream the test stops.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sentinel.mock.app import create_mock_app
from sentinel.providers.http import create_session
from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.routing.helpers import (
    AN_HAIKU,
    AN_SONNET,
    OA_4O,
    OA_MINI,
    URL,
    chat,
    entry,
    served,
    start,
    stored,
)
from tests.support.accounts import create_key
from tests.support.metrics import metric
from tests.support.servers import ServerThread, free_port, serving
from tests.support.waiting import wait_for

DEAD = ("dead", "gpt-4o-mini")


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused


def sse(http: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    with http.stream("POST", URL, json={**body, "stream": True}) as r:
        r.read()
    events = [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in r.text.splitlines()
        if line.startswith("data: ")
    ]
    return r, events


@pytest.mark.parametrize("mode", ["plain", "stream", "conversation"])
def test_a_failed_first_choice_is_retried_once_on_a_healthy_candidate(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, mode: str
) -> None:
    # The dead provider is ten times cheaper, so it is nearly always the first choice until it fails.
    tiers = {"simple": [entry(DEAD, 1), entry(OA_MINI, 10)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers, {"dead": dead_url()})
    with gw.client() as http:
        for i in range(40):
            if mode == "stream":
                r, events = sse(http, {"messages": [{"role": "user", "content": f"hi {i}"}]})
                assert events[-1] == "[DONE]" and "error" not in events[-2]
            else:
                r = chat(http, f"hi {i}", conv=f"conv-{i}" if mode == "conversation" else None)
            assert served(r)[1:] == OA_MINI
            if mode == "conversation":
                session = stored(gw, f"conv-{i}")
                assert session is not None and (session["provider"], session["model"]) == OA_MINI
            if metric(gw.url, "sentinel_model_selections_total", provider="dead"):
                break
        else:
            pytest.fail("the dead provider was never chosen")
        # Once it failed it is in backoff: never chosen again.
        for i in range(10):
            assert served(chat(http, f"after {i}"))[1:] == OA_MINI
    assert metric(gw.url, "sentinel_model_selections_total", provider="dead") == 1
    assert metric(gw.url, "sentinel_provider_health", provider="dead", model="gpt-4o-mini") == 0
    if mode == "conversation":
        assert metric(gw.url, "sentinel_sessions_total", event="migrated") is None


def test_when_both_candidates_fail_the_error_reaches_the_client(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    tiers = {"simple": [entry(("dead1", "m")), entry(("dead2", "m"))]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers, {"dead1": dead_url(), "dead2": dead_url()})
    with gw.client() as http:
        r = chat(http, "anyone?")
        assert r.status_code == 502, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_unreachable" and error["provider"] in {"dead1", "dead2"}
        again = chat(http, "still nobody?")  # both in backoff now
        assert again.status_code == 503 and again.json()["error"]["code"] == "tier_unavailable"
        assert 0 < int(again.headers["retry-after"]) <= 30
    for name in ("dead1", "dead2"):
        assert metric(gw.url, "sentinel_model_selections_total", provider=name) == 1
        assert metric(gw.url, "sentinel_provider_health", provider=name, model="m") == 0


def choose_dead_first(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the native router draw DEAD whenever it is healthy (else as it would)."""
    selector = gw.runtime.native.router.selector
    draw = selector.choose
    monkeypatch.setattr(selector, "choose", lambda healthy: next(
        (e for e in healthy if (e.provider, e.model) == DEAD), None) or draw(healthy))


def test_a_retry_that_answers_clears_its_models_past_failures(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retry's model had failed four times in a row (another process saw it) and its backoff ran
    out: once it answers a retry it is healthy again, as when it answers as a first choice. Its
    record was kept, so its next failure took it out for 300 s instead of 30 s. (Another process's
    trial of it is under way: else this request would be its trial, not a retry.)"""
    tiers = {"simple": [entry(DEAD), entry(OA_MINI)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers, {"dead": dead_url()})
    choose_dead_first(gw, monkeypatch)
    lapsed = {"failures": 4, "until_ts": time.time() - 1, "backoff": 240.0, "trial_until": time.time() + 3600,
              "trial_id": "another-process"}
    gw.write_stored(ProviderHealth.key(*OA_MINI), json.dumps(lapsed).encode(), 3600)
    with gw.client() as http:
        assert served(chat(http, "hi"))[1:] == OA_MINI
    assert gw.read_stored(ProviderHealth.key(*OA_MINI)) is None
    assert gw.read_stored(ProviderHealth.key(*DEAD)) is not None  # the first choice failed: in backoff


def test_one_users_burst_of_failing_calls_is_one_failure(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """`/v1` calls go to a model in backoff all the same: five in a row that the provider answers 429
    (one user's volume against the company's rate limit) each doubled its backoff, and the native
    tier it serves answered 503 for the next 240 s, to everyone. It is one failure: 30 s."""
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI)]})
    with gw.client() as http:
        for i in range(5):
            r = http.post("/v1/chat/completions", json={
                "model": OA_MINI[1], "messages": [{"role": "user", "content": f"burst {i} #mock:status=429"}],
            })
            assert r.status_code == 429 and r.json()["error"]["code"] == "provider_rate_limited", r.text
        refused = chat(http, "anyone?")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "tier_unavailable", refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 30
    state = gw.read_stored(ProviderHealth.key(*OA_MINI))
    assert state is not None and json.loads(state)["failures"] == 1


def test_one_users_500s_put_no_model_in_backoff_until_another_user_meets_one(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """A backend that answers 500 for what a client sent (an `image_url` it cannot fetch) let one
    user, at will and for free (the reservation is given back), put its model in backoff: the
    native tier it serves answered 503 to everyone. A 5xx other than 503/529 now counts only once a
    second user meets one within a minute; a provider that is really failing fails them all."""
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI)]})
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    failing = {"model": OA_MINI[1], "messages": [{"role": "user", "content": "my fault #mock:status=500"}]}
    with gw.client() as alice, gw.client(bob_key) as bob:
        for _ in range(3):
            r = alice.post("/v1/chat/completions", json=failing)
            assert r.status_code == 502 and r.json()["error"]["code"] == "provider_error", r.text
        native = chat(alice, "and now?")
        assert served(native)[1:] == OA_MINI  # alice's own 500s alone: still in service
        assert gw.read_stored(ProviderHealth.key(*OA_MINI)) is None
        assert chat(bob, "mine?", stream=True).status_code == 200
        r = bob.post("/v1/chat/completions", json=failing)
        assert r.status_code == 502 and r.json()["error"]["code"] == "provider_error", r.text
        state = gw.read_stored(ProviderHealth.key(*OA_MINI))  # a second user met one: the model is out,
        assert state is not None and (json.loads(state)["failures"], json.loads(state)["soft"]) == (1, True)
        # ... softly: two keys of one person meet the rule, so it steers, never refuses (no other model here).
        assert served(chat(bob, "anyone?"))[1:] == OA_MINI


@pytest.mark.parametrize(("status", "asked", "backoff"), [(429, 120, 120), (503, 200, 200), (503, 5, 30),
                                                      (429, 86400, 300)])
def test_a_providers_retry_after_is_how_long_its_model_stays_out(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    status: int, asked: int, backoff: int,
) -> None:
    """A provider that answers 429 or 503 with `Retry-After: 120` was tried again by everyone after
    30 s; one that asked for 5 s was left out for 30 s, as now (no shorter: the next request decides
    for all), and one that asked for a day for 300 s (the next failure reads a new one)."""
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI)]})
    directive = f"#mock:status={status} #mock:retry_after={asked}"
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json={
            "model": OA_MINI[1], "messages": [{"role": "user", "content": f"busy? {directive}"}],
        })
        assert r.status_code == (429 if status == 429 else 502), r.text
        native = chat(http, f"and natively? {directive}")  # in backoff: refused before any call
        assert native.status_code == 503 and native.json()["error"]["code"] == "tier_unavailable", native.text
        assert backoff - 10 < int(native.headers["retry-after"]) <= backoff
    state = gw.read_stored(ProviderHealth.key(*OA_MINI))
    assert state is not None and (json.loads(state)["failures"], json.loads(state)["backoff"]) == (1, backoff)


def answering(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Starlette:
    """An upstream that answers every request with `status`, `body` and `headers`."""

    async def answer(request: Request) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=headers)

    return Starlette(routes=[Route(path, answer, methods=["POST"]) for path in ("/v1/chat/completions", "/v1/responses")])


def test_a_native_retry_records_the_wait_its_first_choice_asked_for(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tier's first choice answers 503 asking for 200 s: it is out that long (it was 30 s), and
    the request is answered by the tier's other model."""
    busy = answering(503, {"error": {"message": "overloaded", "type": "server_error"}}, {"Retry-After": "200"})
    with serving(busy) as upstream:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(DEAD), entry(OA_MINI)]},
                   {"dead": upstream.url + "/v1"})
        choose_dead_first(gw, monkeypatch)
        with gw.client() as http:
            assert served(chat(http, "hi"))[1:] == OA_MINI
    state = gw.read_stored(ProviderHealth.key(*DEAD))
    assert state is not None and json.loads(state)["backoff"] == 200


REVOKED = {"error": {"message": "Incorrect API key provided: sk-test. You can find your API key at ...",
                     "type": "invalid_request_error", "code": "invalid_api_key"}}
NOT_ALLOWED = {"error": {"message": "Your API key sk-test does not have permission to use the specified resource.",
                         "type": "permission_error"}}


def test_a_revoked_provider_key_puts_its_model_in_backoff_and_the_tier_answers(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A provider that refuses Sentinel's key (revoked, mistyped) fails every request until an
    operator fixes it: its 401 neither counted nor was retried, so that provider's share of the tier's
    requests failed with 502 for as long. It is a provider failure: the request is answered by the
    tier's other model, and the provider's model is out (no request waits on it meanwhile)."""
    with serving(answering(401, REVOKED)) as upstream:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(DEAD), entry(OA_MINI)]},
                   {"dead": upstream.url + "/v1"})
        choose_dead_first(gw, monkeypatch)
        with gw.client() as http:
            for i in range(3):
                assert served(chat(http, f"hi {i}"))[1:] == OA_MINI
    assert metric(gw.url, "sentinel_model_selections_total", provider="dead") == 1  # then in backoff
    state = gw.read_stored(ProviderHealth.key(*DEAD))
    assert state is not None and json.loads(state)["failures"] == 1


def test_when_every_candidates_key_is_refused_the_last_refusal_is_the_answer(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    with serving(answering(401, REVOKED)) as one, serving(answering(401, REVOKED)) as two:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(("dead1", "m")), entry(("dead2", "m"))]},
                   {"dead1": one.url + "/v1", "dead2": two.url + "/v1"})
        with gw.client() as http:
            r = chat(http, "anyone?")
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "provider_auth_error" and error["provider"] in {"dead1", "dead2"}
    assert "sk-test" not in r.text and "Incorrect" not in r.text  # the provider's text is never shown
    for name in ("dead1", "dead2"):  # both tried, both in backoff
        assert metric(gw.url, "sentinel_model_selections_total", provider=name) == 1
        assert gw.read_stored(ProviderHealth.key(name, "m")) is not None


def test_a_403_refusing_what_was_asked_is_no_provider_failure(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 403 `permission_error` refuses what this request asked for (a model or feature the key may
    not use): a client can cause one at will, so it neither counts nor is sent elsewhere."""
    with serving(answering(403, NOT_ALLOWED)) as upstream:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(DEAD), entry(OA_MINI)]},
                   {"dead": upstream.url + "/v1"})
        choose_dead_first(gw, monkeypatch)
        with gw.client() as http:
            r = chat(http, "hi")
    assert r.status_code == 502 and r.json()["error"]["code"] == "provider_auth_error", r.text
    assert "sk-test" not in r.text and "permission" not in r.text
    assert gw.read_stored(ProviderHealth.key(*DEAD)) is None
    assert metric(gw.url, "sentinel_model_selections_total", provider="openai") is None


def test_a_busy_connection_pool_puts_no_model_in_backoff(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every upstream connection of the process busy (here the pool's one, held by a slow call): a
    request that waited for one past the connect timeout was a provider failure — both models of the
    tier went into backoff for everyone (503 `tier_unavailable` for 30 s) while their provider was
    fine. It is this server's load: 503 `overloaded`, and no model's health changes."""
    import sentinel.wiring

    monkeypatch.setattr(sentinel.wiring, "create_session", functools.partial(create_session, limit=1))
    gw = start(gateway_factory, tmp_path, None, {"simple": [entry(OA_MINI), entry(AN_HAIKU)]},
               upstream_connect_timeout_seconds=0.3)
    log = gw.settings.anthropic_api_url + "/__mock/requests"  # the mock upstream's request log
    before = len(httpx.get(log).json()["data"])
    with gw.client() as http, gw.client() as other, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, other, "slow #mock:latency_ms=4000")
        assert wait_for(lambda: len(httpx.get(log).json()["data"]) > before)  # it holds the one connection
        busy = chat(http, "and me?")
        assert served(slow.result())
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "overloaded", busy.text
    assert busy.headers["retry-after"] == "1"
    for pair in (OA_MINI, AN_HAIKU):
        assert gw.read_stored(ProviderHealth.key(*pair)) is None


def test_a_retry_skips_a_candidate_that_cannot_carry_the_request(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A conversation opened by the assistant (which Anthropic refuses) drawn onto an OpenAI-format
    model that fails: the tier's other candidate, Claude, cannot carry it. The provider's failure is
    the answer, not a 400 blaming the client's valid request (once the retry's translation error)."""
    tiers = {"simple": [entry(DEAD), entry(AN_HAIKU)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers, {"dead": dead_url()})
    choose_dead_first(gw, monkeypatch)
    opened_by_the_assistant = [{"role": "assistant", "content": "How can I help?"}, {"role": "user", "content": "hi"}]
    with gw.client() as http:
        r = chat(http, messages=opened_by_the_assistant)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_unreachable" and r.json()["error"]["provider"] == "dead"


def test_no_retry_after_the_first_byte(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI), entry(AN_HAIKU)]})
    with gw.client() as http:
        r, events = sse(http, {"messages": [{"role": "user", "content": "a b c d e f g h #mock:disconnect_after=3"}]})
    assert r.status_code == 200
    assert "[DONE]" not in events
    assert events[-1]["error"]["type"] == "stream_error"
    # One upstream stream, not a second one spliced in (none of its chunks may have been read: the
    # connection's failure can reach Sentinel with the chunks before it, which aiohttp then drops).
    assert len({e["id"] for e in events[:-1]}) <= 1
    assert metric(gw.url, "sentinel_model_selections_total", tier="simple") == 1
    provider, model = r.headers["x-sentinel-provider"], r.headers["x-sentinel-model"]
    # The provider answered before failing: only failures before the first byte count toward backoff.
    assert metric(gw.url, "sentinel_provider_health", provider=provider, model=model) is None


@pytest.fixture
def flaky() -> Iterator[ServerThread]:
    """A mock upstream of this test's own, so the test can stop it mid-run."""
    server = ServerThread(create_mock_app()).start()
    yield server
    server.stop()


def flaky_gateway(
    factory: Callable[..., Gateway], tmp_path: Path, redis_url: str | None, flaky: ServerThread, **settings: Any
) -> Gateway:
    """Sessions start on `flaky` (the only simple model) and upgrade to it in `complex` (preferred provider)."""
    tiers = {"simple": [entry(("flaky", "gpt-4o-mini"))],
             "complex": [entry(("flaky", "gpt-4o")), entry(OA_4O), entry(AN_SONNET)]}
    return start(factory, tmp_path, redis_url, tiers, {"flaky": flaky.url + "/v1"}, debug=True, **settings)


def bind_to_flaky(http: httpx.Client, conv: str) -> None:
    assert served(chat(http, "start", conv=conv))[1] == "flaky"
    assert served(chat(http, "upgrade", conv=conv, tier="complex")) == ("complex", "flaky", "gpt-4o")


def test_keep_returns_the_provider_error(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, flaky: ServerThread
) -> None:
    gw = flaky_gateway(gateway_factory, tmp_path, backend_url, flaky)
    with gw.client() as http:
        bind_to_flaky(http, "conv-keep")
        flaky.stop()
        for _ in range(2):  # in backoff after the first: keep still sends the conversation to its model
            r = chat(http, "are you there?", conv="conv-keep")
            assert r.status_code == 502, r.text
            assert r.json()["error"]["provider"] == "flaky"
        health = {(c["provider"], c["model"]): c for c in http.get("/debug/health").json()["candidates"]}
        assert health[("flaky", "gpt-4o")]["failures"] == 1  # the second, in its backoff, left it as it was
        assert metric(gw.url, "sentinel_provider_health", provider="flaky", model="gpt-4o") == 0
        session = stored(gw, "conv-keep")
        assert session is not None and (session["provider"], session["model"]) == ("flaky", "gpt-4o")
        back = ServerThread(create_mock_app(), port=flaky.port).start()  # the provider recovers
        try:
            # Still in backoff, but keep sends the conversation to its model, whose success clears it.
            assert served(chat(http, "back?", conv="conv-keep")) == ("complex", "flaky", "gpt-4o")
        finally:
            back.stop()
        health = {(c["provider"], c["model"]): c for c in http.get("/debug/health").json()["candidates"]}
    assert health[("flaky", "gpt-4o")]["failures"] == 0
    assert metric(gw.url, "sentinel_provider_health", provider="flaky", model="gpt-4o") == 1
    assert metric(gw.url, "sentinel_sessions_total", event="migrated") is None


def test_migrate_moves_the_session_to_a_healthy_model_of_its_tier(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, flaky: ServerThread
) -> None:
    gw = flaky_gateway(gateway_factory, tmp_path, backend_url, flaky, session_failover="migrate")
    with gw.client() as http:
        bind_to_flaky(http, "conv-a")
        bind_to_flaky(http, "conv-b")
        flaky.stop()
        # conv-a's model fails now: the request is retried elsewhere and the session follows.
        tier, provider, model = served(chat(http, "still there?", conv="conv-a"))
        assert tier == "complex" and (provider, model) in {OA_4O, AN_SONNET}
        # conv-b's model is now in backoff: moved before any call to it (its failure count stays 1).
        tier_b, provider_b, model_b = served(chat(http, "hello?", conv="conv-b"))
        assert tier_b == "complex" and (provider_b, model_b) in {OA_4O, AN_SONNET}
        health = {(c["provider"], c["model"]): c for c in http.get("/debug/health").json()["candidates"]}
        assert served(chat(http, "and now?", conv="conv-a")) == (tier, provider, model)
    assert health[("flaky", "gpt-4o")]["failures"] == 1
    for conv, pair in (("conv-a", (provider, model)), ("conv-b", (provider_b, model_b))):
        session = stored(gw, conv)
        assert session is not None
        assert (session["tier"], session["provider"], session["model"], session["migrations"]) == ("complex", *pair, 1)
    assert metric(gw.url, "sentinel_sessions_total", event="migrated") == 2
    assert metric(gw.url, "sentinel_provider_health", provider="flaky", model="gpt-4o") == 0


@pytest.mark.parametrize("switch", ["openai-beta", "anthropic-beta"])
def test_a_key_refusal_of_a_request_with_a_clients_beta_switch_is_no_provider_failure(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, switch: str
) -> None:
    """A client's `openai-beta` / `anthropic-beta` goes to the provider and can change how it reads
    the request (Anthropic's OAuth beta expects another credential than Sentinel's key): a 401 after
    one refused that request, not the key. Counted, any user could take the model out of service for
    everyone at will; the same refusal without a client's switch counts."""
    with serving(answering(401, REVOKED)) as upstream:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI)]},
                   openai_api_url=upstream.url + "/v1")
        body = {"model": OA_MINI[1], "messages": [{"role": "user", "content": "hi"}]}
        with gw.client() as http:
            switched = http.post("/v1/chat/completions", json=body, headers={switch: "some-beta-2025-01-01"})
            assert switched.status_code == 502 and switched.json()["error"]["code"] == "provider_auth_error"
            assert gw.read_stored(ProviderHealth.key(*OA_MINI)) is None
            plain = http.post("/v1/chat/completions", json=body)
    assert plain.status_code == 502 and plain.json()["error"]["code"] == "provider_auth_error", plain.text
    state = gw.read_stored(ProviderHealth.key(*OA_MINI))
    assert state is not None and json.loads(state)["failures"] == 1


def test_a_key_refusal_of_a_beta_response_is_no_provider_failure(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """The openai SDK's beta Responses (`POST /v1/responses?beta=true`) is a client's beta switch as
    `openai-beta` is: a 401 to it refused that request, not Sentinel's key — counted, any user could
    take the model out of service for everyone at will. The same refusal without the switch counts."""
    with serving(answering(401, REVOKED)) as upstream:
        gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI)]},
                   openai_api_url=upstream.url + "/v1")
        body = {"model": OA_MINI[1], "input": "hi"}
        with gw.client() as http:
            switched = http.post("/v1/responses?beta=true", json=body)
            assert switched.status_code == 502 and switched.json()["error"]["code"] == "provider_auth_error"
            assert gw.read_stored(ProviderHealth.key(*OA_MINI)) is None
            plain = http.post("/v1/responses", json=body)
    assert plain.status_code == 502 and plain.json()["error"]["code"] == "provider_auth_error", plain.text
    state = gw.read_stored(ProviderHealth.key(*OA_MINI))
    assert state is not None and json.loads(state)["failures"] == 1


def test_an_unreadable_health_entry_is_a_healthy_model_not_a_500(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A health entry that is not the JSON the health scripts write (set by hand, or by an older
    version) made every request of its tier a 500. It counts as healthy (as with the store down),
    and a failure over it is recorded as a first failure."""
    tiers = {"simple": [entry(DEAD), entry(OA_MINI)]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers, {"dead": dead_url()})
    choose_dead_first(gw, monkeypatch)
    for pair in (DEAD, OA_MINI):
        gw.write_stored(ProviderHealth.key(*pair), b"not json {", 3600)
    with gw.client() as http:
        assert served(chat(http, "hi"))[1:] == OA_MINI  # DEAD drawn first (healthy), failed, retried
    state = gw.read_stored(ProviderHealth.key(*DEAD))
    assert state is not None and json.loads(state)["failures"] == 1 and json.loads(state)["backoff"] == 30
    with gw.client() as http:  # DEAD in backoff now; OA_MINI's entry still unreadable, still healthy
        assert served(chat(http, "again"))[1:] == OA_MINI


TOO_LARGE = {"error": {
    "message": "Request too large for m in organization org-0123abc on tokens per min (TPM): Limit 30000, "
               "Requested 50012. The input or output tokens must be reduced in order to run successfully. "
               "Visit https://platform.openai.com/account/rate-limits to learn more.",
    "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}


def per_minute_limited(limit: int) -> Starlette:
    """An OpenAI-format upstream whose account takes `limit` tokens a minute: a request asking for more
    output than that is refused as OpenAI does (429, "Request too large"); any other is answered."""

    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("max_tokens", 0) > limit:
            return JSONResponse(TOO_LARGE, status_code=429)
        return JSONResponse({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    return Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_too_large_for_the_providers_minute_puts_no_model_in_backoff(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, stream: bool,
) -> None:
    """OpenAI refuses a request whose input and `max_tokens` pass the account's tokens-per-minute limit
    with a 429 ("Request too large"). A user names any `max_tokens`: one such request put the tier's
    first model in backoff and its retry the other, and every user of the tier got 503 for 30 s —
    again each time the backoff ran out, for free (a 429 is given back). It is the request's refusal:
    no model's failure, answered 429 `provider_request_too_large` that no wait helps."""
    with serving(per_minute_limited(30_000)) as upstream:
        tiers = {"simple": [entry(("big1", "m")), entry(("big2", "m"))]}
        gw = start(gateway_factory, tmp_path, backend_url, tiers, {"big1": upstream.url + "/v1", "big2": upstream.url + "/v1"})
        with gw.client() as http:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50_000}
            if stream:
                refused, _ = sse(http, body)
            else:
                refused = http.post(URL, json=body)
            ordinary = chat(http, "and another user's question")
    assert served(ordinary)[1] in {"big1", "big2"}  # (was 503 tier_unavailable: both in backoff)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "provider_request_too_large" and "org-0123abc" not in refused.text, error
    assert refused.headers["x-should-retry"] == "false" and "retry-after" not in refused.headers
    for name in ("big1", "big2"):
        assert gw.read_stored(ProviderHealth.key(name, "m")) is None
        assert metric(gw.url, "sentinel_model_selections_total", provider=name) is not None  # both were tried
