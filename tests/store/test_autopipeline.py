"""Auto-pipelining on a real Redis: concurrent commands share writes, yet each caller gets its own
reply or error, a lost connection never hands one caller another's reply, and a caller cancelled
while queued is not sent."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentinel.errors import StoreUnavailable
from sentinel.store import connection
from sentinel.store.autopipeline import AutoPipeline, pack
from sentinel.store.base import Script
from sentinel.store.connection import GracedConnection
from sentinel.store.redis import RedisStore
from tests.conftest import REDIS_BIN
from tests.support.process import RedisServerProcess

# Returns its key's name and the counter after adding ARGV[1]: a reply that names its caller.
ADD = Script(
    "test-add",
    "return {KEYS[1], redis.call('INCRBY', KEYS[1], ARGV[1])}",
    lambda ops, keys, args: [keys[0], ops.incrby(keys[0], int(args[0]))],
)


def pipeline_of(store: RedisStore) -> AutoPipeline:
    pipeline = store._pipeline  # noqa: SLF001 - the store's own auto-pipeline, observed
    assert pipeline is not None
    return pipeline


async def test_a_lone_command_is_sent_alone(redis_url: str) -> None:
    store = RedisStore(redis_url)
    assert await store.run(ADD, ["k:lone"], [5]) == [b"k:lone", 5]
    pipeline = pipeline_of(store)
    assert (pipeline.sends, pipeline.commands) >= (1, 1)
    before = pipeline.sends
    assert await store.stream_add("s:lone", {"r": b"x"})
    assert pipeline.sends == before + 1
    await store.close()


async def test_commands_issued_together_go_out_in_one_write(redis_url: str) -> None:
    store = RedisStore(redis_url)
    await store.run(ADD, ["k:warm-pair"], [1])  # the script is known: no NOSCRIPT round
    pipeline = pipeline_of(store)
    sends, commands = pipeline.sends, pipeline.commands
    # What a request's settlement does: its quota script and its usage record, issued at once.
    reply, entry = await asyncio.gather(store.run(ADD, ["k:pair"], [2]), store.stream_add("s:pair", {"r": b"x"}))
    assert reply == [b"k:pair", 2] and entry
    assert (pipeline.sends - sends, pipeline.commands - commands) == (1, 2)  # one round trip, not two
    await store.close()


async def test_concurrent_commands_share_writes_and_each_caller_gets_its_own_reply(redis_url: str) -> None:
    store = RedisStore(redis_url)
    await store.run(ADD, ["k:warm"], [1])  # the script is known: no NOSCRIPT round
    pipeline = pipeline_of(store)
    sends, commands = pipeline.sends, pipeline.commands
    replies = await asyncio.gather(*(store.run(ADD, [f"k:{n}"], [n]) for n in range(200)))
    assert replies == [[f"k:{n}".encode(), n] for n in range(200)]
    assert pipeline.commands - commands == 200
    assert pipeline.sends - sends < 20  # batched: far fewer writes than commands
    ids = await asyncio.gather(*(store.stream_add("s:many", {"n": str(n).encode()}) for n in range(100)))
    assert len(set(ids)) == 100
    client = aioredis.Redis.from_url(redis_url)
    entries = await client.xrange("s:many")
    assert [fields[b"n"] for _, fields in entries] == [str(n).encode() for n in range(100)]
    await client.aclose()
    await store.close()


async def test_a_command_error_belongs_to_its_command_only(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.set("k:string", b"not a counter")
    pipeline = AutoPipeline(client.connection_pool)
    replies = await asyncio.gather(
        pipeline.execute("INCRBY", "k:a", 1),
        pipeline.execute("INCRBY", "k:string", 1),
        pipeline.execute("EVALSHA", "0" * 40, 0),
        pipeline.execute("INCRBY", "k:b", 2),
        pipeline.execute("INCRBY", "k:a", 3),
        return_exceptions=True,
    )
    assert replies[0] == 1 and replies[3] == 2 and replies[4] == 4
    assert isinstance(replies[1], ResponseError) and not isinstance(replies[1], NoScriptError)
    assert isinstance(replies[2], NoScriptError)
    assert pipeline.sends < 5
    await client.aclose()


async def test_a_command_that_cannot_be_packed_fails_alone(redis_url: str) -> None:
    """Commands were packed together when sent: one holding a string UTF-8 cannot encode (a lone
    surrogate) failed every command written with it — other users' reservations and records."""
    client = aioredis.Redis.from_url(redis_url)
    pipeline = AutoPipeline(client.connection_pool)
    replies = await asyncio.gather(
        pipeline.execute("INCRBY", "k:ok1", 1),
        pipeline.execute("SET", "k:bad", "\ud800"),
        pipeline.execute("INCRBY", "k:ok2", 2),
        return_exceptions=True,
    )
    assert replies[0] == 1 and replies[2] == 2, replies
    assert isinstance(replies[1], DataError), replies
    await client.aclose()


