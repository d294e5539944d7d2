"""The OpenAI-compatible surface `/v1/*`: typed, metered endpoints plus a raw pass-through.

Routes only: parse, authenticate, call the meter and the upstream, render. Upstream statuses are
kept (4xx relayed as they are, 5xx become 502, a timeout 504) and bodies are relayed byte for byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.deps import Deps
from sentinel.api.middleware import context
from sentinel.api.responses import RawResponse, StreamingRelay, encode_headers, json_response
from sentinel.api.static_models import STATIC_MODELS
from sentinel.errors import InvalidRequest, MethodNotAllowed, NotFound, SentinelError, UpstreamError
from sentinel.providers.http import UpstreamResponse
from sentinel.providers.openai_compat import forwardable_headers, relayable_headers
from sentinel.quota.meter import Admission
from sentinel.quota.usage import StreamInspector, text_from_body, usage_from_body

METERED = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
TYPED_PATHS = {*METERED, "/v1/models"}
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class OpenAIProxy:
    """Handlers for `/v1/*`, bound to the app's dependencies."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.upstream = deps.openai

    def routes(self) -> list[Route]:
        routes = [Route(path, self.metered, methods=["POST"], name=name) for path, name in METERED.items()]
        routes += [
            Route("/v1/models", self.list_models, methods=["GET"], name="models"),
            Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"], name="model"),
            Route(
                "/v1/{path:path}",
                self.passthrough,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                name="passthrough",
            ),
        ]
        return routes

    # --- metered endpoints ---------------------------------------------------------------------
    async def metered(self, request: Request) -> Any:
        ctx = context(request.scope)
        path: str = request.scope["path"]  # not request.url: building a URL parses the Host header
        endpoint = METERED[path]
        ctx.route = path
        identity = await self.deps.authenticate(request)
        body = await self.deps.read_body(request)
        payload = parse_json_object(body)
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
        admission = await self.deps.meter.admit(
            identity, endpoint=endpoint, model=model, payload=payload, request_id=ctx.usage_id
        )
        ctx.extra_headers.extend(encode_headers(admission.headers))
        upstream = await self._call(request, "POST", path[3:], body, admission)
        if stream and 200 <= upstream.status < 300:
            return self._relay_stream(upstream, endpoint, admission, strip_usage)
        return await self._relay_complete(upstream, endpoint, admission)

    async def _call(
        self, request: Request, method: str, path: str, body: bytes | None, admission: Admission | None
    ) -> UpstreamResponse:
        ctx = context(request.scope)
        ctx.provider = self.upstream.name
        started = time.perf_counter()
        try:
            upstream = await self.upstream.forward(
                method,
                path,
                headers=forwardable_headers(request.scope["headers"]),
                body=body,
                query=list(request.query_params.multi_items()) or None,
            )
        except UpstreamError as exc:
            ctx.upstream_seconds = time.perf_counter() - started
            self.deps.metrics.upstream_errors.labels(self.upstream.name, exc.code).inc()
            if admission is not None:
                await self.deps.meter.release(admission)
            raise
        ctx.upstream_seconds = time.perf_counter() - started
        ctx.upstream_status = upstream.status
        return upstream

    async def _relay_complete(self, upstream: UpstreamResponse, endpoint: str, admission: Admission) -> RawResponse:
        started = time.perf_counter()
        try:
            raw = await upstream.read()
        except UpstreamError:
            await self.deps.meter.release(admission)
            raise
        finally:
            upstream.release()
        self.deps.metrics.child(self.deps.metrics.upstream_duration, upstream.provider, endpoint).observe(
            time.perf_counter() - started
        )
        if upstream.status >= 300:
            await self.deps.meter.release(admission)
            raise upstream_failure(upstream, raw)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        await self.deps.meter.settle(
            admission,
            usage=usage_from_body(endpoint, parsed),
            output_text="" if parsed is None else text_from_body(endpoint, parsed),
            status=upstream.status,
            provider=upstream.provider,
        )
        return RawResponse(upstream.status, raw, encode_headers(relayable_headers(upstream.headers)))

    def _relay_stream(
        self, upstream: UpstreamResponse, endpoint: str, admission: Admission, strip_usage: bool
    ) -> StreamingRelay:
        inspector = StreamInspector(endpoint, strip_usage_chunk=strip_usage)
        deps = self.deps
        started = time.perf_counter()
        outcome = {"status": upstream.status}

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.iter_chunks():
                    out = inspector.feed(chunk)
                    if out:
                        yield out
                tail = inspector.flush()
                if tail:
                    yield tail
                if not inspector.saw_done:
                    deps.metrics.upstream_errors.labels(upstream.provider, "stream_truncated").inc()
            except UpstreamError as exc:
                # Headers are gone already: end the stream; usage so far is still recorded below.
                deps.metrics.upstream_errors.labels(upstream.provider, exc.code).inc()
                outcome["status"] = 502
            finally:
                upstream.close()
            # Store the usage record before the client sees the end of the body, so a crash can
            # never lose the record of a stream the client received in full. Shielded: a client
            # leaving right now must not cancel the write halfway (on_close's settle is then a no-op).
            await asyncio.shield(settle(outcome["status"]))

        async def settle(status: int) -> None:
            await deps.meter.settle(
                admission, usage=inspector.usage, output_text=inspector.text, status=status, provider=upstream.provider
            )

        async def on_close(disconnected: bool) -> None:
            deps.metrics.upstream_duration.labels(upstream.provider, endpoint).observe(time.perf_counter() - started)
            if inspector.parse_errors:
                deps.metrics.sse_parse_errors.labels(endpoint).inc(inspector.parse_errors)
            await settle(499 if disconnected else outcome["status"])

        headers = dict(relayable_headers(upstream.headers))
        headers.update(SSE_HEADERS)
        return StreamingRelay(upstream.status, encode_headers(headers), body(), on_close)

    # --- models ----------------------------------------------------------------------------------
    async def list_models(self, request: Request) -> RawResponse:
        context(request.scope).route = "/v1/models"
        await self.deps.authenticate(request)
        try:
            upstream = await self._call(request, "GET", "/models", None, None)
            raw = await upstream.read()
            upstream.release()
            if upstream.status == 200 and isinstance(orjson.loads(raw).get("data"), list):
                return RawResponse(200, raw, [(b"content-type", b"application/json")])
        except (UpstreamError, orjson.JSONDecodeError, AttributeError):
            pass
        # The upstream cannot list models: answer with the static catalogue (the original's fallback).
        return json_response({"object": "list", "data": STATIC_MODELS}, headers={"x-sentinel-fallback": "static"})

    async def get_model(self, request: Request) -> RawResponse:
        context(request.scope).route = "/v1/models/{id}"
        await self.deps.authenticate(request)
        model_id = request.path_params["model_id"]
        try:
            upstream = await self._call(request, "GET", f"/models/{model_id}", None, None)
            raw = await upstream.read()
            upstream.release()
            if upstream.status == 200:
                return RawResponse(200, raw, [(b"content-type", b"application/json")])
            if upstream.status == 404:
                raise NotFound(f"Model '{model_id}' not found", code="model_not_found")
        except UpstreamError:
            pass
        for model in STATIC_MODELS:
            if model["id"] == model_id:
                return json_response(model, headers={"x-sentinel-fallback": "static"})
        raise NotFound(f"Model '{model_id}' not found", code="model_not_found")

    # --- everything else under /v1 -------------------------------------------------------------------
    async def passthrough(self, request: Request) -> Any:
        ctx = context(request.scope)
        ctx.route = "/v1/{path}"
        path = request.scope["path"]
        if path in TYPED_PATHS:
            allowed = "GET" if path == "/v1/models" else "POST"
            raise MethodNotAllowed(f"Method {request.method} not allowed on {path}", headers={"Allow": allowed})
        await self.deps.authenticate(request)
        body = await self.deps.read_body(request) if request.method not in ("GET", "HEAD") else None
        upstream = await self._call(request, request.method, path[3:], body, None)
        if upstream.status >= 300:
            raw = await upstream.read()
            upstream.release()
            raise upstream_failure(upstream, raw)

        async def body_iter() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.iter_chunks():
                    yield chunk
            except UpstreamError:
                return
            finally:
                upstream.close()

        return StreamingRelay(upstream.status, encode_headers(relayable_headers(upstream.headers)), body_iter())


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Invalid JSON body: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    return payload


def upstream_failure(upstream: UpstreamResponse, raw: bytes) -> SentinelError:
    """An upstream error answer: 4xx relayed with its status and message, 5xx as 502."""
    message = f"Upstream returned HTTP {upstream.status}"
    code: str | None = None
    err_type: str | None = None
    try:
        data = orjson.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            code = err.get("code") if isinstance(err.get("code"), str) else None
            err_type = err.get("type") if isinstance(err.get("type"), str) else None
    except orjson.JSONDecodeError:
        pass
    headers = {}
    for key, value in upstream.headers:
        if key.lower() == "retry-after":
            headers["Retry-After"] = value
    if upstream.status < 500:
        error = SentinelError(message, status=upstream.status, code=code or "upstream_client_error", headers=headers)
        error.type = err_type or "invalid_request_error"
        return error
    error = UpstreamError(
        f"Upstream {upstream.provider} failed with HTTP {upstream.status}: {message}",
        code="upstream_error",
        provider=upstream.provider,
    )
    return error
