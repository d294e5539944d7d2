"""A client's JSON request body read, with the one set of errors every surface gives for it.

Metered and pass-through bodies alike: the same limits (MAX_JSON_CONTAINERS counted before the
parse, MAX_JSON_DEPTH) and the same 400 `invalid_json` and message for each way a body fails.
"""

from __future__ import annotations

from typing import Any

import orjson

from sentinel.errors import InvalidRequest
from sentinel.native.openai_checks import (
    TOO_DEEP,
    TOO_MANY_CONTAINERS,
    json_body_too_deep,
    json_containers_exceed,
)

# What orjson says of a text nested past its own limit (1,024 levels): past MAX_JSON_DEPTH too.
_ORJSON_TOO_DEEP = "depth limit exceeded"


def read_json(body: bytes) -> Any:
    """The JSON value `body` holds, of at most MAX_JSON_CONTAINERS objects and arrays, nested at most
    MAX_JSON_DEPTH levels, or InvalidRequest (400 `invalid_json`). The containers are counted before
    the parse: building them, and every walk of the body before admission, costs ~1 µs each (a large
    body's in a worker thread: `sentinel.offload`). Any depth past the limit gets TOO_DEEP, past
    orjson's own limit too (it refuses to parse the text)."""
    if json_containers_exceed(body):
        raise InvalidRequest(TOO_MANY_CONTAINERS, code="invalid_json")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith(_ORJSON_TOO_DEEP):
            raise InvalidRequest(TOO_DEEP, code="invalid_json") from None
        raise InvalidRequest(f"Invalid JSON body: {_why_unreadable(body, exc)}", code="invalid_json") from None
    if json_body_too_deep(body, value):
        raise InvalidRequest(TOO_DEEP, code="invalid_json")
    return value


def _why_unreadable(body: bytes, exc: orjson.JSONDecodeError) -> str:
    """What is wrong with a body orjson could not read. Its own words for bytes that are not UTF-8
    ("str is not valid UTF-8: surrogates not allowed", for a gzip body or UTF-16 text, which hold no
    surrogate) sent clients looking in their strings: say what the body is instead."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        start = body[:4]
        if start.startswith((b"\x1f\x8b", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x28\xb5\x2f\xfd")):
            return "the body is compressed (gzip, deflate or zstd): send it uncompressed, as UTF-8 JSON"
        if start.startswith((b"\xff\xfe", b"\xfe\xff")):
            return "the body is UTF-16 or UTF-32 (it starts with a byte order mark): send it as UTF-8 JSON"
        return f"the body is not UTF-8 (byte {bad.start}): send it as UTF-8 JSON"
    return str(exc)
