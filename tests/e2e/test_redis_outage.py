"""Redis dies (or hangs) under load and comes back: fast answers, the failure mode, no lost usage.

Sentinel runs on a private redis-server while a steady background load goes on. The test kills
Redis with SIGKILL (or freezes it with SIGSTOP: connections stay open, nothing answers), and with
QUOTA_FAILURE_MODE

- closed: requests get 503 `quota_unavailable` with a clear message,
- local:  requests get 200, and a plan of K requests admits K and then 429 (per replica),
- open:   requests get 200 without any limit,

never a 500, and each answer comes quickly (the 2 s bound is a hang guard, not a benchmark). Then
Redis is started again on the same port: requests are metered in Redis again once the circuit
breaker closes, and every request the client received lands in the ledger exactly once: records
of the outage went to the SQL outbox, the ones written before it are in Redis's append-only file.

A last test restarts Redis *empty* (no persistence, as a cache-only Redis would): usage written
after the restart must still be delivered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    Outcome,
    chat,
    chat_body,
    client,
    client_totals,
    eventually,
    ledger_totals,
    new_user,
    provision,
    sentinel_env,
    wait_for_rows,
)
from tests.support.process import SentinelProcess

pytestmark = pytest.mark.redis

HANG_GUARD_SECONDS = 2.0
LIMIT = 4
MAX_CALLS = 600  # the background load's hard bound


@dataclass
class Load:
    """Background callers, one request at a time each, until stopped (or MAX_CALLS)."""

    url: str
    key: str
    workers: int = 3
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    phase: str = "before"
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _http: httpx.AsyncClient | None = None

    async def _worker(self, http: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not self._stop.is_set() and len(self.outcomes) < MAX_CALLS:
            phase = self.phase
            body = chat_body(f"steady load {n}.{i}", stream=i % 2 == 1)
            outcome = await chat(http, body)
            # A call that straddles a phase change belongs to neither phase.
            self.outcomes.append((phase if phase == self.phase else "changing", outcome))
            i += 1

    def start(self) -> None:
        self._http = client(self.url, self.key)
        self._tasks = [asyncio.ensure_future(self._worker(self._http, n)) for n in range(self.workers)]

    async def until(self, count: int) -> None:
        """Wait until `count` more calls were answered (bounded)."""
        target = len(self.outcomes) + count
        assert await eventually(lambda: self._reached(target), within=30, every=0.02), "load stalled"

    async def _reached(self, target: int) -> bool:
        return len(self.outcomes) >= min(target, MAX_CALLS)

    async def stop(self) -> list[tuple[str, Outcome]]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        return self.outcomes


async def healthy_store(gw: SentinelProcess) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        checks = (await http.get(gw.url + "/health")).json()["checks"]
    return bool(checks["store"]["status"] == "healthy")


@pytest.mark.parametrize(
    ("mode", "outage"),
    [("closed", "killed"), ("local", "killed"), ("open", "killed"), ("closed", "frozen")],
)
async def test_redis_outage_under_load(
    processes: Processes, sqlite_url: str, upstream: str, mode: str, outage: str
) -> None:
    store = processes.redis(durable=True)
    steady, limited, after = new_user("steady"), new_user("limited"), new_user("after")
    key = await provision(sqlite_url, steady)
    limited_key = await provision(sqlite_url, limited, plan=f"requests={LIMIT}/1d")
    after_key = await provision(sqlite_url, after, plan=f"requests={LIMIT}/1d")
    # A claim whose reply the dying Redis never sent leaves records pending on this replica's
    # consumer until the lease runs out: a short lease keeps the wait for them short.
    env = sentinel_env(upstream, sqlite_url, store.url, QUOTA_FAILURE_MODE=mode, USAGE_LEASE_SECONDS="1")
    gw = processes.sentinel(env)

    load = Load(gw.url, key)
    load.start()
    try:
        await load.until(10)
        if outage == "killed":
            store.kill9()
        else:
            store.freeze()
        load.phase = "outage"
        await load.until(20)
        async with client(gw.url, limited_key) as http:
            capped = [await chat(http, chat_body(f"limited {i}")) for i in range(LIMIT + 2)]
        load.phase = "recovering"
        if outage == "killed":
            store.start()
        else:
            store.thaw()
        assert await eventually(lambda: healthy_store(gw), within=15), "the circuit breaker never closed"
        load.phase = "after"
        await load.until(10)
    finally:
        outcomes = await load.stop()

    everything = [o for _, o in outcomes] + capped
    assert not [o for o in everything if o.status not in (200, 429, 503)], "only 200/429/503, never a 500"
    assert max(o.seconds for o in everything) < HANG_GUARD_SECONDS, sorted(o.seconds for o in everything)[-5:]
    assert all(o.status == 200 for phase, o in outcomes if phase == "before")
    assert all(o.status == 200 for phase, o in outcomes if phase == "after"), (
        "requests fail after Redis is back"
    )
    during = [o for phase, o in outcomes if phase == "outage"]
    if mode == "closed":
        refused = [o for o in during if o.status == 503]
        assert refused and all(o.status == 503 for o in during)
        assert all(o.error and o.error["code"] == "quota_unavailable" for o in refused)
        assert all(o.error and "Quota service unavailable" in o.error["message"] for o in refused)
        assert [o.status for o in capped] == [503] * (LIMIT + 2)
    elif mode == "local":
        assert all(o.status == 200 for o in during)
        assert [o.status for o in capped] == [200] * LIMIT + [429] * 2
    else:
        assert all(o.status == 200 for o in during)
        assert [o.status for o in capped] == [200] * (LIMIT + 2)

    # Redis meters again: a new user's request is counted there.
    async with client(gw.url, after_key) as http:
        assert (await chat(http, chat_body("back to redis"))).status == 200
    with redis.Redis.from_url(store.url) as r:
        assert r.keys(f"sentinel:quota:{{{after}}}:*"), "the request was not metered in Redis"

    # Every received response is in the ledger exactly once, with the tokens the client saw.
    received = [o for _, o in outcomes]
    expected = client_totals(received)
    rows = await wait_for_rows(sqlite_url, steady, expected["requests"])
    served = {o.request_id: phase for phase, o in outcomes if o.status == 200}
    missing = {rid: served[rid] for rid in set(served) - {r.request_id for r in rows}}
    assert ledger_totals(rows) == expected, (missing, processes.logs())
    assert {r.request_id for r in rows} == {o.request_id for o in received if o.status == 200}
    capped_rows = await wait_for_rows(sqlite_url, limited, sum(o.status == 200 for o in capped))
    assert sorted(r.request_id for r in capped_rows) == sorted(
        o.request_id for o in capped if o.status == 200
    )


async def test_usage_is_delivered_after_redis_restarts_empty(
    processes: Processes, sqlite_url: str, upstream: str
) -> None:
    store = processes.redis(durable=False)
    user = new_user("empty")
    key = await provision(sqlite_url, user)
    gw = processes.sentinel(sentinel_env(upstream, sqlite_url, store.url))

    async with client(gw.url, key) as http:
        before = [await chat(http, chat_body(f"before {i}")) for i in range(3)]
        assert len(await wait_for_rows(sqlite_url, user, 3)) == 3
        store.kill9()
        store.start()  # same port, no data: the usage stream and its consumer group are gone
        assert await eventually(lambda: healthy_store(gw), within=15)
        later = [await chat(http, chat_body(f"after {i}")) for i in range(3)]

    assert all(o.status == 200 for o in before + later)
    rows = await wait_for_rows(sqlite_url, user, 6, within=15)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in before + later), (
        processes.logs()
    )
