"""The request span (pure ASGI), installed only when tracing is on.

It sits inside `RequestMiddleware` (so the request context exists) around the dispatcher: it opens
the SERVER span as the current span (a client's `traceparent` is its parent), hands the tracer to
the request's `Exchange` (`ctx.spans`) so services open child spans, and at the end names the span
after the matched route and sets the HTTP and GenAI attributes the services reported. For a
streamed answer (`text/event-stream`) the time to the first body chunk is
`gen_ai.response.time_to_first_chunk` (seconds).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sentinel.api.context import caller_credentials, context
from sentinel.errors import SentinelError
from sentinel.observability import tracing as t
from sentinel.observability.redaction import SENTINEL_KEYS_ONLY, Redactor


class TracingMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, tracing: t.OtelTracing, redact: Redactor = SENTINEL_KEYS_ONLY) -> None:
        self.app = app
        self.tracing = tracing
        self.redact = redact  # `url.path` without keys in it, as the access log writes the path (`_finish`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = context(scope)
        ctx.spans = self.tracing
        method: str = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # (`url.path` is set at the end, `_finish`: the caller's credential is known then)
        span, token = self.tracing.start_request(method, headers, {"http.request.method": method})
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 0, "sse": False, "first": None}

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        state["sse"] = True
            elif message["type"] == "http.response.body" and state["first"] is None and message.get("body"):
                state["first"] = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            state["status"] = state["status"] or (exc.status if isinstance(exc, SentinelError) else 500)
            span.set_attribute(t.ERROR_TYPE, t.error_type(exc))
            if state["status"] >= 500:
                self.tracing.fail(span, exc, caller_credentials(ctx, scope))
            raise
        finally:
            try:
                self._finish(span, scope, state)
            finally:
                self.tracing.end_request(span, token)

    def _finish(self, span: Any, scope: Scope, state: dict[str, Any]) -> None:
        ctx = context(scope)
        # What the access log writes: keys, JWTs, configured secrets and the caller's own credential out.
        span.set_attribute("url.path", self.redact.clipped(scope["path"], also=caller_credentials(ctx, scope)))
        span.update_name(f"{scope['method']} {ctx.route}")
        span.set_attribute("http.route", ctx.route)
        status: int = state["status"]
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500 and t.ERROR_TYPE not in (getattr(span, "attributes", None) or {}):
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute(t.ERROR_TYPE, str(status))
            span.set_status(Status(StatusCode.ERROR))
        if ctx.operation is None:
            return
        values = {
            t.OPERATION: ctx.operation,
            t.PROVIDER: ctx.provider,
            t.SYSTEM: ctx.provider,
            t.REQUEST_MODEL: ctx.request_model,
            t.RESPONSE_MODEL: ctx.response_model,
            t.INPUT_TOKENS: ctx.input_tokens,
            t.OUTPUT_TOKENS: ctx.output_tokens,
            t.REQUEST_STREAM: state["sse"],
        }
        if state["sse"] and state["first"] is not None:
            values[t.TIME_TO_FIRST_CHUNK] = round(state["first"], 6)
        for key, value in values.items():
            if value is not None:
                span.set_attribute(key, value)
