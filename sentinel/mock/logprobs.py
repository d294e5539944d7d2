"""OpenAI chat ``logprobs`` / ``top_logprobs`` for the mock: validation and deterministic values.

With ``logprobs: true`` every output word (one token in the mock) gets an entry
``{token, logprob: 0.0, bytes, top_logprobs}``; ``top_logprobs: K`` (0..20) lists the word itself
(logprob 0.0) then ``alt1`` .. ``alt<K-1>`` with logprob ``-1.0`` .. ``-(K-1)``. Answers made of tool
calls carry ``{"content": null, "refusal": null}``. Streams put each word's entry on its chunk.
"""

from __future__ import annotations

from typing import Any

from sentinel.mock.faults import WireError

MAX_TOP_LOGPROBS = 20


def requested(body: dict[str, Any]) -> int | None:
    """The number of alternatives asked for (0 with plain ``logprobs: true``), None when off."""
    enabled = body.get("logprobs")
    top = body.get("top_logprobs")
    if enabled is not None and not isinstance(enabled, bool):
        raise WireError(400, "Invalid type for 'logprobs': expected a boolean.", param="logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise WireError(400, "Invalid 'top_logprobs': expected a non-negative integer.", param="top_logprobs")
        if top > MAX_TOP_LOGPROBS:
            raise WireError(
                400,
                f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
                f"{MAX_TOP_LOGPROBS}, but got {top} instead.",
                param="top_logprobs",
                code="integer_above_max_value",
            )
        if not enabled:
            raise WireError(
                400,
                "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
                param="top_logprobs",
            )
    return (top or 0) if enabled else None


def _token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def entry(piece: str, top: int) -> dict[str, Any]:
    """The logprobs entry of one output word."""
    alternatives = [_token(piece, 0.0)] + [_token(f"alt{k}", -float(k)) for k in range(1, top)]
    return {**_token(piece, 0.0), "top_logprobs": alternatives[:top]}


def choice_logprobs(pieces: list[str], top: int | None, tool_calls: bool,
                    key: str = "content") -> dict[str, Any] | None:
    """A non-streamed choice's ``logprobs`` object (None when not requested); `key` names what the
    words are (``content``, or a ``refusal``'s)."""
    if top is None:
        return None
    out: dict[str, Any] = {"content": None, "refusal": None}
    if not tool_calls:
        out[key] = [entry(p, top) for p in pieces]
    return out
