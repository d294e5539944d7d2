"""Failed authentications are rate-limited per client, before any identity lookup.

A flood of made-up bearer tokens would otherwise cost one database or governance lookup each. A
client with `limit` failed authentications in the current minute gets 429 `auth_rate_limited`
for every request until that minute ends, without a lookup — but for a credential whose identity is
cached (`Deps.authenticate`): it needs no lookup, and the users sharing the client's address (a NAT,
an unnamed proxy) must not be locked out by one of them. Lookups that go to the identity source
(`lookup`) are counted while they run: a client has at most `limit` minus its failures of this
minute in flight at once, and further ones wait their turn (or are refused once the failures reach
the limit), so a burst of concurrent made-up tokens cannot all pass the check before the first of
them has failed. Tokens found in the identity cache never wait, nor do requests that join their
token's lookup under way (`Authenticator`: they ask no source). A key typed into a sign-in form is
one such guess (`attempt`), judged in a turn once its form is read; a form that never arrives (its
body deadline passed, or the client left) is a failed one too.

A client is its address: an IPv4 address (an IPv4-mapped IPv6 one counts as its IPv4 address, and
so does a 6to4 one, 2002:AABB:CCDD::/48 for AA.BB.CC.DD: by its /64 one IPv4 host was 65,536
clients), or the /64 an IPv6 address belongs to (one host usually holds a whole /64: counting its
addresses one by one would give it billions of tries). The address is the socket peer's, or the one a
trusted proxy reported (`SENTINEL_FORWARDED_ALLOW_IPS`).

Where it is counted: with a shared store (Redis, Redis Cluster: `Store.shared`) a client's failures
of a minute live in the store, one counter per (bucket, address, minute) with that minute as its TTL
(`COUNT_FAILURE`, one key: atomic with EVALSHA), so every worker and replica on that store counts
one total — N processes admit `limit` failures a minute, not N x `limit`. Only failures and the
checks that precede a lookup or a key's judgement touch the store (`check`); a credential whose
identity is cached is served without them, and a request with no credential at all is judged on
this process's table alone (`check_here`: it costs no lookup, and no key is guessed with it). This
process's table mirrors what it learnt of the shared count (the larger of its own and the store's),
so a client seen at its limit is refused without asking the store again that minute. When the store
cannot answer, the table is the count: each process counts its own until the store is back (no one
is locked out by an outage, nor are the failures uncounted). The in-memory store (one process, the
embedded default) uses the table alone. The lookups in flight (`lookup`) are counted per process.
The table holds at most `max_clients` clients: when it is full, the counts of past minutes and of
clients below the limit are dropped first; clients at the limit are never forgotten before their
minute ends.

Each address has two buckets (`client_of`): failures of requests a browser page of another origin
sent (an `Origin` header, and the browser's `Sec-Fetch-Site` or else the `Host` saying it is another
origin than Sentinel's own, `from_another_origin`) count in
its second, cross-origin bucket. With `SENTINEL_CORS_ORIGINS` a page can make its visitors' browsers
send wrong keys; counted with the address's own, a page left open kept a whole office (a NAT) out of
the admin API, the console and every key not cached. Now it can at worst throttle the browser apps'
cross-origin calls from that address; server-side clients (no `Origin`) and the console (same
origin) keep their own count. The bucket is not keyed by the origin's value (a script writing a new
one per request would get a fresh bucket each time): a script adding an `Origin` moves its guesses to
the second bucket, throttled there too — at most twice `limit` failures per window in all.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.requests import ClientDisconnect, Request

from sentinel.api.context import header
from sentinel.api.docs_auth import from_another_site
from sentinel.errors import Overloaded, RateLimited, StoreUnavailable
from sentinel.observability.logging import Repeated
from sentinel.store import Store
from sentinel.store.base import LocalOps, Script

log = logging.getLogger("sentinel.auth")

MAX_CLIENTS = 100_000
CROSS_ORIGIN = "cross-origin "  # what an address's second bucket is counted under: this, then the address
PREFIX = "sentinel:authfail:"  # then `<minute index>:<client>` (`shared_key`)

# KEYS[1]: a client's counter of one minute; ARGV[1]: its TTL in ms. Adds one failure and returns the
# total; a new counter (or one somehow left without a TTL) gets the TTL, so it never outlives long.
_COUNT_LUA = """
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def _count_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    n = ops.incrby(keys[0], 1)
    if ops.pttl(keys[0]) < 0:
        ops.expire(keys[0], int(args[0]) / 1000)
    return n


