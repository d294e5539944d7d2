"""The background deliverer: moves usage batches from the outbox to the usage sink.

One batch at a time. A batch claimed from the outbox is kept in memory and sent again — the same
records under the same key (its `Idempotency-Key`) — with exponential backoff (0.5 s doubling to
a third of the lease, with jitter) until the sink answers; no new records are claimed meanwhile (other replicas
may deliver them). Its lease is renewed before each retry, every third of a lease while a delivery
runs (`_leased`), and while the records memory holds are stored (`_keep_lease`). Then the batch is settled: accepted records leave the outbox, records the sink
refused one by one go back to be batched again later under a new key (after a batch refused whole,
the next claim waits a backoff: `_pause`). A crash at any point leaves
the batch in the outbox under its key, and whoever takes it over after the lease sends it under
that key again, so a sink that honours the key (Zion should; the built-in ledger is exactly-once
by request id regardless) counts every record once. A holder that outlived its lease and finds, at
its retry, the batch no longer held under its key lets it go: the taker settled it (`_renew`).

A batch the sink refuses whole for its content (`UsageBatchRefused`: Zion's 400, 413 or 422, which
one bad value — a model name, an id — is enough for) is delivered apart: first moved under its
split key in the outbox, then each record sent on its own under its part key (`batch.part_key`, a
few at a time, the lease renewed as they go); records the sink still refuses alone are handed back
as refused, the others settled once every part has answered. A part that fails keeps the batch, as
any failure does: the retry sends the parts not yet answered, under the same part keys, and a
takeover after a crash finds the batch under its split key and sends every part under the same key
again (replayed by a sink that honours keys), never the batch whole.

When the sink asks for a wait (`GovernanceUnavailable.resend_after`: Zion's `Retry-After` on a 429
or 503, or a batch whose call timed out, which Zion may still be applying) nothing is sent to it
before that wait has passed — at least the backoff's delay, at most MAX_SINK_WAIT — not the held
batch, no new one, not at shutdown (a batch held in memory stored then is due once the wait is
over, for the next process too); the deliverer goes on with everything else meanwhile (orphans
are stored, the held batch's lease renewed every third of a lease). Never a wait of its own: a
cycle returns at once while it lasts. The wait is every replica's: with a stream outbox (a shared
store) it is kept there (`DurableOutbox.quiet_sink`, a key living as long as the wait, only ever
lengthened, naming the deliverer that told it last), and every other deliverer reads it once a cycle
(`sink_quiet`; not during a wait of its own) and honours it as if asked itself — else the other replicas sent their new batches meanwhile, a
burst at a sink that had just asked for none. Without a shared store, or while it does not
answer, each deliverer honours the waits it was asked for. The held batch's lease is renewed for the whole wait
(`DurableOutbox.renew`'s `hold`), so a deliverer that takes it over after this one died honours the
wait too. A refusal whole or of one record (`UsageBatchRefused`) carrying a wait is honoured the same
way: the batch moves under its split key at once, its parts go after the wait.

A batch claimed from memory (its records found no durable outbox) is moved to the outbox table under
its key at its next failure, and at shutdown (`DurableOutbox.keep`): from there it is taken over
whole under its key, so neither a crash loses it nor a restart sends it under a new key.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from sentinel.backoff import Backoff
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, SentinelError, StoreUnavailable, UsageBatchRefused
from sentinel.observability.metrics import Metrics
from sentinel.periodic import Next, Periodic
from sentinel.quota.batch import Batch, is_split_key, part_key
from sentinel.quota.outbox import DurableOutbox
from sentinel.quota.sink import UsageSink

log = logging.getLogger("sentinel.deliverer")


KEEP_TIMEOUT = 5.0  # at shutdown, how long storing what only memory holds may take
PARTS_AT_ONCE = 8  # records of a batch delivered apart that are sent at the same time
# The longest wait the sink may ask for (Retry-After, a timed-out call) before it is called again: a
# longer one (Zion may send a day) holds usage back past what `used` figures and operators expect.
MAX_SINK_WAIT = 300.0


def delivery_backoff(lease_seconds: float) -> Backoff:
    """Retries of a held batch: 0.5 s doubling to 30 s — or to a third of the lease, so a retry (its
    wait plus the sink's call) renews the lease before it runs out: a replica taking the batch over
    while this one still sends it would hold it too."""
    return Backoff(base=min(0.5, lease_seconds / 3), cap=max(min(30.0, lease_seconds / 3), 0.001))


class UsageDeliverer:
    """Runs `deliver_once` on an interval (or sooner when records wait) until stopped.

    `clock` (monotonic seconds) decides when a failed batch is due again; tests inject one.
    """

    def __init__(
        self,
        outbox: DurableOutbox,
        sink: UsageSink,
        metrics: Metrics,
        *,
        interval: float = 0.5,
        batch_size: int = 500,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.outbox = outbox
        self.sink = sink
        self.metrics = metrics
        self.interval = interval
        self.batch_size = batch_size
        self.backoff = backoff or delivery_backoff(30.0)
        self.clock = clock
        self.sleep = sleep  # the lease keeper's wait between renewals (`_renewing`)
        self.failures = 0
        self._refusals = 0  # batches in a row whose every record the sink refused (`_pause`)
        self.held: Batch | None = None
        self._refused: frozenset[str] | None = None  # the sink's answer, once it gave one
        # Of a batch delivered apart, the records the sink answered: request id -> refused.
        self._parts: dict[str, bool] = {}
        self._not_before = 0.0
        # The sink asked not to be called before this (`clock`): Retry-After, a timed-out call. Unlike
        # `_not_before`, kept when the held batch is let go of, and by `drain`.
        self._quiet_until = 0.0
        self._name = secrets.token_hex(8)  # who told the other replicas' deliverers of a wait (`_tell_others`)
        self._leased_at = 0.0  # when the held batch's lease was last taken or renewed (`clock`)
        self._moving = asyncio.Lock()  # the held batch's split (`_send`) and the lease keeper's renewals
        self._keeper_renews = False  # the lease keeper (`_renewing`) is renewing the held batch now
        # (the loop; a cycle that raises otherwise than SentinelError is logged, the next an interval later)
        self._loop = Periodic(self._cycle, interval=interval, log=log, crashed="usage deliverer cycle crashed")

    async def deliver_once(self) -> int:
        """Advance the current batch (claiming one if none is held): returns how many records the
        sink accepted, 0 when nothing was delivered (nothing waiting, a failure, or not yet due)."""
        if self.outbox.orphans:  # every cycle: also while a batch waits for its retry (a long outage)
            await self.outbox.rescue_orphans(between=self._keep_lease)
        if self.clock() >= self._quiet_until and (shared := await self.outbox.sink_quiet(self._name)) > 0:
            # Another replica's deliverer was asked for a wait (one read a cycle, none during a wait
            # of this deliverer's own): honoured as if asked here.
            self._quiet_until = self.clock() + min(shared, MAX_SINK_WAIT)
        if self.clock() < self._quiet_until:  # the sink asked for a wait: nothing goes to it meanwhile
            await self._keep_lease()
            return 0
        if self.held is None:
            if self.clock() < self._not_before:  # pausing after a batch the sink refused whole
                return 0
            self.held = await self.outbox.claim(self.batch_size)
            if self.held is None:
                return 0
            self._leased_at = self.clock()
        elif self.clock() < self._not_before:
            return 0
        batch = self.held
        if self._refused is None:
            if self.failures and not await self._renew(batch):
                # Another deliverer took it over (its lease ran out before this retry) and settled
                # it: whole under its key, or apart after the sink refused it whole. Sent whole
                # again under its key, a sink that had only refused that key applied it — every
                # record counted twice. Nothing of it is this deliverer's to send any more: it goes
                # on with the next batch at once (returning 0 here, "nothing delivered", stopped a
                # shutdown's drain with batches left, and the loop an interval).
                log.warning("usage batch no longer held in the outbox under its key; another deliverer "
                            "settled it, letting it go", extra={"batch": batch.key})
                self._release()
                return await self.deliver_once()  # (claims afresh: a new batch has no failures)
            try:
                batch, refused = await self._leased(self._send(batch))
            except (GovernanceUnavailable, StoreUnavailable) as exc:
                self.metrics.deliveries.labels("failure").inc()
                asked = exc.resend_after if isinstance(exc, GovernanceUnavailable) else None
                self._later(exc.message, "usage delivery failed; retrying the same batch", asked=asked)
                if asked is not None:
                    await self._tell_others()
                await self._keep_held()
                if asked is not None and self.held is not None:
                    # Held in the outbox for the whole wait: should this process die meanwhile, a
                    # takeover after the lease sent it while Zion may still be applying it.
                    await self._renew(self.held)
                return 0
            except Exception as exc:  # noqa: BLE001 - no outage (odd JSON from a sink, a bug): back off all the same
                self.metrics.deliveries.labels("failure").inc()
                self._later(type(exc).__name__, "usage delivery failed unexpectedly; retrying the same batch")
                await self._keep_held()
                return 0
            self._refused = frozenset(refused) & {c.record.request_id for c in batch.items}
            if self._refused:
                self.metrics.deliveries.labels("partial").inc()
        try:
            await self.outbox.settle(batch, self._refused, retry_in=self.backoff.cap)
        except SentinelError as exc:
            # Delivered, not settled: settle again later. Should this process die first, the batch
            # is taken over and sent again under the same key, which the sink deduplicates.
            self._later(exc.message, "could not settle a delivered usage batch; retrying")
            return 0
        delivered = len(batch.items) - len(self._refused)
        self.metrics.deliveries.labels("success").inc()
        self.metrics.delivered_records.inc(delivered)
        self._release()
        if delivered:
            self._refusals = 0
        elif len(batch.items) > 1:  # (one record refused alone says nothing of the next: no pause)
            self._pause(batch)
        return delivered

    async def _leased(self, sending: Awaitable[tuple[Batch, list[str]]]) -> tuple[Batch, list[str]]:
        """Await `sending` (a delivery of the held batch) while a task of its own renews the batch's
        lease every third of a lease. Renewed only before each retry, a delivery longer than the
        lease — a Zion usage call with its own retries, each attempt up to ZION_USAGE_TIMEOUT_SECONDS
        — let another replica take the batch over and send it too, while this one still sent it."""
        stopping = asyncio.Event()
        keeper = asyncio.ensure_future(self._renewing(stopping))
        try:
            return await sending
        finally:
            stopping.set()
            if self._keeper_renews:
                # Never cut a renewal short, nor let it run on into the settlement: a stream's renewal
                # claims the batch's entries for its key, and run after a settlement it took the
                # refused ones back from their new batch.
                await asyncio.shield(keeper)
            else:
                keeper.cancel()

    async def _renewing(self, stopping: asyncio.Event) -> None:
        """Renew the held batch's lease every third of a lease until `stopping` (`_leased`); never at
        the same time as the batch moves under its split key (`_moving`)."""
        while True:
            await self.sleep(self.backoff.cap)
            async with self._moving:
                if stopping.is_set() or self.held is None:
                    return
                self._keeper_renews = True
                try:
                    await self._renew(self.held)
                except Exception:  # noqa: BLE001 - not an outage (a bug): the delivery goes on, logged
                    log.exception("could not renew the lease of a usage batch being delivered")
                finally:
                    self._keeper_renews = False
            if stopping.is_set():  # (the delivery ended during the renewal, and waits for it)
                return

    async def _send(self, batch: Batch) -> tuple[Batch, list[str]]:
        """Deliver `batch` (the held one): the batch as now held, and the request ids the sink refused. Whole under its key,
        unless it is under its split key or the sink refuses it whole for its content: then it is
        (moved under its split key first, so no takeover sends it whole again, and) delivered apart."""
        if not is_split_key(batch.key):
            try:
                return batch, await self.sink.deliver(batch.records, batch.key)
            except UsageBatchRefused as exc:
                if len(batch.items) == 1:  # refused alone: not applied, batched again later
                    log.warning("the usage sink refused a record", extra={
                        "batch": batch.key, "record_id": batch.items[0].record.request_id, "error": exc.message})
                    self._asked_to_wait(exc.resend_after)
                    await self._tell_others()
                    return batch, [batch.items[0].record.request_id]
                log.warning("the usage sink refused a batch whole; delivering its records one by one",
                            extra={"batch": batch.key, "count": len(batch.items), "error": exc.message})
                wait = exc.resend_after
            else:
                wait = None
            # Before any part is sent: a failure here leaves the batch under its key, sent whole again.
            async with self._moving:  # (not while the lease keeper renews it under its first key)
                batch = self.held = await self.outbox.split_up(batch)
            if wait is not None:
                # Refused with a Retry-After: no part goes before the wait is over (sent at once, the
                # parts were a burst of calls to a Zion that had just asked for none). A failure
                # asking for that wait, so the retry (or a takeover) sends the parts after it.
                raise GovernanceUnavailable("the usage sink refused a batch whole and asked for a wait; "
                                            "its records go one by one after it", resend_after=wait)
        return batch, await self._send_apart(batch)

    async def _send_apart(self, batch: Batch) -> list[str]:
        """Deliver the records of `batch` (under its split key) one by one, each under its part key,
        PARTS_AT_ONCE at a time; the ones answered before (a retry) are not sent again. Raises the
        first failure once the parts sent with it have answered (the batch is then retried); else
        returns the request ids the sink refused."""
        records: dict[str, UsageRecord] = {}  # one per request id (one id is one request)
        for item in batch.items:
            records.setdefault(item.record.request_id, item.record)
        waiting = [record for rid, record in records.items() if rid not in self._parts]
        renew_at = self.clock() + self.backoff.cap
        for start in range(0, len(waiting), PARTS_AT_ONCE):
            if start and self.clock() >= renew_at:  # keep the batch this deliverer's while its parts go
                await self._renew(batch)
                renew_at = self.clock() + self.backoff.cap
            sent = waiting[start : start + PARTS_AT_ONCE]
            answers = await asyncio.gather(*(self._send_part(batch.key, r) for r in sent), return_exceptions=True)
            failure: BaseException | None = None
            wait: float | None = None
            for record, answer in zip(sent, answers, strict=True):
                if isinstance(answer, BaseException):
                    failure = failure or answer
                else:
                    self._parts[record.request_id], asked = answer
                    if asked is not None:
                        wait = max(wait or 0.0, asked)
            if failure is not None:
                raise failure
            if wait is not None and start + PARTS_AT_ONCE < len(waiting):
                # A part refused with a Retry-After: the parts not yet sent go after the wait.
                raise GovernanceUnavailable("the usage sink refused a record and asked for a wait",
                                            resend_after=wait)
            if wait is not None:  # (the last parts: the next batch goes after the wait)
                self._asked_to_wait(wait)
                await self._tell_others()
        refused = [c.record.request_id for c in batch.items if self._parts.get(c.record.request_id)]
        log.info("usage batch delivered apart", extra={"batch": batch.key, "count": len(batch.items),
                                                         "refused": len(refused)})
        return refused

    async def _send_part(self, key: str, record: UsageRecord) -> tuple[bool, float | None]:
        """Deliver one record of a batch delivered apart under its part key: whether the sink refused
        it, and the wait it asked for with a refusal (Retry-After), if any."""
        try:
            refused = await self.sink.deliver([record], part_key(key, record.request_id))
        except UsageBatchRefused as exc:
            log.warning("the usage sink refused a record", extra={
                "batch": key, "record_id": record.request_id, "error": exc.message})
            return True, exc.resend_after
        return record.request_id in refused, None

    def _untaken(self, batch: Batch) -> set[str]:
        """The request ids of `batch` the sink may still have to take: all but the parts it accepted
        of a batch delivered apart (applied under their part keys)."""
        taken = {rid for rid, refused in self._parts.items() if not refused}
        return {c.record.request_id for c in batch.items} - taken

    async def _keep_held(self) -> None:
        """After a failed attempt at a batch claimed from memory (no durable outbox could take its
        records when they were written), store it under its key in the outbox table if it can be
        now, and let go of it: it is taken over from there, whole and under its key, when its retry
        is due. Held in memory until the sink answered, it was lost with the process (`kill -9`)
        however long the table had been back."""
        batch = self.held
        if batch is None or batch.backend != self.outbox.memory.backend or self._refused is not None:
            return
        if await self.outbox.keep(batch, self._untaken(batch), retry_in=max(self._not_before - self.clock(), 0.0)):
            self._release()

    def _pause(self, batch: Batch) -> None:
        """The sink refused every record of `batch`, one by one: its records wait for a new batch
        (settled), and the next claim waits as a retry after a failure would (growing while every
        batch is refused). Not a failure: that would keep this deliverer on the batch, under its
        key, for ever — two records the sink refuses, come back together, stopped every delivery
        of a replica. Paused, a sink that refuses everything (a database that takes no row) is
        asked at the backoff's pace, not once an interval."""
        self._refusals += 1
        delay = self.backoff.delay(self._refusals)
        self._not_before = self.clock() + delay
        log.warning("the usage sink refused every record of a batch; pausing before the next",
                    extra={"batch": batch.key, "count": len(batch.items), "retry_in_s": round(delay, 2)})

    async def _keep_lease(self) -> None:
        """Renew the held batch's lease once a third of it has passed since it was taken or last
        renewed: called between the records of a rescue (`DurableOutbox.rescue_orphans`), which can
        outlast a lease while the batch waits for its retry. Renewed only before the retry, after
        the rescue, it ran out meanwhile: another replica took the batch over and both sent it."""
        if self.held is not None and self.clock() - self._leased_at >= self.backoff.cap:
            await self._renew(self.held)

    async def _renew(self, batch: Batch) -> bool:
        """Extend the batch's lease, so no other deliverer takes it over meanwhile; False when the
        outbox no longer holds it under its key (True when the outbox could not say).

        Not held any more, it was taken over after its lease and settled by another deliverer —
        whole, or apart under its split key — and a retry lets it go (`deliver_once`). It was sent
        again under its key, as a replay for a sink that honours keys or the only copy of a stream
        Redis had lost: but a batch the other delivered apart was refused whole under that key,
        and a sink that remembers no refusal applied it, counting every record twice. A Redis that
        lost its data loses the records waiting in the stream all the same (see the README).
        """
        self._leased_at = self.clock()
        try:
            # For the wait the sink asked for, if longer than the lease: a takeover honours it too.
            return await self.outbox.renew(batch, hold=max(self._quiet_until - self.clock(), 0.0))
        except SentinelError:
            return True  # the lease may run out meanwhile: a takeover sends the same batch under the same key

    def _later(self, error: str, message: str, *, asked: float | None = None) -> None:
        """Back off before the next attempt at the held batch (`error`: what to log of the failure —
        never an exception's text that could carry a batch's records). `asked`: the wait the sink
        asked for (`resend_after`): nothing goes to the sink before it has passed — at least the
        backoff's delay (a `Retry-After: 0` never makes the deliverer spin), at most MAX_SINK_WAIT."""
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        if asked is not None:
            delay = max(delay, min(asked, MAX_SINK_WAIT))
            self._quiet_until = self.clock() + delay
        self._not_before = self.clock() + delay
        held = self.held.key if self.held is not None else None
        log.warning(message, extra={"error": error, "retry_in_s": round(delay, 2), "batch": held})

    def _asked_to_wait(self, asked: float | None) -> None:
        """The sink refused a record alone and asked for a wait with it (Retry-After): nothing goes to
        it before that wait has passed (at most MAX_SINK_WAIT), as after a failure asking for one."""
        if asked is not None:
            self._quiet_until = max(self._quiet_until, self.clock() + min(max(asked, 0.0), MAX_SINK_WAIT))

    async def _tell_others(self) -> None:
        """Share the wait the sink asked this deliverer for with every replica's (`DurableOutbox.quiet_sink`:
        with a stream outbox, a key in the shared store, only ever lengthened), so none sends its own
        batches meanwhile: a burst at a sink that had just asked for none."""
        if (wait := self._quiet_until - self.clock()) > 0:
            await self.outbox.quiet_sink(wait, self._name)

    def _release(self) -> None:
        self.held, self._refused, self.failures, self._not_before = None, None, 0, 0.0
        self._parts = {}

    async def _cycle(self) -> int | Next:
        """One round of the loop (`Periodic`): the next at once while a whole batch was delivered
        (more records wait), else after `interval`; a failure is backed off per batch (`_later`)."""
        delivered = 0
        try:
            delivered = await self.deliver_once()
            self.metrics.outbox_depth.set(await self.outbox.depth())
        except SentinelError as exc:
            log.warning("usage deliverer cycle failed", extra={"error": exc.message})
        return Next.NOW if delivered >= self.batch_size else 0

    def start(self) -> None:
        self._loop.start()

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop the loop, then deliver what is left; the rest stays in the outbox. `drain_timeout`
        bounds both: a cycle still waiting on the sink then is cut short (its batch stays in the
        outbox under its key), so the records only memory holds are stored before the process is
        killed, and whatever closes after the deliverer gets its turn."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        if self._loop.running:
            if not await self._loop.stop(drain_timeout):
                log.warning("a usage delivery was still under way at shutdown; cut short, its batch stays "
                            "in the outbox", extra={"batch": self.held.key if self.held else None})
        try:
            await asyncio.wait_for(self.drain(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            log.warning("usage outbox not fully drained at shutdown; the rest is delivered after restart")
        except Exception:  # noqa: BLE001 - whatever the drain met, what memory holds is kept below
            log.exception("usage outbox drain failed at shutdown")
        finally:
            try:
                await asyncio.wait_for(self._keep_memory_records(), KEEP_TIMEOUT)
            except TimeoutError:
                pass
            except Exception:  # noqa: BLE001 - the loss, if any, is logged below all the same
                log.exception("could not store what only memory holds at shutdown")
            if lost := self.outbox.orphans:
                log.error("usage records lost at shutdown: no durable outbox was reachable",
                          extra={"count": len(lost), "request_ids": [r.request_id for r in lost][:100]})

    async def _keep_memory_records(self) -> None:
        """At shutdown, store durably what only this process's memory holds — records that found no
        durable outbox, and a batch claimed from memory still undelivered — or say loudly what is lost."""
        held, self.held = self.held, None
        if held is not None and held.backend == self.outbox.memory.backend:  # undelivered
            # Not what the sink took already: the records of a batch delivered apart whose parts it
            # accepted (applied under their part keys), or all it accepted of an answered batch.
            # Sent again after the restart, under a new batch key, they would count twice.
            if self._refused is not None:
                await self.outbox.memory.settle(held, self._refused, retry_in=0.0)  # the refused wait again
            # Else stored under its key if the table takes it: sent after the restart under the same
            # key, a sink that had applied it (its answer lost) replays its answer. If not, its
            # records wait in memory again, stored below (under a new key) if an outbox takes them.
            elif not await self._kept(held, untaken := self._untaken(held)):
                await self.outbox.memory.settle(held, untaken, retry_in=0.0)
        await self.outbox.rescue_orphans(everything=True)

    async def _kept(self, batch: Batch, records: set[str]) -> bool:
        """At shutdown, `DurableOutbox.keep` within half of KEEP_TIMEOUT: a table that does not answer
        (a hung database) leaves the other half to store the batch's records elsewhere (the stream,
        under a new key) rather than lose them."""
        try:
            # Due once the wait the sink asked for is over (a timed-out batch it may still be applying):
            # due at once, the next process sent it meanwhile.
            wait = max(self._quiet_until - self.clock(), 0.0)
            return await asyncio.wait_for(self.outbox.keep(batch, records, retry_in=wait), KEEP_TIMEOUT / 2)
        except TimeoutError:
            log.warning("the outbox table did not store a usage batch held in memory in time; storing its "
                        "records elsewhere", extra={"batch": batch.key})
            return False

    async def drain(self) -> None:
        """Deliver batches until nothing deliverable is left or a delivery fails (a batch waiting
        for its retry is tried once more right away, unless the sink asked for a wait)."""
        self._not_before = 0.0
        while await self.deliver_once() > 0:
            pass
