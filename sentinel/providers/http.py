"""The pooled upstream HTTP client and the one place aiohttp's exceptions become ours.

One `aiohttp.ClientSession` per app (created in the lifespan) serves every provider. aiohttp was
chosen over httpx by measurement (see README, "Choices"): on one core it relays ~3x more requests.

Idle pooled connections are dropped after `keepalive` seconds, sooner than providers drop them;
if a provider still closed one just as it was reused, the request fails at once, before any answer
began — a provider closing an idle connection has not processed what arrived on it — and is sent
once more on a fresh connection. A reused connection that failed only after a while (the provider
had the request all that time: it may be working on it) and a failure on a new connection are
never retried here.

An answer's body is read for at most `BodyLimit.seconds` (`SENTINEL_STREAM_MAX_SECONDS`), whatever
reads it (a stream, a body read whole, a large answer or a download relayed as it arrives, an error
answer read for its message): the read timeout bounds only the wait for the next byte, so a
provider (or anything between) that sent a ping, a comment or a byte now and then held the request,
its in-flight slot and its reservation for as long as it liked. Past the limit a body relayed as it
arrives ends with `StreamTimeLimit`, one read before anything was answered with `AnswerTimeLimit`
(a 504) — `UpstreamResponse.iter_chunks`, the one place a body is read.

The pool holds at most `limit` connections. A request that waited for one of them past the connect
timeout is 503 `overloaded` (this process's load), not a connect timeout: that is a provider
failure, which put the provider's models in backoff for everyone while the provider was fine. The
wait for a pooled connection and the connect that may follow have a connect timeout each: aiohttp's
one `connect` timeout covered both, so a request that waited for most of it and then, a connection
free, connected to the provider in less than the timeout still timed out connecting — a provider
failure, caused by this process's load. The pool wait has its own timeout (`_PoolConnector`), the
TCP (and TLS) connect aiohttp's `sock_connect`, and aiohttp's `connect` (both, with the DNS lookup)
is their sum.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from sentinel.errors import (
    AnswerTimeLimit,
    Overloaded,
    StreamTimeLimit,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)
from sentinel.observability.logging import request_id_var
from sentinel.observability.redaction import redact
from sentinel.providers.errors import UnreadableAnswer, broken_off, upstream_error

log = logging.getLogger("sentinel.upstream")

# A pooled connection the peer closed while it sat idle fails like this before any answer began.
_STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_STALE_WITHIN = 1.0  # seconds: a pooled connection the peer had closed fails at once, not later
MAX_ERROR_BYTES = 64 * 1024  # an error answer's body read for its message (`UpstreamResponse.read_error`)
# A 2xx answer read whole before anything of it is answered (`UpstreamResponse.read`: `/v1/messages`,
# translated and native answers, which `max_tokens` bounds): past this it is not kept (see `read`).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


# Set when the connection a request goes out on came from the pool (the request's own task only).
_REUSED: ContextVar[bool] = ContextVar("sentinel_upstream_reused", default=False)
# Set while the request's task waits for a connection of the pool (every one of `limit` busy).
_POOL_WAIT: ContextVar[bool] = ContextVar("sentinel_upstream_pool_wait", default=False)


class _PoolConnector(aiohttp.TCPConnector):
    """A TCPConnector that notes, for the requesting task, when a pooled connection is reused
    (aiohttp's trace hooks would tell too, but cost a few coroutine calls on every request), and
    never reuses one that received bytes while it sat idle in the pool.

    aiohttp parses what arrives on an idle connection and queues it: a whole answer that arrived
    there (an answer to no request — a peer or a proxy between sending one more, or the rest of a
    previous one) was handed to the next request sent on it, another user's, as its own answer.
    Such a connection is closed instead (`should_close`: something is queued or unread on it), as
    Go's client drops an "unsolicited response received on idle HTTP channel", and the next pooled
    connection, or a new one, is taken.

    A wait for a connection (every one of `limit` busy) ends after `pool_timeout` seconds (None: no
    limit of its own) with the TimeoutError aiohttp turns into its connect timeout (`send` tells it
    from the provider's by `_POOL_WAIT`)."""

    def __init__(self, *, pool_timeout: float | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._pool_timeout = pool_timeout

    async def _get(self, key: Any, traces: list[Any]) -> Any:
        while True:
            connection = await super()._get(key, traces)
            if connection is None:
                return None
            protocol = connection.protocol
            if protocol is None or not protocol.should_close:
                _REUSED.set(True)
                return connection
            connection.close()

    async def _wait_for_available_connection(self, key: Any, traces: list[Any]) -> None:
        _POOL_WAIT.set(True)  # left set when a timeout ends the wait (`send`)
        async with asyncio.timeout(self._pool_timeout):
            await super()._wait_for_available_connection(key, traces)
        _POOL_WAIT.set(False)


def create_session(
    *, read_timeout: float, connect_timeout: float, keepalive: float = 15.0, limit: int = 1000,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """The app-wide upstream session: keep-alive pool, no total timeout (a body's is `BodyLimit`,
    applied where it is read), a connect timeout and an idle-read timeout (the longest wait for the
    next upstream byte). `connect_timeout` bounds the wait for a pooled connection and the TCP (and
    TLS) connect each; both, with the DNS lookup, take at most twice as long (see the module docstring).
    `trace_configs` are aiohttp hooks (tracing adds `traceparent` with one; none by default)."""
    connector = _PoolConnector(
        pool_timeout=connect_timeout, limit=limit, limit_per_host=limit, keepalive_timeout=keepalive, ttl_dns_cache=300
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=2 * connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,  # relay bytes as the upstream sent them
        skip_auto_headers=("User-Agent",),
        # One session serves every user: a cookie a provider set answering one user's request must
        # not go out with the next user's. (No jar also saves aiohttp's cookie work on every request.)
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
        trace_configs=list(trace_configs) or None,
    )


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The answer's body, or None as soon as it is past `limit` bytes (the rest is not read): for
    answers of a known kind and size (governance, JWKS) that a hostile or broken server could make
    large enough to exhaust memory."""
    return await _joined_within(resp.content.iter_chunked(64 * 1024), limit)


async def _joined_within(chunks: AsyncIterable[bytes], limit: int) -> bytes | None:
    """The `chunks` joined, or None as soon as they are past `limit` bytes (the rest is not read)."""
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        kept.append(chunk)
    return b"".join(kept)


class translate_errors:  # (named as it is used, as contextlib's context managers are)
    """Map aiohttp/asyncio failures to the UpstreamError branch, once, at the boundary (`with
    translate_errors(provider):`). A class, not a `contextmanager` generator: it is entered around
    every provider call and every body read, and a generator costs several calls more each time."""

    __slots__ = ("provider",)

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, UpstreamError):
            return
        provider = self.provider
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(
                f"Upstream {provider} timed out", provider=provider,
                sent=not isinstance(exc, aiohttp.ConnectionTimeoutError),
            ) from exc
        if isinstance(exc, aiohttp.ClientConnectorError):  # no connection: the request was never sent
            raise UpstreamConnectionError(
                f"Cannot connect to upstream {provider}: {exc.os_error.strerror or type(exc.os_error).__name__}",
                provider=provider, sent=False,
            ) from exc
        if isinstance(exc, aiohttp.ClientError | ConnectionError):  # dropped once made: it may have arrived
            raise UpstreamConnectionError(
                f"Upstream {provider} connection failed: {type(exc).__name__}", provider=provider, sent=True
            ) from exc


class stalled_if:
    """Around sending a request until its answer's headers: a read timeout of a streamed one is a
    provider stuck before its stream began (`UpstreamTimeout.stalled`), which counts against its health."""

    __slots__ = ("stream",)

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, UpstreamTimeout):
            exc.stalled = self.stream and exc.sent


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """How long an answer's body may be read (`SENTINEL_STREAM_MAX_SECONDS`), from the moment it is
    first read; `clock` (monotonic seconds) is what each chunk's arrival is checked on. `hold_seconds`
    (`SENTINEL_STREAM_HOLD_SECONDS`): how long an Anthropic stream's opening may be held back from its
    client (`sentinel.providers.anthropic.overloaded_at_start`), on the same clock."""

    seconds: float = 900.0
    clock: Callable[[], float] = time.monotonic
    hold_seconds: float = 5.0


BODY_LIMIT = BodyLimit()  # `SENTINEL_STREAM_MAX_SECONDS`' default


@dataclass
class UpstreamResponse:
    """An upstream answer whose body has not been read yet (so it can be streamed)."""

    provider: str
    status: int
    headers: list[tuple[str, str]]
    raw: aiohttp.ClientResponse
    content_type: str = field(default="")
    secret: str | None = field(default=None, repr=False)  # the provider key sent: kept out of `read_error`
    sent_at: float | None = field(default=None, repr=False)  # `clock`'s reading when the request began to be sent
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    limit: BodyLimit = field(default=BODY_LIMIT, repr=False)  # how long its body may be read (`iter_chunks`)
    # The model a generation was sent to (an alias target's upstream model), set by the `/v1` surfaces:
    # a 404 saying the provider no longer serves it is told apart (`sentinel.services.answers.refuse`).
    model: str | None = None
    # Bytes of the body already read (an Anthropic stream's opening held back until its first block:
    # `sentinel.providers.anthropic.overloaded_at_start`), which `iter_chunks` yields first, then
    # raises the failure that read ended with (`held_error`), if any.
    held: list[bytes] = field(default_factory=list, repr=False, compare=False)
    held_error: Exception | None = field(default=None, repr=False, compare=False)
    _deadline: asyncio.TimerHandle | None = field(default=None, repr=False, compare=False)
    # When the body's time is up, on `limit.clock` and on the event loop's clock (set by its first read).
    _ends: tuple[float, float] | None = field(default=None, repr=False, compare=False)

    @property
    def streams(self) -> bool:
        """Whether a 2xx answer to a streamed request is the stream it asked for, one Sentinel reads as
        it comes: anything but a JSON answer (a server that ignores `stream` answers JSON, to be read
        and charged as one) or a compressed body (`encoded`: read as an answer that cannot be read
        is, charged the output it reserved — relayed as a stream, its events and usage went unread
        and the call was charged no output while the client's SDK inflated and read it whole)."""
        media = self.content_type.partition(";")[0].strip().lower()
        return media != "application/json" and not media.endswith("+json") and not self.encoded

    @property
    def encoded(self) -> bool:
        """Whether the body is compressed: a `Content-Encoding` other than `identity`, though Sentinel
        asks every provider for `identity` (the bytes are relayed as they are, never inflated)."""
        return any(name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity")
                   for name, value in self.headers)

    @property
    def event_stream(self) -> bool:
        """Whether the answer is an event stream (`text/event-stream`)."""
        return self.content_type.partition(";")[0].strip().lower() == "text/event-stream"

    @property
    def client_switched(self) -> bool:
        """Whether the request went with a client's switch that changes how the provider reads it — a
        beta (`anthropic-beta`, `openai-beta`, relayed from the client: `forwardable_headers`; the
        openai SDK's `?beta=true`, or any `beta` a pass-through query sent on). One can make a provider
        refuse Sentinel's key for that request alone (Anthropic's OAuth beta expects another
        credential), so such a refusal says nothing of the key (`upstream_error`)."""
        sent = self.raw.request_info
        return "anthropic-beta" in sent.headers or "openai-beta" in sent.headers or "beta" in sent.url.query

    async def read(self) -> bytes:
        """The whole body (read before anything of it is answered: past `limit`, `AnswerTimeLimit`).
        A body that came whole with its headers (an ordinary answer: nothing left to wait for) is
        taken as it is, without the limit's timer. A body past MAX_ANSWER_BYTES is
        `UnreadableAnswer` (502 `provider_bad_response`: served, charged the output it reserved) as
        soon as it is, the rest unread: kept whole, a provider (or anything between) sending a body
        without end grew the process's memory until the time limit, or until it was killed."""
        if self.raw.content.is_eof() and self._ends is None:
            with translate_errors(self.provider):
                raw = await self.raw.read()
            if len(raw) > MAX_ANSWER_BYTES:
                raise self._too_large()
            return raw
        whole = await self.read_within(MAX_ANSWER_BYTES)
        if whole is None:
            raise self._too_large()
        return whole

    async def read_within(self, limit: int) -> bytes | None:
        """The whole body, chunk by chunk (`iter_chunks`: its time limit), or None as soon as it is
        past `limit` bytes — the rest unread: the caller drops the connection (`close`)."""
        async with aclosing(self.iter_chunks()) as body:
            return await _joined_within(body, limit)

    def _too_large(self) -> UnreadableAnswer:
        log.warning("answer larger than Sentinel reads whole", extra={"provider": self.provider,
                                                                       "limit_bytes": MAX_ANSWER_BYTES})
        return UnreadableAnswer(
            f"Provider {self.provider} sent an answer larger than the {MAX_ANSWER_BYTES} bytes Sentinel reads",
            usage=None, provider=self.provider,
        )

    async def read_error(self) -> bytes:
        """The body of an error answer (status >= 300: what its message is read from), the connection
        released. At most MAX_ERROR_BYTES: a longer one, as a body that breaks off, reads as none (b"")
        — the rest is never read (an upstream, or a proxy between, answering an error with a body
        without end held the request and grew the process's memory until its read timeout, or until
        it ran out); so does one still coming after `limit`. The provider key the request was sent
        with is replaced by `***` in it (`redact`): every error text Sentinel relays, answers or logs
        is read from here."""
        try:
            raw = await self.read_within(MAX_ERROR_BYTES)  # (for at most `limit`: a body sent a byte at a time)
        except UpstreamError:
            raw = None
        finally:
            self.release()  # (aiohttp drops a connection whose body was not read to its end)
        return redact(raw or b"", self.secret)

    async def read_served(self) -> bytes:
        """The whole body of a 2xx answer, the connection released (see `reading_served`)."""
        with self.reading_served():
            raw = await self.read()
        self.release()
        return raw

    async def drain_served(self) -> None:
        """Read a 2xx answer's body to its end keeping none of it (one that cannot be read, charged
        without it: a stream compressed despite `identity`), the connection released (see
        `reading_served`). Read whole instead, a body without end grew memory until its time limit."""
        with self.reading_served():
            async for _ in self.iter_chunks():
                pass
        self.release()

    def reading_served(self) -> _ReadingServed:
        """Reading a 2xx answer's body: on a failure the connection is dropped. The provider served
        and billed the call: a connection that breaks while it is read is `BrokenOffAnswer` —
        recorded, never given back nor sent again elsewhere, with the seconds since the request began
        to be sent (`elapsed`: whether it counts toward backoff); a read timeout stays one (sent)."""
        return _ReadingServed(self)

    async def iter_chunks(self, *, relayed: bool = False) -> AsyncGenerator[bytes, None]:
        """Yield body bytes as they arrive (no re-chunking, no buffering), for at most `limit.seconds`
        from the body's first read (whichever read it was: one body may be read in parts, a large
        answer's head, then the rest relayed).

        Checked on `limit.clock` as each chunk arrives (pings, comments, single bytes are chunks too),
        and by a timer on the event loop that ends a wait for the next bytes at the limit (the wait
        is otherwise bounded only by the read timeout). Past it the body ends with `StreamTimeLimit`
        when it is `relayed` as it arrives (a stream, a large answer passed through: the answer began,
        it is ended as a cut stream), else with `AnswerTimeLimit` (504, read before anything was
        answered; charged as a read timeout after the request was sent). `close` stops the timer.
        Bytes `held` back come first (and the failure their read ended with)."""
        while self.held:
            yield self.held.pop(0)
        if self.held_error is not None:
            error, self.held_error = self.held_error, None
            raise error
        content = self.raw.content
        limit = self.limit
        loop = asyncio.get_running_loop()
        if self._ends is None:
            self._ends = (limit.clock() + limit.seconds, loop.time() + limit.seconds)
        ends, timer_at = self._ends
        with translate_errors(self.provider):
            self._disarm()
            timer = self._deadline = loop.call_at(timer_at, lambda: content.set_exception(self._cut(relayed)))
            try:
                async for chunk in content.iter_any():
                    if limit.clock() >= ends:
                        raise self._cut(relayed)
                    yield chunk
            finally:
                # Only this read's timer: a read of the body given up unfinished (a large answer's
                # head) may end after the next one armed its own.
                timer.cancel()
                if self._deadline is timer:
                    self._deadline = None

    def _cut(self, relayed: bool) -> AnswerTimeLimit | StreamTimeLimit:
        """The error a body read past its time limit ends with (logged once, here)."""
        seconds = self.limit.seconds
        extra = {"provider": self.provider, "limit_seconds": seconds}
        if relayed:
            log.warning("stream cut at its time limit", extra=extra)
            return StreamTimeLimit(
                f"Upstream {self.provider} stream cut: it ran past the {seconds:g} s a streamed answer may last",
                provider=self.provider,
            )
        log.warning("answer cut at its time limit", extra=extra)
        return AnswerTimeLimit(
            f"Upstream {self.provider} timed out: its answer took longer than the {seconds:g} s an answer may take",
            provider=self.provider,
        )

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def close(self) -> None:
        """Release (or, mid-body, drop) the upstream connection."""
        self._disarm()
        self.raw.close()

    def release(self) -> None:
        self._disarm()
        self.raw.release()


class _ReadingServed:
    """`UpstreamResponse.reading_served` (a class: see `translate_errors`)."""

    __slots__ = ("response",)

    def __init__(self, response: UpstreamResponse) -> None:
        self.response = response

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not isinstance(exc, UpstreamError):
            return
        response = self.response
        response.close()
        if isinstance(exc, UpstreamConnectionError):
            elapsed = None if response.sent_at is None else response.clock() - response.sent_at
            raise broken_off(response.provider, elapsed) from None


async def send(
    session: aiohttp.ClientSession,
    provider: str,
    method: str,
    url: str | URL,
    *,
    headers: dict[str, str],
    body: bytes | None = None,
    params: list[tuple[str, str]] | None = None,
    secret: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    limit: BodyLimit = BODY_LIMIT,
) -> UpstreamResponse:
    """Send a request and return as soon as the upstream's status and headers are in. It carries the
    request's id (`X-Request-Id`, see `sentinel.api.middleware`) as `X-Client-Request-Id`, the header
    OpenAI keeps in its logs (a provider that does not know it ignores it): a provider's support can
    find the call by the id the client and Sentinel's access log know. An answer that is not final
    (101 Switching Protocols: Sentinel never asks for an upgrade) is a provider failure, as a 3xx is
    (`upstream_error`: 502 `provider_error`). `secret`: the provider key in `headers`, never read back
    from an error answer (`UpstreamResponse.read_error`). `clock` (monotonic seconds): a connection
    dropped after the request was sent carries the seconds since its sending began
    (`UpstreamConnectionError.elapsed`), as does an answer that breaks off while it is read
    (`UpstreamResponse.reading_served`): whether it counts against the provider's health. `limit`:
    how long the answer's body may be read (`UpstreamResponse.iter_chunks`)."""
    rid = request_id_var.get()
    if rid is not None:
        headers = {**headers, "x-client-request-id": rid}
    try:
        with translate_errors(provider):
            for attempt in (1, 2):
                _REUSED.set(False)
                _POOL_WAIT.set(False)
                started = clock()
                try:
                    raw = await session.request(
                        method, url, headers=headers, data=body, params=params, allow_redirects=False
                    )
                    break
                except aiohttp.ConnectionTimeoutError:
                    if _POOL_WAIT.get():  # never sent, nor the provider's doing: no backoff, no retry elsewhere
                        raise Overloaded(
                            f"Every connection to upstream {provider} is busy on this server; retry shortly",
                            retry_after=1, provider=provider,
                        ) from None
                    raise
                except _STALE_CONNECTION:
                    if attempt == 2 or not _REUSED.get() or clock() - started >= _STALE_WITHIN:
                        raise
    except UpstreamConnectionError as exc:
        if exc.sent:  # how soon it dropped tells a failing provider from a cut of a long request
            exc.elapsed = clock() - started
        raise
    if raw.status < 200:  # 101, the one interim status aiohttp returns: a protocol switch never asked for
        raw.close()  # (relayed, its status line switched the client's connection: no answer, no error)
        raise upstream_error(provider, raw.status, b"", [])
    return UpstreamResponse(
        provider=provider,
        status=raw.status,
        headers=[(k, v) for k, v in raw.headers.items() if k.isascii() and v.isascii()],  # else not relayable
        raw=raw,
        content_type=raw.headers.get("Content-Type", ""),
        secret=secret,
        sent_at=started,
        clock=clock,
        limit=limit,
    )
