"""The native chat use case: one chat format, any provider, chosen by tier.

Order: route (read-only) -> translate -> quota -> a first turn's session created (concurrent first
turns follow the first one's session: its model, or an upgrade at a higher tier) -> upstream (retried once before the first byte when allowed)
-> unified response or stream -> usage, and the session is written to the model that answered (a
stream: once a chunk of its answer came, `answering` — not the bare opening chunk; one that failed
before any is a turn no model answered). A
request refused before the upstream call creates or changes no session;
one no model answered — the provider's 5xx or 429 after any retry, an error, cancelled — upgrades
or moves none, and a first turn's removes the session it created (unless it changed meanwhile; also
when settling the failure raises or is cancelled): a
conversation is bound only to a model that served it. Upstream error answers are settled by
`sentinel.services.answers.refuse`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import orjson

from sentinel.domain.catalogue import reasons_by_name
from sentinel.domain.end_user import EndUsers
from sentinel.domain.identity import Identity
from sentinel.errors import InvalidRequest, UpstreamError
from sentinel.native import ChatRequest, NativeValidationError, StreamError, TranslationError
from sentinel.native.responses import Usage as WireUsage
from sentinel.native.stream import DONE, answering, render_chunk, render_error_event
from sentinel.native.types import ImagePart
from sentinel.observability.metrics import Metrics
from sentinel.observability.tracing import OPERATIONS, PROVIDER, REQUEST_MODEL, SYSTEM
from sentinel.offload import count_off_loop, off_loop
from sentinel.providers.chat import ChatProvider, Completion, ProviderStream, recorded_usage
from sentinel.providers.errors import count_failure, count_stream_failure
from sentinel.providers.http import UpstreamResponse
from sentinel.quota.estimate import estimate_input, hides_output
from sentinel.quota.images import image_rule_for
from sentinel.quota.meter import Admission, Meter
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.failover import Failover, overloaded_mid_stream
from sentinel.routing.router import RouteChoice, TierRouter
from sentinel.services.answers import refuse
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

T = TypeVar("T")


class NativeChat:
    """Serves native chat requests over the tier router, the meter and the chat providers; each
    provider is told the caller's pseudonym (`end_users`) as the end user (`sentinel.native.end_user`).
    `reasons(provider, model)`: whether a tier's model reasons without being asked (the catalogue's
    `ModelCatalogue.reasons`; by default by its name). `max_output(provider, model)`: the most output
    one answer of a tier's model may have (`ModelCatalogue.max_output`; by default None, not known): a
    request's `max_tokens` above it is sent as it and reserved as the most any model that may serve
    it takes. Each attempt's upstream failure, and each stream's, is counted in `metrics`
    (`count_failure`, `count_stream_failure`; none: not counted)."""

    def __init__(
        self, router: TierRouter, providers: dict[str, ChatProvider], meter: Meter, counter: TokenCounter,
        end_users: EndUsers | None = None, reasons: Callable[[str, str], bool] | None = None,
        max_output: Callable[[str, str], int | None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.reasons = reasons or (lambda _provider, model: reasons_by_name(model))
        self.max_output = max_output or (lambda _provider, _model: None)
        self.end_users = end_users or EndUsers(None)
        self.providers = providers
        self.meter = meter
        self.counter = counter
        self.failover = Failover(router, providers)

    async def chat(
        self, ex: Exchange, identity: Identity, req: ChatRequest, *, size: int = 0, heavy: bool = False,
    ) -> Reply | StreamReply:
        """Serve one validated request (`size`: its body's bytes, a large one is counted off the loop;
        `heavy`: its body is large, `sentinel.offload`, and its translations and the reading of it for
        its estimate run in a worker thread too)."""
        decided = await self.router.decide(identity, req)
        streaming = False
        try:
            reply = await self._chat(ex, identity, req, decided, size=size, heavy=heavy)
            streaming = isinstance(reply, StreamReply)  # its trials are released once it ends
            return reply
        finally:
            # A half-open trial the request claimed and did not settle (`release`). A shield is a
            # task of its own: only when there is a trial (most requests claim none).
            if not streaming and decided.trials:
                await asyncio.shield(self.router.release(decided))

    async def _chat(
        self, ex: Exchange, identity: Identity, req: ChatRequest, decided: RouteChoice, *, size: int, heavy: bool,
    ) -> Reply | StreamReply:
        translate = self._translator(req, heavy, self.end_users.of(identity.external_id))
        choice, wire = await self._translatable(req, decided, translate)
        ex.operation, ex.request_model = OPERATIONS["native"], choice.model
        # Images are priced by the dearest rule of any model that may serve the request; a request
        # without images (most) needs no candidates: the tier table is not read for it.
        images, payload = await off_loop(lambda: (_has_images(req), _estimate_payload(req)), heavy)
        priced = await self._serving(choice) if images else frozenset()
        if self._over_most(req, choice) is not None:  # (most requests: no await, no tier read)
            await self._cap_reserved(req, choice, payload)
        # Admission before the session write: a request the quota refuses changes no session.
        with ex.spans.span("sentinel.quota.admit"):
            admission = await self.meter.admit(
                identity, endpoint="native", model=choice.model, payload=payload, request_id=ex.usage_id,
                size=size, images=image_rule_for(priced),  # (its images: the dearest rule of any that may serve it)
            )
        ex.headers.extend(admission.headers.items())

        def on_attempt(attempt: RouteChoice) -> None:
            admission.model = admission.counted_as = attempt.model  # (what serves it counts its text)
            admission.prices = attempt.entry.prices
            ex.provider = attempt.provider
            # (a model that reasons unasked bills reasoning it never streams; nothing here turns it off)
            admission.hidden_output = hides_output(
                "native", payload, reasons=self.reasons(attempt.provider, attempt.model)
            )

        def refused(to: RouteChoice) -> Callable[[UpstreamResponse], Awaitable[NoReturn]]:
            """How an error answer of `to`'s model is settled: a 404 saying the provider no longer
            serves that model is `ModelRetired`, unsettled (the conversation moves off it)."""
            async def settle(upstream: UpstreamResponse) -> NoReturn:
                await refuse(self.meter, upstream, admission, relay_client_errors=False, model=to.model)
            return settle

        try:
            chosen = (choice.provider, choice.model)
            await self.router.claim(identity, choice)  # a first turn's session, before the upstream call
            if (choice.provider, choice.model) != chosen:
                wire = await translate(choice)  # a concurrent first turn won: follow its model
                if images:
                    await self._reprice(identity, admission, payload, priced, choice, size)
            if req.stream:
                streamed = await self.failover.call(
                    choice, wire, translate=translate,
                    send=lambda p, body, c: self._upstream(ex, c, p.open_stream_body(body, refused=refused(c))),
                    on_attempt=on_attempt,
                    caller=identity.external_id,
                )
                return self._stream(ex, identity, streamed.result, streamed.choice, admission)
            completed = await self.failover.call(
                choice, wire, translate=translate,
                send=lambda p, body, c: self._upstream(ex, c, p.complete_body(body, c.tier, refused=refused(c))),
                on_attempt=on_attempt,
                caller=identity.external_id,
            )
        except BaseException as exc:  # noqa: BLE001 - see `Meter.fail` (cancelled, a bug: not only our errors)
            try:
                await self.meter.fail(admission, exc)  # a no-op when `refuse` settled a provider refusal
            finally:  # also when that raises, or is cancelled again: the session it created goes
                await asyncio.shield(self.router.abandon(choice))  # no model answered
            raise
        reply = await self._complete(ex, completed.result, completed.choice, admission)
        await self.router.commit(identity, completed.choice)  # answered: the session is this model's
        return reply

    async def _translatable(
        self, req: ChatRequest, choice: RouteChoice, translate: Callable[[RouteChoice], Awaitable[dict[str, Any]]],
    ) -> tuple[RouteChoice, dict[str, Any]]:
        """The choice and the request translated for it. A model the conversation is not bound to yet
        (no session, a new one, an upgrade) whose translation cannot carry the request gives way to
        the tier's next candidate, so whether a valid request is accepted does not depend on the
        draw; a conversation's own model is kept, and its refusal is the answer."""
        try:
            return choice, await translate(choice)
        except InvalidRequest as exc:
            if choice.bound:
                raise
            refused = exc
        try:
            carried = await self.failover.carrier(choice, translate)
            if carried is None:
                raise refused
            return carried
        finally:
            # Its traceback holds this frame: kept in a local, a reference cycle that kept every frame
            # it came through (the request, the handler's body) until a full collection.
            del refused

    def _over_most(self, req: ChatRequest, choice: RouteChoice) -> int | None:
        """The most output `choice`'s model answers with (`max_output`), when the catalogue knows it
        and `req`'s `max_tokens` is above it; else None."""
        most = self.max_output(choice.provider, choice.model)
        return most if req.max_tokens is not None and most is not None and req.max_tokens > most else None

    def _capped(self, req: ChatRequest, choice: RouteChoice) -> ChatRequest:
        """`req` with its `max_tokens` brought down to the most `choice`'s model answers with
        (`_over_most`): the provider refuses a larger cap (a 400 charged as a refusal), so the same
        request succeeded or failed by the model a tier drew."""
        most = self._over_most(req, choice)
        return req if most is None else req.model_copy(update={"max_tokens": most})

    async def _cap_reserved(self, req: ChatRequest, choice: RouteChoice, payload: dict[str, Any]) -> None:
        """A `max_tokens` above the drawn model's maximum (`_over_most`) is reserved as the most any
        model that may serve the request answers with (`TierRouter.may_serve`: a retry may go to
        another, a bound conversation's too once its model is answered as retired), when the
        catalogue knows each one's; otherwise as asked (up to `MAX_RESERVED_OUTPUT`)."""
        assert req.max_tokens is not None  # (called only when over the model's most)
        maxima = [self.max_output(entry.provider, entry.model) for entry in await self.router.may_serve(choice)]
        if all(m is not None for m in maxima):
            payload["max_tokens"] = min(req.max_tokens, max(m for m in maxima if m is not None))

    async def _serving(self, choice: RouteChoice) -> frozenset[tuple[str, str]]:
        """The (wire format, model) of each model that may answer `choice`'s request
        (`TierRouter.may_serve`: a retry may go to another of its tier): its images are estimated by
        the dearest of their rules (`images.image_rule_for`)."""
        return frozenset((_kind(self.providers.get(entry.provider)), entry.model)
                         for entry in await self.router.may_serve(choice))

    async def _reprice(
        self, identity: Identity, admission: Admission, payload: dict[str, Any], priced: frozenset[tuple[str, str]],
        choice: RouteChoice, size: int,
    ) -> None:
        """A first turn that follows a concurrent one's session (`TierRouter.claim`) is served by that
        session's model, which the admission may not have priced: if one that may now serve it is
        new, the input is estimated again with its image rule too, and the admission keeps the
        larger figure (what a stream cut before its usage is charged; the reservation stays)."""
        serving = await self._serving(choice)
        if serving <= priced:
            return
        count = functools.partial(estimate_input, self.counter, "native", choice.model, payload,
                                  user=identity.external_id, images=image_rule_for(priced | serving),
                                  referenced=self.meter.referenced)
        admission.estimate_input = max(admission.estimate_input, await count_off_loop(count, size))

    def _translator(
        self, req: ChatRequest, heavy: bool, end_user: str
    ) -> Callable[[RouteChoice], Awaitable[dict[str, Any]]]:
        """`req` translated for a choice's provider (`_translate`): in a worker thread when `heavy`."""
        return lambda to: off_loop(functools.partial(self._translate, req, to, end_user), heavy)

    def _translate(self, req: ChatRequest, choice: RouteChoice, end_user: str) -> dict[str, Any]:
        """The provider's body for `req`, telling it `end_user` (the caller's pseudonym) as the end user."""
        provider = self.providers[choice.provider]
        try:
            body = provider.body(self._capped(req, choice), choice.model, stream=req.stream)
        except (NativeValidationError, TranslationError) as exc:
            param = exc.param if isinstance(exc, NativeValidationError) else None  # (as a validation error's)
            raise InvalidRequest(exc.message, provider=choice.provider,
                                 details={"param": param} if param else None) from None
        return provider.with_end_user(body, end_user)

    async def _complete(self, ex: Exchange, done: Completion, choice: RouteChoice, admission: Admission) -> Reply:
        ex.upstream_seconds += done.upstream_seconds
        ex.upstream_status = 200
        reply = done.reply
        text = reply.text()
        usage = reply.usage
        # Settled first, before any other wait: the answer was served, and a request cancelled
        # from here on must still leave its record (and not hold `QuotaMeter.drain` at shutdown).
        await self.meter.settle(
            admission, usage=recorded_usage(usage, reply.cache), output_text=text, status=200,
            provider=choice.provider,
        )
        await self.router.report(choice, ok=True)
        if admission.recorded is not None:
            ex.recorded(admission.recorded.input_tokens, admission.recorded.output_tokens, reply.model or choice.model)
        if usage is None and admission.recorded is not None:
            # The provider gave none: the estimate its record holds (output a model that reasons
            # unasked billed unseen is charged as reserved; counted from the text, the answer showed
            # two tokens where the ledger charged all it reserved), as a stream's usage chunk shows.
            usage = WireUsage.of(admission.recorded.input_tokens, admission.recorded.output_tokens)
        elif usage is None:
            count = functools.partial(self.counter.count_text, text, choice.model)
            estimated_out = await count_off_loop(count, len(text)) if text else 0
            usage = WireUsage.of(admission.estimate_input, estimated_out)
        body = orjson.dumps(reply.to_response(usage).to_dict())
        return Reply(200, body, [("content-type", "application/json"), *_choice_headers(choice)])

    async def _upstream(self, ex: Exchange, choice: RouteChoice, call: Awaitable[T]) -> T:
        """Await one upstream attempt inside its client span (the span's context goes upstream); its
        failure is counted (`count_failure`: a dropped `OverloadedAtStart` once the failover drops it)."""
        attributes = {PROVIDER: choice.provider, SYSTEM: choice.provider, REQUEST_MODEL: choice.model}
        try:
            with ex.spans.span(f"chat {choice.model}", attributes, client=True):
                return await call
        except UpstreamError as exc:
            if self.metrics is not None:
                count_failure(self.metrics, choice.provider, exc)
            raise

    def _stream(
        self, ex: Exchange, identity: Identity, stream: ProviderStream, choice: RouteChoice, admission: Admission
    ) -> StreamReply:
        ex.upstream_seconds = stream.upstream_seconds
        ex.upstream_status = stream.upstream.status
        router, meter, metrics = self.router, self.meter, self.metrics
        kind = _kind(self.providers.get(choice.provider))  # (the wire format its error events come in)

        unsettled = True  # the session is neither written (answered) nor given back yet

        async def bind() -> None:
            """The answer began (a chunk of it, `answering`, or an empty answer's end): the session is this
            model's. Shielded: a client that left during the write cancels the stream, never the write
            (a first turn's session was left on a model that failed before the retry that answered, or
            not written at all); a shield is a task of its own, so only when there is a write."""
            nonlocal unsettled
            unsettled = False
            if choice.writes_session:
                await asyncio.shield(router.commit(identity, choice))

        async def give_back() -> None:
            """The stream closed. If no chunk of the answer came (the first event an error, or one
            after the bare opening chunk; the connection broken, the stream cut or never read): no model answered, as on the unstreamed path — an upgrade
            or a migration is not written, and a first turn's claimed session is removed
            (`TierRouter.abandon`). A half-open trial it claimed and did not settle is released."""
            nonlocal unsettled
            if unsettled:
                unsettled = False
                await asyncio.shield(router.abandon(choice))
            if choice.trials:  # (a shield is a task of its own: only when there is a trial)
                await asyncio.shield(router.release(choice))

        async def produce(ending: Ending) -> AsyncIterator[bytes]:
            try:
                async for chunk in stream.events():
                    if unsettled and answering(chunk):  # (not the opening chunk: nothing answered yet)
                        await bind()
                    yield render_chunk(chunk)
                if unsettled:
                    await bind()  # an empty answer, ended as the provider meant: it answered
                if stream.usage is not None:
                    yield render_chunk(stream.normalizer.usage_chunk(stream.usage))
            except Exception as exc:  # an unexpected one too: the client gets an error event, not a cut
                error = exc if isinstance(exc, StreamError | UpstreamError) else (
                    unexpected_stream_failure(exc, choice.provider)
                )
                ending.status = 502
                code = error.code if isinstance(error, StreamError) else cut_code(error)
                if metrics is not None:
                    count_stream_failure(metrics, choice.provider, stream_failure_kind(error))
                # Not a health failure: the provider answered; one broken stream must not take a
                # single-model tier down for 30 s (only failures before the first byte count) — but
                # for the provider's own overload (Anthropic's `overloaded_error` event), as its 529.
                ending.last = render_error_event(error.message, "stream_error", code)
                if isinstance(error, StreamError) and overloaded_mid_stream(kind, error.code):
                    await router.report(choice, ok=False)
                await give_back()  # (before the final bytes: the client sees the session as it is)
                return
            except BaseException:  # cancelled (the client left) during the write or before any chunk
                stream.upstream.close()  # `events`' `finally` would not run: else it waits for GC
                await give_back()
                raise
            ending.last = DONE
            await router.report(choice, ok=True)  # outside the stream's failures: the answer is whole

        async def settle(status: int) -> None:
            await meter.settle(
                admission, usage=stream.measured, output_text=stream.normalizer.text,
                output_counted=stream.normalizer.counted, status=status,
                output_estimate=0 if stream.normalizer.unserved else None,
                provider=choice.provider, reported_input=stream.reported_input,
            )
            used = admission.recorded
            if used is not None:
                ex.recorded(used.input_tokens, used.output_tokens, stream.normalizer.model or choice.model)
                if stream.usage is None and metered.ending.last == DONE:
                    # The provider gave no usage (an OpenAI-compatible server that ignores
                    # `stream_options`): the whole stream still ends with its usage chunk, the
                    # estimate just recorded, as an unstreamed answer shows one (it ended at its
                    # finish chunk, the client told nothing of what it was charged).
                    estimate = stream.normalizer.usage_chunk(WireUsage.of(used.input_tokens, used.output_tokens))
                    metered.ending.last = render_chunk(estimate) + DONE

        metered = MeteredStream(produce, settle, give_back, drains=self.meter.read_on if admission.hidden_output else None)  # (never read: given back too)
        return StreamReply(200, [*SSE_RESPONSE_HEADERS, *_choice_headers(choice)], metered.chunks(), metered.on_close)


def _has_images(req: ChatRequest) -> bool:
    """Whether any message of `req` carries an image part (what the image rules price)."""
    return any(isinstance(part, ImagePart) for message in req.messages
               if isinstance(message.content, list) for part in message.content)


def _kind(provider: ChatProvider | None) -> str:
    """A provider's wire format ("openai" for one no longer configured: its model serves nothing)."""
    return provider.kind if provider is not None else "openai"


def _choice_headers(choice: RouteChoice) -> list[tuple[str, str]]:
    return [("x-sentinel-tier", choice.tier), ("x-sentinel-provider", choice.provider),
            ("x-sentinel-model", choice.model)]


def _estimate_payload(req: ChatRequest) -> dict[str, Any]:
    """The request as plain JSON for token estimation (tool-call arguments as strings)."""
    data = req.to_dict()
    for message in data.get("messages", []):
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            if not isinstance(fn.get("arguments"), str):
                fn["arguments"] = orjson.dumps(fn.get("arguments")).decode()
    return {"messages": data.get("messages", []), "tools": data.get("tools"), "max_tokens": req.max_tokens}
