"""A shared store (Redis, Redis Cluster) that lost its data is noticed and its quota counters are seeded
again from the usage ledger (README, Quotas).

Redis restarted without AOF, a FLUSHALL, a failover to a replica that had not synced: every quota
counter is gone (on a Redis Cluster, those of one shard), and each user could use a plan's worth again
in the windows under way. Every gateway writes a marker with no TTL (`EPOCH_KEY`, SET NX of a random
value; on a Cluster one on each primary, `Store.shard_keys`) at start and keeps the value the store
holds; every `interval` seconds it reads them back (one GET, one MGET a primary on a Cluster: nothing
per request). One missing, or another value (another gateway noticed first and wrote its own), means
the store (or that shard) lost what it held:
logged at ERROR once per loss and process, counted (`sentinel_store_data_lost_total`), the marker
written again, and every window of every user's plan seeded from the ledger, the SQL outbox and the
usage stream (`WindowSeeder.seed_all`; raise-only, so several gateways seeding one loss is harmless),
retried with backoff until done. A start that finds no marker (the first start on this Redis, or one
that lost its data while no gateway ran) seeds the same way, logged at WARNING.

QUOTA_FAILURE_MODE=local: what this process counted in-process while Redis was away was stored in the
outbox as it was counted; on a loss it is dropped (`LocalLimiter.drop_settled`) before the seed counts
it from there, not handed back after it (counted twice) — with a seed only (GOVERNANCE=zion: handed
back, as nothing else counts them). The meter reads the marker before each
hand-back (`check`), so a gateway whose loop has not run yet drops rather than hands back too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from sentinel.backoff import Backoff
from sentinel.domain.plans import Plan
from sentinel.errors import StoreUnavailable
from sentinel.governance.plans import PlanRepository
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.periodic import Periodic
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.services.window_seed import WindowSeeder
from sentinel.store import Store

log = logging.getLogger("sentinel.quota")

EPOCH_KEY = "sentinel:epoch"  # a Redis Cluster holds one a primary: `Store.shard_keys`
INTERVAL = 5.0  # how often a gateway reads the marker
RETRY = Backoff(base=1.0, cap=60.0)  # while a seed is not done
STOP_TIMEOUT = 5.0
LOST = ("the shared store (Redis) lost its data (its marker %s is gone or was replaced): every quota window "
        "counted from 0; %s")
UNMARKED = ("the shared store (Redis) holds no marker %s: the first start on it, or it lost its data while no "
            "gateway ran; %s")
SEEDING = "seeding every user's quota windows from the usage ledger"
NOT_SEEDING = "not seeded: GOVERNANCE=zion keeps no ledger of usage here"
UNSEEDED = "quota counters not seeded from the usage ledger yet after the store lost its data (%s): retrying"


class StoreLoss:
    """Notices that `store` lost its data (`check`) and seeds every window then (`run_once`, or
    `start` to do both every `interval` seconds until `stop`ped); `seeder` None (GOVERNANCE=zion,
    whose usage is not in the local ledger): noticed and said, nothing seeded."""

    def __init__(self, store: Store, seeder: WindowSeeder | None, plans: PlanRepository | None, default: Plan,
                 metrics: Metrics, *, local: LocalLimiter | None = None, interval: float = INTERVAL,
                 backoff: Backoff = RETRY) -> None:
        self.store = store
        self.seeder = seeder
        self.plans = plans
        self.default = default
        self.metrics = metrics
        self.local = local
        self.interval = interval
        self.backoff = backoff
        self.epochs: dict[str, bytes] = {}  # each marker's value as this process last found it
        self.pending = False  # a seed is owed (a loss found, not seeded yet)
        self.failures = 0  # seeds in a row that failed
        self._lock = asyncio.Lock()
        self._repeated = Repeated(log)
        self._loop = Periodic(self._round, interval=interval, backoff=backoff, log=log,
                              crashed="could not check the shared store for a loss of its data; retrying",
                              name="sentinel-store-loss")

    async def begin(self) -> None:
        """Write the markers that are not there, and keep their values (a store not answering: the
        first `check` that reads them keeps them, a loss or not unknown)."""
        with contextlib.suppress(StoreUnavailable):
            wrote = False
            for key in await self.store.shard_keys(EPOCH_KEY):
                wrote = await self._mark(key) or wrote
            if wrote:
                log.warning(UNMARKED, EPOCH_KEY, SEEDING if self.seeder else NOT_SEEDING)
                self.pending = self.seeder is not None

    async def _mark(self, key: str) -> bool:
        """Write a new marker at `key` unless one is there, keep the value there; whether this wrote it."""
        value = secrets.token_hex(16).encode()
        if await self.store.set(key, value, nx=True):
            self.epochs[key] = value
            return True
        found = await self.store.get(key)
        if found is not None:
            self.epochs[key] = found
        return False

    async def check(self) -> bool:
        """Read the markers (one a shard: `Store.shard_keys`); whether the store lost its data since
        they were last read — any of them gone or replaced, a Cluster shard alone too (then: this
        process's in-process counts dropped, the markers written again, a seed owed). A marker new
        to this process (a shard added, a reshard) is written or kept, not a loss. StoreUnavailable
        when the store does not answer."""
        async with self._lock:
            keys = await self.store.shard_keys(EPOCH_KEY)
            found = dict(zip(keys, await self.store.get_many(keys), strict=True))
            if not self.epochs:  # never read before (the store was down at start): a loss or not unknown
                await self.begin()
                return False
            self.epochs = {key: value for key, value in self.epochs.items() if key in found}
            lost = [key for key, value in found.items() if key in self.epochs and value != self.epochs[key]]
            for key, value in found.items():
                if key in self.epochs:
                    continue
                if value is None:  # a shard new to this process (added, or a reshard chose this key)
                    await self._mark(key)
                else:
                    self.epochs[key] = value
            if not lost:
                return False
            if self.local is not None and self.seeder is not None:  # (no seed: handed back, counted once)
                await self.local.drop_settled()
            for key in lost:
                await self._mark(key)
            replaced = any(found[key] is not None for key in lost)
            log.error(LOST, EPOCH_KEY, SEEDING if self.seeder else NOT_SEEDING,
                      extra={"replaced": replaced, "markers": len(lost), "of": len(found)})
            self.metrics.store_data_lost.inc()
            self.pending = self.seeder is not None
            return True

    async def run_once(self) -> bool:
        """One round: `check`, then the seed owed if any; whether no seed is left owed."""
        with contextlib.suppress(StoreUnavailable):  # (a store down is reported by the requests and the health check)
            await self.check()
        if not self.pending or self.seeder is None:
            return True
        failed = await self.seeder.seed_all(self.plans, self.default) if self.plans is not None else None
        if failed:
            self.failures += 1
            self._repeated.warning(UNSEEDED, failed)
            return False
        self.pending = False
        self.failures = 0
        self._repeated.forget(UNSEEDED)
        log.info("quota counters seeded from the usage ledger after the store lost its data")
        return True

    async def _round(self) -> int:
        """One round of the loop (`Periodic`): the next after `interval`, or `backoff`'s delay while a
        seed owed keeps failing."""
        await self.run_once()
        return self.failures if self.pending else 0

    def start(self) -> None:
        self._loop.start()

    async def stop(self, within: float = STOP_TIMEOUT) -> None:
        """Stop the loop (a seed under way past `within` is cut short: harmless, raise-only)."""
        await self._loop.stop(within)
