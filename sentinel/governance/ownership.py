"""Who owns each object created upstream through Sentinel (responses, files, batches, ...).

Every user shares the company's provider account, so the provider itself cannot tell user A's
stored response from user B's. Sentinel records the owner of every object id it sees created, in
the store (shared by replicas) under `sentinel:owner:<id>`, and a reference to an object that is
not the caller's — unknown, expired or someone else's — is answered as if it did not exist.
Ownership never outlives what it guards by less than the provider's retention (`ttl` None = kept
until the object is deleted through Sentinel). A store outage fails closed (`StoreUnavailable`).
An owner, once recorded, is never replaced: a claim of another user's object changes nothing.
Responses API items (`msg_…`, `fc_…`) are recorded the same way, as Sentinel shows them to a user
(`sentinel.services.objects.answer_items`): an `item_reference` names only the caller's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, TypeVar, cast

import orjson

from sentinel.domain.files import FileFacts
from sentinel.domain.text import is_text
from sentinel.errors import InvalidRequest, NotFound, StoreUnavailable
from sentinel.observability.logging import Repeated
from sentinel.store import DELETE_IF, Store
from sentinel.store.base import LocalOps, Script, beside

log = logging.getLogger("sentinel.ownership")
_A = TypeVar("_A")
_B = TypeVar("_B")

_PREFIX = "sentinel:owner:"
# A file whose every line Sentinel checked as a batch's input, wrote back naming its owner's
# pseudonym as the end user, and measured (value: JSON of its owner and its `BatchEstimate`): only
# such a file may be a batch's `input_file_id` (each line is a request the provider runs in the
# owner's name, reserved against the owner's plan when the batch is made). Files vouched for under
# the earlier keys went upstream with the end user the client wrote (`_UNWRITTEN_BATCH_INPUT`) or
# were never measured (`_UNMEASURED_BATCH_INPUT`): no longer a batch's input, their record is only
# dropped with them.
_BATCH_INPUT = "sentinel:batch-measured:"
_UNMEASURED_BATCH_INPUT = "sentinel:batch-lines:"
_UNWRITTEN_BATCH_INPUT = "sentinel:batch-input:"
# A file uploaded as an eval's data (`purpose=evals`) whose every item Sentinel read for the objects
# it names, all its uploader's (value: that owner): only such a file may be an eval run's data source
# (an item a run makes a model's input names objects the provider reads).
_EVAL_DATA = "sentinel:eval-data:"
# The tokens a stored response (or a conversation, as of its last response) holds: a request that
# continues it (`previous_response_id`, `conversation`) makes the provider read all of them again.
_CONTEXT = "sentinel:context:"
# A stored response whose stream was cut in a conversation (`Ownership.remember_cut_turn`): the
# conversation, the cut exchange's charge it was counted at, and the count that turn left (JSON),
# until the first read charging the response's usage corrects the conversation's count by the
# difference (`Ownership.correct_turn`), or the response is deleted.
_CUT_TURN = "sentinel:cut-turn:"
# The stored responses of a conversation whose streams were cut before the provider's count
# (`Ownership.note_cut_turn`), not charged yet: a hash of their ids, each with when it was noted and
# who made it (`<ms>:<owner>`), MAX_CUT_TURNS at most (the oldest dropped), kept as long as a
# response is (its newest's: refreshed by each noted), dropped with the conversation. The provider
# adds such a turn's whole answer to the conversation's items: a read of them first charges each
# (`sentinel.services.answers.CutTurns`), as the first read of the response itself would. A stored
# response made later in the conversation, or continuing such a response (`previous_response_id`),
# has the same list under its own id (`Ownership.inherit_cut_turns`): its input items show them too.
_CUT_TURNS = "sentinel:cut-turns:"
MAX_CUT_TURNS = 32
# The output tokens charged provisionally for an Assistants run's `requires_action` steps (their tool
# calls, as first shown: `RunCharges.shown_steps`), summed, and the input tokens (what each step's
# model turn read, as Sentinel estimates it): its usage, once shown, is charged beyond them.
_SHOWN_OUTPUT = "sentinel:run-shown-output:"
_SHOWN_INPUT = "sentinel:run-shown-input:"
_SHOWN = (_SHOWN_INPUT, _SHOWN_OUTPUT)
# What Sentinel read of a file uploaded through it (`sentinel.domain.files.FileFacts`): how a request
# naming the file by id is estimated. Written once (a file's content never changes), only for the
# file's owner, dropped with the file.
_FILE_FACTS = "sentinel:file-facts:"
# A video made through Sentinel: its (model, size, seconds), what a remix or an edit of it is reserved
# (`remember_video`), kept as its owner is.
_VIDEO_FACTS = "sentinel:video-facts:"
# An object whose usage was charged (made through Sentinel, or first shown with its usage to a read):
# a later read of it (a batch or a run polled until done, a stored response fetched) charges nothing.
_CHARGED = "sentinel:charged:"
# A read's claim of an object's charge (`Ownership.claim_charge`) is pending until its record is
# stored; then it is confirmed. Any other mark (`charge_once`'s) is a charge done.
# The objects whose charge marks reads made under another object, their parent (a thread's runs, an
# eval's runs: the read's `within`, the object its path names; field value `_MARKED`), and the items
# of a conversation its reads made their caller's, kept without a TTL as it is (`_OWNED`): a hash of
# their ids, beside the parent's owner record in its hash slot (`beside`), so that a claim adding a
# child (`ADOPT`, only while the parent has an owner) and the parent's `forget` (`ORPHAN`) are atomic
# against each other on a Redis Cluster too. The parent's `forget` ends its children's records along
# with it: no run is read but through its parent's path (its owner checked), nor charged again once
# it is gone; an item is named by id still while a stored response shows it.
_CHILDREN = ":charged-children"
_MARKED = "c"
_OWNED = "o"
# The most children `forget` ends the marks of at once (one command each: they are in as many slots).
FORGET_AT_ONCE = 100
# How long a child's mark is kept once its parent is deleted (`forget`), rather than removed then: a
# read that fetched the child before the DELETE and claims its charge after it still finds it
# charged (removed, it was charged again); the provider deletes the children with their parent, so
# none is read again afterwards. A day: longer than any read lasts (a relayed answer's
# SENTINEL_STREAM_MAX_SECONDS, 900 by default).
FORGOTTEN_CHILD_TTL = 86400.0
# How long a conversation's item stays its owner's once the conversation is deleted: a stored
# response may show it still (its output, or its input items), and is kept 30 days (31: `COLLECTIONS`).
FORGOTTEN_ITEM_TTL = 31 * 86400.0
_PENDING = b"pending:"
_CONFIRMED = b"charged"
ChargeClaim = Literal["first", "pending", "charged"]
_MAX_ID = 200
# Ids `require` reads in one batched store read (`get_many`; one MGET on a single Redis): a body
# names at most `MAX_REFERENCES` (1,000) distinct objects, read in one.
READS_AT_ONCE = 1000
# Context sizes `contexts` reads in one batched store read (one MGET on a single Redis): a batch's
# lines continue at most `MAX_REFERENCES` (1,000) distinct objects, read in one.
CONTEXTS_AT_ONCE = 1000


def _charged(mark: bytes | None) -> bool:
    """Whether a charge mark says the object's usage was charged (a claim not yet confirmed did not)."""
    return mark is not None and not mark.startswith(_PENDING)


