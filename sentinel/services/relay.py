"""The OpenAI-compatible relay: metered endpoints, object calls, allowed pass-through.

Every call that reaches the upstream is authenticated (by the transport), admitted against the
caller's plan, relayed, and settled into exactly one usage record. A metered call's model must be
in the catalogue (404 `model_not_found` otherwise, before anything is reserved). Metered endpoints
reserve their estimated tokens; other calls reserve one request. A stream's final `[DONE]` (and a
large answer's last bytes) reach the client only after its usage record is stored
(`sentinel.services.answers`). Objects the caller creates upstream become theirs; naming anyone
else's — in the path or the body — is a 404.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sentinel.domain.catalogue import ModelTarget, Prices
from sentinel.domain.end_user import EndUsers
from sentinel.domain.files import UNREAD, FileFacts
from sentinel.domain.identity import Identity
from sentinel.domain.json_body import read_json
from sentinel.domain.numbers import MAX_TOKENS
from sentinel.errors import InvalidRequest, NotFound, StoreUnavailable, UpstreamError
from sentinel.governance.ownership import MAX_CUT_TURNS, BatchEstimate, Ownership
from sentinel.native.end_user import (
    names_end_user,
    with_batch_end_user,
    with_named_end_user,
    with_openai_end_user,
)
from sentinel.native.errors import NativeValidationError
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.openai_checks import check_metered_fields, check_named_ids
from sentinel.native.openai_inbound import parse_openai_chat
from sentinel.native.types import schemas_remembered
from sentinel.observability.metrics import Metrics
from sentinel.observability.tracing import OPERATIONS, PROVIDER, REQUEST_MODEL, SYSTEM
from sentinel.offload import count_off_loop, large, off_loop
from sentinel.providers.errors import UnreadableAnswer, count_failure
from sentinel.providers.http import UpstreamResponse, stalled_if
from sentinel.providers.openai import OpenAICompatUpstream, forwardable_headers
from sentinel.quota.estimate import hides_output, item_references
from sentinel.quota.images import image_rule_for
from sentinel.quota.items import item_text
from sentinel.quota.media import upload_facts
from sentinel.quota.media_calls import (
    EDITS,
    READ_FIELDS,
    MediaCall,
    media_call,
    read_once,
    video_made,
    video_source,
)
from sentinel.quota.meter import Admission, Meter
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.catalogue import ModelCatalogue
from sentinel.routing.model_routes import ModelRoutes
from sentinel.services.answers import AnswerRelay, Charging, CutTurns, claim_created
from sentinel.services.exchange import Exchange, Reply, StreamReply
from sentinel.services.file_facts import FileFactsReader
from sentinel.services.objects import (
    ACTION_CREATED,
    COLLECTIONS,
    MAX_BATCH_TOKENS,
    MAX_REFERENCES,
    REFERENCE_KEYS,
    InvalidBatchInput,
    Items,
    MalformedReference,
    MalformedUpload,
    ObjectPath,
    TooManyReferences,
    Upload,
    asks_stream,
    classify,
    continued,
    conversation_item,
    eval_data_files,
    eval_data_references,
    eval_run_named,
    fine_tuned_models,
    is_fine_tuned,
    items_shown,
    named_files,
    read_batch_input,
    reads_account_data,
    reference_keys,
    referenced_ids,
    run_models,
    tool_models,
    trained_models,
    upload_files,
)
from sentinel.services.run_usage import CANCEL_WAITS, MESSAGES_PAGE, Fetch, Sleep, ThreadRuns, until_ended
from sentinel.services.translated_chat import TranslatedChat

log = logging.getLogger("sentinel.relay")

RawHeaders = list[tuple[bytes, bytes]]
Query = list[tuple[str, str]]


class OpenAIRelay:
    """Relays `/v1/*` calls to the OpenAI-compatible upstreams (see the module docstring).

    `upstreams` are the OpenAI-format providers by name; `default` serves the calls that name no model
    (stored responses, allowed pass-through). Metered calls go where their catalogue model lives:
    relayed as they are to an OpenAI-format provider, translated (`TranslatedChat`) for a chat model
    of another wire format; either way the provider is told the caller's pseudonym (`end_users`) as
    the end user, never the client's (`sentinel.native.end_user`).
    """

    def __init__(
        self, upstreams: dict[str, OpenAICompatUpstream], default: OpenAICompatUpstream, meter: Meter,
        ownership: Ownership, metrics: Metrics, *, catalogue: ModelCatalogue, routes: ModelRoutes,
        translated: TranslatedChat, end_users: EndUsers | None = None, counter: TokenCounter | None = None,
        cancel_waits: Sequence[float] = CANCEL_WAITS, sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.upstreams = upstreams
        self.upstream = default
        self.meter = meter
        self.ownership = ownership
        self.metrics = metrics
        self.catalogue = catalogue
        self.routes = routes
        self.translated = translated
        self.end_users = end_users or EndUsers(None)
        self.counter = counter or TokenCounter()  # a text file's tokens, at upload (`_remember_file`)
        # Files named by id that Sentinel kept nothing of, read from where their uploads went.
        self.file_facts = FileFactsReader(default, ownership, self.counter)
        # How a cancelled Assistants run is read again until it ended (`run_usage.until_ended`).
        self.cancel_waits, self.sleep = cancel_waits, sleep
        self.answers = AnswerRelay(meter, ownership, metrics, prices=self._prices, counter=self.counter)

    # --- metered endpoints (chat, completions, embeddings, responses) -------------------------------
    async def metered(
        self, ex: Exchange, identity: Identity, *, endpoint: str, segments: Sequence[str], payload: dict[str, Any],
        body: bytes, headers: RawHeaders, query: Query | None = None,
    ) -> Reply | StreamReply:
        """Check, resolve the model, admit, forward the request (`body`, parsed as `payload`, with
        `query`: the only one the caller lets through, the openai SDK's beta switch — sent on as it
        came, to every target, never read), relay the answer and settle. Nothing is reserved for a request
        refused before it is sent. The walks of a large body run in a worker thread (`sentinel.offload`)."""
        heavy = large(body)
        targets, references, files = await off_loop(functools.partial(self._checked, endpoint, payload), heavy)
        # The files it names by id are estimated by what their uploads held (read then, looked up
        # along); one Sentinel kept nothing of is read from the provider now, once it is known theirs.
        facts = await self.ownership.require(references, identity.external_id, files=files)
        if any(file_id not in facts for file_id in files):
            facts = await self.file_facts.complete(facts, files, set(references), identity.external_id)
        stream = payload.get("stream") is True
        strip_usage = False
        if stream and endpoint in ("chat", "completions"):
            opts = payload.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                # Ask the upstream for the final usage chunk; strip it from the client's stream.
                payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                strip_usage = True
        stores = _stores_objects(endpoint, payload)
        carried, extends = continued(payload) if endpoint == "responses" else ([], [])
        previous = carried[0] if len(carried) > len(extends) else None  # (named first)
        held = await self._continued(identity, carried, previous if stores else None)
        request = Relayed(endpoint, segments, payload, headers, query, stream, strip_usage,
                          identity if stores else None,
                          extends=[(conversation, held.get(conversation, 0)) for conversation in extends],
                          previous=previous,
                          speaker=identity if endpoint == "chat" else None, heavy=heavy,
                          end_user=self.end_users.of(identity.external_id))
        # A 400 here reserves nothing; an alias's target that cannot carry the request is passed over.
        # Reading it for another wire format checks its tools' schemas (~0.5 ms and up for one not
        # seen before): in a worker thread when it has tools too.
        carriers = functools.partial(self.translated.carriers, targets, "openai",
                                     functools.partial(self._translated, request))
        targets = await off_loop(carriers, _foreign(targets, "openai") and (heavy or not schemas_remembered(payload.get("tools"))))
        ex.operation, ex.request_model = OPERATIONS.get(endpoint, endpoint), targets[0].name
        with ex.spans.span("sentinel.quota.admit"):
            admission = await self.meter.admit(
                identity, endpoint=endpoint, model=targets[0].name, payload=payload, request_id=ex.usage_id,
                size=len(body), carried_input=sum(held.values()),
                counted_as=targets[0].upstream_model,  # (its tokenizer: `Admission.counted_as`)
                images=image_rule_for((t.kind, t.upstream_model) for t in targets),  # any may serve it
                files=facts,
            )
        ex.headers.extend(admission.headers.items())
        if endpoint == "responses":  # (checked a catalogue model by `_checked`: `with_tools`)
            admission.tool_model = next((m for _, m in tool_models(payload) if isinstance(m, str)), None)
        served: list[ModelTarget] = []

        def on_attempt(target: ModelTarget) -> None:
            served[:] = [target]
            admission.model, admission.prices, ex.provider = target.name, target.prices, target.provider
            admission.counted_as = target.upstream_model
            # (the tool's catalogue entry on the provider serving the request: `with_tools` held it to one)
            tool = None if admission.tool_model is None else self.catalogue.on_provider(admission.tool_model,
                                                                                        target.provider)
            admission.tool_prices = None if tool is None else tool.prices
            # (a model that reasons unasked bills reasoning it never streams)
            admission.hidden_output = hides_output(endpoint, payload, reasons=target.reasons, kind=target.kind)

        try:
            reply = await self.routes.call(
                targets, lambda target: self._serve(ex, request, target, admission), on_attempt,
                caller=identity.external_id, one_provider=stores or bool(references),
            )
        except BaseException as exc:  # noqa: BLE001 - see `Meter.fail` (cancelled, a bug: not only our errors)
            await self.meter.fail(admission, exc)
            raise
        ex.headers.extend(target_headers(served[0]))
        return reply

    async def _continued(self, identity: Identity, carried: list[str], previous: str | None) -> dict[str, int]:
        """The context each of `carried` holds (`Ownership.contexts`), read along with the cut turns the
        stored response continuing `previous` would list: 400 `cut_turns_unread` when more than
        MAX_CUT_TURNS of them are not charged yet (`Ownership.continued_cut_turns`)."""
        if not carried:
            return {}
        if previous is None:
            return await self.ownership.contexts(carried)
        held, unread = await asyncio.gather(self.ownership.contexts(carried),
                                            self.ownership.continued_cut_turns(previous, identity.external_id))
        if len(unread) > MAX_CUT_TURNS:
            raise InvalidRequest(
                f"The response {previous} continues {len(unread)} answers whose streams were cut before their "
                f"usage, which no read has charged (at most {MAX_CUT_TURNS}): read GET /v1/responses/{previous}"
                "/input_items (and the response itself), which charges them, then send this again",
                code="cut_turns_unread", details={"param": "previous_response_id"},
            )
        return held

    def _checked(
        self, endpoint: str, payload: dict[str, Any]
    ) -> tuple[tuple[ModelTarget, ...], list[str], list[str]]:
        """A metered request's fields checked (400), its model's targets — those that also run the
        models its tools name (404, 400) —, the object ids its body names (400 past the most) and
        those of them it names as files (`named_files`)."""
        try:
            check_metered_fields(endpoint, payload)
        except NativeValidationError as exc:
            raise InvalidRequest(exc.message, details={"param": exc.param}) from None
        targets = self._targets(endpoint, payload["model"])
        tools = tool_models(payload)
        if tools:
            targets = self.catalogue.with_tools(targets, tools)
        references = _references(payload)
        return targets, references, named_files(payload) if references else []

    def _targets(self, endpoint: str, model: str) -> tuple[ModelTarget, ...]:
        """The catalogue's targets for `model` (404 when unknown); only chat can be translated."""
        targets = self.catalogue.resolve(model)
        if endpoint != "chat":
            targets = tuple(t for t in targets if t.kind == "openai")
            if not targets:
                raise InvalidRequest(
                    f"The model '{model}' is not served by an OpenAI-compatible provider: /v1/{'/'.join(_PATHS[endpoint])} "
                    "cannot be translated (only /v1/chat/completions and /v1/messages can)",
                    code="model_not_supported", details={"param": "model"},
                )
        return targets

    def _translated(self, request: Relayed, target: ModelTarget) -> ModelChatRequest:
        if request.translated is None:
            try:
                translated = parse_openai_chat(request.payload, target=target.kind)
            except NativeValidationError as exc:
                raise InvalidRequest(exc.message, details={"param": exc.param} if exc.param else None) from None
            # Sentinel asked for the usage chunk on the client's behalf: the client did not.
            request.translated = translated.model_copy(
                update={"include_usage": translated.include_usage and not request.strip_usage}
            )
        return request.translated

    async def _serve(
        self, ex: Exchange, request: Relayed, target: ModelTarget, admission: Admission
    ) -> Reply | StreamReply:
        if target.kind != "openai":
            return await self.translated.serve(ex, self._translated(request, target), target, admission, "openai",
                                               end_user=request.end_user, heavy=request.heavy)
        # What Sentinel read, never the client's bytes: a duplicated key (`max_tokens`, an id) that a
        # provider read first-wins would otherwise differ from what was checked and reserved. The end
        # user is the caller's pseudonym, whatever the client named (`sentinel.native.end_user`).
        to = self.upstreams[target.provider]
        body = await off_loop(lambda: orjson.dumps(with_openai_end_user(
            upstream_payload(self.catalogue, request.payload, target), request.end_user, to.end_user_field,
            endpoint=request.endpoint,
        )), request.heavy)
        try:
            upstream = await self._forward(
                ex, to, "POST", request.segments, body, request.headers, request.query,
                admission, stream=request.stream,
            )
            upstream.model = target.upstream_model  # a 404 saying it is retired moves the alias on (`refuse`)
            if request.stream and request.strip_usage and 200 <= upstream.status < 300 and upstream.encoded:
                # Compressed despite `identity`: relayed as it came (never inflated), its usage chunk —
                # asked for on the client's behalf — could not be taken out, and the client would get a
                # chunk without choices it never asked for. Served and billed: as translated streams, a 502.
                await upstream.drain_served()
                raise UnreadableAnswer(f"Provider {upstream.provider} answered a streamed request with a compressed body",
                                       usage=None, provider=upstream.provider)
            # A response's output items become the caller's, stored or not (a `store: false` answer's items
            # are given back as input by id), for as long as what holds them: its conversation, else it.
            items = None if request.endpoint != "responses" else Items(
                COLLECTIONS["conversations"] if request.extends else COLLECTIONS["responses"])
            if request.stream and 200 <= upstream.status < 300 and upstream.streams:
                return self.answers.sse(upstream, request.endpoint, admission, request.strip_usage, request.owner, ex=ex,
                                        extends=request.extends, speaker=request.speaker, items=items,
                                        previous=request.previous)
            return await self.answers.complete(
                upstream, request.endpoint, admission, owner=request.owner,
                ttl=ObjectPath(_COLLECTION.get(request.endpoint)).ttl, creating=True, ex=ex, extends=request.extends,
                speaker=request.speaker, items=items, previous=request.previous,
            )
        except UpstreamError as exc:  # the send failed, or its error status, an answer broken off
            count_failure(self.metrics, target.provider, exc)
            raise

    # --- other calls: objects, allowed pass-through --------------------------------------------------
    async def call(
        self, ex: Exchange, identity: Identity, *, endpoint: str, method: str, segments: Sequence[str],
        body: bytes | None, headers: RawHeaders, query: Query | None,
    ) -> Reply | StreamReply:
        """Forward a call that reserves one request (and a media call whose answer may show no usage
        the tokens it is charged then: `media_calls.media_call`). Paths into a collection of per-account objects
        are checked for ownership (a collection's list is not offered: GET or HEAD); so are ids named
        in the body. An object's path with a trailing slash is its path (`/v1/files/{id}/` is
        `/v1/files/{id}`: a DELETE of it forgets its owner), and goes upstream without it. A POST of
        one of a collection's COLLECTION_ACTIONS (`/v1/responses/compact`) names no object. A call
        that asked for work and is answered with an event stream all the same is not relayed
        (`AnswerRelay.unoffered_stream`): pass-through streams are not offered."""
        where = classify(segments, method)
        if query is not None and asks_stream(value.encode() for name, value in query if name == "stream"):
            # A read asking for its object's events (a stored response's again, `GET /v1/responses/{id}
            # ?stream=true`, resumed `starting_after` one) gets its output with the usage in an event
            # a read does not parse: a response whose own stream was cut, its usage left to the first
            # read showing it, was read whole for free. No background response is made through
            # Sentinel (`check_metered_fields`): nothing is left to stream.
            raise _no_passthrough_stream()
        if segments[-1] == "" and where.object_id:
            segments = segments[:-1]
        if where.is_collection and method in ("GET", "HEAD"):
            raise NotFound("Listing is not offered: it would show every user's objects", code="endpoint_not_supported")
        if where.object_id is not None:
            await self.ownership.require([where.object_id], identity.external_id)
        as_json = False
        batch: BatchEstimate | None = None  # what a batch input uploaded, or the batch made, reserves
        stored: bytes | None = None  # a file uploaded through POST /v1/files: its content, as sent
        eval_data = False  # ... as an eval's data file, its items read (`eval_data_references`)
        media: MediaCall | None = None  # a media call whose answer may show no usage: what it reserves
        creating = where.creates(method, segments)
        creates_batch = creating and where.collection == "batches"
        if body:
            forwarded = forwardable_headers(headers)
            if forwarded.get("content-encoding", "identity").strip().lower() != "identity":
                raise InvalidRequest("A pass-through body must not be compressed (Content-Encoding): its ids must be read")
            body, as_json, batch, stored, fields, eval_data, uploaded = await self._check_body(
                identity, body, forwarded.get("content-type", "").strip(),
                creates_batch=creates_batch, uploads=upload_files(method, segments), segments=segments,
            )
            if method == "POST":
                # A remix's or an edit's source, made through Sentinel: reserved as it, not the dearest.
                source_id = video_source(segments, fields)
                source = await self.ownership.video_of(source_id) if source_id is not None else None
                media = await count_off_loop(
                    functools.partial(media_call, self.counter, segments, fields, source, uploaded), len(body))
                del uploaded  # (read: not held while the call is sent)
                if media is not None and media.kind == "compact":
                    # The stored context it compacts (`previous_response_id`, `conversation`) is read
                    # along, as a metered request continuing it reserves it (`carried_input`).
                    held = await self.ownership.contexts(continued(dict(fields))[0])
                    media = dataclasses.replace(media, input_tokens=min(MAX_TOKENS, media.input_tokens + sum(held.values())))
                if media is not None and query is not None:
                    # Charged by what its body names (its model, size, seconds): a query sent on would be
                    # read upstream unchecked, as on the metered endpoints (a LiteLLM proxy's `?model=`).
                    raise _media_query()
        elif creates_batch:
            await self.ownership.require_batch_input("", identity.external_id)  # a batch names its input
        if not body and query is not None and method == "POST" and media_call(self.counter, segments, {}) is not None:
            raise _media_query()  # (no body: the query alone, `?model=dall-e-3&n=10`, would name the call)
        with ex.spans.span("sentinel.quota.admit"):
            if creates_batch and batch is not None:  # its lines, as the requests they are
                admission = await self.meter.admit_batch(
                    identity, endpoint=endpoint, request_id=ex.usage_id, requests=batch.requests,
                    input_tokens=batch.input_tokens, output_tokens=batch.output_tokens,
                )
            else:
                # It may start work charged the tokens its answer shows (a run, an image): a token
                # limit of 0 refuses it — but a delete or a cancel, which starts none (a user banned
                # from a token metric can still remove and stop what is theirs; a cancelled object's
                # answer is still charged the usage it shows, as any read of it).
                # A read or a cancel of a batch is not refused by a token limit its own held reservation
                # used up: the read settles it to what the batch spent, the cancel stops it.
                admission = await self.meter.admit_call(
                    identity, endpoint=endpoint, request_id=ex.usage_id,
                    tokens_later=method != "DELETE" and segments[-1] != "cancel",
                    input_tokens=media.input_tokens if media else 0, output_tokens=media.output_tokens if media else 0,
                    holding=where.object_id if where.collection == "batches" and where.object_id
                    and (method == "GET" or segments[-1] == "cancel") else None,
                )
        ex.headers.extend(admission.headers.items())
        try:
            # Read once admitted, before it is sent: only the facts are kept while the upload is under way.
            # (a kind it cannot estimate is kept as such: never read again from the provider)
            facts = None if stored is None else await count_off_loop(
                functools.partial(upload_facts, stored, self.counter.most_tokens), len(stored)) or UNREAD
            stored = None
            upstream = await self._forward(ex, self.upstream, method, segments, body, headers, query, admission,
                                           as_json=as_json)
            # An object's answer names what it created; a file's content is the user's own bytes.
            last = segments[-1]
            owner = identity if where.collection is not None and last != "content" else None
            charging = Charging(work=method == "POST" and last != "cancel", at=last, counted="steps" not in segments,
                                holds=creates_batch, context=where.collection == "responses" and where.is_object(segments),
                                media=media)
            # (a stored response read as events all the same — a `stream` asked some other way — shows
            # its output with its usage unread: never relayed either)
            if (charging.work or charging.context) and 200 <= upstream.status < 300 and upstream.event_stream:
                await self.answers.unoffered_stream(upstream, admission)  # raises: never relayed
            reply = await self.answers.complete(
                upstream, endpoint, admission, owner=owner, ttl=where.ttl, creating=creating, ex=ex, charging=charging,
                thread_runs=self._thread_runs(ex, method, segments, where, headers),
                eval_run=self._eval_run(ex, method, segments, where, headers),
                items=items_shown(where, method, segments), within=where.object_id,
                cut_turns=self._cut_turns(ex, identity, method, segments, where, headers),
                thread_messages=functools.partial(self._thread_messages, ex, headers),
            )
        except BaseException as exc:  # noqa: BLE001 - see `Meter.fail` (cancelled, a bug: not only our errors)
            count_failure(self.metrics, self.upstream.name, exc)  # (an upstream failure, once: its send's too)
            await self.meter.fail(admission, exc)
            raise
        if creating and where.is_collection and where.collection == "files" and isinstance(reply, Reply):
            if batch is not None:
                await self._vouch_batch_input(reply, identity, batch)
            if facts is not None:
                await self._remember_file(reply, identity, facts)
            if eval_data:
                await self._vouch_eval_data(reply, identity)
        if media is not None and media.kind == "video" and isinstance(reply, Reply):
            await self._remember_video(reply, identity, media)
        if (where.collection or "", where.action or "") in ACTION_CREATED and isinstance(reply, Reply):
            await self._claim_along(where, reply, identity)
        if where.collection == "fine_tuning/jobs" and where.object_id is not None and isinstance(reply, Reply):
            await self._claim_trained(where, segments, reply, identity)
        if where.collection == "conversations" and method == "POST" and body:
            await self._conversation_grew(where, last, reply, body, identity)
        item = conversation_item(where, segments)
        deleted = where.object_id if where.is_object(segments) else item
        run = eval_run_named(where, segments)
        if method == "DELETE" and (deleted is not None or run is not None) and reply.status < 300:
            try:
                if run is not None and where.object_id is not None:  # (named with its eval)
                    await self.ownership.forget_child(run, where.object_id)
                elif item is not None and where.object_id is not None:  # (named with its conversation)
                    await self.ownership.forget_item(item, where.object_id, identity.external_id)
                elif deleted is not None:
                    await self.ownership.forget(deleted)
            except StoreUnavailable:  # the provider deleted it: its record names its maker, nothing more
                self.ownership.outage.warning("the store is unavailable: a deleted object's owner record was kept")
        return reply

    def _prices(self, model: str) -> Prices | None:
        """The catalogue's prices of `model`, the name a provider reports a model it ran by (an eval
        run's `per_model_usage`): only a catalogue model served under that very name, as eval runs
        must name (`_batch_model`); None for any other (a dated snapshot's name)."""
        return self.catalogue.resolve(model)[0].prices if self._batch_model(model) else None

    def _thread_runs(
        self, ex: Exchange, method: str, segments: Sequence[str], where: ObjectPath, headers: RawHeaders,
    ) -> ThreadRuns | None:
        """For a read of a thread's messages (`GET /v1/threads/{t}/messages`, or one of them) or of a
        run's steps (`GET /v1/threads/{t}/runs/{r}/steps`, or one of them): the thread, how to fetch
        one of its runs, and the steps' run (`AnswerRelay.complete`'s `thread_runs`). For a run's
        cancel (`POST /v1/threads/{t}/runs/{r}/cancel`), whose answer shows it `cancelling` without
        its usage — the client may have read its tool calls (`requires_action`), model output —:
        the run, read again until it ended (`until_ended`), charged on the cancel."""
        if where.collection != "threads" or where.object_id is None:
            return None
        fetch = functools.partial(self._thread_run, ex, where.object_id, headers)
        if method == "POST" and len(segments) == 5 and segments[2] == "runs" and segments[4] == "cancel":
            return ThreadRuns(where.object_id, until_ended(fetch, self.cancel_waits, self.sleep), run=segments[3])
        if method != "GET":
            return None
        if len(segments) in (3, 4) and segments[2] == "messages":
            return ThreadRuns(where.object_id, fetch)
        if len(segments) in (5, 6) and segments[2] == "runs" and segments[4] == "steps":
            return ThreadRuns(where.object_id, fetch, run=segments[3])
        return None

    def _cut_turns(
        self, ex: Exchange, identity: Identity, method: str, segments: Sequence[str], where: ObjectPath,
        headers: RawHeaders,
    ) -> CutTurns | None:
        """For a read of a conversation's items (`GET /v1/conversations/{c}/items`, or one of them),
        which show the whole answer of a turn cut in it, or of a stored response's input items (`GET
        /v1/responses/{r}/input_items`), which show those of the turns it continued: the
        conversation (the response), its reader and how to fetch a stored response
        (`AnswerRelay.complete`'s `cut_turns`)."""
        if method != "GET" or where.object_id is None:
            return None
        items = where.collection == "conversations" and len(segments) in (3, 4) and segments[2] == "items"
        inputs = where.collection == "responses" and len(segments) == 3 and segments[2] == "input_items"
        if not (items or inputs):
            return None
        return CutTurns(where.object_id, identity.external_id, functools.partial(self._stored_response, ex, headers))

    async def _stored_response(self, ex: Exchange, headers: RawHeaders, response_id: str) -> Any:
        """`GET /v1/responses/{response_id}` (`_fetch`), for its usage."""
        return await self._fetch(ex, ["responses", response_id], headers)

    def _eval_run(
        self, ex: Exchange, method: str, segments: Sequence[str], where: ObjectPath, headers: RawHeaders,
    ) -> tuple[str, str, Fetch] | None:
        """For a read of an eval run's output items (`GET /v1/evals/{e}/runs/{r}/output_items`, or one
        of them), or of the run itself (`GET /v1/evals/{e}/runs/{r}`: fetched only when its answer is
        too large to parse): the eval, the run, and how to fetch the run (`AnswerRelay.complete`'s
        `eval_run`)."""
        if method != "GET" or where.collection != "evals" or where.object_id is None or len(segments) not in (4, 5, 6) \
                or segments[2] != "runs" or not segments[3] or (len(segments) > 4 and segments[4] != "output_items"):
            return None
        path = ["evals", where.object_id, "runs", segments[3]]
        return where.object_id, segments[3], functools.partial(self._fetch, ex, path, headers)

    async def _thread_run(self, ex: Exchange, thread: str, headers: RawHeaders, run_id: str) -> Any:
        """`GET /v1/threads/{thread}/runs/{run_id}` (`_fetch`), for the run's usage."""
        return await self._fetch(ex, ["threads", thread, "runs", run_id], headers)

    async def _thread_messages(self, ex: Exchange, headers: RawHeaders, thread: str) -> Any:
        """`GET /v1/threads/{thread}/messages?limit=100&order=desc` (`_fetch`), for what a run's turn
        read (`RunCharges.shown_steps`): its newest MESSAGES_PAGE messages."""
        query = [("limit", str(MESSAGES_PAGE)), ("order", "desc")]
        return await self._fetch(ex, ["threads", thread, "messages"], headers, query)

    async def _fetch(
        self, ex: Exchange, segments: list[str], headers: RawHeaders, query: list[tuple[str, str]] | None = None,
    ) -> Any:
        """`GET` of `segments` (a `/v1` path's: an object of the caller's) upstream, with `query`, with
        the client's relayed headers (its `OpenAI-Beta`), at Sentinel's cost — no request of the
        caller's —, for the object's usage: its JSON, None when it could not be read (an error
        answer, a failure, not JSON)."""
        started = time.perf_counter()
        try:
            upstream = await self.upstream.forward("GET", segments, headers=forwardable_headers(headers), body=None,
                                                   query=query)
            raw = await upstream.read_served() if upstream.status == 200 else await upstream.read_error()
            status = upstream.status
        except UpstreamError as exc:
            count_failure(self.metrics, self.upstream.name, exc)
            return None
        finally:
            ex.upstream_seconds += time.perf_counter() - started
        try:
            return orjson.loads(raw) if status == 200 else None
        except orjson.JSONDecodeError:
            return None

    async def _check_body(
        self, identity: Identity, body: bytes, content_type: str, *, creates_batch: bool,
        uploads: frozenset[str] | None, segments: Sequence[str],
    ) -> tuple[bytes, bool, BatchEstimate | None, bytes | None, dict[str, Any], bool, list[tuple[str, bytes]]]:
        """Refuse a body naming another user's object. Returns (the body as it goes upstream, whether
        it is JSON — re-encoded from what was checked —, for the upload of a batch's input — whose
        every line was checked as a request of its own — what its lines reserve, or for a batch's
        creation what its input's do, — an upload to `POST /v1/files` — the file's content as it
        goes upstream: `Upload.stored_file`, and its fields: a JSON object's, an upload's as text —
        the first of each name, files aside —, for what a media call reserves: `media_call`; and
        whether it is the upload of an eval's data file whose every item was read for ids:
        `eval_data_references`; and an upload's file parts, name and content, read by `media_call`: an
        edit's images). An eval run may only read a data file checked so
        (`eval_data_files`). The end user the client named — a JSON
        body's `user` or `safety_identifier`, an upload's field of that name — is the caller's
        pseudonym instead, and every line of a batch's input tells the provider the caller's pseudonym
        as the metered endpoint it runs would (`sentinel.native.end_user`): an upload goes with those
        values written in its parts' place, the rest of it as it came (a batch input's lines written
        back from what was read: `read_batch_input`).

        The ids are read the way the provider will read the body: JSON (no Content-Type, or a JSON
        one) or a `multipart/form-data` upload, whose named parts are read. Any other type (a form,
        text) is refused: a form reader finds fields in any bytes, JSON included; so is an upload on
        a call that takes none (`uploads` None, else the fields it takes files on: see `upload_files`):
        only JSON is read for what it asks of the provider. A batch (`creates_batch`) may only run an
        input file checked so (its lines run only models `_batch_model` allows); every model the body
        itself has the provider run (`run_models` of `segments`, the call's path: an eval's, a
        grader's) must be one it allows too."""
        media = content_type.partition(";")[0].strip().lower()  # the boundary keeps its case
        heavy = large(body)  # read and walked in a worker thread (`sentinel.offload`)
        if media == "multipart/form-data":
            if uploads is None:  # read as JSON only: an upload's fields would escape the checks below
                raise _unsupported_type("This call takes a JSON body (Content-Type: application/json), not an upload")
            upload, upload_body, ids, estimate, stored, eval_data = await off_loop(functools.partial(
                self._read_upload, body, content_type, uploads, reference_keys(segments),
                self.end_users.of(identity.external_id), stores=list(segments) == ["files"],
            ), heavy)
            if upload.streams:
                raise _no_passthrough_stream()
            await self.ownership.require(ids, identity.external_id)
            models = await off_loop(functools.partial(upload.models, uploads), heavy)  # (JSON values read again)
            await self._require_models(self._unoffered_tuned(models), identity)
            fields: dict[str, Any] = {}
            once = read_once(segments)
            for index in upload.named(READ_FIELDS.__contains__) if once else ():
                name = upload.parts[index][0].partition("[")[0]
                if upload.parts[index][0] != name:  # `n[]`, `size[0]`: read as the field by a reader taking
                    # `image[]` as one of the images (the provider), skipped here: another call than Sentinel's
                    raise InvalidRequest(f"An upload to this endpoint gives its `{name}` plainly (not `{name}[]`): "
                                         "its charge is read from it", details={"param": name})
            for name, value, is_file in upload.parts:
                if is_file and once and name in READ_FIELDS and name not in uploads:
                    # skipped here, a provider reading it as the field bills another call than Sentinel's
                    raise InvalidRequest(f"An upload to this endpoint gives its `{name}` as a field, not a file: its "
                                         "charge is read from it", details={"param": name})
                if is_file:
                    continue
                if once and name in fields and name in READ_FIELDS:
                    raise InvalidRequest(f"An upload to this endpoint gives its `{name}` once: its charge is read from it",
                                         details={"param": name})
                fields.setdefault(name, value.decode("utf-8", "replace"))
            edit = tuple(segments) == EDITS  # (an upload's other files, audio up to 25 MB, are not kept along)
            uploaded = [(name, value) for name, value, is_file in upload.parts if is_file] if edit else []
            return upload_body, False, estimate, stored, fields, eval_data, uploaded
        if media and media != "application/json" and not media.endswith("+json"):
            raise _unsupported_type(
                "The request body must be JSON (Content-Type: application/json), or a multipart/form-data upload "
                "where the call takes a file"
            )
        parsed, ids, models = await off_loop(functools.partial(self._read_json, body, segments), heavy)
        await self.ownership.require(ids, identity.external_id)
        await self._require_models(models, identity)
        estimate = None
        if creates_batch:
            given = parsed.get("input_file_id") if isinstance(parsed, dict) else None
            estimate = await self._read_along(await self.ownership.require_batch_input(
                given if isinstance(given, str) else "", identity.external_id))
        for data_file in eval_data_files(segments, parsed):  # (each the caller's: `require` above)
            await self.ownership.require_eval_data(data_file, identity.external_id)
        # An end user the client named (an image generation's `user`) is the caller's pseudonym.
        parsed = with_named_end_user(parsed, self.end_users.of(identity.external_id))
        sent = await off_loop(functools.partial(orjson.dumps, parsed), heavy)
        return sent, True, estimate, None, parsed if isinstance(parsed, dict) else {}, False, []

    async def _read_along(self, estimate: BatchEstimate) -> BatchEstimate:
        """`estimate` with the context its lines have the provider read along added to its input: each
        line continuing a stored response or a conversation (`BatchEstimate.continues`) reads it
        again, as a metered request continuing it is charged it (`carried_input`), at its size now."""
        if not estimate.continues:
            return estimate
        held = await self.ownership.contexts(object_id for object_id, _ in estimate.continues)
        read = sum(held.get(object_id, 0) * lines for object_id, lines in estimate.continues)
        return dataclasses.replace(estimate, input_tokens=min(MAX_BATCH_TOKENS, estimate.input_tokens + read),
                                   continues=())

    def _read_upload(
        self, body: bytes, content_type: str, uploads: frozenset[str], keys: frozenset[str], end_user: str,
        *, stores: bool = False,
    ) -> tuple[Upload, bytes, list[str], BatchEstimate | None, bytes | None, bool]:
        """A pass-through upload read part by part: (the upload, the body as it goes upstream — naming
        `end_user` as the end user: see `_check_body` —, the ids it names under `keys` — a batch
        input's lines' too —, for a batch's input what its lines reserve, each estimated as the
        request it is — `Meter.batch_line` —, and — `stores`: a `POST /v1/files` —
        the content of the file it stores as it goes upstream, `Upload.stored_file`, and whether it is
        an eval's data file whose items were read for ids, `eval_data_references`). InvalidRequest
        (400) when it cannot be read as the provider would, names too many objects, or is a batch
        input `_batch_model` refuses or whose lines cannot be written back."""
        try:
            upload = Upload.read(body, content_type)
            ids = upload.references(files=uploads, keys=keys)
            values = dict.fromkeys(upload.named(names_end_user), end_user.encode())
            batch_file = upload.batch_file()
            estimate = None
            if batch_file is not None:
                read = read_batch_input(
                    upload.parts[batch_file][1], offered=self._batch_model,
                    rewrite=functools.partial(with_batch_end_user, end_user=end_user, field=self.upstream.end_user_field),
                    measure=self.meter.batch_line,
                )
                ids += read.ids
                values[batch_file] = read.content
                estimate = BatchEstimate(read.requests, read.input_tokens, read.output_tokens,
                                         tuple(read.continues.items()))
            eval_file = upload.eval_file() if stores else None
            if eval_file is not None:  # each item a run may make a model's input: read as inline items are
                ids += eval_data_references(upload.parts[eval_file][1])
            sent = upload.with_values(body, content_type, values)
            stored = upload.stored_file() if stores else None
        except (MalformedUpload, MalformedReference, TooManyReferences, InvalidBatchInput) as exc:
            param = exc.param if isinstance(exc, MalformedUpload | MalformedReference) else None
            raise InvalidRequest(str(exc), details={"param": param} if param else None) from None
        content = None if stored is None else values.get(stored, upload.parts[stored][1])
        return upload, sent, ids, estimate, content, eval_file is not None

    def _read_json(self, body: bytes, segments: Sequence[str]) -> tuple[Any, list[str], list[tuple[str, str]]]:
        """A pass-through JSON body parsed and checked (400s: see `_check_body`): (it, the ids it names,
        the fine-tuned models it names that must be the caller's: `_require_models`)."""
        # As every request body (compressed, or JSON orjson refuses: ids in it would go unchecked;
        # past MAX_JSON_DEPTH: orjson would not write it back past 254 levels).
        parsed = read_json(body)
        if isinstance(parsed, dict) and parsed.get("stream") not in (None, False):
            raise _no_passthrough_stream()
        if isinstance(parsed, dict) and parsed.get("stream_format") not in (None, "audio"):
            # Speech as events (`"sse"`): made and billed, then never relayed (`unoffered_stream`).
            raise _no_passthrough_stream("stream_format")
        if reads_account_data(parsed):
            raise InvalidRequest(
                "Eval data selected from the provider account by filter (stored responses, stored chat "
                "completions, logs) is not offered: it would read every user's; give the items as a file or inline",
                code="unsupported_data_source",
            )
        self._check_run_models(segments, parsed)
        if segments[0] == "responses" and isinstance(parsed, dict):  # input_tokens, compact: a Responses body
            try:
                check_named_ids(parsed)  # as the metered /v1/responses: a blank id is no object's
            except NativeValidationError as exc:
                raise InvalidRequest(exc.message, details={"param": exc.param}) from None
        return parsed, _references(parsed, reference_keys(segments)), self._unoffered_tuned(fine_tuned_models(parsed))

    def _unoffered_tuned(self, models: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Those of `models` (parameter, name) that name a fine-tuned model (`is_fine_tuned`) the
        catalogue does not offer under that very name (`_batch_model`): each must be the caller's."""
        return [(param, model) for param, model in models if is_fine_tuned(model) and not self._batch_model(model)]

    async def _require_models(self, models: list[tuple[str, str]], identity: Identity) -> None:
        """404 `model_not_found` (OpenAI's answer for a model the account lacks) unless each of the
        fine-tuned models a pass-through body names (`fine_tuned_models`: a job's base `model`, an
        assistant's, …; those of the catalogue aside — offered to every user by the operator —) is
        the caller's: one a read of the caller's job showed (`trained_models`). Another user's and one
        never shown through Sentinel (no one's) get the same answer, before anything is reserved or
        sent: a job trained on, or a run of, another user's model ran it."""
        if not models:
            return
        if len({model for _, model in models}) > MAX_REFERENCES:
            raise InvalidRequest(f"A request may name at most {MAX_REFERENCES} fine-tuned models")
        try:
            await self.ownership.require([model for _, model in models], identity.external_id)
        except NotFound:
            param, model = models[0]
            for named in models:  # (which one: read again, one by one, only to say so)
                if await self.ownership.owner_of(named[1]) != identity.external_id:
                    param, model = named
                    break
            raise NotFound(f"The model '{model[:200]}' does not exist or you do not have access to it",
                           code="model_not_found", details={"param": param}) from None

    def _batch_model(self, name: str) -> bool:
        """Whether a batch's input may run the model `name`. The file goes to the default upstream, its
        lines' models unchanged, so the provider runs the name the line gives: only a catalogue model that
        upstream serves under that very name (not an alias, not a model renamed upstream)."""
        try:
            targets = self.catalogue.resolve(name)
        except NotFound:
            return False
        target = targets[0]
        return (len(targets) == 1 and target.name == name == target.upstream_model and target.kind == "openai"
                and self.upstreams.get(target.provider) is self.upstream)

    def _check_run_models(self, segments: Sequence[str], body: Any) -> None:
        """InvalidRequest unless every model a pass-through body has the provider run (`run_models`: an
        eval run's sampling model, a model grader's — an eval's, a fine-tuning job's, one run alone)
        is one `_batch_model` allows: the body goes to the default upstream, which runs the name it
        gives."""
        for param, model in run_models(segments, body):
            if not isinstance(model, str) or not self._batch_model(model):
                shown = f"the model '{model[:200]}'" if isinstance(model, str) else "no model"
                raise InvalidRequest(
                    f"`{param}` names {shown}: a pass-through call runs only a model of this gateway's catalogue "
                    "(GET /v1/models) that its OpenAI provider serves under that name (not an alias)",
                    details={"param": param},
                )

    async def _conversation_grew(
        self, where: ObjectPath, last: str, reply: Reply | StreamReply, body: bytes, identity: Identity,
    ) -> None:
        """Items given to a conversation (at its creation, or added) are context every later response
        in it makes the provider read: counted as a token per `BYTES_PER_TOKEN` bytes of the call's
        JSON (`body`, as sent), since this call charges none of them, plus the estimate of the images
        and files among them and of the items it names by id (`conversation_unread`: a short image URL
        is 1,445 tokens, not 20; a referenced item, `SENTINEL_REFERENCE_INPUT_TOKENS`) — also
        when the answer is relayed as it arrives (over `MAX_BUFFERED`: the items added, listed back).
        A conversation's creation is counted from an answer read whole (its id is read from it; the
        answer, the conversation alone, is small), only while the caller owns the id it names: an
        answer naming another user's conversation (its owner kept, `Ownership.claim`) set that
        conversation's count to the caller's items."""
        if reply.status >= 300 or not (where.is_collection or last == "items"):
            return
        tokens = -(-len(body) // BYTES_PER_TOKEN) + await off_loop(
            functools.partial(conversation_unread, body, self.meter.referenced), large(body))
        try:
            if where.object_id is not None:
                await self.ownership.grow_context(where.object_id, tokens)
                return
            if not isinstance(reply, Reply):
                log.warning("a conversation created with an answer too large to read: its items were not counted")
                return
            created = orjson.loads(reply.body)
            if isinstance(created, dict) and isinstance(created.get("id"), str) \
                    and await self.ownership.owner_of(created["id"]) == identity.external_id:
                await self.ownership.remember_context(created["id"], tokens, where.ttl)
        except (orjson.JSONDecodeError, StoreUnavailable):
            self.ownership.outage.warning("a conversation's items were not counted as its context")

    async def _claim_along(self, where: ObjectPath, reply: Reply, identity: Identity) -> None:
        """Make the objects an action's answer created besides itself (`ObjectPath.created_along`: the
        thread of `POST /v1/threads/runs`) the caller's."""
        try:
            created = where.created_along(orjson.loads(reply.body)) if reply.status < 300 else []
        except orjson.JSONDecodeError:
            return
        await claim_created(self.ownership, created, identity)

    async def _claim_trained(
        self, where: ObjectPath, segments: Sequence[str], reply: Reply, identity: Identity,
    ) -> None:
        """Make the fine-tuned models a read of the caller's job shows it made (`trained_models`: its
        `fine_tuned_model`, its checkpoints') the caller's: a body naming one (a job trained on it) and
        its permissions' path are theirs only."""
        try:
            made = trained_models(where, segments, orjson.loads(reply.body)) if reply.status < 300 else []
        except orjson.JSONDecodeError:
            return
        if made:
            await claim_created(self.ownership, made, identity)

    async def _vouch_batch_input(self, reply: Reply, identity: Identity, estimate: BatchEstimate) -> None:
        """Mark the file an upload of a checked batch input created as such (its owner's only), with
        what its lines reserve (`estimate`)."""
        created = _created_id(reply)
        if created is not None:
            try:
                await self.ownership.vouch_batch_input(created, identity.external_id, estimate)
            except StoreUnavailable:  # the file stays usable for everything but a batch
                self.ownership.outage.warning("the store is unavailable: a checked batch input was not marked as such")

    async def _vouch_eval_data(self, reply: Reply, identity: Identity) -> None:
        """Mark the file an upload of an eval's data file created as such (its owner's only): its
        items were read for the objects they name (`eval_data_references`)."""
        created = _created_id(reply)
        if created is not None:
            try:
                await self.ownership.vouch_eval_data(created, identity.external_id)
            except StoreUnavailable:  # the file stays usable for everything but an eval run
                self.ownership.outage.warning("the store is unavailable: a checked eval data file was not marked as such")

    async def _remember_file(self, reply: Reply, identity: Identity, facts: FileFacts) -> None:
        """Keep what the estimate needs of the file an upload created (`facts`, `media.upload_facts`
        of its content as sent: a PDF's pages, an image's size, a text's tokens) beside its owner: a
        request naming it by id is estimated by it, not as a file Sentinel cannot read (a 100-page
        PDF: 2,550,100 tokens under gpt-4o-mini's image rule)."""
        created = _created_id(reply)
        if created is None:
            return
        try:
            await self.ownership.remember_file(created, identity.external_id, facts)
        except StoreUnavailable:  # the file is estimated as one Sentinel cannot read
            self.ownership.outage.warning("the store is unavailable: what an uploaded file holds was not kept")

    async def _remember_video(self, reply: Reply, identity: Identity, media: MediaCall) -> None:
        """Keep the (model, size, seconds) of the video a video call made (`media_calls.video_made`)
        beside its owner: a remix or an edit of it is reserved that, not the dearest."""
        try:
            created = orjson.loads(reply.body) if reply.status < 300 else None
        except orjson.JSONDecodeError:
            return
        made = video_made(media, created)
        if made is None or not (isinstance(created, dict) and isinstance(created.get("id"), str)):
            return
        try:
            await self.ownership.remember_video(created["id"], identity.external_id, *made)
        except StoreUnavailable:  # a remix of it is reserved as the dearest
            self.ownership.outage.warning("the store is unavailable: what a video was made of was not kept")

    # --- plumbing ----------------------------------------------------------------------------------
    async def _forward(
        self, ex: Exchange, to: OpenAICompatUpstream, method: str, segments: Sequence[str], body: bytes | None,
        headers: RawHeaders, query: Query | None, admission: Admission, *, as_json: bool = True, stream: bool = False,
    ) -> UpstreamResponse:
        """Send the call upstream, as a CLIENT span (the caller gives the reservation back when this raises).
        A body Sentinel read as JSON goes as `application/json`, whatever type the client named."""
        ex.provider = to.name
        started = time.perf_counter()
        # `chat gpt-4o-mini`, or a pass-through call's allowed pattern (`/v1/files/*`): never the client's
        # path, whose object ids would make every span name its own and a long URL every span's size.
        operation = OPERATIONS.get(admission.endpoint, admission.endpoint)
        name = f"{operation} {admission.model}" if admission.model else operation
        attributes = {PROVIDER: to.name, SYSTEM: to.name}
        if admission.model:
            attributes[REQUEST_MODEL] = admission.model
        try:
            with ex.spans.span(name, attributes, client=True) as span, stalled_if(stream):
                upstream = await to.forward(
                    method, segments, headers=forwardable_headers(
                        headers, as_json=as_json and body is not None,
                        download=method == "GET" and segments[-1] == "content",
                    ),
                    body=body, query=query,
                )
                span.set_attribute("http.response.status_code", upstream.status)
        except UpstreamError:  # (counted by the caller, with an error it answered: `count_failure`)
            ex.upstream_seconds += time.perf_counter() - started
            raise
        ex.upstream_seconds += time.perf_counter() - started
        ex.upstream_status = upstream.status
        return upstream


# Metered endpoints whose answers are stored upstream, and the collection that holds them.
_COLLECTION = {"responses": "responses", "chat": "chat/completions"}


def _no_passthrough_stream(param: str = "stream") -> InvalidRequest:
    """A pass-through answer streamed (a run, a transcription, partial images, speech as events) carries
    its usage in events Sentinel does not read for it: offered on the metered endpoints only. `param`:
    what asked for it (`stream`, a speech call's `stream_format`)."""
    return InvalidRequest(
        f"Streaming is not offered on this endpoint through Sentinel (its usage would go unread): leave out `{param}`",
        code="stream_not_supported", details={"param": param},
    )


def _media_query() -> InvalidRequest:
    """A media call (`media_call`) given a query: charged by what its body names, a query sent on would
    be read upstream unchecked, as on the metered endpoints (a LiteLLM proxy's `?model=`)."""
    return InvalidRequest(
        "This call takes no query parameters (they go in the body): its charge is read from the "
        "body, and the provider would read what Sentinel does not check", code="unsupported_query",
    )


def _unsupported_type(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="unsupported_content_type")


BYTES_PER_TOKEN = 4  # items added to a conversation, as context: a token per 4 bytes of their JSON
_PATHS = {"chat": ("chat", "completions"), "completions": ("completions",), "embeddings": ("embeddings",),
          "responses": ("responses",)}


@dataclass
class Relayed:
    """One metered request on its way to a target: as the client sent it, and (once needed) translated."""

    endpoint: str
    segments: Sequence[str]
    payload: dict[str, Any]  # what is sent (re-encoded: never the client's bytes)
    headers: RawHeaders
    query: Query | None  # sent on as it came (`/v1/responses?beta=true`: the openai SDK's beta)
    stream: bool
    strip_usage: bool
    owner: Identity | None
    # The conversation a response is added to (its context grows), with the count it held when the
    # request was admitted (`remember_context`).
    extends: Sequence[tuple[str, int]] = ()
    # The stored response it continues (`previous_response_id`): the cut turns its input items show
    # are that response's, and its own when charged nothing yet (`Ownership.inherit_cut_turns`).
    previous: str | None = None
    speaker: Identity | None = None  # who owns the audio answers of a chat answer (stored or not)
    translated: ModelChatRequest | None = None
    heavy: bool = False  # its body was large (`sentinel.offload`): translated and encoded in a worker thread
    end_user: str = ""  # what the provider is told the end user is: the caller's pseudonym (`EndUsers`)


def conversation_unread(body: bytes, referenced: int) -> int:
    """What the items a call's JSON `body` gives a conversation hold beyond their bytes: the estimate
    of their images and files (`sentinel.quota.media`, by gpt-4o's image rule: the model of a later
    turn is not known) — each image's and PDF's tokens are what its part's bytes never tell (an image
    by its URL or file id) —, and `referenced` tokens for each item given by id (`item_references`:
    the stored item's text, which the provider copies into the conversation; its ~40 bytes of
    reference were counted as 10 tokens, whatever the item held)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(parsed, dict):
        return 0
    return item_text(parsed)[1] + item_references(parsed.get("items")) * referenced


def upstream_payload(catalogue: ModelCatalogue, payload: dict[str, Any], target: ModelTarget) -> dict[str, Any]:
    """`payload` as `target` is sent it: its `model`, and each tool's (`tool_models`, checked by
    `ModelCatalogue.with_tools`), under the name `target`'s provider knows it by (the catalogue's
    `upstream_name`). The payload itself is never changed: a failover sends it again elsewhere."""
    sent = payload if target.upstream_model == payload["model"] else {**payload, "model": target.upstream_model}
    tools = payload.get("tools")
    if not isinstance(tools, list) or not any(isinstance(tool, dict) and "model" in tool for tool in tools):
        return sent
    renamed = []
    for tool in tools:
        model = tool.get("model") if isinstance(tool, dict) else None
        named = catalogue.on_provider(model, target.provider) if isinstance(model, str) else None
        renamed.append(tool if named is None or named.upstream_model == model else
                       {**tool, "model": named.upstream_model})
    return {**sent, "tools": renamed}


def target_headers(target: ModelTarget) -> list[tuple[str, str]]:
    """Where a request was served: `X-Sentinel-Provider` and `X-Sentinel-Model` (the upstream's model name)."""
    return [("x-sentinel-provider", target.provider), ("x-sentinel-model", target.upstream_model)]


def _stores_objects(endpoint: str, payload: dict[str, Any]) -> bool:
    """Whether the answer is an object stored upstream: a response (unless `store` is false) or a
    chat completion with `store: true`."""
    if endpoint == "responses":
        return payload.get("store") is not False
    return endpoint == "chat" and payload.get("store") is True


def _foreign(targets: Sequence[ModelTarget], client: str) -> bool:
    """Whether any of `targets` is of another wire format than the `client`'s (the request is read
    into the unified types to be translated: `TranslatedChat.carriers`)."""
    return any(target.kind != client for target in targets)


def _references(body: Any, keys: frozenset[str] = REFERENCE_KEYS) -> list[str]:
    try:
        return referenced_ids(body, keys=keys)
    except TooManyReferences as exc:
        raise InvalidRequest(str(exc)) from None
    except MalformedReference as exc:
        raise InvalidRequest(str(exc), details={"param": exc.param}) from None


def _created_id(reply: Reply) -> str | None:
    """The `id` of the object a successful creation's JSON answer shows, else None."""
    try:
        created = orjson.loads(reply.body) if reply.status < 300 else None
    except orjson.JSONDecodeError:
        return None
    return created["id"] if isinstance(created, dict) and isinstance(created.get("id"), str) else None
