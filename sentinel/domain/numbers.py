"""Whole numbers read from untrusted text (query parameters, cookies, form fields). Pure, no I/O.

`str.isdigit()` is no test for "`int()` will take this": it is True for `²` and other digit-like
characters `int()` refuses, and `int()` itself takes non-ASCII decimal digits, spaces, signs and
`_`. Every place that reads a count, an id or a timestamp from a request goes through
`parse_whole`, which takes ASCII digits only and bounds the value; a decimal an operator types (a
price) goes through `parse_decimal`, as strict (`float()` takes `٣`, `1_0`, `inf` and `nan`).
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime

from sentinel.native._wire import MAX_COUNT

__all__ = ["MAX_INT64", "MAX_RETRY_AFTER", "MAX_TOKENS", "parse_decimal", "parse_retry_after", "parse_whole"]

MAX_INT64 = 2**63 - 1  # the largest value an SQL INTEGER column (SQLite, PostgreSQL BIGINT) holds
MAX_RETRY_AFTER = 86400.0  # a peer's Retry-After is believed up to a day
# The most tokens a provider is believed to report for one call: far above any context window, and far
# enough below MAX_INT64 that the sums of many (quota counters, roll-ups, usage totals) cannot overflow.
# One figure with the wire readers' (`sentinel.native`, which imports nothing of ours, holds it).
MAX_TOKENS = MAX_COUNT


def parse_whole(text: str, maximum: int = MAX_INT64) -> int | None:
    """The non-negative integer `text` spells in ASCII digits `0-9` (nothing else: no sign, space,
    `_` or other digit characters), or None when it spells anything else or a value above `maximum`."""
    if not 0 < len(text) <= len(str(maximum)) or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= maximum else None


_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def parse_decimal(text: str) -> float | None:
    """The non-negative number `text` spells as ASCII digits with at most one `.` and an optional
    exponent (`0.15`, `2.`, `.5`, `1e3`), or None for anything else (a sign, a space, `_`, `inf`,
    `nan`, other digit characters, more than 40 characters). A value too large for a float is
    `inf`: the caller bounds it."""
    if len(text) > 40 or not _DECIMAL.fullmatch(text):
        return None
    return float(text)


def parse_retry_after(text: str | None, now: float | None = None) -> float | None:
    """Seconds from a peer's `Retry-After` given as a number (`30`, `1.5`; ASCII digits and at most
    one dot), at most MAX_RETRY_AFTER; None for anything else (junk, `²`, `1e400`). With `now` (Unix
    seconds) an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`) is read too: the seconds from `now` until
    then (0 for a date past, at most MAX_RETRY_AFTER); without it a date is None."""
    if not text or not text.isascii():
        return None
    if len(text) <= 16 and text.replace(".", "", 1).isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    if now is None or len(text) > 40:
        return None
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # `-0000` or none: UTC, as HTTP dates are
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
