"""Operator text: the control characters no name, id, email or plan ever needs."""

from __future__ import annotations

CONTROL = frozenset(chr(c) for c in [*range(0x20), 0x7F])  # NUL, CR, LF, ESC, ... and DEL
CONTROL_BUT_LINES = CONTROL - {"\r", "\n"}  # a textarea's line breaks allowed


def has_control(text: str, *, lines: bool = False) -> bool:
    """Whether `text` holds a control character (with `lines`, CR and LF do not count)."""
    return not (CONTROL_BUT_LINES if lines else CONTROL).isdisjoint(text)
