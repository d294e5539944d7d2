"""A Redis Cluster primary is killed (SIGKILL) under load from two Sentinel processes.

Two cases: the primary serving the quota keys of the users under load (`sentinel:quota:{<id>}:...`)
and, separately, the primary serving the usage stream (`sentinel:usage:outbox`). Three users load
both Sentinels the whole time (QUOTA_FAILURE_MODE=closed, usage in PostgreSQL; the cluster runs with
`cluster-require-full-coverage no`, as the README asks):

- `steady` (a large plan, 4 callers) on the quota primary that dies in the quota case;
- `capped` (REQUESTS_CAP a day, 2 callers), on the same primary; the kill comes when it has used
  half its plan, and its callers go on until it is refused (429) ten times;
- `bystander` (1 caller) on a primary that does not die and does not hold the usage stream.

What must hold, whatever the timing: only 200, 429 and 503 (`quota_unavailable`), never a 500 and
never a hang; the quota case refuses `steady` with 503 during the failover, and only the users of
the dead primary are ever refused (each primary has its own circuit breaker): `bystander` never,
and in the stream case nobody (usage records go to the database outbox meanwhile); after the
replica is promoted every request is served again by the same processes (each process has its own
breakers, so the test waits until both answer 200 again before it says "after"); `capped` is never
admitted beyond its plan, across the whole run; and every 200 ends as exactly one ledger row
(records of the failover went to the database outbox or sat in the stream, which the promoted
replica holds). How long the 503s lasted is printed (run with `-s`), not asserted.

Readiness is probed on both Sentinels all along: it never says 503 (a partial outage is the same
for every replica; taking them all out of rotation would refuse everyone), and while the primary
is down it says `degraded`, counting one unreachable node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.cluster_support import (
    USAGE_STREAM,
    primaries,
    quota_tag,
    start_pair,
    stream_info,
    user_on,
)
from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    Outcome,
    chat,
    chat_body,
    client,
    eventually,
    provision,
    sql_outbox_depth,
    wait_for_rows,
)
from tests.support.redis_cluster import ClusterNode, LocalRedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

REQUESTS_CAP = 200
HANG_GUARD_SECONDS = 10.0  # far above two store timeouts plus a connect: a call beyond it hangs
PHASE_SECONDS = 60.0
MAX_CALLS = 20_000


@dataclass
class Call:
    user: str
    phase: str
    url: str  # the Sentinel that answered
    sent: float  # time.monotonic() when sent
    outcome: Outcome

    @property
    def done(self) -> float:
        return self.sent + self.outcome.seconds


@dataclass
class Load:
    """Callers that go on, one request at a time each, alternating between the two Sentinels."""

    urls: list[str]
    phase: str = "before"
    calls: list[Call] = field(default_factory=list)
    ready: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # phase, status, store check
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def watch_readiness(self) -> None:
        """Ask each Sentinel's `/health/ready` every 0.1 s until stopped (see `ready`)."""
        self._tasks.append(asyncio.ensure_future(self._probe()))

    async def _probe(self) -> None:
        async with httpx.AsyncClient(timeout=20.0) as http:
            while not self._stop.is_set():
                for url in self.urls:
                    phase = self.phase
                    answer = await http.get(f"{url}/health/ready")
                    self.ready.append((phase, answer.status_code, answer.json()["checks"]["store"]))
                await asyncio.sleep(0.1)

    def start(self, user: str, key: str, callers: int, *, until: Callable[[], bool] = lambda: False) -> None:
        for n in range(callers):
            self._tasks.append(asyncio.ensure_future(self._caller(user, key, n, until)))

    async def _caller(self, user: str, key: str, n: int, until: Callable[[], bool]) -> None:
        async with client("", key) as http:
            i = 0
            while not (self._stop.is_set() or until()) and len(self.calls) < MAX_CALLS:
                phase, sent, url = self.phase, time.monotonic(), self.urls[(n + i) % 2]
                body = chat_body(f"{user} {n}.{i}", stream=i % 3 == 2)
                outcome = await chat(http, body, url=url)
                # A call that straddles a phase change belongs to neither phase.
                self.calls.append(
                    Call(user, phase if phase == self.phase else "changing", url, sent, outcome)
                )
                i += 1

    def of(self, user: str, status: int | None = None, phase: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.user == user and status in (None, c.outcome.status) and phase in (None, c.phase)
        ]

    def serving_again(self, user: str, phase: str, run: int) -> bool:
        """Whether each Sentinel's last `run` answers to `user` in `phase` were all 200.

        Each process has its own circuit breaker: one may serve again while the other's is still
        open (its probe failed just before the promotion), so both are asked."""
        for url in self.urls:
            last = [c.outcome.status for c in self.of(user, phase=phase) if c.url == url][-run:]
            if len(last) < run or any(status != 200 for status in last):
                return False
        return True

    async def until(self, what: str, condition: Callable[[], bool]) -> None:
        async def reached() -> bool:
            return condition()

        assert await eventually(reached, within=PHASE_SECONDS, every=0.02), f"gave up waiting for {what}"

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.fixture
def group(tmp_path_factory: pytest.TempPathFactory, redis_bin: str | None) -> Iterator[Processes]:
    processes = Processes(tmp_path_factory.mktemp("cluster-failover"), redis_bin)
    try:
        yield processes
    finally:
        processes.close()


