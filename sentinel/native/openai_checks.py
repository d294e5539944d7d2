"""Type checks of the fields Sentinel meters in OpenAI-format requests, before any quota is taken.

The upstream validates everything else; these fields decide what is reserved and how the answer
is read (`stream`, the token caps, `n`/`best_of`, the prompt), so a wrong type must be a 400 that
names the parameter, never a silently different reservation or a 500 later. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentinel.native._wire import MAX_COUNT
from sentinel.native.errors import invalid
from sentinel.native.types import MAX_STOP_CHARS, MAX_STOP_SEQUENCES

MAX_N = 128  # OpenAI's range for `n`
MAX_BEST_OF = 20  # and for `best_of` (legacy completions)
# OpenAI's most inputs in one embeddings request (a token-id list is one input). Unbounded, 2.4 million
# one-word inputs (a 10 MB body) were each counted, seconds of a counting thread every user shares,
# before the provider refused them.
MAX_EMBEDDING_INPUTS = 2048
# A token id: no vocabulary comes near 2^31 (o200k_base has ~200,000); a provider reads it as a 32-bit int.
MAX_TOKEN_ID = 2**31 - 1
# An embedding's `dimensions`: the longest any provider serves is 4,096 (OpenAI's 3,072); each provider
# refuses past its model's own, Sentinel only what no model takes.
MAX_DIMENSIONS = 16_384
# An output cap past the most tokens a provider is believed to report for one call is no cap a
# provider takes: refused here, as `/v1/messages`' `max_tokens` is (with the bound said).
_CAP = f"must be an integer from 1 to {MAX_COUNT}"
MAX_JSON_DEPTH = 64
# Objects and arrays in one request body. Parsing and every walk before admission (ids, metered
# fields, depth) cost ~1.5 µs per container (in a worker thread for a large body: `sentinel.offload`):
# 100,000 keep a body at the limit under ~0.2 s, while a conversation of thousands of turns with tool
# calls holds a few tens of thousands.
MAX_JSON_CONTAINERS = 100_000
MAX_MODEL_CHARS = 200  # the ledger's model column


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(payload: dict[str, Any], key: str, ok: Callable[[Any], bool], expected: str, where: str = "") -> None:
    value = payload.get(key)
    if value is not None and not ok(value):
        raise invalid(where + key, expected)


def _positive_int(limit: int | None = None) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= 1 and (limit is None or v <= limit)


def _text_or_tokens(value: Any) -> bool:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list):
        return False
    return (
        all(isinstance(v, str) for v in value)
        or all(_is_int(v) for v in value)
        or all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value)
    )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "must be a non-empty array of message objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages.{i}", "must be a message object")
        if not isinstance(message.get("role"), str):
            raise invalid(f"messages.{i}.role", "must be a string")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid(f"messages.{i}.content", "must be a string, an array of content parts or null")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid(f"messages.{i}.content.{j}", "must be a content part object with a string 'type'")
                if part["type"] == "image_url":
                    image = part.get("image_url")
                    url = image.get("url") if isinstance(image, dict) else image
                    _check_image_url(url, f"messages.{i}.content.{j}.image_url.url")


# An image a request names by URL is fetched by the provider: `http(s)` and `data:` URLs only, as
# OpenAI and Anthropic take them; a `file://` (or `gopher://`, ...) URL went to a self-hosted
# OpenAI-compatible server as it was, which may read local files or reach its own network.
_IMAGE_URL_SCHEMES = ("http://", "https://", "data:")


def _check_image_url(url: Any, param: str) -> None:
    if isinstance(url, str) and not url[:8].lower().startswith(_IMAGE_URL_SCHEMES):
        raise invalid(param, "must be an http(s) URL or a data URL")


def _check_common(payload: dict[str, Any]) -> None:
    _optional(payload, "stream", lambda v: isinstance(v, bool), "must be a boolean")
    _optional(payload, "stream_options", lambda v: isinstance(v, dict), "must be an object")
    _optional(payload, "tools", lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v),
              "must be an array of tool objects")


def check_stop(stop: Any, param: str, most: int | None = MAX_STOP_SEQUENCES) -> None:
    """Raise NativeValidationError naming `param` (or `param.N`) unless `stop` is absent, a string, or a
    list of at most `most` strings (None: any number), each of at most MAX_STOP_CHARS characters: the
    Native API's rule (`types.Stop`), for a `/v1` request's `stop` (`most` 4, OpenAI's) and a
    `/v1/messages` `stop_sequences` (up to Anthropic's 8,191, `anthropic_checks`: their text is counted as input
    instead, `estimate_messages`). A stop sequence is a delimiter; one of up to a body's size reached
    the provider, which refuses it or reads it, and no estimate counted it."""
    if stop is None:
        return
    if isinstance(stop, str):
        stops, where = [stop], [param]
    elif isinstance(stop, list) and (most is None or len(stop) <= most):
        stops, where = stop, [f"{param}.{i}" for i in range(len(stop))]
    else:
        raise invalid(param, "must be an array of strings" if most is None
                      else f"must be a string or an array of at most {most} strings")
    for text, name in zip(stops, where, strict=True):
        if not isinstance(text, str):
            raise invalid(name, "must be a string")
        if len(text) > MAX_STOP_CHARS:
            raise invalid(name, f"a stop sequence may be at most {MAX_STOP_CHARS} characters")


def check_metered_fields(endpoint: str, payload: dict[str, Any]) -> None:
    """Raise NativeValidationError (with `param`) when a metered field of `endpoint`'s request has the
    wrong type or an absurd value. `endpoint` is one of chat, completions, embeddings, responses."""
    model = payload.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_CHARS:
        raise invalid("model", f"is required and must be a non-empty string of at most {MAX_MODEL_CHARS} characters")
    _check_common(payload)
    if endpoint == "chat":
        _check_messages(payload.get("messages"))
        check_caps(endpoint, payload)
        check_stop(payload.get("stop"), "stop")
    elif endpoint == "completions":
        if not _text_or_tokens(payload.get("prompt")):
            raise invalid("prompt", "must be a string, an array of strings or an array of token ids")
        check_caps(endpoint, payload)
        check_stop(payload.get("stop"), "stop")
    elif endpoint == "embeddings":
        check_embeddings(payload)
    elif endpoint == "responses":
        items = payload.get("input")
        if items is not None and not isinstance(items, str | list):
            raise invalid("input", "must be a string or an array of input items")
        if isinstance(items, list):
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise invalid(f"input.{i}", "must be an input item object")
                parts = item.get("content")
                for j, part in enumerate(parts if isinstance(parts, list) else ()):
                    if isinstance(part, dict) and part.get("type") == "input_image":
                        _check_image_url(part.get("image_url"), f"input.{i}.content.{j}.image_url")
        _optional(payload, "instructions", lambda v: isinstance(v, str), "must be a string")
        check_caps(endpoint, payload)
        check_named_ids(payload)
        check_foreground(payload)


def check_embeddings(payload: dict[str, Any], where: str = "") -> None:
    """Raise NativeValidationError (`param` prefixed by `where`) unless an embeddings body's `input` is
    what OpenAI takes: a non-empty string, or an array of at most MAX_EMBEDDING_INPUTS non-empty
    strings, of token ids, or of non-empty arrays of token ids (a token id a whole number from 0 to
    MAX_TOKEN_ID); and its `dimensions` a whole number from 1 to MAX_DIMENSIONS, its `encoding_format`
    a string, when given. Told before anything is counted or reserved: the length first, so that a
    body of millions of inputs costs one `len`."""
    param = where + "input"
    value = payload.get("input")
    if isinstance(value, str):
        if not value:
            raise invalid(param, "must not be an empty string")
    elif not isinstance(value, list) or not value:
        raise invalid(param, "must be a non-empty string, or a non-empty array of strings, of token ids or of "
                             "arrays of token ids")
    elif _is_int(value[0]):
        _check_token_ids(value, param)  # one input, tokenised
    elif not isinstance(value[0], str | list):
        raise invalid(param + ".0", "must be a string, a token id or an array of token ids")
    else:
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise invalid(param, f"holds {len(value):,} inputs: at most {MAX_EMBEDDING_INPUTS:,} a request")
        text = isinstance(value[0], str)
        for i, item in enumerate(value):
            if text and isinstance(item, str):
                if not item:
                    raise invalid(f"{param}.{i}", "must not be an empty string")
            elif not text and isinstance(item, list) and item:
                _check_token_ids(item, f"{param}.{i}")
            else:
                raise invalid(f"{param}.{i}", "must be a non-empty string, as the first input is" if text
                              else "must be a non-empty array of token ids, as the first input is")
    _optional(payload, "dimensions", _positive_int(MAX_DIMENSIONS), f"must be an integer from 1 to {MAX_DIMENSIONS}",
              where)
    _optional(payload, "encoding_format", lambda v: isinstance(v, str), "must be a string ('float' or 'base64')",
              where)


def _check_token_ids(ids: list[Any], param: str) -> None:
    if not all(_is_int(token) and 0 <= token <= MAX_TOKEN_ID for token in ids):
        raise invalid(param, f"must be an array of token ids (integers from 0 to {MAX_TOKEN_ID})")


def check_caps(endpoint: str, payload: dict[str, Any], where: str = "") -> None:
    """Raise NativeValidationError (`param` prefixed by `where`: `body.` for a batch line) when a field
    the reservation of `endpoint`'s request reads (`estimate.max_output`: its output caps, `n`,
    `best_of`) is given and is no whole number in range (a float, a string, a boolean, 0, past the
    most). The estimate reads only whole numbers (any other value counts as absent, reserving the
    default), so such a value would be reserved as if not given while a lenient provider runs it:
    the metered endpoints' rule (`check_metered_fields`) and a batch input line's, at upload.
    `endpoint` is one of chat, completions, responses (any other has none)."""
    if endpoint == "chat":
        _optional(payload, "max_tokens", _positive_int(MAX_COUNT), _CAP, where)
        _optional(payload, "max_completion_tokens", _positive_int(MAX_COUNT), _CAP, where)
        _optional(payload, "n", _positive_int(MAX_N), f"must be an integer from 1 to {MAX_N}", where)
    elif endpoint == "completions":
        _optional(payload, "max_tokens", _positive_int(MAX_COUNT), _CAP, where)
        _optional(payload, "n", _positive_int(MAX_N), f"must be an integer from 1 to {MAX_N}", where)
        _optional(payload, "best_of", _positive_int(MAX_BEST_OF), f"must be an integer from 1 to {MAX_BEST_OF}",
                  where)
        n, best_of = payload.get("n") or 1, payload.get("best_of")
        if best_of is not None and best_of < n:
            raise invalid(where + "best_of", "must be at least n")
    elif endpoint == "responses":
        _optional(payload, "max_output_tokens", _positive_int(MAX_COUNT), _CAP, where)


def check_foreground(payload: dict[str, Any], where: str = "") -> None:
    """Raise NativeValidationError (`param` prefixed by `where`: `body.` for a batch line) when a
    Responses body asks for a background response: the provider would generate after the call is
    answered (a `queued` response, no usage shown), output Sentinel could not meter. The metered
    `/v1/responses`' check, and a batch's `/v1/responses` lines' (which ran it: their output line a
    queued response, the batch settled without what it went on to generate)."""
    if payload.get("background") not in (None, False):
        raise invalid(where + "background", "background responses are not supported through this gateway")


def check_named_ids(payload: dict[str, Any], where: str = "") -> None:
    """Raise NativeValidationError (`param` prefixed by `where`: `body.` for a batch line) when a
    Responses-shaped body names a stored object by an id that is not one: `previous_response_id`,
    `conversation` (`_check_conversation`) or an input item naming a stored one by `id`, empty or
    blank. The one check of the metered `/v1/responses`, of the pass-through calls that take its body
    (`/v1/responses/input_tokens`, `/v1/responses/compact`) and of a batch's `/v1/responses` lines:
    the provider refused such an id after the call was admitted and sent."""
    _optional(payload, "previous_response_id", _is_id, "must be a response id (a string, not blank)", where)
    _check_conversation(payload.get("conversation"), where)
    items = payload.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if isinstance(item, dict) and _names_an_item(item) and not _is_id(item.get("id")):
            raise invalid(f"{where}input.{i}.id", "must be a string, not blank: the id of the item it names")


def _is_id(value: Any) -> bool:
    """A string naming an object: not empty nor blank (`""`, `"  "` name none — the provider refused
    them, after the request was admitted and sent, and charged a request)."""
    return isinstance(value, str) and bool(value.strip())


def _names_an_item(item: dict[str, Any]) -> bool:
    """Whether a Responses input item names a stored one by its `id`: an `item_reference` (its type
    is optional: an item with an `id`, no type and no role — a message's — is one to the provider)."""
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "role" not in item and "id" in item)


