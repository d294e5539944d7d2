"""The stall grace (sentinel/store/connection.py): a reply Redis sent in time but this process read
late — held up past the timeout (starved of CPU, a slow callback, a cold start), the event loop
fires the reply's timer before it reads the socket — is read, not a timeout, for every command: a
plain one (GET) and a script, on one server and on a cluster. A reply that never comes is still a
timeout, with redis-py's semantics (the connection dropped unless the caller keeps it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentinel.store.base import Script
from sentinel.store.cluster import RedisClusterStore
from sentinel.store.connection import (
    GracedConnection,
    GracedSSLConnection,
    GracedUnixDomainSocketConnection,
    StallGrace,
    graced,
)
from sentinel.store.redis import RedisStore
from tests.conftest import REDIS_BIN
from tests.support.process import RedisServerProcess

# Adds ARGV[1] to its key: run twice (a reply lost, the command sent again), it would add twice.
ADD = Script(
    "test-grace-add",
    "return redis.call('INCRBY', KEYS[1], ARGV[1])",
    lambda ops, keys, args: ops.incrby(keys[0], int(args[0])),
)
KEY = "k:{grace}"


async def get(store: RedisStore) -> Any:
    return await store.get(KEY)


async def script(store: RedisStore) -> Any:
    return await store.run(ADD, [KEY], [1])


CALLS: dict[str, tuple[Callable[[RedisStore], Awaitable[Any]], Any]] = {
    # The call, and its reply when it ran once (after `warm_up`).
    "get": (get, b"1"),
    "script": (script, 2),
}


async def warm_up(store: RedisStore) -> None:
    """Connected (to every node a call goes to), the script known: the held-up call is one round."""
    assert await store.run(ADD, [KEY], [1]) == 1
    assert await store.get(KEY) == b"1"


def hold_up_after_the_next_send(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Once, the process is held up (0.2 s, well past the 0.05 s timeout) while the read of a reply
    waits, its timer set; Redis answers meanwhile, and the loop wakes to the timer due and the socket
    readable at once. The socket is left unread from the send until the hold-up ends, as a process
    that did not run would leave it. Returns every command written from now on."""
    send = Connection.send_packed_command
    read = Connection._read_response_from_parser  # noqa: SLF001 - the read under redis-py's timer
    sent: list[bytes] = []
    held_up: list[asyncio.Transport] = []

    async def send_and_record(self: Connection, command: Any, *args: Any, **kwargs: Any) -> None:
        if not sent:
            assert self._writer is not None  # noqa: SLF001
            transport = self._writer.transport  # noqa: SLF001
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            held_up.append(transport)
        await send(self, command, *args, **kwargs)
        sent.append(command if isinstance(command, bytes) else b"".join(command))

    def hold_up(transport: asyncio.Transport) -> None:
        time.sleep(0.2)
        transport.resume_reading()

    async def hold_up_then_read(self: Connection, *args: Any, **kwargs: Any) -> Any:
        if held_up and len(sent) == 1:
            asyncio.get_running_loop().call_soon(hold_up, held_up.pop())
        return await read(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "send_packed_command", send_and_record)
    monkeypatch.setattr(Connection, "_read_response_from_parser", hold_up_then_read)
    return sent


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_reply_read_late_is_read_on_one_server(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    store = RedisStore(redis_url, timeout=0.05)
    await warm_up(store)
    run, reply = CALLS[call]
    sent = hold_up_after_the_next_send(monkeypatch)
    assert await run(store) == reply
    assert len(sent) == 1  # sent once: no retry ran it again
    assert store.breaker.failures == 0
    assert await store.get(KEY) == (b"2" if call == "script" else b"1")
    await store.close()


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_reply_read_late_is_read_on_a_cluster(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=0.05)
    await warm_up(store)
    run, reply = CALLS[call]
    sent = hold_up_after_the_next_send(monkeypatch)
    assert await run(store) == reply
    # Sent once: redis-py's cluster retry (after a timeout it reloads the slot map and sends the
    # command again) did not run; a script that added once added once.
    assert [command for command in sent if b"CLUSTER" not in command] == sent[:1]
    assert store.breaker.failures == 0
    assert all(breaker.failures == 0 for breaker in store._node_breakers.values())  # noqa: SLF001
    assert await store.get(KEY) == (b"2" if call == "script" else b"1")
    await store.close()


async def test_every_connection_of_a_cluster_has_the_grace(redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=0.05)
    await warm_up(store)
    cluster = store.client
    assert isinstance(cluster, RedisCluster)
    nodes = [*cluster.get_nodes(), *cluster.nodes_manager.startup_nodes.values()]
    connections = [connection for node in nodes for connection in node._connections]  # noqa: SLF001
    assert connections
    assert all(isinstance(connection, GracedConnection) for connection in connections)
    await store.close()


def test_the_graced_class_is_the_one_of_the_url_scheme() -> None:
    assert graced(Connection) is GracedConnection
    assert graced(SSLConnection) is GracedSSLConnection
    assert graced(UnixDomainSocketConnection) is GracedUnixDomainSocketConnection
    assert graced(GracedSSLConnection) is GracedSSLConnection
    for url in ("redis://h:1/0", "rediss://h:1/0", "unix:///tmp/r.sock"):
        pool = RedisStore(url).client.connection_pool
        assert issubclass(pool.connection_class, StallGrace)
    assert RedisStore("rediss://h:1/0").client.connection_pool.connection_class is GracedSSLConnection
    cluster = RedisClusterStore("rediss+cluster://h:1,g:2").client
    assert isinstance(cluster, RedisCluster)
    assert cluster.nodes_manager.connection_kwargs["connection_class"] is GracedSSLConnection  # nodes to come
    assert [node.connection_class for node in cluster.nodes_manager.startup_nodes.values()] == [
        GracedSSLConnection,
        GracedSSLConnection,
    ]
    with pytest.raises(TypeError):
        graced(type("Other", (Connection,), {}))


@pytest.mark.skipif(REDIS_BIN is None, reason="redis-server binary not found")
async def test_a_reply_that_never_comes_is_a_timeout_after_one_more_read(tmp_path: Path) -> None:
    """redis-py's semantics kept: a timeout drops the connection, unless the caller keeps it."""
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as proc:
        store = RedisStore(f"redis://127.0.0.1:{proc.port}/0", timeout=0.05)
        client = store.client
        assert isinstance(client, aioredis.Redis)
        assert await client.incr("k:frozen") == 1
        connection = await client.connection_pool.get_connection()
        assert isinstance(connection, StallGrace)
        proc.freeze()
        try:
            await connection.send_command("GET", "k:frozen")
            with pytest.raises(RedisTimeoutError):
                await connection.read_response(disconnect_on_error=False)
            assert connection.is_connected  # kept, as asked
            with pytest.raises(RedisTimeoutError):
                await connection.read_response()
            assert not connection.is_connected  # dropped: no late reply is read as another's
        finally:
            proc.thaw()
        await client.connection_pool.release(connection)
        assert await client.incr("k:frozen") == 2
        await store.close()
