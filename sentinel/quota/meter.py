"""The metering seam between the HTTP layer and quotas/usage.

`admit()` runs before a metered request is forwarded: it loads the caller's plan, estimates the
request and reserves it against every limit in one atomic store operation (or raises RateLimited).
While the usage records only this process's memory holds (no durable outbox took them) are at their
limit (`DurableOutbox.full`) it refuses first, 503 `usage_unrecordable`: nothing is reserved.
`admit_batch()` reserves a batch's lines (estimated at upload by `batch_line`) when it is made;
the batch then holds that reservation (`hold`) until the first read showing its usage settles it
(`settle(..., settles=[(<batch id>, <its usage>)])`). `settle()` runs exactly once after the request was served (success, upstream error after tokens
were spent, client disconnect): it reconciles the reservation to the real usage and writes one
usage record to the durable outbox before returning (and one more for each model whose usage the
answer reports apart: `ModelUsage`). `release()` runs when nothing was served.
A reconciliation or give-back the store did not take (refused, or its outcome unknown) is sent again
later (`Unsettled`): it runs once however often it is sent. So is the give-back of a reservation
whose own reply was lost (the request meanwhile gets what the failure mode says) and the settlement
of a batch's held reservation.
With QUOTA_FAILURE_MODE=local, what the in-process limiter counted while Redis was away is handed back
to Redis once it answers (`LocalLimiter.hand_back`): a user's before her next reservation there, every
user's in the background (`Unsettled`), each hand-back counted once however often it is sent — after
`before_hand_back` (the store-loss check: a store that lost its data meanwhile has them dropped, counted
by the seed from the ledger instead).
Either settlement, once begun, runs to its end even if its caller is cancelled (one task of its own, shielded);
shutdown waits (`QuotaMeter.drain`) for those under way, and for every admission neither has begun
for yet (a request the server cancelled reaches its settlement some loop turns later), before it
closes the outbox and the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

from sentinel.domain.catalogue import Prices
from sentinel.domain.identity import Identity
from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.plans import Plan, PlanSource
from sentinel.domain.policies import QuotaFailureMode
from sentinel.domain.usage import MAX_REQUEST_ID, Usage, UsageRecord, UsageSource, charge_id, new_request_id
from sentinel.errors import RateLimited, ServiceUnavailable, StoreRefused, StoreUnavailable, sent_unanswered
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.offload import OFF_LOOP_SIZE, count_off_loop
from sentinel.providers.errors import REQUEST_TOO_LARGE, UnreadableAnswer
from sentinel.quota.decision import Decision
from sentinel.quota.estimate import (
    REFERENCE_TOKENS,
    Rereads,
    estimate_batch_line,
    estimate_input,
    hides_output,
    max_output,
    rereads_reserved,
)
from sentinel.quota.images import ImageRule
from sentinel.quota.limiter import QuotaLimiter, Reservation
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.quota.media import NO_FILES, Files
from sentinel.quota.media_calls import image_tool_output
from sentinel.quota.outbox import DurableOutbox
from sentinel.quota.tokens import TokenCounter
from sentinel.quota.unsettled import Unsettled

log = logging.getLogger("sentinel.meter")

# Retry-After of a request refused because its usage could not be recorded (`QuotaMeter._recordable`):
# the deliverer moves what memory holds to a durable outbox on every cycle once one is back.
UNRECORDABLE_RETRY_AFTER = 5.0

@dataclass(frozen=True, slots=True)
class ModelUsage:
    """The usage of one model an answer reports apart from its own `usage` (an eval run's
    `per_model_usage`: its sampling model's, each model grader's), with that model's prices when
    the catalogue knows them."""

    model: str
    usage: Usage
    prices: Prices | None = None
    of: str | None = None  # the object whose usage this is part of (keys its record: `charge_id`)
    counted: bool = True  # False: another read claimed that object first (`ObjectCharge`)


@dataclass(frozen=True, slots=True)
class ObjectCharge:
    """An object's usage a read shows and charges (`Ownership.claim_charge`): recorded under the
    object's `charge_id`, so recording it again adds no row. `counted`: False when another read
    claimed it first and had not confirmed it (a race, or a read that died before its record was
    known stored): its quota counted it (or went with it), the ledger keeps one row either way.
    `model`: the model the object names (a run's, a batch's), recorded as the record's model and
    priced at `prices` (None: no cost); None: the read's own model and prices."""

    object_id: str
    usage: Usage
    counted: bool = True
    model: str | None = None
    prices: Prices | None = None


def priced(prices: Prices, used: Usage, within: Sequence[ModelUsage] = ()) -> float | None:
    """The USD cost of `used` at `prices` but for the parts of it `within` (another model's steps),
    each at its own prices — at `prices` when they are unknown (None, or none set) —; None when
    `prices` are unknown. A part is taken out of `used` at most whole (never below zero)."""
    rest, apart = used, 0.0
    for part in within:
        step = part.usage
        rest = Usage(max(0, rest.input_tokens - step.input_tokens), max(0, rest.output_tokens - step.output_tokens),
                     max(0, rest.cache_write_tokens - step.cache_write_tokens),
                     max(0, rest.cache_read_tokens - step.cache_read_tokens))
        figures = (step.input_tokens, step.output_tokens, step.cache_write_tokens, step.cache_read_tokens)
        own = part.prices.cost(*figures) if part.prices is not None else None
        apart += own if own is not None else prices.cost(*figures) or 0.0
    cost = prices.cost(rest.input_tokens, rest.output_tokens, rest.cache_write_tokens, rest.cache_read_tokens)
    return None if cost is None else round(cost + apart, 8)


