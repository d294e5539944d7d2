"""Request bodies and queries as the handlers need them: JSON objects of bounded depth."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from sentinel.errors import InvalidRequest
from sentinel.native.openai_checks import MAX_JSON_DEPTH, json_depth_exceeds


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object nested at most MAX_JSON_DEPTH levels, or InvalidRequest (400)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Invalid JSON body: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    # Nesting needs an opening bracket per level: a body with no more brackets (in strings or not)
    # than the limit cannot exceed it, and needs no walk (most chat bodies: two per message).
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and json_depth_exceeds(payload, MAX_JSON_DEPTH):
        raise InvalidRequest(f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return payload


def query_items(request: Request) -> list[tuple[str, str]] | None:
    """The query string's items, or None when there is none."""
    if not request.scope.get("query_string"):
        return None
    return list(request.query_params.multi_items()) or None
