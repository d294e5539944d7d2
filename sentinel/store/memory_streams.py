"""Streams for the in-process store: the Redis stream and consumer-group model, in plain Python.

Mirrors what `RedisStore` does with XADD / XGROUP CREATE .. 0 MKSTREAM / XAUTOCLAIM / XREADGROUP >
/ XACK + XDEL / XLEN: ids `<ms>-<seq>` strictly increasing per stream; a group starts at the
beginning of the stream; a claimed entry stays in the group's pending list, owned by the consumer
that claimed it, until acknowledged; an entry pending for at least `min_idle_ms` may be taken
over; acknowledging deletes. Idle time comes from the injected clock, so tests can move time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sentinel.store.base import StreamEntry, parse_stream_id

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

    def claim(self, key: str, group: str, consumer: str, count: int, min_idle_ms: int) -> list[StreamEntry]:
        stream = self._streams.setdefault(key, _Stream())
        state = stream.groups.setdefault(group, _Group())
        now = self._clock()
        out: list[StreamEntry] = []
        for entry_id in sorted(state.pending):
            if len(out) >= count:
                break
            if entry_id not in stream.entries:
                del state.pending[entry_id]  # deleted meanwhile: it leaves the pending list
                continue
            if (now - state.pending[entry_id].delivered_at) * 1000 >= min_idle_ms:
                state.pending[entry_id] = _Pending(consumer, now)
                out.append(StreamEntry(_format(entry_id), dict(stream.entries[entry_id])))
        for entry_id, fields in stream.entries.items():
            if len(out) >= count:
                break
            if entry_id > state.last_delivered:
                state.pending[entry_id] = _Pending(consumer, now)
                state.last_delivered = entry_id
                out.append(StreamEntry(_format(entry_id), dict(fields)))
        return out

    def ack(self, key: str, group: str, ids: Sequence[str]) -> int:
        parsed = [parse_stream_id(i) for i in ids]
        stream = self._streams.get(key)
        if stream is None:
            return 0
        state = stream.groups.get(group)
        deleted = 0
        for entry_id in parsed:
            if state is not None:
                state.pending.pop(entry_id, None)
            if stream.entries.pop(entry_id, None) is not None:
                deleted += 1
        return deleted

    def length(self, key: str) -> int:
        stream = self._streams.get(key)
        return 0 if stream is None else len(stream.entries)
