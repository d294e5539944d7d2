"""The output text a stream keeps to count at settlement (when the provider's usage never came), bounded.

Every stream reader (the relayed `/v1` and `/v1/messages` inspectors, the translated and native
normalisers) kept each piece of output text it saw until the stream ended: a provider (or anything
between) streaming text without end — events of up to 16 MiB each, for up to
`SENTINEL_STREAM_MAX_SECONDS` — grew the process's memory without bound, and the settlement then
counted all of it with tiktoken. Up to KEPT_CHARS characters are kept (no answer `max_tokens`
allows comes near: ~250,000 tokens); past them each piece is counted as it arrives, a token per 4 UTF-8
bytes (the count used when no encoding loads), and dropped.

What a stream must keep to finish or to send is bounded too (`HeldBudget`): a tool call is made of its
argument fragments (the normalisers keep them to check the call is whole JSON at the end), and a
translated Anthropic stream holds what begins after its first call until the end. They were kept
whole: a provider streaming one call's arguments (or text after a call) without end grew the
process's memory until the stream time limit. Past HELD_CHARS characters a stream ends with a
`stream_too_large` error (no model's output comes near: ~2 M tokens; the largest cap is ~128 K).
"""

from __future__ import annotations

from sentinel.native.errors import StreamError

KEPT_CHARS = 1024 * 1024
HELD_CHARS = 8 * 1024 * 1024  # per stream: its tool calls (ids, names, arguments), or what it holds to send


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


class HeldBudget:
    """The characters a stream holds to finish or send (`HELD_CHARS` at most): `take` raises a
    `stream_too_large` StreamError once they pass `limit` (what was taken is not kept by the caller)."""

    __slots__ = ("chars", "limit", "provider", "what")

    def __init__(self, what: str, *, provider: str | None = None, limit: int = HELD_CHARS) -> None:
        self.what = what  # what is held, as the error names it ("its tool calls")
        self.provider = provider
        self.limit = limit
        self.chars = 0

    def take(self, text: str) -> None:
        """Count `text` as held; StreamError (`stream_too_large`) when the stream holds too much."""
        self.chars += len(text)
        if self.chars > self.limit:
            upstream = f"Upstream {self.provider} stream" if self.provider else "Upstream stream"
            raise StreamError(
                f"{upstream} cut: {self.what} ran past the {self.limit:,} characters a stream may hold",
                code="stream_too_large", provider=self.provider,
            )
