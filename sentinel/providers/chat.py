"""Native chat providers: the plumbing every wire format shares, over the app's upstream session.

A provider's `body()` translates a unified request; `complete_body()` returns a `Completion` (the
unified reply and how long the upstream took); `open_stream_body()` returns a `ProviderStream`
whose `events()` yields unified chunks. Error answers are mapped in `sentinel.providers.errors`, or
handed to the caller's `refused` hook (which must raise) when it gives one: the services settle a
request the provider refused there (`sentinel.services.answers.refuse`).
Timing travels with each answer: a provider object is shared by concurrent requests and keeps no
per-request state. Provider keys go into headers and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
import orjson

from sentinel.domain.usage import Usage
from sentinel.native import ChatRequest, ProviderReply, TranslationError
from sentinel.native.end_user import openai_end_user_field, with_end_user
from sentinel.native.responses import CacheTokens
from sentinel.native.responses import Usage as WireUsage
from sentinel.native.sse import SSEParser
from sentinel.native.stream import StreamNormalizer, StreamResult
from sentinel.observability.redaction import redact
from sentinel.providers.catalog import ProviderSpec
from sentinel.providers.errors import UnreadableAnswer, upstream_error
from sentinel.providers.http import BODY_LIMIT, BodyLimit, UpstreamResponse, send, stalled_if


def recorded_usage(usage: WireUsage | None, cache: CacheTokens) -> Usage | None:
    """A provider's reported usage, with its prompt-cache figures, as the meter records it (None:
    the provider reported none, the meter estimates)."""
    return None if usage is None else Usage(usage.prompt_tokens, usage.completion_tokens, cache.write, cache.read)


# Called with an upstream error answer (status >= 300, body unread) instead of raising it here; it raises.
Refused = Callable[[UpstreamResponse], Awaitable[NoReturn]]


@dataclass(frozen=True, slots=True)
class Completion:
    """A unified reply and the upstream's time to answer it (seconds)."""

    reply: ProviderReply
    upstream_seconds: float


