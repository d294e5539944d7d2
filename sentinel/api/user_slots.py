"""How many requests one caller may have in flight in this process.

`SENTINEL_MAX_IN_FLIGHT` bounds a process's requests; without a share per caller, one key with slow
but legitimate requests (long streams, a slow upstream) could hold every slot and lock everyone
else out with 503s. A caller past `limit` requests still running gets 429 `too_many_in_flight`
(`Retry-After: 1`) at once, after authentication and before anything is read, reserved or sent; a
slot is given back when the request's answer has been sent (a stream's too; a hidden-output stream its
client left, read on for its usage, when that read ends: `RequestContext.read_on`). Counted per process,
like the global limit (N workers or replicas allow up to N x `limit`).
"""

from __future__ import annotations

from sentinel.errors import RateLimited


class UserSlots:
    """In-flight requests per caller (external id), up to `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def acquire(self, user: str) -> None:
        """Take one of `user`'s slots; RateLimited (429) when they hold `limit` already."""
        held = self._held.get(user, 0)
        if held >= self.limit:
            raise RateLimited(
                f"Too many requests of this caller in flight (at most {self.limit}); retry when one has finished",
                code="too_many_in_flight", retry_after=1,
            )
        self._held[user] = held + 1

    def release(self, user: str) -> None:
        """Give one of `user`'s slots back (once per `acquire`)."""
        held = self._held.get(user, 0) - 1
        if held > 0:
            self._held[user] = held
        else:
            self._held.pop(user, None)

    def held(self, user: str) -> int:
        return self._held.get(user, 0)
