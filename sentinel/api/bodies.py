"""Request bodies and queries as the handlers need them: read within a size and a time limit, JSON
objects of bounded size and depth."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from sentinel.api.body_budget import BodyBudget, caller_of
from sentinel.api.context import context, header
from sentinel.domain.json_body import read_json
from sentinel.domain.text import has_control
from sentinel.errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from sentinel.native.types import CONTROL_CHARS
from sentinel.observability.logging import clipped
from sentinel.offload import large, off_loop

# A sign-in form is one short field a browser sends with its headers: it gets this long, not the
# body deadline. Slots held by forms that never arrive are freed sooner, and each such form counts
# as a failed sign-in (`FailedAuthThrottle.attempt`), so a client holding its sign-in slots that way
# reaches the failed-authentication limit within a minute (with 30 s deadlines it never did).
SIGN_IN_FORM_SECONDS = 5.0


def sign_in_deadline(body_timeout: float) -> float:
    """The seconds a sign-in form's body has: SIGN_IN_FORM_SECONDS, or the body deadline if shorter."""
    return min(body_timeout, SIGN_IN_FORM_SECONDS)


async def read_within(
    request: Request, *, limit: int, seconds: float, too_large: str, budget: BodyBudget | None = None
) -> bytes:
    """The whole request body: more than `limit` bytes is 413 (`too_large`; refused from its
    Content-Length before any of it is read, else as soon as it is past the limit), and a body not
    all in within `seconds` is 408 — every body reader goes through here, so no route waits
    for ever for a body a client trickles or never sends (an in-flight slot held by each). With a
    `budget`, every chunk is counted in it as it arrives (503 when the process holds too much, 429
    when the caller holds its share: `BodyBudget`)."""
    declared = header(request.scope, b"content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    chunks: list[bytes] = []
    size = 0
    caller = caller_of(request.scope) if budget is not None else None
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(too_large)
                if budget is not None:
                    budget.take(context(request.scope), len(chunk), caller)
                chunks.append(chunk)
        return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {seconds:g} seconds") from None
    finally:
        # A refusal's traceback holds this frame for as long as the error lives: not the bytes read.
        chunks.clear()


def is_read(request: Request) -> bool:
    """GET or HEAD: a request that only reads. Routes that answer GET answer HEAD too (Starlette),
    so a handler that branches on the method must send HEAD down the read branch: one that took
    "not GET" for a write ran a HEAD with a body as a PUT, without its CSRF check."""
    return request.method in ("GET", "HEAD")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (`read_json`: bounded in size and depth), or InvalidRequest (400)."""
    payload = read_json(body)
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    return payload


async def parse_json_body(body: bytes) -> dict[str, Any]:
    """`parse_json_object(body)`: in a worker thread when the body is large (`sentinel.offload`),
    with the same answer or the same error."""
    return await off_loop(lambda: parse_json_object(body), large(body))


def refuse_control_characters(values: Any, where: str = "input", *, lines: bool = False) -> None:
    """InvalidRequest (400) when any string in `values` (nested lists and dicts, keys too) holds a
    control character (NUL, CR, LF, ...; with `lines`, CR and LF are allowed: a form's textarea).
    Operators' input (names, emails, plans, ids, search terms) never needs one, and one reaches
    places that take none: PostgreSQL text (NUL), a key's identity (see `Identity.unrecordable`)."""
    stack = [values]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if has_control(node, lines=lines):
                raise InvalidRequest(f"Control characters (NUL, CR, LF, ...) are not accepted in {where}")
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


def refuse_unreadable_query(request: Request, *, client_text: Collection[str] = ()) -> None:
    """InvalidRequest (400) unless an operator route's query reads as one text: its percent-escapes
    spell UTF-8, it holds no control character (see `refuse_control_characters`) and no parameter
    twice (below). Starlette reads
    an escape that is not UTF-8 as U+FFFD, so `?id=%FF` and `?id=%FE` named one made-up user.
    The values of the parameters named in `client_text` are text a client chose, not an operator (a
    native `conversation_id`): judged as the client's API judged them — any text without C0, DEL or
    C1 controls (`CONTROL_CHARS`) —, or the object a client made under such a name (U+2028, a BOM, a
    bidirectional mark) could not be named here."""
    raw: bytes = request.scope.get("query_string") or b""
    try:
        parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest("The query must be ASCII, with percent-escapes that spell UTF-8") from None
    items = request.query_params.multi_items()
    refuse_control_characters([item if item[0] not in client_text else item[0] for item in items], "the query")
    if any(name in client_text and CONTROL_CHARS.search(value) for name, value in items):
        raise InvalidRequest("Control characters (NUL, CR, LF, ...) are not accepted in the query")
    # `?id=alice&id=bob` changed bob (Starlette reads the last value) where a proxy, an access-log
    # reader or a reviewing script reads the first: refused, as a JSON key given twice is. No
    # operator route reads a parameter more than once.
    seen: set[str] = set()
    for name, _ in items:
        if name in seen:
            raise InvalidRequest(f"The query gives {clipped(name, 64)!r} twice: give each parameter once")
        seen.add(name)


def path_or_query(request: Request, name: str) -> str:
    """A route's `{name}` path segment, or (a route without it, for values no path segment can hold:
    `a/b`, `50%`, `..`, which the canonical-path check refuses) its `?name=` query parameter,
    exactly as given; "" when neither is there."""
    found: str | None = request.path_params.get(name)
    return found if found is not None else request.query_params.get(name, "")


def query_items(request: Request) -> list[tuple[str, str]] | None:
    """The query string's items, or None when there is none."""
    if not request.scope.get("query_string"):
        return None
    return list(request.query_params.multi_items()) or None
