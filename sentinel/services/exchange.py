"""What a service reports about one request, and what it answers, in transport-neutral form."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sentinel.errors import StreamTimeLimit, UpstreamError
from sentinel.native import StreamError
from sentinel.observability.tracing import NOOP_TRACING, Tracing

log = logging.getLogger("sentinel.stream")

Headers = list[tuple[str, str]]

# Added to every event stream Sentinel sends (a relayed one keeps the upstream's content type).
SSE_HEADERS: Headers = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]
# An upstream's own values of these give way to Sentinel's (one `cache-control`, not two).
SSE_HEADER_NAMES = frozenset(name for name, _ in SSE_HEADERS)
# The headers of an event stream Sentinel writes itself (native API, cross-format translation).
SSE_RESPONSE_HEADERS: Headers = [("content-type", "text/event-stream"), *SSE_HEADERS]


@dataclass
class Exchange:
    """Facts a service fills in while serving one request (the transport renders and logs them).

    `usage_id` is the request's ledger key; `headers` are extra response headers (rate limits,
    `X-Sentinel-*`); `upstream_status` stays None when no upstream answered. `spans` opens child
    spans of the request's trace (a no-op unless tracing is on); the `operation`, model and token
    fields are what the request's span reports (GenAI conventions), filled in as they become known.
    """

    usage_id: str
    provider: str | None = None
    upstream_seconds: float = 0.0
    upstream_status: int | None = None
    external_id: str | None = None
    headers: Headers = field(default_factory=list)
    spans: Tracing = field(default=NOOP_TRACING, repr=False)
    operation: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def recorded(self, input_tokens: int, output_tokens: int, response_model: str | None = None) -> None:
        """Note the usage that was recorded (and the model that answered, when known)."""
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        if response_model:
            self.response_model = response_model


@dataclass
class Reply:
    """A complete answer."""

    status: int
    body: bytes
    headers: Headers


@dataclass
class StreamReply:
    """A streamed answer: `chunks` are relayed as they come; `on_close(disconnected)` runs once at the end.

    `on_close` may return a future of what still goes on for the request after it (a stream its client
    left, read on for its usage: `MeteredStream`): the request's in-flight slot is held until it is done.
    """

    status: int
    headers: Headers
    chunks: AsyncIterator[bytes]
    on_close: Callable[[bool], Awaitable[asyncio.Future[None] | None]] | None = None


@dataclass
class Ending:
    """How a metered stream ended: the status its usage is recorded with and its last bytes."""

    status: int = 200
    last: bytes = b""


# The most bytes a stream left by its client is read on for its final usage (`MeteredStream`'s drain):
# past them the drain stops and the stream is charged as it was before it (its reservation).
DRAIN_MAX_BYTES = 16 * 1024 * 1024


class MeteredStream:
    """A stream whose usage record is durable before the client sees its end.

    `produce(ending)` yields the body and fills in `ending` (status, final bytes such as `[DONE]`
    or an error event); then `settle(status)` runs — shielded, so a client leaving at that moment
    cannot cancel the write halfway — and only then the final bytes are sent. A stream cut before
    its producer finished — the client left, or the server cancelled it (stopping past its shutdown
    deadline) — is settled by `on_close` with 499, as a cancelled request is (`Meter.fail`).
    `settle` runs once: a client that leaves while it runs has `on_close` wait for that one. (It
    ran again, alongside: the meter's part is idempotent, the rest of a settlement is not — a
    Responses turn's tokens were added to its conversation's count twice.) `on_end` runs after
    it, also when it failed.

    `drains` (given when the request's output is hidden — billed but not streamed,
    `Admission.hidden_output` —: the meter's `read_on`): without the provider's final usage such a
    stream is charged the output it reserved, which for a request that named no cap is
    `DEFAULT_MAX_OUTPUT_TOKENS` however much the provider billed. So each step of its producer runs
    as a task of its own, which the client leaving does not cancel, and a stream its client left is
    read on to its end in the background (`_drain`, run by `drains`: nothing more is sent; bounded
    by the stream's time limit and `DRAIN_MAX_BYTES`) before it is settled (499) — with the
    provider's usage when the end brought it, else as before. The meter cuts a drain at shutdown
    (`QuotaMeter.drain`), which then settles so.
    """

    def __init__(
        self,
        produce: Callable[[Ending], AsyncIterator[bytes]],
        settle: Callable[[int], Awaitable[None]],
        on_end: Callable[[], Awaitable[None]] | None = None,
        *,
        drains: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    ) -> None:
        self._produce = produce
        self._settle = settle
        self._on_end = on_end
        self._drains = drains
        self.ending = Ending()
        self._produced = False  # the producer finished: `ending.status` is how the stream ended
        self._settlement: asyncio.Future[None] | None = None  # begun (a task of its own), once
        # A draining stream's producer left unfinished when the client's side stopped, with its step
        # under way (if any): drained or closed by `on_close`.
        self._rest: tuple[AsyncIterator[bytes], asyncio.Future[bytes] | None] | None = None

    def _settled(self, status: int) -> asyncio.Future[None]:
        """The settlement: begun with `status` by the first call, the one under way after that."""
        if self._settlement is None:
            self._settlement = asyncio.ensure_future(self._settle(status))
        return self._settlement

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, then (after the usage record is stored) the final bytes."""
        if self._drains is not None:
            async for chunk in self._stepped():
                yield chunk
        else:
            async for chunk in self._produce(self.ending):
                yield chunk
        self._produced = True
        await asyncio.shield(self._settled(self.ending.status))
        if self.ending.last:
            yield self.ending.last

    async def _stepped(self) -> AsyncIterator[bytes]:
        """The producer's chunks, each read by a task of its own: the client leaving (the relay
        cancelled, the body closed) leaves the producer as it is, for `on_close`."""
        producer = self._produce(self.ending)
        step: asyncio.Future[bytes] | None = None
        finished = False
        try:
            while True:
                step = asyncio.ensure_future(anext(producer))
                try:
                    chunk = await asyncio.shield(step)
                except StopAsyncIteration:
                    finished = True
                    return
                step = None
                yield chunk
        finally:
            if not finished:
                self._rest = (producer, step)

    async def on_close(self, disconnected: bool) -> asyncio.Future[None] | None:
        """Settle a stream the client left or that was cut before its producer finished (499), or
        one that ended without its settlement yet — or wait for the settlement already under way;
        then `on_end`. A draining stream its client left is drained first (in the background): the
        drain's end is returned, and the request's in-flight slot is held until then (`StreamReply`)
        — a drain holds an upstream connection as a stream does."""
        rest, self._rest = self._rest, None
        if rest is not None and disconnected and self._drains is not None:
            ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drains(self._drain(*rest, ended=ended))
            return ended
        if rest is not None:  # the server cut it: stopped where it is
            await asyncio.shield(_stop(*rest))
        await self._close(disconnected)
        return None

    async def _close(self, disconnected: bool) -> None:
        try:
            await asyncio.shield(self._settled(self.ending.status if self._produced and not disconnected else 499))
        finally:
            if self._on_end is not None:
                await self._on_end()

    async def _drain(
        self, producer: AsyncIterator[bytes], step: asyncio.Future[bytes] | None, *, ended: asyncio.Future[None],
    ) -> None:
        """Read the rest of a stream its client left, sending nothing, then settle it (499). Ends
        at the producer's end, past `DRAIN_MAX_BYTES`, or cut (shutdown: `QuotaMeter.drain`); a producer stopped
        before its end is closed (the upstream with it). `ended` is done once it has ended, however."""
        try:
            await self._read_on(producer, step)
        finally:
            if not ended.done():
                ended.set_result(None)

    async def _read_on(self, producer: AsyncIterator[bytes], step: asyncio.Future[bytes] | None) -> None:
        read = 0
        finished = False
        try:
            if step is not None:
                read += len(await step)
            while read <= DRAIN_MAX_BYTES:
                step = None
                read += len(await anext(producer))
            log.warning("a stream its client left was not read to its end: past the bytes a drain reads",
                        extra={"limit_bytes": DRAIN_MAX_BYTES})
        except StopAsyncIteration:
            finished = True
        except asyncio.CancelledError:  # cut at shutdown: settled as it stands
            pass
        except Exception as exc:  # noqa: BLE001 - (the producers end their own failures): settled as it stands
            log.error("draining a stream its client left failed", exc_info=exc)
        finally:
            if not finished:
                await asyncio.shield(_stop(producer, step))
        await self._close(True)


async def _stop(producer: AsyncIterator[bytes], step: asyncio.Future[bytes] | None) -> None:
    """Stop a producer left unfinished: its step under way cancelled (the producer unwinds, closing
    its upstream), then the generator closed."""
    if step is not None and not step.done():
        step.cancel()
    if step is not None:
        await asyncio.gather(step, return_exceptions=True)
    closer = getattr(producer, "aclose", None)
    if closer is not None:
        await closer()


def unexpected_stream_failure(exc: Exception, provider: str) -> StreamError:
    """An exception a stream raised that no step anticipated (an upstream event shaped as no check
    foresaw, a bug), as the stream error a broken stream ends with. Raised out of the body, it cut
    the client's connection without an error event and left the usage recorded as a success (200);
    ended as a stream error, the client is told and the record says 502. Logged here with its
    traceback, once: it is not raised further."""
    log.error("stream failed unexpectedly", exc_info=exc, extra={"provider": provider})
    return StreamError(f"Sentinel could not read the stream of provider {provider}", code="internal_error",
                       provider=provider)


def cut_code(exc: UpstreamError) -> str:
    """The `code` of the error event that ends a stream an upstream failure cut (what the client
    reads; the metric label of a translated or native cut, after `stream_`): `stream_time_limit` for
    one past `SENTINEL_STREAM_MAX_SECONDS`, `parse_error` for an event over the size cap,
    `connection_closed` for the rest (a broken connection, a read timeout)."""
    if isinstance(exc, StreamTimeLimit):
        return exc.code
    return "parse_error" if exc.code == "stream_event_too_large" else "connection_closed"


def stream_failure_kind(error: StreamError | UpstreamError) -> str:
    """The `upstream_errors_total` kind of a translated or native stream `error` ended
    (`count_stream_failure`): `stream_` and the error's kind (`upstream_error` for a provider's error
    event, whatever its code: never a provider's string as a label) or its `cut_code`."""
    kind = error.kind if isinstance(error, StreamError) else cut_code(error)
    return "stream_" + kind.removeprefix("stream_")
