"""Streams for the in-process store: the Redis stream and consumer-group model, in plain Python.

Mirrors what `RedisStore` does with XADD / XGROUP CREATE .. 0 MKSTREAM / XREADGROUP > / XPENDING
IDLE / XCLAIM / XACK + XDEL / XGROUP DELCONSUMER / XLEN / XRANGE: ids `<ms>-<seq>` strictly increasing per
stream; a group starts at the beginning of the stream; a read entry stays in the group's pending
list, owned by the consumer that read it, until settled; an entry pending for at least
`min_idle_ms` may be reclaimed; settling deletes. Idle time comes from the injected clock, so
tests can move time. (Consumers holding nothing are invisible through the Store API, so this twin
does not keep a list of them.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sentinel.store.base import PendingEntry, StreamEntry, check_stream_ids

StreamId = tuple[int, int]


@dataclass
class _Pending:
    consumer: str
    delivered_at: float


@dataclass
class _Group:
    last_delivered: StreamId = (0, 0)
    pending: dict[StreamId, _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    last_id: StreamId = (0, 0)
    entries: dict[StreamId, dict[str, bytes]] = field(default_factory=dict)  # in id order
    groups: dict[str, _Group] = field(default_factory=dict)


def _format(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


class MemoryStreams:
    """Every stream of one MemoryStore. Synchronous: each call is atomic (it never awaits)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._streams: dict[str, _Stream] = {}

    def keys(self) -> list[str]:
        return list(self._streams)

    def delete(self, key: str) -> bool:
        """Drop a stream with its groups (like DEL); True when it existed."""
        return self._streams.pop(key, None) is not None

    def add(self, key: str, fields: Mapping[str, bytes]) -> str:
        stream = self._streams.setdefault(key, _Stream())
        ms = int(self._clock() * 1000)
        last_ms, last_seq = stream.last_id
        # Like Redis: the id never goes backwards, even when the clock does.
        stream.last_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        stream.entries[stream.last_id] = {name: bytes(value) for name, value in fields.items()}
        return _format(stream.last_id)

    def read(self, key: str, group: str, consumer: str, count: int) -> list[StreamEntry]:
        stream = self._streams.setdefault(key, _Stream())
        state = stream.groups.setdefault(group, _Group())
        now = self._clock()
        out: list[StreamEntry] = []
        for entry_id, fields in stream.entries.items():
            if len(out) >= count:
                break
            if entry_id > state.last_delivered:
                state.pending[entry_id] = _Pending(consumer, now)
                state.last_delivered = entry_id
                out.append(StreamEntry(_format(entry_id), dict(fields)))
        return out

    def _group(self, key: str, group: str) -> tuple[_Stream, _Group] | None:
        stream = self._streams.get(key)
        state = stream.groups.get(group) if stream is not None else None
        return None if stream is None or state is None else (stream, state)

    def _idle_for(self, state: _Group, entry_id: StreamId, min_idle_ms: int) -> bool:
        return (self._clock() - state.pending[entry_id].delivered_at) * 1000 >= min_idle_ms

    def idle(
        self, key: str, group: str, min_idle_ms: int, count: int, consumer: str | None, after: str | None = None
    ) -> list[PendingEntry]:
        start = check_stream_ids([after])[0] if after is not None else None
        found = self._group(key, group)
        if found is None:
            return []
        _, state = found
        out: list[PendingEntry] = []
        for entry_id in sorted(state.pending):
            if len(out) >= count:
                break
            if start is not None and entry_id <= start:
                continue
            owner = state.pending[entry_id].consumer
            if (consumer is None or owner == consumer) and self._idle_for(state, entry_id, min_idle_ms):
                out.append(PendingEntry(_format(entry_id), owner))
        return out

    def reclaim(
        self, key: str, group: str, owner: str, ids: Sequence[str], min_idle_ms: int, to: str
    ) -> list[StreamEntry]:
        parsed = check_stream_ids(ids)
        found = self._group(key, group)
        if found is None:
            return []
        stream, state = found
        now = self._clock()
        out: list[StreamEntry] = []
        for entry_id in sorted(set(parsed)):
            pending = state.pending.get(entry_id)
            if pending is None or pending.consumer != owner or not self._idle_for(state, entry_id, min_idle_ms):
                continue
            if entry_id not in stream.entries:
                del state.pending[entry_id]  # deleted meanwhile: it leaves the pending list (as XCLAIM does)
                continue
            state.pending[entry_id] = _Pending(to, now)
            out.append(StreamEntry(_format(entry_id), dict(stream.entries[entry_id])))
        return out

    def settle(
        self, key: str, group: str, consumer: str, done: Sequence[str], retry: Sequence[str], retry_to: str | None
    ) -> int:
        done_ids, retry_ids = check_stream_ids(done), check_stream_ids(retry)
        stream = self._streams.get(key)
        if stream is None:
            return 0
        state = stream.groups.get(group)
        deleted = 0
        for entry_id in done_ids:
            if state is not None:
                state.pending.pop(entry_id, None)
            if stream.entries.pop(entry_id, None) is not None:
                deleted += 1
        if state is not None and retry_to is not None:
            now = self._clock()
            for entry_id in retry_ids:
                pending = state.pending.get(entry_id)
                if pending is not None and pending.consumer == consumer:
                    state.pending[entry_id] = _Pending(retry_to, now)
        return deleted

    def range(self, key: str, after: str | None, count: int) -> list[StreamEntry]:
        """XRANGE (`after`, +] COUNT `count`: entries above `after`, oldest first, whatever their state."""
        above = check_stream_ids([after])[0] if after is not None else (-1, -1)
        stream = self._streams.get(key)
        if stream is None:
            return []
        found = [StreamEntry(_format(entry_id), dict(fields)) for entry_id, fields in stream.entries.items()
                 if entry_id > above]
        return found[:count]

    def length(self, key: str) -> int:
        stream = self._streams.get(key)
        return 0 if stream is None else len(stream.entries)
