"""redis-py connections whose reply timeout is Redis's, not this process's: the stall grace.

When a reply's timer fires, the socket is read once more (for up to STALL_GRACE_SECONDS) before it
counts as a timeout. A process held up for longer than the timeout — starved of CPU on a busy host,
or its event loop busy with a slow callback, as on a cold start's first requests — wakes with the
reply waiting in its socket, and the event loop runs the timer before it reads the socket: such a
reply, there in time, was a timeout, the connection dropped, and the call failed (a reservation
answered 503 `quota_unavailable`; three in a row opened the breaker for everyone).

Every connection the stores make is one of these (`graced`): the single server's pool (its
auto-pipeline included) and every node of a cluster. The grace costs nothing while replies come in
time: the read runs under redis-py's own timer, as before; only when that fires is the socket read
again. A reply that does not come within the grace either is redis-py's `TimeoutError`, with
redis-py's semantics kept: the connection is dropped (unless the caller asked it kept with
`disconnect_on_error=False`) and redis-py's retry, if any, sees the same error as before.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

STALL_GRACE_SECONDS = 0.05
"""How long a reply is waited for once more after its timeout fired (see the module docstring):
a few turns of the event loop, so a reply already in the socket is read."""


class StallGrace(AbstractConnection):
    """Mixin: `read_response` reads the socket once more when the reply's timeout fires."""

    async def read_response(  # type: ignore[no-untyped-def]  # redis-py's signature, untyped there
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ):
        if timeout is not None or self.socket_timeout is None:
            # A timeout of the caller's own (a pub/sub poll: None when it expires), or none at all.
            return await super().read_response(
                disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        try:
            # Kept on a timeout, so it can be read again; dropped below on any other failure.
            return await super().read_response(
                disable_decoding, None, disconnect_on_error=False, push_request=push_request
            )
        except RedisTimeoutError:
            pass
        except ResponseError:
            raise  # the command's own error: the connection is fine
        except BaseException:
            if disconnect_on_error:
                await self.disconnect(nowait=True)
            raise
        try:
            async with asyncio.timeout(STALL_GRACE_SECONDS):
                return await super().read_response(
                    disable_decoding, math.inf, disconnect_on_error=False, push_request=push_request
                )
        except ResponseError:
            raise
        except BaseException as exc:
            if disconnect_on_error:
                await self.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):  # the grace's own: no reply even now
                raise RedisTimeoutError(f"Timeout reading from {self._host_error()}") from None
            raise


class GracedConnection(StallGrace, Connection):
    """A TCP connection with the stall grace."""


class GracedSSLConnection(StallGrace, SSLConnection):
    """A TLS connection with the stall grace."""


class GracedUnixDomainSocketConnection(StallGrace, UnixDomainSocketConnection):
    """A Unix socket connection with the stall grace."""


_GRACED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: GracedConnection,
    SSLConnection: GracedSSLConnection,
    UnixDomainSocketConnection: GracedUnixDomainSocketConnection,
}


def graced(connection_class: type[Any]) -> type[Any]:
    """`connection_class` with the stall grace (the class redis-py picked for a URL's scheme)."""
    if issubclass(connection_class, StallGrace):
        return connection_class
    try:
        return _GRACED[connection_class]
    except KeyError:
        raise TypeError(f"no stall grace for {connection_class.__name__}") from None
