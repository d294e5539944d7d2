"""Relaying a provider's event stream through an inspector: the one loop both `/v1` surfaces use.

The inspector (`quota.usage.StreamInspector` for OpenAI, `quota.anthropic_usage.AnthropicStreamInspector`
for Anthropic) passes events on, reads the usage, and holds back the final event (`[DONE]`,
`message_stop`) so that it reaches the client only after the usage record is durable.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from sentinel.errors import UpstreamError
from sentinel.observability.metrics import Metrics
from sentinel.providers.http import UpstreamResponse
from sentinel.providers.openai import relayable_headers
from sentinel.services.exchange import (
    SSE_HEADERS,
    Ending,
    MeteredStream,
    StreamReply,
    unexpected_stream_failure,
)


class EventInspector(Protocol):
    """What the relay needs of a stream inspector."""

    parse_errors: int

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
) -> StreamReply:
    """The upstream's stream relayed through `inspector`, its usage settled by `settle(status)`.

    A stream that ends without its final event is counted as truncated; an upstream failing
    mid-stream ends the stream (its headers are gone) and is settled as 502, usage so far included.
    """
    started = time.perf_counter()

    async def produce(ending: Ending) -> AsyncIterator[bytes]:
        ending.status = upstream.status
        try:
            async for chunk in upstream.iter_chunks():
                out = inspector.feed(chunk)
                if out:
                    yield out
                if inspector.done:
                    break  # the final event came: nothing more is relayed, so nothing more is awaited
            tail = inspector.flush()
            if tail:
                yield tail
            if not inspector.done:
                metrics.upstream_errors.labels(upstream.provider, "stream_truncated").inc()
        except UpstreamError as exc:
            metrics.upstream_errors.labels(upstream.provider, exc.code).inc()
            ending.status = 502
        except Exception as exc:  # unexpected (an event the inspector could not handle): ended as above
            failure = unexpected_stream_failure(exc, upstream.provider)
            metrics.upstream_errors.labels(upstream.provider, "stream_" + failure.code).inc()
            ending.status = 502
        finally:
            upstream.close()
        ending.last = inspector.done

    async def observe() -> None:
        metrics.upstream_duration.labels(upstream.provider, endpoint).observe(time.perf_counter() - started)
        if inspector.parse_errors:
            metrics.sse_parse_errors.labels(endpoint).inc(inspector.parse_errors)

    stream = MeteredStream(produce, settle, observe)
    headers = relayable_headers(upstream.headers) + SSE_HEADERS
    return StreamReply(upstream.status, headers, stream.chunks(), stream.on_close)
