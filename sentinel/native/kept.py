"""The output text a stream keeps to count at settlement (when the provider's usage never came), bounded.

Every stream reader (the relayed `/v1` and `/v1/messages` inspectors, the translated and native
normalisers) kept each piece of output text it saw until the stream ended: a provider (or anything
between) streaming text without end — events of up to 16 MiB each, for up to
`SENTINEL_STREAM_MAX_SECONDS` — grew the process's memory without bound, and the settlement then
counted all of it with tiktoken. Up to KEPT_CHARS characters are kept (no answer `max_tokens`
allows comes near: ~250,000 tokens); past them each piece is counted as it arrives, a token per 4 UTF-8
bytes (the count used when no encoding loads), and dropped.
"""

from __future__ import annotations

KEPT_CHARS = 1024 * 1024


class KeptText:
    """Output text kept to count (`text`), and the tokens of what came past `limit` characters,
    counted already (`counted`): the output is `text`'s count plus `counted`."""

    __slots__ = ("_chars", "_full", "_parts", "counted", "limit")

    def __init__(self, limit: int = KEPT_CHARS) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._chars = 0
        self._full = False  # a piece went past `limit`: every later one is counted as it comes
        self.counted = 0

    def append(self, text: str) -> None:
        if not text:
            return
        if not self._full and self._chars + len(text) <= self.limit:
            self._parts.append(text)
            self._chars += len(text)
            return
        self._full = True
        self.counted += -(-len(text.encode("utf-8", "surrogatepass")) // 4)

    @property
    def text(self) -> str:
        return "".join(self._parts)
