"""The OpenAI-compatible relay: metered endpoints, object calls, the model list, allowed pass-through.

Every call that reaches the upstream is authenticated (by the transport), admitted against the
caller's plan, relayed, and settled into exactly one usage record. Metered endpoints reserve
their estimated tokens; other calls reserve one request. A stream's final `[DONE]` (and a large
answer's last bytes) reach the client only after its usage record is stored. Objects the caller
creates upstream become theirs; naming anyone else's — in the path or the body — is a 404.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from sentinel.domain.identity import Identity
from sentinel.errors import InvalidRequest, NotFound, UpstreamError
from sentinel.governance.ownership import Ownership
from sentinel.native.errors import NativeValidationError
from sentinel.native.openai_checks import check_metered_fields
from sentinel.observability.metrics import Metrics
from sentinel.observability.tracing import OPERATIONS, PROVIDER, REQUEST_MODEL, SYSTEM
from sentinel.providers.errors import upstream_error
from sentinel.providers.http import UpstreamResponse
from sentinel.providers.openai import OpenAICompatUpstream, forwardable_headers, relayable_headers
from sentinel.quota.meter import Admission, Meter
from sentinel.quota.usage import StreamInspector, TailInspector, text_from_body, usage_from_body
from sentinel.services.exchange import Ending, Exchange, MeteredStream, Reply, StreamReply
from sentinel.services.objects import ObjectPath, classify, created_ids, leading_id, referenced_ids
from sentinel.services.static_models import STATIC_MODELS

SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]
JSON = [("content-type", "application/json")]
RawHeaders = list[tuple[bytes, bytes]]
Query = list[tuple[str, str]]
# Answers up to this size are read whole (usage read from the parsed body); larger ones, and
# answers of unknown length, are relayed as they arrive (usage read from their tail).
MAX_BUFFERED = 1024 * 1024


class OpenAIRelay:
    """Relays `/v1/*` calls to one OpenAI-compatible upstream (see the module docstring)."""

    def __init__(self, upstream: OpenAICompatUpstream, meter: Meter, ownership: Ownership, metrics: Metrics) -> None:
        self.upstream = upstream
        self.meter = meter
        self.ownership = ownership
        self.metrics = metrics

    # --- metered endpoints (chat, completions, embeddings, responses) -------------------------------
    async def metered(
        self, ex: Exchange, identity: Identity, *, endpoint: str, segments: Sequence[str], payload: dict[str, Any],
        body: bytes, headers: RawHeaders, query: Query | None,
    ) -> Reply | StreamReply:
        """Check, admit, forward the request (`body`, parsed as `payload`), relay the answer and settle."""
        try:
            check_metered_fields(endpoint, payload)
        except NativeValidationError as exc:
            raise InvalidRequest(exc.message, details={"param": exc.param}) from None
        await self.ownership.require(referenced_ids(payload), identity.external_id)
        stream = payload.get("stream") is True
        strip_usage = False
        if stream and endpoint == "chat":
            opts = payload.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                # Ask the upstream for the final usage chunk; strip it from the client's stream.
                payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                body = orjson.dumps(payload)
                strip_usage = True
        model: str = payload["model"]
        ex.operation, ex.request_model = OPERATIONS.get(endpoint, endpoint), model
        with ex.spans.span("sentinel.quota.admit"):
            admission = await self.meter.admit(
                identity, endpoint=endpoint, model=model, payload=payload, request_id=ex.usage_id, size=len(body)
            )
        ex.headers.extend(admission.headers.items())
        upstream = await self._forward(ex, admission, "POST", segments, body, headers, query)
        owned = _stores_objects(endpoint, payload)
        if stream and 200 <= upstream.status < 300:
            return self._relay_sse(ex, upstream, endpoint, admission, strip_usage, identity if owned else None)
        return await self._relay_answer(ex, upstream, endpoint, admission, owner=identity if owned else None,
                                        ttl=ObjectPath(_COLLECTION.get(endpoint)).ttl, creating=True)

    # --- other calls: objects, the model list, allowed pass-through ---------------------------------
    async def call(
        self, ex: Exchange, identity: Identity, *, endpoint: str, method: str, segments: Sequence[str],
        body: bytes | None, headers: RawHeaders, query: Query | None,
    ) -> Reply | StreamReply:
        """Forward a call that reserves one request. Paths into a collection of per-account objects
        are checked for ownership (a collection's list is not offered); so are ids named in a JSON body."""
        where = classify(list(segments))
        if where.is_collection and method == "GET":
            raise NotFound("Listing is not offered: it would show every user's objects", code="endpoint_not_supported")
        if where.object_id is not None:
            await self.ownership.require([where.object_id], identity.external_id)
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None  # not JSON (an upload): nothing in it can name an object
            await self.ownership.require(referenced_ids(parsed), identity.external_id)
        admission = await self._admit_call(ex, identity, endpoint)
        upstream = await self._forward(ex, admission, method, segments, body, headers, query)
        owner = identity if where.collection is not None else None
        reply = await self._relay_answer(
            ex, upstream, endpoint, admission, owner=owner, ttl=where.ttl, creating=where.is_collection and method == "POST"
        )
        if method == "DELETE" and where.object_id is not None and segments[-1] == where.object_id and reply.status < 300:
            await self.ownership.forget(where.object_id)
        return reply

    async def list_models(self, ex: Exchange, identity: Identity, headers: RawHeaders) -> Reply | StreamReply:
        """The upstream's model list, or the static catalogue when the upstream cannot list models."""
        admission = await self._admit_call(ex, identity, "models")
        try:
            upstream = await self._forward(ex, admission, "GET", ["models"], None, headers, None, release=False)
            raw = await upstream.read()
            upstream.release()
            if upstream.status == 200 and isinstance(orjson.loads(raw).get("data"), list):
                await self._settle(admission, 200, upstream.provider)
                return Reply(200, raw, list(JSON))
        except (UpstreamError, orjson.JSONDecodeError, AttributeError):
            pass
        await self._settle(admission, 200, None)
        body = orjson.dumps({"object": "list", "data": STATIC_MODELS})
        return Reply(200, body, [*JSON, ("x-sentinel-fallback", "static")])

    async def get_model(self, ex: Exchange, identity: Identity, model_id: str, headers: RawHeaders) -> Reply:
        """One model, from the upstream or the static catalogue; NotFound when neither knows it."""
        admission = await self._admit_call(ex, identity, "model")
        status = 404
        try:
            upstream = await self._forward(ex, admission, "GET", ["models", model_id], None, headers, None,
                                           release=False)
            raw = await upstream.read()
            upstream.release()
            status = upstream.status
            if status == 200:
                await self._settle(admission, 200, upstream.provider)
                return Reply(200, raw, list(JSON))
        except UpstreamError:
            status = 0
        found = next((m for m in STATIC_MODELS if m["id"] == model_id), None)
        await self._settle(admission, 200 if found and status != 404 else 404, None)
        if found is None or status == 404:
            raise NotFound(f"Model '{model_id}' not found", code="model_not_found")
        return Reply(200, orjson.dumps(found), [*JSON, ("x-sentinel-fallback", "static")])

    # --- plumbing ----------------------------------------------------------------------------------
    async def _admit_call(self, ex: Exchange, identity: Identity, endpoint: str) -> Admission:
        with ex.spans.span("sentinel.quota.admit"):
            admission = await self.meter.admit_call(identity, endpoint=endpoint, request_id=ex.usage_id)
        ex.headers.extend(admission.headers.items())
        return admission

    async def _forward(
        self, ex: Exchange, admission: Admission, method: str, segments: Sequence[str], body: bytes | None,
        headers: RawHeaders, query: Query | None, *, release: bool = True,
    ) -> UpstreamResponse:
        """Send the call upstream; when it fails before an answer, give the reservation back
        (`release`) and raise."""
        ex.provider = self.upstream.name
        started = time.perf_counter()
        name = f"{OPERATIONS.get(admission.endpoint, admission.endpoint)} {admission.model or '/'.join(segments)}"
        attributes = {PROVIDER: self.upstream.name, SYSTEM: self.upstream.name}
        if admission.model:
            attributes[REQUEST_MODEL] = admission.model
        try:
            with ex.spans.span(name, attributes, client=True) as span:
                upstream = await self.upstream.forward(
                    method, segments, headers=forwardable_headers(headers), body=body, query=query
                )
                span.set_attribute("http.response.status_code", upstream.status)
        except UpstreamError as exc:
            ex.upstream_seconds = time.perf_counter() - started
            self.metrics.upstream_errors.labels(self.upstream.name, exc.code).inc()
            if release:
                await self.meter.release(admission)
            raise
        ex.upstream_seconds = time.perf_counter() - started
        ex.upstream_status = upstream.status
        return upstream

    async def _settle(self, admission: Admission, status: int, provider: str | None) -> None:
        await self.meter.settle(admission, usage=None, output_text="", status=status, provider=provider)

    async def _relay_answer(
        self, ex: Exchange, upstream: UpstreamResponse, endpoint: str, admission: Admission, *,
        owner: Identity | None, ttl: float | None, creating: bool,
    ) -> Reply | StreamReply:
        """Relay a complete (non-SSE) answer: read whole when it is at most MAX_BUFFERED bytes, else
        relayed as it arrives after the part already read."""
        if upstream.status >= 300:
            return await self._refused(upstream, admission)
        started = time.perf_counter()
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in upstream.iter_chunks():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BUFFERED:
                    return self._relay_large(ex, upstream, endpoint, admission, b"".join(chunks), owner, ttl,
                                             creating)
        except UpstreamError:
            upstream.close()
            await self.meter.release(admission)
            raise
        upstream.release()
        raw = b"".join(chunks)
        self.metrics.child(self.metrics.upstream_duration, upstream.provider, endpoint).observe(
            time.perf_counter() - started
        )
        parsed = _json(raw, upstream)
        if owner is not None:
            for object_id in created_ids(parsed, creating=creating):
                await self.ownership.claim(object_id, owner.external_id, ttl)
        await self.meter.settle(
            admission,
            usage=usage_from_body(endpoint, parsed),
            output_text="" if parsed is None else text_from_body(endpoint, parsed),
            status=upstream.status,
            provider=upstream.provider,
        )
        _report(ex, admission, parsed.get("model") if isinstance(parsed, dict) else None)
        return Reply(upstream.status, raw, relayable_headers(upstream.headers))

    async def _refused(self, upstream: UpstreamResponse, admission: Admission) -> Reply:
        """An upstream error answer: nothing was served, the reservation is given back."""
        try:
            raw = await upstream.read()
        except UpstreamError:
            raw = b""
        finally:
            upstream.release()
        await self.meter.release(admission)
        raise upstream_error(upstream.provider, upstream.status, raw, upstream.headers, relay_client_errors=True)

    def _relay_large(
        self, ex: Exchange, upstream: UpstreamResponse, endpoint: str, admission: Admission, head: bytes,
        owner: Identity | None, ttl: float | None, creating: bool,
    ) -> StreamReply:
        """Relay a large answer chunk by chunk after its `head`, keeping only the tail to read usage
        from; the last chunk waits for the usage record."""
        tail = TailInspector()
        tail.feed(head)
        meter, ownership = self.meter, self.ownership

        async def produce(ending: Ending) -> AsyncIterator[bytes]:
            ending.status = upstream.status
            held = head
            try:
                async for chunk in upstream.iter_chunks():
                    yield held
                    held = chunk
                    tail.feed(chunk)
            except UpstreamError:
                ending.status = 502
            finally:
                upstream.close()
            ending.last = held

        async def settle(status: int) -> None:
            object_id = leading_id(head) if creating else None
            if owner is not None and object_id is not None:
                await ownership.claim(object_id, owner.external_id, ttl)
            await meter.settle(admission, usage=tail.usage(endpoint), output_text="", status=status,
                               provider=upstream.provider)
            _report(ex, admission, None)

        stream = MeteredStream(produce, settle)
        headers = [(k, v) for k, v in relayable_headers(upstream.headers)]
        return StreamReply(upstream.status, headers, stream.chunks(), stream.on_close)

    def _relay_sse(
        self, ex: Exchange, upstream: UpstreamResponse, endpoint: str, admission: Admission, strip_usage: bool,
        owner: Identity | None,
    ) -> StreamReply:
        inspector = StreamInspector(endpoint, strip_usage_chunk=strip_usage)
        metrics, meter, ownership = self.metrics, self.meter, self.ownership
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
            if owner is not None and inspector.object_id is not None:
                await ownership.claim(inspector.object_id, owner.external_id, ObjectPath("responses").ttl)
            await meter.settle(
                admission, usage=inspector.usage, output_text=inspector.text, status=status, provider=upstream.provider
            )
            _report(ex, admission, inspector.model)

        async def observe() -> None:
            metrics.upstream_duration.labels(upstream.provider, endpoint).observe(time.perf_counter() - started)
            if inspector.parse_errors:
                metrics.sse_parse_errors.labels(endpoint).inc(inspector.parse_errors)

        stream = MeteredStream(produce, settle, observe)
        return StreamReply(upstream.status, relayable_headers(upstream.headers) + SSE_HEADERS, stream.chunks(),
                           stream.on_close)


# Metered endpoints whose answers are stored upstream, and the collection that holds them.
_COLLECTION = {"responses": "responses", "chat": "chat/completions"}


def _report(ex: Exchange, admission: Admission, response_model: Any) -> None:
    """Tell the exchange what was recorded (what the request's span reports)."""
    if admission.recorded is not None:
        ex.recorded(admission.recorded.input_tokens, admission.recorded.output_tokens,
                    response_model if isinstance(response_model, str) else None)


def _stores_objects(endpoint: str, payload: dict[str, Any]) -> bool:
    """Whether the answer is an object stored upstream: a response (unless `store` is false) or a
    chat completion with `store: true`."""
    if endpoint == "responses":
        return payload.get("store") is not False
    return endpoint == "chat" and payload.get("store") is True


def _json(raw: bytes, upstream: UpstreamResponse) -> Any:
    if "json" not in upstream.content_type:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
