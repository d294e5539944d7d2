"""Native chat providers: one class per wire format over the shared upstream session.

`body()` translates a unified request; `complete_body()` returns a unified `ProviderReply`;
`open_stream_body()` returns a `ProviderStream` whose `events()` yields unified chunks. Upstream
error answers are mapped to Sentinel errors here, in one place (see `provider_error`); provider
keys go into headers and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from sentinel.errors import (
    InvalidRequest,
    RateLimited,
    SentinelError,
    UpstreamError,
    UpstreamStatusError,
)
from sentinel.native import ChatRequest, ProviderReply, StreamError, TranslationError
from sentinel.native.anthropic import build_anthropic_request, parse_anthropic_response
from sentinel.native.openai import build_openai_request, parse_openai_response
from sentinel.native.sse import SSEParser
from sentinel.native.stream import (
    AnthropicStreamNormalizer,
    OpenAIStreamNormalizer,
    StreamNormalizer,
    StreamResult,
)
from sentinel.providers.catalog import ProviderSpec
from sentinel.providers.http import UpstreamResponse, send

ANTHROPIC_VERSION = "2023-06-01"
_CONTEXT_HINTS = ("context_length_exceeded", "context length", "prompt is too long", "maximum context", "too many tokens")


def provider_error(provider: str, status: int, raw: bytes, headers: list[tuple[str, str]]) -> SentinelError:
    """Map an upstream error answer to the unified error (status mapping documented in the README)."""
    message, code = _error_text(raw)
    lowered = f"{message} {code}".lower()
    retry_after = next((v for k, v in headers if k.lower() == "retry-after"), None)
    if status == 429:
        seconds = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
        return RateLimited(
            f"Provider {provider} is rate limiting: {message}", code="provider_rate_limited",
            retry_after=seconds, provider=provider,
        )
    if status in (401, 403):
        # Our credentials for the provider are wrong: a gateway configuration fault, never the client's.
        return UpstreamStatusError(
            f"Provider {provider} rejected Sentinel's credentials (HTTP {status}); check the provider configuration",
            upstream_status=status, code="provider_auth_error", provider=provider,
        )
    if status in (400, 413, 422) and any(h in lowered for h in _CONTEXT_HINTS):
        return InvalidRequest(f"Context too long for the selected model: {message}",
                              code="context_length_exceeded", provider=provider)
    if 400 <= status < 500:
        return InvalidRequest(f"Provider {provider} rejected the request: {message}",
                              code="provider_rejected_request", provider=provider)
    return UpstreamStatusError(
        f"Provider {provider} failed with HTTP {status}: {message}", upstream_status=status,
        code="provider_error", provider=provider,
    )


def _error_text(raw: bytes) -> tuple[str, str]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return (raw[:200].decode("utf-8", "replace").strip() or "no details", "")
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or "no details"), str(err.get("code") or err.get("type") or "")
    return "no details", ""


@dataclass
class ProviderStream:
    """An open upstream stream, normalised to unified chunks."""

    upstream: UpstreamResponse
    normalizer: StreamNormalizer
    result: StreamResult | None = None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Unified chunks as they arrive; raises StreamError (or UpstreamError) when the stream breaks.

        After the iterator ends normally, `result` says how the stream ended.
        """
        parser = SSEParser()
        try:
            async for raw in self.upstream.iter_chunks():
                for event in parser.feed(raw):
                    for chunk in self.normalizer.feed(event):
                        yield chunk
            parser.close()
            self.result = self.normalizer.finish()
            if self.result.error is not None:
                raise self.result.error
            for chunk in self.result.chunks:
                yield chunk
        finally:
            self.upstream.close()

    @property
    def usage(self) -> Any:
        return self.normalizer.usage


class ChatProvider:
    """Common plumbing; subclasses build the wire request and pick the parser/normaliser."""

    kind = ""

    def __init__(self, spec: ProviderSpec, session: aiohttp.ClientSession, *, default_max_tokens: int = 4096) -> None:
        self.spec = spec
        self.name = spec.name
        self.session = session
        self.default_max_tokens = default_max_tokens
        self.last_duration = 0.0

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def url(self) -> str:
        raise NotImplementedError

    def body(self, req: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, body: Any, tier: str) -> ProviderReply:
        raise NotImplementedError

    def normalizer(self) -> StreamNormalizer:
        raise NotImplementedError

    async def _post(self, body: dict[str, Any]) -> UpstreamResponse:
        payload = orjson.dumps(body)
        started = time.perf_counter()
        upstream = await send(self.session, self.name, "POST", self.url(), headers=self.headers(), body=payload)
        self.last_duration = time.perf_counter() - started
        if upstream.status >= 300:
            try:
                raw = await upstream.read()
            finally:
                upstream.release()
            raise provider_error(self.name, upstream.status, raw, upstream.headers)
        return upstream

    async def complete_body(self, body: dict[str, Any], tier: str) -> ProviderReply:
        """Send an already translated (non-streaming) body; the unified reply."""
        upstream = await self._post(body)
        try:
            raw = await upstream.read()
        finally:
            upstream.release()
        try:
            return self.parse(orjson.loads(raw), tier)
        except (orjson.JSONDecodeError, TranslationError, ValueError) as exc:
            message = exc.message if isinstance(exc, TranslationError) else "unparseable response body"
            raise UpstreamError(f"Provider {self.name} sent an invalid response: {message}",
                                code="provider_bad_response", provider=self.name) from None

    async def open_stream_body(self, body: dict[str, Any]) -> ProviderStream:
        """Send an already translated streaming body; returns once the upstream answered 2xx."""
        return ProviderStream(await self._post(body), self.normalizer())


class OpenAIChatProvider(ChatProvider):
    """OpenAI chat completions (and any OpenAI-compatible base URL)."""

    kind = "openai"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", "accept-encoding": "identity"}
        if self.spec.api_key:
            h["authorization"] = f"Bearer {self.spec.api_key}"
        return h

    def url(self) -> str:
        return self.spec.base_url + "/chat/completions"

    def body(self, req: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        return build_openai_request(req, model, stream=stream)

    def parse(self, body: Any, tier: str) -> ProviderReply:
        return parse_openai_response(body, provider=self.name, tier=tier)  # type: ignore[arg-type]

    def normalizer(self) -> StreamNormalizer:
        return OpenAIStreamNormalizer(provider=self.name)


class AnthropicProvider(ChatProvider):
    """Anthropic's Messages API (base URL without /v1, as the SDK takes it)."""

    kind = "anthropic"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", "accept-encoding": "identity", "anthropic-version": ANTHROPIC_VERSION}
        if self.spec.api_key:
            h["x-api-key"] = self.spec.api_key
        return h

    def url(self) -> str:
        return self.spec.base_url + "/v1/messages"

    def body(self, req: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        return build_anthropic_request(req, model, stream=stream, default_max_tokens=self.default_max_tokens)

    def parse(self, body: Any, tier: str) -> ProviderReply:
        return parse_anthropic_response(body, provider=self.name, tier=tier)  # type: ignore[arg-type]

    def normalizer(self) -> StreamNormalizer:
        return AnthropicStreamNormalizer(provider=self.name)


def make_provider(spec: ProviderSpec, session: aiohttp.ClientSession, *, default_max_tokens: int) -> ChatProvider:
    cls = AnthropicProvider if spec.kind == "anthropic" else OpenAIChatProvider
    return cls(spec, session, default_max_tokens=default_max_tokens)


__all__ = ["ChatProvider", "ProviderStream", "StreamError", "make_provider", "provider_error"]
