"""`POST /native/v1/chat/completions`: one chat format, any provider, chosen by tier.

Order: auth -> parse/validate -> route (read-only) -> translate -> commit the session -> quota ->
upstream (retried once before the first byte when allowed) -> unified response or stream -> usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.deps import Deps
from sentinel.api.middleware import context
from sentinel.api.responses import RawResponse, StreamingRelay, encode_headers, json_response
from sentinel.errors import InvalidRequest, RateLimited, SentinelError, UpstreamError
from sentinel.governance.identity import Identity
from sentinel.native import (
    ChatRequest,
    NativeValidationError,
    StreamError,
    TranslationError,
    parse_chat_request,
)
from sentinel.native.responses import Usage as NativeUsage
from sentinel.native.stream import DONE, render_chunk, render_error_event
from sentinel.providers.chat import ChatProvider
from sentinel.quota.meter import Admission
from sentinel.quota.usage import Usage
from sentinel.routing.router import Decision, TierRouter

T = TypeVar("T")
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}


def is_provider_failure(exc: SentinelError) -> bool:
    """Errors that say the provider is unhealthy (not that the request was bad)."""
    if isinstance(exc, RateLimited):
        return exc.code == "provider_rate_limited"
    return isinstance(exc, UpstreamError) and exc.code != "provider_auth_error"


class NativeAPI:
    """The native chat endpoint, bound to the app's dependencies."""

    def __init__(self, deps: Deps, router: TierRouter, providers: dict[str, ChatProvider]) -> None:
        self.deps = deps
        self.router = router
        self.providers = providers

    def routes(self) -> list[Route]:
        return [Route("/native/v1/chat/completions", self.chat, methods=["POST"], name="native_chat")]

    async def chat(self, request: Request) -> Any:
        ctx = context(request.scope)
        ctx.route = "/native/v1/chat/completions"
        identity = await self.deps.authenticate(request)
        raw = await self.deps.read_body(request)
        try:
            req = parse_chat_request(raw)
        except NativeValidationError as exc:
            raise InvalidRequest(exc.message, details={"param": exc.param} if exc.param else None) from None
        decision = await self.router.decide(identity, req)
        wire = self._translate(req, decision)
        chosen = (decision.provider, decision.model)
        await self.router.commit(identity, decision)
        if (decision.provider, decision.model) != chosen:
            wire = self._translate(req, decision)  # a concurrent first turn won: follow its model
        admission = await self.deps.meter.admit(
            identity, endpoint="native", model=decision.model, payload=_estimate_payload(req),
            request_id=ctx.usage_id,
        )
        ctx.extra_headers.extend(encode_headers(admission.headers))
        if req.stream:
            return await self._stream(request, identity, req, decision, wire, admission)
        return await self._complete(request, identity, req, decision, wire, admission)

    def _translate(self, req: ChatRequest, decision: Decision) -> dict[str, Any]:
        provider = self.providers[decision.provider]
        try:
            return provider.body(req, decision.model, stream=req.stream)
        except (NativeValidationError, TranslationError) as exc:
            raise InvalidRequest(exc.message, provider=decision.provider) from None

    async def _retry(self, identity: Identity, req: ChatRequest, decision: Decision, exc: SentinelError) -> tuple[
        Decision, dict[str, Any]
    ] | None:
        """Record the failure; return another candidate (and its body) when one retry is allowed."""
        if not is_provider_failure(exc):
            return None
        await self.router.report(decision, ok=False)
        if decision.tried:
            return None
        alternative = await self.router.alternative(decision)
        if alternative is None:
            return None
        wire = self._translate(req, alternative)
        await self.router.commit(identity, alternative)
        return alternative, wire

    async def _call(
        self, identity: Identity, req: ChatRequest, decision: Decision, wire: dict[str, Any], admission: Admission,
        send: Callable[[ChatProvider, dict[str, Any], Decision], Awaitable[T]],
    ) -> tuple[T, Decision, ChatProvider]:
        """Call the provider, retrying once on another candidate when `_retry` allows it."""
        while True:
            provider = self.providers[decision.provider]
            admission.model = decision.model
            admission.prices = (decision.entry.input_price_per_million, decision.entry.output_price_per_million)
            try:
                return await send(provider, wire, decision), decision, provider
            except SentinelError as exc:
                retry = await self._retry(identity, req, decision, exc)
                if retry is None:
                    await self.deps.meter.release(admission)
                    raise
                decision, wire = retry

    def _headers(self, decision: Decision) -> dict[str, str]:
        return {"x-sentinel-tier": decision.tier, "x-sentinel-provider": decision.provider,
                "x-sentinel-model": decision.model}

    async def _complete(
        self, request: Request, identity: Identity, req: ChatRequest, decision: Decision,
        wire: dict[str, Any], admission: Admission,
    ) -> RawResponse:
        ctx = context(request.scope)
        reply, decision, provider = await self._call(
            identity, req, decision, wire, admission, lambda p, body, d: p.complete_body(body, d.tier)
        )
        ctx.upstream_seconds += provider.last_duration
        ctx.upstream_status = 200
        await self.router.report(decision, ok=True)
        text = reply.text()
        usage = reply.usage
        await self.deps.meter.settle(
            admission,
            usage=None if usage is None else Usage(usage.prompt_tokens, usage.completion_tokens),
            output_text=text, status=200, provider=decision.provider,
        )
        if usage is None:
            estimated_out = self.deps.counter.count_text(text, decision.model) if text else 0
            usage = NativeUsage.of(admission.estimate_input, estimated_out)
        body = reply.to_response(usage).to_dict()
        return json_response(body, headers=self._headers(decision))

    async def _stream(
        self, request: Request, identity: Identity, req: ChatRequest, decision: Decision,
        wire: dict[str, Any], admission: Admission,
    ) -> StreamingRelay:
        ctx = context(request.scope)
        stream, decision, provider = await self._call(
            identity, req, decision, wire, admission, lambda p, body, d: p.open_stream_body(body)
        )
        ctx.upstream_seconds = provider.last_duration
        ctx.upstream_status = stream.upstream.status
        outcome = {"status": 200}
        router, meter = self.router, self.deps.meter
        chosen = decision

        async def settle(status: int) -> None:
            usage = stream.usage
            await meter.settle(
                admission,
                usage=None if usage is None else Usage(usage.prompt_tokens, usage.completion_tokens),
                output_text=stream.normalizer.text,
                status=status,
                provider=chosen.provider,
            )

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream.events():
                    yield render_chunk(chunk)
                if stream.usage is not None:
                    yield render_chunk(stream.normalizer.usage_chunk(stream.usage))
                ending = DONE
                await router.report(chosen, ok=True)
            except (StreamError, UpstreamError) as exc:
                outcome["status"] = 502
                code = exc.code if isinstance(exc, StreamError) else "connection_closed"
                # Not a health failure: the provider answered; one broken stream must not take a
                # single-model tier down for 30 s (only failures before the first byte count).
                ending = render_error_event(exc.message, "stream_error", code)
            # The usage record is durable before the client sees the end of the stream (shielded:
            # a client leaving now must not cancel the write halfway).
            await asyncio.shield(settle(outcome["status"]))
            yield ending

        async def on_close(disconnected: bool) -> None:
            await settle(499 if disconnected else outcome["status"])

        headers = {**SSE_HEADERS, **self._headers(decision)}
        return StreamingRelay(200, encode_headers(headers), body(), on_close)


def _estimate_payload(req: ChatRequest) -> dict[str, Any]:
    """The request as plain JSON for token estimation (tool-call arguments as strings)."""
    data = req.to_dict()
    for message in data.get("messages", []):
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            if not isinstance(fn.get("arguments"), str):
                fn["arguments"] = orjson.dumps(fn.get("arguments")).decode()
    return {"messages": data.get("messages", []), "tools": data.get("tools"), "max_tokens": req.max_tokens}
