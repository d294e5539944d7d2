"""A Redis reply lost after its command ran: the command happened, the client never hears of it.

- `read_twice_once(store, monkeypatch)`: the store's next `stream_read` runs twice under the same
  consumer and answers only the second run — what a client retrying the read after a lost reply
  does (redis-py's cluster client retried XREADGROUP once after a read timeout). Any Store.
- `LostClusterReply(monkeypatch, "XREADGROUP")`: on a real Redis Cluster, the next reply to that
  command is read off the socket and dropped with the connection, raising redis-py's TimeoutError
  as a read timeout does (after the command ran). `sent` counts the command's runs since (a
  client retry shows as 2).
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentinel.store import StreamEntry


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
