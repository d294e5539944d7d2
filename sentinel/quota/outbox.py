"""The durable usage outbox: a record is stored here before its request finishes.

Records are delivered in batches (`sentinel.quota.batch`): a batch's key is chosen once, when it is
first claimed, and every retry or takeover re-sends exactly its records under that key. Backends:

- `RedisStreamOutbox` (`outbox_stream.py`): a stream in the shared store, batches as consumers of
  one group; used when the store is shared by every replica (Redis, Redis Cluster).
- `SqlOutbox` (`outbox_sql.py`): the `usage_outbox` table, batches as a `batch_key` column.
- `MemoryOutbox`: this process's memory, for records that could be stored nowhere else.

`DurableOutbox` writes to the stream when there is one, to the database when the stream is
unavailable, and keeps a record in memory only when both fail (logged; moved to a durable backend
as soon as one is back; a batch already being delivered from memory, to the table under its key:
`keep`). It claims one batch at a time, from one backend, taking turns. What memory
holds is bounded by `max_unstored` (`SENTINEL_MAX_UNSTORED_RECORDS`): while that many are held the
outbox is `full`, and the meter refuses new metered requests before admission (503
`usage_unrecordable`) instead of serving requests whose usage it could not keep; what is held is
never dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, StoreUnavailable, UsageBatchRefused
from sentinel.observability.logging import Repeated
from sentinel.quota.batch import Batch, Claimed, OutboxBackend, new_batch_key, refused_wait, split_key
from sentinel.quota.group_commit import GroupCommit
from sentinel.quota.outbox_sql import SqlOutbox
from sentinel.quota.outbox_stream import RedisStreamOutbox
from sentinel.quota.sink import UsageSink

__all__ = ["Batch", "Claimed", "DurableOutbox", "LedgerOutbox", "MemoryOutbox", "OutboxBackend", "RedisStreamOutbox", "SqlOutbox"]

log = logging.getLogger("sentinel.outbox")

RESCUE_AT_ONCE = 256  # records memory holds that are stored at the same time (`rescue_orphans`)


class MemoryOutbox:
    """Records kept in this process (lost if it dies): waiting ones, and batches being delivered."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._waiting: list[tuple[float, UsageRecord]] = []  # (not before, record)
        self._held: dict[str, Batch] = {}
        self._tries: dict[str, int] = {}  # request id -> times the sink refused it (`refused_wait`)
        # Ids of waiting records a durable outbox is being asked to store (`DurableOutbox._rescue`):
        # never claimed meanwhile, or one sent from here would be sent again from where it was stored.
        self.storing: set[int] = set()

    @property
    def records(self) -> list[UsageRecord]:
        held = [c.record for batch in self._held.values() for c in batch.items]
        return [record for _, record in self._waiting] + held

    @property
    def count(self) -> int:
        """How many records this process holds (waiting, and in batches being delivered), without
        listing them: asked before every metered request's admission."""
        return len(self._waiting) + sum(len(batch.items) for batch in self._held.values())

    def due(self, *, everything: bool = False) -> list[UsageRecord]:
        """The waiting records that may be stored or batched now (`everything`: those waiting for a
        later retry too), left in place: `discard` them once they are stored elsewhere. Not those
        being stored now (`storing`)."""
        now = float("inf") if everything else self.clock()
        return [record for at, record in self._waiting if at <= now and id(record) not in self.storing]

    def discard(self, records: list[UsageRecord]) -> None:
        """Forget waiting records (stored elsewhere now), in one pass."""
        if records:
            gone = {id(record) for record in records}
            self._waiting = [(at, kept) for at, kept in self._waiting if id(kept) not in gone]
            for record in records:
                self._tries.pop(record.request_id, None)

    async def put(self, record: UsageRecord) -> None:
        self._waiting.append((0.0, record))

    async def claim(self, limit: int) -> Batch | None:
        now = self.clock()
        chosen = [n for n, (at, r) in enumerate(self._waiting) if at <= now and id(r) not in self.storing]
        chosen = chosen[: max(limit, 0)]
        if not chosen:
            return None
        records = [self._waiting[n][1] for n in chosen]
        taken = set(chosen)
        self._waiting = [w for n, w in enumerate(self._waiting) if n not in taken]
        key = new_batch_key()
        batch = Batch(self.backend, key, tuple(Claimed(self.backend, r.request_id, r) for r in records))
        self._held[key] = batch
        return batch

    async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
        return batch.key in self._held

    async def split_up(self, batch: Batch) -> Batch:
        apart = Batch(batch.backend, split_key(batch.key), batch.items)
        if self._held.pop(batch.key, None) is not None:
            self._held[apart.key] = apart
        return apart

    def forget(self, batch: Batch) -> None:
        """Let go of a batch being delivered from here (stored elsewhere now, under its key)."""
        self._held.pop(batch.key, None)
        for item in batch.items:
            self._tries.pop(item.record.request_id, None)

    async def settle(self, batch: Batch, refused: Collection[str], retry_in: float) -> None:
        self._held.pop(batch.key, None)
        accepted, declined = batch.split(refused)
        for item in accepted:
            self._tries.pop(item.record.request_id, None)
        now = self.clock()
        for item in declined:
            tries = self._tries[item.record.request_id] = self._tries.get(item.record.request_id, 0) + 1
            self._waiting.append((now + refused_wait(retry_in, tries), item.record))

    async def depth(self) -> int:
        return len(self.records)


