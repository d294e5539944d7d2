"""The OpenAI-compatible relay: metered endpoints, the model list, and the raw pass-through.

Metered calls are admitted against the caller's plan before they are forwarded, relayed byte for
byte, and settled from the provider's usage (or counted text) exactly once; a stream's final
`[DONE]` reaches the client only after its usage record is stored. Upstream error answers are
mapped by `sentinel.providers.errors`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from sentinel.domain.identity import Identity
from sentinel.errors import InvalidRequest, NotFound, UpstreamError
from sentinel.observability.metrics import Metrics
from sentinel.providers.errors import upstream_error
from sentinel.providers.http import UpstreamResponse
from sentinel.providers.openai import OpenAICompatUpstream, forwardable_headers, relayable_headers
from sentinel.quota.meter import Admission, Meter
from sentinel.quota.usage import StreamInspector, text_from_body, usage_from_body
from sentinel.services.exchange import Ending, Exchange, MeteredStream, Reply, StreamReply
from sentinel.services.static_models import STATIC_MODELS

SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]
JSON = [("content-type", "application/json")]
RawHeaders = list[tuple[bytes, bytes]]
Query = list[tuple[str, str]]


class OpenAIRelay:
    """Relays `/v1/*` calls to one OpenAI-compatible upstream, metering the metered ones."""

    def __init__(self, upstream: OpenAICompatUpstream, meter: Meter, metrics: Metrics) -> None:
        self.upstream = upstream
        self.meter = meter
        self.metrics = metrics

    async def metered(
        self, ex: Exchange, identity: Identity, *, endpoint: str, path: str, payload: dict[str, Any], body: bytes,
        headers: RawHeaders, query: Query | None,
    ) -> Reply | StreamReply:
        """Admit, forward the request (`body`, parsed as `payload`) to `path` (relative to the upstream's
        /v1 base), relay the answer and settle its usage."""
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("Missing required field 'model'", details={"param": "model"})
        stream = payload.get("stream") is True
        strip_usage = False
        if stream and endpoint == "chat":
            opts = payload.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                # Ask the upstream for the final usage chunk; strip it from the client's stream.
                payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                body = orjson.dumps(payload)
                strip_usage = True
        admission = await self.meter.admit(
            identity, endpoint=endpoint, model=model, payload=payload, request_id=ex.usage_id
        )
        ex.headers.extend(admission.headers.items())
        try:
            upstream = await self._forward(ex, "POST", path, body, headers, query)
        except UpstreamError:
            await self.meter.release(admission)
            raise
        if stream and 200 <= upstream.status < 300:
            return self._relay_stream(upstream, endpoint, admission, strip_usage)
        return await self._relay_complete(upstream, endpoint, admission)

    async def _forward(
        self, ex: Exchange, method: str, path: str, body: bytes | None, headers: RawHeaders, query: Query | None
    ) -> UpstreamResponse:
        ex.provider = self.upstream.name
        started = time.perf_counter()
        try:
            upstream = await self.upstream.forward(
                method, path, headers=forwardable_headers(headers), body=body, query=query
            )
        except UpstreamError as exc:
            ex.upstream_seconds = time.perf_counter() - started
            self.metrics.upstream_errors.labels(self.upstream.name, exc.code).inc()
            raise
        ex.upstream_seconds = time.perf_counter() - started
        ex.upstream_status = upstream.status
        return upstream

    async def _relay_complete(self, upstream: UpstreamResponse, endpoint: str, admission: Admission) -> Reply:
        started = time.perf_counter()
        try:
            raw = await upstream.read()
        except UpstreamError:
            await self.meter.release(admission)
            raise
        finally:
            upstream.release()
        self.metrics.child(self.metrics.upstream_duration, upstream.provider, endpoint).observe(
            time.perf_counter() - started
        )
        if upstream.status >= 300:
            await self.meter.release(admission)
            raise upstream_error(upstream.provider, upstream.status, raw, upstream.headers, relay_client_errors=True)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        await self.meter.settle(
            admission,
            usage=usage_from_body(endpoint, parsed),
            output_text="" if parsed is None else text_from_body(endpoint, parsed),
            status=upstream.status,
            provider=upstream.provider,
        )
        return Reply(upstream.status, raw, relayable_headers(upstream.headers))

    def _relay_stream(
        self, upstream: UpstreamResponse, endpoint: str, admission: Admission, strip_usage: bool
    ) -> StreamReply:
        inspector = StreamInspector(endpoint, strip_usage_chunk=strip_usage)
        metrics, meter = self.metrics, self.meter
        started = time.perf_counter()

        async def produce(ending: Ending) -> AsyncIterator[bytes]:
            ending.status = upstream.status
            try:
                async for chunk in upstream.iter_chunks():
                    out = inspector.feed(chunk)
                    if out:
                        yield out
                tail = inspector.flush()
                if tail:
                    yield tail
                if not inspector.saw_done:
                    metrics.upstream_errors.labels(upstream.provider, "stream_truncated").inc()
            except UpstreamError as exc:
                # Headers are gone already: end the stream; usage so far is still recorded.
                metrics.upstream_errors.labels(upstream.provider, exc.code).inc()
                ending.status = 502
            finally:
                upstream.close()
            ending.last = inspector.done

        async def settle(status: int) -> None:
            await meter.settle(
                admission, usage=inspector.usage, output_text=inspector.text, status=status, provider=upstream.provider
            )

        async def observe() -> None:
            metrics.upstream_duration.labels(upstream.provider, endpoint).observe(time.perf_counter() - started)
            if inspector.parse_errors:
                metrics.sse_parse_errors.labels(endpoint).inc(inspector.parse_errors)

        stream = MeteredStream(produce, settle, observe)
        return StreamReply(upstream.status, relayable_headers(upstream.headers) + SSE_HEADERS, stream.chunks(),
                           stream.on_close)

    # --- models ----------------------------------------------------------------------------------
    async def list_models(self, ex: Exchange, headers: RawHeaders) -> Reply:
        """The upstream's model list, or the static catalogue when the upstream cannot list models."""
        try:
            upstream = await self._forward(ex, "GET", "/models", None, headers, None)
            raw = await upstream.read()
            upstream.release()
            if upstream.status == 200 and isinstance(orjson.loads(raw).get("data"), list):
                return Reply(200, raw, list(JSON))
        except (UpstreamError, orjson.JSONDecodeError, AttributeError):
            pass
        body = orjson.dumps({"object": "list", "data": STATIC_MODELS})
        return Reply(200, body, [*JSON, ("x-sentinel-fallback", "static")])

    async def get_model(self, ex: Exchange, model_id: str, headers: RawHeaders) -> Reply:
        """One model, from the upstream or the static catalogue; NotFound when neither knows it."""
        try:
            upstream = await self._forward(ex, "GET", f"/models/{model_id}", None, headers, None)
            raw = await upstream.read()
            upstream.release()
            if upstream.status == 200:
                return Reply(200, raw, list(JSON))
            if upstream.status == 404:
                raise NotFound(f"Model '{model_id}' not found", code="model_not_found")
        except UpstreamError:
            pass
        for model in STATIC_MODELS:
            if model["id"] == model_id:
                return Reply(200, orjson.dumps(model), [*JSON, ("x-sentinel-fallback", "static")])
        raise NotFound(f"Model '{model_id}' not found", code="model_not_found")

    # --- everything else under /v1 -----------------------------------------------------------------
    async def passthrough(
        self, ex: Exchange, method: str, path: str, body: bytes | None, headers: RawHeaders, query: Query | None
    ) -> StreamReply:
        """Forward any other call as it is and stream the answer back."""
        upstream = await self._forward(ex, method, path, body, headers, query)
        if upstream.status >= 300:
            raw = await upstream.read()
            upstream.release()
            raise upstream_error(upstream.provider, upstream.status, raw, upstream.headers, relay_client_errors=True)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.iter_chunks():
                    yield chunk
            except UpstreamError:
                return
            finally:
                upstream.close()

        return StreamReply(upstream.status, relayable_headers(upstream.headers), chunks())


__all__ = ["OpenAIRelay"]
