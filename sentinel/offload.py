"""The walks a request body costs before admission, in a worker thread when the body is large.

Parsing a JSON body, checking it (its metered fields, the ids it names, a pass-through body's
models, an upload's parts, a batch's input lines) and reading it into the unified types (tool
schemas checked against the JSON Schema meta-schema) is Python work: while it runs on the event
loop every other request and stream of the process waits. A body at its caps costs from ~0.15 s
(100,000 JSON containers) to ~0.75 s (a batch input); such a walk runs in a worker thread
(`asyncio.to_thread`), where the interpreter hands the GIL back every 5 ms so the loop keeps
serving. A small body stays on the loop: the thread hop costs ~50-60 µs, more than parsing and
checking a chat body of a few kilobytes (~10-30 µs).

`large(body)` is the rule: OFF_LOOP_BYTES bytes or more, or more than OFF_LOOP_CONTAINERS opening
brackets (`{`, `[`, strings' included: a dense body of small objects costs ~1 µs a container). A
step that checks tool schemas hops too when one of them is not remembered as checked already (a
schema not seen before costs ~0.5 ms and up; a remembered one microseconds: see
`sentinel.native.types.schemas_remembered`), so a conversation's later turns, sending the same
tools again, stay on the loop.

The work is bounded per caller by the in-flight slots (`sentinel.api.user_slots`): a request
holds one slot and runs its walks one after another, so a caller has at most its share of walks
queued or running. A client that leaves while its walk runs does not wait for it: the request is
cancelled at once (nothing is reserved before admission; its slot and body bytes are given back
as for any request that ends), the walk finishes in its thread and its result is dropped; a walk
not begun yet is not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Measured on this machine's slow core (`offload` in the README's "What next"): parsing and
# checking a chat body costs ~10 µs a kilobyte of plain messages, ~1 µs a JSON container; a
# thread hop ~50-60 µs. 16 KiB of the densest values a body can hold (`1,1,...`) is < 1 ms.
OFF_LOOP_BYTES = 16 * 1024
OFF_LOOP_CONTAINERS = 256


def large(body: bytes) -> bool:
    """Whether the walks of `body` run in a worker thread (see the module docstring). Counting the
    brackets of a body under OFF_LOOP_BYTES costs at most a few microseconds."""
    return len(body) >= OFF_LOOP_BYTES or body.count(b"{") + body.count(b"[") > OFF_LOOP_CONTAINERS


async def off_loop(work: Callable[[], T], heavy: bool) -> T:
    """`work()`: in a worker thread when `heavy`, else here on the event loop (no hop). Its result or
    its exception either way; cancelled, the caller leaves at once (see the module docstring)."""
    return await asyncio.to_thread(work) if heavy else work()
