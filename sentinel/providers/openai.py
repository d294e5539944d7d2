"""OpenAI's wire format: the native chat provider and the raw OpenAI-compatible relay.

Any OpenAI-compatible base URL works (OpenAI itself, xAI, Groq, vLLM, Ollama, the mock). The
client's credentials and hop-by-hop headers never leave Sentinel; the provider key is injected
here and nowhere else, and it is never logged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from sentinel.domain.usage import Usage
from sentinel.native import ChatRequest, ProviderReply
from sentinel.native.openai import (
    build_openai_request,
    openai_cache_tokens,
    parse_openai_response,
    parse_openai_usage,
)
from sentinel.native.stream import OpenAIStreamNormalizer, StreamNormalizer
from sentinel.providers.chat import ChatProvider, recorded_usage
from sentinel.providers.http import UpstreamResponse, send


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

    def usage_of(self, answer: Any) -> Usage | None:
        raw = answer.get("usage") if isinstance(answer, dict) else None
        return recorded_usage(parse_openai_usage(raw), openai_cache_tokens(raw))


# Request headers never forwarded: credentials, hop-by-hop, and those the client library sets for
# its own connection (aiohttp recomputes length/host; encoding is pinned so usage can be read).
DROP_REQUEST_HEADERS = frozenset(
    {
        "authorization", "proxy-authorization", "x-api-key", "api-key", "cookie",
        "openai-organization", "openai-project",
        "connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "expect",
        # A provider honouring one would turn an allowed POST into another method (e.g. a list).
        "x-http-method-override", "x-http-method", "x-method-override",
        # The client's address (what a proxy in front of Sentinel adds) and Sentinel's own credentials.
        "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-real-ip",
        "x-docs-key", "x-csrf-token",
        # The client's trace context: with tracing on, Sentinel's own traceparent goes instead (and no
        # caller's tracestate/baggage rides on Sentinel's trace); off, none goes.
        "traceparent", "tracestate", "baggage",
    }
)
# The only response headers relayed from a provider (an allowlist: a provider or a gateway in front
# of one — LiteLLM, Azure, Cloudflare — adds headers naming the company's account, its limits and
# spend, its deployment and region; none of them is the user's). What a client or the official SDKs
# read off an answer: its media type and encoding (the bytes are relayed as they came), a file's
# name (`content-disposition`), caching, when to retry (`retry-after`, `retry-after-ms`,
# `x-should-retry`) or poll again (`openai-poll-after-ms`), and OpenAI's processing time and API
# version. `content-length` is Sentinel's own (a body it changed, or a stream sent in chunks), as
# are the request ids (`x-request-id`, `request-id`) and `X-RateLimit-*` (the user's plan).
RELAYED_RESPONSE_HEADERS = frozenset(
    {
        "content-type", "content-encoding", "content-disposition", "cache-control",
        "content-range", "accept-ranges", "etag", "last-modified",  # range and conditional downloads
        "retry-after", "retry-after-ms", "x-should-retry",
        "openai-poll-after-ms", "openai-processing-ms", "openai-version",
    }
)


def forwardable_headers(raw: list[tuple[bytes, bytes]], *, as_json: bool = False) -> dict[str, str]:
    """The client's request headers that may go upstream (see DROP_REQUEST_HEADERS); with `as_json`
    (a body Sentinel read as JSON and re-encoded) its Content-Type is `application/json` and it has no
    Content-Encoding, whatever the client named: the provider reads the body as Sentinel did."""
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key not in DROP_REQUEST_HEADERS:
            out[key] = value.decode("latin-1")
    if as_json:
        out["content-type"] = "application/json"
        out.pop("content-encoding", None)
    return out


def relayable_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers that may reach the client (see RELAYED_RESPONSE_HEADERS)."""
    return [(k, v) for k, v in headers if k.lower() in RELAYED_RESPONSE_HEADERS]


def upstream_url(base_url: str, segments: Sequence[str]) -> URL:
    """`base_url` and the path made of `segments`, each percent-encoded whole, used as built (never
    normalised): the upstream sees exactly this path below its base and nothing else."""
    if sum(map(len, segments)) > _REMEMBERED_PATH_CHARS:
        return _build_url(base_url, tuple(segments))
    return _remembered_url(base_url, tuple(segments))


def _build_url(base_url: str, segments: tuple[str, ...]) -> URL:
    return URL(base_url + "".join("/" + quote(segment, safe="") for segment in segments), encoded=True)


# A few paths serve nearly every request: their URLs are built once (short paths only, so the
# cache stays small whatever paths clients send).
_REMEMBERED_PATH_CHARS = 256
_remembered_url = functools.lru_cache(maxsize=1024)(_build_url)


@dataclass
class OpenAICompatUpstream:
    """A named OpenAI-wire-format provider at `base_url` (which ends in /v1, as OpenAI's does)."""

    name: str
    base_url: str
    api_key: str | None
    session: aiohttp.ClientSession

    async def forward(
        self,
        method: str,
        segments: Sequence[str],
        *,
        headers: dict[str, str],
        body: bytes | None,
        query: list[tuple[str, str]] | None = None,
    ) -> UpstreamResponse:
        """Send the request to the path made of `segments` (decoded, relative to the base URL, e.g.
        ["chat", "completions"]; see `upstream_url`)."""
        out = dict(headers)
        out["accept-encoding"] = "identity"
        if self.api_key:
            out["authorization"] = f"Bearer {self.api_key}"
        if body is None or method in ("GET", "HEAD"):
            body = None
        url = upstream_url(self.base_url, segments)
        return await send(self.session, self.name, method, url, headers=out, body=body, params=query)
