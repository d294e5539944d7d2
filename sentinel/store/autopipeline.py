"""Auto-pipelining: commands issued while another is on the wire travel to Redis together.

Every request sends Redis a few commands (the quota reservation, its settlement, the usage
record). Sent one by one, each costs redis-py and the event loop about 70-110 µs of CPU here (a
write, a wake-up, a read); sent as one pipeline of 64 they cost about 15 µs each (measured with
`bench/`'s machine; see the README's Benchmark). So:

- a command issued while nothing is in flight is sent on the event loop's next turn, together
  with every command issued in this same turn: independent commands a request issues at once
  (a quota settlement and its usage record) cost one round trip, not two;
- commands issued while a send is in flight queue up; when it completes, everything queued goes
  out as one pipeline (one write, one read of all the replies), and so on while commands keep
  coming. Under load each pipeline carries many requests' commands; Redis runs them one after
  another as it would anyway.

The sends run in one task of their own (the drainer), never in a caller's: a caller cancelled
while its command is on the wire cancels only its wait, never another caller's reply.

Each caller gets its own reply, or its own error: a command error (a `ResponseError`, such as
NOSCRIPT) belongs to that command only; a connection failure or timeout fails the commands whose
replies had not been read (those already read keep their replies), and the connection is dropped
so no late reply can be mistaken for another command's; no connection to be had fails them all
with `NotSent` (they were never sent). A caller cancelled while queued is not sent. The commands are plain Redis commands (`"EVALSHA", sha, ...`); replies are the raw RESP
replies (no redis-py response callbacks), which is what `RedisStore` expects of the commands it
sends this way (EVALSHA, EVAL, XADD).

A reply's timeout is the connection's: with the stall grace (`connection.py`, the store's pool),
a reply Redis sent in time but this process read late is read, not a timeout.

Commands are encoded by hiredis's C packer (`pack`), byte for byte what redis-py's own packer
writes: redis-py's synchronous connection uses it when hiredis is installed, its asyncio connection
packs in Python, ~6x slower (49 µs against 8 µs for a reservation and a usage record here).
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, MaxConnectionsError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]


class NotSent(RedisConnectionError):
    """No connection could be had for the commands (Redis refused it, or did not answer the
    connect): none of them was sent."""


def pack(command: Command) -> bytes:
    """`command` in RESP. Arguments are str (UTF-8), bytes, int or float, as redis-py accepts them;
    anything else (or a str UTF-8 cannot encode) is redis-py's DataError. A command name with a
    space (`"CONFIG GET"`) is split, as redis-py does."""
    name = command[0]
    if (" " if isinstance(name, str) else b" ") in name:
        command = (*name.split(), *command[1:])
    try:
        packed: bytes = hiredis.pack_command(command)
    except (TypeError, UnicodeError) as exc:
        raise DataError(f"Invalid input in command {command[0]!r}: {exc}") from None
    return packed


class AutoPipeline:
    """Sends commands over one redis-py connection pool, batching those issued concurrently."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._busy = False
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []  # (packed command, its reply)
        self._drainer: asyncio.Task[None] | None = None
        self.sends = 0
        """Writes so far (one per lone command or pipeline)."""
        self.commands = 0
        """Commands sent so far; `commands / sends` is the mean pipeline length."""

    async def execute(self, *command: Any) -> Any:
        """The reply to `command`; raises its error (ResponseError) or the connection's. Packed
        here: a command that cannot be (DataError) fails alone, not the others sent with it."""
        packed = pack(command)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((packed, future))
        if not self._busy:
            self._busy = True
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                live = [(command, future) for command, future in batch if not future.done()]
                if not live:
                    continue
                try:
                    replies = await self._send([command for command, _ in live])
                except asyncio.CancelledError:
                    for _, future in live:
                        future.cancel()
                    raise
                except Exception as exc:  # noqa: BLE001 - no reply was read: every caller sees it raised
                    replies = [exc] * len(live)
                for (_, future), reply in zip(live, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, BaseException):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            for _, future in self._queue:  # only left when cancelled (the app is closing)
                future.cancel()
            self._queue = []
            self._busy = False

    async def _send(self, commands: list[bytes]) -> list[Any]:
        """One write of `commands`, then their replies (or errors) in order. Raises when nothing
        could be sent; a failure while reading fails the replies not read yet."""
        self.sends += 1
        self.commands += len(commands)
        pool = self._pool
        try:
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except MaxConnectionsError:
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise NotSent(str(exc)) from exc
        try:
            await connection.send_packed_command(b"".join(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
                except Exception as exc:  # noqa: BLE001 - the rest of the replies are lost with the connection
                    await connection.disconnect()
                    replies += [exc] * (len(commands) - len(replies))
                    break
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