class LedgerOutbox:
    """Records written straight into their sink (the built-in ledger) while the request finishes.

    For the built-in ledger on one process (no shared store) an outbox would only be a second copy:
    the ledger itself is durable and exactly-once by request id. Concurrent records are written
    together (group commit). Nothing is ever waiting here, so there is nothing to claim.
    """

    backend = "ledger"

    def __init__(self, sink: UsageSink) -> None:
        self.sink = sink
        self._group: GroupCommit[UsageRecord] = GroupCommit(self._write)

    async def _write(self, records: list[UsageRecord]) -> None:
        refused = await self.sink.deliver(records, new_batch_key())
        if refused:  # a value the database cannot store: no outage, the outbox table may take it
            raise UsageBatchRefused(f"the usage sink refused {len(refused)} records")

    async def put(self, record: UsageRecord) -> None:
        await self._group.submit(record)

    async def claim(self, limit: int) -> Batch | None:
        return None

    async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
        return False

    async def split_up(self, batch: Batch) -> Batch:
        raise ValueError("the ledger outbox holds no batches")

    async def settle(self, batch: Batch, refused: Collection[str], retry_in: float) -> None:
        raise ValueError("the ledger outbox holds no batches")

    async def depth(self) -> int:
        return 0


class DurableOutbox:
    """The stream first (when there is one), the database when it is down, memory as the last resort.

    With `ledger` (the built-in ledger on one process), records go straight to the ledger instead of
    the stream or table; the table is still read, for records an earlier configuration left there.
    """

    def __init__(
        self, sql: SqlOutbox, redis: RedisStreamOutbox | None = None, *, ledger: LedgerOutbox | None = None,
        max_unstored: int | None = None, on_unstored: Callable[[int], None] | None = None,
    ) -> None:
        self.sql = sql
        self.redis = redis
        self.ledger = ledger
        self.memory = MemoryOutbox()
        # Records only memory may hold before the outbox is `full` (None: no bound); `on_unstored`
        # is told their count whenever it changes (the gauge `sentinel_usage_unstored_records`).
        self.max_unstored = max_unstored
        self.on_unstored = on_unstored
        self._repeated = Repeated(log)  # an outage's line: once a minute, not once a record
        self._turn = 0
        self._was_full = False

    @property
    def parts(self) -> list[OutboxBackend]:
        """The durable backends, in the order `put` tries them."""
        return [p for p in (self.ledger, self.redis, self.sql) if p is not None]

    @property
    def orphans(self) -> list[UsageRecord]:
        """Records only this process's memory holds."""
        return self.memory.records

    @property
    def unstored(self) -> int:
        """How many records only this process's memory holds (`orphans`, not listed)."""
        return self.memory.count

    @property
    def full(self) -> bool:
        """Whether memory holds `max_unstored` records or more: a new request's record might find no
        room but memory, and memory has none left (see `QuotaMeter.admit`)."""
        return self.max_unstored is not None and self.memory.count >= self.max_unstored

    def _counted(self) -> None:
        """Report the count of records memory holds (it may have changed), and say when the outbox
        has room again after it was full."""
        if self.on_unstored is not None:
            self.on_unstored(self.memory.count)
        if self.full:
            self._was_full = True
        elif self._was_full:
            self._was_full = False
            self._repeated.log(logging.INFO, "usage records held in memory are below SENTINEL_MAX_UNSTORED_RECORDS "
                               "again; metered requests are admitted", extra={"held": self.memory.count},
                               key="room")

    async def put(self, record: UsageRecord) -> None:
        """Store `record` durably, else keep it in memory — always, also beyond `max_unstored` (the
        request was admitted before the limit was reached: its record is never dropped)."""
        if await self._store_durably(record):
            return
        await self.memory.put(record)
        self._counted()
        log.error("usage record kept in memory until an outbox is reachable", extra={"record_id": record.request_id})

    async def _store_durably(self, record: UsageRecord) -> bool:
        """Whether a durable backend took `record`. Any failure of one moves on to the next (and at the
        end to memory): an outage, or anything else (a writer closed under the write at shutdown
        raised RuntimeError, and the record was lost without a word), then logged with its traceback.
        The ledger and the outbox table are in one database: when the ledger finds it unreachable,
        the table is not tried (on a hung database that was a second wait of up to
        DATABASE_TIMEOUT_SECONDS twice, per record, before memory)."""
        database_down = False
        for part in self.parts:
            if database_down and part is self.sql:
                continue
            try:
                await part.put(record)
                return True
            except (StoreUnavailable, GovernanceUnavailable) as exc:
                self._repeated.warning("usage outbox %s unavailable: %s", part.backend, exc.message, key=part.backend)
                if part is self.ledger and not isinstance(exc, UsageBatchRefused):
                    database_down = True
            except Exception:  # noqa: BLE001 - not an outage (a bug, a closed writer): the next backend all the same
                log.exception("usage outbox %s failed to store a record", part.backend,
                              extra={"record_id": record.request_id})
        return False

    async def rescue_orphans(
        self, *, everything: bool = False, between: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Store durably the records that could be stored nowhere earlier, RESCUE_AT_ONCE at a time
        (concurrently: the outbox's group commit writes them together; one by one, 100,000 records
        took ~80 s on SQLite, and a shutdown, which gives this 5 s, stored ~6,000 and lost the
        rest), each leaving memory only once stored (a cancelled rescue loses none, and a record
        whose write was under way leaves memory when it ends); a group that still finds no durable
        outbox for one of them ends the attempt until the next. Batches being delivered from memory
        stay where they are; `everything`: records waiting for a later retry too. `between` is
        awaited before each group (the deliverer keeps the lease of the batch it holds)."""
        due = self.memory.due(everything=everything)
        stored: list[UsageRecord] = []  # left memory in one pass at the end (a pass per group: O(n²))
        try:
            for start in range(0, len(due), RESCUE_AT_ONCE):
                if between is not None:
                    await between()
                group = due[start : start + RESCUE_AT_ONCE]
                if len(await self._rescue(group, stored)) < len(group):
                    return
        finally:
            self.memory.discard(stored)
            if stored:
                self._counted()

    async def _rescue(self, records: list[UsageRecord], stored: list[UsageRecord]) -> list[UsageRecord]:
        """Store `records` concurrently (`rescue_orphans`), adding those stored to `stored`; those
        stored. One whose write is still under way when this call is cancelled leaves memory once
        it is stored (a group commit is not cut), and until then no other rescue stores it again
        (twice in the stream, it was delivered twice)."""
        tasks = [asyncio.ensure_future(self._store_orphan(record)) for record in records]
        self.memory.storing.update(id(record) for record in records)
        done: list[UsageRecord] = []
        try:
            await asyncio.wait(tasks)
        finally:
            for task, record in zip(tasks, records, strict=True):
                if not task.done():
                    task.add_done_callback(functools.partial(self._rescued_late, record))
                    continue
                self.memory.storing.discard(id(record))
                if not task.cancelled() and task.result():
                    done.append(record)
            stored += done
        return done

    async def _store_orphan(self, record: UsageRecord) -> bool:
        try:
            return await self._store_durably(record)
        except Exception:  # noqa: BLE001 - no outage (a value refused): kept in memory, logged
            log.exception("a usage record could not be stored durably", extra={"record_id": record.request_id})
            return False

    def _rescued_late(self, record: UsageRecord, task: asyncio.Future[bool]) -> None:
        """A record whose write ended after its rescue was cancelled: out of memory if it was stored."""
        self.memory.storing.discard(id(record))
        if not task.cancelled() and task.exception() is None and task.result():
            self.memory.discard([record])
            self._counted()

    async def keep(self, batch: Batch, records: Collection[str], retry_in: float) -> bool:
        """Move a batch being delivered from memory, of it the records of `records` (request ids: those
        the sink may still have to take), to the outbox table under its key, taken over whole (and
        sent again under that key) once `retry_in` seconds have passed; whether it was moved. A batch
        under its key survives the process: sent again under a new key (the only way memory's
        records could be stored otherwise), a sink that had applied it with its answer lost (Zion)
        counted it twice. Only the table can hold a batch under its key (a stream's batch is the
        consumer that read it); when it is unreachable the batch stays in memory."""
        if batch.backend != self.memory.backend:
            return False
        kept = Batch(self.sql.backend, batch.key, tuple(c for c in batch.items if c.record.request_id in records))
        try:
            await self.sql.adopt(kept, retry_in)
        except (StoreUnavailable, GovernanceUnavailable) as exc:
            self._repeated.warning("usage outbox %s unavailable: %s", self.sql.backend, exc.message, key=self.sql.backend)
            return False
        except Exception:  # noqa: BLE001 - not an outage (a bug): the batch stays in memory, logged
            log.exception("a usage batch held in memory could not be stored", extra={"batch": batch.key})
            return False
        self.memory.forget(batch)
        self._counted()
        log.info("a usage batch held in memory was stored under its key", extra={"batch": batch.key,
                                                                                "count": len(kept.items)})
        return True

    async def claim(self, limit: int) -> Batch | None:
        """One batch from one backend (each backend's turn comes in rotation), or None."""
        sources: list[OutboxBackend] = [*self.parts, self.memory]
        start, self._turn = self._turn, self._turn + 1
        for n in range(len(sources)):
            part = sources[(start + n) % len(sources)]
            try:
                batch = await part.claim(limit)
            except (StoreUnavailable, GovernanceUnavailable) as exc:
                log.debug("usage outbox %s unavailable for claims: %s", part.backend, exc.message)
                continue
            if batch is not None:
                return batch
        return None

    def _owner(self, batch: Batch) -> OutboxBackend:
        for part in (*self.parts, self.memory):
            if part.backend == batch.backend:
                return part
        raise ValueError(f"no outbox backend {batch.backend!r}")

    async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
        """Extend `batch`'s lease (for `hold` seconds at least: see `OutboxBackend.renew`); False when
        another holder has settled it meanwhile."""
        return await self._owner(batch).renew(batch, hold)

    async def split_up(self, batch: Batch) -> Batch:
        """Hold `batch` under its split key from now on (see `OutboxBackend.split_up`)."""
        return await self._owner(batch).split_up(batch)

    async def settle(self, batch: Batch, refused: Collection[str] = (), retry_in: float = 30.0) -> None:
        """Remove the accepted records of `batch`; refused ones are batched again later, under a new key."""
        await self._owner(batch).settle(batch, refused, retry_in)
        if batch.backend == self.memory.backend:
            self._counted()

    async def sink_quiet(self, me: str) -> float:
        """Seconds left of the wait the usage sink asked another replica's deliverer for (`quiet_sink`;
        `me`: the deliverer asking, whose own wait it honours by its own clock): kept in the shared
        store with a stream outbox (one read), else per process (0 here). A store that does not
        answer is no wait: delivery goes on, each deliverer honouring its own."""
        if self.redis is None:
            return 0.0
        try:
            return await self.redis.sink_quiet(me)
        except StoreUnavailable:
            return 0.0

    async def quiet_sink(self, wait: float, me: str) -> None:
        """Tell every replica's deliverer the sink asked `me` for `wait` seconds without a call (with
        a stream outbox: the shared store; else nothing to tell). A store that does not answer: the
        deliverer that was asked honours the wait alone."""
        if self.redis is None:
            return
        try:
            await self.redis.quiet_sink(wait, me)
        except StoreUnavailable:
            pass

    async def depth(self) -> int:
        total = await self.memory.depth()
        for part in self.parts:
            try:
                total += await part.depth()
            except (StoreUnavailable, GovernanceUnavailable):
                pass
        return total
