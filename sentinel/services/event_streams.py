"""Relaying a provider's event stream through an inspector: the one loop both `/v1` surfaces use.

The inspector (`quota.usage.StreamInspector` for OpenAI, `quota.anthropic_usage.AnthropicStreamInspector`
for Anthropic) passes events on, reads the usage, and holds back the final event (`[DONE]`,
`message_stop`) so that it reaches the client only after the usage record is durable. A stream
Sentinel stops — the provider's connection broke or timed out, an event over the size cap, an event
no check foresaw, a stream past `SENTINEL_STREAM_MAX_SECONDS` — ends with an error event in the
surface's shape instead (`failure_event`); one the provider itself ended without its final event
simply ends, as it would have without Sentinel.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

import orjson

from sentinel.errors import UpstreamError
from sentinel.native.anthropic_stream import render_error_event as anthropic_error_event
from sentinel.native.stream import render_error_event
from sentinel.observability.metrics import Metrics
from sentinel.providers.errors import count_stream_failure
from sentinel.providers.http import UpstreamResponse
from sentinel.providers.openai import relayable_headers
from sentinel.services.exchange import (
    SSE_HEADER_NAMES,
    SSE_HEADERS,
    Ending,
    MeteredStream,
    StreamReply,
    cut_code,
    unexpected_stream_failure,
)


class EventInspector(Protocol):
    """What the relay needs of a stream inspector."""

    parse_errors: int
    failed: bool  # the provider's own error event came: the stream failed, whatever its status line said

    @property
    def done(self) -> bytes:
        """The held-back final event, once it arrived (empty until then)."""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` to pass on now."""

    def flush(self) -> bytes:
        """What is left to pass on at the end of the upstream's body."""


def relay_events(
    upstream: UpstreamResponse,
    inspector: EventInspector,
    endpoint: str,
    metrics: Metrics,
    settle: Callable[[int], Awaitable[None]],
    *,
    drains: Callable[[Coroutine[Any, Any, None]], None] | None = None,
) -> StreamReply:
    """The upstream's stream relayed through `inspector`, its usage settled by `settle(status)`.

    A stream that ends without its final event is counted as truncated; an upstream failing
    mid-stream ends the stream (its headers are gone) with an error event (`failure_event`) and is
    settled as 502, usage so far included; so is one that carried the provider's own error event,
    and one that ran past its time limit (`StreamTimeLimit`). `drains` (the request's output
    is hidden: `Meter.read_on`): a stream its client left is read on for its usage (`MeteredStream`).
    """
    started = time.perf_counter()

    async def produce(ending: Ending) -> AsyncIterator[bytes]:
        ending.status = upstream.status
        failure = b""
        try:
            async for chunk in upstream.iter_chunks(relayed=True):
                out = inspector.feed(chunk)
                if out:
                    yield out
                if inspector.done:
                    break  # the final event came: nothing more is relayed, so nothing more is awaited
            tail = inspector.flush()
            if tail:
                yield tail
            if inspector.failed:  # recorded as a provider failure, as the translated and native streams are
                ending.status = 502
            if not inspector.done:
                count_stream_failure(metrics, upstream.provider, "stream_truncated")
        except UpstreamError as exc:
            count_stream_failure(metrics, upstream.provider, exc.code)
            ending.status = 502
            failure = failure_event(endpoint, exc.message, cut_code(exc))
        except Exception as exc:  # unexpected (an event the inspector could not handle): ended as above
            unexpected = unexpected_stream_failure(exc, upstream.provider)
            count_stream_failure(metrics, upstream.provider, "stream_" + unexpected.code)
            ending.status = 502
            failure = failure_event(endpoint, unexpected.message, unexpected.code)
        finally:
            upstream.close()
        ending.last = inspector.done or failure

    async def observe() -> None:
        metrics.observe(metrics.child(metrics.upstream_duration, upstream.provider, endpoint), time.perf_counter() - started)
        if inspector.parse_errors:
            metrics.sse_parse_errors.labels(endpoint).inc(inspector.parse_errors)

    stream = MeteredStream(produce, settle, observe, drains=drains)
    headers = [h for h in relayable_headers(upstream.headers) if h[0].lower() not in SSE_HEADER_NAMES] + SSE_HEADERS
    return StreamReply(upstream.status, headers, stream.chunks(), stream.on_close)


def failure_event(endpoint: str, message: str, code: str) -> bytes:
    """The event that ends a relayed stream Sentinel stopped, in the surface's shape (the status line
    is gone): Anthropic's `error` event on `/v1/messages`, the Responses API's `error` event, chat's
    and completions' `{"error": …}` chunk — what each SDK raises (or, for Responses, yields) as an
    error. Without it the stream ended as a whole one would: the SDKs took a cut answer as complete."""
    if endpoint == "messages":
        return anthropic_error_event(message)
    if endpoint == "responses":
        error = {"type": "error", "code": code, "message": message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    return render_error_event(message, "stream_error", code)