@dataclass
class ProviderStream:
    """An open upstream stream, normalised to unified chunks; `upstream_seconds` is the time to its headers."""

    upstream: UpstreamResponse
    normalizer: StreamNormalizer
    upstream_seconds: float = 0.0
    result: StreamResult | None = None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Unified chunks as they arrive; raises StreamError (or UpstreamError) when the stream breaks,
        `StreamTimeLimit` when it runs past its time limit (`UpstreamResponse.iter_chunks`).

        After the iterator ends normally, `result` says how the stream ended.
        """
        parser = SSEParser()
        try:
            async for raw in self.upstream.iter_chunks(relayed=True):
                for event in parser.feed(raw):
                    for chunk in self.normalizer.feed(event):
                        yield chunk
                if self.normalizer.done:
                    # The final event came: nothing after it is read, so nothing more is awaited (an
                    # upstream holding its connection open delayed the end until its read timeout,
                    # which then turned a whole answer into an error).
                    break
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

    @property
    def measured(self) -> Usage | None:
        """The usage the provider reported, with its cache figures, as the meter records it (None: estimate)."""
        return recorded_usage(self.normalizer.usage, self.normalizer.cache)

    @property
    def reported_input(self) -> Usage | None:
        """The input figures the provider reported before its output count (kept when the stream breaks off)."""
        prompt, cache = self.normalizer.prompt_tokens, self.normalizer.cache
        return None if prompt is None else Usage(prompt, 0, cache.write, cache.read)


class ChatProvider:
    """Common plumbing; subclasses build the wire request and pick the parser/normaliser."""

    kind = ""

    def __init__(
        self, spec: ProviderSpec, session: aiohttp.ClientSession, *, default_max_tokens: int = 4096,
        clock: Callable[[], float] = time.monotonic, body_limit: BodyLimit = BODY_LIMIT,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.session = session
        self.default_max_tokens = default_max_tokens
        self.clock = clock  # what `send` reads (how soon a connection dropped: `UpstreamConnectionError.elapsed`)
        self.body_limit = body_limit  # how long an answer's body may be read (`UpstreamResponse.iter_chunks`)
        # (for the OpenAI wire format: `sentinel.native.end_user`)
        self.end_user_field = openai_end_user_field(spec.base_url, spec.end_user_field)

    def with_end_user(self, body: dict[str, Any], end_user: str) -> dict[str, Any]:
        """A translated `body` telling this provider the caller's pseudonym (`sentinel.native.end_user`)."""
        return with_end_user(body, self.kind, end_user, self.end_user_field)

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

    def scrub(self, text: str) -> str:
        """`text` (what the provider's in-stream error says) without this provider's key (`redact`)."""
        return redact(text, self.spec.api_key)

    def usage_of(self, answer: Any) -> Usage | None:
        """The usage of an answer read leniently (its `usage` object alone), or None."""
        raise NotImplementedError

    async def _post(
        self, body: dict[str, Any], relay_client_errors: bool, refused: Refused | None = None
    ) -> tuple[UpstreamResponse, float]:
        payload = orjson.dumps(body)
        started = time.perf_counter()
        with stalled_if(body.get("stream") is True):
            upstream = await send(self.session, self.name, "POST", self.url(), headers=self.headers(), body=payload,
                                  secret=self.spec.api_key, clock=self.clock, limit=self.body_limit)
        elapsed = time.perf_counter() - started
        if upstream.status >= 300:
            if refused is not None:
                await refused(upstream)
            raw = await upstream.read_error()
            raise upstream_error(
                self.name, upstream.status, raw, upstream.headers, relay_client_errors=relay_client_errors
            )
        return upstream, elapsed

    async def complete_body(
        self, body: dict[str, Any], tier: str, *, relay_client_errors: bool = False, refused: Refused | None = None
    ) -> Completion:
        """Send an already translated (non-streaming) body; the unified reply. `relay_client_errors`:
        an upstream 4xx keeps its status, type and message (the `/v1` surfaces) instead of becoming 400.
        `refused`: an error answer is handed to it (it raises) instead of being raised here."""
        upstream, elapsed = await self._post(body, relay_client_errors, refused)
        raw = await upstream.read_served()
        answer: Any = None
        try:
            answer = orjson.loads(raw)
            return Completion(self.parse(answer, tier), elapsed)
        except (orjson.JSONDecodeError, TranslationError, ValueError) as exc:
            message = exc.message if isinstance(exc, TranslationError) else "unparseable response body"
            raise UnreadableAnswer(f"Provider {self.name} sent an invalid response: {message}",
                                   usage=self.usage_of(answer), provider=self.name) from None

    async def open_stream_body(
        self, body: dict[str, Any], *, relay_client_errors: bool = False, refused: Refused | None = None
    ) -> ProviderStream:
        """Send an already translated streaming body; returns once the upstream answered 2xx (an error
        answer as `complete_body`)."""
        upstream, elapsed = await self._post(body, relay_client_errors, refused)
        if not upstream.streams:  # it ignored `stream` (JSON) or compressed it: served, and billed as such
            answer: Any = None
            if upstream.encoded:  # (never inflated: unreadable, and kept whole it grew without bound)
                await upstream.drain_served()
            else:
                try:
                    answer = orjson.loads(await upstream.read_served())
                except orjson.JSONDecodeError:
                    answer = None
            how = "with a compressed body" if upstream.encoded else "without a stream"
            raise UnreadableAnswer(f"Provider {self.name} answered a streamed request {how}",
                                   usage=self.usage_of(answer), provider=self.name)
        return ProviderStream(upstream, self.normalizer(), elapsed)


def make_provider(
    spec: ProviderSpec, session: aiohttp.ClientSession, *, default_max_tokens: int,
    clock: Callable[[], float] = time.monotonic, body_limit: BodyLimit = BODY_LIMIT,
) -> ChatProvider:
    """The chat provider for `spec`'s wire format; `clock`: what its requests' timing is read on;
    `body_limit`: how long an answer's body may be read (`SENTINEL_STREAM_MAX_SECONDS`)."""
    from sentinel.providers.anthropic import AnthropicProvider
    from sentinel.providers.openai import OpenAIChatProvider

    cls: type[ChatProvider] = AnthropicProvider if spec.kind == "anthropic" else OpenAIChatProvider
    return cls(spec, session, default_max_tokens=default_max_tokens, clock=clock, body_limit=body_limit)
