"""Readers for untrusted upstream JSON: a wrong type reads as absent instead of raising a TypeError."""

from __future__ import annotations

from typing import Any


def as_object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_count(value: Any) -> int | None:
    """`value` if it is a non-negative integer (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