def _keyable(object_id: str) -> bool:
    """Whether `object_id` can name an object: 1 to _MAX_ID characters of text. A lone surrogate (a
    batch line is read as Python's json reads it) names nothing a provider made, and no store key can
    hold it (a Redis command with it failed: a 500)."""
    return 0 < len(object_id) <= _MAX_ID and is_text(object_id)

# Record ARGV[1] as the owner unless another owner is recorded; the owner's own claim refreshes the
# expiry (ARGV[2] ms; "" = none), but never gives one to a record kept without: an item of a
# conversation (kept until deleted) shown again by a read of its response (31 days) stays its
# owner's as long as the conversation holds it. 1 when the caller owns the object afterwards, else 0.
_CLAIM_LUA = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
elseif not current or redis.call('PTTL', KEYS[1]) ~= -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


def _claim_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    current = ops.get(keys[0])
    if current is not None and current.decode() != args[0]:
        return 0
    if args[1] == "":
        ops.set(keys[0], args[0].encode())
    elif current is None or ops.pttl(keys[0]) != -1:
        ops.set(keys[0], args[0].encode(), int(args[1]) / 1000)
    return 1


CLAIM = Script("sentinel_owner_claim", _CLAIM_LUA, _claim_local)

# A conversation's count after a turn in it: the turn's tokens (ARGV[1]: its input, the conversation
# as it was read included, and its output) plus what the count grew by since the turn was admitted
# at ARGV[2] (items added, other turns ended meanwhile: the provider's conversation holds them too);
# kept for ARGV[3] ms ("" = no expiry). Digits only, as every count (`Ownership.context_of`).
_TURN_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '') or 0
local grown = current - tonumber(ARGV[2])
if grown < 0 then
  grown = 0
end
local value = string.format('%.0f', tonumber(ARGV[1]) + grown)
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], value)
else
  redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
end
return value
"""


def _turn_local(ops: LocalOps, keys: list[str], args: list[str]) -> bytes:
    raw = ops.get(keys[0])
    current = int(raw) if raw is not None and raw.isdigit() else 0
    value = str(int(args[0]) + max(0, current - int(args[1]))).encode()
    ops.set(keys[0], value, None if args[2] == "" else int(args[2]) / 1000)
    return value


# The count it set is returned (its digits): what a cut turn's correction checks is still there
# (`Ownership.correct_turn`). Sent once (`Script.once`): a second run cannot tell itself from the next
# turn, and added the turn's own growth again (redis-py's cluster client sent it again after a lost
# reply: a turn admitted at 100 that left 150 left 200, and every later turn was charged 50 more).
TURN = Script("sentinel_context_turn", _TURN_LUA, _turn_local, once=True)

# KEYS[1]'s value, deleted: only one caller gets it (nil when there is none).
_TAKE_LUA = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
end
return value
"""


def _take_local(ops: LocalOps, keys: list[str], args: list[str]) -> bytes | None:
    value = ops.get(keys[0])
    if value is not None:
        ops.delete(keys[0])
    return value


TAKE = Script("sentinel_take", _TAKE_LUA, _take_local)

# Set KEYS[1] to ARGV[2] only if it still holds ARGV[1], keeping its expiry: 1 when set, else 0.
_SET_IF_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""


def _set_if_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    if ops.get(keys[0]) != args[0].encode():
        return 0
    ttl = ops.pttl(keys[0])
    ops.set(keys[0], args[1].encode(), ttl / 1000 if ttl > 0 else None)
    return 1


SET_IF = Script("sentinel_set_if", _SET_IF_LUA, _set_if_local)


# Record ARGV[2..] as children (of kind ARGV[1]: `_MARKED`, `_OWNED`) of the object whose owner
# record is KEYS[1], in its children's hash KEYS[2] (kept as long as the owner record: its TTL, if
# any), only while that owner is recorded: 1 when recorded, 0 when the object has no owner (deleted).
_ADOPT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 2, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
end
local left = redis.call('PTTL', KEYS[1])
if left >= 0 then
  redis.call('PEXPIRE', KEYS[2], math.max(left, 1))
end
return 1
"""


def _adopt_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    if ops.get(keys[0]) is None:
        return 0
    for child in args[1:]:
        ops.hset(keys[1], child, args[0].encode())
    left = ops.pttl(keys[0])
    if left >= 0:
        ops.expire(keys[1], max(left, 1) / 1000)
    return 1


ADOPT = Script("sentinel_owner_adopt", _ADOPT_LUA, _adopt_local)

# Answer the children in KEYS[1] (each id and its kind, flat).
_CHILDREN_LUA = "return redis.call('HGETALL', KEYS[1])"


def _children_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[bytes]:
    return [part for child, kind in ops.hgetall(keys[0]).items() for part in (child.encode(), kind)]


CHILDREN = Script("sentinel_owner_children", _CHILDREN_LUA, _children_local)

# Drop the owner record KEYS[1] and answer the children in KEYS[2] (as `CHILDREN`), in one step: no
# child is adopted after it (`ADOPT` finds no owner). The children's hash is left for the caller to
# delete once their records are ended (a run of this script sent again, its reply lost, answers them
# again), ending in ARGV[1] ms at the latest: a caller that fails or dies before deleting it leaves
# no list kept for ever (its parent's owner record gone, nothing would read or drop it again).
_ORPHAN_LUA = """
redis.call('DEL', KEYS[1])
local left = redis.call('PTTL', KEYS[2])
if left == -1 or left > tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return redis.call('HGETALL', KEYS[2])
"""


def _orphan_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[bytes]:
    ops.delete(keys[0])
    left = ops.pttl(keys[1])
    if left == -1 or left > int(args[0]):
        ops.expire(keys[1], int(args[0]) / 1000)
    return _children_local(ops, keys[1:], [])


ORPHAN = Script("sentinel_owner_orphan", _ORPHAN_LUA, _orphan_local)


# Confirm the charge mark KEYS[1] as ARGV[1] only while it is there, keeping the expiry it has; one
# without (a claim made with no `ttl`, or a mark written before) gets ARGV[2] ms ("" = none). 1 when
# confirmed, 0 when the mark is gone (its object deleted since its claim).
_CONFIRM_LUA = """
local left = redis.call('PTTL', KEYS[1])
if left == -2 then
  return 0
