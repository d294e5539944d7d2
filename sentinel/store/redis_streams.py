"""The Lua behind `RedisStore`'s stream operations that must be atomic, and reply parsing.

Each script touches one key (the stream), so it runs unchanged on a Redis Cluster. A script's
writes are not rolled back when a command fails half-way, so the scripts check before they write
(`redis.pcall` where a lost group must not stop the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sentinel.store.base import StreamEntry, parse_stream_id

# Lua's unpack() is bounded by the C stack: commands get their ids in chunks of this many.
_CHUNK = "local CHUNK = 1000\n"

# KEYS[1] stream; ARGV: group, owner, to, min_idle_ms, ids...
# -> [[id, [field, value, ...]], ...] for the entries now pending for `to`.
RECLAIM = (
    _CHUNK
    + """
local key, group, owner, to, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ids = {}
for i = 5, #ARGV do
  local p = redis.call('XPENDING', key, group, 'IDLE', idle, ARGV[i], ARGV[i], 1, owner)
  if #p > 0 then ids[#ids + 1] = ARGV[i] end
end
local out = {}
for first = 1, #ids, CHUNK do
  local got = redis.call('XCLAIM', key, group, to, 0,
                         unpack(ids, first, math.min(first + CHUNK - 1, #ids)))
  for _, entry in ipairs(got) do out[#out + 1] = entry end
end
return out
"""
)

# KEYS[1] stream; ARGV: group, consumer, retry_to, number of done ids, done ids..., retry ids...
# -> how many done entries were deleted.
SETTLE = (
    _CHUNK
    + """
local key, group, consumer, to = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local last_done = 4 + tonumber(ARGV[4])
local deleted = 0
for first = 5, last_done, CHUNK do
  local last = math.min(first + CHUNK - 1, last_done)
  redis.pcall('XACK', key, group, unpack(ARGV, first, last))  -- a lost group has nothing pending
  deleted = deleted + redis.call('XDEL', key, unpack(ARGV, first, last))
end
local probe = redis.pcall('XPENDING', key, group, '-', '+', 1, consumer)
if probe.err then return deleted end  -- no stream or no group: nothing to move or forget
local move = {}
for i = last_done + 1, #ARGV do
  if #redis.call('XPENDING', key, group, ARGV[i], ARGV[i], 1, consumer) > 0 then move[#move + 1] = ARGV[i] end
end
for first = 1, #move, CHUNK do
  local args = {key, group, to, 0}
  for i = first, math.min(first + CHUNK - 1, #move) do args[#args + 1] = move[i] end
  args[#args + 1] = 'JUSTID'  -- (unpack() expands only as the last argument)
  redis.call('XCLAIM', unpack(args))
end
if #redis.call('XPENDING', key, group, '-', '+', 1, consumer) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', key, group, consumer)
end
return deleted
"""
)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entries(raw: Sequence[Any]) -> list[StreamEntry]:
    """XREADGROUP/XCLAIM entries (redis-py's parsed dicts or a script's flat field lists), oldest
    first; an entry deleted while pending comes back without fields: it is gone, skip it."""
    out = []
    for eid, fields in raw:
        if not fields:
            continue
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append(StreamEntry(text(eid), {text(k): v for k, v in fields.items()}))
    return sorted(out, key=lambda entry: parse_stream_id(entry.id))


def read_reply(reply: Any) -> list[StreamEntry]:
    """The entries of an XREADGROUP reply, in any shape it comes: RESP2's `[[stream, entries]]`
    (redis-py's cluster client with legacy responses), RESP3's map `{stream: entries}` (raw, from the
    auto-pipeline) or redis-py's parsed RESP3 `{stream: [entries]}` (other versions or settings)."""
    streams = reply.items() if isinstance(reply, dict) else reply or []
    out: list[StreamEntry] = []
    for _, got in streams:
        if got and isinstance(got[0], list | tuple) and got[0] and isinstance(got[0][0], list | tuple):
            got = [entry for batch in got for entry in batch]  # the parsed form's one list of entries
        out += entries(got)
    return out


def is_nogroup(exc: BaseException) -> bool:
    """The group (or the whole stream) does not exist: Redis lost it, or nobody created it yet."""
    return "NOGROUP" in str(exc)
