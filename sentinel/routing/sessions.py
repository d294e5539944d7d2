"""Conversation sessions: one provider+model for a conversation's whole life.

Key `sentinel:session:u<owner>:<conversation_id>` (`<owner>`: 32 hex digits of the SHA-256 of the
user's external id), JSON value
`{conversation_id, external_id, tier, provider, model, created_at, last_seen_at, migrations, claim}`
(`claim`: 32 random hex digits of the request that created it; absent from sessions stored before
it, which load as sessions with none and are never taken for a request's own),
TTL SESSION_TTL_SECONDS, refreshed by every request a model answered (a stream: once its answer began; a
request refused or never answered leaves the session as it was). Conversation ids are the user's
own: two users naming the same id have two conversations, and neither can see, change, hold or learn
of the other's (the original keyed sessions by the id alone, so another user could squat a guessable
id). Creation uses SET NX, so two concurrent first turns agree on one model; an upgrade or a
migration is written only if the session is still as the request read it (`REPLACE`), so of two
concurrent ones the first answered wins and the other leaves it; a hit refreshes it only so (`TOUCH`).
A first turn creates its session before its upstream call; one no model answered deletes it, and
one its retry answered moves it to the retry's model, only if it is still exactly as created
(`DELETE_IF`, `REPLACE_IF`): once another turn was answered with it, it stays on that model.
A creation whose reply was lost (the store failed after the write may have run; or redis-py's
cluster client sent the SET again and the second found the first's value) is settled by reading the
session back: one holding this creation's `claim` is its own (`create` returns it as written), any
other is another request's. The claim is compared only within the user's own key, and never comes
from a client.

A stored value that cannot be decoded (another version's format, corruption) is treated as no
session: logged, counted (`sentinel_cache_lookups_total{cache="session",result="undecodable"}`)
and replaced by the next session created under that id; never an error.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from sentinel.domain.catalogue import MAX_PROVIDER_NAME, UPSTREAM_MODEL_PATTERN
from sentinel.errors import PermissionDenied, StoreUnavailable
from sentinel.native._wire import is_number
from sentinel.observability.metrics import Metrics
from sentinel.store import DELETE_IF, LocalOps, Script, Store

log = logging.getLogger("sentinel.sessions")

_UPSTREAM_MODEL = re.compile(UPSTREAM_MODEL_PATTERN)  # (`fullmatch`: `$` passes a final newline)

_TOUCH_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, s = pcall(cjson.decode, raw)
if not ok or type(s) ~= 'table' then return 0 end
if s['provider'] ~= ARGV[1] or s['model'] ~= ARGV[2] or s['tier'] ~= ARGV[3] then return 0 end
s['last_seen_at'] = tonumber(ARGV[4])
redis.call('SET', KEYS[1], cjson.encode(s), 'PX', ARGV[5])
return 1
"""


def _pointing(ops: LocalOps, key: str, provider: str, model: str, tier: str) -> dict[str, Any] | None:
    """The stored session under `key`, decoded, if it points at `provider`/`model`/`tier` — what the
    scripts' Lua reads first (a value that is not a JSON object is no session: None)."""
    raw = ops.get(key)
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or (data.get("provider"), data.get("model"), data.get("tier")) != (provider, model, tier):
        return None
    return data


def _touch_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    data = _pointing(ops, keys[0], args[0], args[1], args[2])
    if data is None:
        return 0
    data["last_seen_at"] = float(args[3])
    ops.set(keys[0], orjson.dumps(data), int(args[4]) / 1000)
    return 1


# Refresh last_seen_at and the TTL only if the session still points where we read it: a hit never
# overwrites a concurrent upgrade or migration.
TOUCH = Script(name="session_touch", lua=_TOUCH_LUA, local=_touch_local)

