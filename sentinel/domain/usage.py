"""Usage: the tokens one request consumed (`Usage`) and its ledger record (`UsageRecord`).

A record is keyed by its request id, which makes recording it idempotent in every ledger.
"""

from __future__ import annotations

import hashlib
import operator
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast, get_args

import orjson

from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.text import storable

# The longest request id (ledger key) a ledger stores: the `request_id` columns are VARCHAR(128).
MAX_REQUEST_ID = 128
UsageSource = Literal["measured", "estimated"]
USAGE_SOURCES: tuple[UsageSource, ...] = get_args(UsageSource)
_MILLISECOND = timedelta(milliseconds=1)


def new_request_id(now_ns: int | None = None) -> str:
    """A fresh request id (the ledger key of a request that brought none): 32 hex digits, the
    milliseconds since the epoch (12) then 80 random bits (20).

    Ids made later sort later, so the ledger's unique index on `request_id` grows at its right edge:
    a batch of inserts dirties a page or two instead of one random page per row (on SQLite 37–56 %
    less time per batch of 8–32 rows on this machine's disk; PostgreSQL's B-tree index is built the
    same way, not measured). 80 random bits per millisecond keep ids from any number of processes
    and hosts apart.
    """
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    return f"{ms:012x}{os.urandom(10).hex()}"


