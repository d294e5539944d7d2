"""What a file named by id holds, read from the provider when Sentinel kept nothing of it.

A file uploaded through Sentinel (`POST /v1/files`) has its facts read at upload
(`OpenAIRelay._remember_file`). One without them — uploaded before Sentinel kept facts, assembled
through `POST /v1/uploads`, its facts lost to a store outage — was reserved as the 100-page bound:
2,550,100 tokens under gpt-4o-mini's rule, more than an ordinary plan's hour, so after an upgrade
every existing file became unusable with that model. Now the first metered request naming such a
file (its owner's: the ids a request names are checked first, `Ownership.require`) has Sentinel
read its content from the provider once (`GET /v1/files/{id}/content`, with the provider key
alone, as every relay call: no header of the client's), compute its facts as an upload's
(`media.upload_facts`, in a worker thread when large) and keep them (`Ownership.remember_file`:
once, only while the caller owns the file), and the request is estimated by them. The read is
Sentinel's, charged to no one.

Bounded: concurrent first uses of one file share one read (`SingleFlight`); a request reads at
most READS_PER_REQUEST files and the process READS_AT_ONCE at a time; a read takes at most
READ_SECONDS and READ_BYTES. A file past READ_BYTES, of a kind Sentinel cannot estimate, or that
the provider will not give (400, 404, 410: it never will) is kept as read and unreadable
(`FileFacts.unread`: the bound, never read again). Any other failure (a provider error, a timeout)
leaves the file at the bound for that request, logged (at most once a minute), and is not tried
again for RETRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence

from sentinel.domain.files import UNREAD, FileFacts
from sentinel.errors import Overloaded, StoreUnavailable, UpstreamError
from sentinel.flight import SingleFlight
from sentinel.governance.ownership import Ownership
from sentinel.observability.logging import Repeated
from sentinel.offload import count_off_loop
from sentinel.providers.openai import OpenAICompatUpstream
from sentinel.quota.media import upload_facts
from sentinel.quota.tokens import TokenCounter

log = logging.getLogger("sentinel.file_facts")

# A file of more bytes is not read past them (kept unread: the bound). A PDF's pages are found in
# a file of any size this reads (its object streams inflate up to the counter's own budget); a
# 100-page PDF is rarely more.
READ_BYTES = 32 * 1024 * 1024
READS_AT_ONCE = 4  # reads under way in the process (each may hold READ_BYTES)
READS_PER_REQUEST = 8  # files a request has read; any other stays at the bound (once per request)
READ_SECONDS = 30.0  # a read, from the wait for its turn to its last byte
RETRY_SECONDS = 60.0  # a file whose read failed is not read again for this long (in this process)
REMEMBERED_FAILURES = 4096
# The provider's answers that say it will never give the file's content.
_NEVER = frozenset({400, 404, 410})


class _Unread(Exception):
    """The provider did not give the content, for now (`permanent`: ever)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class FileFactsReader:
    """Reads the facts of the files a request names by id that Sentinel has none of, from `upstream`
    (the provider its pass-through file calls go to), and keeps them (see the module docstring).
    `clock` (monotonic seconds) times RETRY_SECONDS."""

    def __init__(
        self, upstream: OpenAICompatUpstream, ownership: Ownership, counter: TokenCounter, *,
        read_bytes: int = READ_BYTES, read_seconds: float = READ_SECONDS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.ownership = ownership
        self.counter = counter
        self.read_bytes = read_bytes
        self.read_seconds = read_seconds
        self.clock = clock
        self._flight: SingleFlight[tuple[str, str], FileFacts | None] = SingleFlight()
        self._slots = asyncio.Semaphore(READS_AT_ONCE)
        self._failed: dict[str, float] = {}  # file id -> when it may be read again
        self.failures = Repeated(log)

    async def complete(
        self, facts: Mapping[str, FileFacts], files: Sequence[str], owned: Collection[str], owner: str,
    ) -> dict[str, FileFacts]:
        """`facts` (`Ownership.require`'s) with those of the `files` it lacks read now — of those in
        `owned` only (the ids checked as `owner`'s) — as far as they can be (see the module docstring)."""
        now = self.clock()
        missing = [file_id for file_id in dict.fromkeys(files)
                   if file_id not in facts and file_id in owned and self._failed.get(file_id, now) <= now]
        if not missing:
            return dict(facts)
        missing = missing[:READS_PER_REQUEST]
        read = await asyncio.gather(*(
            self._flight.run((owner, file_id), functools.partial(self._read, file_id, owner)) for file_id in missing
        ))
        found = dict(facts)
        found.update((file_id, fact) for file_id, fact in zip(missing, read, strict=True) if fact is not None)
        return found

    async def _read(self, file_id: str, owner: str) -> FileFacts | None:
        """The facts of `file_id`'s content (kept), or None when it could not be read now."""
        try:
            async with asyncio.timeout(self.read_seconds), self._slots:
                raw = await self._content(file_id)
        except _Unread as exc:
            if not exc.permanent:
                self._failure(file_id, str(exc))
                return None
            raw = None
        except (UpstreamError, Overloaded, TimeoutError) as exc:
            self._failure(file_id, type(exc).__name__)
            return None
        read: FileFacts | None = None
        if raw is not None:  # (as an upload's: in a worker thread when large)
            read = await count_off_loop(functools.partial(upload_facts, raw, self.counter.most_tokens), len(raw))
        del raw
        facts = read or UNREAD
        try:
            await self.ownership.remember_file(file_id, owner, facts)
        except StoreUnavailable:  # estimated by them this time; read again at the next use
            self.ownership.outage.warning("the store is unavailable: what a file read from the provider holds was not kept")
        return facts

    async def _content(self, file_id: str) -> bytes | None:
        """The file's bytes as the provider gives them; None past `read_bytes` (the rest unread).
        `_Unread` for an answer that is not its content."""
        answer = await self.upstream.forward("GET", ["files", file_id, "content"], headers={}, body=None)
        if answer.status >= 300:
            await answer.read_error()  # (the connection released)
            raise _Unread(f"status {answer.status}", permanent=answer.status in _NEVER)
        complete = False
        try:
            if answer.encoded:  # compressed though asked for `identity`: not the file's bytes
                raise _Unread("compressed")
            length = dict((k.lower(), v) for k, v in answer.headers).get("content-length", "")
            if length.isdigit() and int(length) > self.read_bytes:
                return None
            raw = await answer.read_within(self.read_bytes)
            complete = raw is not None
            return raw
        finally:
            if complete:
                answer.release()
            else:
                answer.close()  # (dropped: the rest of the body is not read)

    def _failure(self, file_id: str, reason: str) -> None:
        """Note a read that failed for now: the file is not read again for RETRY_SECONDS (logged)."""
        self._failed.pop(file_id, None)
        while len(self._failed) >= REMEMBERED_FAILURES:
            del self._failed[next(iter(self._failed))]
        self._failed[file_id] = self.clock() + RETRY_SECONDS
        self.failures.warning(
            "a file's content could not be read from the provider: it is reserved as a file Sentinel cannot read",
            extra={"provider": self.upstream.name, "reason": reason},
        )
