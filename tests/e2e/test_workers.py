"""`sentinel serve --workers N`: N processes on one port, sharing Redis and the database.

Which process served a request is read from /proc (the worker holding the server end of the
client's TCP connection), so nothing new is exposed by Sentinel for the tests. Every request
carries its own X-Request-Id, which is the ledger's request id.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from sentinel.cli import parse_workers
from sentinel.config import Settings, reveal
from sentinel.server import WorkerApp
from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    UPSTREAM_KEY,
    Outcome,
    RawConnection,
    chat_body,
    eventually,
    new_user,
    provision,
    sentinel_env,
    statuses,
    wait_for_rows,
)
from tests.support.hung_db import hung_proxy
from tests.support.metrics import sample_sum
from tests.support.process import (
    SentinelWorkersProcess,
    base_env,
    command_line,
    connection_owners,
    pid_exists,
    port_open,
    wait_until,
)
from tests.support.servers import free_port

StartWorkers = Callable[..., SentinelWorkersProcess]


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[StartWorkers]:
    started: list[tuple[SentinelWorkersProcess, list[int]]] = []

    def start(env: dict[str, str], workers: int = 2) -> SentinelWorkersProcess:
        gateway = SentinelWorkersProcess(tmp_path, env, workers=workers).start()
        started.append((gateway, gateway.worker_pids()))
        return gateway

    yield start
    for gateway, workers in started:
        gateway.stop(timeout=30)
        for pid in workers:  # a worker that outlived its parent (a failing test) must not linger
            if pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


async def open_connections(url: str, count: int) -> list[RawConnection]:
    """`count` connections opened at once (the kernel hands each to whichever worker accepts first)."""
    return list(await asyncio.gather(*(RawConnection(url).open() for _ in range(count))))


async def chat_on_both(
    gateway: SentinelWorkersProcess,
    key: str,
    workers: list[int],
    connections: list[RawConnection],
    prompt: str,
) -> tuple[list[Outcome], dict[int, int]]:
    """One chat on each of batches of new connections (kept in `connections`) until both workers
    accepted some: the outcomes and {client port: worker pid}."""
    outcomes: list[Outcome] = []
    owners: dict[int, int] = {}
    for _ in range(20):
        batch = await open_connections(gateway.url, 6)
        connections.extend(batch)
        outcomes += await asyncio.gather(*(c.chat(key, chat_body(prompt)) for c in batch))
        owners.update(connection_owners(gateway.port, [c.local_port for c in batch], workers))
        if set(owners.values()) == set(workers):
            break
    return outcomes, owners


async def close_all(connections: list[RawConnection]) -> None:
    await asyncio.gather(*(c.close() for c in connections))


@pytest.fixture
async def connections() -> AsyncIterator[list[RawConnection]]:
    opened: list[RawConnection] = []
    yield opened
    await close_all(opened)


# --- configuration ---------------------------------------------------------------------------------
def test_workers_flag_takes_a_count_or_auto() -> None:
    assert parse_workers("3") == 3
    assert parse_workers("auto") == (os.cpu_count() or 1)
    for bad in ("0", "-1", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_workers(bad)


@pytest.mark.parametrize("workers", ["2", "auto"])
def test_several_workers_refuse_the_in_memory_store(tmp_path: Path, workers: str) -> None:
    if workers == "auto" and (os.cpu_count() or 1) < 2:
        pytest.skip("auto means one worker on a single CPU")
    port = free_port()
    env = base_env(sentinel_env("http://127.0.0.1:9", f"sqlite+aiosqlite:///{tmp_path}/s.db"))
    done = subprocess.run(
        [sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", workers],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "REDIS_URL" in lines[0] and "quotas" in lines[0]
    assert done.stdout == "" and not port_open(port)


def test_workers_get_the_parents_settings_without_reading_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    parent = Settings(
        openai_api_key="sk-parent", redis_url="redis://parent:6379/0", default_plan="requests=7/1h"
    )
    shipped = pickle.dumps(WorkerApp(parent, os.getpid()))
    # What a worker would otherwise pick up: another environment and a .env file.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    monkeypatch.setenv("REDIS_URL", "redis://other:6379/0")
    (tmp_path / ".env").write_text("DEFAULT_PLAN=requests=1/1m\n")
    received = pickle.loads(shipped).settings
    assert received == parent
    assert (reveal(received.openai_api_key), received.redis_url, received.default_plan) == (
        "sk-parent", "redis://parent:6379/0", "requests=7/1h",
    )  # fmt: skip


# --- serving -----------------------------------------------------------------------------------------
@pytest.mark.redis
async def test_two_workers_serve_requests_from_two_processes(
    processes: Processes,
    start_workers: StartWorkers,
    connections: list[RawConnection],
    sqlite_url: str,
    upstream: str,
) -> None:
    user = new_user("workers")
    key = await provision(sqlite_url, user)
    gateway = start_workers(sentinel_env(upstream, sqlite_url, processes.redis().url), workers=2)
    workers = gateway.worker_pids()
    assert len(workers) == 2 and gateway.pid not in workers

    outcomes, owners = await chat_on_both(gateway, key, workers, connections, "which process?")

    assert statuses(outcomes) == {200: len(outcomes)}
    assert len(owners) == len(connections), "every connection was accepted by one of the workers"
    assert set(owners.values()) == set(workers), "both worker processes served requests"
    rows = await wait_for_rows(sqlite_url, user, len(outcomes))
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in outcomes)
    # The upstream key reached the workers inside the pickled Settings: not on a command line, not logged.
    for pid in (gateway.pid, *workers):
        assert UPSTREAM_KEY.encode() not in command_line(pid)
    assert UPSTREAM_KEY not in gateway.log_tail(lines=100_000)


@pytest.mark.redis
async def test_every_worker_reports_the_metrics_of_all_workers(
    processes: Processes,
    start_workers: StartWorkers,
    connections: list[RawConnection],
    sqlite_url: str,
    upstream: str,
) -> None:
    """Whichever worker answers `/metrics` counts the requests every worker served."""
    user = new_user("metrics")
    key = await provision(sqlite_url, user)
    gateway = start_workers(sentinel_env(upstream, sqlite_url, processes.redis().url), workers=2)
    workers = gateway.worker_pids()

    outcomes, owners = await chat_on_both(gateway, key, workers, connections, "count me")
    assert statuses(outcomes) == {200: len(outcomes)}
    assert set(owners.values()) == set(workers), "one worker accepted every connection"
    served = Counter(owners.values())  # worker pid -> chats it served (one per connection)
    scrapers = {owners[c.local_port]: c for c in connections}  # worker pid -> a connection it accepted

    total = len(outcomes)
    for pid, connection in scrapers.items():
        await connection.send("GET", "/metrics", b"", {})
        status, body = await connection.receive()
        assert status == 200
        text = body.decode()
        chats = sample_sum(text, "sentinel_http_requests_total", route="/v1/chat/completions", status="200")
        assert chats == total, f"worker {pid} reported {chats} chats; the workers served {served}"
        assert (
            sample_sum(text, "sentinel_http_request_duration_seconds_count", route="/v1/chat/completions")
            == total
        )
        assert sample_sum(text, "sentinel_requests_in_flight") == 0  # summed over the live workers


@pytest.mark.redis
@pytest.mark.parametrize("k", [10, 17])
async def test_exact_admission_across_workers(
    processes: Processes,
    start_workers: StartWorkers,
    connections: list[RawConnection],
    sqlite_url: str,
    upstream: str,
    k: int,
) -> None:
    user = new_user(f"admit{k}")
    key = await provision(sqlite_url, user, plan=f"requests={k}/1d")
    gateway = start_workers(sentinel_env(upstream, sqlite_url, processes.redis().url), workers=2)
    workers = gateway.worker_pids()

    connections.extend(await open_connections(gateway.url, 3 * k))
    owners = connection_owners(gateway.port, [c.local_port for c in connections], workers)
    # Which worker accepts a connection is the kernel's choice: open more until both hold some.
    while set(owners.values()) != set(workers) and len(connections) < 40 * k:
        connections.extend(await open_connections(gateway.url, k))
        owners = connection_owners(gateway.port, [c.local_port for c in connections], workers)
    assert set(owners.values()) == set(workers), "one worker accepted every connection"
    outcomes = await asyncio.gather(
        *(c.chat(key, chat_body(f"burst {i}")) for i, c in enumerate(connections))
    )

    assert statuses(outcomes) == {200: k, 429: len(connections) - k}, [(o.status, o.error) for o in outcomes]
    rows = await wait_for_rows(sqlite_url, user, k)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in outcomes if o.status == 200)


# --- stopping ------------------------------------------------------------------------------------------
@pytest.mark.redis
async def test_sigterm_drains_every_worker_then_exits_0(
    processes: Processes,
    start_workers: StartWorkers,
    connections: list[RawConnection],
    sqlite_url: str,
    upstream: str,
) -> None:
    user = new_user("drain")
    key = await provision(sqlite_url, user)
    # A flush interval longer than the test: only each worker's shutdown flush can fill the ledger.
    env = sentinel_env(
        upstream, sqlite_url, processes.redis().url,
        USAGE_FLUSH_INTERVAL_SECONDS="60", SENTINEL_SHUTDOWN_TIMEOUT_SECONDS="20",
    )  # fmt: skip
    gateway = start_workers(env, workers=2)
    workers = gateway.worker_pids()

    connections.extend(await open_connections(gateway.url, 4))
    done = list(await asyncio.gather(*(c.chat(key, chat_body("before the stop")) for c in connections)))

    # Slow calls (3 s upstream latency) on new connections until both workers have some in flight.
    slow = {"X-Mock-Latency-Ms": "3000"}
    pending: list[tuple[RawConnection, str]] = []
    owners: dict[int, int] = {}
    for _ in range(5):
        batch = await open_connections(gateway.url, 6)
        connections.extend(batch)
        pending += [(c, await c.send_chat(key, chat_body("in flight at SIGTERM"), slow)) for c in batch]

        async def accepted(batch: list[RawConnection] = batch) -> bool:
            owners.update(connection_owners(gateway.port, [c.local_port for c in batch], workers))
            return all(c.local_port in owners for c in batch)

        await eventually(accepted, within=2, every=0.05)
        if set(owners.values()) == set(workers):
            break
    assert set(owners.values()) == set(workers), "both workers have calls in flight"

    gateway._signal(signal.SIGTERM)
    done += await asyncio.gather(*(c.receive_chat(request_id) for c, request_id in pending))
    exit_status = await asyncio.to_thread(gateway.proc.wait, 60)  # type: ignore[union-attr]

    assert statuses(done) == {200: len(done)}, [(o.status, o.error) for o in done]
    assert exit_status == 0
    assert not any(pid_exists(pid) for pid in workers)
    rows = await wait_for_rows(sqlite_url, user, len(done), within=5)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in done)


@pytest.mark.redis
def test_a_worker_that_cannot_start_stops_everything_with_status_1(
    processes: Processes, tmp_path: Path, upstream: str
) -> None:
    unreachable = "postgresql+asyncpg://nobody@127.0.0.1:1/sentinel"  # every worker fails its start-up
    env = base_env(sentinel_env(upstream, unreachable, processes.redis().url))
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "failed to start" in done.stderr
    assert not port_open(port)


@pytest.mark.redis
async def test_workers_stop_when_the_parent_is_killed(
    processes: Processes, start_workers: StartWorkers, sqlite_url: str, upstream: str
) -> None:
    gateway = start_workers(sentinel_env(upstream, sqlite_url, processes.redis().url), workers=2)
    workers = gateway.worker_pids()
    gateway.kill9()

    async def all_gone() -> bool:
        return not any(pid_exists(pid) for pid in workers)

    assert await eventually(all_gone, within=30), "workers outlived their supervisor"
    assert not port_open(gateway.port)


# --- a worker dies -----------------------------------------------------------------------------------
async def connections_on_both(
    gateway: SentinelWorkersProcess, workers: list[int], connections: list[RawConnection], each: int
) -> dict[int, list[RawConnection]]:
    """New connections (kept in `connections`) until each worker accepted at least `each`:
    {worker pid: the connections it accepted}. A connection is accepted once it answered."""
    held: dict[int, list[RawConnection]] = {pid: [] for pid in workers}
    for _ in range(20):
        batch = await open_connections(gateway.url, 6)
        connections.extend(batch)
        for c in batch:  # a request answered: the connection was accepted, /proc names its worker
            await c.send("GET", "/health/live", b"", {})
            assert (await c.receive())[0] == 200
        owners = connection_owners(gateway.port, [c.local_port for c in batch], workers)
        for c in batch:
            held[owners[c.local_port]].append(c)
        if all(len(held[pid]) >= each for pid in workers):
            break
    assert all(len(held[pid]) >= each for pid in workers), "one worker accepted every connection"
    return held


@pytest.mark.redis
async def test_a_killed_worker_is_replaced_while_the_other_serves(
    processes: Processes,
    start_workers: StartWorkers,
    connections: list[RawConnection],
    sqlite_url: str,
    upstream: str,
) -> None:
    """`kill -9` of a worker with a request and a stream in flight: those two clients lose their
    connection (no answer: no usage record either), the other worker serves on, the parent starts
    a replacement, and the dead request's reservation counts only until its window ends."""
    steady, capped = new_user("steady"), new_user("capped")
    key = await provision(sqlite_url, steady)
    capped_key = await provision(sqlite_url, capped, plan="output_tokens=100000/1m")
    store = processes.redis()
    gateway = start_workers(sentinel_env(upstream, sqlite_url, store.url), workers=2)
    workers = gateway.worker_pids()
    held = await connections_on_both(gateway, workers, connections, each=2)
    victim, survivor = workers
    answered = [await c.chat(key, chat_body("before the crash")) for c in held[survivor]]

    # On the victim: a slow answer (capped's only request of its window) and a slow stream.
    slow_call, slow_stream = held[victim][:2]
    call_id = await slow_call.send_chat(capped_key, chat_body("cut by the crash"), {"X-Mock-Latency-Ms": "20000"})
    stream_id = await slow_stream.send_chat(
        key, chat_body("a stream cut by the crash", stream=True), {"X-Mock-Chunk-Delay-Ms": "2000"}
    )
    async def reserved() -> bool:  # both admitted: each holds its reservation's marker
        return all(quota_keys(store.url, user, "reserved:*") for user in (steady, capped))

    assert await eventually(reserved, within=10)
    os.kill(victim, signal.SIGKILL)

    cut = [await slow_call.receive_chat(call_id), await slow_stream.receive_chat(stream_id)]
    assert [o.status for o in cut] == [0, 0], cut  # the connection ended without a (complete) answer
    # The surviving worker serves on its connections and on new ones, the parent is untouched.
    answered += [await c.chat(key, chat_body("after the crash")) for c in held[survivor]]
    fresh = await open_connections(gateway.url, 4)
    connections.extend(fresh)
    answered += [await c.chat(key, chat_body("a new connection")) for c in fresh]
    assert statuses(answered) == {200: len(answered)}, [(o.status, o.error) for o in answered]
    assert gateway.running

    async def replaced() -> bool:
        pids = gateway.worker_pids()
        return len(pids) == 2 and victim not in pids and survivor in pids

    assert await eventually(replaced, within=30), gateway.log_tail()
    await asyncio.to_thread(wait_until_every_worker_answers, gateway)

    # The dead request's reservation was never given back: its estimate (all of its output cap)
    # counts in its window's counter — a minute aligned to the epoch: the next window counts in a
    # key of its own, and this one expires a margin (60 s) after its window.
    ((_, counted, expires_in),) = quota_keys(store.url, capped, "output_tokens:60:*")
    assert counted >= 1000 and 0 < expires_in <= 60 + 60
    assert quota_keys(store.url, capped, "reserved:*"), "nobody settled it"
    # Every answer delivered is in the ledger; the two cut by the crash are not (never answered).
    rows = await wait_for_rows(sqlite_url, steady, len(answered), within=TAKEOVER)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in answered)