def part_id(request_id: str, n: int) -> str:
    """The ledger key of a request's `n`th `ModelUsage` record: `<request id>#<n>` (`#` is in no
    request id), or a fresh id when that would not fit the ledger's key."""
    key = f"{request_id}#{n}"
    return key if len(key) <= MAX_REQUEST_ID else new_request_id()


@dataclass
class Admission:
    """A request admitted for metering: what was reserved and the rate-limit headers to send."""

    identity: Identity
    endpoint: str
    model: str | None  # as the client named it (the catalogue's name): what the record says
    request_id: str
    # The model the provider is sent (an alias's upstream name): what estimates and counts use (its
    # tokenizer; its image rule unless `admit` was given the rule of every model that may serve the
    # request, `sentinel.quota.images.image_rule_for`); `model` when they are the same.
    counted_as: str | None = None
    estimate_input: int = 0
    max_output: int = 0
    requests: int = 1  # what it counts against a `requests` limit (a batch: one a line of its input)
    # Reserved on top of `estimate_input` and `max_output` for the steps of another model the request
    # may run (an advisor tool's calls: `estimate.Rereads`); reconciled with them to the real usage,
    # never charged when there is none (the request's own estimate and cap are).
    rereads_input: int = 0
    rereads_output: int = 0
    # The request asked for reasoning the provider bills but does not show (Anthropic `thinking`,
    # OpenAI `reasoning_effort` / `reasoning`), or reaches a model that reasons unasked and did not
    # turn it off (`estimate.hides_output`: set again for each model tried): without the
    # provider's usage its output is not countable from the text, so it is charged as reserved (`settle`).
    hidden_output: bool = False
    # The model a Responses request's `image_generation` tool runs (its `tools[].model`): what the
    # answer's `tool_usage` shows apart from its `usage` is recorded as that model's (`ModelUsage`).
    tool_model: str | None = None
    # The image output that tool may draw (`media_calls.image_tool_output`), reserved on top of
    # `max_output`: settled to the answer's `tool_usage`, else — its own usage not shown either (a
    # stream cut before its end, an answer unread) — charged as the tool model's, as reserved.
    tool_output: int = 0
    tool_prices: Prices | None = None  # the tool model's, when the catalogue knows them
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None
    limiter: QuotaLimiter | None = None
    provider: str | None = None
    prices: Prices | None = None  # of the model that served the request, when known
    settled: bool = False
    counted: bool = False  # counted open by the meter that admitted it, until settled or released
    recorded: Usage | None = None  # the tokens the usage record was written with (after settle)


def reserved_tool(admission: Admission) -> list[ModelUsage]:
    """The image output a Responses request's `image_generation` tool reserved (`Admission.tool_output`)
    as a record of the tool's model: what an answer whose usage cannot be known is charged for it."""
    if admission.tool_model is None or not admission.tool_output:
        return []
    return [ModelUsage(admission.tool_model, Usage(0, admission.tool_output), admission.tool_prices)]


class Meter(Protocol):
    """Quota admission and usage settlement, as the services see it (see the module docstring)."""

    # Input reserved for each stored item, prompt or audio answer a request names by id (`estimate.references`):
    # a service estimating a request again (`NativeChat._reprice`) reserves what `admit` does.
    referenced: int

    async def admit(
        self, identity: Identity, *, endpoint: str, model: str, payload: dict[str, Any] | None, request_id: str,
        size: int = 0, carried_input: int = 0, counted_as: str | None = None, images: ImageRule | None = None,
        files: Files = NO_FILES, rereads: Sequence[Rereads] = (),
    ) -> Admission: ...

    async def admit_call(
        self, identity: Identity, *, endpoint: str, request_id: str, tokens_later: bool = False,
        input_tokens: int = 0, output_tokens: int = 0, holding: str | None = None,
    ) -> Admission: ...

    async def admit_batch(
        self, identity: Identity, *, endpoint: str, request_id: str, requests: int, input_tokens: int,
        output_tokens: int,
    ) -> Admission: ...

    def batch_line(self, url: Any, body: dict[str, Any]) -> tuple[int, int]: ...

    async def hold(self, admission: Admission, name: str, ttl: float | None) -> None: ...

    async def settle(
        self, admission: Admission, *, usage: Usage | None, output_text: str, status: int, provider: str | None,
        output_estimate: int | None = None, reported_input: Usage | None = None,
        read_input: tuple[str, int] = ("", 0), output_counted: int = 0, settles: Sequence[tuple[str, Usage]] = (),
        models: Sequence[ModelUsage] = (), charges: Sequence[ObjectCharge] = (),
        within: Sequence[ModelUsage] = (),
    ) -> None: ...

    async def release(self, admission: Admission) -> None: ...

    async def fail(self, admission: Admission, error: BaseException) -> None: ...

    def read_on(self, work: Coroutine[Any, Any, None]) -> None: ...


