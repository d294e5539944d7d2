"""Per-request fault knobs of the mock upstream, and the wire errors it answers with.

A knob can be set three ways; the first source that sets it wins:

1. a request header     ``X-Mock-Status: 503``
2. a query parameter    ``?mock_status=503``
3. a directive in the last user message text  ``#mock:status=503``  (directives are removed
   from the echoed text). Directives exist because the gateway's native API rebuilds bodies and
   forwards no client headers.

=================  ======================  =======================  =====================================
knob               header                  directive                effect
=================  ======================  =======================  =====================================
status             X-Mock-Status           #mock:status=N           answer N (>=400) with a wire error body
retry_after        X-Mock-Retry-After      #mock:retry_after=S      Retry-After on 429/503 (default 1)
latency_ms         X-Mock-Latency-Ms       #mock:latency_ms=N       wait N ms before the first byte
chunk_delay_ms     X-Mock-Chunk-Delay-Ms   #mock:chunk_delay_ms=N   wait N ms between stream events
disconnect_after   X-Mock-Disconnect-After #mock:disconnect_after=N stream: cut after N events (never
                                                                    sending [DONE]/message_stop);
                                                                    non-stream: cut mid-body
pings_after        X-Mock-Pings-After      #mock:pings_after=N      stream: after N events (never the
                                                                    terminal one) only keep-alive
                                                                    pings, one per chunk_delay_ms (at
                                                                    least 20 ms), until the client
                                                                    leaves; non-stream: no effect
drop_after_ms      X-Mock-Drop-After-Ms    #mock:drop_after_ms=N    N ms after the request (and any
                                                                    latency_ms), close the connection
                                                                    without an answer (stream or not;
                                                                    whatever else was asked): a
                                                                    provider that crashed, or a proxy
                                                                    that cut a request it held
trickle_ms         X-Mock-Trickle-Ms       #mock:trickle_ms=N       non-stream: the body (an error's
                                                                    too) one byte every N ms, until
                                                                    it is sent or the client leaves
                                                                    (a body that takes for ever to
                                                                    come); stream: no effect
malformed          X-Mock-Malformed-Chunk  #mock:malformed          stream: one extra non-JSON event;
                                                                    non-stream: truncated JSON body
no_usage           X-Mock-No-Usage         #mock:no_usage           omit usage everywhere
parallel_tools     X-Mock-Parallel-Tools   #mock:parallel_tools     call every tool, not just the first
refusal            X-Mock-Refusal          #mock:refusal            OpenAI chat and Responses: the model
                                                                    refuses (`text.REFUSAL` as the
                                                                    message's ``refusal``, content null;
                                                                    ``refusal`` deltas, a ``refusal``
                                                                    part), as a structured output's
                                                                    refusal is answered; tool calls,
                                                                    other formats: no effect
error_after        X-Mock-Error-After      #mock:error_after=N      Anthropic stream: after N events (never
                                                                    the terminal one) an ``error`` event
                                                                    (``overloaded_error``), then the end
                                                                    of the stream, as Anthropic ends one
                                                                    it could not finish; other streams
                                                                    and non-stream: no effect
endless_tool_args  X-Mock-Endless-Tool-    #mock:endless_tool_args  stream with tool calls: after the last
                   Args                                             call's arguments, more argument
                                                                    fragments of it (64 KiB each) without
                                                                    end, until the client leaves (a
                                                                    hostile or broken provider);
                                                                    otherwise no effect
error_code         X-Mock-Error-Code       #mock:error_code=NAME    with ``status``: the error's code
                                                                    (OpenAI shape: ``code``; Google
                                                                    shape: its ``ErrorInfo`` reason)
error_shape        X-Mock-Error-Shape      #mock:error_shape=SHAPE  with ``status``, OpenAI-format
                                                                    endpoints: ``google`` answers
                                                                    ``{"error": {code, message,
                                                                    status, details}}`` (Gemini's),
                                                                    ``google_list`` a list of one
=================  ======================  =======================  =====================================

The query names are the directive names prefixed with ``mock_``. Boolean knobs accept no value,
``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_INT_KNOBS = ("status", "disconnect_after", "retry_after", "pings_after", "error_after")
_FLOAT_KNOBS = ("latency_ms", "chunk_delay_ms", "drop_after_ms", "trickle_ms")
_BOOL_KNOBS = ("malformed", "no_usage", "parallel_tools", "endless_tool_args", "refusal")
_WORD_KNOBS = ("error_code", "error_shape")
_SHAPES = frozenset({"google", "google_list"})
_WORD = re.compile(r"[A-Za-z0-9_]{1,64}")
_HEADER_NAMES = {
    "x-mock-status": "status",
    "x-mock-retry-after": "retry_after",
    "x-mock-latency-ms": "latency_ms",
    "x-mock-chunk-delay-ms": "chunk_delay_ms",
    "x-mock-disconnect-after": "disconnect_after",
    "x-mock-pings-after": "pings_after",
    "x-mock-error-after": "error_after",
    "x-mock-drop-after-ms": "drop_after_ms",
    "x-mock-trickle-ms": "trickle_ms",
    "x-mock-malformed-chunk": "malformed",
    "x-mock-malformed": "malformed",
    "x-mock-no-usage": "no_usage",
    "x-mock-parallel-tools": "parallel_tools",
    "x-mock-refusal": "refusal",
    "x-mock-endless-tool-args": "endless_tool_args",
    "x-mock-error-code": "error_code",
    "x-mock-error-shape": "error_shape",
}
_KNOBS = frozenset(_INT_KNOBS + _FLOAT_KNOBS + _BOOL_KNOBS + _WORD_KNOBS)
_DIRECTIVE = re.compile(r"#mock:([a-z_]+)(?:=([^\s#]+))?")
_TRUE = frozenset({"", "1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class WireError(Exception):
    """An error the mock answers in the caller's wire format (OpenAI or Anthropic shape).

    Internal to the mock upstream: it plays a foreign provider, so it does not use Sentinel's
    own exception tree.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        shape: str | None = None,
    ) -> None:
        super().__init__(message)
        self.shape = shape  # None: the wire's own; "google", "google_list" (the `error_shape` knob)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Faults:
    """The resolved fault knobs of one request (all off by default)."""

    status: int | None = None
    retry_after: int = 1
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    disconnect_after: int | None = None
    pings_after: int | None = None
    error_after: int | None = None
    drop_after_ms: float | None = None
    trickle_ms: float | None = None
    malformed: bool = False
    no_usage: bool = False
    parallel_tools: bool = False
    endless_tool_args: bool = False
    refusal: bool = False
    error_code: str | None = None
    error_shape: str | None = None

    @classmethod
    def resolve(cls, *sources: Mapping[str, str]) -> Faults:
        """Build from raw knob maps, earlier sources winning; bad values raise WireError(400)."""
        merged: dict[str, str] = {}
        for source in sources:
            for key, value in source.items():
                merged.setdefault(key, value)
        return cls(**{key: _convert(key, value) for key, value in merged.items()})

    def error(self) -> WireError | None:
        """The WireError the `status` knob asks for, or None."""
        if self.status is None or self.status < 400:
            return None
        headers = {}
        if self.status in (429, 503, 529):
            headers["retry-after"] = str(self.retry_after)
        return WireError(
            self.status, _FAULT_MESSAGES.get(self.status, "Mock upstream error"), headers=headers,
            code=self.error_code, shape=self.error_shape,
        )


