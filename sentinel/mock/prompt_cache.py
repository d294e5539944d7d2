"""The mock's deterministic prompt cache for Anthropic ``cache_control`` blocks.

Rules (documented for tests, simpler than the real service but of the same shape):

* A *breakpoint* is a tool definition, a system block or a message content block carrying
  ``cache_control: {"type": "ephemeral"[, "ttl": "5m" | "1h"]}`` (a ``tool_result`` whose inner
  blocks carry one counts as a breakpoint too). At most 4 per request (400 otherwise, like the
  real API); no minimum prefix length.
* The *prefix* of a breakpoint is everything before it in the order tools -> system -> messages,
  plus the block itself. Its tokens follow the input-token rule of
  `sentinel.mock.anthropic_prompt` without the reply primer; its identity is the model plus the
  prefix with every ``cache_control`` removed.
* The longest breakpoint prefix already seen is *read* (``cache_read_input_tokens``). If the
  longest breakpoint prefix of the request was not seen, the tokens between the read prefix and it
  are *written* (``cache_creation_input_tokens``, under ``ephemeral_1h`` when that breakpoint asks
  for ``ttl: "1h"``). ``input_tokens`` is the rest of the prompt.
* A successful request stores all its breakpoint prefixes. Entries never expire; the cache keeps
  the `maxlen` most recently used. ``count_tokens`` neither reads nor writes it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from sentinel.mock.anthropic_prompt import Prompt, prefix_tokens
from sentinel.mock.faults import WireError

MAX_BREAKPOINTS = 4
TTLS = frozenset({"5m", "1h"})


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """One cacheable prefix: its identity, its tokens and the TTL its block asks for."""

    key: str
    tokens: int
    ttl: str


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """What one request read from and wrote to the cache, in tokens."""

    read: int = 0
    created: int = 0
    ttl: str = "5m"

    def usage_fields(self, input_tokens: int) -> dict[str, Any]:
        """Anthropic's usage fields for a prompt of `input_tokens` in total."""
        return {
            "input_tokens": input_tokens - self.read - self.created,
            "cache_creation_input_tokens": self.created,
            "cache_read_input_tokens": self.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.created if self.ttl == "5m" else 0,
                "ephemeral_1h_input_tokens": self.created if self.ttl == "1h" else 0,
            },
        }


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _ttl(block: Any) -> str | None:
    """The TTL a block's ``cache_control`` asks for, None without one; bad values are 400s."""
    if not isinstance(block, dict):
        return None
    marker = block.get("cache_control")
    if marker is None and block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        return next((t for t in map(_ttl, block["content"]) if t is not None), None)
    if marker is None:
        return None
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        raise WireError(400, "cache_control.type: Input should be 'ephemeral'")
    ttl = marker.get("ttl", "5m")
    if not isinstance(ttl, str) or ttl not in TTLS:
        raise WireError(400, "cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def breakpoints(prompt: Prompt) -> list[Breakpoint]:
    """The request's breakpoints, shortest prefix first."""
    body = prompt.body
    raw_tools = body.get("tools")
    tools: list[Any] = raw_tools if isinstance(raw_tools, list) else []
    system = body.get("system")
    system_blocks = system if isinstance(system, list) else []
    found: list[tuple[Any, Any, list[dict[str, Any]], str]] = []
    for i, tool in enumerate(tools):
        if (ttl := _ttl(tool)) is not None:
            found.append((tools[: i + 1], None, [], ttl))
    for j, block in enumerate(system_blocks):
        if (ttl := _ttl(block)) is not None:
            found.append((tools, system_blocks[: j + 1], [], ttl))
    for m, message in enumerate(prompt.messages):
        raw_content = message.get("content")
        content: list[Any] = raw_content if isinstance(raw_content, list) else []
        for b, block in enumerate(content):
            if (ttl := _ttl(block)) is not None:
                cut = {**message, "content": content[: b + 1]}
                found.append((tools, system, [*prompt.messages[:m], cut], ttl))
    if len(found) > MAX_BREAKPOINTS:
        raise WireError(
            400, f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(found)}."
        )
    out = []
    for tools_part, system_part, messages_part, ttl in found:
        identity = {"model": body["model"], "tools": tools_part, "system": system_part, "messages": messages_part}
        key = hashlib.sha256(orjson.dumps(_strip(identity), option=orjson.OPT_SORT_KEYS)).hexdigest()
        out.append(Breakpoint(key, prefix_tokens(tools_part or None, system_part, messages_part), ttl))
    return out


class PromptCache:
    """The prefixes seen so far (bounded, least recently used dropped first)."""

    def __init__(self, maxlen: int = 4096) -> None:
        self.maxlen = maxlen
        self._seen: OrderedDict[str, None] = OrderedDict()

    def lookup(self, points: list[Breakpoint]) -> CacheUsage:
        """What a request with these breakpoints reads and writes (nothing is stored yet)."""
        if not points:
            return CacheUsage()
        read = max((p.tokens for p in points if p.key in self._seen), default=0)
        longest = points[-1]  # breakpoints come in prompt order: the last one has the longest prefix
        created = 0 if longest.key in self._seen else max(0, longest.tokens - read)
        return CacheUsage(read=read, created=created, ttl=longest.ttl)

    def store(self, points: list[Breakpoint]) -> None:
        """Remember the prefixes of a request that succeeded."""
        for point in points:
            self._seen[point.key] = None
            self._seen.move_to_end(point.key)
        while len(self._seen) > self.maxlen:
            self._seen.popitem(last=False)

    def clear(self) -> None:
        """Forget every prefix."""
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._seen)