def _check_conversation(value: Any, where: str = "") -> None:
    """A Responses request's `conversation`, when given: its id, or an object naming it by `id`.
    Refused here as `previous_response_id` is, a malformed one went to the provider (and was charged)."""
    if value is None or _is_id(value):
        return
    if not isinstance(value, dict):
        raise invalid(f"{where}conversation", "must be a conversation id (a string, not blank) or an object with its `id`")
    if not _is_id(value.get("id")):
        raise invalid(f"{where}conversation.id", "must be a string, not blank: the id of the conversation")


def output_multiplier(endpoint: str, payload: dict[str, Any]) -> int:
    """How many completions the request asks for: `n`, or `best_of` when larger (each is billed),
    for each prompt of a legacy completion (`prompt` can be a list of strings or of token lists)."""
    if endpoint not in ("chat", "completions"):
        return 1
    n = payload.get("n")
    count: int = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    if endpoint == "chat":
        return count
    best_of = payload.get("best_of")
    if isinstance(best_of, int) and not isinstance(best_of, bool) and best_of > count:
        count = best_of
    return count * prompt_count(payload.get("prompt"))


def prompt_count(prompt: Any) -> int:
    """How many prompts a legacy completions `prompt` holds, each completed on its own: the length
    of a list of strings or of token lists, else 1 (a string, or a list of integers: one tokenised
    prompt)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return len(prompt)
    return 1


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` nests arrays/objects deeper than `limit` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# What a body nested deeper than MAX_JSON_DEPTH is told, on every surface that parses request JSON.
TOO_DEEP = f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels"


def json_body_too_deep(body: bytes, parsed: Any) -> bool:
    """Whether `parsed`, read from the JSON text `body`, nests deeper than MAX_JSON_DEPTH. Nesting needs
    an opening bracket per level: a body with no more brackets (in strings or not) than the limit
    cannot exceed it, and needs no walk (most bodies)."""
    return body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and json_depth_exceeds(parsed, MAX_JSON_DEPTH)


# What a body past MAX_JSON_CONTAINERS is told, on every surface that parses request JSON.
TOO_MANY_CONTAINERS = f"JSON body holds more than {MAX_JSON_CONTAINERS:,} objects and arrays"
# Every byte but those that tell a JSON text's structure apart from its strings' content.
_NOT_MARKS = bytes(byte for byte in range(256) if byte not in b'"{[')


def json_containers_exceed(body: bytes, limit: int = MAX_JSON_CONTAINERS) -> bool:
    """Whether the JSON text `body` opens more than `limit` objects and arrays, told before parsing
    it (a parse builds every one of them). Brackets inside strings do not count: a prompt of source
    code holds many. Only C-speed bytes operations, whatever the body holds: a regex skipping the
    strings costs one match per string (~0.6 s for 10 MiB of short strings), ~0.8 s on 10 MiB of
    code in its plainest form. A body that is not JSON may get any answer (the parse refuses it)."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return False  # most bodies: not even the brackets inside strings reach the limit
    # Escapes go first (an escaped backslash, then an escaped quote), so that every quote left opens
    # or closes a string; then every byte but quotes and opening brackets; then every empty string.
    # Dropping two adjacent quotes leaves every other byte on its side of the strings' bounds.
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _NOT_MARKS)
    while b'""' in marks:
        marks = marks.replace(b'""', b"")
    # Left: brackets outside strings, a string of brackets, brackets outside, ...; two strings are
    # apart by at least one bracket outside (else their quotes were adjacent). So more strings than
    # `limit` + 1 is more containers than `limit`, told without splitting them apart.
    if marks.count(b'"') // 2 > limit + 1:
        return True
    return sum(len(outside) for outside in marks.split(b'"')[::2]) > limit
