"""Chat across wire formats: an OpenAI client's request answered by an Anthropic model, and the reverse.

The client's request arrives as a `ModelChatRequest` (read by the native layer's inbound translator
for its wire format); it is sent with the same provider translators the Native API uses, and the
provider's unified answer — a completion, or a stream of unified chunks — is written back in the
client's own wire format. The end user a provider is told of (if its rule tells it one:
`sentinel.native.end_user`) is the caller's pseudonym, never the end user the client named. Metering is the caller's admission: this module settles it (exactly once,
from the provider's usage, or estimated when the provider reported none or the stream broke off) and
sends a stream's last bytes (`[DONE]`, `message_stop`) only after the usage record is stored. An
upstream error answer goes through `sentinel.services.answers.refuse`: a request the provider
refused is settled (one request, its status, no tokens) before its error is raised.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, NoReturn

import orjson

from sentinel.domain.catalogue import ModelTarget, takes_completion_cap
from sentinel.errors import InvalidRequest, UpstreamError
from sentinel.native import NativeValidationError, StreamError, TranslationError
from sentinel.native.anthropic import build_anthropic_model_request
from sentinel.native.anthropic_inbound import render_anthropic_message
from sentinel.native.anthropic_stream import AnthropicStreamEncoder
from sentinel.native.anthropic_stream import render_error_event as anthropic_error_event
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.openai import build_openai_model_request
from sentinel.native.openai_inbound import openai_usage, render_openai_completion
from sentinel.native.responses import Usage as WireUsage
from sentinel.native.stream import DONE, render_chunk, render_error_event
from sentinel.observability.metrics import Metrics
from sentinel.observability.tracing import PROVIDER, REQUEST_MODEL, SYSTEM
from sentinel.offload import count_off_loop, off_loop
from sentinel.providers.chat import ChatProvider, ProviderStream, recorded_usage
from sentinel.providers.errors import OverloadedAtStart, count_failure, count_stream_failure
from sentinel.providers.http import UpstreamResponse
from sentinel.quota.meter import Admission, Meter
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.model_routes import ModelRoutes
from sentinel.services.answers import refuse, report
from sentinel.services.exchange import (
    SSE_RESPONSE_HEADERS,
    Ending,
    Exchange,
    MeteredStream,
    Reply,
    StreamReply,
    cut_code,
    stream_failure_kind,
    unexpected_stream_failure,
)

ClientFormat = Literal["openai", "anthropic"]
JSON = [("content-type", "application/json")]


class TranslatedChat:
    """Serves a `ModelChatRequest` on a provider of the other wire format (see the module docstring)."""

    def __init__(
        self, providers: dict[str, ChatProvider], meter: Meter, counter: TokenCounter, metrics: Metrics,
        *, default_max_tokens: int, routes: ModelRoutes | None = None,
    ) -> None:
        self.providers = providers
        self.meter = meter
        self.counter = counter
        self.metrics = metrics
        self.default_max_tokens = default_max_tokens
        self.routes = routes  # a stream's overload after it began is recorded there (`failed_mid_stream`)

    def translate(self, req: ModelChatRequest, target: ModelTarget, end_user: str | None = None) -> dict[str, Any]:
        """The provider's request body, telling it `end_user` (the caller's pseudonym) when given;
        InvalidRequest (400 naming the field) when it cannot be built."""
        try:
            if target.kind == "anthropic":
                body = build_anthropic_model_request(
                    req, target.upstream_model, default_max_tokens=self.default_max_tokens
                )
            else:
                body = build_openai_model_request(
                    req, target.upstream_model, completion_cap=takes_completion_cap(target.upstream_model)
                )
        except (NativeValidationError, TranslationError) as exc:
            param = exc.param if isinstance(exc, NativeValidationError) else None
            raise InvalidRequest(exc.message, details={"param": param} if param else None) from None
        return body if end_user is None else self.providers[target.provider].with_end_user(body, end_user)

    def carriers(
        self, targets: Sequence[ModelTarget], client: ClientFormat, parse: Callable[[ModelTarget], ModelChatRequest],
    ) -> tuple[ModelTarget, ...]:
        """The `targets` that can carry the request, checked before anything is reserved: those of the
        `client`'s own wire format (relayed as sent), and the others when the request, read by
        `parse`, translates to theirs. A target whose translation refuses it is passed over (an
        alias's other target serves it); InvalidRequest (400 naming the field) when none can."""
        foreign = next((t for t in targets if t.kind != client), None)
        if foreign is None:
            return tuple(targets)
        try:
            self.translate(parse(foreign), foreign)  # every other target of the other format alike
        except InvalidRequest:
            own = tuple(t for t in targets if t.kind == client)
            if not own:
                raise
            return own
        return tuple(targets)

    async def serve(
        self, ex: Exchange, req: ModelChatRequest, target: ModelTarget, admission: Admission, client: ClientFormat,
        *, end_user: str, heavy: bool = False,
    ) -> Reply | StreamReply:
        """Send `req` to `target`'s provider, telling it `end_user` (the caller's pseudonym), and answer
        in the `client` wire format. Raises (before any
        answer) the provider's error, after settling a request the provider refused (`refuse`); the
        caller gives the admission back (a no-op once settled). `heavy`: the request's body was large
        (`sentinel.offload`): it is translated in a worker thread."""
        body = await off_loop(functools.partial(self.translate, req, target, end_user), heavy)
        provider = self.providers[target.provider]
        meter = self.meter

        async def refused(upstream: UpstreamResponse) -> NoReturn:
            await refuse(meter, upstream, admission, model=target.upstream_model)  # (retired: the alias moves on)

        attributes = {PROVIDER: target.provider, SYSTEM: target.provider, REQUEST_MODEL: target.name}
        try:
            with ex.spans.span(f"chat {target.name}", attributes, client=True):
                if req.stream:
                    try:
                        stream = await provider.open_stream_body(body, relay_client_errors=True, refused=refused)
                    except OverloadedAtStart as exc:  # before its first block: the alias's next target's
                        held = exc.relay
                        exc.relay = lambda: self._opened(ex, held(), req, target, admission, client)
                        raise
                    return self._opened(ex, stream, req, target, admission, client)
                done = await provider.complete_body(body, "simple", relay_client_errors=True, refused=refused)
        except UpstreamError as exc:  # (an `OverloadedAtStart` when dropped, or as its stream's error)
            count_failure(self.metrics, target.provider, exc)
            raise
        ex.upstream_seconds += done.upstream_seconds
        ex.upstream_status = 200
        reply = done.reply
        usage = reply.usage
        text = reply.text()
        await self.meter.settle(
            admission, usage=recorded_usage(usage, reply.cache), output_text=text, status=200,
            provider=target.provider,
        )
        report(ex, admission, target.upstream_model)
        shown = usage or await self._estimate(admission, text, target)
        rendered = (
            render_openai_completion(reply, shown, reply.cache) if client == "openai"
            else render_anthropic_message(reply, shown, reply.cache)
        )
        return Reply(200, orjson.dumps(rendered), list(JSON))

    def _opened(
        self, ex: Exchange, stream: ProviderStream, req: ModelChatRequest, target: ModelTarget, admission: Admission,
        client: ClientFormat,
    ) -> StreamReply:
        """The answer of a stream that opened (its time to headers, its status on the exchange)."""
        ex.upstream_seconds += stream.upstream_seconds
        ex.upstream_status = stream.upstream.status
        return self._stream(ex, stream, req, target, admission, client)

    async def _estimate(self, admission: Admission, text: str, target: ModelTarget, counted: int = 0) -> WireUsage:
        """The usage shown for an answer the provider gave none for: the text counted (a long one off
        the event loop), plus `counted` (a stream's output past what it kept: `sentinel.native.kept`)."""
        count = functools.partial(self.counter.count_text, text, target.upstream_model)
        return WireUsage.of(admission.estimate_input, (await count_off_loop(count, len(text)) if text else 0) + counted)

    def _stream(
        self, ex: Exchange, stream: ProviderStream, req: ModelChatRequest, target: ModelTarget, admission: Admission,
        client: ClientFormat,
    ) -> StreamReply:
        meter, metrics, routes = self.meter, self.metrics, self.routes
        encoder = (AnthropicStreamEncoder(input_tokens=admission.estimate_input, provider=target.provider)
                   if client == "anthropic" else None)

        async def produce(ending: Ending) -> AsyncIterator[bytes]:
            try:
                async for chunk in stream.events():
                    out = render_chunk(chunk) if encoder is None else encoder.feed(chunk)
                    if out:
                        yield out
            except Exception as exc:  # an unexpected one too: the client gets an error event, not a cut
                error = exc if isinstance(exc, StreamError | UpstreamError) else (
                    unexpected_stream_failure(exc, target.provider)
                )
                stream.upstream.close()  # the encoder's error (it held too much) left `events` open
                ending.status = 502
                code = error.code if isinstance(error, StreamError) else cut_code(error)
                count_stream_failure(metrics, target.provider, stream_failure_kind(error))
                ending.last = (
                    render_error_event(error.message, "stream_error", code) if encoder is None
                    else anthropic_error_event(error.message)
                )
                if routes is not None and isinstance(error, StreamError):  # the provider's overload counts
                    await routes.failed_mid_stream(target, error.code)
                return
            usage = stream.usage or await self._estimate(admission, stream.normalizer.text, target,
                                                         stream.normalizer.counted)
            cache = stream.normalizer.cache
            if encoder is None:
                if req.include_usage:
                    yield render_chunk({**stream.normalizer.usage_chunk(usage), "usage": openai_usage(usage, cache)})
                ending.last = DONE
            else:
                result = stream.result
                closing, ending.last = encoder.finish(None if result is None else result.finish_reason, usage, cache,
                                                      result is not None and result.refused)
                yield closing

        async def settle(status: int) -> None:
            await meter.settle(
                admission, usage=stream.measured, output_text=stream.normalizer.text,
                output_counted=stream.normalizer.counted, status=status,
                output_estimate=0 if stream.normalizer.unserved else None,
                provider=target.provider, reported_input=stream.reported_input,
            )
            report(ex, admission, target.upstream_model)

        metered = MeteredStream(produce, settle, drains=self.meter.read_on if admission.hidden_output else None)
        return StreamReply(200, list(SSE_RESPONSE_HEADERS), metered.chunks(), metered.on_close)
