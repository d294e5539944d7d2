"""The walks a request body costs before admission, in a worker thread when the body is large.

Parsing a JSON body, checking it (its metered fields, the ids it names, a pass-through body's
models, an upload's parts, a batch's input lines) and reading it into the unified types (tool
schemas checked against the JSON Schema meta-schema) is Python work: while it runs on the event
loop every other request and stream of the process waits. A body at its caps costs from ~0.15 s
(100,000 JSON containers) to ~0.75 s (a batch input); such a walk runs in a worker thread
(the walks' own pool, below), where the interpreter hands the GIL back every 5 ms so the loop keeps
serving. A small body stays on the loop: the thread hop costs ~50-60 µs, more than parsing and
checking a chat body of a few kilobytes (~10-30 µs).

`large(body)` is the rule: OFF_LOOP_BYTES bytes or more, or more than OFF_LOOP_CONTAINERS opening
brackets (`{`, `[`, strings' included: a dense body of small objects costs ~1 µs a container). A
step that checks tool schemas hops too when one of them is not remembered as checked already (a
schema not seen before costs ~0.5 ms and up; a remembered one microseconds: see
`sentinel.native.types.schemas_remembered`), so a conversation's later turns, sending the same
tools again, stay on the loop.

The walks run in a pool of their own, WALK_THREADS threads, and the token counts of large bodies
and texts, and of smaller ones that encode more than ON_LOOP_CHARS characters (`count_off_loop`),
in another, COUNT_THREADS threads — never in the event loop's default
executor: that one also runs the DNS lookups of upstream connections (aiohttp's resolver), Redis
reconnects and `/metrics` renders. Queued there behind one caller's
walks (its in-flight slots' worth, 128, at up to ~0.75 s each, six threads), a DNS lookup waited past
the connect timeout, a failure counted against the provider's health for everyone. Two threads also
bound the share of the interpreter the walks take from the loop (one thread runs Python at a time):
more would not walk faster, and would slow every other request more.

The work is bounded per caller by the in-flight slots (`sentinel.api.user_slots`): a request
holds one slot and runs its walks one after another, so a caller has at most its share of walks
queued or running. A client that leaves while its walk runs does not wait for it: the request is
cancelled at once (nothing is reserved before admission; its slot and body bytes are given back
as for any request that ends), the walk finishes in its thread and its result is dropped; a walk
not begun yet is not run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Measured on this machine's slow core (`offload` in the README's "What next"): parsing and
# checking a chat body costs ~10 µs a kilobyte of plain messages, ~1 µs a JSON container; a
# thread hop ~50-60 µs. 16 KiB of the densest values a body can hold (`1,1,...`) is < 1 ms.
OFF_LOOP_BYTES = 16 * 1024
OFF_LOOP_CONTAINERS = 256
WALK_THREADS = 2  # the walks' own pool (see the module docstring)
_walks = ThreadPoolExecutor(max_workers=WALK_THREADS, thread_name_prefix="sentinel-walk")
# Token counts (tiktoken) of a body or a text of at least this many bytes or characters run in a
# pool of their own: ~0.5 ms per 1,000 characters, and tiktoken releases the GIL while it counts.
OFF_LOOP_SIZE = 64 * 1024
COUNT_THREADS = 2
_counts = ThreadPoolExecutor(max_workers=COUNT_THREADS, thread_name_prefix="sentinel-count")
# ... and a smaller count stays on the loop while the characters it encodes (texts not remembered:
# `sentinel.quota.tokens.InputCounts`) are no more than this: past them it goes on in that pool.
# tiktoken takes ~0.1 µs a character of prose and up to ~0.5 µs of a hostile text (a run of spaces,
# of one letter, CJK): 64 K characters under OFF_LOOP_SIZE held the loop ~30 ms, 4,096 hold it ~2 ms
# at most, while a conversation's remembered turns and its new message stay on the loop.
ON_LOOP_CHARS = 4096
_on_loop: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("sentinel_on_loop_chars", default=None)


class _OffLoop(Exception):  # noqa: N818 (a signal, not an error: never leaves `count_off_loop`)
    """A count on the event loop went past ON_LOOP_CHARS: it goes on in a worker thread."""


def large(body: bytes) -> bool:
    """Whether the walks of `body` run in a worker thread (see the module docstring). Counting the
    brackets of a body under OFF_LOOP_BYTES costs at most a few microseconds."""
    return len(body) >= OFF_LOOP_BYTES or body.count(b"{") + body.count(b"[") > OFF_LOOP_CONTAINERS


async def off_loop(work: Callable[[], T], heavy: bool) -> T:
    """`work()`: in a worker thread when `heavy`, else here on the event loop (no hop). Its result or
    its exception either way; cancelled, the caller leaves at once (see the module docstring)."""
    if not heavy:
        return work()
    return await _in(_walks, work)


async def count_off_loop(count: Callable[[], T], size: int) -> T:
    """`count()`, in the counts' own pool when `size` (a body's bytes, a text's characters) is
    OFF_LOOP_SIZE or more, or once it has encoded more than ON_LOOP_CHARS characters on the loop
    (`spend`): the rule of every token count a request's body or answer pays for. Begun on the
    loop and moved, it is counted again from the start (what it remembered meanwhile is not encoded
    twice)."""
    if size >= OFF_LOOP_SIZE:
        return await _in(_counts, count)
    budget = _on_loop.set([ON_LOOP_CHARS])
    try:
        return count()
    except _OffLoop:
        pass
    finally:
        _on_loop.reset(budget)
    return await _in(_counts, count)


def spend(chars: int) -> None:
    """Called by a count before it encodes `chars` characters: on the event loop past ON_LOOP_CHARS
    (in all, in one `count_off_loop`), the count stops there, to go on in a worker thread."""
    left = _on_loop.get()
    if left is not None:
        left[0] -= chars
        if left[0] < 0:
            raise _OffLoop


async def _in(pool: ThreadPoolExecutor, work: Callable[[], T]) -> T:
    """As `asyncio.to_thread`, in `pool`: the caller's context (its request id) goes along."""
    run = functools.partial(contextvars.copy_context().run, work)
    return await asyncio.get_running_loop().run_in_executor(pool, run)
