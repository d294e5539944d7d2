"""OpenAI's wire format: the native chat provider and the raw OpenAI-compatible relay.

Any OpenAI-compatible base URL works (OpenAI itself, xAI, Groq, vLLM, Ollama, the mock). Of the
client's headers only an allowlist goes upstream (`forwardable_headers`), and of the provider's only
an allowlist comes back (`relayable_headers`); the provider key is injected here and nowhere else,
and it is never logged.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from sentinel.domain.catalogue import takes_completion_cap
from sentinel.domain.usage import Usage
from sentinel.native import ChatRequest, ProviderReply
from sentinel.native.end_user import openai_end_user_field
from sentinel.native.openai import (
    build_openai_request,
    openai_cache_tokens,
    parse_openai_response,
    parse_openai_usage,
)
from sentinel.native.stream import OpenAIStreamNormalizer, StreamNormalizer
from sentinel.providers.chat import ChatProvider, recorded_usage
from sentinel.providers.http import BODY_LIMIT, BodyLimit, UpstreamResponse, send


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
        return build_openai_request(req, model, stream=stream, completion_cap=takes_completion_cap(model))

    def parse(self, body: Any, tier: str) -> ProviderReply:
        return parse_openai_response(body, provider=self.name, tier=tier)  # type: ignore[arg-type]

    def normalizer(self) -> StreamNormalizer:
        return OpenAIStreamNormalizer(provider=self.name, scrub=self.scrub)

    def usage_of(self, answer: Any) -> Usage | None:
        raw = answer.get("usage") if isinstance(answer, dict) else None
        return recorded_usage(parse_openai_usage(raw), openai_cache_tokens(raw))


# The only client request headers relayed to a provider (an allowlist, as for answers below): what the
# official OpenAI and Anthropic SDKs send and a provider reads — the body's type and encoding (a body
# Sentinel read as JSON goes as `application/json`, and a compressed one is refused), `accept`,
# `user-agent`, the SDKs' `x-stainless-*` (language, version, retry count, timeout), the API version
# and beta switches (`openai-beta`, `anthropic-version`, `anthropic-beta`) — and, on a download of a
# file's content only, its range and conditional headers (`DOWNLOAD_HEADERS`: on an object's JSON, a
# range would cut the usage Sentinel charges it by out of the answer). Everything else stays: the client's credentials
# (the provider key replaces them), cookies, the account it names (`openai-organization`,
# `openai-project`), hop-by-hop headers and those aiohttp sets itself (length, host; the encoding is
# pinned so that usage can be read), method overrides, the client's address, its trace context (with
# tracing on, Sentinel's own `traceparent` goes), an idempotency key (the provider would keep it per
# account: shared by every user; neither SDK sends one), and whatever a gateway in front of the
# provider reads — its credentials, cache and routing switches (Cloudflare AI Gateway's `cf-aig-*`,
# Helicone's `helicone-*`, Portkey's `x-portkey-*`, LiteLLM's `x-litellm-*`).
RELAYED_REQUEST_HEADERS = frozenset(
    {
        "content-type", "content-encoding", "accept", "user-agent",
        "openai-beta", "anthropic-version", "anthropic-beta",
    }
)
DOWNLOAD_HEADERS = frozenset(
    {"range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)
# ... and these families: the SDKs' own, and the fault knobs of Sentinel's mock upstream
# (`sentinel.mock.faults`: the demo, the tests), which no provider or gateway reads.
RELAYED_REQUEST_PREFIXES = ("x-stainless-", "x-mock-")
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


def forwardable_headers(
    raw: list[tuple[bytes, bytes]], *, as_json: bool = False, download: bool = False,
) -> dict[str, str]:
    """The client's request headers that may go upstream (RELAYED_REQUEST_HEADERS and _PREFIXES, and
    with `download` — a file's content — DOWNLOAD_HEADERS: the one rule for every provider call made
    with a client's headers, relayed or pass-through, to OpenAI or Anthropic); with `as_json` (a body
    Sentinel read as JSON and re-encoded) its Content-Type is `application/json` and it has no
    Content-Encoding, whatever the client named: the provider reads the body as Sentinel did.
    A header sent on several lines goes as one, its values joined (`a, b`, as HTTP reads a list: each
    line used to replace the one before) — only a list arrives so: a header read as one value
    (`content-type`, `openai-beta`, `anthropic-version`, `range`, ...) on two lines is
    refused before this (`sentinel.api.middleware._ONE_LINE_HEADERS`); a value that is not ASCII does not go (sent on as UTF-8,
    the provider received other bytes than the client's, as a provider's are not relayed either)."""
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if (key in RELAYED_REQUEST_HEADERS or key.startswith(RELAYED_REQUEST_PREFIXES)
                or (download and key in DOWNLOAD_HEADERS)) and value.isascii():
            text = value.decode("ascii")
            out[key] = f"{out[key]}, {text}" if key in out else text
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
    clock: Callable[[], float] = time.monotonic  # what `send` reads (how soon a connection dropped)
    body_limit: BodyLimit = BODY_LIMIT  # how long an answer's body may be read (`SENTINEL_STREAM_MAX_SECONDS`)
    configured_end_user_field: str | None = None  # the providers file's `end_user_field`, if any
    # The rule it is told the end user by (`sentinel.native.end_user`), decided once.
    end_user_field: str = field(init=False)

    def __post_init__(self) -> None:
        self.end_user_field = openai_end_user_field(self.base_url, self.configured_end_user_field)

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
        return await send(self.session, self.name, method, url, headers=out, body=body, params=query,
                          secret=self.api_key, clock=self.clock, limit=self.body_limit)
