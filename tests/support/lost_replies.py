"""A Redis reply lost after its command ran: the command happened, the client never hears of it.

- `read_twice_once(store, monkeypatch)`: the store's next `stream_read` runs twice under the same
  consumer and answers only the second run — what a client retrying the read after a lost reply
  does (redis-py's cluster client retried XREADGROUP once after a read timeout). Any Store.
- `LostClusterReply(monkeypatch, "XREADGROUP")`: on a real Redis Cluster, the next reply to that
  command is read off the socket and dropped with the connection, raising redis-py's TimeoutError
  as a read timeout does (after the command ran). `sent` counts the command's runs since (a
  client retry shows as 2).
- `LostReply(store, monkeypatch, "SET", key_prefix)`: the store's next SET on a key beginning with
  `key_prefix` runs, and its reply is lost: on a `RedisStore` the reply is read and dropped, raising
  redis-py's TimeoutError as a read timeout does (the store maps it to StoreUnavailable, and counts
  it against its breaker, as any); on the memory store the write is done and StoreUnavailable raised.
  `lost` counts the replies lost (at most one).
  `LostReply(store, monkeypatch, "EVALSHA", key_prefix)`: the same for the next script whose first key
  begins with `key_prefix` (on a `RedisStore`, on the hot path's auto-pipeline: its reply read and
  dropped; on the memory store, `run` done and StoreUnavailable raised).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentinel.errors import StoreUnavailable
from sentinel.store import MemoryStore, Script, Store, StreamEntry
from sentinel.store.base import ScriptArg
from sentinel.store.redis import RedisStore


def read_twice_once(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store.stream_read
    armed = [True]

    async def read(key: str, group: str, consumer: str, count: int) -> list[StreamEntry]:
        if armed and armed.pop():
            await real(key, group, consumer, count)  # ran; its reply never came back
        return await real(key, group, consumer, count)

    monkeypatch.setattr(store, "stream_read", read)


class LostClusterReply:
    """See the module docstring."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
        self.command = command
        self.armed = True
        self.sent = 0
        real = ClusterNode.parse_response
        lost = self

        async def parse_response(node: ClusterNode, connection: Any, command: str, **kwargs: Any) -> Any:
            reply = await real(node, connection, command, **kwargs)
            if str(command).upper() == lost.command:
                lost.sent += 1
                if lost.armed:
                    lost.armed = False
                    await connection.disconnect()
                    raise RedisTimeoutError("Timeout reading from socket (the reply was dropped)")
            return reply

        monkeypatch.setattr(ClusterNode, "parse_response", parse_response)


class LostReply:
    """See the module docstring."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch, command: str, key_prefix: str) -> None:
        if command not in ("SET", "EVALSHA"):
            raise ValueError("only SET and EVALSHA replies are lost here")
        self.command = command
        self.key_prefix = key_prefix
        self.armed = True
        self.lost = 0
        if command == "EVALSHA":
            self._lose_scripts(store, monkeypatch)
        elif isinstance(store, RedisStore):
            client = store.client
            real_command = client.execute_command

            async def execute_command(*args: Any, **options: Any) -> Any:
                reply = await real_command(*args, **options)  # it ran on the server
                if self._losing(str(args[0]), args[1]):
                    raise RedisTimeoutError("Timeout reading from socket (the reply was dropped)")
                return reply

            monkeypatch.setattr(client, "execute_command", execute_command)
        elif isinstance(store, MemoryStore):
            real_set = store.set

            async def set_(
                key: str, value: bytes, ttl: float | None = None, *, nx: bool = False, xx: bool = False
            ) -> bool:
                done = await real_set(key, value, ttl, nx=nx, xx=xx)
                if self._losing("SET", key):
                    raise StoreUnavailable("Redis is unavailable: TimeoutError")  # as RedisStore maps it
                return done

            monkeypatch.setattr(store, "set", set_)
        else:
            raise TypeError(f"no lost replies for {type(store).__name__}")

    def _lose_scripts(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        if isinstance(store, RedisStore):
            real_command = store._command

            async def command(*args: Any) -> Any:
                reply = await real_command(*args)  # it ran on the server
                if str(args[0]).upper() in ("EVALSHA", "EVAL") and int(args[2]) and self._losing("EVALSHA", args[3]):
                    raise RedisTimeoutError("Timeout reading from socket (the reply was dropped)")
                return reply

            monkeypatch.setattr(store, "_command", command)
        elif isinstance(store, MemoryStore):
            real_run = store.run

            async def run(script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
                done = await real_run(script, keys, args)
                if keys and self._losing("EVALSHA", keys[0]):
                    raise StoreUnavailable("Redis is unavailable: TimeoutError")  # as RedisStore maps it
                return done

            monkeypatch.setattr(store, "run", run)
        else:
            raise TypeError(f"no lost replies for {type(store).__name__}")

    def _losing(self, command: str, key: Any) -> bool:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if self.armed and command.upper() == self.command and name.startswith(self.key_prefix):
            self.armed = False
            self.lost += 1
            return True
        return False
