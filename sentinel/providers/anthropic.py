"""Anthropic's Messages API: the native chat provider and the raw relay of `/v1/messages`.

Base URL without /v1, as the SDK takes it. The client's credentials never leave Sentinel; the
provider key is injected here (as `x-api-key`) and nowhere else. The client's `anthropic-version`
and `anthropic-beta` are forwarded; a request without `anthropic-version`, or with an empty (or
whitespace-only) one, gets ANTHROPIC_VERSION.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from sentinel.domain.usage import Usage
from sentinel.errors import SentinelError
from sentinel.native import ChatRequest, ProviderReply, StreamError
from sentinel.native.anthropic import (
    anthropic_cache_tokens,
    build_anthropic_request,
    parse_anthropic_response,
    parse_anthropic_usage,
)
from sentinel.native.sse import SSEParser
from sentinel.native.stream import AnthropicStreamNormalizer, StreamNormalizer
from sentinel.providers.chat import ChatProvider, ProviderStream, Refused, recorded_usage
from sentinel.providers.errors import OVERLOADED_ERROR, OverloadedAtStart
from sentinel.providers.http import BODY_LIMIT, BodyLimit, UpstreamResponse, send

ANTHROPIC_VERSION = "2023-06-01"
# The events of a stream's opening held back until its answer's first block (`overloaded_at_start`).
_OPENING = frozenset({"message_start", "ping"})
HOLD_LIMIT = 1 << 20  # bytes of an opening held at most: past them it is relayed as it comes


async def overloaded_at_start(upstream: UpstreamResponse) -> bool:
    """Read an Anthropic stream's opening — `message_start` and any `ping`s — into `upstream.held`
    (`iter_chunks` yields it again first), up to its first other event: whether that is an `error`
    event of Anthropic's overload (`overloaded_error`), sent before any block of the answer. Held for
    at most `limit.hold_seconds` (`SENTINEL_STREAM_HOLD_SECONDS`) from its first read — checked on
    `limit.clock` as each chunk arrives, and by a timer on the event loop for a provider that sends
    nothing more — and HOLD_LIMIT bytes: past either, False (the opening is relayed as it came and the
    stream goes on; an overload after it breaks the stream, as one after its first block does). A
    provider that stalled after `message_start` kept the client without headers until the read timeout.
    A failure of the read is kept (`held_error`) and raised after the held bytes, as it would have been
    without the hold."""
    parser = SSEParser()
    size = 0
    limit = upstream.limit
    ends = limit.clock() + limit.hold_seconds
    try:
        async with asyncio.timeout(limit.hold_seconds), aclosing(upstream.iter_chunks(relayed=True)) as chunks:
            async for chunk in chunks:
                upstream.held.append(chunk)
                size += len(chunk)
                for event in parser.feed(chunk):
                    if event.event not in _OPENING:
                        return event.event == "error" and _error_type(event.data) == OVERLOADED_ERROR
                if size > HOLD_LIMIT or limit.clock() >= ends:
                    return False
    except TimeoutError:  # the hold's time is up, nothing more having come: what came is relayed
        pass
    except SentinelError as exc:  # a broken read: the relay meets it after the bytes that came
        upstream.held_error = exc
    except StreamError:  # an event too large: the relay's own reading of it fails as it did
        pass
    except BaseException:  # cancelled (the client left): nothing will read it
        upstream.close()
        raise
    return False


def _error_type(data: str) -> object:
    """The `error.type` of an `error` event's data (None when it is not that shape)."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error.get("type") if isinstance(error, dict) else None


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

    async def open_stream_body(
        self, body: dict[str, Any], *, relay_client_errors: bool = False, refused: Refused | None = None
    ) -> ProviderStream:
        """As `ChatProvider.open_stream_body`, the stream's opening held back until its first block
        (`overloaded_at_start`): an overload before it raises `OverloadedAtStart`, whose `relay()` is
        the stream as it came."""
        stream = await super().open_stream_body(body, relay_client_errors=relay_client_errors, refused=refused)
        if await overloaded_at_start(stream.upstream):
            raise OverloadedAtStart(self.name, relay=lambda: stream, drop=stream.upstream.close)
        return stream

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
        client's forwardable `headers`, the provider key and an `anthropic-version` (ANTHROPIC_VERSION for
        one missing or empty: Anthropic refuses `anthropic-version: ""`, a 400 charged to the user)."""
        out = dict(headers)
        out["accept-encoding"] = "identity"
        if not out.get("anthropic-version", "").strip():
            out["anthropic-version"] = ANTHROPIC_VERSION
        if self.api_key:
            out["x-api-key"] = self.api_key
        url = URL(self.base_url + "/v1" + "".join("/" + quote(s, safe="") for s in segments), encoded=True)
        return await send(self.session, self.name, "POST", url, headers=out, body=body, secret=self.api_key,
                          clock=self.clock, limit=self.body_limit)