# How long the ledger may take to hold every answered request after a worker was killed: a batch of
# the usage stream the dead worker's deliverer had read is taken over by another only once its lease
# ran out (USAGE_LEASE_SECONDS, 30 s), then delivered (after a database outage, each pooled connection
# found hung first costs DATABASE_TIMEOUT_SECONDS). A deadline, not a measurement.
TAKEOVER = 90.0


def quota_keys(url: str, user: str, pattern: str) -> list[tuple[bytes, int, int]]:
    """The user's quota keys matching `pattern` in Redis: (key, value or 0, TTL in seconds)."""
    with redis.Redis.from_url(url) as r:
        return [(k, int(r.get(k) or 0), r.ttl(k)) for k in r.keys(f"sentinel:quota:{{{user}}}:{pattern}")]


def wait_until_every_worker_answers(gateway: SentinelWorkersProcess) -> None:
    wait_until(gateway.is_ready, timeout=30, what="the replacement worker", alive=lambda: gateway.running)


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_replacement_that_cannot_start_is_tried_again_while_the_other_serves(
    processes: Processes,
    start_workers: StartWorkers,
    connections: list[RawConnection],
    pg_url: str,
    upstream: str,
) -> None:
    """A worker dies while the database is down: its replacement cannot start (no migration check),
    which must not stop the host — the other worker serves on (Redis holds the usage), and the
    replacement is tried again until the database is back. (It stopped every worker, status 1.)"""
    user = new_user("outage")
    with hung_proxy(pg_url) as (database, url):
        key = await provision(url, user)
        gateway = start_workers(sentinel_env(upstream, url, processes.redis().url), workers=2)
        workers = gateway.worker_pids()
        held = await connections_on_both(gateway, workers, connections, each=1)
        victim, survivor = workers
        answered = [await held[survivor][0].chat(key, chat_body("before the outage"))]

        database.down()
        os.kill(victim, signal.SIGKILL)

        def replacement_failed() -> bool:
            return "trying again" in gateway.log_tail(lines=200) or not gateway.running

        assert await eventually(lambda: asyncio.to_thread(replacement_failed), within=30)
        assert gateway.running, gateway.log_tail()
        (fresh,) = await open_connections(gateway.url, 1)  # only the survivor accepts now
        connections.append(fresh)
        answered.append(await fresh.chat(key, chat_body("during the outage")))

        database.up()
        await asyncio.to_thread(wait_until_every_worker_answers, gateway)
        assert len(gateway.worker_pids()) == 2 and victim not in gateway.worker_pids()
        assert statuses(answered) == {200: len(answered)}, [(o.status, o.error) for o in answered]
        rows = await wait_for_rows(url, user, len(answered), within=TAKEOVER)
        assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in answered)