# Sent once (`Script.once`): redis-py's cluster client sent it again after a lost reply, and one
# failed authentication was counted twice. A lost reply is an outage for `failed` (counted here).
COUNT_FAILURE = Script(name="authfail_count", lua=_COUNT_LUA, local=_count_local, once=True)


def address_of(request: Request) -> str | None:
    """The client's address, as the failed-authentication throttle counts it (the peer's, or the one
    a trusted proxy forwarded: `SENTINEL_FORWARDED_ALLOW_IPS`)."""
    client = request.scope.get("client")
    return client[0] if client else None


def from_another_origin(request: Request) -> bool:
    """Whether the request says (`Origin`) that a page of another origin than Sentinel's own sent
    it: a browser's cross-origin call. The browser's own word (`Sec-Fetch-Site`, which no page can
    set) decides when it is sent — a proxy in front may send its upstream name as `Host` (nginx's
    default), so the console's same-origin sign-in named another origin than that `Host` —; else
    the `Origin` is compared with the request's `Host` (any scheme). An opaque origin (`null`) is
    another. Clients that are not browsers send no `Origin`."""
    raw = header(request.scope, b"origin")
    if raw is None:
        return False
    origin = raw.decode("latin-1")
    if "sec-fetch-site" in request.headers:
        return from_another_site(request.headers)
    _, sep, authority = origin.partition("://")
    host = request.headers.get("host")
    return not sep or host is None or authority.strip().lower() != host.strip().lower()


def client_of(request: Request) -> str | None:
    """What the throttle counts the request's failures under: its address (`address_of`), or that
    address's cross-origin bucket when a page of another origin sent it (see the module docstring)."""
    address = address_of(request)
    if address is not None and from_another_origin(request):
        return CROSS_ORIGIN + address
    return address


@functools.lru_cache(maxsize=4096)
def client_key(address: str | None) -> str | None:
    """What the throttle counts `address` under: IPv4 as is, IPv6 by its /64 but for an IPv4 one
    (IPv4-mapped or 6to4: its IPv4 address; see the module docstring);
    a cross-origin bucket's address (`client_of`) the same way, in that bucket."""
    if address is not None and address.startswith(CROSS_ORIGIN):
        key = client_key(address[len(CROSS_ORIGIN):])
        return None if key is None else CROSS_ORIGIN + key
    if address is None or ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if (ipv4 := ip.ipv4_mapped or ip.sixtofour) is not None:
        return str(ipv4)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


def shared_key(index: int, key: str) -> str:
    """The store key of client `key`'s failures in minute `index`: readable for an address (or a
    cross-origin bucket's), a digest for anything longer (a proxy's odd `X-Forwarded-For` entry)."""
    if len(key) > 64:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{PREFIX}{index}:{key}"