_FAULT_MESSAGES = {
    400: "Mock upstream: bad request",
    401: "Mock upstream: invalid API key",
    402: "Mock upstream: insufficient credits",
    403: "Mock upstream: permission denied",
    404: "Mock upstream: the model does not exist or you do not have access to it",
    408: "Mock upstream: request timed out",
    429: "Mock upstream: rate limit reached, please try again later",
    500: "Mock upstream: the server had an error while processing your request",
    502: "Mock upstream: bad gateway",
    503: "Mock upstream: the server is overloaded or not ready yet",
    504: "Mock upstream: gateway timeout",
    529: "Mock upstream: overloaded",
}


def _convert(key: str, value: str) -> Any:
    if key in _WORD_KNOBS:
        word = value.strip()
        if not _WORD.fullmatch(word) or (key == "error_shape" and word not in _SHAPES):
            raise WireError(400, f"mock knob {key}: not a valid value: {value!r}")
        return word
    raw = value.strip().lower()
    try:
        if key in _INT_KNOBS:
            number = int(raw)
            if number < 0:
                raise ValueError(raw)
            return number
        if key in _FLOAT_KNOBS:
            seconds = float(raw)
            if not seconds >= 0:  # also rejects NaN
                raise ValueError(raw)
            return seconds
    except ValueError:
        raise WireError(400, f"mock knob {key}: not a non-negative number: {value!r}") from None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise WireError(400, f"mock knob {key}: not a boolean: {value!r}")


def header_knobs(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Knobs from lower-cased request headers."""
    return {_HEADER_NAMES[name]: value for name, value in headers if name in _HEADER_NAMES}


def query_knobs(query: Mapping[str, str]) -> dict[str, str]:
    """Knobs from query parameters named ``mock_<knob>``."""
    return {key[5:]: value for key, value in query.items() if key.startswith("mock_") and key[5:] in _KNOBS}


def directive_knobs(text: str) -> dict[str, str]:
    """Knobs from ``#mock:name[=value]`` directives in a message text (unknown names are errors)."""
    if "#mock:" not in text:
        return {}
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(text):
        name = match.group(1)
        if name not in _KNOBS:
            raise WireError(400, f"unknown mock directive #mock:{name}")
        found.setdefault(name, match.group(2) or "")
    return found


def strip_directives(text: str) -> str:
    """The text without its ``#mock:`` directives (whitespace around them collapsed)."""
    if "#mock:" not in text:
        return text
    return " ".join(_DIRECTIVE.sub(" ", text).split())