# --- Redis goes away under the workers ---------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.parametrize("outage", ["paused", "restarted empty"])
async def test_workers_ride_out_a_redis_outage(
    processes: Processes,
    start_workers: StartWorkers,
    connections: list[RawConnection],
    sqlite_url: str,
    upstream: str,
    outage: str,
) -> None:
    """Redis paused (`CLIENT PAUSE`) or restarted without its data under both workers: each request
    is answered 200 or 503 `quota_unavailable` in the OpenAI shape, never a 500; both workers meter
    in Redis again once it is back, without a restart; every answer delivered is in the ledger once."""
    user = new_user("outage")
    key = await provision(sqlite_url, user)
    store = processes.redis()
    gateway = start_workers(sentinel_env(upstream, sqlite_url, store.url, USAGE_LEASE_SECONDS="1"), workers=2)
    held = await connections_on_both(gateway, gateway.worker_pids(), connections, each=2)
    both = [c for pool in held.values() for c in pool]
    before = [await c.chat(key, chat_body("before")) for c in both]
    await wait_for_rows(sqlite_url, user, len(before))  # delivered: a Redis without AOF loses the rest

    with redis.Redis.from_url(store.url) as r:
        if outage == "paused":
            r.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        else:
            store.kill9()
    during = list(await asyncio.gather(*(c.chat(key, chat_body("during")) for c in both)))
    if outage == "restarted empty":
        store.start()

    probes: list[Outcome] = []

    async def metered_again() -> bool:
        probes.extend(await asyncio.gather(*(c.chat(key, chat_body("probe")) for c in both)))
        return all(o.status == 200 for o in probes[-len(both) :])

    assert await eventually(metered_again, within=15, every=0.2)
    after = [await c.chat(key, chat_body("after")) for c in both]

    assert statuses(before + after) == {200: len(before) + len(after)}
    assert set(statuses(during + probes)) <= {200, 503}, [(o.status, o.error) for o in during + probes]
    for refused in (o for o in during + probes if o.status == 503):
        assert refused.error is not None and refused.error["code"] == "quota_unavailable", refused.error
    # Both workers meter in Redis again (no restart needed): `after` counted there.
    assert quota_keys(store.url, user, "requests:*")
    served = [o for o in before + during + probes + after if o.status == 200]
    rows = await wait_for_rows(sqlite_url, user, len(served))
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in served), processes.logs()
