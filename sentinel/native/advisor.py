"""Anthropic's advisor tool (`tools[]` of type `advisor_*`, e.g. `advisor_20260301`) as Sentinel meters it.

Each call of the tool runs a second model (its `model`) that reads the whole transcript and writes up
to the tool's `max_tokens` (the advisor model's own output cap when unset), at most `max_uses` times
a request (no bound at the provider when unset). Admission reserves those reads and writes
(`sentinel.quota.estimate.Rereads`), so both fields must be whole numbers in range (a 400 naming the
field otherwise), and a tool that gives no `max_uses` is sent with ADVISOR_USES (`with_advisor_uses`),
so what a request may run is always finite. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

from sentinel.native._wire import MAX_COUNT
from sentinel.native.errors import invalid

__all__ = ["ADVISOR_USES", "MAX_ADVISOR_USES", "advisor_tools", "check_advisor_tools", "with_advisor_uses"]

# The `max_uses` Sentinel writes into an advisor tool that gives none (or null): the calls admission
# reserves for it. A client wanting more says so (up to MAX_ADVISOR_USES, reserved as asked).
ADVISOR_USES = 3
# The most `max_uses` one advisor tool may ask for: each use reserves the whole prompt again.
MAX_ADVISOR_USES = 100


def advisor_tools(payload: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index, tool) of each advisor tool in a Messages body's `tools` (its `type` starts `advisor_`)."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    return [(i, tool) for i, tool in enumerate(tools) if isinstance(tool, dict)
            and isinstance(kind := tool.get("type"), str) and kind.startswith("advisor_")]


def check_advisor_tools(payload: dict[str, Any]) -> None:
    """Raise NativeValidationError naming `tools.N.max_uses` or `tools.N.max_tokens` unless each is
    absent, null or a whole number in range (1..MAX_ADVISOR_USES, 1..MAX_COUNT): they decide what is
    reserved (a negative, fractional, string or 10^12 `max_uses` would reserve nothing sensible)."""
    for i, tool in advisor_tools(payload):
        for key, most in (("max_uses", MAX_ADVISOR_USES), ("max_tokens", MAX_COUNT)):
            value = tool.get(key)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                          and 1 <= value <= most):
                raise invalid(f"tools.{i}.{key}", f"must be an integer from 1 to {most:,} (or null)")


def with_advisor_uses(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with ADVISOR_USES as the `max_uses` of each advisor tool that gives none (a new dict
    when one is written; `payload` itself is never changed)."""
    unbounded = [i for i, tool in advisor_tools(payload) if tool.get("max_uses") is None]
    if not unbounded:
        return payload
    tools = list(payload["tools"])
    for i in unbounded:
        tools[i] = {**tools[i], "max_uses": ADVISOR_USES}
    return {**payload, "tools": tools}