# ARGV: the provider, model, tier and migrations the session was read with, the new session (JSON),
# its TTL (ms). Compared as TOUCH does, plus `migrations` (a move there and back is a change).
_REPLACE_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, s = pcall(cjson.decode, raw)
if not ok or type(s) ~= 'table' then return 0 end
if s['provider'] ~= ARGV[1] or s['model'] ~= ARGV[2] or s['tier'] ~= ARGV[3] then return 0 end
local migrations = s['migrations']
if type(migrations) ~= 'number' then migrations = 0 end
if migrations ~= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
return 1
"""


def _replace_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    data = _pointing(ops, keys[0], args[0], args[1], args[2])
    if data is None:
        return 0
    migrations = data.get("migrations")
    if (migrations if is_number(migrations) else 0) != int(args[3]):
        return 0
    ops.set(keys[0], args[4].encode(), int(args[5]) / 1000)
    return 1


# Write a session's upgrade or migration only if it still is what the request read: of two requests
# that both changed the session they read, the first answered wins (its migration counted), and the
# other leaves it — as of two first turns (SET NX).
REPLACE = Script(name="session_replace", lua=_REPLACE_LUA, local=_replace_local)

# ARGV: the session exactly as it was created (JSON), the new session (JSON), its TTL (ms). Written
# only if the stored value is still those bytes, as DELETE_IF: a session another request was
# answered with (refreshed), changed, or created meanwhile stays.
_REPLACE_IF_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def _replace_if_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    if ops.get(keys[0]) != args[0].encode():
        return 0
    ops.set(keys[0], args[1].encode(), int(args[2]) / 1000)
    return 1


# Move the session a first turn created to the model its retry was answered by — only if it is
# still the one it created (see `SessionStore.replace_if`).
REPLACE_IF = Script(name="session_replace_if", lua=_REPLACE_IF_LUA, local=_replace_if_local)


def new_claim() -> str:
    """A creation's own token (`Session.claim`): 128 random bits, never the client's."""
    return secrets.token_hex(16)


@dataclass
class Session:
    conversation_id: str
    external_id: str
    tier: str
    provider: str
    model: str
    created_at: float
    last_seen_at: float
    migrations: int = 0
    # The token of the creation that wrote it (`SessionStore.create`): a new one for every new
    # session; kept by its changes (`replace` copies it); None for one stored before tokens. Not
    # part of a session's equality (what it is), only of which creation wrote it.
    claim: str | None = field(default_factory=new_claim, compare=False)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        if self.claim is None:
            del data["claim"]  # as stored before tokens: such a session is written back unchanged
        return orjson.dumps(data)

    def view(self) -> dict[str, Any]:
        """The session as the debug and admin views show it (its claim token is no one's business)."""
        data = asdict(self)
        del data["claim"]
        return data

    def anew(self, **changes: Any) -> Session:
        """A copy with `changes`, to be created as a new session: a claim of its own, so that a
        creation of it is never taken for the one that wrote this (`SessionStore.create`)."""
        return replace(self, **changes, claim=new_claim())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session:
        """The inverse of `to_bytes`; ValueError when `raw` is not a session."""
        data = orjson.loads(raw)  # orjson.JSONDecodeError is a ValueError
        if not isinstance(data, dict):
            raise ValueError("a session must be a JSON object")
        for name in ("conversation_id", "external_id", "tier", "provider", "model"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"a session needs a string {name}")
        if not _UPSTREAM_MODEL.fullmatch(data["model"]):  # (one a tier table held before that rule)
            raise ValueError("a session's model must be a model name a tier may hold")
        if len(data["provider"]) > MAX_PROVIDER_NAME:  # (no tier entry names one: its turns were 500s)
            raise ValueError("a session's provider must be a provider name a tier may hold")
        for name in ("created_at", "last_seen_at"):
            if not is_number(data.get(name)):
                raise ValueError(f"a session needs a numeric {name}")
        migrations = data.get("migrations", 0)
        if isinstance(migrations, bool) or not isinstance(migrations, int):
            raise ValueError("a session's migrations must be an integer")
        claim = data.get("claim")  # absent from sessions stored before tokens: None, never one of ours
        return cls(
            data["conversation_id"], data["external_id"], data["tier"], data["provider"], data["model"],
            float(data["created_at"]), float(data["last_seen_at"]), migrations,
            claim if isinstance(claim, str) and claim else None,
        )


def _ours(stored: Session, session: Session) -> bool:
    """Whether `stored` (read under `session`'s key: the same user's) is the one `session`'s
    creation wrote: the same user and claim token (a session from before tokens is no one's)."""
    return session.claim is not None and stored.claim == session.claim and stored.external_id == session.external_id


def _owned(session: Session, external_id: str) -> Session:
    """`session`, checked to be `external_id`'s (its key is theirs: only a hash collision differs)."""
    if session.external_id != external_id:
        raise PermissionDenied(
            "This conversation_id belongs to another user; start a new conversation with a new id",
            code="conversation_forbidden",
        )
    return session


# Conversation ids Sentinel derives begin with this; a client may not send one (see the router),
# or another user who knows a victim's opening messages could take the victim's derived id first.
AUTO_PREFIX = "auto-"


def auto_conversation_id(external_id: str, system: str, first_user: str) -> str:
    """SESSION_AUTO_KEY: the same user, system prompt and opening message -> the same conversation."""
    digest = hashlib.sha256("\x1f".join((external_id, system, first_user)).encode()).hexdigest()
    return f"{AUTO_PREFIX}{digest[:40]}"


class SessionStore:
    """Reads and writes sessions; raises StoreUnavailable when the store is down (callers degrade)."""

    def __init__(
        self, store: Store, ttl: float, clock: Callable[[], float] = time.time, *, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.metrics = metrics

    @staticmethod
    def key(external_id: str, conversation_id: str) -> str:
        """The store key of `external_id`'s conversation `conversation_id`."""
        owner = hashlib.sha256(external_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"sentinel:session:u{owner}:{conversation_id}"

    async def get(self, conversation_id: str, external_id: str) -> Session | None:
        """The user's session of the conversation; None when there is none or it cannot be decoded."""
        session = await self._read(external_id, conversation_id)
        return None if session is None else _owned(session, external_id)

    async def _read(self, external_id: str, conversation_id: str) -> Session | None:
        raw = await self.store.get(self.key(external_id, conversation_id))
        if raw is None:
            return None
        try:
            return Session.from_bytes(raw)
        except ValueError as exc:
            if self.metrics is not None:
                self.metrics.child(self.metrics.cache_lookups, "session", "undecodable").inc()
            log.warning("ignoring an undecodable session entry; it will be replaced", extra={"error": str(exc)[:200]})
            return None

    async def create(self, session: Session) -> Session:
        """Store a new session unless one appeared meanwhile; returns the session that won:
        `session` itself when this creation wrote it.

        A write whose reply was lost (StoreUnavailable) is settled by reading the session back: one
        holding `session.claim` is this creation's (returned as `session`, also if another request
        refreshed or changed it since), another is the one that won; none (or the read failing
        too) leaves the outcome unknown: the StoreUnavailable is raised. So is a SET NX that found
        the key taken (redis-py's cluster client sends a command again after a lost reply: the
        second run finds the first's value) compared by its claim. A session stored before claims
        (`claim` None) is never this creation's.

        An undecodable value in the way is deleted and creation tried once more, still with NX, so
        of two concurrent first turns over it one wins (short of a delete landing between the
        other's delete and write)."""
        key = self.key(session.external_id, session.conversation_id)
        for _ in range(2):
            try:
                if await self.store.set(key, session.to_bytes(), self.ttl, nx=True):
                    return session
            except StoreUnavailable:
                existing = await self._read(session.external_id, session.conversation_id)  # (raises if down)
                if existing is None:
                    raise  # not written, or not yet (a command still on its way): unknown
            else:
                existing = await self._read(session.external_id, session.conversation_id)
            if existing is not None:
                if _ours(existing, session):
                    return session
                return _owned(existing, session.external_id)
            await self.store.delete(key)
        return session

    async def touch(self, session: Session) -> bool:
        """Refresh TTL and last_seen_at atomically, unless the session changed meanwhile."""
        now = self.clock()
        done = await self.store.run(
            TOUCH,
            [self.key(session.external_id, session.conversation_id)],
            [session.provider, session.model, session.tier, now, int(self.ttl * 1000)],
        )
        if done:
            session.last_seen_at = now
        return bool(done)

    async def replace(self, read: Session, new: Session) -> bool:
        """Write `new` (refreshing last_seen_at and the TTL) in place of `read`, the session as the
        request read it, atomically — unless the stored one has changed meanwhile (another
        request's upgrade or migration; or it expired): then it is left as it is, False. A touch
        (last_seen_at) is no change."""
        new.last_seen_at = self.clock()
        done = await self.store.run(
            REPLACE,
            [self.key(read.external_id, read.conversation_id)],
            [read.provider, read.model, read.tier, read.migrations, new.to_bytes(), int(self.ttl * 1000)],
        )
        return bool(done)

    async def replace_if(self, created: Session, new: Session) -> bool:
        """Write `new` (refreshing last_seen_at and the TTL) in place of the stored session if it is
        still exactly `created` (as `create` wrote it), atomically: unlike `replace`, a refresh is a
        change — a session another request was answered with, changed or created meanwhile (or
        that expired) is left as it is, False."""
        new.last_seen_at = self.clock()
        done = await self.store.run(
            REPLACE_IF,
            [self.key(created.external_id, created.conversation_id)],
            [created.to_bytes(), new.to_bytes(), int(self.ttl * 1000)],
        )
        return bool(done)

    async def delete_if(self, session: Session) -> bool:
        """Delete the stored session if it is still exactly `session` (as `create` wrote it),
        atomically: a session another request created, upgraded, moved or refreshed meanwhile (or
        that expired) is left as it is, False."""
        done = await self.store.run(
            DELETE_IF, [self.key(session.external_id, session.conversation_id)], [session.to_bytes()]
        )
        return bool(done)
