"""Operator text: the control and format characters no name, id, email or plan ever needs.

Refused: Unicode's control characters (category Cc: NUL, CR, LF, ESC, DEL and the C1 controls
U+0080-U+009F, NEL among them), its format characters (Cf: the bidirectional marks, embeddings,
overrides and isolates U+200E/U+200F, U+202A-U+202E, U+2066-U+2069 and U+061C that make a name read
otherwise than it is stored, the zero-width space, word joiner, soft hyphen and BOM, the invisible
tag characters), the line and paragraph separators U+2028/U+2029 (Zl, Zp) and lone surrogates (Cs:
not text any store can hold). Allowed of these: ZERO WIDTH NON-JOINER and ZERO WIDTH JOINER
(U+200C, U+200D), which names in Persian and Indic scripts and emoji sequences need — but only
between two characters they can join: neither first nor last, nor next to an ASCII character, a
space, a control or format character, or a letter or digit of the Latin, Greek or Cyrillic scripts
(where they join nothing and draw nothing, so `alice\u200d` read as `alice`, as `alice\u200b` did).

Also refused: what Unicode calls default-ignorable but files as a letter, mark or unassigned code
point — drawn as nothing, so `alice\\u3164` read as `alice` on the console just as `alice\\u200b` did:
the combining grapheme joiner U+034F, the Hangul fillers (U+115F, U+1160, U+3164, U+FFA0), the Khmer
inherent vowels U+17B4/U+17B5, the unassigned U+2065, U+FFF0-U+FFF8 and U+E0000-U+E0FFF. And a
variation selector (U+FE00-U+FE0F, U+E0100-U+E01EF, the Mongolian U+180B-U+180D, U+180F) that selects
nothing: first, or after a space, control, mark or another selector, or after a letter or digit of
the Latin, Greek or Cyrillic scripts or any ASCII character (no variation sequence starts with one
but the keycaps, `1\\ufe0f\\u20e3`, which are kept), so `alice\\ufe0f` drew `alice`. Selectors that draw
something stay: an emoji's (`\\u2764\\ufe0f`), an ideograph's variant (a Japanese name's IVS), a
Mongolian letter's form.
"""

from __future__ import annotations

import re
import unicodedata

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
JOINERS = frozenset({"\u200c", "\u200d"})  # ZWNJ, ZWJ: part of legitimate names
LINE_BREAKS = frozenset({"\r", "\n"})  # a textarea's line breaks, allowed with `lines`
_SELECTORS = "\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef"
# Drawn as nothing (see the module docstring): the default-ignorables outside Cf, and the selectors,
# which `_selects` judges by the character before them.
_HIDDEN = re.compile(
    f"[\u034f\u115f\u1160\u17b4\u17b5\u2065\u3164\uffa0\ufff0-\ufff8\U000e0000-\U000e0fff{_SELECTORS}]"
)
_SELECTOR = re.compile(f"[{_SELECTORS}]")
_KEYCAP_BASES = frozenset("0123456789#*")


def has_control(text: str, *, lines: bool = False) -> bool:
    """Whether `text` holds a character the module docstring refuses (with `lines`, CR and LF do
    not count)."""
    # The common case in one pass in C: no character of categories C* and Z* but ' ', and ASCII
    # (nothing drawn as nothing)
    if not text.isprintable():
        for at, char in enumerate(text):
            if char.isprintable() or (lines and char in LINE_BREAKS):
                continue  # printable, or allowed though not (a textarea's line breaks)
            if char in JOINERS:  # ZWNJ, ZWJ: allowed where they join something
                if not (0 < at < len(text) - 1 and _joinable(text[at - 1]) and _joinable(text[at + 1])):
                    return True
                continue
            if unicodedata.category(char) in REFUSED_CATEGORIES:
                return True
    return not text.isascii() and any(
        _SELECTOR.fullmatch(found.group()) is None or not _selects(text, found.start())
        for found in _HIDDEN.finditer(text)
    )


def _latin_greek_cyrillic(char: str, kind: str) -> bool:
    """Whether `char` (of category `kind`) is a letter or digit of the Latin, Greek or Cyrillic scripts."""
    code = ord(char)
    return kind[0] in "LN" and (code < 0x0530 or 0x1E00 <= code < 0x2000)


def _joinable(char: str) -> bool:
    """Whether a joiner (ZWNJ, ZWJ) next to `char` may join something (see the module docstring): a
    Persian or Indic letter, a virama, an emoji; not ASCII, a space, a control or format character
    (another joiner too), nor a Latin, Greek or Cyrillic letter or digit."""
    kind = unicodedata.category(char)
    return not (char.isascii() or kind[0] in "CZ" or _latin_greek_cyrillic(char, kind))


def _selects(text: str, at: int) -> bool:
    """Whether the variation selector at `text[at]` can select a form of the character before it
    (see the module docstring)."""
    if at == 0:
        return False
    before = text[at - 1]
    if before in _KEYCAP_BASES:  # `1\ufe0f\u20e3`: an emoji keycap
        return text[at] in "\ufe0e\ufe0f" and text[at + 1:at + 2] == "\u20e3"
    kind = unicodedata.category(before)
    if before.isascii() or kind[0] in "CZM":
        return False
    return not _latin_greek_cyrillic(before, kind)


# What no store holds: NUL (PostgreSQL's text refuses it) and the surrogates (no UTF-8: the outbox's
# JSON, SQLite and PostgreSQL refuse a lone one; Python holds a pair as two such code points).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> str:
    """`value` with each character no store holds (NUL, a surrogate) replaced by U+FFFD, the
    replacement character: text a provider named (a model) that must reach the ledger as it was
    charged, a character for a character (a name of at most 200 stays within its column)."""
    return value if value.isascii() and "\x00" not in value else _UNSTORABLE.sub("\ufffd", value)


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