def charge_id(external_id: str, object_id: str, part: str = "") -> str:
    """The ledger key of the record charging `object_id`'s usage (`part`: one model's share of it)
    to its owner `external_id`: derived from them, so a read that records it again — the read
    before it died before marking it charged — adds no second row. `charge-` and 48 hex digits of
    the SHA-256 of the three (never a request id: those are 32 hex digits or the client's)."""
    digest = hashlib.sha256("\0".join((external_id, object_id, part)).encode("utf-8", "surrogatepass"))
    return "charge-" + digest.hexdigest()[:48]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a provider reported (or Sentinel counted) for one request.

    `input_tokens` counts every prompt token, including those written to and read from the provider's
    prompt cache; `cache_write_tokens` and `cache_read_tokens` say how many of them were such — never
    more than `input_tokens` together (`capped_cache`: a provider reporting more is believed for the
    input, not for the part of it that was cached).
    """

    input_tokens: int
    output_tokens: int
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def __post_init__(self) -> None:
        if self.cache_write_tokens + self.cache_read_tokens > self.input_tokens:
            write, read = capped_cache(self.input_tokens, self.cache_write_tokens, self.cache_read_tokens)
            object.__setattr__(self, "cache_write_tokens", write)
            object.__setattr__(self, "cache_read_tokens", read)

    def plus(self, other: Usage) -> Usage:
        """The two usages summed (several objects' usage shown by one answer, charged as one record),
        each count at most MAX_TOKENS, as any one count a provider reports: a list of 12,000 objects
        of 10**12 tokens each (a hostile or broken provider) made one record of 1.2 * 10**16 —
        past 2**53, which a JSON number in JavaScript (Zion, the console) cannot hold exactly, and a
        few hundred of them overflowed the rollups' BIGINT."""
        return Usage(
            min(MAX_TOKENS, self.input_tokens + other.input_tokens),
            min(MAX_TOKENS, self.output_tokens + other.output_tokens),
            min(MAX_TOKENS, self.cache_write_tokens + other.cache_write_tokens),
            min(MAX_TOKENS, self.cache_read_tokens + other.cache_read_tokens),
        )


def capped_cache(input_tokens: int, write: int, read: int) -> tuple[int, int]:
    """Prompt-cache writes and reads that fit in `input_tokens`, of which they are a part: reads
    first (OpenAI's `cached_tokens` can exceed its `prompt_tokens` only when malformed; charged as
    cache reads, 10**12 of them made a record of ~$2.5M), then writes in what is left."""
    read = min(max(read, 0), max(input_tokens, 0))
    return min(max(write, 0), max(input_tokens, 0) - read), read


def latency_ms(started_at: datetime, finished_at: datetime) -> int:
    """A request's latency in whole milliseconds (truncated; never negative): from its admission
    until its usage record was written. Integer arithmetic: through float seconds, 1001 ms was 1000."""
    return max(0, (finished_at - started_at) // _MILLISECOND)


def _utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; naive values are taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Usage of one request. `request_id` makes recording idempotent in every ledger.

    `usage_source` says whether the token counts came from the provider (`measured`) or were
    counted by Sentinel (`estimated`). `input_tokens` includes the prompt-cache writes and reads,
    which are also given on their own (`cache_write_tokens`, `cache_read_tokens`: Anthropic's
    cache_creation/cache_read_input_tokens, OpenAI's cached_tokens), together never more than
    `input_tokens` (`capped_cache`). Timestamps are normalised to aware UTC. `model` and `provider`,
    which a provider may name (an eval run's `per_model_usage`, an Anthropic step's `model`), are
    kept `storable`: a NUL or a lone surrogate is U+FFFD, else PostgreSQL (or the outbox's JSON)
    refused the row of usage already charged. The caller's id and email are refused where the
    identity comes from (`Identity.unrecordable`): never rewritten, they key quotas.
    """

    request_id: str
    external_id: str
    email: str | None
    model: str | None
    provider: str | None
    endpoint: str
    input_tokens: int
    output_tokens: int
    usage_source: UsageSource
    status: int
    started_at: datetime
    finished_at: datetime
    cost_usd: float | None = None
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("request_id must not be empty")
        if self.usage_source not in USAGE_SOURCES:
            raise ValueError(f"usage_source must be one of {USAGE_SOURCES}, got {self.usage_source!r}")
        if min(self.input_tokens, self.output_tokens, self.cache_write_tokens, self.cache_read_tokens) < 0:
            raise ValueError("token counts must not be negative")
        if self.cache_write_tokens + self.cache_read_tokens > self.input_tokens:
            # Capped, not refused: ledger rows and outbox entries written before the cap are read back.
            write, read = capped_cache(self.input_tokens, self.cache_write_tokens, self.cache_read_tokens)
            object.__setattr__(self, "cache_write_tokens", write)
            object.__setattr__(self, "cache_read_tokens", read)
        object.__setattr__(self, "started_at", _utc(self.started_at))
        object.__setattr__(self, "finished_at", _utc(self.finished_at))
        if self.model is not None:
            object.__setattr__(self, "model", storable(self.model))
        if self.provider is not None:
            object.__setattr__(self, "provider", storable(self.provider))

    def to_json(self) -> dict[str, Any]:
        """A plain dict (orjson/json-serialisable) with ISO-8601 timestamps (`_iso`)."""
        data = dict(zip(_RECORD_FIELDS, _record_values(self), strict=True))
        data["started_at"] = _iso(self.started_at)
        data["finished_at"] = _iso(self.finished_at)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageRecord:
        """The inverse of `to_json`; unknown keys are ignored, missing required keys raise KeyError."""

        def ts(key: str) -> datetime:
            value = data[key]
            return value if isinstance(value, datetime) else datetime.fromisoformat(value)

        cost = data.get("cost_usd")
        return cls(
            request_id=str(data["request_id"]),
            external_id=str(data["external_id"]),
            email=data.get("email"),
            model=data.get("model"),
            provider=data.get("provider"),
            endpoint=str(data["endpoint"]),
            input_tokens=int(data["input_tokens"]),
            output_tokens=int(data["output_tokens"]),
            usage_source=cast(UsageSource, data["usage_source"]),
            status=int(data["status"]),
            started_at=ts("started_at"),
            finished_at=ts("finished_at"),
            cost_usd=None if cost is None else float(cost),
            cache_write_tokens=int(data.get("cache_write_tokens") or 0),
            cache_read_tokens=int(data.get("cache_read_tokens") or 0),
        )


_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))
_record_values = operator.attrgetter(*_RECORD_FIELDS)  # a record's fields, as a tuple, in one call


def _iso(value: datetime) -> str:
    """`value.isoformat()` of an aware UTC time (a record's, `_utc`), written by orjson: the same
    text (`+00:00`, microseconds when not 0) for ~3,300 instructions rather than ~11,600."""
    return orjson.dumps(value)[1:-1].decode()
