"""The model catalogue over HTTP: `models:` and `aliases:` in the providers file, `GET /v1/models` showing
exactly the catalogue, unknown models refused before anything happens, aliases failing over."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
import yaml

from sentinel.mock.app import create_mock_app
from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.api.test_quotas import ledger_totals, wait_for
from tests.support.attack import bearer, ledger_rows, raw_request, spying
from tests.support.metrics import metric
from tests.support.servers import free_port

HAIKU = "claude-3-5-haiku-20241022"


def catalogue_gateway(factory: Callable[..., Gateway], tmp_path: Path, **settings: object) -> Gateway:
    doc = {
        "providers": [{"name": "dead", "kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}],
        "models": [
            {"name": "gpt-4o-mini", "provider": "openai", "input_price_per_million": 1.0,
             "output_price_per_million": 2.0},
            {"name": HAIKU, "provider": "anthropic"},
            {"name": "dead-model", "provider": "dead", "upstream_name": "gpt-4o"},
            {"name": "house-claude", "provider": "anthropic", "upstream_name": HAIKU, "created": 1700000000},
        ],
        "aliases": {"fast": "gpt-4o-mini", "smart": ["dead-model", HAIKU]},
    }
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(doc))
    return factory(providers_file=path, usage_flush_interval_seconds=0.1, **settings)


def mock_requests(gw: Gateway) -> int:
    """How many requests the (session-wide) mock received so far: not its history's length, which stops at 256."""
    base = gw.settings.anthropic_api_url
    received: int = httpx.get(f"{base}/__mock/health", timeout=5).json()["received"]
    return received


def test_model_list_is_exactly_the_catalogue(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = catalogue_gateway(gateway_factory, tmp_path)
    listed = gw.openai().models.list()
    assert [m.id for m in listed.data] == ["gpt-4o-mini", HAIKU, "dead-model", "house-claude", "fast", "smart"]
    assert {m.id: m.owned_by for m in listed.data}["smart"] == "dead"
    assert gw.openai().models.retrieve("house-claude").created == 1700000000
    with pytest.raises(openai.NotFoundError):
        gw.openai().models.retrieve("gpt-4o")  # a real model, but not in this catalogue
    anthropic_view = gw.anthropic().models.list()
    assert [m.id for m in anthropic_view.data][:2] == ["gpt-4o-mini", HAIKU]


def test_default_catalogue_lists_the_configured_providers_models(gateway: Gateway) -> None:
    ids = {m.id for m in gateway.openai().models.list().data}
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "gpt-3.5-turbo-instruct", HAIKU,
            "claude-sonnet-4-20250514"} <= ids