end
if left >= 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', math.max(left, 1))
elseif ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


def _confirm_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    left = ops.pttl(keys[0])
    if left == -2:
        return 0
    if left >= 0:
        ops.set(keys[0], args[0].encode(), max(left, 1) / 1000)
    else:
        ops.set(keys[0], args[0].encode(), None if args[1] == "" else int(args[1]) / 1000)
    return 1


CONFIRM = Script("sentinel_charge_confirm", _CONFIRM_LUA, _confirm_local)


# Drop ARGV's ids from the children's hash KEYS[1] (a conversation's item deleted on its own).
_DROP_CHILDREN_LUA = "return redis.call('HDEL', KEYS[1], unpack(ARGV))"


def _drop_children_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    return ops.hdel(keys[0], *args)


DROP_CHILDREN = Script("sentinel_owner_drop_children", _DROP_CHILDREN_LUA, _drop_children_local)


_CHILD_OF_LUA = "return redis.call('HGET', KEYS[1], ARGV[1])"


# Note ARGV[1] in the hash KEYS[1] as `<n>:<owner ARGV[3]>`, n the time ARGV[2] (ms) or one past the
# latest noted, whichever is more (the order they were noted in, even within a ms); then drop the
# entry noted first while there are more than ARGV[4]. The hash ends in ARGV[5] ms ("" = kept as it is).
# With ARGV[6] "1" nothing is dropped: a new entry the hash has no room for is not noted (0).
_NOTE_CUT_LUA = """
local all = redis.call('HGETALL', KEYS[1])
if ARGV[6] == '1' and #all >= 2 * tonumber(ARGV[4]) and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local at = tonumber(ARGV[2])
for i = 1, #all, 2 do
  local noted = tonumber(string.match(all[i + 1], '^(%d+):') or '0') or 0
  if all[i] ~= ARGV[1] and noted >= at then
    at = noted + 1
  end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', at) .. ':' .. ARGV[3])
while redis.call('HLEN', KEYS[1]) > tonumber(ARGV[4]) do
  all = redis.call('HGETALL', KEYS[1])
  local oldest, first = nil, nil
  for i = 1, #all, 2 do
    local noted = tonumber(string.match(all[i + 1], '^(%d+):') or '0') or 0
    if first == nil or noted < first then
      oldest, first = all[i], noted
    end
  end
  redis.call('HDEL', KEYS[1], oldest)
end
if ARGV[5] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
"""


def _noted_at(value: bytes) -> int:
    head = value.split(b":", 1)[0]
    return int(head) if head.isdigit() else 0


def _note_cut_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    at = int(args[1])
    listed = ops.hgetall(keys[0])
    if args[5] == "1" and len(listed) >= int(args[3]) and args[0] not in listed:
        return 0
    for field, value in listed.items():
        if field != args[0] and _noted_at(value) >= at:
            at = _noted_at(value) + 1
    ops.hset(keys[0], args[0], f"{at}:{args[2]}".encode())
    while len(noted := ops.hgetall(keys[0])) > int(args[3]):
        ops.hdel(keys[0], min(noted.items(), key=lambda entry: _noted_at(entry[1]))[0])
    if args[4] != "":
        ops.expire(keys[0], int(args[4]) / 1000)
    return 1


NOTE_CUT = Script("sentinel_note_cut_turn", _NOTE_CUT_LUA, _note_cut_local)


def _child_of_local(ops: LocalOps, keys: list[str], args: list[str]) -> bytes | None:
    return ops.hgetall(keys[0]).get(args[0])


CHILD_OF = Script("sentinel_owner_child_of", _CHILD_OF_LUA, _child_of_local)


def _children_key(parent: str) -> str | None:
    """The key of `parent`'s children (`_CHILDREN`), beside its owner record; None for an id no
    such key can be made for (see `beside`)."""
    return beside(_PREFIX + parent, _CHILDREN)


def _failures(results: Iterable[object]) -> int:
    """How many of `results` (`asyncio.gather`'s, `return_exceptions`) are a store's failure; any other
    exception is raised."""
    failed = 0
    for result in results:
        if isinstance(result, StoreUnavailable):
            failed += 1
        elif isinstance(result, BaseException):
            raise result
    return failed


