"""One canonical request path: checked once, on the raw bytes the client sent, before routing.

The path a route matches must be the path that is metered and the path an upstream receives, so
anything an HTTP stack might normalise differently is refused with 400 instead of interpreted:
dot segments (`.`/`..`, literal or percent-encoded, any case) and segments a lenient server reads as
one or as empty — nothing but dots and spaces before any `;` parameters (`..;x` and `.;` are `..` and
`.` to a Java servlet container, `.. ` and `...` to Windows; `;x` and ` ` are empty) —, encoded `/`, `\\`, `?`, `#` and `%`,
a literal backslash, empty segments (`//`; one trailing slash is allowed), control characters and
bytes outside printable ASCII, and malformed percent-escapes or ones that do not spell UTF-8 (read
as U+FFFD, many spellings would name one thing). What remains decodes to exactly one path with one
meaning; percent-encoded ordinary characters (`%63hat`) decode to the same route.

One exception: below `/v1/models/` an encoded `/` reads as the `/` it spells (the path is checked as
if written so: its dot and empty segments are refused alike). A catalogue name may hold one
(`meta-llama/Llama-3.1-8B-Instruct`), and both official SDKs encode it (`models.retrieve` asks for
`/v1/models/meta-llama%2FLlama-3.1-8B-Instruct`); the id is only looked up in the catalogue there,
never sent on (any other method is 405), so no upstream can read the path otherwise.
"""

from __future__ import annotations

import re

from sentinel.errors import InvalidRequest

_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# After percent-decoding, a segment may not contain these (nor be "." or "..").
_FORBIDDEN_DECODED = re.compile(rb"[\x00-\x1f\x7f/\\?#%]")
_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")
_PRINTABLE = re.compile(rb"^[\x21-\x7e]*$")
# A segment (decoded) that a lenient server reads as a dot segment or an empty one: only dots and
# spaces before its `;` parameters, if any (see the module doc).
_VOID = re.compile(rb"[. ]*(?:;.*)?", re.DOTALL)
# The common case in one match: segments of unreserved/sub-delim characters, no '%', none of only dots
# (`.`, `..`, `...`) nor only dots before a `;` (`..;x`, `;x`).
_PLAIN = re.compile(rb"^(?:/(?!\.*(?:[/;]|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+/?$|^/$")
_MODEL_ID = b"/v1/models/"
_ENCODED_SLASH = re.compile(rb"%2[Ff]")


def _refuse(reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid request path: {reason}", code="invalid_path")


def check_raw_path(raw: bytes) -> None:
    """Raise InvalidRequest (400 `invalid_path`) unless `raw` is a canonical path (see the module doc)."""
    if _PLAIN.fullmatch(raw):  # fullmatch: `$` also matches before a final newline
        return
    if raw.startswith(_MODEL_ID):  # a model id's own '/', encoded (see the module doc)
        raw = _ENCODED_SLASH.sub(b"/", raw)
    if not raw.startswith(b"/"):
        raise _refuse("it must start with '/'")
    if not _PRINTABLE.fullmatch(raw):
        raise _refuse("control characters, spaces and non-ASCII bytes must not appear")
    if b"\\" in raw:
        raise _refuse("'\\' is not allowed")
    if _ESCAPE.search(raw):
        raise _refuse("'%' must start a two-digit percent-escape")
    segments = raw[1:].split(b"/")
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if not segment:
            if i == last and i > 0:
                continue  # one trailing slash
            if i == 0 and last == 0:
                continue  # the root path "/"
            raise _refuse("empty path segments ('//') are not allowed")
        decoded = _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), segment) if b"%" in segment else segment
        if _VOID.fullmatch(decoded):
            raise _refuse("dot segments ('..', also '..;x', '.. ', '...') and segments of only spaces or "
                          "';' parameters are not allowed")
        if _FORBIDDEN_DECODED.search(decoded):
            raise _refuse("encoded '/', '\\', '?', '#', '%' or control characters are not allowed")
        if not decoded.isascii():
            try:
                decoded.decode("utf-8")
            except UnicodeDecodeError:  # read as U+FFFD: `%FF` and `%FE` would be one name
                raise _refuse("percent-escapes must spell UTF-8") from None


def is_canonical(raw: bytes) -> bool:
    """Whether `check_raw_path` accepts `raw` (a link Sentinel builds can be followed)."""
    try:
        check_raw_path(raw)
    except InvalidRequest:
        return False
    return True