class FailedAuthThrottle:
    """Per-client counts of failed authentications over fixed one-minute windows — in the store when
    it is shared by several processes, else in this one — and of the identity lookups each client
    has in flight in this process."""

    def __init__(
        self, limit: int, *, window: float = 60.0, clock: Callable[[], float] = time.time,
        max_clients: int = MAX_CLIENTS, store: Store | None = None,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self.store = store if store is not None and store.shared else None  # None: this process's table alone
        self._counts: dict[str, tuple[int, int]] = {}  # client -> (window index, failures)
        self._pending: dict[str, int] = {}  # client -> identity lookups in flight
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}  # client -> lookups waiting for a turn
        self._repeated = Repeated(log)

    async def check(self, address: str | None) -> None:
        """RateLimited (429) when `address` already failed `limit` times in this window, in every
        process sharing the store (this process's count when the store cannot say)."""
        key = client_key(address)
        if key is None:
            return
        self._refuse(key)
        if self.store is None:
            return
        index = math.floor(self.clock() / self.window)
        try:
            raw = await self.store.get(shared_key(index, key))
            count = int(raw) if raw is not None else 0
        except (StoreUnavailable, ValueError):
            self._repeated.warning("failed-authentication throttle: store unavailable; counting in this process")
            return
        self._learn(key, index, count)
        self._refuse(key)

    def check_here(self, address: str | None) -> None:
        """`check` on what this process knows (its own failures, and the shared count it last saw):
        for requests that cost no lookup and judge no key."""
        key = client_key(address)
        if key is not None:
            self._refuse(key)

    async def failed(self, address: str | None) -> None:
        """Count one failed authentication from `address`: in this process's table at once (before
        any await: a lookup waiting for its turn sees it), then in the shared store."""
        key = client_key(address)
        if key is None:
            return
        index = math.floor(self.clock() / self.window)
        seen = self._counts.get(key)
        self._learn(key, index, seen[1] + 1 if seen is not None and seen[0] == index else 1)
        if self.store is None:
            return
        try:
            total = await self.store.run(COUNT_FAILURE, [shared_key(index, key)], [math.ceil(self.window * 1000)])
        except StoreUnavailable:
            self._repeated.warning("failed-authentication throttle: store unavailable; counting in this process")
            return
        self._learn(key, index, int(total))

    def _refuse(self, key: str) -> None:
        if self._failures(key) >= self.limit:
            retry = (math.floor(self.clock() / self.window) + 1) * self.window - self.clock()
            raise RateLimited(
                "Too many failed authentications from this address; retry later",
                code="auth_rate_limited", retry_after=retry,
            )

    def _learn(self, key: str, index: int, count: int) -> None:
        """Take `count` failures of `key` in minute `index` into the table, unless it holds more."""
        seen = self._counts.get(key)
        if count <= 0 or (seen is not None and seen[0] == index and seen[1] >= count):
            return
        if key not in self._counts and len(self._counts) >= self.max_clients and not self._make_room(index):
            return  # every client in the table is at its limit this minute: those stay
        self._counts[key] = (index, count)
        if count >= self.limit:
            self._wake(key)  # waiting lookups are refused now

    @asynccontextmanager
    async def lookup(self, address: str | None) -> AsyncIterator[None]:
        """Around one identity-source lookup for `address`: waits while the client has `limit` minus
        its failures in flight; RateLimited (429) when its failures reach the limit meanwhile."""
        key = client_key(address)
        if key is None:
            yield
            return
        while self._failures(key) + self._pending.get(key, 0) >= self.limit:
            self._refuse(key)
            turn = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, []).append(turn)
            try:
                await turn
            finally:
                queue = self._waiting.get(key)
                if queue is not None and turn in queue:
                    queue.remove(turn)
                if not queue:
                    self._waiting.pop(key, None)
        self._pending[key] = self._pending.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._pending[key] - 1
            if left:
                self._pending[key] = left
            else:
                del self._pending[key]
            self._wake(key)

    async def attempt(
        self, address: str | None, read: Callable[[], Awaitable[str | None]], matches: Callable[[str], bool],
    ) -> bool:
        """One key typed into a sign-in form from `address`: whether `matches` accepts the key `read`
        returns (None or empty: wrong). RateLimited (429) when the client failed `limit` times, before
        the form is read, and again after: the key is judged in a lookup turn, a wrong one counted
        before the turn is given back, so concurrent forms cannot all pass the check before the first
        is judged. The form is read outside the turn: a slow form holds none; one refused while read
        (its body deadline passed: 408, its client left: 499, too large: 413, not a form: 400) counts
        as a failed sign-in — only the server being full (Overloaded) is not the sender's doing."""
        await self.check(address)
        try:
            key = await read()
        except (Exception, ClientDisconnect) as exc:
            if not isinstance(exc, Overloaded):
                await self.failed(address)
            raise
        async with self.lookup(address):
            if key and matches(key):
                return True
            await self.failed(address)
            return False

    def _failures(self, key: str) -> int:
        seen = self._counts.get(key)
        if seen is None or seen[0] != math.floor(self.clock() / self.window):
            return 0
        return seen[1]

    def _wake(self, key: str) -> None:
        """Let the client's waiting lookups look again (each re-checks its turn)."""
        for turn in self._waiting.get(key, ()):
            if not turn.done():
                turn.set_result(None)

    def _make_room(self, index: int) -> bool:
        """Drop past minutes, then clients below the limit; False if the table is still full."""
        self._counts = {k: c for k, c in self._counts.items() if c[0] == index}
        if len(self._counts) >= self.max_clients:
            self._counts = {k: c for k, c in self._counts.items() if c[1] >= self.limit}
        return len(self._counts) < self.max_clients