def _refused(status: int) -> bool:
    """Whether a call settled with `status` was refused by the provider (a 4xx; 499 is a call the
    server cancelled, which may have reached it): it ran nothing, and counts one request whatever it
    reserved (a batch's lines)."""
    return 400 <= status < 500 and status != 499


def _report_unawaited(task: asyncio.Task[None]) -> None:
    """Log the exception of a settlement or release whose caller was cancelled (see `_carry_out`)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("a usage settlement failed after its request was cancelled; its record or its "
                  "reconciliation may be lost", exc_info=error)


class QuotaMeter:
    """Quotas (shared limiter, failure policy) plus usage records (token counting, outbox)."""

    def __init__(
        self,
        *,
        plans: PlanSource,
        limiter: QuotaLimiter,
        local_limiter: LocalLimiter,
        failure_mode: QuotaFailureMode,
        counter: TokenCounter,
        outbox: DurableOutbox,
        metrics: Metrics,
        default_max_output: int,
        clock: Callable[[], float] = time.monotonic,
        unrecordable: Callable[[], bool] | None = None,
        referenced: int = REFERENCE_TOKENS,
        before_hand_back: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.plans = plans
        self.limiter = limiter
        self.local_limiter = local_limiter
        self.failure_mode = failure_mode
        self.counter = counter
        self.outbox = outbox
        self.metrics = metrics
        self.default_max_output = default_max_output
        # Input reserved for each stored item, prompt or audio answer a request names by id (`estimate.references`).
        self.referenced = referenced
        # True while a new request's usage record could not be kept (`DurableOutbox.full`).
        self.unrecordable = unrecordable
        self._repeated = Repeated(log, clock=clock)  # outage lines: once a minute, not once a request
        self._settling: set[asyncio.Task[None]] = set()  # settlements and releases under way
        self.reading_on: set[asyncio.Task[None]] = set()  # streams read on for their usage (`read_on`)
        self._open = 0  # admissions neither settled nor released yet (a settlement still to come)
        self._changed: asyncio.Event | None = None  # set on every change `drain` waits for, while it waits
        self.unsettled = Unsettled()  # settlements the store did not take, sent again until it does
        self._handing_back = False  # a hand-back of the local limiter's counts waits in `unsettled`
        # Awaited before each hand-back: a store that lost its data meanwhile has the local counts
        # dropped, not handed back on top of the seed that counts them (`sentinel.services.store_loss`).
        self.before_hand_back = before_hand_back

    async def admit(
        self, identity: Identity, *, endpoint: str, model: str, payload: dict[str, Any] | None, request_id: str,
        size: int = 0, carried_input: int = 0, counted_as: str | None = None, images: ImageRule | None = None,
        files: Files = NO_FILES, rereads: Sequence[Rereads] = (),
    ) -> Admission:
        """Reserve the request, its estimated input and its maximum output against every limit of the
        caller's plan; RateLimited (429) when one does not fit. `size` (the body's bytes) decides
        whether counting runs off the event loop, after a cheap check that the plan has room at all.
        `carried_input`: tokens of earlier context the provider reads along (a stored response the
        request continues), part of the estimated input. `counted_as`: the model the provider is
        sent, when not `model` (see `Admission.counted_as`). `images`: the image rule of every model
        that may serve the request (`images.image_rule_for`: an alias's targets, a tier's
        candidates), else `counted_as`'s (Anthropic's on `/v1/messages`). `files`: what was read at
        upload of the files the request names by id (`media.upload_facts`). `rereads`: the steps of
        another model it may run (an advisor tool's calls), each reserving the estimated input again
        and its output cap (`estimate.rereads_reserved`); a Responses request's `image_generation` tool,
        the images it may draw (`Admission.tool_output`). ServiceUnavailable (503
        `usage_unrecordable`) first, reserving nothing, while its usage could not be recorded."""
        self._recordable()
        body = payload or {}
        plan = await self.plans.plan_for(identity)
        counted_as = counted_as or model
        admission = Admission(
            identity=identity, endpoint=endpoint, model=model, counted_as=counted_as, request_id=request_id,
            max_output=max_output(endpoint, body, self.default_max_output),
            hidden_output=hides_output(endpoint, body),
            tool_output=image_tool_output(body) if endpoint == "responses" else 0,
        )
        if size >= OFF_LOOP_SIZE:  # a large body: refuse an exhausted user before paying for the count
            await self._peek(identity, plan)
        count = functools.partial(
            estimate_input, self.counter, endpoint, counted_as, body, user=identity.external_id, images=images,
            files=files, referenced=self.referenced,
        )
        admission.estimate_input = await count_off_loop(count, size) + carried_input
        admission.rereads_input, admission.rereads_output = rereads_reserved(
            rereads, admission.estimate_input, self.default_max_output)
        await self._reserve(admission, plan)
        self._count(admission)
        return admission

    async def admit_call(
        self, identity: Identity, *, endpoint: str, request_id: str, tokens_later: bool = False,
        input_tokens: int = 0, output_tokens: int = 0, holding: str | None = None,
    ) -> Admission:
        """Reserve one request and no tokens (a call whose tokens are not estimated: the model list,
        pass-through endpoints) — or `input_tokens` and `output_tokens` (a pass-through media call whose
        answer may show no usage: `media_calls.media_call`), charged when its answer shows none —; it
        is refused while any limit of the plan is exhausted, and, with `tokens_later` (a call charged
        the tokens its answer shows: pass-through), by a token limit of 0; and, as `admit`, while its
        usage could not be recorded. `holding`: the object the call reads or stops (a batch); while
        its own reservation is held (`hold`), the call is checked against the plan's request limits
        alone, each with room for the requests that reservation counted in its current window
        (`QuotaLimiter.beside_held`) — a limit the batch itself used up refused the read that
        settles it and the cancel that stops it until the limit's window ended; the usage the read
        shows is counted by the held reservation it settles."""
        self._recordable()
        plan = await self.plans.plan_for(identity)
        if holding is not None and input_tokens == output_tokens == 0 and plan.limits:  # (no limit: nothing to ask)
            beside = await self._beside_held(identity, holding, plan)
            if beside is not None:
                plan, tokens_later = beside, False
        admission = Admission(identity=identity, endpoint=endpoint, model=None, request_id=request_id,
                              estimate_input=input_tokens, max_output=output_tokens)
        await self._reserve(admission, plan, tokens_later=tokens_later)
        self._count(admission)
        return admission

    async def admit_batch(
        self, identity: Identity, *, endpoint: str, request_id: str, requests: int, input_tokens: int,
        output_tokens: int,
    ) -> Admission:
        """Reserve a batch's lines before it is made (`POST /v1/batches`): `requests` (one a line),
        their estimated input and their output caps, summed at upload (`batch_line`), against every
        limit of the caller's plan, as one request would reserve them (429 `quota_exceeded` when one
        does not fit, never retried when the batch alone passes a limit; a token limit of 0 refuses
        it, as any call charged the tokens its answer shows). Once the provider made the batch, its
        reservation is the batch's (`hold`)."""
        self._recordable()
        plan = await self.plans.plan_for(identity)
        admission = Admission(identity=identity, endpoint=endpoint, model=None, request_id=request_id,
                              estimate_input=input_tokens, max_output=output_tokens, requests=max(1, requests))
        await self._reserve(admission, plan, tokens_later=True)
        self._count(admission)
        return admission

    async def _beside_held(self, identity: Identity, name: str, plan: Plan) -> Plan | None:
        """`QuotaLimiter.beside_held`; None when the store cannot say (the call is then checked
        against the whole plan, as any)."""
        try:
            return await self.limiter.beside_held(identity.external_id, name, plan)
        except StoreUnavailable:
            return None

    def batch_line(self, url: Any, body: dict[str, Any]) -> tuple[int, int]:
        """(input, output) tokens a batch line reserves: what its `body` sent alone to the endpoint its
        `url` names would (`estimate.estimate_batch_line`). Synchronous: a batch input is read in a
        worker thread."""
        return estimate_batch_line(self.counter, url, body, self.default_max_output, self.referenced)

    async def hold(self, admission: Admission, name: str, ttl: float | None) -> None:
        """The provider made the object `name` (a batch) that `admission` reserved for: its reservation
        stays counted — held under `name` for `ttl` seconds, a week or while one of its windows lasts,
        whichever is longest (`QuotaLimiter.hold`; a read after that charges the usage on its own) —
        until the first read showing the object's usage settles it to that usage (`settle` with
        `settles`), on any replica. The admission keeps no estimate (its record charges nothing). A reservation the
        shared store cannot hold (a local limiter's — handed back to Redis as reserved once it answers —, the
        store unreachable) stays counted until its windows end, and that read charges the usage on top."""
        reservation, limiter = admission.reservation, admission.limiter
        admission.reservation = None
        admission.estimate_input = admission.max_output = 0
        if reservation is not None and limiter is self.local_limiter:
            self.local_limiter.keep(reservation)  # counted as reserved: handed back so once Redis answers
            self._hand_back_later()
        if reservation is None or limiter is not self.limiter:
            return
        try:
            await limiter.hold(reservation, name, ttl)
        except StoreUnavailable:
            self._repeated.warning("could not hold a batch's quota reservation (store unavailable); "
                                   "it counts until its windows end")

    def _recordable(self) -> None:
        """Refuse a new request (503 `usage_unrecordable`) while the records only memory holds are at
        their limit: served, its usage could be kept nowhere. Memory still takes the records of the
        requests admitted before (a few beyond the limit): none is ever dropped."""
        if self.unrecordable is None or not self.unrecordable():
            return
        self._repeated.log(
            logging.ERROR, "usage records held in memory reached SENTINEL_MAX_UNSTORED_RECORDS (no durable "
            "outbox reachable); refusing metered requests until an outbox stores them",
        )
        raise ServiceUnavailable(
            "Usage cannot be recorded right now; the request was not served. Retry later.",
            code="usage_unrecordable", retry_after=UNRECORDABLE_RETRY_AFTER,
        )

    def _count(self, admission: Admission) -> None:
        """Count `admission` open until it is settled or released (see `drain`)."""
        admission.counted = True
        self._open += 1

    async def _peek(self, identity: Identity, plan: Plan) -> None:
        try:
            decision = await self.limiter.peek(identity.external_id, plan)
        except StoreUnavailable:
            return  # the reservation that follows applies the failure mode
        if not decision.allowed:
            self._refuse(decision)

    def _refuse(self, decision: Decision) -> NoReturn:
        name = decision.limited_by.metric if decision.limited_by else "unknown"
        self.metrics.quota_decisions.labels("limited", name).inc()
        raise decision.to_error()

    async def _reserve(self, admission: Admission, plan: Plan, *, tokens_later: bool = False) -> None:
        subject = admission.identity.external_id
        limiter = self.limiter
        output_tokens = admission.max_output + admission.rereads_output + admission.tool_output
        if self.local_limiter.owes(subject):
            # What this user was counted in-process while Redis was away goes to Redis first, so this
            # reservation is checked against all of it (`LocalLimiter.hand_back`).
            try:
                if self.before_hand_back is not None:
                    await self.before_hand_back()
                await self.local_limiter.hand_back(self.limiter, subject)
            except StoreUnavailable:
                pass  # kept, sent again (it counts once); the reservation below applies the failure mode
        try:
            reservation = await limiter.reserve(subject, plan, requests=admission.requests,
                                                input_tokens=admission.estimate_input + admission.rereads_input,
                                                output_tokens=output_tokens,
                                                tokens_later=tokens_later,
                                                on_lost=self._give_back_lost)
        except StoreUnavailable:
            self.metrics.quota_store_failures.labels(self.failure_mode.value).inc()
            if self.failure_mode is QuotaFailureMode.closed:
                raise ServiceUnavailable(
                    "Quota service unavailable: cannot check your limits right now", code="quota_unavailable"
                ) from None
            if self.failure_mode is QuotaFailureMode.open:
                self._repeated.warning("quota store unavailable; admitting without a quota check (QUOTA_FAILURE_MODE=open)")
                return
            limiter = self.local_limiter
            reservation = await limiter.reserve(subject, plan, requests=admission.requests,
                                                input_tokens=admission.estimate_input + admission.rereads_input,
                                                output_tokens=output_tokens,
                                                tokens_later=tokens_later)
        # (on either limiter: a hand-back `Unsettled` gave up on is queued again by the next request)
        self._hand_back_later()
        decision = reservation.decision
        if not decision.allowed:
            self._refuse(decision)
        self.metrics.add(self.metrics.child(self.metrics.quota_decisions, "allowed", ""))
        admission.reservation = reservation
        admission.limiter = limiter
        admission.headers = decision.headers()

    def _hand_back_later(self) -> None:
        """Have what the local limiter counted handed back to Redis once it answers (`Unsettled`: sent
        again, with backoff, until it is taken; each user's hand-back counts once however often sent)."""
        if not self._handing_back and self.local_limiter.owing:
            self._handing_back = True
            self.unsettled.add(self._hand_back)

    async def _hand_back(self) -> None:
        """Hand every user's local counts back (`LocalLimiter.hand_back`); StoreUnavailable: not all taken."""
        try:
            if self.before_hand_back is not None:
                await self.before_hand_back()
            await self.local_limiter.hand_back(self.limiter)
        except StoreRefused:
            raise  # still queued: sent again
        except StoreUnavailable:
            # Sent again too — unless `Unsettled` gives up on it: a later local count queues another.
            self._handing_back = False
            raise
        self._handing_back = False

    def _give_back_lost(self, reservation: Reservation) -> None:
        """A reservation whose script call went unanswered (it may have run, or may run late): given
        back in the background (`Unsettled`) — only if it ran, once, and a late run then counts
        nothing. The request meanwhile gets what the failure mode says, as if it had never run."""
        self.unsettled.add(functools.partial(self.limiter.release, reservation))

    async def settle(
        self, admission: Admission, *, usage: Usage | None, output_text: str, status: int, provider: str | None,
        output_estimate: int | None = None, reported_input: Usage | None = None,
        read_input: tuple[str, int] = ("", 0), output_counted: int = 0, settles: Sequence[tuple[str, Usage]] = (),
        models: Sequence[ModelUsage] = (), charges: Sequence[ObjectCharge] = (),
        within: Sequence[ModelUsage] = (),
    ) -> None:
        """Reconcile the reservation to the real usage and store one usage record (once per admission).

        Without `usage` the record is estimated: the input from `reported_input` (the input and cache
        figures a provider reported before a stream broke off, e.g. Anthropic's message_start) or
        else the admission's estimate, plus `read_input` (text to count, tokens counted already:
        what the provider gave the model to read after that, e.g. Anthropic's server-tool results),
        the output counted in `output_text` plus `output_counted` (the tokens of the output a stream
        did not keep, counted as it came: `sentinel.native.kept`), or `output_estimate`
        when the caller could not keep the text. A long text is counted in a worker thread
        (`count_off_loop`). The count, the reconciliation and the record are one task, shielded
        (`_carry_out`): a caller cancelled at any of its waits (the server stopping past its
        shutdown deadline) still leaves its record and its reconciled counters.

        `settles`: the objects (batches) whose usage is part of this one — (id, its usage), each first
        shown to this call: a read of one, or a list showing several —: the reservation each holds
        (`hold`) is settled to its usage instead — the usage replaces its estimate, counted once —,
        and this call's own counts none of it; with none held, this call's counts it.

        `models`: usage the answer reports per model apart from its own (`ModelUsage`, first shown to
        this call): each is one more record, keyed `part_id(request id, n)` (`charge_id(owner,
        object, model)` when it is part of an object's: `ModelUsage.of`), of that model — its
        tokens, its cost —, and their tokens are reconciled against the plan with this call's.

        `charges`: the objects whose usage is this read's `usage` (their sum; `ObjectCharge`): each
        is recorded under its `charge_id` instead — the read's row is the first's — so a read that
        records one again, after the read before it died before marking it charged, adds no row;
        one another read claimed first counts nothing against the plan.

        `within`: the parts of `usage` another model ran (an Anthropic advisor tool's steps,
        `anthropic_usage.model_steps`), with that model's prices: counted in this record's tokens
        as they are, but priced at their own prices in its `cost_usd` (at the request's when None)."""
        if not self._begin(admission):
            return
        await self._carry_out(self._record(
            admission, usage=usage, output_text=output_text, status=status, provider=provider,
            output_estimate=output_estimate, reported_input=reported_input, read_input=read_input,
            output_counted=output_counted, settles=settles, models=models, charges=charges,
            within=within if usage is not None else (),
        ))

    def _begin(self, admission: Admission) -> bool:
        """Mark `admission` settled (or released); False when it already was. An admission `admit`
        counted open is no longer: the caller goes straight on to `_carry_out`, with no await
        between, so `drain` finds it in one of the two (open, under way) until it is done."""
        if admission.settled:
            return False
        admission.settled = True
        if admission.counted:
            admission.counted = False
            self._open -= 1
            if self._changed is not None:
                self._changed.set()
        return True

    async def _carry_out(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (a settlement, a release) to its end whatever becomes of the caller: a task of
        its own, awaited through a shield, kept in `_settling` until done (for `drain`). A caller
        still waiting gets its exception; once the caller is cancelled nobody would (the shield
        marks it retrieved): it is logged, with its traceback. (`loop.create_task`, not
        `ensure_future`, which first asks whether a coroutine is a future: a failed attribute lookup.)"""
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._carried_out)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report_unawaited)
            raise

    def _carried_out(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if self._changed is not None:
            self._changed.set()

    def read_on(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` — a stream its client left, read on for the provider's usage before it is
        settled (`sentinel.services.exchange.MeteredStream`) — as a task of its own, which `drain`
        cuts first (shutdown does not wait on an upstream that may never end): it then settles as
        it stands."""
        task = asyncio.ensure_future(work)
        self.reading_on.add(task)
        task.add_done_callback(self.reading_on.discard)

    async def drain(self, within: float) -> None:
        """Wait, at most `within` seconds, until no settlement or release is under way and every
        admission was settled or released (those admitted meanwhile too): shutdown runs it before
        the outbox, the ledger and the store are closed. The server cancels the requests still
        running past its shutdown deadline and goes straight on to the app's shutdown; a cancelled
        stream begins its settlement only some loop turns later (the relay unwinds, the body is
        closed, then `on_close` settles), and its record would be written to closed writers.
        Streams read on for their usage (`read_on`) are cut first, each then settling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        if reading := list(self.reading_on):
            for task in reading:
                task.cancel()
            await asyncio.wait(reading, timeout=within)
        self._changed = changed = asyncio.Event()
        try:
            while self._settling or self._open:
                left = deadline - loop.time()
                if left <= 0:
                    log.error("usage settlements still under way at shutdown; their records may be lost",
                              extra={"count": len(self._settling) + self._open})
                    return
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), timeout=left)
                except TimeoutError:
                    pass
        finally:
            self._changed = None
            # One more try each of the refused settlements, within what is left of the deadline.
            await self.unsettled.close(deadline - loop.time())

    async def _record(
        self, admission: Admission, *, usage: Usage | None, output_text: str, status: int, provider: str | None,
        output_estimate: int | None, reported_input: Usage | None, read_input: tuple[str, int],
        output_counted: int = 0, settles: Sequence[tuple[str, Usage]] = (), models: Sequence[ModelUsage] = (),
        charges: Sequence[ObjectCharge] = (), within: Sequence[ModelUsage] = (),
    ) -> None:
        label = self.metrics.model_label(admission.model)
        model = admission.counted_as or admission.model  # (what the texts are counted as)
        source: UsageSource
        cache_write = cache_read = 0
        if usage is not None:
            input_tokens, output_tokens, source = usage.input_tokens, usage.output_tokens, "measured"
            cache_write, cache_read = usage.cache_write_tokens, usage.cache_read_tokens
            if admission.estimate_input > 0:
                self.metrics.observe(
                    self.metrics.child(self.metrics.estimate_error, label),
                    (usage.input_tokens - admission.estimate_input) / admission.estimate_input,
                )
        else:
            input_tokens = admission.estimate_input
            # A reported input of 0 is no count of a prompt (an Anthropic-compatible server that fills
            # message_start's figures only in its final event): the estimate stands, else leaving
            # the stream after message_start made any prompt free.
            if reported_input is not None and reported_input.input_tokens > 0:
                input_tokens = reported_input.input_tokens
                cache_write, cache_read = reported_input.cache_write_tokens, reported_input.cache_read_tokens
            read_text, read_tokens = read_input
            if read_text:
                count = functools.partial(self.counter.count_text, read_text, model or "")
                read_tokens += await count_off_loop(count, len(read_text))
            input_tokens = min(MAX_TOKENS, input_tokens + read_tokens)
            if output_estimate is not None:
                output_tokens = output_estimate
            elif admission.hidden_output:  # billed reasoning, never streamed: charged as reserved
                output_tokens = admission.max_output
            else:
                count = functools.partial(self.counter.count_text, output_text, model or "")
                counted = await count_off_loop(count, len(output_text)) if output_text else 0
                output_tokens = min(MAX_TOKENS, counted + output_counted)
            source = "estimated"
        record = UsageRecord(
            request_id=admission.request_id,
            external_id=admission.identity.external_id,
            email=admission.identity.email,
            model=admission.model,
            provider=provider,
            endpoint=admission.endpoint,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_source=source,
            status=status,
            started_at=admission.started_at,
            finished_at=datetime.now(UTC),
            cost_usd=None if admission.prices is None else priced(
                admission.prices, Usage(input_tokens, output_tokens, cache_write, cache_read), within
            ),
            cache_write_tokens=cache_write,
            cache_read_tokens=cache_read,
        )
        charged = (input_tokens, output_tokens)  # what this call's own reservation is reconciled to
        uncounted = [(c.usage.input_tokens, c.usage.output_tokens) for c in charges if not c.counted]
        for name, shown in settles:
            if await self._settle_held(admission, name, shown.input_tokens, shown.output_tokens):
                # (counted by the reservation it settled)
                uncounted.append((shown.input_tokens, shown.output_tokens))
        for used in uncounted:
            charged = (max(0, charged[0] - used[0]), max(0, charged[1] - used[1]))
        parts = [self._part(record, n, part) for n, part in enumerate(models, 1)]
        plan_parts = [p for p, part in zip(parts, models, strict=True) if part.counted]
        charged = (min(MAX_TOKENS, charged[0] + sum(p.input_tokens for p in plan_parts)),
                   min(MAX_TOKENS, charged[1] + sum(p.output_tokens for p in plan_parts)))
        rows = self._charges(record, admission.prices, charges) or [record]
        rows += parts
        # The rows the plan counted: a charge or a part another read claimed first (`counted` False)
        # is a row the ledger has (or will have) once, under the same key, which that read's metrics
        # counted when it was stored (a read that died before storing it counted it in no process
        # that still reports): counted again, the tokens and cost metrics held it twice.
        new = ([c.counted for c in charges] if charges else [True]) + [part.counted for part in models]
        if admission.reservation is None or admission.limiter is None:  # admitted unchecked (failure mode open)
            await self._store(rows)
        else:
            # The record is stored while the reservation is reconciled: the two are independent, and on
            # a shared store they travel to Redis in one round trip (auto-pipelining). Nothing cancels
            # this task (see `settle`), so neither is cut short.
            stored = asyncio.get_running_loop().create_task(self._store(rows))
            commit = functools.partial(
                admission.limiter.commit, admission.reservation, input_tokens=charged[0],
                output_tokens=charged[1], requests=1 if _refused(status) else None,
            )
            try:
                await commit()
            except StoreUnavailable:  # refused, or its outcome unknown: sent again, it runs once
                self._repeated.warning("the store did not take a quota reconciliation; it is sent again once it answers")
                self.unsettled.add(commit)
            finally:
                await stored
            if admission.limiter is self.local_limiter:
                self._hand_back_later()  # what it settled to, now Redis's to count
        admission.recorded = Usage(input_tokens, output_tokens)
        for each, first in zip(rows, new, strict=True):
            if first:
                self._counted(each)

    @staticmethod
    def _charges(record: UsageRecord, prices: Prices | None, charges: Sequence[ObjectCharge]) -> list[UsageRecord]:
        """The records of `charges`, the objects' usage `record`'s read charges (see `settle`), in
        order, each at most what `record` holds that those before it did not: together, what it
        holds (at most MAX_TOKENS a count, as the plan was charged: `Usage.plus`); each of the
        model its object names, priced as that model (`ObjectCharge.model`), else as `record`."""
        left = [record.input_tokens, record.output_tokens, record.cache_write_tokens, record.cache_read_tokens]
        rows: list[UsageRecord] = []
        for charge in charges:
            shown = charge.usage
            counts = [min(n, most) for n, most in zip(
                (shown.input_tokens, shown.output_tokens, shown.cache_write_tokens, shown.cache_read_tokens),
                left, strict=True)]
            left = [most - n for most, n in zip(left, counts, strict=True)]
            used = Usage(*counts)
            model, at = (record.model, prices) if charge.model is None else (charge.model, charge.prices)
            rows.append(dataclasses.replace(
                record, request_id=charge_id(record.external_id, charge.object_id), model=model,
                input_tokens=used.input_tokens, output_tokens=used.output_tokens, usage_source="measured",
                cache_write_tokens=used.cache_write_tokens, cache_read_tokens=used.cache_read_tokens,
                cost_usd=None if at is None else at.cost(
                    used.input_tokens, used.output_tokens, used.cache_write_tokens, used.cache_read_tokens),
            ))
        return rows

    def _part(self, record: UsageRecord, n: int, part: ModelUsage) -> UsageRecord:
        """The record of `part`, the `n`th model usage `record`'s answer reports apart (see `settle`)."""
        used = part.usage
        key = part_id(record.request_id, n) if part.of is None else charge_id(record.external_id, part.of, part.model)
        return dataclasses.replace(
            record, request_id=key, model=part.model, input_tokens=used.input_tokens,
            output_tokens=used.output_tokens, usage_source="measured", cache_write_tokens=used.cache_write_tokens,
            cache_read_tokens=used.cache_read_tokens, cost_usd=None if part.prices is None else part.prices.cost(
                used.input_tokens, used.output_tokens, used.cache_write_tokens, used.cache_read_tokens),
        )

    async def _store(self, records: Sequence[UsageRecord]) -> None:
        """Put a request's records (its own or its charges', then its parts': `_part`) in the outbox."""
        for each in records:
            await self.outbox.put(each)

    def _counted(self, record: UsageRecord) -> None:
        """Count a stored record in the metrics (tokens, requests by source, cost)."""
        m, label = self.metrics, self.metrics.model_label(record.model)
        m.add(m.child(m.tokens, "input", label), record.input_tokens)
        m.add(m.child(m.tokens, "output", label), record.output_tokens)
        if record.cache_write_tokens:
            m.add(m.child(m.tokens, "cache_write", label), record.cache_write_tokens)
        if record.cache_read_tokens:
            m.add(m.child(m.tokens, "cache_read", label), record.cache_read_tokens)
        m.add(m.child(m.usage_requests, label, record.usage_source))
        if record.cost_usd:
            m.add(m.child(m.cost, record.provider or "none", label), record.cost_usd)

    async def _settle_held(self, admission: Admission, name: str, input_tokens: int, output_tokens: int) -> bool:
        """Settle the reservation the object `name` holds (`hold`) to its usage; False when it holds
        none (or the store cannot say whether it does, its record unread: the usage is then charged on
        the call's own reservation — twice, until the windows end, beats never). A settlement the
        store did not take is sent again (`Unsettled`; it runs once) and counts the usage: never
        charged on top. A usage of no tokens is a batch that ended
        having run no line (`answers.final_usage`): it counts one request, as one the provider
        refused (`_refused`), not one a line."""
        ran_nothing = input_tokens == output_tokens == 0
        try:
            return await self.limiter.settle_held(admission.identity.external_id, name, input_tokens=input_tokens,
                                                  output_tokens=output_tokens, requests=1 if ran_nothing else None,
                                                  again=self.unsettled.add)
        except StoreUnavailable:
            return False

    async def fail(self, admission: Admission, error: BaseException) -> None:
        """The call ended in `error` before an answer: give the reservation back — unless the request
        may have reached the provider, which then never answered (an upstream read timeout, a
        connection dropped after it was made: `sent_unanswered`). The provider may have generated and
        billed all of it, so it counts as one request, its estimated input and all the output it
        reserved, recorded with the error's status (504, 502); otherwise a slow enough request (a long
        generation made to outlast the timeout) would be free, and repeatable (so are the images a
        Responses request's `image_generation` tool reserved: `reserved_tool`). A 2xx answer Sentinel could not read
        (`UnreadableAnswer`) was served: recorded with status 502 and the answer's own usage, or
        its estimated input and all the output it reserved. A call cancelled mid-way (the server
        stopping past its shutdown deadline) may have reached the provider too: recorded with
        status 499, its estimated input and no output (the server stopped it, not its caller),
        shielded from the cancellation. A request the provider refused as larger than its account's
        per-minute limit (a 429 `provider_request_too_large`, on every model tried: its input plus
        its `max_tokens`, which the client names) is a refusal of the request, not of the traffic:
        one request with no tokens, recorded with status 429, as a provider's 4xx is (given back, it
        was free and repeatable at will). Any other exception (the client gets a 500, not an
        answer) gives the reservation back."""
        if isinstance(error, asyncio.CancelledError):  # (settled even if cancelled again: see `settle`)
            await self.settle(admission, usage=None, output_text="", status=499, provider=None, output_estimate=0)
        elif sent_unanswered(error):  # may have been generated, billed: as reserved
            await self.settle(admission, usage=None, output_text="", status=error.status, provider=error.provider,
                              output_estimate=admission.max_output, models=reserved_tool(admission))
        elif isinstance(error, UnreadableAnswer):  # served, billed: its usage, else all it reserved
            await self.settle(admission, usage=error.usage, output_text="", status=error.status,
                              provider=error.provider, output_estimate=admission.max_output,
                              models=reserved_tool(admission))
        elif isinstance(error, RateLimited) and error.code == REQUEST_TOO_LARGE:  # refused for its own size
            await self.settle(admission, usage=Usage(0, 0), output_text="", status=error.status,
                              provider=error.provider)
        else:
            await self.release(admission)

    async def release(self, admission: Admission) -> None:
        """Give back everything the admission reserved (nothing was served); once per admission, to
        its end even if the caller is cancelled (as `settle`)."""
        if not self._begin(admission):
            return
        if admission.reservation is not None and admission.limiter is not None:
            await self._carry_out(self._release(admission.limiter, admission.reservation))

    async def _release(self, limiter: QuotaLimiter, reservation: Reservation) -> None:
        try:
            await limiter.release(reservation)
        except StoreUnavailable:  # refused, or its outcome unknown: sent again, it runs once
            self._repeated.warning("the store did not take a quota release; it is sent again once it answers")
            self.unsettled.add(functools.partial(limiter.release, reservation))
