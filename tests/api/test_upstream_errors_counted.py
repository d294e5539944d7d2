"""`upstream_errors_total` counts every upstream failure once, on every surface: a provider's error
status (by its code), a read timeout, a stream that broke or carried the provider's error event.
The native API counted none of them, and `/v1/messages` relayed to Anthropic no error status (only a
timeout or a broken connection before the answer); a relayed stream's error event was counted on the
translated streams only. (A retried overload, dropped before its first block, is counted in
`test_overloaded_mid_stream`.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from starlette.types import Receive, Scope, Send

from sentinel.mock.app import create_mock_app
from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.metrics import sample_sum
from tests.support.servers import serving

HAIKU, MINI, SONNET = "claude-3-5-haiku-20241022", "gpt-4o-mini", "claude-sonnet-4-20250514"
TIMEOUT = 1.0  # Sentinel waits 1 s for an answer; the mock's slow one waits 3 s (`latency_ms`)

# name: (path, body for a user message's text, the provider that serves it, the native tiers' provider)
SURFACES: dict[str, tuple[str, Callable[[str], dict[str, Any]], str, str | None]] = {
    "chat": ("/v1/chat/completions", lambda text: {"model": MINI, "messages": [{"role": "user", "content": text}]},
             "openai", None),
    "chat-translated": ("/v1/chat/completions",
                        lambda text: {"model": HAIKU, "messages": [{"role": "user", "content": text}]},
                        "anthropic", None),
    "messages": ("/v1/messages",
                 lambda text: {"model": HAIKU, "max_tokens": 50, "messages": [{"role": "user", "content": text}]},
                 "anthropic", None),
    "messages-translated": ("/v1/messages", lambda text: {
        "model": MINI, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}, "openai", None),
    "native": ("/native/v1/chat/completions", lambda text: {"messages": [{"role": "user", "content": text}]},
               "openai", "openai"),
    "native-claude": ("/native/v1/chat/completions", lambda text: {"messages": [{"role": "user", "content": text}]},
                      "anthropic", "anthropic"),
}


def _gateway(gateway_factory: Callable[..., Gateway], tmp_path: Path, surface: str) -> Gateway:
    native = SURFACES[surface][3]
    extra: dict[str, Any] = {"providers_file": tiers_file(tmp_path, native)} if native else {}
    return gateway_factory(upstream_timeout_seconds=TIMEOUT, **extra)


def _errors(gw: Gateway, provider: str, kind: str | None = None) -> float:
    """The provider's `upstream_errors_total` (of `kind`, else of every kind): 0 when none."""
    with gw.client() as http:
        text = http.get("/metrics").text
    labels = {"provider": provider} if kind is None else {"provider": provider, "kind": kind}
    return sample_sum(text, "sentinel_upstream_errors_total", **labels) or 0.0


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize(("fault", "status", "kind"), [
    ("#mock:status=500", 502, "provider_error"),
    ("#mock:latency_ms=3000", 504, "upstream_timeout"),
])
def test_a_failure_before_the_answer_is_counted_once(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, surface: str, fault: str, status: int, kind: str,
) -> None:
    path, body, provider, _ = SURFACES[surface]
    gw = _gateway(gateway_factory, tmp_path, surface)
    with gw.client() as http:
        failed = http.post(path, json=body(f"hi {fault}"))
    assert failed.status_code == status, failed.text
    assert _errors(gw, provider, kind) == 1
    assert _errors(gw, provider) == 1  # under no other kind too


@pytest.mark.parametrize("surface", list(SURFACES))
def test_a_relayed_stream_that_failed_is_counted_once(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, surface: str,
) -> None:
    """A Claude stream ends with the provider's `overloaded_error` event after its first block (relayed:
    the client has part of the answer); an OpenAI-format one breaks off (its connection cut)."""
    path, body, provider, _ = SURFACES[surface]
    gw = _gateway(gateway_factory, tmp_path, surface)
    fault = "#mock:error_after=3" if provider == "anthropic" else "#mock:disconnect_after=2"
    with gw.client() as http:
        broken = http.post(path, json={**body(f"one two three four five {fault}"), "stream": True})
    assert broken.status_code == 200 and "error" in broken.text, broken.text
    assert _errors(gw, provider) == 1


def test_a_pass_through_call_the_provider_failed_is_counted_once(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A pass-through call (`/v1/files`) answered with a provider's error status was counted nowhere."""
    gw = gateway_factory(passthrough="/v1/files,/v1/files/*")
    with pytest.raises(openai.InternalServerError) as failed:
        gw.openai().files.create(file=("notes.txt", b"some notes"), purpose="assistants",
                                 extra_query={"mock_status": "500"})
    assert failed.value.status_code == 502
    assert _errors(gw, "openai", "provider_error") == 1
    assert _errors(gw, "openai") == 1


class _Unavailable:
    """The mock upstream, every answer of which is a 503 (`X-Mock-Status`): a provider down."""

    def __init__(self) -> None:
        self.app = create_mock_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "headers": [*scope["headers"], (b"x-mock-status", b"503")]}
        await self.app(scope, receive, send)


@pytest.fixture
def failing_over(gateway_factory: Callable[..., Gateway], tmp_path: Path, mock_upstream: str) -> Iterator[Gateway]:
    """A `/v1` alias and native tiers of two Claude models, the first on a provider (`down`) answering 503."""
    with serving(_Unavailable()) as down:
        path = tmp_path / "providers.yaml"
        path.write_text(yaml.safe_dump({
            "providers": [{"name": "anthropic", "kind": "anthropic", "base_url": mock_upstream, "api_key": "sk-ant-x"},
                          {"name": "down", "kind": "anthropic", "base_url": down.url, "api_key": "sk-ant-x"}],
            "models": [{"name": "down-haiku", "provider": "down", "upstream_name": HAIKU}, {"name": SONNET,
                                                                                       "provider": "anthropic"}],
            "aliases": {"claudes": ["down-haiku", SONNET]},
            "tiers": {tier: [{"provider": "down", "model": HAIKU, "relative_cost": 1},
                             {"provider": "anthropic", "model": SONNET, "relative_cost": 10}]
                      for tier in ("simple", "moderate", "complex")},
        }))
        yield gateway_factory(providers_file=path)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("surface", ["messages", "chat-translated", "native"])
def test_an_attempt_a_failover_moved_on_from_is_counted_once(failing_over: Gateway, surface: str, stream: bool) -> None:
    """The first target's (or tier model's) 503, retried on the next one that serves it, is counted once:
    the 503 puts it in backoff (the native API's tier model is drawn until it was)."""
    text = [{"role": "user", "content": "one two"}]
    path, body = {
        "messages": ("/v1/messages", {"model": "claudes", "max_tokens": 20}),
        "chat-translated": ("/v1/chat/completions", {"model": "claudes"}),
        "native": ("/native/v1/chat/completions", {"tier": "simple"}),
    }[surface]
    answers = []
    with failing_over.client() as http:
        while failing_over.read_stored(ProviderHealth.key("down", HAIKU)) is None and len(answers) < 30:
            answers.append(http.post(path, json={**body, "stream": stream, "messages": text}))
    assert all(a.status_code == 200 and a.headers["x-sentinel-model"] == SONNET for a in answers), answers
    assert failing_over.read_stored(ProviderHealth.key("down", HAIKU)) is not None
    assert _errors(failing_over, "down", "provider_error") == 1
    assert _errors(failing_over, "down") == 1 and _errors(failing_over, "anthropic") == 0
