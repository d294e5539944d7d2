"""The stream usage outbox: records in a store stream, batches as consumers of one group.

It uses nothing but the Store Protocol (Redis, Redis Cluster, or the in-memory twin in tests).
A batch key is the consumer name its entries were read under, so the stream's pending-entries list
remembers every entry's batch, across crashes and replicas:

- claim: look for a batch left idle longer than the lease (its holder crashed or hangs, or it
  holds records the sink refused) and take it over whole, under the same consumer name, so it is
  re-sent with the same records and the same key; the takeover checks the entries are still that
  batch's and still idle, atomically, so of two replicas racing for it only one gets it. Or read up
  to `limit` new entries under a fresh key — and check the key holds just those: a read that ran
  twice (a store client retrying it after a lost reply) left others under it, which go to a fresh
  key of their own, so a key never stands for two sets of records. After a takeover the next claim
  reads new entries first: records a sink keeps refusing never starve the new ones. A batch its
  holder renewed with a `hold` (the sink asked to wait longer than a lease) is not taken over
  before that wait is over: a pending entry's idle time cannot be set in the future, so the wait is
  a key of its own (`hold:<batch key>`, expiring when it ends), checked before a takeover.
- settle: acknowledge and delete the accepted entries, hand refused ones to a fresh consumer (a new
  batch, picked up once its lease runs out — later each time they are refused again in a row) and forget the old consumer — one atomic step, so a
  crash never leaves a part of a batch under its old key.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime

import orjson

from sentinel.domain.usage import UsageRecord
from sentinel.quota.batch import (
    Batch,
    Claimed,
    decode_record,
    is_batch_key,
    new_batch_key,
    refused_batch_key,
    refused_times,
    refused_wait,
    split_key,
    started_since,
)
from sentinel.store import Store, StreamEntry
from sentinel.store.base import LocalOps, PendingEntry, Script

log = logging.getLogger("sentinel.outbox")

# A batch is never larger than the deliverer's batch size; this only bounds one takeover call.
TAKEOVER_CAP = 10_000
# Pages of idle entries (a claim's `limit` each) one claim looks through for a batch to take over,
# past those held for a wait; the next claim goes on from where it stopped.
TAKEOVER_PAGES = 4
# `waiting_since` reads the stream from this long before a window began: Redis's clock (an entry's
# id) may run behind Sentinel's (a request's `started_at`).
STREAM_CLOCK_SLACK_MS = 60_000

_LENGTHEN_LUA = """
local want = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) >= want then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', want)
return 1
"""


def _lengthen_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    want = int(args[0])
    if ops.pttl(keys[0]) >= want:
        return 0
    ops.set(keys[0], args[1].encode(), ttl=want / 1000)
    return 1


# Make KEYS[1] hold ARGV[2] (who asked) for ARGV[1] ms from now, unless it already lives that long:
# a wait only ever lengthened (run twice, the same outcome). 1 when lengthened, else 0.
LENGTHEN = Script(name="lengthen", lua=_LENGTHEN_LUA, local=_lengthen_local)

_LEFT_LUA = """
local who = redis.call('GET', KEYS[1])
if not who or who == ARGV[1] then return 0 end
return math.max(redis.call('PTTL', KEYS[1]), 0)
"""


def _left_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    who = ops.get(keys[0])
    if who is None or who == args[0].encode():
        return 0
    return max(ops.pttl(keys[0]), 0)


# The ms KEYS[1] has left to live, 0 when it is missing or holds ARGV[1] (the asker's own wait).
LEFT = Script(name="left", lua=_LEFT_LUA, local=_left_local)


class RedisStreamOutbox:
    """The usage stream `sentinel:usage:outbox`, read by the consumer group `deliverers`."""

    backend = "redis"
    KEY = "sentinel:usage:outbox"  # entries already in production streams stay readable
    GROUP = "deliverers"
    # The wait the usage sink asked for (Retry-After, a timed-out call), shared by every replica's
    # deliverer: a key living as long as the wait (`quiet_sink`, `sink_quiet`).
    QUIET_KEY = "sentinel:usage:quiet-until"

    def __init__(
        self, store: Store, *, lease_seconds: float = 30.0, replicas: int = 0, replica_timeout_ms: int = 100
    ) -> None:
        self.store = store
        self.lease_ms = int(lease_seconds * 1000)
        self.replicas = replicas
        self.replica_timeout_ms = replica_timeout_ms
        self._new_first = False  # after a takeover, new entries come first
        self._idle_after: str | None = None  # where the next takeover looks on from (`_take_over`)

    async def put(self, record: UsageRecord) -> None:
        await self.store.stream_add(
            self.KEY,
            {"r": orjson.dumps(record.to_json())},
            replicas=self.replicas,
            replica_timeout_ms=self.replica_timeout_ms,
            group=self.GROUP,
        )

    async def claim(self, limit: int) -> Batch | None:
        if limit <= 0:
            return None
        if self._new_first:
            self._new_first = False
            return await self._read_new(limit) or await self._take_over(limit)
        taken = await self._take_over(limit)
        if taken is not None:
            self._new_first = True
            return taken
        return await self._read_new(limit)

    async def _read_new(self, limit: int) -> Batch | None:
        key = new_batch_key()
        entries = await self.store.stream_read(self.KEY, self.GROUP, key, limit)
        if not entries:
            # Forget the consumer the read made. Should it hold entries all the same (a read whose
            # reply was lost), they stay under `key`, never sent: taken over whole after a lease.
            await self.store.stream_settle(self.KEY, self.GROUP, key)
            return None
        await self._keep_only(key, entries)
        return await self._batch(key, entries)

    async def _keep_only(self, key: str, entries: Sequence[StreamEntry]) -> None:
        """Make `key` hold exactly `entries`, so one key never stands for two sets of records.

        A read that ran twice under `key` (a client retrying it after its reply was lost) left
        more pending under it than this reply names. Sent under `key` now, those others would go
        under the same key after a lease, and a sink that honours keys would answer for these
        entries and never apply them. They go to a fresh key of their own instead (taken over
        after a lease). Should this step fail, nothing was sent: `key` is taken over whole later.
        """
        read = {entry.id for entry in entries}
        held = await self.store.stream_idle(
            self.KEY, self.GROUP, min_idle_ms=0, count=TAKEOVER_CAP, consumer=key
        )
        others = [pending.id for pending in held if pending.id not in read]
        if others:
            log.warning("a stream read ran twice; %d entries moved to a batch of their own", len(others))
            await self.store.stream_settle(self.KEY, self.GROUP, key, retry=others, retry_to=new_batch_key())

    async def _take_over(self, limit: int) -> Batch | None:
        """A batch idle past its lease, taken over (see `_take_page`). The idle entries are looked
        through a page (`limit`) at a time, up to TAKEOVER_PAGES a claim, the next claim going on
        after the last page seen (from the start again once one found the end): looking only at the
        oldest page, a page of records held for a wait (refused again and again: an email Zion no
        longer knows) kept every batch behind them — a dead deliverer's — from its takeover, its
        records undelivered for as long as those were refused."""
        for _ in range(TAKEOVER_PAGES):
            after = self._idle_after
            idle = await self.store.stream_idle(
                self.KEY, self.GROUP, min_idle_ms=self.lease_ms, count=limit, after=after
            )
            self._idle_after = idle[-1].id if len(idle) >= limit else None
            taken = await self._take_page(idle, limit)
            if taken is not None:
                return taken
            if self._idle_after is None:
                return None  # looked through to the last idle entry: the next claim starts again
        return None

    async def _take_page(self, idle: Sequence[PendingEntry], limit: int) -> Batch | None:
        """Of the batches of `idle` (pending entries idle past the lease), the first not held for a
        wait, taken over whole under its key (entries read under another name: up to `limit` of
        them, under a new key); None when there is none."""
        owners = list(dict.fromkeys(pending.consumer for pending in idle))
        held = await self._held(owners)
        for owner in owners:
            if owner in held:
                continue  # asked to wait (`renew`'s hold): not sent before the wait is over
            if is_batch_key(owner):
                # Whole or not at all: a part re-sent under the batch's key would get the sink's
                # remembered answer for the whole batch.
                key, count = owner, TAKEOVER_CAP
            else:
                # Read under another name (an older Sentinel, an operator): never sent under that
                # name, and maybe huge, so it is batched afresh.
                key, count = new_batch_key(), limit
            mine = await self.store.stream_idle(
                self.KEY, self.GROUP, min_idle_ms=self.lease_ms, count=count, consumer=owner
            )
            entries = await self.store.stream_reclaim(
                self.KEY, self.GROUP, owner, [p.id for p in mine], min_idle_ms=self.lease_ms, to=key
            )
            if key != owner or not entries:
                await self.store.stream_settle(self.KEY, self.GROUP, owner)  # forgotten once it holds nothing
            if entries:
                return await self._batch(key, entries)
        return None

    async def _held(self, owners: Sequence[str]) -> set[str]:
        """Of the batches `owners`, those still held for a wait (`hold_key`): one read for them all,
        made only when some batch is idle past its lease."""
        keys = [owner for owner in owners if is_batch_key(owner)]
        if not keys:
            return set()
        found = await self.store.get_many([self.hold_key(key) for key in keys])
        return {key for key, hold in zip(keys, found, strict=True) if hold is not None}

    async def _batch(self, key: str, entries: Sequence[StreamEntry]) -> Batch | None:
        """The entries as a batch; unreadable ones are logged and acknowledged (`decode_record`)."""
        items, unreadable = [], []
        for entry in entries:
            record = decode_record(entry.fields.get("r"), f"stream entry {entry.id}")
            if record is None:
                unreadable.append(entry.id)
            else:
                items.append(Claimed(self.backend, entry.id, record))
        if unreadable:
            await self.store.stream_settle(self.KEY, self.GROUP, key, done=unreadable)
        return Batch(self.backend, key, tuple(items)) if items else None

    async def sink_quiet(self, me: str) -> float:
        """Seconds left of the wait the usage sink asked some replica's deliverer for (`QUIET_KEY`),
        0 when none or when `me` asked for it last (that deliverer honours its own): one round trip."""
        return int(await self.store.run(LEFT, [self.QUIET_KEY], [me])) / 1000

    async def quiet_sink(self, wait: float, me: str) -> None:
        """Tell every replica's deliverer the sink asked `me` for `wait` seconds without a call:
        `QUIET_KEY` lives that long from now, never shortened by a shorter wait told meanwhile."""
        if (ms := int(wait * 1000)) > 0:
            await self.store.run(LENGTHEN, [self.QUIET_KEY], [ms, me])

    def hold_key(self, key: str) -> str:
        """Where the wait a batch's holder was asked for is kept (`renew`'s `hold`), until it ends."""
        return f"{self.KEY}:hold:{key}"

    async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
        """As `OutboxBackend.renew`; a `hold` longer than the lease is kept beside the stream (written
        first: the entries are never idle past a lease without it), so a takeover after a crash
        honours the wait — an extra write only while the sink asks for a wait."""
        if hold * 1000 > self.lease_ms:
            await self.store.set(self.hold_key(batch.key), b"1", ttl=hold)
        ids = [c.ref for c in batch.items]
        return bool(await self.store.stream_reclaim(self.KEY, self.GROUP, batch.key, ids, min_idle_ms=0))

    async def split_up(self, batch: Batch) -> Batch:
        """As `OutboxBackend.split_up`: the entries go to the consumer named by the split key and the
        batch's consumer is forgotten, in one atomic step (`stream_settle`)."""
        apart = Batch(batch.backend, split_key(batch.key), batch.items)
        if apart.key != batch.key:
            await self.store.stream_settle(
                self.KEY, self.GROUP, batch.key, retry=[c.ref for c in batch.items], retry_to=apart.key
            )
        return apart

    async def settle(self, batch: Batch, refused: Collection[str], retry_in: float) -> None:
        """As `OutboxBackend.settle`; refused records wait one lease (not `retry_in`) before their
        new batch is taken up the first time, doubling each time they are refused again in a row
        (`refused_wait`, up to 10 minutes; counted in the new batch's key: `refused_batch_key`), the
        wait past the lease held beside the stream (`hold_key`: a write only on such a refusal).
        One lease every time, records refused for good went back every 30 s for ever."""
        accepted, declined = batch.split(refused)
        retry_to = refused_batch_key(batch.key) if declined else None
        await self.store.stream_settle(
            self.KEY,
            self.GROUP,
            batch.key,
            done=[c.ref for c in accepted],
            retry=[c.ref for c in declined],
            retry_to=retry_to,
        )
        if retry_to is not None and (wait := refused_wait(self.lease_ms / 1000, refused_times(retry_to))) * 1000 > self.lease_ms:
            # Written after: a crash between them leaves the records a lease's wait, as before.
            await self.store.set(self.hold_key(retry_to), b"1", ttl=wait)

    async def waiting_since(self, start: datetime) -> list[UsageRecord]:
        """The records on the stream (not delivered yet, or delivered and not yet deleted: the caller
        drops what its sink holds) whose request started at or after `start`, in pages of 1,000
        (XRANGE from `start` less STREAM_CLOCK_SLACK: an entry's id is Redis's time of its adding,
        never before its request started but for the clocks' skew). A record that cannot be read is
        skipped (the deliverer reports it)."""
        since_ms = int(start.timestamp() * 1000) - STREAM_CLOCK_SLACK_MS
        after: str | None = f"{since_ms}-0" if since_ms > 0 else None
        waiting: list[UsageRecord] = []
        while True:
            page = await self.store.stream_range(self.KEY, after=after, count=1000)
            waiting += started_since((entry.fields.get("r") for entry in page), start)
            if len(page) < 1000:
                return waiting
            after = page[-1].id

    async def depth(self) -> int:
        return await self.store.stream_len(self.KEY)
