"""Operator text: the control and format characters no name, id, email or plan ever needs.

Refused: Unicode's control characters (category Cc: NUL, CR, LF, ESC, DEL and the C1 controls
U+0080-U+009F, NEL among them), its format characters (Cf: the bidirectional marks, embeddings,
overrides and isolates U+200E/U+200F, U+202A-U+202E, U+2066-U+2069 and U+061C that make a name read
otherwise than it is stored, the zero-width space, word joiner, soft hyphen and BOM, the invisible
tag characters), the line and paragraph separators U+2028/U+2029 (Zl, Zp) and lone surrogates (Cs:
not text any store can hold). Allowed of these: ZERO WIDTH NON-JOINER and ZERO WIDTH JOINER
(U+200C, U+200D), which names in Persian and Indic scripts and emoji sequences need.
"""

from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
JOINERS = frozenset({"\u200c", "\u200d"})  # ZWNJ, ZWJ: part of legitimate names
LINE_BREAKS = frozenset({"\r", "\n"})  # a textarea's line breaks, allowed with `lines`


def has_control(text: str, *, lines: bool = False) -> bool:
    """Whether `text` holds a character the module docstring refuses (with `lines`, CR and LF do
    not count)."""
    if text.isprintable():  # the common case in one pass in C: no character of categories C* and Z* but ' '
        return False
    for char in text:
        if char.isprintable() or char in JOINERS or (lines and char in LINE_BREAKS):
            continue  # printable, or allowed though not (ZWNJ, ZWJ; a textarea's line breaks)
        if unicodedata.category(char) in REFUSED_CATEGORIES:
            return True
    return False


def is_text(value: str) -> bool:
    """Whether `value` is Unicode text any store, log line or JSON answer can hold: no lone surrogate
    (Python's json reads `"\\ud800"`; a JSON claim or a batch line may hold one)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
