"""Relaying an OpenAI-compatible upstream's answer to the client and settling its usage.

A complete answer is read whole when it is at most MAX_BUFFERED bytes (usage read from the parsed
body), else relayed as it arrives with only its tail kept to read usage from; an SSE stream is relayed
event by event (`StreamInspector`), its final `[DONE]` held back until the usage record is stored.
An error answer goes through `refuse` (the one home of that policy, used by every surface): it is
raised as the Sentinel error for it (its status, type and message relayed), after settling a request
the provider refused; when nothing was served the caller gives the reservation back. Objects the
answer creates upstream become the caller's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from sentinel.domain.identity import Identity
from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.usage import Usage
from sentinel.errors import StoreUnavailable, UpstreamError, UpstreamStatusError
from sentinel.governance.ownership import Ownership
from sentinel.observability.metrics import Metrics
from sentinel.providers.errors import ModelRetired, UnreadableAnswer, retired, upstream_error
from sentinel.providers.http import UpstreamResponse
from sentinel.providers.openai import relayable_headers
from sentinel.quota.media_calls import MediaCall, media_charge, unread_output
from sentinel.quota.meter import Admission, Meter, ModelUsage, ObjectCharge, reserved_tool
from sentinel.quota.tokens import TokenCounter
from sentinel.quota.usage import (
    StreamInspector,
    TailInspector,
    output_read,
    text_from_body,
    tool_usage,
    usage_from_body,
)
from sentinel.services.event_streams import relay_events
from sentinel.services.exchange import Ending, Exchange, MeteredStream, Reply, StreamReply
from sentinel.services.objects import (
    AUDIO_TTL,
    Items,
    ItemScanner,
    ObjectPath,
    answer_items,
    audio_answers,
    audio_ttl,
    created_ids,
    leading_audio_ids,
    leading_id,
)
from sentinel.services.run_usage import (
    Fetch,
    FetchMessages,
    PriceOf,
    RunCharges,
    RunIdScanner,
    ThreadRuns,
    named_runs,
)

log = logging.getLogger("sentinel.answers")

# A stored response's id as the provider writes it (`resp_abc123`): it goes into the path of a fetch.
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
# Answers up to this size are read whole (usage read from the parsed body); larger ones, and
# answers of unknown length, are relayed as they arrive (usage read from their tail).
MAX_BUFFERED = 1024 * 1024


@dataclass(frozen=True)
class Charging:
    """Whether the `usage` an answer shows is the call's to pay.

    An object's usage is charged once: when it is made through Sentinel, or by the first read that
    shows it (a batch's or a run's appears only when it is done); Sentinel marks it charged, in the
    store, for as long as it keeps the object's owner. A read claims the charge first
    (`Ownership.claim_charge`), records it under the object's key (`ObjectCharge`) and then marks
    it charged: a read after one that died in between records it again, as one ledger row. `work`: the call asked the provider for work
    (a POST that is no `cancel`) — unless its answer is the object at the call's own path (`at`:
    the path's last segment; an update of its metadata); `counted`: False for an answer whose usage
    is part of another object's (a run's steps). `holds`: the call reserved for the object it makes
    (a batch's lines: `Meter.admit_batch`), which holds that reservation once made (`Meter.hold`)
    until the first read showing its usage — of it, or of a list showing it — settles it to that
    usage (`Meter.settle`'s `settles`). `context`: the call reads a stored response (its own path),
    whose usage a read charges — its stream was cut before the provider's count — is the context
    it holds (`remember_read_context`). `media`: a media call whose answer may show no usage
    (speech, dall-e images, a transcript as text, a video, a search rewriting its query): without one it is charged by its rule
    (`media_calls.media_charge`)."""

    work: bool = True
    at: str | None = None
    counted: bool = True
    holds: bool = False
    context: bool = False
    media: MediaCall | None = None


WORK = Charging()  # a metered call: its answer's usage is its own

FetchResponse = Callable[[str], Awaitable[Any]]  # a stored response by id, at Sentinel's cost: its JSON, None if unread


@dataclass(frozen=True)
class CutTurns:
    """A read of a conversation's items (`holder`: the conversation; listed, or one read by its id),
    or of a later stored response's input items (`holder`: that response, `GET
    /v1/responses/{id}/input_items`), which show the whole answer of each turn in it (or its
    `previous_response_id` chain) whose stream was cut before the provider's count — charged only
    what was seen, its usage left to the first read of the stored response. Those listed under
    `holder` (`Ownership.cut_turns`, `Ownership.inherit_cut_turns`) of the reader's (`owner`) no read
    charged yet are fetched (`fetch`) and charged by this read as that read of the response would
    (`AnswerRelay.cut_turn_charges`), once each."""

    holder: str
    owner: str
    fetch: FetchResponse


class AnswerRelay:
    """Relays upstream answers and settles them (see the module docstring)."""

    def __init__(
        self, meter: Meter, ownership: Ownership, metrics: Metrics, prices: PriceOf = lambda model: None,
        counter: TokenCounter | None = None,
    ) -> None:
        self.meter = meter
        self.ownership = ownership
        self.metrics = metrics
        # An eval run's usage per model, runs messages name, Assistants runs' `requires_action` steps.
        self.runs = RunCharges(ownership, prices, counter)

    async def complete(
        self, upstream: UpstreamResponse, endpoint: str, admission: Admission, *, owner: Identity | None,
        ttl: float | None, creating: bool, ex: Exchange | None = None, charging: Charging = WORK,
        extends: Sequence[tuple[str, int]] = (), speaker: Identity | None = None,
        thread_runs: ThreadRuns | None = None, items: Items | None = None,
        eval_run: tuple[str, str, Fetch] | None = None, within: str | None = None, cut_turns: CutTurns | None = None,
        previous: str | None = None, thread_messages: FetchMessages | None = None,
    ) -> Reply | StreamReply:
        """Relay a complete (non-SSE) answer: read whole when it is at most MAX_BUFFERED bytes, else
        relayed as it arrives after the part already read; its `usage` is charged as `charging`
        says (see `Charging`), and so are the eval runs it shows done, per model, and — a read of a
        thread's messages, or of a run's steps: `thread_runs` — the runs its messages name, the run
        of the steps, and — a read of an eval run's output items, or of the run when too large to
        parse: `eval_run`, (its eval, the run, how to fetch it) — that run (`RunCharges`), each
        charge of the model its object names (`RunCharges.charge`) and claimed only while
        `within`, the object the call's path names, is kept (`RunCharges.claim`); a read of a
        conversation's items (`cut_turns`) charges the turns cut in it that no read charged yet
        (`cut_turn_charges`) before it is relayed; an Assistants run it shows in `requires_action`
        is charged its step's input with its thread's messages fetched by `thread_messages`. The audio answers of a chat answer become `speaker`'s (stored or not:
        a later request names them in `messages[].audio`); so do the Responses API items it shows
        (`items`: a response's output, a conversation's items), along with the objects it created, in
        one store round trip (`Ownership.claim_all`). A 304 (a conditional download's "not
        modified") is relayed without a body and settled as one request."""
        if upstream.status == 304:
            return await self._not_modified(upstream, admission, ex)
        if upstream.status >= 300:
            return await self.refused(upstream, admission)
        started = time.perf_counter()
        chunks: list[bytes] = []
        size = 0
        with upstream.reading_served():
            async for chunk in upstream.iter_chunks():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BUFFERED:
                    return self._large(upstream, endpoint, admission, b"".join(chunks), owner, ttl, creating, ex,
                                       charging, extends, speaker, items, thread_runs, eval_run, within, cut_turns,
                                       previous, thread_messages)
        upstream.release()
        raw = b"".join(chunks)
        self.metrics.observe(
            self.metrics.child(self.metrics.upstream_duration, upstream.provider, endpoint), time.perf_counter() - started
        )
        parsed = _json(raw, upstream)
        usage = final_usage(endpoint, parsed)
        answer_id = parsed.get("id") if owner is not None and isinstance(parsed, dict) else None
        if charging.holds and 200 <= upstream.status < 300 and isinstance(answer_id, str):
            await self.meter.hold(admission, answer_id, ttl)
        pays, settles, charges = await self._pays(charging, answer_id, usage, ttl, parsed, within)
        shown = [(settles, usage)] if settles is not None and usage is not None else []
        if charges:  # (a run's usage beyond what its steps were charged: `RunCharges.beyond_shown`)
            usage = _summed(charges)
        if owner is not None and not pays and charging.counted:  # a list of objects (a thread's runs)
            listed = await self._listed_usage(endpoint, parsed, ttl, within)
            if listed is not None:
                (usage, shown, charges), pays = listed, True
        claimed: list[str] = []  # (runs charged apart from `charges`: those their records are part of)
        if owner is not None and not pays and thread_runs is not None:  # (a run's steps count no usage)
            charges, claimed = await self.runs.unread_runs(named_runs(parsed), thread_runs, ttl, thread_messages)
            if charges:
                usage, pays = _summed(charges), True
        turned: list[str] = []  # (a conversation's cut turns done with: `cut_turn_charges`)
        if owner is not None and not pays and cut_turns is not None:
            charges, turned = await self.cut_turn_charges(cut_turns)
            if charges:
                usage, pays = _summed(charges), True
        # (a call's own usage aside: an answer to work showing no usage may show a step too)
        if owner is not None and charging.counted and (not pays or charges or usage is None):
            steps = await self.runs.shown_steps(parsed, ttl, within, thread_messages)
            if steps:
                charges = [*charges, *steps]
                usage, pays = _summed(charges), True
        models: list[ModelUsage] = self._tool_parts(endpoint, admission, tool_usage(parsed), unread=usage is None)
        if owner is not None and charging.counted:
            eval_models, runs = await self.runs.eval_models(parsed, ttl, within)
            models += eval_models
            claimed += runs
        if owner is not None and charging.counted and eval_run is not None and not _shown_itself(parsed, eval_run[1]):
            shown_models, runs = await self.runs.eval_run_shown(*eval_run, ttl)
            models += shown_models
            claimed += runs
        unmetered = pays and usage is None  # then what the model read (hosted tools' results) counts too
        # A served generation whose answer cannot be read (not JSON: HTML, a body compressed despite
        # `identity`, cut JSON) is relayed as it is, and charged the output it reserved, as the native
        # API charges one (its text, if any, cannot be counted: it was charged none).
        unreadable = unmetered and parsed is None and 200 <= upstream.status < 300 and endpoint in _GENERATIONS
        output_text = "" if parsed is None or not pays else text_from_body(endpoint, parsed)
        read_input = output_read(endpoint, parsed) if unmetered else ("", 0)
        output_estimate = admission.max_output if unreadable else None
        # (a compaction's answer is a Responses-shaped object: its input is the estimate it reserved, its
        # output the text it shows, as any answer's)
        if unmetered and charging.media is not None and charging.media.kind != "compact":
            read, output_estimate, output_text = media_charge(charging.media, parsed, raw)
            read_input = ("", read)
        await self.meter.settle(
            admission,
            usage=usage if pays else Usage(0, 0),
            output_text=output_text,
            status=upstream.status,
            provider=upstream.provider,
            read_input=read_input,
            output_estimate=output_estimate,
            settles=shown,
            models=models,
            charges=charges,
        )
        await self._confirm([*(c.object_id for c in charges), *claimed], ttl)
        if charging.context:
            await remember_read_context(self.ownership, charges, charging.at)
        if cut_turns is not None and turned:
            await self._turns_charged(cut_turns, charges, turned)
        claims: list[tuple[str, float | None]] = created_ids(parsed, creating=creating, ttl=ttl) if owner else []
        if items is not None and items.parent is not None:  # a conversation's items: its children
            await claim_created(self.ownership, answer_items(parsed, items), owner or admission.identity,
                                parent=items.parent)
        elif items is not None:
            claims += answer_items(parsed, items)
        refused = await claim_created(self.ownership, claims, owner or admission.identity) if claims else set()
        if endpoint == "responses":  # stored or not (`store: false`), the turn joined its conversation
            stored = answer_id if isinstance(answer_id, str) and answer_id not in refused else None
            await remember_context(self.ownership, admission, stored, extends, previous=previous)
        if speaker is not None and (audio := audio_answers(parsed, time.time())):
            await claim_created(self.ownership, audio, speaker)
        report(ex, admission, parsed.get("model") if isinstance(parsed, dict) else None)
        return Reply(upstream.status, raw, relayable_headers(upstream.headers))

    async def _pays(
        self, charging: Charging, answer_id: Any, usage: Usage | None, ttl: float | None, parsed: Any = None,
        within: str | None = None,
    ) -> tuple[bool, str | None, list[ObjectCharge]]:
        """Whether this call pays the usage its answer shows (see `Charging`), the object whose usage
        it is the first to show (its reservation, if it holds one, is settled to it), and — a read
        showing an owned object's usage no read charged yet — that charge (`ObjectCharge`: of the
        model the answer, `parsed`, names; claimed while `within` is kept: `RunCharges.claim`); a
        metered call's answer about an owned object marks that object's usage charged."""
        if not charging.counted:
            return False, None, []
        work = charging.work and (charging.at is None or answer_id != charging.at)
        made_here = work and charging.at is None  # a metered call's own object: charged now, usage or estimate
        if not isinstance(answer_id, str):
            return work, None, []
        if work:  # its own record holds the usage: marked charged first, as any call's own object
            if usage is not None or made_here:  # (a batch made shows its usage when done)
                first = await self._charged(answer_id, ttl, within)
                return True, answer_id if first and usage is not None else None, []
            return True, None, []
        if usage is None:
            return False, None, []
        claim = await self.runs.claim(answer_id, ttl, within)
        if claim == "charged":
            return False, None, []
        usage = await self.runs.beyond_shown(answer_id, usage, parsed)
        return True, answer_id if claim == "first" else None, [self.runs.charge(answer_id, usage, claim, parsed)]

    async def _listed_usage(
        self, endpoint: str, parsed: Any, ttl: float | None, within: str | None
    ) -> tuple[Usage, list[tuple[str, Usage]], list[ObjectCharge]] | None:
        """The usage of the objects a list answer shows (`data`) whose usage no read charged yet,
        summed, those it is the first to show each with its own (a batch's settles the reservation
        it holds, as a read of it alone would: `Meter.settle`'s `settles`), and their charges; None
        when there is none: a list read is one more way to read each."""
        items = parsed.get("data") if isinstance(parsed, dict) else None
        first: list[tuple[str, Usage]] = []
        charges: list[ObjectCharge] = []
        for item in items if isinstance(items, list) else ():
            shown = final_usage(endpoint, item) if isinstance(item, dict) else None
            if shown is None or not isinstance(item.get("id"), str):
                continue
            claim = await self.runs.claim(item["id"], ttl, within)
            if claim == "charged":
                continue
            shown = await self.runs.beyond_shown(item["id"], shown, item)
            if claim == "first":
                first.append((item["id"], shown))
            charges.append(self.runs.charge(item["id"], shown, claim, item))
        return (_summed(charges), first, charges) if charges else None

    async def _charged(self, object_id: str, ttl: float | None, within: str | None = None) -> bool:
        """Whether this is the first charge of `object_id`'s usage (see `Charging`; a run made in the
        thread `within`, its child: `Ownership.charge_once`); a store that cannot be reached counts it
        as the first (a usage charged twice beats one never charged)."""
        try:
            return await self.ownership.charge_once(object_id, ttl, within)
        except StoreUnavailable:
            return True

    def _tool_parts(
        self, endpoint: str, admission: Admission, used: Usage | None, *, unread: bool = False,
    ) -> list[ModelUsage]:
        """A Responses answer's hosted tools' own model's usage (`tool_usage`: the `image_generation`
        tool's image tokens), a record of that model (`Admission.tool_model`) beside the answer's own:
        it is not in the answer's `usage`, and was charged nothing — images drawn free of any limit.
        `unread`: the answer's own usage was not shown either (a stream cut before its end, an answer
        that could not be read): without a `tool_usage`, the tool is charged the image output it
        reserved (`Admission.tool_output`) — charged none, a client cutting each stream before its
        last event had every image free."""
        if endpoint != "responses" or admission.tool_model is None:
            return []
        if used is None:
            return reserved_tool(admission) if unread else []
        return [ModelUsage(admission.tool_model, used, admission.tool_prices)]

    async def _list_cut_turn(self, extends: Sequence[tuple[str, int]], response_id: str, admission: Admission) -> bool:
        """List the stored response `response_id`, whose stream was cut before the provider's count, among
        the cut turns of each conversation it joined (`Ownership.list_cut_turn`), before its settlement:
        False when one has no room for it (or the store cannot say), the turn then charged the output it
        reserved — the provider adds its whole answer to the conversation, and no read would charge it."""
        ttl = ObjectPath("responses").ttl
        try:
            listed = [await self.ownership.list_cut_turn(conversation, response_id, admission.identity.external_id, ttl)
                      for conversation, _ in extends]
        except StoreUnavailable:
            self.ownership.outage.warning("the store is unavailable: a cut turn was charged as reserved")
            return False
        return all(listed)

    async def cut_turn_charges(self, turns: CutTurns) -> tuple[list[ObjectCharge], list[str]]:
        """The charges (`ObjectCharge`) of the cut turns listed under `turns.holder` that its reader made
        and no read charged yet (`Ownership.cut_turns`), each stored response fetched and claimed as
        the first read of it claims it (`RunCharges.claim`, within the response itself: its usage
        recorded under its `charge_id`, once, whichever read shows it first), and the turns done
        with: charged now or before, or no longer the reader's (deleted, expired) — dropped from the
        holder's list once this read's record is stored (`_turns_charged`). One whose fetch
        fails, or that shows no usage yet (still at work), stays listed: a later read charges it; one
        that ended showing none (failed, cancelled) is done with — kept, every read of the items
        fetched it again, up to MAX_CUT_TURNS upstream reads each at Sentinel's cost, for good. A
        store that cannot say which were charged fetches none (each read would charge them again)."""
        ttl = ObjectPath("responses").ttl
        try:
            listed = await self.ownership.cut_turns(turns.holder, turns.owner)
            unread = await self.ownership.uncharged(listed) if listed else []
            owners = await asyncio.gather(*map(self.ownership.owner_of, unread))
        except StoreUnavailable:
            self.ownership.outage.warning("the store is unavailable: cut turns shown by a conversation's or "
                                          "response's items read were not charged")
            return [], []
        done = [response_id for response_id in listed if response_id not in unread]
        mine: list[str] = []
        for response_id, found in zip(unread, owners, strict=True):
            (mine if found == turns.owner and _RESPONSE_ID.fullmatch(response_id) else done).append(response_id)
        charges: list[ObjectCharge] = []
        for response_id, response in zip(mine, await asyncio.gather(*map(turns.fetch, mine)), strict=True):
            if not (isinstance(response, dict) and response.get("id") == response_id
                    and response.get("object") == "response"):
                continue
            usage = final_usage("responses", response)
            if usage is None:
                if isinstance(status := response.get("status"), str) and status not in _AT_WORK:
                    done.append(response_id)  # ended showing none (failed, cancelled): none will come
                continue
            claim = await self.runs.claim(response_id, ttl, response_id)
            done.append(response_id)
            if claim != "charged":
                charges.append(self.runs.charge(response_id, usage, claim, response))
        return charges, done

    async def _turns_charged(self, turns: CutTurns, charges: Sequence[ObjectCharge], done: list[str]) -> None:
        """After the record of a read that charged cut turns (`cut_turn_charges`) is stored: each
        charged turn's usage kept as its context, its conversation's count corrected, as the read of
        the response itself does (`remember_read_context`), and the turns `done` dropped from the
        conversation's list. A store outage costs nothing but this (a later read finds them charged)."""
        for charge in charges:
            await remember_read_context(self.ownership, [charge], charge.object_id)
        try:
            await self.ownership.drop_cut_turns(turns.holder, done)
        except StoreUnavailable:
            self.ownership.outage.warning("the store is unavailable: charged cut turns stay listed")

    async def _confirm(self, object_ids: list[str], ttl: float | None) -> None:
        """Mark charged the objects whose charge this read recorded (`Ownership.confirm_charged`). A
        store that cannot be reached leaves them claimed: a later read records them again, adding
        no ledger row (`ObjectCharge`) and counting nothing against the plan."""
        if not object_ids:
            return
        try:
            await self.ownership.confirm_charged(object_ids, ttl)
        except StoreUnavailable:
            self.ownership.outage.warning("the store is unavailable: objects whose usage was recorded stay claimed")

    async def _not_modified(self, upstream: UpstreamResponse, admission: Admission, ex: Exchange | None) -> Reply:
        """Relay a 304 (the file's content the client holds is still current: `If-None-Match`,
        `If-Modified-Since`, relayed on a download) with its caching headers (`etag`,
        `last-modified`, `cache-control`) and no body, recorded as one request and no tokens: the
        provider answered it, as a 2xx without usage."""
        with upstream.reading_served():
            await upstream.read()  # (a 304 has no body: this only frees the connection)
        upstream.release()
        await self.meter.settle(admission, usage=Usage(0, 0), output_text="", status=304, provider=upstream.provider)
        report(ex, admission, None)
        return Reply(304, b"", relayable_headers(upstream.headers))

    async def unoffered_stream(self, upstream: UpstreamResponse, admission: Admission) -> NoReturn:
        """A call that asked for work (pass-through) answered with an event stream all the same — a
        provider streaming unasked, or asked in a way Sentinel did not read — is never relayed: its
        usage would go unread (a complete answer's is read from its JSON). The provider served and
        billed it: it is read to its end (each event as it comes, nothing kept but what the events
        say, `StreamInspector`; for at most `SENTINEL_STREAM_MAX_SECONDS`) and recorded with the usage
        its events showed (`StreamInspector.usage`), as an answer Sentinel could not read
        (`UnreadableAnswer`: 502 `provider_bad_response`, see `Meter.fail`)."""
        inspector = StreamInspector(admission.endpoint, provider=upstream.provider, secret=upstream.secret)
        try:
            with upstream.reading_served():
                async for chunk in upstream.iter_chunks():
                    inspector.feed(chunk)
            inspector.flush()
        except UnreadableAnswer:
            raise  # (broken off: recorded with what was read, as below)
        except UpstreamError:  # an event over MAX_EVENT_BYTES, a stream past its time limit: served and billed
            raise UnreadableAnswer(
                f"Provider {upstream.provider} answered with an event stream Sentinel could not read",
                usage=inspector.usage, provider=upstream.provider,
            ) from None
        upstream.release()
        raise UnreadableAnswer(
            f"Provider {upstream.provider} answered with an event stream, which this call does not offer "
            "(leave out `stream`)", usage=inspector.usage, provider=upstream.provider,
        )

    async def refused(self, upstream: UpstreamResponse, admission: Admission) -> NoReturn:
        """An upstream error answer: see `refuse`."""
        await refuse(self.meter, upstream, admission)

    def _large(
        self, upstream: UpstreamResponse, endpoint: str, admission: Admission, head: bytes, owner: Identity | None,
        ttl: float | None, creating: bool, ex: Exchange | None = None, charging: Charging = WORK,
        extends: Sequence[tuple[str, int]] = (), speaker: Identity | None = None, items: Items | None = None,
        thread_runs: ThreadRuns | None = None, eval_run: tuple[str, str, Fetch] | None = None,
        within: str | None = None, cut_turns: CutTurns | None = None, previous: str | None = None,
        thread_messages: FetchMessages | None = None,
    ) -> StreamReply:
        """Relay a large answer chunk by chunk after its `head`, keeping only the tail to read usage
        from; the last chunk waits for the usage record. The Responses API items it shows (`items`: an
        answer with an image's base64 is commonly over MAX_BUFFERED) are read as they pass
        (`ItemScanner`) and become the caller's with the object it created, as a small answer's; so
        are the runs a thread's messages name (`thread_runs`: long messages, or a run's steps), charged as a small
        answer's are, and so is the eval run it is or whose output items it shows (`eval_run`: fetched,
        since its `per_model_usage` is not read from the bytes passing)."""
        tail = TailInspector()
        tail.feed(head)
        size = len(head)  # (an answer without usage may be charged by its size: `media_calls.unread_output`)
        scanner = None if items is None else ItemScanner(items)
        if scanner is not None:
            scanner.feed(head)
        runs = None if thread_runs is None or owner is None else RunIdScanner()
        if runs is not None:
            runs.feed(head)
        meter, ownership = self.meter, self.ownership

        async def produce(ending: Ending) -> AsyncIterator[bytes]:
            nonlocal size
            ending.status = upstream.status
            held = head
            try:
                async for chunk in upstream.iter_chunks(relayed=True):
                    yield held
                    held = chunk
                    size += len(chunk)
                    tail.feed(chunk)
                    if scanner is not None:
                        scanner.feed(chunk)
                    if runs is not None:
                        runs.feed(chunk)
            except UpstreamError:
                ending.status = 502
            finally:
                upstream.close()
            ending.last = held

        async def settle(status: int) -> None:
            # Without a usage object, the text of an answer this large was not kept to count: it is
            # charged the most output it could hold, as reserved (never a free answer; a transcript by its size).
            usage = tail.usage(endpoint)
            answer_id = leading_id(head) if owner is not None else None
            # (the answer is not parsed: its charge is of the read's model, as before)
            pays, settles, charges = await self._pays(charging, answer_id, usage, ttl, within=within)
            claimed: list[str] = []  # (runs charged apart from `charges`: done without a usage)
            if not pays and runs is not None and thread_runs is not None:
                charges, claimed = await self.runs.unread_runs(runs.named, thread_runs, ttl, thread_messages)
                if charges:
                    usage, pays = _summed(charges), True
            turned: list[str] = []  # (as a small answer's: `cut_turn_charges`)
            if owner is not None and not pays and cut_turns is not None:
                charges, turned = await self.cut_turn_charges(cut_turns)
                if charges:
                    usage, pays = _summed(charges), True
            if not pays:
                usage = Usage(0, 0)
            models: list[ModelUsage] = self._tool_parts(endpoint, admission, tail.tool_usage(), unread=usage is None)
            if owner is not None and charging.counted and eval_run is not None:
                models, runs_claimed = await self.runs.eval_run_shown(*eval_run, ttl)
                claimed += runs_claimed
            await meter.settle(admission, usage=usage, output_text="", status=status, provider=upstream.provider,
                               output_estimate=unread_output(charging.media, size, admission.max_output),
                               settles=[(settles, usage)] if settles is not None and usage is not None else [],
                               models=models, charges=charges)
            await self._confirm([*(c.object_id for c in charges), *claimed], ttl)
            if charging.context:
                await remember_read_context(ownership, charges, charging.at)
            if cut_turns is not None and turned:
                await self._turns_charged(cut_turns, charges, turned)
            object_id = answer_id if creating else None
            claims: list[tuple[str, float | None]] = [(object_id, ttl)] if owner and object_id is not None else []
            if scanner is not None and items is not None and items.parent is not None:
                await claim_created(ownership, scanner.claims, owner or admission.identity, parent=items.parent)
            elif scanner is not None:
                claims += scanner.claims
            refused = await claim_created(ownership, claims, owner or admission.identity) if claims else set()
            if endpoint == "responses":  # stored or not, the turn joined its conversation
                await remember_context(ownership, admission, None if object_id in refused else object_id, extends,
                                       previous=previous)
            if speaker is not None:  # read from the head: an audio answer's id comes before its data
                await claim_created(ownership, [(i, AUDIO_TTL) for i in leading_audio_ids(head)], speaker)
            report(ex, admission, None)

        stream = MeteredStream(produce, settle)
        headers = [(k, v) for k, v in relayable_headers(upstream.headers)]
        return StreamReply(upstream.status, headers, stream.chunks(), stream.on_close)

    def sse(
        self, upstream: UpstreamResponse, endpoint: str, admission: Admission, strip_usage: bool,
        owner: Identity | None, *, ex: Exchange | None = None, extends: Sequence[tuple[str, int]] = (),
        speaker: Identity | None = None, items: Items | None = None, previous: str | None = None,
    ) -> StreamReply:
        """Relay an SSE answer event by event (`StreamInspector`), settled at its end; the object it
        names becomes `owner`'s and — `items` — the Responses API items it streamed
        (`StreamInspector.items`) its caller's, in one store round trip."""
        inspector = StreamInspector(endpoint, strip_usage_chunk=strip_usage, provider=upstream.provider,
                                    secret=upstream.secret)
        meter, ownership = self.meter, self.ownership

        async def settle(status: int) -> None:
            usage = inspector.usage  # else the hosted tools' results streamed are charged as read too
            # A stored turn cut in a conversation is listed there for the read of its items to charge
            # (`remember_context`); one cut that cannot be — not stored (`store: false`), its id never
            # shown, or the list has no room — is charged as reserved, now: the provider adds its
            # whole answer to the conversation all the same, and no read would charge it. (A stream
            # that came to its end showed its whole answer, counted: charged so, listed or not.)
            listed = True
            if endpoint == "responses" and usage is None and not inspector.unserved and extends:
                listed = (owner is not None and inspector.object_id is not None
                          and await self._list_cut_turn(extends, inspector.object_id, admission))
            unlisted = not listed and not inspector.saw_done
            await meter.settle(
                admission, usage=usage, output_text=inspector.text, output_counted=inspector.counted, status=status,
                provider=upstream.provider,
                output_estimate=0 if inspector.unserved else admission.max_output if unlisted else None,
                read_input=("", 0) if usage is not None else inspector.read_input,
                models=self._tool_parts(endpoint, admission, inspector.tool_usage,
                                        unread=usage is None and not inspector.unserved),
            )
            stored = None
            claims: list[tuple[str, float | None]] = [] if items is None else [
                (item_id, items.ttl) for item_id in inspector.items]
            collection = "responses" if endpoint == "responses" else "chat/completions"
            if owner is not None and inspector.object_id is not None:
                stored = inspector.object_id
                claims.insert(0, (stored, ObjectPath(collection).ttl))
            if claims and stored in await claim_created(ownership, claims, owner or admission.identity):
                stored = None  # another user's (see `claim_created`): its context is not this turn's
            if stored is not None:
                # Charged its usage here: a later fetch charges nothing. A stream cut before the
                # provider's count was charged only what it streamed, and a provider may finish and
                # store the answer all the same: the first read showing its usage charges that (what
                # was streamed then counts twice — a usage charged twice beats one never charged).
                if usage is not None or unlisted:
                    await self._charged(stored, ObjectPath(collection).ttl)
            if endpoint == "responses":  # also when the client left early (what was charged), stored or not
                await remember_context(ownership, admission, stored, extends, cut=usage is None and not unlisted,
                                       previous=previous)
            if speaker is not None and inspector.audio:
                now = time.time()
                await claim_created(ownership, [(i, audio_ttl(at, now)) for i, at in inspector.audio.items()], speaker)
            report(ex, admission, inspector.model)

        return relay_events(upstream, inspector, endpoint, self.metrics, settle, drains=self.meter.read_on if admission.hidden_output else None)


async def claim_created(
    ownership: Ownership, created: Iterable[tuple[str, float | None]], owner: Identity, *, parent: str | None = None
) -> set[str]:
    """Record `owner` as the owner of the objects an answer created (or showed: a conversation's
    items, children of `parent`: `Ownership.claim_all`), after its usage was recorded: the ids not
    claimed (another user's: an answer naming one records nothing of it for `owner`). A store that
    cannot be reached leaves them unowned — unreachable through Sentinel, which fails closed — and
    never costs the call its usage record: the provider served it."""
    try:
        return await ownership.claim_all(created, owner.external_id, parent=parent)
    except StoreUnavailable:
        ownership.outage.warning("the store is unavailable: an object this answer created stays unowned (unreachable)")
        return set()


async def remember_context(
    ownership: Ownership, admission: Admission, response_id: str | None, conversations: Sequence[tuple[str, int]],
    *, cut: bool = False, previous: str | None = None,
) -> None:
    """Record the tokens a Responses exchange held (its input, the context it continued included,
    and its output, as charged) under the response's id when it is stored (`response_id`; None for
    `store: false`: nothing can continue it) and under the conversation it joined, stored or not
    (the provider adds a `store: false` turn to its conversation too) — each conversation given with
    the count it held when the exchange was admitted: what it grew by meanwhile is kept on top
    (`Ownership.remember_turn`). A later request continuing either is charged them as input, even
    when its own stream is cut off before the provider's count. Each count is kept as long as its
    object's owner (`COLLECTIONS`): a conversation's until it is deleted through Sentinel, as the
    provider keeps its items. A stored response whose exchange was charged without the provider's
    count (`cut`: its stream cut before it) is noted with each conversation's count it left (`remember_cut_turn`),
    for the first read charging its usage to correct (`remember_read_context`); it was listed among each
    conversation's cut turns before its settlement (`AnswerRelay._list_cut_turn`), which a read of its
    items charges first (`CutTurns`): the provider adds the turn's whole answer there. A stored response keeps the cut
    turns its input items show (`Ownership.inherit_cut_turns`: its conversation's, and those of the
    response it continues, `previous`, that one included), which a read of them charges first. Like
    `claim_created`, a store outage costs nothing but this."""
    if admission.recorded is None:
        return
    tokens = admission.recorded.input_tokens + admission.recorded.output_tokens
    try:
        if response_id is not None:
            await ownership.remember_context(response_id, tokens, ObjectPath("responses").ttl)
        for conversation, held in conversations:
            after = await ownership.remember_turn(conversation, tokens, held, ObjectPath("conversations").ttl)
            if cut and response_id is not None and after is not None:  # (listed already: `_list_cut_turn`)
                await ownership.remember_cut_turn(response_id, conversation, tokens, after, ObjectPath("responses").ttl)
        if response_id is not None and (previous is not None or conversations):
            await ownership.inherit_cut_turns(response_id, previous, [c for c, _ in conversations],
                                              admission.identity.external_id, ObjectPath("responses").ttl)
    except StoreUnavailable:
        ownership.outage.warning("the store is unavailable: a response's context size was not kept")


async def remember_read_context(ownership: Ownership, charges: Iterable[ObjectCharge], response_id: str | None) -> None:
    """Record the context a stored response holds from the usage a read of it charges (`charges`:
    only when its stream was cut before the provider's count, which kept the cut exchange's charge
    as its context — `remember_context` —, too little when the provider finished it): its input,
    the context it continued included, and its output, as a complete exchange keeps. The count of a
    conversation the response joined is corrected by the difference, once, while it is still what
    that turn left (`Ownership.correct_turn`). A store outage costs nothing but this."""
    for charge in charges:
        if charge.object_id != response_id:
            continue
        tokens = charge.usage.input_tokens + charge.usage.output_tokens
        try:
            await ownership.remember_context(response_id, tokens, ObjectPath("responses").ttl)
            await ownership.correct_turn(response_id, tokens)
        except StoreUnavailable:
            ownership.outage.warning("the store is unavailable: a response's context size was not kept")


async def refuse(
    meter: Meter, upstream: UpstreamResponse, admission: Admission, *, relay_client_errors: bool = True,
    model: str | None = None,
) -> NoReturn:
    """Settle (or not) an upstream error answer, then raise the Sentinel error for it.

    A request the provider refused (a 4xx other than 429, and a 401/403 that refused this request —
    a model or feature the key may not use, a client's beta switch —, not Sentinel's provider key or
    account itself — revoked, out of credit (a 402; Anthropic's 400 saying so), the host's region blocked:
    `UpstreamStatusError.key_refused`) still reached the company's account: it counts as one
    request and is recorded with the upstream status and no tokens, so provider-refused calls are not
    free (a 403 a client causes at will was given back: repeated without end, not even its requests
    counted). When the provider failed or limited us (5xx, 429) or refused Sentinel's own key or account,
    nothing was served: nothing is settled here and the caller gives the reservation back
    (`Meter.release`, a no-op after a settle; such a refusal is a provider failure, which may be
    sent to another candidate). The error raised is
    `upstream_error(...)` for the answer; `relay_client_errors` as there (True on the `/v1` surfaces,
    False on the native API). Every surface's error answers go through here: the OpenAI relay
    (`AnswerRelay`), the Messages API (`MessagesService`), translated chat (`TranslatedChat`) and
    the native API (`NativeChat`). `model` (else `upstream.model`): the model a generation was sent
    to, when a 404 saying the provider no longer serves it (`retired`) is to be told apart — the
    native API's tier model, a `/v1` alias target's upstream model: `ModelRetired` is raised, nothing
    settled (nothing was served, and the operator's table naming it is no caller's doing: the caller
    gives the reservation back, or the answer of the model or target it moves to settles it)."""
    raw = await upstream.read_error()
    model = model if model is not None else upstream.model
    # A client's beta switch (relayed on `/v1`) may be what the provider refused the model under: its
    # 404 says nothing of the model for everyone, so it is relayed as the refusal it is.
    if model is not None and not upstream.client_switched and retired(upstream.status, raw, model):
        raise ModelRetired(upstream.provider, model)
    error = upstream_error(
        upstream.provider, upstream.status, raw, upstream.headers, relay_client_errors=relay_client_errors,
        client_switched=upstream.client_switched, wanted=(admission.estimate_input, admission.max_output),
    )
    key_refused = isinstance(error, UpstreamStatusError) and error.key_refused
    if 400 <= upstream.status < 500 and upstream.status != 429 and not key_refused:
        await meter.settle(admission, usage=Usage(0, 0), output_text="", status=upstream.status,
                           provider=upstream.provider)
    raise error


_GENERATIONS = ("chat", "completions", "responses")  # endpoints whose 2xx answer is a JSON generation

# An object's `status` while it is still at work (a batch, a run, a background response): what it
# does next is billed too — a batch cancelling finishes the lines in flight.
_AT_WORK = frozenset({"validating", "queued", "in_progress", "requires_action", "finalizing", "cancelling"})


# A batch's `status` once it has ended: it runs nothing more.
_BATCH_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# A fine-tuning job's `status` once it has ended: it trains no more (a `paused` one may resume).
_TRAINING_ENDED = frozenset({"succeeded", "failed", "cancelled"})


def final_usage(endpoint: str, body: Any) -> Usage | None:
    """The usage an answer shows (`usage_from_body`), when final: none while the object it is says
    it is still at work. Its usage is charged once, by the first read showing it (`Charging`), and a
    batch's held reservation settled to it: the part run by then, charged so, left the rest free.
    A batch that ended without usage having run no line (`request_counts.completed` 0; a `failed`
    one — its input refused at validation — may show no counts) shows no tokens: `Usage(0, 0)`,
    to which its reservation is settled (`Meter.settle`); one whose lines ran without usage shown
    (a provider that reports none) shows none: its reservation stays counted. A fine-tuning job
    shows no `usage`: what it bills is its `trained_tokens` (null while it runs), charged as input
    tokens once it has ended. A grader run on its own (`/v1/fine_tuning/alpha/graders/run`: its
    `reward`) shows what its model graders used only in `metadata.token_usage`."""
    if not isinstance(body, dict) or body.get("status") in _AT_WORK:
        return None
    if "reward" in body and isinstance(body.get("metadata"), dict):
        return _grader_usage(body["metadata"].get("token_usage"))
    if body.get("object") == "fine_tuning.job":
        trained = body.get("trained_tokens")
        if body.get("status") in _TRAINING_ENDED and type(trained) is int and 0 < trained <= MAX_TOKENS:
            return Usage(trained, 0)
        return None
    usage = usage_from_body(endpoint, body)
    if usage is None and body.get("object") == "batch" and body.get("status") in _BATCH_ENDED:
        counts = body.get("request_counts")
        ran = counts.get("completed") if isinstance(counts, dict) else 0 if body.get("status") == "failed" else None
        if type(ran) is int and ran == 0:
            return Usage(0, 0)
    return usage


def _summed(charges: Sequence[ObjectCharge]) -> Usage:
    """The usage of `charges` (at least one) together."""
    total = charges[0].usage
    for charge in charges[1:]:
        total = total.plus(charge.usage)
    return total


def _shown_itself(answer: Any, object_id: str) -> bool:
    """Whether `answer` is the object `object_id` itself (read whole: nothing to fetch)."""
    return isinstance(answer, dict) and answer.get("id") == object_id


def _grader_usage(tokens: Any) -> Usage | None:
    """A grader run's `metadata.token_usage` (`prompt_tokens`, its `cached_tokens`, and
    `completion_tokens`, which may be missing or null) as a usage; None when it shows none."""
    if not isinstance(tokens, dict):
        return None
    completion = tokens.get("completion_tokens")
    return usage_from_body("grader", {"usage": {
        "prompt_tokens": tokens.get("prompt_tokens"), "completion_tokens": 0 if completion is None else completion,
        "prompt_tokens_details": {"cached_tokens": tokens.get("cached_tokens")}}})


def _json(raw: bytes, upstream: UpstreamResponse) -> Any:
    if "json" not in upstream.content_type:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def report(ex: Exchange | None, admission: Admission, response_model: Any) -> None:
    """Tell the exchange what was recorded (what the request's span reports)."""
    if ex is not None and admission.recorded is not None:
        ex.recorded(admission.recorded.input_tokens, admission.recorded.output_tokens,
                    response_model if isinstance(response_model, str) else None)
