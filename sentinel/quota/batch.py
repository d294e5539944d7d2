"""A usage batch: a durable unit of delivery whose key is chosen once.

Every outbox backend hands out records in `Batch`es. A batch's key is both where the backend
keeps the batch's membership (a column, a stream consumer name) and the `Idempotency-Key` the sink
receives, so every retry and every takeover after a crash sends exactly the same records under
exactly the same key. Records the sink refused one by one leave their batch and are batched again,
later, under a new key (the old key was applied for the others).

A batch the sink refused whole for its content (`UsageBatchRefused`: one record's value can do it)
is moved, before any of it is sent apart, under its split key (`split_key`: `<key>.split`) and its
records are then delivered one by one, each under its part key (`part_key`: `<split key>:<32 hex
digits of the SHA-256 of its request id>`). Both are derived, so every retry and every takeover
after a crash sends each record under the same part key; and since the split key is stored in the
outbox, a takeover never sends the batch whole again under its first key — a Zion that now
accepted it whole would count twice the records already applied under their part keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from sentinel.domain.usage import UsageRecord

log = logging.getLogger("sentinel.outbox")

KEY_PREFIX = "sentinel-usage-"


def new_batch_key() -> str:
    """A fresh, recognisable batch key: `sentinel-usage-<32 random hex digits>`."""
    return KEY_PREFIX + os.urandom(16).hex()


def is_batch_key(name: str) -> bool:
    """True for keys made by `new_batch_key` (anything else was never sent as a key)."""
    return name.startswith(KEY_PREFIX)


SPLIT_SUFFIX = ".split"
REFUSED_MARK = ".r"  # `<key>.r<n>`: a batch of records refused n times in a row (`refused_batch_key`)


def refused_batch_key(key: str) -> str:
    """A fresh key for the records the sink refused of the batch under `key`, marked with how often
    in a row they were: for an outbox that keeps no count per record (the stream), so their wait
    grows as `refused_wait` has it. `refused_times` reads the mark back."""
    return f"{new_batch_key()}{REFUSED_MARK}{refused_times(key) + 1}"


def refused_times(key: str) -> int:
    """How often in a row the records of the batch under `key` were refused (0: a fresh batch)."""
    base = key.removesuffix(SPLIT_SUFFIX)
    _, mark, times = base.rpartition(REFUSED_MARK)
    return int(times) if mark and times.isdigit() and len(times) < 4 else 0


def split_key(key: str) -> str:
    """The key `key`'s batch is held under once the sink refused it whole (its records delivered apart)."""
    return key if is_split_key(key) else key + SPLIT_SUFFIX


def is_split_key(key: str) -> bool:
    """True for a batch whose records are delivered one by one, each under its `part_key`."""
    return key.endswith(SPLIT_SUFFIX)


def part_key(key: str, request_id: str) -> str:
    """The key a record of a split batch is delivered under: derived from the batch's key and the
    record's request id (hashed: an id may hold a client's text, and keys stay short), so the same
    record of the same batch goes under the same key after any retry or takeover."""
    return f"{key}:{hashlib.sha256(request_id.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


# The longest a record the sink keeps refusing waits before it is batched again (`refused_wait`).
REFUSED_RETRY_CAP = 600.0


def refused_wait(retry_in: float, tries: int) -> float:
    """How long a record the sink refused waits before it is batched again, the `tries`-th time it
    was sent (1: the first): `retry_in`, doubling with each try after the first, up to
    REFUSED_RETRY_CAP (never below `retry_in`). The same wait each time, a record refused for good
    (an email Zion does not know, a value it rejects) was sent every `retry_in` for ever — with the
    records that came meanwhile, each such batch refused whole and delivered apart."""
    if tries <= 1 or retry_in <= 0:
        return max(retry_in, 0.0)
    return max(retry_in, min(retry_in * 2.0 ** min(tries - 1, 32), REFUSED_RETRY_CAP))


# What reading a stored record raises when it cannot be read (corrupted, or written by a newer Sentinel).
_UNREADABLE = (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError)


def decode_record(raw: Any, where: str) -> UsageRecord | None:
    """The usage record stored as `raw` (JSON bytes), or None — logged at error with what was stored,
    the only place it is then kept — when it cannot be read (corrupted, or written by a newer
    Sentinel): one such entry must not keep the records claimed with it from their sink forever."""
    try:
        return UsageRecord.from_json(orjson.loads(raw))
    except _UNREADABLE as exc:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw)
        log.error("an unreadable usage record was taken out of the outbox",
                  extra={"where": where, "error": type(exc).__name__, "stored": text[:4000]})
        return None


def started_since(raws: Iterable[Any], start: datetime) -> list[UsageRecord]:
    """The records stored as `raws` whose request started at or after `start` (a window's seed reads
    the outbox with it); one that cannot be read is skipped, not logged: the deliverer reports it
    when it claims it (`decode_record`)."""
    found: list[UsageRecord] = []
    for raw in raws:
        try:
            record = UsageRecord.from_json(orjson.loads(raw))
        except _UNREADABLE:
            continue
        if record.started_at >= start:
            found.append(record)
    return found


@dataclass(frozen=True)
class Claimed:
    """One record of a batch; `ref` identifies it in its backend (row id, stream entry id)."""

    backend: str
    ref: str
    record: UsageRecord


@dataclass(frozen=True)
class Batch:
    """Records claimed together from one backend under one key, delivered and settled together."""

    backend: str
    key: str
    items: tuple[Claimed, ...]

    @property
    def records(self) -> list[UsageRecord]:
        return [item.record for item in self.items]

    def split(self, refused: Collection[str]) -> tuple[list[Claimed], list[Claimed]]:
        """(accepted, refused) items, by the request ids the sink refused."""
        accepted = [c for c in self.items if c.record.request_id not in refused]
        declined = [c for c in self.items if c.record.request_id in refused]
        return accepted, declined


class OutboxBackend(Protocol):
    """One place records wait for delivery (a Redis stream, the SQL table, process memory)."""

    backend: str

    async def put(self, record: UsageRecord) -> None:
        """Store a record durably (or raise StoreUnavailable / GovernanceUnavailable)."""

    async def claim(self, limit: int) -> Batch | None:
        """A batch to deliver: first one whose holder's lease ran out (taken over whole, same key,
        same records), else up to `limit` waiting records under a new key; None when nothing waits."""

    async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
        """Extend the lease on `batch`; False when none of it is held under its key any more
        (another holder settled it). `hold`: seconds no other deliverer may take the batch over even
        should this one die, when longer than the lease — the wait the sink asked for (Retry-After,
        a timed-out call): a takeover after the lease sent it before that wait was over."""

    async def settle(self, batch: Batch, refused: Collection[str], retry_in: float) -> None:
        """The sink answered: remove the accepted records; the `refused` request ids leave the batch
        and wait (at least `retry_in` seconds; longer each time the same record is refused again, see
        `refused_wait`) to be batched again under a new key."""

    async def split_up(self, batch: Batch) -> Batch:
        """Move `batch`'s records, still held under its key, under `split_key(batch.key)` (lease renewed),
        in one step; the batch under that key. Should the outbox not hold them under the key any
        more (another holder moved or settled them), nothing moves and the batch is returned all the
        same: its records go under their part keys, as any other holder's would."""

    async def depth(self) -> int:
        """Records waiting or held (not yet settled)."""
