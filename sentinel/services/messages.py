"""The Anthropic-compatible surface: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

Same rules as the OpenAI relay: the metered fields are type-checked, a body naming a file or container
of the provider account is refused (400: Sentinel serves neither, so none is the caller's) and the model
resolved in the catalogue (404 `model_not_found`) before anything is reserved; the request is admitted with
Anthropic's counting rules (`sentinel.quota.anthropic_usage`; its images by the dearest rule among the
models that may serve it: a translated request's model bills them by its own), served, and settled into
exactly one usage record, with a stream's `message_stop` sent only after that record is stored. A model on an
Anthropic-format provider is relayed as it is (its name replaced only when the catalogue gives it
another upstream name, and its `metadata.user_id` the caller's pseudonym: `sentinel.native.end_user`);
a model on another wire format is translated (`TranslatedChat`).
`count_tokens` reserves one request: it is relayed to an Anthropic provider (a `metadata.user_id` the
client wrote the caller's pseudonym, none added: that call takes no `metadata`), or answered with
Sentinel's own estimate for a model elsewhere (its body checked as `messages` checks it for that model:
what that refuses, this refuses) — or whose provider is in a hard backoff (an alias's
first target out of one is asked instead: `ModelRoutes.counting`). Its own answers write no health:
Anthropic rate-limits token counting apart from messages, so a 429 of it says nothing of the model,
and one user flooding it would otherwise put the model in backoff for everyone. Upstream error answers, on either endpoint, are settled
by `sentinel.services.answers.refuse`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import orjson

from sentinel.domain.catalogue import ModelTarget, Prices
from sentinel.domain.end_user import EndUsers
from sentinel.domain.identity import Identity
from sentinel.domain.usage import Usage
from sentinel.errors import InvalidRequest, UpstreamError
from sentinel.native.advisor import advisor_tools, with_advisor_uses
from sentinel.native.anthropic_checks import check_messages_fields
from sentinel.native.anthropic_inbound import parse_anthropic_messages
from sentinel.native.end_user import with_anthropic_end_user
from sentinel.native.errors import NativeValidationError
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.types import schemas_remembered
from sentinel.observability.metrics import Metrics
from sentinel.observability.tracing import OPERATIONS, PROVIDER, REQUEST_MODEL, SYSTEM
from sentinel.offload import count_off_loop, large, off_loop
from sentinel.providers.anthropic import AnthropicUpstream, overloaded_at_start
from sentinel.providers.errors import OverloadedAtStart, count_failure
from sentinel.providers.http import UpstreamResponse, stalled_if
from sentinel.providers.openai import forwardable_headers, relayable_headers
from sentinel.quota.anthropic_usage import (
    AnthropicStreamInspector,
    message_read,
    message_steps,
    message_text,
    message_usage,
)
from sentinel.quota.estimate import Rereads, estimate_input, hides_output
from sentinel.quota.images import image_rule_for
from sentinel.quota.meter import Admission, Meter, ModelUsage
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.catalogue import ModelCatalogue
from sentinel.routing.model_routes import ModelRoutes
from sentinel.services.answers import refuse, report
from sentinel.services.event_streams import relay_events
from sentinel.services.exchange import Exchange, Reply, StreamReply
from sentinel.services.objects import HELD_MESSAGES, anthropic_object_reference, tool_models
from sentinel.services.relay import target_headers, upstream_payload
from sentinel.services.translated_chat import TranslatedChat

RawHeaders = list[tuple[bytes, bytes]]
JSON = [("content-type", "application/json")]
# Anthropic's `error.details.error_code` for a request combining `thread` with what Threads do not support.
THREAD_UNSUPPORTED = "thread_unsupported_request"


def _invalid(exc: NativeValidationError) -> InvalidRequest:
    return InvalidRequest(exc.message, details={"param": exc.param} if exc.param else None)


def _check(payload: dict[str, Any], *, count_only: bool = False) -> None:
    """The metered fields' types, no server-side fallback models, and no object of the provider
    account named (InvalidRequest, 400):
    Sentinel serves neither Anthropic's Files API nor its containers, nor records whose message a
    server-held thread continues, so such an object is never the caller's (SECURITY.md: objects
    created outside Sentinel are unreachable through it)."""
    try:
        check_messages_fields(payload, count_only=count_only)
    except NativeValidationError as exc:
        raise _invalid(exc) from None
    if payload.get("fallbacks") not in (None, []):
        # Anthropic's server-side fallback (`fallbacks`, the `server-side-fallback-*` beta) serves a
        # declined request on the models it names, each with its own `max_tokens`: a model the
        # catalogue does not offer (or not on these terms), an output the reservation never held,
        # at another model's price. Sentinel's own failover is an alias's next target.
        raise InvalidRequest(
            "fallbacks: server-side fallback models cannot be used through this gateway (the models "
            "served, and their quotas, are the gateway's); name an alias whose targets fail over",
            details={"param": "fallbacks"},
        )
    at = anthropic_object_reference(payload)
    if at in HELD_MESSAGES:
        details: dict[str, Any] = {"param": at}
        if at == "thread":
            # Anthropic's code for a request Threads cannot serve: the anthropic SDK's thread helpers
            # (its tool runner threads by default) then send the turn again without `thread`, the whole
            # conversation — a 400 without it ended a runner's first turn.
            details["error_code"] = THREAD_UNSUPPORTED
        raise InvalidRequest(
            f"{at}: messages the provider holds (a server-held thread, a previous message) cannot be named "
            "through this gateway; send the conversation's messages", details=details,
        )
    if at is not None:
        raise InvalidRequest(
            f"{at}: files (Anthropic's Files API) and containers of the provider account cannot be used "
            "through this gateway; send the content itself (base64, text or a URL)",
            details={"param": at},
        )


class MessagesService:
    """Serves the Messages API over the catalogue (see the module docstring)."""

    def __init__(
        self, upstreams: dict[str, AnthropicUpstream], meter: Meter, metrics: Metrics, counter: TokenCounter, *,
        catalogue: ModelCatalogue, routes: ModelRoutes, translated: TranslatedChat, end_users: EndUsers | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.end_users = end_users or EndUsers(None)
        self.meter = meter
        self.metrics = metrics
        self.counter = counter
        self.catalogue = catalogue
        self.routes = routes
        self.translated = translated

    async def messages(
        self, ex: Exchange, identity: Identity, *, payload: dict[str, Any], body: bytes, headers: RawHeaders
    ) -> Reply | StreamReply:
        """Check, resolve, admit, serve on the first target that answers, settle. The walks of a large
        body run in a worker thread (`sentinel.offload`)."""
        heavy = large(body)
        targets = await off_loop(functools.partial(self._checked, payload), heavy)
        payload = with_advisor_uses(payload)  # (sent as reserved: `sentinel.native.advisor`)
        parsed: dict[str, ModelChatRequest] = {}

        def parse(target: ModelTarget) -> ModelChatRequest:
            return parsed.get("req") or parsed.setdefault("req", self._parse(payload, target))

        targets = await self._carriers(payload, targets, parse, heavy=heavy)
        ex.operation, ex.request_model = OPERATIONS["chat"], targets[0].name
        with ex.spans.span("sentinel.quota.admit"):
            admission = await self.meter.admit(
                identity, endpoint="messages", model=targets[0].name, payload=payload, request_id=ex.usage_id,
                size=len(body), counted_as=targets[0].upstream_model,
                images=image_rule_for((t.kind, t.upstream_model) for t in targets),  # any target may serve it
                rereads=self._advisor_calls(payload, targets),
            )
        ex.headers.extend(admission.headers.items())
        served: list[ModelTarget] = []
        end_user = self.end_users.of(identity.external_id)

        def on_attempt(target: ModelTarget) -> None:
            served[:] = [target]
            admission.model, admission.prices, ex.provider = target.name, target.prices, target.provider
            admission.counted_as = target.upstream_model
            # (a model that reasons unasked bills reasoning it never streams)
            admission.hidden_output = hides_output("messages", payload, reasons=target.reasons, kind=target.kind)

        async def send(target: ModelTarget) -> Reply | StreamReply:
            if target.kind == "anthropic":
                return await self._relay(ex, target, payload, headers, admission, heavy=heavy, end_user=end_user)
            return await self.translated.serve(ex, parse(target), target, admission, "anthropic", end_user=end_user,
                                               heavy=heavy)

        try:
            reply = await self.routes.call(targets, send, on_attempt, caller=identity.external_id)
        except BaseException as exc:  # noqa: BLE001 - see `Meter.fail` (cancelled, a bug: not only our errors)
            await self.meter.fail(admission, exc)  # a no-op when `refuse` settled a provider refusal
            raise
        ex.headers.extend(target_headers(served[0]))
        return reply

    async def count_tokens(
        self, ex: Exchange, identity: Identity, *, payload: dict[str, Any], body: bytes, headers: RawHeaders
    ) -> Reply:
        """Input tokens of a Messages body: the provider's count, or Sentinel's estimate off Anthropic."""
        heavy = large(body)
        targets = await off_loop(functools.partial(self._checked, payload, count_only=True), heavy)
        # What messages refuses for a target of another wire format (thinking, a malformed cache
        # mark, ...) count_tokens refuses too (it answered an estimate): the same targets carry it.
        targets = await self._carriers(
            payload, targets, lambda target: self._parse(payload, target, count_only=True), heavy=heavy,
        )
        # The first target not in a hard backoff, as messages would go to it; with none (a lone model
        # in backoff) no provider is asked — it is failing, and the count is Sentinel's to give: its
        # estimate is (`X-Sentinel-Estimate`). A count writes no health (see the module docstring).
        asked = await self.routes.counting(targets)
        target = asked or targets[0]
        admission = await self.meter.admit_call(identity, endpoint="messages/count_tokens", request_id=ex.usage_id)
        ex.headers.extend(admission.headers.items())
        admission.model = target.name
        ex.headers.extend(target_headers(target))
        if asked is None or target.kind != "anthropic":
            count = functools.partial(
                estimate_input, self.counter, "messages/count_tokens", target.upstream_model, payload,
                user=identity.external_id, images=image_rule_for([(target.kind, target.upstream_model)]),
            )  # a large body off the event loop (tiktoken releases the GIL), as admission counts it
            try:
                tokens = await count_off_loop(count, len(body))
            except BaseException:  # a count that failed or was cancelled served nothing: the request back
                await self.meter.release(admission)
                raise
            await self.meter.settle(admission, usage=None, output_text="", status=200, provider=None)
            return Reply(200, orjson.dumps({"input_tokens": tokens}), [*JSON, ("x-sentinel-estimate", "true")])
        ex.provider = target.provider
        # Anthropic's count_tokens takes no `metadata`: no end user is added, but one the client wrote is
        # the caller's pseudonym instead, never the id written (`sentinel.native.end_user`).
        payload = with_anthropic_end_user(payload, self.end_users.of(identity.external_id), add=False)
        try:
            upstream = await self._forward(ex, target, ["messages", "count_tokens"], payload, headers, heavy=heavy)
            raw = await self._read(upstream, admission)
        except BaseException as exc:  # noqa: BLE001 - see `Meter.fail` (cancelled, a bug: not only our errors)
            await self.meter.fail(admission, exc)  # a no-op when `refuse` settled a provider refusal
            raise
        await self.meter.settle(admission, usage=None, output_text="", status=200, provider=target.provider)
        return Reply(200, raw, relayable_headers(upstream.headers))

    def _checked(self, payload: dict[str, Any], *, count_only: bool = False) -> tuple[ModelTarget, ...]:
        """The body checked (`_check`), then its targets (`_targets`)."""
        _check(payload, count_only=count_only)
        return self._targets(payload)

    def _targets(self, payload: dict[str, Any]) -> tuple[ModelTarget, ...]:
        """The catalogue's targets for the body's `model` that also serve its tools' models (404, 400)."""
        targets = self.catalogue.resolve(payload["model"])
        tools = tool_models(payload)
        return self.catalogue.with_tools(targets, tools) if tools else targets

    async def _carriers(
        self, payload: dict[str, Any], targets: tuple[ModelTarget, ...],
        parse: Callable[[ModelTarget], ModelChatRequest], *, heavy: bool,
    ) -> tuple[ModelTarget, ...]:
        """The `targets` that can carry the body (`TranslatedChat.carriers`): a 400 here reserves
        nothing; an alias's target that cannot carry the request is passed over. Reading it for another
        wire format checks its tools' schemas (~0.5 ms and up for one not seen before): in a worker
        thread when it has tools too."""
        foreign = any(target.kind != "anthropic" for target in targets)
        return await off_loop(functools.partial(self.translated.carriers, targets, "anthropic", parse),
                              foreign and (heavy or not schemas_remembered(payload.get("tools"))))

    def _parse(self, payload: dict[str, Any], target: ModelTarget, *, count_only: bool = False) -> ModelChatRequest:
        try:
            return parse_anthropic_messages(payload, target=target.kind, count_only=count_only)
        except NativeValidationError as exc:
            raise _invalid(exc) from None

    async def _forward(
        self, ex: Exchange, target: ModelTarget, segments: list[str], payload: dict[str, Any], headers: RawHeaders,
        *, heavy: bool, end_user: str | None = None,
    ) -> UpstreamResponse:
        # What Sentinel read, never the client's bytes (a duplicated key read first-wins upstream
        # would differ from what was checked and reserved; see `OpenAIRelay._serve`), telling the
        # provider the caller's pseudonym as the end user (`end_user`; count_tokens has no
        # `metadata`: its body comes with a client's `metadata.user_id` replaced). A large body's in a worker thread (`sentinel.offload`).
        def encoded() -> bytes:
            sent = upstream_payload(self.catalogue, payload, target)
            return orjson.dumps(sent if end_user is None else with_anthropic_end_user(sent, end_user))

        body = await off_loop(encoded, heavy)
        started = time.perf_counter()
        attributes = {PROVIDER: target.provider, SYSTEM: target.provider, REQUEST_MODEL: target.name}
        try:
            with ex.spans.span(f"chat {target.name}", attributes, client=True) as span, \
                    stalled_if(payload.get("stream") is True):
                upstream = await self.upstreams[target.provider].forward(
                    segments, headers=forwardable_headers(headers, as_json=True), body=body
                )
                span.set_attribute("http.response.status_code", upstream.status)
        except UpstreamError as exc:
            count_failure(self.metrics, target.provider, exc)  # (one it answered with an error: `_read`)
            raise
        finally:
            ex.upstream_seconds += time.perf_counter() - started
        ex.upstream_status = upstream.status
        return upstream

    async def _read(self, upstream: UpstreamResponse, admission: Admission) -> bytes:
        """The whole body of a 2xx answer; an error answer is settled or not and raised (`refuse`:
        status, type and message relayed). Either failure is counted (`count_failure`)."""
        try:
            if upstream.status >= 300:
                await refuse(self.meter, upstream, admission)
            return await upstream.read_served()
        except UpstreamError as exc:
            count_failure(self.metrics, upstream.provider, exc)
            raise

    async def _relay(
        self, ex: Exchange, target: ModelTarget, payload: dict[str, Any], headers: RawHeaders, admission: Admission,
        *, heavy: bool, end_user: str,
    ) -> Reply | StreamReply:
        upstream = await self._forward(ex, target, ["messages"], payload, headers, heavy=heavy, end_user=end_user)
        upstream.model = target.upstream_model  # a 404 saying it is retired moves the alias on (`refuse`)
        if payload.get("stream") is True and 200 <= upstream.status < 300 and upstream.streams:
            within = functools.partial(self._within, target, payload)
            # Its opening held back until its first block: an overload before it is the attempt's 529
            # (the alias's next target serves it), else relayed as it came (`OverloadedAtStart`).
            if await overloaded_at_start(upstream):  # (a failed read of it is met, and counted, as relayed)
                dropped = OverloadedAtStart(upstream.provider, drop=upstream.close,
                                            relay=lambda: self._relay_sse(ex, target, upstream, admission, within))
                count_failure(self.metrics, target.provider, dropped)  # (once dropped: retried elsewhere)
                raise dropped
            return self._relay_sse(ex, target, upstream, admission, within)
        raw = await self._read(upstream, admission)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        usage = message_usage(parsed)
        # A served answer that cannot be read (not JSON: an HTML page from a proxy, a body compressed
        # despite `identity`, cut JSON) is relayed as it is and charged the output it reserved, as
        # on the OpenAI surfaces (`AnswerRelay.complete`): counting its text charged it none.
        await self.meter.settle(
            admission, usage=usage, output_text=message_text(parsed), status=upstream.status,
            provider=upstream.provider, read_input=("", 0) if usage is not None else message_read(parsed),
            output_estimate=admission.max_output if parsed is None else None,
            within=self._within(target, payload, message_steps(parsed)),
        )
        report(ex, admission, parsed.get("model") if isinstance(parsed, dict) else None)
        return Reply(upstream.status, raw, relayable_headers(upstream.headers))

    def _advisor_calls(self, payload: dict[str, Any], targets: tuple[ModelTarget, ...]) -> list[Rereads]:
        """What each advisor tool may run (`sentinel.native.advisor`): its `max_uses` calls (written
        by then), each writing its `max_tokens` — else the most the catalogue says its model may
        write on any of `targets`' providers, else not known (the default output cap)."""
        calls = []
        for _, tool in advisor_tools(payload):
            cap = tool.get("max_tokens")
            if cap is None and isinstance(model := tool.get("model"), str):
                caps = [self.catalogue.max_output(target.provider, found.upstream_model) for target in targets
                        if (found := self.catalogue.on_provider(model, target.provider)) is not None]
                cap = max((each for each in caps if each is not None), default=None)
            calls.append(Rereads(tool["max_uses"], cap))
        return calls

    def _within(
        self, target: ModelTarget, payload: dict[str, Any], steps: list[tuple[str, Usage]]
    ) -> list[ModelUsage]:
        """The steps of another model an answer's usage holds (`anthropic_usage.model_steps`: the
        advisor tool's), each with the prices of the model that ran it: the catalogue model the
        request or one of its tools names (`tool_models`) that `target`'s provider serves under that
        name (its upstream name, or its catalogue name). A step naming any other model (a dated
        snapshot of it, say) is priced at the dearest, for that step, of those models' prices: never
        below the request's own, which priced every step before."""
        if not steps:
            return []
        named = [target, *(found for _, name in tool_models(payload) if isinstance(name, str)
                           and (found := self.catalogue.on_provider(name, target.provider)) is not None)]
        by_name: dict[str, Prices] = {}
        for each in named:
            by_name.setdefault(each.upstream_model, each.prices)
            by_name.setdefault(each.name, each.prices)
        return [ModelUsage(model, used, known if (known := by_name.get(model)) is not None
                           else _dearest([each.prices for each in named], used)) for model, used in steps]

    def _relay_sse(
        self, ex: Exchange, target: ModelTarget, upstream: UpstreamResponse, admission: Admission,
        within: Callable[[list[tuple[str, Usage]]], list[ModelUsage]],
    ) -> StreamReply:
        inspector = AnthropicStreamInspector(upstream.provider, upstream.secret)
        meter, routes = self.meter, self.routes

        async def settle(status: int) -> None:
            usage = inspector.usage  # else the server tools' results streamed are charged as read too
            await meter.settle(admission, usage=usage, output_text=inspector.text, output_counted=inspector.counted,
                               status=status, output_estimate=0 if inspector.unserved else None,
                               provider=upstream.provider, reported_input=inspector.reported_input,
                               read_input=("", 0) if usage is not None else inspector.read_input,
                               within=within(inspector.steps))
            report(ex, admission, None)
            if inspector.failed:  # the provider's overload after the stream began counts against its health
                await routes.failed_mid_stream(target, inspector.error_type)

        return relay_events(upstream, inspector, "messages", self.metrics, settle, drains=self.meter.read_on if admission.hidden_output else None)


def _dearest(prices: list[Prices], used: Usage) -> Prices:
    """Of `prices`, those that make `used` cost the most (unknown ones cost nothing)."""
    return max(prices, key=lambda each: each.cost(
        used.input_tokens, used.output_tokens, used.cache_write_tokens, used.cache_read_tokens) or 0.0)