async def test_scripts_unknown_to_redis_are_loaded_once_inside_a_pipeline(redis_url: str) -> None:
    store = RedisStore(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    await client.script_flush()
    replies = await asyncio.gather(*(store.run(ADD, [f"k:{n}"], [1]) for n in range(50)))
    assert replies == [[f"k:{n}".encode(), 1] for n in range(50)]
    await client.aclose()
    await store.close()


async def test_a_caller_cancelled_while_queued_is_not_sent(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    pipeline = AutoPipeline(client.connection_pool)
    first = asyncio.create_task(pipeline.execute("INCRBY", "k:first", 1))
    second = asyncio.create_task(pipeline.execute("INCRBY", "k:second", 1))
    third = asyncio.create_task(pipeline.execute("INCRBY", "k:third", 1))
    await asyncio.sleep(0)  # all three started: the first is on the wire, the others queued
    second.cancel()
    assert await first == 1 and await third == 1
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await client.get("k:second") is None
    await client.aclose()


@pytest.mark.skipif(REDIS_BIN is None, reason="redis-server binary not found")
async def test_a_timeout_fails_the_unread_and_no_late_reply_reaches_another_caller(tmp_path: Path) -> None:
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as proc:
        store = RedisStore(f"redis://127.0.0.1:{proc.port}/0", timeout=0.3)
        await store.run(ADD, ["k:warm"], [1])
        proc.freeze()  # replies stop; the commands sit in the socket
        failed = await asyncio.gather(*(store.run(ADD, [f"k:{n}"], [1]) for n in range(20)), return_exceptions=True)
        proc.thaw()  # now Redis runs them and answers on a connection nobody reads any more
        assert all(isinstance(r, StoreUnavailable) for r in failed)
        store.breaker.success()  # the breaker opened, as it should: close it for the second half
        replies = await asyncio.gather(*(store.run(ADD, [f"k:{n}"], [100]) for n in range(20)))
        # Each caller's own key; the frozen commands may have run (an outage is "maybe"), by +1.
        assert [key for key, _ in replies] == [f"k:{n}".encode() for n in range(20)]
        assert all(value in (100, 101) for _, value in replies)
        await store.close()


async def test_nothing_sent_when_no_connection_can_be_made() -> None:
    from tests.support.servers import free_port

    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    pipeline = AutoPipeline(client.connection_pool)
    replies = await asyncio.gather(*(pipeline.execute("INCR", f"k:{n}") for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, Exception) and not isinstance(r, ResponseError) for r in replies)
    assert not pipeline._busy  # noqa: SLF001 - the line is free again for the next caller
    with pytest.raises((RedisConnectionError, RedisTimeoutError)):
        await pipeline.execute("INCR", "k:again")
    await client.aclose()


@pytest.mark.parametrize(
    "commands",
    [
        [("EVALSHA", "a" * 40, 2, "sentinel:quota:{ü}:requests:3600:1", "k2", 1, 10**10, -5, 3_660_000)],
        [("XADD", "sentinel:usage:outbox", "*", "r", b'{"id":1}\xff\x00', "n", "é"), ("EVAL", "return 1", 0)],
        [("SET", "k", 0.1, "PX", 1e20), ("SET", b"k", 2**70), ("CONFIG GET", "maxmemory")],
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(commands: list[tuple[object, ...]]) -> None:
    redis_py = Connection()  # never connected: only its packer is used
    assert b"".join(map(pack, commands)) == b"".join(redis_py.pack_commands(commands))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_an_argument_redis_py_refuses_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_commands([("SET", "k", bad)])  # what redis-py does ...
    with pytest.raises(DataError):
        pack(("SET", "k", bad))  # ... and so does the auto-pipeline


async def test_a_reply_that_came_while_the_process_was_held_up_is_read_not_timed_out(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis answers at once, but this process is held up (its event loop blocked, as when starved
    of CPU on a busy host, or a cold start's slow first callback) for longer than the timeout, just
    as the reply's read began: the event loop fires the timer before it reads the socket, where the
    reply waits. That was a timeout — the connection dropped and a reservation refused, 503
    `quota_unavailable` — for a Redis that had answered in time."""
    store = RedisStore(redis_url, timeout=0.05)
    assert await store.run(ADD, ["k:held-up"], [1]) == [b"k:held-up", 1]  # connected, script loaded
    send = Connection.send_packed_command
    held_up: list[bool] = []

    async def send_then_hold_up(self: Connection, *args: object, **kwargs: object) -> None:
        await send(self, *args, **kwargs)  # type: ignore[arg-type]
        if not held_up:  # once: the loop is blocked right after the read of the reply began
            held_up.append(True)
            asyncio.get_running_loop().call_soon(time.sleep, 0.2)

    monkeypatch.setattr(Connection, "send_packed_command", send_then_hold_up)
    assert await store.run(ADD, ["k:held-up"], [1]) == [b"k:held-up", 2]
    assert held_up and store.breaker.failures == 0
    await store.close()


@pytest.mark.skipif(REDIS_BIN is None, reason="redis-server binary not found")
async def test_a_reply_that_never_comes_is_a_timeout_after_one_more_read(tmp_path: Path) -> None:
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as proc:
        client = aioredis.Redis.from_url(
            f"redis://127.0.0.1:{proc.port}/0", socket_timeout=0.05, connection_class=GracedConnection
        )
        pipeline = AutoPipeline(client.connection_pool)
        assert await pipeline.execute("INCRBY", "k:frozen", 1) == 1
        proc.freeze()
        try:
            with pytest.raises(RedisTimeoutError):
                await pipeline.execute("INCRBY", "k:frozen", 1)
        finally:
            proc.thaw()
        await client.aclose()


@pytest.mark.parametrize(("parser", "protocol"), [
    (_AsyncHiredisParser, 3), (_AsyncHiredisParser, 2), (_AsyncRESP3Parser, 3), (_AsyncRESP2Parser, 2)])
async def test_a_reply_cut_off_by_the_timeout_mid_way_is_read_whole_by_the_grace_read(
    parser: type, protocol: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer fires while part of a reply is in (the parser holds an array's first element and half
    of its second): the grace read (`sentinel.store.connection.StallGrace`) goes on from there, with the C parser (hiredis, the
    default) and redis-py's pure-Python ones alike — the reply is whole, the next command's reply is
    its own, and the connection is kept. A server of the test's own sends the rest of the reply only
    once the grace read has begun."""
    rest = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands = hiredis.Reader()
        while data := await reader.read(65536):
            commands.feed(data)
            while (command := commands.gets()) is not False:
                if command[:2] == [b"GET", b"cut"]:
                    writer.write(b"*2\r\n$3\r\nabc\r\n$2\r\nd")  # its first element and half the second
                    await writer.drain()
                    await rest.wait()
                    writer.write(b"e\r\n")
                elif command[0] == b"GET":
                    writer.write(b"$" + str(len(command[1])).encode() + b"\r\n" + command[1] + b"\r\n")
                elif command[0] == b"HELLO":  # what redis-py sends on connecting with RESP3 ...
                    writer.write(b"%1\r\n$5\r\nproto\r\n:3\r\n")
                else:  # ... and then (CLIENT SETINFO)
                    writer.write(b"+OK\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    read = Connection.read_response
    reads: list[object] = []

    async def read_noting_the_grace(self: Connection, *args: object, **kwargs: object) -> object:
        timeout = args[1] if len(args) > 1 else kwargs.get("timeout")
        if timeout == math.inf:  # the grace read of the cut reply (the only one): the rest may come now
            reads.append(self)
            rest.set()
        return await read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "read_response", read_noting_the_grace)
    monkeypatch.setattr(connection, "STALL_GRACE_SECONDS", 60.0)  # waits for the rest: the test sets it
    pool = aioredis.ConnectionPool(host="127.0.0.1", port=port, parser_class=parser, protocol=protocol,
                                  socket_timeout=0.01, connection_class=GracedConnection)
    pipeline = AutoPipeline(pool)
    try:
        replies = await asyncio.gather(pipeline.execute("GET", "cut"), pipeline.execute("GET", "next"))
        assert replies == [[b"abc", b"de"], b"next"]
        assert await pipeline.execute("GET", "after") == b"after"  # the connection is in step
        assert rest.is_set() and len(reads) == 1  # one grace read ...
        assert len(pool._available_connections) + len(pool._in_use_connections) == 1  # ... one connection, kept
        assert pipeline.sends == 2
    finally:
        rest.set()  # (the server's handler ends whatever happened)
        await pool.aclose()
        server.close()
        await server.wait_closed()