def users_for(cluster: LocalRedisCluster, victim_case: str) -> tuple[ClusterNode, dict[str, str]]:
    """The primary to kill, and the users' ids (steady, capped, bystander) placed for the case."""
    stream_home = cluster.primary_of(USAGE_STREAM)
    quota_home = next(p for p in primaries(cluster) if p is not stream_home)
    third = next(p for p in primaries(cluster) if p not in (stream_home, quota_home))
    users = {
        "steady": user_on(cluster, "steady", lambda p: p is quota_home),
        "capped": user_on(cluster, "capped", lambda p: p is quota_home),
        "bystander": user_on(cluster, "bystander", lambda p: p is third),
    }
    return (quota_home if victim_case == "quota" else stream_home), users


@pytest.mark.parametrize("victim_case", ["quota", "stream"])
async def test_a_primary_killed_under_load(
    redis_cluster: LocalRedisCluster,
    redis_cluster_url: str,
    pg_url: str,
    upstream: str,
    group: Processes,
    victim_case: str,
) -> None:
    cluster = redis_cluster
    victim, users = users_for(cluster, victim_case)
    replica = cluster.replica_of(victim)
    keys = {
        name: await provision(pg_url, user, plan=f"requests={REQUESTS_CAP}/1d" if name == "capped" else None)
        for name, user in users.items()
    }
    # USAGE_LEASE_SECONDS=1: entries a deliverer had read when the primary died are taken over soon.
    pair = start_pair(group, cluster, pg_url, upstream, QUOTA_FAILURE_MODE="closed", USAGE_LEASE_SECONDS="1")
    steady, capped, bystander = users["steady"], users["capped"], users["bystander"]

    load = Load(pair.urls)

    def capped_refused() -> bool:
        return len(load.of(capped, 429)) >= 10

    load.start(steady, keys["steady"], 4)
    load.start(capped, keys["capped"], 2, until=capped_refused)
    load.start(bystander, keys["bystander"], 1)
    load.watch_readiness()
    try:
        await load.until(
            "the capped user to use half its plan",
            lambda: len(load.of(capped, 200)) >= REQUESTS_CAP // 2 and len(load.of(steady, 200)) >= 20,
        )
        load.phase = "failover"
        killed_at = time.monotonic()
        assert (
            cluster.kill_primary_of(quota_tag(steady) if victim_case == "quota" else USAGE_STREAM) is victim
        )

        async def promoted() -> bool:
            return await asyncio.to_thread(
                lambda: victim_key_primary(cluster, victim_case, steady) is replica
            )

        assert await eventually(promoted, within=PHASE_SECONDS), "the replica was never promoted"
        promoted_at = time.monotonic()
        load.phase = "promoted"
        await load.until(
            "both Sentinels to serve again and the capped user to be refused",
            lambda: load.serving_again(steady, "promoted", 10) and capped_refused(),
        )
        load.phase = "after"
        await load.until(
            "every user to be served after the failover",
            lambda: len(load.of(steady, 200, "after")) >= 20 and len(load.of(bystander, 200, "after")) >= 5,
        )
    finally:
        await load.stop()

    report(victim_case, load, users, killed_at, promoted_at)
    calls = load.calls
    odd = [
        (c.user, c.phase, c.outcome.status, c.outcome.error)
        for c in calls
        if c.outcome.status not in (200, 429, 503)
    ]
    assert not odd, (odd[:5], group.logs())
    assert all(
        c.outcome.error and c.outcome.error["code"] == "quota_unavailable"
        for c in calls
        if c.outcome.status == 503
    )
    assert max(c.outcome.seconds for c in calls) < HANG_GUARD_SECONDS, sorted(
        c.outcome.seconds for c in calls
    )[-5:]
    assert all(c.outcome.status == 200 for c in calls if c.phase == "before")
    assert all(c.outcome.status == 200 for c in calls if c.phase == "after" and c.user != capped)
    if victim_case == "quota":
        assert load.of(steady, 503, "failover"), "the users of the dead primary's slots were refused"
    refused = {name for name, user in users.items() if load.of(user, 503)}
    assert refused <= ({"steady", "capped"} if victim_case == "quota" else set()), (
        f"users of live primaries were refused: {sorted(refused)}"
    )

    assert load.ready and all(status == 200 for _, status, _ in load.ready), [
        r for r in load.ready if r[1] != 200
    ][:5]
    assert any(
        check["status"] == "degraded" and check["unreachable_nodes"] == 1
        for phase, _, check in load.ready
        if phase == "failover"
    ), "readiness never reported the dead primary"

    admitted = len(load.of(capped, 200))
    assert admitted <= REQUESTS_CAP, f"over-admission: {admitted} admitted, plan {REQUESTS_CAP}"
    assert capped_refused()

    # Every 200 is exactly one ledger row; nothing else is (429 and 503 are not billed).
    for name, user in users.items():
        served = sorted(c.outcome.request_id for c in load.of(user, 200))
        rows = await wait_for_rows(pg_url, user, len(served), within=30)
        assert sorted(r.request_id for r in rows) == served, (name, len(rows), len(served), group.logs())

    async def drained() -> bool:
        return await asyncio.to_thread(lambda: stream_info(cluster)["length"]) == 0 and (
            await sql_outbox_depth(pg_url) == 0
        )

    assert await eventually(drained, within=30), "the usage outboxes were not drained"