class Ownership:
    """Owner records over the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # What a store outage costs its callers (an object left unowned, a context size not kept),
        # met by every answer that creates or continues an object: written when first met, then once
        # a minute with the count (each line names no object), not once a request.
        self.outage = Repeated(log)

    async def claim(self, object_id: str, owner: str, ttl: float | None) -> bool:
        """Record `owner` as the owner of `object_id` (a new object, or one the owner's object names),
        in one atomic step; False (and nothing changed) when another user owns it already."""
        if not _keyable(object_id):
            return False
        expiry = "" if ttl is None else str(max(1, round(ttl * 1000)))
        if int(await self.store.run(CLAIM, [_PREFIX + object_id], [owner, expiry])):
            return True
        log.warning("an answer named an object another user owns; its owner was kept", extra={"object": object_id})
        return False

    async def claim_all(
        self, created: Iterable[tuple[str, float | None]], owner: str, *, parent: str | None = None
    ) -> set[str]:
        """`claim` each of `created` (id, ttl) for `owner`, all at once: on one Redis server they go
        as one pipeline (`sentinel.store.autopipeline`), one round trip however many — a response
        and its items. Callers bound how many (`MAX_ANSWER_ITEMS`). StoreUnavailable once every
        claim ended, when one could not be made. The ids not claimed (another user's, or none a key
        can hold): nothing else of them is the caller's to record (a response's context).

        `parent`: the conversation whose items they are (kept without a TTL as it is): those claimed
        are then listed as its children (`ADOPT`), so that its `forget` ends them
        (`FORGOTTEN_ITEM_TTL`) — they stayed in the store for good once it was deleted; those claimed
        after that `forget` (the conversation found without an owner) are ended so at once."""
        claims = dict(created)
        if parent is not None:
            results = await self._claim_children(parent, claims, owner)
        elif len(claims) == 1:  # (most answers create one object: no gather)
            [(object_id, ttl)] = claims.items()
            results = [await self.claim(object_id, owner, ttl)]
        else:
            results = await self._claim_each(claims, owner)
        return {object_id for object_id, mine in zip(claims, results, strict=True) if not mine}

    async def _claim_each(self, claims: dict[str, float | None], owner: str) -> list[bool]:
        """`claim` each of `claims` at once: each one's answer, in order; the first failure raised
        once every claim ended."""
        results = await asyncio.gather(*(self.claim(i, owner, ttl) for i, ttl in claims.items()),
                                       return_exceptions=True)
        failed = [result for result in results if isinstance(result, BaseException)]
        if failed:
            results.clear()  # (see `_together`: no cycle through the traceback)
            raise failed.pop(0)
        return [result is True for result in results]

    async def _claim_children(self, parent: str, claims: dict[str, float | None], owner: str) -> list[bool]:
        """`claim_all` of `parent`'s items (see there): each one's `claim`, in order."""
        results = await self._claim_each(claims, owner)
        # only the caller's own (another's item, never, is ended by this conversation's DELETE), listed
        # once claimed: listed, a `forget` after ends them; found without an owner, it came before
        kept = [object_id for (object_id, ttl), mine in zip(claims.items(), results, strict=True)
                if mine and ttl is None]
        children = _children_key(parent) if kept and _keyable(parent) else None
        if children is not None and not int(await self.store.run(ADOPT, [_PREFIX + parent, children], [_OWNED, *kept])):
            await asyncio.gather(*(self.store.expire(_PREFIX + i, FORGOTTEN_ITEM_TTL) for i in kept))
        return results

    async def owner_of(self, object_id: str) -> str | None:
        """The owner's external id, or None when the object is unknown to Sentinel."""
        if not _keyable(object_id):
            return None
        raw = await self.store.get(_PREFIX + object_id)
        return None if raw is None else raw.decode()

    async def require(
        self, object_ids: Iterable[str], owner: str, *, files: Iterable[str] = ()
    ) -> dict[str, FileFacts]:
        """NotFound (404) unless every id belongs to `owner` — the same answer whether the object is
        someone else's or does not exist at all. Returns the facts Sentinel read at upload of those
        of `files` (ids among `object_ids` named as files) that it has (`remember_file`): one whose
        facts are missing, or could not be read (a store outage), is left out.

        Each distinct id is looked up once (its facts along with it). One id (most requests) is one
        `get`; several are read in one batched read of the store (`get_many`: one MGET on a single
        Redis, auto-pipelined, however many ids) and their facts in another beside it, READS_AT_ONCE
        ids at most a read: a body may name up to `MAX_REFERENCES` ids (the same one, too), and one
        `get` each cost a store round trip (and a pool connection) apiece. StoreUnavailable when an
        owner could not be read (fails closed); facts that could not be read are left out."""
        distinct = list(dict.fromkeys(object_ids))
        wanted = set(files)
        if len(distinct) == 1:
            return await self._require_one(distinct[0], owner, of_file=distinct[0] in wanted)
        facts: dict[str, FileFacts] = {}
        for start in range(0, len(distinct), READS_AT_ONCE):
            some = distinct[start : start + READS_AT_ONCE]
            keyable = [object_id for object_id in some if _keyable(object_id)]
            named_files = [object_id for object_id in keyable if object_id in wanted]
            owners, raw_facts = await _together(
                self.store.get_many([_PREFIX + i for i in keyable]), self._facts_many(named_files))
            found = dict(zip(keyable, owners, strict=True))
            for object_id in some:
                raw = found.get(object_id)
                if raw is None or raw.decode() != owner:
                    raise NotFound(f"No such object: '{object_id[:_MAX_ID]}'", code="object_not_found")
            for file_id, raw in zip(named_files, raw_facts, strict=True):
                read = FileFacts.decode(raw)
                if read is not None:
                    facts[file_id] = read
        return facts

    async def _require_one(self, object_id: str, owner: str, *, of_file: bool) -> dict[str, FileFacts]:
        """`require` of one id: its owner's `get` (and its facts' beside it when named as a file)."""
        if not of_file:
            if await self.owner_of(object_id) != owner:
                raise NotFound(f"No such object: '{object_id[:_MAX_ID]}'", code="object_not_found")
            return {}
        found, facts = await _together(self.owner_of(object_id), self._facts_of(object_id))
        if found != owner:
            raise NotFound(f"No such object: '{object_id[:_MAX_ID]}'", code="object_not_found")
        return {} if facts is None else {object_id: facts}

    async def _facts_many(self, file_ids: list[str]) -> list[bytes | None]:
        """The stored facts of each of `file_ids` (keyable), None each when the store could not give
        them: those files are estimated as ones Sentinel cannot read (the owners' read, made beside
        it, fails closed)."""
        if not file_ids:
            return []
        try:
            return await self.store.get_many([_FILE_FACTS + i for i in file_ids])
        except StoreUnavailable:
            return [None] * len(file_ids)

    async def _facts_of(self, file_id: str) -> FileFacts | None:
        """The facts read at upload of `file_id`, None when there are none — or the store could not
        give them: the file is then estimated as one Sentinel cannot read (its owner's lookup, made
        along, fails closed)."""
        try:
            return FileFacts.decode(await self.store.get(_FILE_FACTS + file_id)) if _keyable(file_id) else None
        except StoreUnavailable:
            return None

    async def remember_file(self, file_id: str, owner: str, facts: FileFacts) -> None:
        """Record what Sentinel read of `file_id` — its upload by `owner`, or its content read from the
        provider at `owner`'s first use (`services.file_facts`) — only while `owner` owns
        it (another user's file is never described by anyone else's upload), and only once: a
        file's content never changes, nor do its facts."""
        if _keyable(file_id) and await self.owner_of(file_id) == owner:
            await self.store.set(_FILE_FACTS + file_id, facts.encode(), None, nx=True)

    async def remember_video(self, video_id: str, owner: str, model: str, size: str, seconds: int) -> None:
        """Record the (model, size, seconds) of the video `owner` made as `video_id`, only while
        `owner` owns it and only once (a video job's never change): a remix or an edit of it is
        reserved that (`media_calls.media_call`'s `source`), not the dearest."""
        if _keyable(video_id) and await self.owner_of(video_id) == owner:
            await self.store.set(_VIDEO_FACTS + video_id, orjson.dumps([model, size, seconds]), None, nx=True)

    async def video_of(self, video_id: str) -> tuple[str, str, int] | None:
        """What `remember_video` recorded of `video_id`; None when nothing (not made through
        Sentinel, or unreadable) — or the store could not say: reserved as the dearest then."""
        try:
            raw = await self.store.get(_VIDEO_FACTS + video_id) if _keyable(video_id) else None
            found = orjson.loads(raw) if raw is not None else None
        except (StoreUnavailable, orjson.JSONDecodeError):
            return None
        if isinstance(found, list) and len(found) == 3 and isinstance(found[0], str) and isinstance(found[1], str) \
                and type(found[2]) is int:
            return found[0], found[1], found[2]
        return None

    async def forget(self, object_id: str, *, parent: str | None = None) -> None:
        """Drop the record of a deleted object: its owner and what Sentinel kept of it; its children's
        charge marks (a thread's runs, an eval's runs: `_CHILDREN`), which the provider deletes with
        it, end a day later (`FORGOTTEN_CHILD_TTL`), its items' owner records in 31 days. `parent`:
        the conversation an item deleted on its own was listed in (`claim_all`), which lists it no
        more — kept, each item added, read and deleted grew that list for as long as the conversation
        is kept (for good: no TTL).

        Nothing is left without an expiry by a store failing (or this process dying) part way: what
        the owner record stands for (its children, its own records) is ended first, while that record
        is kept — a failure then leaves the object as it was, but with its children ending —, then
        the record is dropped (`ORPHAN`, giving the children's list an end) and it all ended again (a
        read in flight may have marked a child or made a record meanwhile). StoreUnavailable when the
        owner record was kept; a failure after it is carried past, each key tried, and logged."""
        if not _keyable(object_id):
            return
        children = _children_key(parent) if parent is not None and _keyable(parent) else None
        if children is not None:
            await self.store.run(DROP_CHILDREN, [children], [object_id])
        children_key = _children_key(object_id)
        listed = [] if children_key is None else await self.store.run(CHILDREN, [children_key], [])
        await self._end(object_id, listed)
        if children_key is None:
            await self.store.delete(_PREFIX + object_id)
            found = []
        else:
            found = await self.store.run(ORPHAN, [_PREFIX + object_id, children_key],
                                         [round(FORGOTTEN_CHILD_TTL * 1000)])
        if await self._end(object_id, found, children_key):
            self.outage.warning("the store is unavailable: records of a deleted object were kept without an expiry")

    async def _end(self, object_id: str, children: list[Any], children_key: str | None = None) -> int:
        """End what `object_id`'s owner record stands for: delete its own records (and `children_key`,
        once the children are ended), give `children` (as `CHILDREN` answers) their end; every key
        tried, however many fail: how many failed."""
        ids = [c.decode() if isinstance(c, bytes) else str(c) for c in children]
        ends = [(_PREFIX + child, FORGOTTEN_ITEM_TTL) if kind == _OWNED else (_CHARGED + child, FORGOTTEN_CHILD_TTL)
                for child, kind in zip(ids[::2], ids[1::2], strict=True) if _keyable(child)]
        # (a run's provisional usage, `add_shown`: ended with its marks)
        ends += [(prefix + child, FORGOTTEN_CHILD_TTL) for child, kind in zip(ids[::2], ids[1::2], strict=True)
                 if kind == _MARKED and _keyable(child) for prefix in _SHOWN]
        failed = 0
        for start in range(0, len(ends), FORGET_AT_ONCE):
            failed += _failures(await asyncio.gather(
                *(self.store.expire(key, ttl) for key, ttl in ends[start : start + FORGET_AT_ONCE]),
                return_exceptions=True))
        # one by one: keys in different slots of a Cluster
        failed += _failures(await asyncio.gather(
            *(self.store.delete(prefix + object_id) for prefix in (
                _BATCH_INPUT, _UNMEASURED_BATCH_INPUT, _UNWRITTEN_BATCH_INPUT, _EVAL_DATA, _CONTEXT, _CHARGED,
                _FILE_FACTS, _VIDEO_FACTS, _CUT_TURN, _CUT_TURNS)),
            return_exceptions=True))
        if children_key is not None and not failed:  # (kept, with its end, for the children not ended)
            failed += _failures(await asyncio.gather(self.store.delete(children_key), return_exceptions=True))
        return failed

    async def forget_item(self, item: str, conversation: str, owner: str) -> None:
        """An item deleted from `conversation` on its own (`DELETE /v1/conversations/{id}/items/{item}`,
        answered 2xx): `forget` it — only an item `owner` owns. The path names the item under the
        caller's conversation, but any id may stand there: another user's item, or any object of
        theirs (a file), whose record — its owner, its facts, its batch input's vouch — a provider
        answering that DELETE 2xx had Sentinel drop (the object no one's from then on: 404 to its
        owner). As `forget_child`, a DELETE naming another's object under one's own ends nothing of it."""
        if await self.owner_of(item) == owner:
            await self.forget(item, parent=conversation)

    async def forget_child(self, child: str, parent: str) -> None:
        """A child deleted on its own (an eval's run: `DELETE /v1/evals/{id}/runs/{run}`): its charge
        mark ends a day later (`FORGOTTEN_CHILD_TTL`, as when its parent is deleted: a read that
        fetched it before the DELETE and claims after still finds it charged) — only a child recorded
        as `parent`'s (`ADOPT`), so that no DELETE naming another's object under one's own parent
        touches that object's mark. It stays listed among the parent's children: a read in flight
        may `ADOPT` it again meanwhile, and a mark it makes then (kept without a TTL, as the
        parent's owner) is ended by the parent's `forget` that way."""
        children = _children_key(parent) if _keyable(parent) else None
        if children is None or not _keyable(child):
            return
        if await self.store.run(CHILD_OF, [children], [child]) is not None:
            await self.store.expire(_CHARGED + child, FORGOTTEN_CHILD_TTL)

    async def context_of(self, object_ids: Iterable[str]) -> int:
        """The tokens the objects hold as context (0 for one Sentinel does not know)."""
        return sum((await self.contexts(object_ids)).values())

    async def contexts(self, object_ids: Iterable[str]) -> dict[str, int]:
        """The tokens each of the objects holds as context (0 for one Sentinel does not know).

        Each distinct id is read once, all of them in one batched read of the store (`get_many`),
        CONTEXTS_AT_ONCE at most a read: a batch is made with the contexts of up to `MAX_REFERENCES`
        objects its lines continue, which one read after another cost as many store round trips.
        StoreUnavailable when any could not be read (fails closed, as one `get` did)."""
        counts = dict.fromkeys(object_ids, 0)
        keyable = [object_id for object_id in counts if _keyable(object_id)]
        for start in range(0, len(keyable), CONTEXTS_AT_ONCE):
            some = keyable[start : start + CONTEXTS_AT_ONCE]
            for object_id, raw in zip(some, await self.store.get_many([_CONTEXT + i for i in some]), strict=True):
                counts[object_id] = int(raw) if raw is not None and raw.isdigit() else 0
        return counts

    async def remember_context(self, object_id: str, tokens: int, ttl: float | None) -> None:
        """Record that `object_id` holds `tokens` of context, for as long as its owner is kept."""
        if _keyable(object_id):
            await self.store.set(_CONTEXT + object_id, str(max(0, tokens)).encode(), ttl)

    async def remember_turn(self, conversation: str, tokens: int, held: int, ttl: float | None) -> str | None:
        """Record that `conversation` holds `tokens` after a turn in it that was admitted when it held
        `held` (`tokens` include those, as the turn's input): what it grew by since (items added
        while the turn ran, another turn that ended first) is kept on top, in one atomic step — set
        to the turn's own count, a conversation forgot what was added to it meanwhile, though the
        provider's conversation holds it and every later turn reads it. The count set (its digits;
        None for an id no key can hold). Sent once (`TURN`): a lost reply is StoreUnavailable, never a
        second run."""
        if not _keyable(conversation):
            return None
        expiry = "" if ttl is None else str(max(1, round(ttl * 1000)))
        value = await self.store.run(TURN, [_CONTEXT + conversation], [str(max(0, tokens)), str(max(0, held)), expiry])
        return value.decode() if isinstance(value, bytes) else str(value)

    async def remember_cut_turn(
        self, response_id: str, conversation: str, tokens: int, after: str, ttl: float | None
    ) -> None:
        """Record that the stored response `response_id`, a turn in `conversation` whose stream was cut
        before the provider's count, was counted there at `tokens` (the cut exchange's charge), leaving
        the count at `after` (`remember_turn`'s answer): the first read charging its real usage
        corrects the conversation's count (`correct_turn`). Kept as long as the response (`ttl`)."""
        if _keyable(response_id):
            record = {"conversation": conversation, "tokens": max(0, tokens), "after": after}
            await self.store.set(_CUT_TURN + response_id, orjson.dumps(record), ttl)

    async def note_cut_turn(self, conversation: str, response_id: str, owner: str, ttl: float | None) -> None:
        """Note `response_id`, `owner`'s stored response whose stream was cut in `conversation` before
        the provider's count (charged what was seen), among the conversation's cut turns not charged
        yet (`_CUT_TURNS`): a read of the conversation's items charges it first (`cut_turns`). At most
        MAX_CUT_TURNS are kept, the oldest dropped (its own read still charges it); the list is kept
        `ttl` (a response's) from the last one noted."""
        await self._note_cut(conversation, response_id, owner, ttl, room_only=False)

    async def list_cut_turn(self, conversation: str, response_id: str, owner: str, ttl: float | None) -> bool:
        """Note `response_id` among `conversation`'s cut turns as `note_cut_turn` does, but drop none
        to make room: False when MAX_CUT_TURNS not charged yet are listed (those a read of their own
        charged are dropped first) or none can be (an id no key is made of) — a read of the
        conversation's items would show its answer and charge nothing (before, the oldest was dropped
        and its answer so shown free: one more for each turn cut past the bound). StoreUnavailable
        when the store cannot say."""
        if await self._note_cut(conversation, response_id, owner, ttl, room_only=True):
            return True
        listed = await self.cut_turns(conversation, owner)
        charged = set(listed).difference(await self.uncharged(listed))
        if not charged:
            return False
        await self.drop_cut_turns(conversation, charged)
        return await self._note_cut(conversation, response_id, owner, ttl, room_only=True)

    async def _note_cut(self, conversation: str, response_id: str, owner: str, ttl: float | None, *,
                        room_only: bool) -> bool:
        if not (_keyable(conversation) and _keyable(response_id)):
            return False
        expiry = "" if ttl is None else str(max(1, round(ttl * 1000)))
        noted = await self.store.run(NOTE_CUT, [_CUT_TURNS + conversation], [
            response_id, str(round(time.time() * 1000)), owner, str(MAX_CUT_TURNS), expiry, "1" if room_only else "0"])
        return bool(noted)

    async def inherit_cut_turns(
        self, response_id: str, previous: str | None, conversations: Iterable[str], owner: str, ttl: float | None,
    ) -> None:
        """Note under the stored response `response_id` (`owner`'s, made continuing the response
        `previous` — its `previous_response_id` — or in `conversations`) the cut turns its input
        items show (`_CUT_TURNS`, as a conversation's): the provider lists the context it read there,
        each earlier turn's whole answer — those listed under `previous` (its own chain's) and
        `previous` itself when its usage was not charged yet (its stream cut before the provider's
        count), and each conversation's. A read of its `input_items` charges them first."""
        if not _keyable(response_id):
            return
        reads: list[Awaitable[list[str]]] = []  # (read at once: one round trip, not one each)
        if previous is not None and _keyable(previous):
            reads += [self.cut_turns(previous, owner), self.uncharged([previous])]
        reads += [self.cut_turns(conversation, owner) for conversation in conversations]
        shown = [turn for found in await asyncio.gather(*reads) for turn in dict.fromkeys(found) if turn != response_id]
        if len(shown := list(dict.fromkeys(shown))) > MAX_CUT_TURNS:
            # Turns a read of their own charged stay listed: they leave first, none to be dropped
            # (the request was refused when more than MAX_CUT_TURNS are not charged: `continued_cut_turns`).
            shown = await self.uncharged(shown)
        for turn in shown:
            await self.note_cut_turn(response_id, turn, owner, ttl)

    async def continued_cut_turns(self, previous: str, owner: str) -> list[str]:
        """The cut turns a stored response made continuing `previous` (its `previous_response_id`) would
        list (`inherit_cut_turns`): `previous`'s list and `previous` itself — those no read charged
        yet when they are more than MAX_CUT_TURNS (else as listed, their charges unread: one store
        read). More than MAX_CUT_TURNS not charged, the oldest would be dropped from its list and its
        answer shown free by its input items: the request is refused until a read charges them.
        StoreUnavailable when the store cannot say."""
        if not _keyable(previous):
            return []
        shown = list(dict.fromkeys([*await self.cut_turns(previous, owner), previous]))
        return shown if len(shown) <= MAX_CUT_TURNS else await self.uncharged(shown)

    async def cut_turns(self, conversation: str, owner: str) -> list[str]:
        """The cut turns of `conversation` `owner` made that no read charged yet (`note_cut_turn`),
        oldest first. StoreUnavailable when the store cannot say."""
        if not _keyable(conversation):
            return []
        flat = await self.store.run(CHILDREN, [_CUT_TURNS + conversation], [])
        parts = [part if isinstance(part, bytes) else str(part).encode() for part in flat or []]
        noted = [(_noted_at(value), field.decode()) for field, value in zip(parts[::2], parts[1::2], strict=True)
                 if value.split(b":", 1)[-1].decode("utf-8", "replace") == owner]
        return [response_id for _, response_id in sorted(noted)]

    async def drop_cut_turns(self, conversation: str, response_ids: Iterable[str]) -> None:
        """Drop `response_ids` from `conversation`'s cut turns (charged, or gone)."""
        dropped = list(dict.fromkeys(response_ids))
        if dropped and _keyable(conversation):
            await self.store.run(DROP_CHILDREN, [_CUT_TURNS + conversation], dropped)

    async def correct_turn(self, response_id: str, tokens: int) -> bool:
        """The first read charging a cut stored response's usage: its exchange held `tokens`, not the
        cut charge its conversation was counted at (`remember_cut_turn`) — the count is moved by the
        difference while it is still the count that turn left. Any change since tells that something
        else counted there: a later turn that ended (whose own count is the provider's, this
        context included: adding the difference would count it twice) or items added (a count this
        cannot tell from such a turn) — it is left as it is, too low, as before. The record is taken
        in one atomic step: of two reads at once (each charging it, `claim_charge`'s `pending`), one
        corrects. True when the count was corrected."""
        if not _keyable(response_id):
            return False
        raw = await self.store.run(TAKE, [_CUT_TURN + response_id], [])
        try:
            record = orjson.loads(raw) if isinstance(raw, bytes) else None
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            return False
        conversation, cut, after = record.get("conversation"), record.get("tokens"), record.get("after")
        if not (isinstance(conversation, str) and _keyable(conversation) and type(cut) is int
                and isinstance(after, str) and after.isdigit()):
            return False
        value = str(max(0, int(after) + max(0, tokens) - cut))
        return bool(int(await self.store.run(SET_IF, [_CONTEXT + conversation], [after, value])))

    async def charge_once(self, object_id: str, ttl: float | None, within: str | None = None) -> bool:
        """True the first time `object_id`'s usage is charged (and marks it so, for `ttl` seconds —
        as long as its owner is kept — or until it is deleted, or `within` is: see `claim_charge`);
        False after that: the mark of a call whose own record holds the object's usage (a metered
        call's own object, `claim_charge` for a read showing it).

        The mark is a random token of this call's: a SET NX that found the key taken is read back,
        and finding its own token there is still the first charge — redis-py's cluster client sends
        a command again after its reply was lost (a read timeout), and the second run finds the
        first's mark (read as "charged already", a batch's whole usage went uncharged)."""
        return await self._claim(object_id, ttl, b"", within) == "first"

    async def claim_charge(self, object_id: str, ttl: float | None, within: str | None = None) -> ChargeClaim:
        """Claim the charge of `object_id`'s usage, shown to a read: `first` when no read claimed it
        before (marked pending now, for `ttl` seconds), `pending` when one did but its record was
        not known stored (`confirm_charged`: that read may have died in between, `kill -9`),
        `charged` once one was. A `first` or `pending` read records the usage under its
        `charge_id` (the ledger keeps one row per id: the pending read's record is a copy, or
        the only one) and then confirms it. An id that names nothing is `charged`.

        `within`: the object whose owner the read checked (`object_id` itself, or the thread of a
        run, the eval of an eval run), whose DELETE forgets `object_id`'s marks (`forget`). A read
        that passed that check before the DELETE may claim after its `forget`: its mark, made
        then, is taken back once `within` is found without an owner (only that mark: DELETE_IF), and
        the read is still `first` — it showed the usage, charged under the object's key, with
        nothing left of the deleted object in the store (a mark kept for ever without `ttl`). Its
        mark and its owner are in two slots of a Cluster: the mark is made, then the owner read,
        so that a `forget` after that read removes the mark itself.

        An object claimed within another (a thread's run, an eval's run) is first recorded as that
        object's child (`ADOPT`, only while it has an owner), so that the `forget` of its parent ends
        its mark too (`FORGOTTEN_CHILD_TTL`): kept without a TTL as its parent's owner is, it stayed
        in the store for good once the parent was deleted."""
        return await self._claim(object_id, ttl, _PENDING, within)

    async def _claim(self, object_id: str, ttl: float | None, prefix: bytes, within: str | None) -> ChargeClaim:
        """`claim_charge` (`prefix`: its pending mark's) or `charge_once` (none)."""
        if within is not None and within != object_id and _keyable(object_id) and _keyable(within):
            children = _children_key(within)
            if children is not None:
                await self.store.run(ADOPT, [_PREFIX + within, children], [_MARKED, object_id])
        claim, mark = await self._mark(object_id, ttl, prefix)
        if claim == "first" and within is not None and await self.owner_of(within) is None:
            await self.store.run(DELETE_IF, [_CHARGED + object_id], [mark])
        return claim

    async def _mark(self, object_id: str, ttl: float | None, prefix: bytes) -> tuple[ChargeClaim, bytes]:
        """`object_id`'s charge mark made (`first`) or found, and this call's mark (`prefix` and a
        random token)."""
        if not _keyable(object_id):
            return "charged", b""
        key, mark = _CHARGED + object_id, prefix + secrets.token_hex(16).encode()
        if await self.store.set(key, mark, ttl, nx=True):
            return "first", mark
        found = await self.store.get(key)
        if found == mark:  # (its reply lost, the SET was sent again: see `charge_once`)
            return "first", mark
        return "pending" if found is None or found.startswith(_PENDING) else "charged", mark

    async def confirm_charged(self, object_ids: Iterable[str], ttl: float | None) -> None:
        """Mark `object_ids`' usage charged for good (`claim_charge`), once their record is stored:
        only a mark still there (`CONFIRM`) — an object deleted since its claim (its marks removed) got
        its mark back, kept for ever without `ttl` — and for as long as it was kept (its claim's
        `ttl`; a run's whose thread was deleted since, `FORGOTTEN_CHILD_TTL`: confirmed with `ttl`
        None, it was kept for ever)."""
        keys = [_CHARGED + object_id for object_id in dict.fromkeys(object_ids) if _keyable(object_id)]
        expiry = "" if ttl is None else str(max(1, round(ttl * 1000)))
        await asyncio.gather(*(self.store.run(CONFIRM, [key], [_CONFIRMED, expiry]) for key in keys))

    async def was_charged(self, object_id: str) -> bool:
        """Whether `object_id`'s usage was charged (`charge_once`, or `claim_charge` confirmed),
        marking nothing: an id that names nothing counts as charged. StoreUnavailable when the
        store cannot say."""
        return not _keyable(object_id) or _charged(await self.store.get(_CHARGED + object_id))

    async def uncharged(self, object_ids: Iterable[str]) -> list[str]:
        """Those of `object_ids` (distinct, in order) whose usage was not charged (`was_charged`),
        read in one batched read of the store (`get_many`) when there are several, READS_AT_ONCE at
        most a read. StoreUnavailable when the store cannot say."""
        distinct = list(dict.fromkeys(object_ids))
        if len(distinct) == 1:
            return [] if await self.was_charged(distinct[0]) else distinct
        unread: list[str] = []
        keyable = [object_id for object_id in distinct if _keyable(object_id)]
        for start in range(0, len(keyable), READS_AT_ONCE):
            some = keyable[start : start + READS_AT_ONCE]
            marks = await self.store.get_many([_CHARGED + i for i in some])
            unread += [object_id for object_id, mark in zip(some, marks, strict=True) if not _charged(mark)]
        return unread

    async def add_shown(
        self, run_id: str, input_tokens: int, output_tokens: int, ttl: float | None, within: str | None = None
    ) -> None:
        """Add `input_tokens` and `output_tokens` to what was charged for `run_id` before its usage was
        shown (a step: its model turn's input as estimated, its tool calls), kept `ttl` seconds, as
        the run's charge marks: recorded as a child of its thread `within` (`ADOPT`), whose `forget`
        ends them with those — taken back when the thread was forgotten meanwhile (nothing reads a
        deleted thread's runs)."""
        added = [(prefix, tokens) for prefix, tokens in zip(_SHOWN, (input_tokens, output_tokens), strict=True)
                 if tokens > 0]
        if not _keyable(run_id) or not added:
            return
        children = _children_key(within) if within is not None and within != run_id and _keyable(within) else None
        if children is not None:
            await self.store.run(ADOPT, [_PREFIX + str(within), children], [_MARKED, run_id])
        for prefix, tokens in added:
            await self.store.incr(prefix + run_id, tokens, ttl)
        if children is not None and await self.owner_of(str(within)) is None:
            for prefix, _ in added:
                await self.store.delete(prefix + run_id)

    async def shown(self, run_id: str) -> tuple[int, int]:
        """The input and output tokens charged for `run_id` before its usage was shown (`add_shown`).
        StoreUnavailable when the store cannot say."""
        if not _keyable(run_id):
            return 0, 0
        raw_in, raw_out = await self.store.get_many([prefix + run_id for prefix in _SHOWN])
        return tuple(int(raw) if raw is not None and raw.isdigit() else 0  # type: ignore[return-value]
                     for raw in (raw_in, raw_out))

    async def grow_context(self, object_id: str, tokens: int) -> None:
        """Add `tokens` to what `object_id` holds as context (items added to a conversation)."""
        if _keyable(object_id) and tokens > 0:
            await self.store.incr(_CONTEXT + object_id, tokens)

    async def vouch_batch_input(self, file_id: str, owner: str, estimate: BatchEstimate) -> None:
        """Record that `owner` uploaded `file_id` as a batch input whose lines Sentinel checked (and
        wrote back: `sentinel.services.objects.read_batch_input`) and measured (`estimate`) — only
        while `owner` owns it, as `remember_file`: an upload answered with another user's file id
        (its owner kept, `claim`) had this record replace that owner's, whose own checked input was
        refused from then on as unchecked."""
        if _keyable(file_id) and await self.owner_of(file_id) == owner:
            record = {"owner": owner, "requests": estimate.requests, "input_tokens": estimate.input_tokens,
                      "output_tokens": estimate.output_tokens, "continues": estimate.continues}
            await self.store.set(_BATCH_INPUT + file_id, orjson.dumps(record))

    async def require_batch_input(self, file_id: str, owner: str) -> BatchEstimate:
        """What `file_id`'s lines reserve; InvalidRequest (400) unless it is `owner`'s batch input
        checked and measured at upload."""
        raw = await self.store.get(_BATCH_INPUT + file_id) if _keyable(file_id) else None
        estimate = _batch_estimate(raw, owner)
        if estimate is None:
            raise InvalidRequest(
                "A batch's input file must be uploaded through POST /v1/files with purpose=batch (Sentinel reads "
                "its lines for the objects they name and the tokens they reserve; a file uploaded through an "
                "earlier Sentinel must be uploaded again)", code="unchecked_batch_input",
                details={"param": "input_file_id"},
            )
        return estimate

    async def vouch_eval_data(self, file_id: str, owner: str) -> None:
        """Record that `owner` uploaded `file_id` as an eval's data file whose items Sentinel read
        (`sentinel.services.objects.eval_data_references`: every object they name `owner`'s) — only
        while `owner` owns it, as `vouch_batch_input`."""
        if _keyable(file_id) and await self.owner_of(file_id) == owner:
            await self.store.set(_EVAL_DATA + file_id, owner.encode())

    async def require_eval_data(self, file_id: str, owner: str) -> None:
        """InvalidRequest (400) unless `file_id` is `owner`'s eval data file, its items read at upload
        (`vouch_eval_data`)."""
        raw = await self.store.get(_EVAL_DATA + file_id) if _keyable(file_id) else None
        if raw is None or raw.decode("utf-8", "replace") != owner:
            raise InvalidRequest(
                "An eval run's data file must be uploaded through POST /v1/files with purpose=evals (Sentinel reads "
                "its items for the objects they name; a file uploaded otherwise, or through an earlier Sentinel, must "
                "be uploaded again)", code="unchecked_eval_data", details={"param": "data_source.source.id"},
            )


