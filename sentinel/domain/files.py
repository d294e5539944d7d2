"""What Sentinel read of a file: all the admission estimate needs of a file a request names by id
(`sentinel.quota.media.facts_tokens`), read once from its bytes (`sentinel.quota.media.upload_facts`)
— at its upload through Sentinel, or from the provider at its first use when it has none
(`sentinel.services.file_facts`) — and kept beside the file's owner record
(`sentinel.governance.ownership`). A file's content never changes, so neither do its facts.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

# Past this, a stored figure is none Sentinel wrote (its facts come from a body of bounded size).
_MOST = 2**53


@dataclass(frozen=True)
class FileFacts:
    """One of: a PDF's `pages`; an image's `image` size in pixels (width, height); a UTF-8 text file's
    `text` tokens (the most any tokenizer Sentinel counts with gives it: the request's model is not
    known at upload); or `unread`: a file Sentinel read and cannot estimate by what it holds (another
    kind of file, one larger than it reads, one the provider would not give it) — estimated as a
    file Sentinel cannot read, and not read again."""

    pages: int | None = None
    image: tuple[int, int] | None = None
    text: int | None = None
    unread: bool = False

    def encode(self) -> bytes:
        """As stored: `{"pages": n}`, `{"image": [w, h]}`, `{"text": n}` or `{"unread": true}`."""
        if self.unread:
            return orjson.dumps({"unread": True})
        if self.pages is not None:
            return orjson.dumps({"pages": self.pages})
        if self.image is not None:
            return orjson.dumps({"image": list(self.image)})
        return orjson.dumps({"text": self.text or 0})

    @classmethod
    def decode(cls, raw: bytes | None) -> FileFacts | None:
        """The facts `encode` wrote, or None for a value it did not write (missing, malformed): such a
        file is estimated as one Sentinel cannot read."""
        try:
            value = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict) or len(value) != 1:
            return None
        (kind, figure), = value.items()
        if kind == "unread" and figure is True:
            return UNREAD
        if kind == "image" and isinstance(figure, list) and len(figure) == 2 and all(_count(n) for n in figure):
            return cls(image=(figure[0], figure[1]))
        if kind in ("pages", "text") and _count(figure):
            return cls(pages=figure) if kind == "pages" else cls(text=figure)
        return None


UNREAD = FileFacts(unread=True)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MOST