def test_unknown_model_is_404_before_anything_happens(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = catalogue_gateway(gateway_factory, tmp_path, default_plan="requests=1/1d")
    before = mock_requests(gw)
    with gw.client() as http:
        oa = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
        an = http.post("/v1/messages", json={"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        emb = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert oa.status_code == 404 and oa.json()["error"]["code"] == "model_not_found"
    assert an.status_code == 404 and an.json() == {
        "type": "error", "error": {"type": "not_found_error", "message": an.json()["error"]["message"]},
        "request_id": an.headers["request-id"],
    }
    assert emb.status_code == 404
    assert mock_requests(gw) == before  # no upstream call
    # Nothing was reserved: the plan's one request is still there.
    assert gw.openai().chat.completions.create(model="fast", messages=[{"role": "user", "content": "ok"}]).choices


def test_alias_fails_over_to_its_next_model(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = catalogue_gateway(gateway_factory, tmp_path)
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "fail over"}]
    )
    assert raw.parse().choices[0].message.content == "Echo: fail over"
    assert (raw.headers["x-sentinel-provider"], raw.headers["x-sentinel-model"]) == ("anthropic", HAIKU)
    assert metric(gw.url, "sentinel_provider_health", provider="dead", model="gpt-4o") == 0
    with pytest.raises(openai.APIStatusError) as caught:  # a named model is never moved elsewhere
        gw.openai().chat.completions.create(model="dead-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    message = gw.anthropic().messages.create(model="smart", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "Echo: hi"  # type: ignore[union-attr]


def test_an_alias_target_that_answers_has_its_past_failures_cleared(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Claude had failed four times in a row (seen by another process, or the native API's routing)
    and its backoff ran out: once it answers the alias it is healthy again. Only a target still in
    backoff was cleared, so the kept count made its next failure take it out for 300 s, not 30 s."""
    gw = catalogue_gateway(gateway_factory, tmp_path)
    key = ProviderHealth.key("anthropic", HAIKU)
    gw.write_stored(key, orjson.dumps({"failures": 4, "until_ts": time.time() - 1, "backoff": 240.0}), 3600)
    answer = gw.openai().chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Echo: hi"  # dead-model failed: Claude answered
    assert gw.read_stored(key) is None
    assert gw.read_stored(ProviderHealth.key("dead", "gpt-4o")) is not None


class _HangUp(socketserver.BaseRequestHandler):
    """Reads one whole request (headers and body), then closes the connection without answering."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return
            body += chunk
        self.server.requests.append(body)  # type: ignore[attr-defined]


@contextmanager
def hanging_up() -> Iterator[tuple[str, list[bytes]]]:
    """An upstream that takes every request whole and then drops the connection: (base URL, bodies)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _HangUp)
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_whose_connection_was_dropped_after_it_was_sent_is_not_sent_elsewhere(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """The provider took the whole request, then closed the connection without answering: it may have
    served (and billed) it. The alias sent it on to its next target (billed twice, recorded once) and
    gave the first attempt's reservation back (free). Now it ends there: a 502, recorded as reserved."""
    with hanging_up() as (url, received):
        doc = {
            "providers": [{"name": "dropping", "kind": "openai", "base_url": url}],
            "models": [{"name": "drop-model", "provider": "dropping", "upstream_name": "gpt-4o"},
                       {"name": HAIKU, "provider": "anthropic"}],
            "aliases": {"sturdy": ["drop-model", HAIKU]},
        }
        path = tmp_path / "dropping.yaml"
        path.write_text(yaml.safe_dump(doc))
        gw = gateway_factory(providers_file=path, usage_flush_interval_seconds=0.1)
        before = mock_requests(gw)
        with gw.client() as http:
            r = http.post("/v1/chat/completions", json={
                "model": "sturdy", "max_tokens": 50, "messages": [{"role": "user", "content": "once only"}]})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "upstream_unreachable"
        assert len(received) == 1  # sent once (a fresh connection: no stale-connection retry)
    assert mock_requests(gw) == before  # the alias's next target never saw it
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) >= 1)
    (row,) = ledger_rows(gw.settings.database_url, "alice")
    assert (row["provider"], row["model"], row["status"], row["usage_source"]) == (
        "dropping", "drop-model", 502, "estimated")
    assert row["input_tokens"] > 0 and row["output_tokens"] == 50  # charged: all it reserved


def test_a_request_that_stores_an_object_is_not_sent_on_to_another_provider(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, mock_upstream: str,
) -> None:
    """An alias's first target failed (refused connection) and a stored response went on to its next
    target, another provider's, silently: created there, where object calls never go (they go to the
    OpenAI provider), so the id the client was given could not be read, continued or deleted. A
    request that stores an object upstream (or names one) now stays on the provider it was sent to;
    one that stores nothing still goes on."""
    doc = {
        "providers": [{"name": "backup", "kind": "openai", "base_url": f"{mock_upstream}/v1", "api_key": "sk-test"}],
        "models": [{"name": "gpt-4o-mini", "provider": "openai"},
                   {"name": "backup-mini", "provider": "backup", "upstream_name": "gpt-4o-mini"}],
        "aliases": {"sturdy": ["gpt-4o-mini", "backup-mini"]},
    }
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump(doc))
    gw = gateway_factory(providers_file=path, openai_api_url=f"http://127.0.0.1:{free_port()}/v1")  # OpenAI down
    before = mock_requests(gw)
    with gw.client() as http:
        stored = http.post("/v1/responses", json={"model": "sturdy", "input": "keep me"})
        assert stored.status_code == 502, stored.text
        assert stored.json()["error"]["code"] == "upstream_unreachable", stored.text
        assert mock_requests(gw) == before  # the backup provider never saw it
        unstored = http.post("/v1/responses", json={"model": "sturdy", "input": "forget me", "store": False})
    assert unstored.status_code == 200, unstored.text
    assert unstored.headers["x-sentinel-provider"] == "backup"


def test_upstream_name_and_prices(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = catalogue_gateway(gateway_factory, tmp_path)
    raw = gw.anthropic().messages.with_raw_response.create(
        model="house-claude", max_tokens=10, messages=[{"role": "user", "content": "renamed"}]
    )
    assert raw.headers["x-sentinel-model"] == HAIKU
    base = gw.settings.anthropic_api_url
    assert httpx.get(f"{base}/__mock/last_request", params={"path": "/v1/messages"}).json()["body"]["model"] == HAIKU
    with gw.client() as http:
        r = http.post("/v1/embeddings", json={"model": HAIKU, "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    gw.openai().chat.completions.create(model="fast", messages=[{"role": "user", "content": "priced"}])
    assert wait_for(lambda: ledger_totals(gw.settings.database_url, "alice")["requests"] >= 2)
    assert (metric(gw.url, "sentinel_cost_usd_total", provider="openai", model="gpt-4o-mini") or 0) > 0


def test_bad_catalogue_refuses_to_start(tmp_path: Path) -> None:
    from sentinel.config import ConfigError, Settings
    from sentinel.wiring import build_catalog, build_model_catalogue, read_providers_file

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m1", "provider": "openai"}], "aliases": {"a": ["m2"]}}))
    settings = Settings(_env_file=None, openai_api_key="k", providers_file=path)  # type: ignore[call-arg]
    file = read_providers_file(settings)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model_catalogue(build_catalog(settings, file), file)
    path.write_text(yaml.safe_dump({"models": [{"name": "m1", "provider": "nowhere"}]}))
    file = read_providers_file(settings)
    with pytest.raises(ConfigError, match="not configured"):
        build_model_catalogue(build_catalog(settings, file), file)


def test_a_model_named_with_a_slash_is_retrieved_by_both_sdks(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """A catalogue name may hold '/' (`meta-llama/Llama-3.1-8B-Instruct`, as vLLM and OpenRouter name
    models), and both SDKs' `models.retrieve` encode it (`/v1/models/meta-llama%2FLlama-3.1-8B-Instruct`):
    refused as a path that is not canonical, a 400. It is served now; below `/v1/models/` the path
    is still refused when, read so, it is not canonical, and no other method there reaches anyone."""
    slashed = "meta-llama/Llama-3.1-8B-Instruct"
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": slashed, "provider": "openai", "upstream_name": "gpt-4o-mini"}]}))
    gw = gateway_factory(providers_file=path)
    assert gw.openai().models.retrieve(slashed).id == slashed
    assert gw.anthropic().models.retrieve(slashed).id == slashed
    before = mock_requests(gw)
    for target in ("/v1/models/x%2F..%2F..%2Fchat%2Fcompletions", "/v1/models/meta-llama%2F%2FLlama",
                   "/v1/models/%2e%2e%2fchat%2fcompletions"):
        refused = raw_request(gw.url, "GET", target, headers=bearer(gw.key))
        assert (refused.status, refused.json()["error"]["code"]) == (400, "invalid_path"), target
    deleted = raw_request(gw.url, "DELETE", "/v1/models/meta-llama%2FLlama-3.1-8B-Instruct", headers=bearer(gw.key))
    assert (deleted.status, deleted.headers["allow"]) == (405, "GET")
    assert mock_requests(gw) == before


def test_anthropic_sdk_unknown_model_is_not_found(gateway: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError):
        gateway.anthropic().messages.create(model="gpt-9", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_a_tools_model_is_held_to_the_catalogue_as_the_requests_own(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A tool that runs a model of its own (the Responses API's `image_generation`) ran whatever model
    the caller named: `gpt-image-1`, outside the catalogue, went upstream unchanged (one request of
    the plan, the images billed to the company). A tool's `model` is held to the catalogue as the
    request's own is, on every metered surface, before anything is reserved or sent: unknown, 404
    `model_not_found`; another provider's, 400 `model_not_supported`; not a string, 400 — each naming
    the tool's parameter. A catalogue model of the request's provider is sent under its upstream name."""
    with spying(create_mock_app()) as (_, spy):
        doc = {"models": [{"name": "gpt-4o-mini", "provider": "openai"},
                          {"name": "house-image", "provider": "openai", "upstream_name": "gpt-image-1"},
                          {"name": HAIKU, "provider": "anthropic"}]}
        path = tmp_path / "tools.yaml"
        path.write_text(yaml.safe_dump(doc))
        gw = gateway_factory(providers_file=path, openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url,
                             usage_flush_interval_seconds=0.1)

        def draw(model: object) -> dict[str, object]:
            return {"model": "gpt-4o-mini", "input": "draw",
                    "tools": [{"type": "image_generation", "model": model, "quality": "high"}]}

        function = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                "tools": [function, {**function, "model": "gpt-image-1"}]}
        message = {"model": HAIKU, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"name": "f", "input_schema": {"type": "object"}, "model": "gpt-image-1"}]}
        with gw.client() as http:
            refused = {
                "outside": http.post("/v1/responses", json=draw("gpt-image-1")),
                "other-provider": http.post("/v1/responses", json=draw(HAIKU)),
                "not-a-string": http.post("/v1/responses", json=draw(["gpt-image-1"])),
                "null": http.post("/v1/responses", json=draw(None)),
                # Named by none, the provider's default image model runs: it must be named.
                "absent": http.post("/v1/responses", json={
                    "model": "gpt-4o-mini", "input": "draw", "tools": [{"type": "image_generation"}]}),
                "chat": http.post("/v1/chat/completions", json=chat),
                "messages": http.post("/v1/messages", json=message),
                "count_tokens": http.post("/v1/messages/count_tokens", json=message),
            }
            assert spy.seen == [], spy.paths()
            served = http.post("/v1/responses", json=draw("house-image"))
        sent = httpx.get(f"{spy.url}/__mock/last_request", params={"path": "/v1/responses"}, timeout=5).json()
    expected = {"outside": (404, "model_not_found", "tools.0.model"),
                "other-provider": (400, "model_not_supported", "tools.0.model"),
                "not-a-string": (400, "invalid_request", "tools.0.model"),
                "null": (400, "invalid_request", "tools.0.model"),
                "absent": (400, "invalid_request", "tools.0.model"),
                "chat": (404, "model_not_found", "tools.1.model")}
    for name, (status, code, param) in expected.items():
        error = refused[name].json()["error"]
        assert (refused[name].status_code, error["code"], error["details"]["param"]) == (status, code, param), (
            name, refused[name].text)
    for name in ("messages", "count_tokens"):  # Anthropic's shape
        assert refused[name].status_code == 404, refused[name].text
        assert refused[name].json()["error"]["type"] == "not_found_error"
    assert served.status_code == 200, served.text
    assert sent["body"]["tools"] == [{"type": "image_generation", "model": "gpt-image-1", "quality": "high"}]
    assert sent["body"]["model"] == "gpt-4o-mini"
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) >= 1)
    assert len(ledger_rows(gw.settings.database_url, "alice")) == 1  # the refusals reserved and recorded nothing


def test_count_tokens_skips_a_model_in_backoff_and_writes_no_health(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """`/v1/messages/count_tokens` reads routing health as `/v1/messages` does: a lone model whose
    provider is in a hard backoff is not asked (Sentinel's estimate answers, `X-Sentinel-Estimate`),
    an alias counts on its first target out of backoff. It was relayed to the failing provider all the
    same (its 5xx back to the client). Its own failures write no health: Anthropic rate-limits token
    counting apart from messages, so one user flooding it would take the model out for everyone."""
    sonnet = "claude-sonnet-4-20250514"
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({
        "models": [{"name": HAIKU, "provider": "anthropic"}, {"name": sonnet, "provider": "anthropic"}],
        "aliases": {"claudes": [HAIKU, sonnet]},
    }))
    gw = gateway_factory(providers_file=path, usage_flush_interval_seconds=0.1, default_plan="requests=3/1d")
    gw.write_stored(ProviderHealth.key("anthropic", HAIKU),
                    orjson.dumps({"failures": 1, "until_ts": time.time() + 300, "backoff": 30.0}), 600)
    messages = [{"role": "user", "content": "count these words please"}]
    claude = gw.anthropic()
    before = mock_requests(gw)
    lone = claude.messages.with_raw_response.count_tokens(
        model=HAIKU, messages=messages, extra_headers={"X-Mock-Status": "503"})
    assert lone.headers["x-sentinel-estimate"] == "true" and lone.parse().input_tokens > 0
    assert mock_requests(gw) == before  # the failing provider was not asked
    alias = claude.messages.with_raw_response.count_tokens(model="claudes", messages=messages)
    assert alias.headers["x-sentinel-model"] == sonnet and "x-sentinel-estimate" not in alias.headers
    assert alias.parse().input_tokens > 0 and mock_requests(gw) == before + 1
    with pytest.raises(anthropic.RateLimitError):  # the provider's count limit: relayed, uncharged
        claude.messages.count_tokens(model=sonnet, messages=messages, extra_headers={"X-Mock-Status": "429"})
    assert gw.read_stored(ProviderHealth.key("anthropic", sonnet)) is None
    assert alias.headers["x-ratelimit-remaining"] == "1"
    served = claude.messages.with_raw_response.count_tokens(model=sonnet, messages=messages)
    assert served.headers["x-ratelimit-remaining"] == "0"