def victim_key_primary(cluster: LocalRedisCluster, victim_case: str, steady: str) -> ClusterNode | None:
    try:
        return cluster.primary_of(quota_tag(steady) if victim_case == "quota" else USAGE_STREAM)
    except RuntimeError:
        return None


def report(case: str, load: Load, users: dict[str, str], killed_at: float, promoted_at: float) -> None:
    """One line per user: when (relative to the kill) the 503s started and ended, how many."""
    print(f"\n[{case} primary killed] replica promoted (seen by the test) {promoted_at - killed_at:+.2f}s")
    for name, user in users.items():
        refused = [c for c in load.of(user, 503)]
        window = (
            f"{min(c.done for c in refused) - killed_at:+.2f}s .. {max(c.done for c in refused) - killed_at:+.2f}s"
            if refused
            else "none"
        )
        served_after = [c.done - killed_at for c in load.of(user, 200) if c.sent > killed_at]
        print(
            f"  {name:9s}: 503 x{len(refused):4d} ({window}); 200 x{len(load.of(user, 200))}; "
            f"429 x{len(load.of(user, 429))}; first 200 sent after the kill "
            f"{min(served_after, default=float('nan')):+.2f}s; slowest call {max(c.outcome.seconds for c in load.of(user)):.2f}s"
        )
