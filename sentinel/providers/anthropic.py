"""Anthropic's Messages API: the native chat provider and the raw relay of `/v1/messages`.

Base URL without /v1, as the SDK takes it. The client's credentials never leave Sentinel; the
provider key is injected here (as `x-api-key`) and nowhere else. The client's `anthropic-version`
and `anthropic-beta` are forwarded; a request without `anthropic-version` gets ANTHROPIC_VERSION.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from sentinel.domain.usage import Usage
from sentinel.native import ChatRequest, ProviderReply
from sentinel.native.anthropic import (
    anthropic_cache_tokens,
    build_anthropic_request,
    parse_anthropic_response,
    parse_anthropic_usage,
)
from sentinel.native.stream import AnthropicStreamNormalizer, StreamNormalizer
from sentinel.providers.chat import ChatProvider, recorded_usage
from sentinel.providers.http import BODY_LIMIT, BodyLimit, UpstreamResponse, send

ANTHROPIC_VERSION = "2023-06-01"


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
        return AnthropicStreamNormalizer(provider=self.name, scrub=self.scrub)

    def usage_of(self, answer: Any) -> Usage | None:
        raw = answer.get("usage") if isinstance(answer, dict) else None
        return recorded_usage(parse_anthropic_usage(raw), anthropic_cache_tokens(raw if isinstance(raw, dict) else {}))


@dataclass
class AnthropicUpstream:
    """A named Anthropic-wire-format provider at `base_url` (without /v1), for the raw relay."""

    name: str
    base_url: str
    api_key: str | None
    session: aiohttp.ClientSession
    clock: Callable[[], float] = time.monotonic  # what `send` reads (how soon a connection dropped)
    body_limit: BodyLimit = BODY_LIMIT  # how long an answer's body may be read (`SENTINEL_STREAM_MAX_SECONDS`)

    async def forward(self, segments: Sequence[str], *, headers: dict[str, str], body: bytes) -> UpstreamResponse:
        """POST `body` to `/v1/<segments>` (each segment percent-encoded whole, never normalised) with the
        client's forwardable `headers`, the provider key and an `anthropic-version`."""
        out = dict(headers)
        out["accept-encoding"] = "identity"
        out.setdefault("anthropic-version", ANTHROPIC_VERSION)
        if self.api_key:
            out["x-api-key"] = self.api_key
        url = URL(self.base_url + "/v1" + "".join("/" + quote(s, safe="") for s in segments), encoded=True)
        return await send(self.session, self.name, "POST", url, headers=out, body=body, secret=self.api_key,
                          clock=self.clock, limit=self.body_limit)
