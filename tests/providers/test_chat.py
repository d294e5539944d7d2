"""Native chat providers over the real mock upstream (both wire formats, a real socket).

Each call returns its own timing with its reply (`Completion.upstream_seconds`,
`ProviderStream.upstream_seconds`): a provider object is shared by concurrent requests and keeps
no per-request state, so one request can never report another's upstream time.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest

from sentinel.errors import InvalidRequest, RateLimited, SentinelError, UpstreamConnectionError, UpstreamError
from sentinel.native import ChatRequest, StreamError, parse_chat_request
from sentinel.providers.chat import ChatProvider
from tests.providers.conftest import Mock
from tests.support.servers import free_port
from tests.support.upstream import UPSTREAM_KEY

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-20241022"}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
KINDS = pytest.mark.parametrize("kind", ["openai", "anthropic"])


def ask(text: str, *, stream: bool = False) -> ChatRequest:
    return parse_chat_request({"messages": [{"role": "user", "content": text}], "stream": stream})


async def complete(provider: ChatProvider, text: str) -> Any:
    body = provider.body(ask(text), MODELS[provider.kind], stream=False)
    return await provider.complete_body(body, "simple")


async def stream(provider: ChatProvider, text: str) -> Any:
    return await provider.open_stream_body(provider.body(ask(text, stream=True), MODELS[provider.kind], stream=True))


@KINDS
async def test_complete_returns_the_reply_with_its_upstream_time(
    kind: str, provider_for: Callable[..., ChatProvider]
) -> None:
    done = await complete(provider_for(kind), "tell me a story #mock:latency_ms=150")
    assert "tell me a story" in done.reply.text()
    assert (done.reply.provider, done.reply.tier) == (kind, "simple")
    assert done.reply.usage is not None and done.reply.usage.prompt_tokens > 0
    assert done.upstream_seconds >= 0.15  # the mock waited that long before answering


@KINDS
async def test_stream_returns_once_the_headers_are_in_with_their_time(
    kind: str, provider_for: Callable[..., ChatProvider]
) -> None:
    opened = await stream(provider_for(kind), "stream this please #mock:latency_ms=150")
    assert opened.upstream_seconds >= 0.15
    assert opened.upstream.status == 200
    chunks = [chunk async for chunk in opened.events()]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert "stream this please" in text
    assert opened.result is not None and opened.result.error is None
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert opened.usage is not None and opened.usage.completion_tokens > 0


@KINDS
async def test_the_provider_key_goes_in_the_wire_formats_header(
    kind: str, provider_for: Callable[..., ChatProvider], mock: Mock
) -> None:
    await complete(provider_for(kind), "who am I")
    seen = {k.lower(): v for k, v in mock.last_request(PATHS[kind])["headers"].items()}
    if kind == "openai":
        assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    else:
        assert seen["x-api-key"] == UPSTREAM_KEY and seen["anthropic-version"]
        assert "authorization" not in seen
    assert seen["accept-encoding"] == "identity"


@KINDS
@pytest.mark.parametrize(
    ("directive", "error", "status", "code"),
    [
        ("#mock:status=429", RateLimited, 429, "provider_rate_limited"),
        ("#mock:status=400", InvalidRequest, 400, "provider_rejected_request"),
        ("#mock:status=500", UpstreamError, 502, "provider_error"),
        ("#mock:status=503", UpstreamError, 502, "provider_error"),
    ],
)
async def test_error_statuses_are_mapped(
    kind: str, directive: str, error: type[SentinelError], status: int, code: str,
    provider_for: Callable[..., ChatProvider],
) -> None:
    for call in (complete, stream):
        with pytest.raises(error) as caught:
            await call(provider_for(kind), f"fail please {directive}")
        assert (caught.value.status, caught.value.code, caught.value.provider) == (status, code, kind)


@KINDS
async def test_refused_credentials_are_a_502_that_never_quotes_the_provider(
    kind: str, provider_for: Callable[..., ChatProvider]
) -> None:
    with pytest.raises(UpstreamError) as caught:
        await complete(provider_for(kind, key=None), "no key")
    assert (caught.value.status, caught.value.code) == (502, "provider_auth_error")


@KINDS
async def test_an_unparseable_body_is_a_bad_response(kind: str, provider_for: Callable[..., ChatProvider]) -> None:
    with pytest.raises(UpstreamError) as caught:
        await complete(provider_for(kind), "garble it #mock:malformed")
    assert caught.value.code == "provider_bad_response"


@KINDS
async def test_a_stream_cut_short_raises_a_stream_error(kind: str, provider_for: Callable[..., ChatProvider]) -> None:
    opened = await stream(provider_for(kind), "one two three four five six #mock:disconnect_after=2")
    with pytest.raises((StreamError, UpstreamError)):
        _ = [chunk async for chunk in opened.events()]


async def test_an_unreachable_upstream_is_a_connection_error(provider_for: Callable[..., ChatProvider]) -> None:
    provider = provider_for("openai", base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UpstreamConnectionError) as caught:
        await complete(provider, "anyone there")
    assert (caught.value.status, caught.value.code, caught.value.provider) == (502, "upstream_unreachable", "openai")


@KINDS
async def test_concurrent_calls_each_get_their_own_upstream_time(
    kind: str, provider_for: Callable[..., ChatProvider]
) -> None:
    """The old bug: the last call's duration lived on the shared provider object."""
    provider = provider_for(kind)
    state_before = copy.copy(vars(provider))
    slow = asyncio.ensure_future(complete(provider, "slow one #mock:latency_ms=1500"))
    fast = await complete(provider, "fast one")  # in flight together with the slow one
    slow_done = await slow
    assert slow_done.upstream_seconds >= 1.5  # the mock held the slow answer that long
    # Each reply carries its own time: the fast one does not report the slow one's 1.5 s.
    assert fast.upstream_seconds < slow_done.upstream_seconds
    assert "fast one" in fast.reply.text() and "slow one" in slow_done.reply.text()
    # No per-request state: the provider object is as it was before both calls.
    assert vars(provider) == state_before