async def _together(first: Awaitable[_A], second: Awaitable[_B]) -> tuple[_A, _B]:
    """Both results, read side by side; the first's error (StoreUnavailable) once both ended."""
    results: list[object] = list(await asyncio.gather(first, second, return_exceptions=True))
    failed = [result for result in results if isinstance(result, BaseException)]
    if failed:
        # Not kept in a local of this frame, which its traceback holds (a cycle that kept the
        # request's frames alive).
        results.clear()
        raise failed.pop(0)
    return cast(_A, results[0]), cast(_B, results[1])


@dataclass(frozen=True)
class BatchEstimate:
    """What a batch input's lines reserve against its owner's plan when a batch runs them: one
    request a line, their estimated input and their output caps, summed; and the stored objects
    (responses, conversations) whose context its lines have the provider read along, each with how
    many lines read it (`continues`: their context is added when a batch is made, at its size then)."""

    requests: int
    input_tokens: int
    output_tokens: int
    continues: tuple[tuple[str, int], ...] = ()


def _batch_estimate(raw: bytes | None, owner: str) -> BatchEstimate | None:
    """The estimate a vouch record holds when it is `owner`'s, else None (missing, another user's,
    unreadable)."""
    try:
        record = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("owner") != owner:
        return None
    requests, input_tokens, output_tokens = (record.get(name) for name in ("requests", "input_tokens", "output_tokens"))
    continues = record.get("continues", [])  # (none in a record written before they were kept)
    if not (_whole(requests) and _whole(input_tokens) and _whole(output_tokens) and isinstance(continues, list)
            and all(isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and _whole(pair[1])
                    for pair in continues)):
        return None
    return BatchEstimate(requests, input_tokens, output_tokens, tuple((i, n) for i, n in continues))


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
