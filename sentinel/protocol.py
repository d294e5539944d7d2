"""Connection limits the ASGI app cannot enforce: time and size of a request's headers, the rest of
a body already answered, and a client that does not read its answer.

uvicorn's httptools protocol waits for headers forever and takes any number of them, and waits
forever for a client to read its answer; a client that trickles its request line, or stops reading,
could hold a connection (and an in-flight slot) indefinitely.
`GuardedHttpToolsProtocol` closes a connection whose headers are not complete within
`header_timeout` seconds of its first byte (or of the connection, for one that sends nothing; for
a request pipelined behind one still being answered, as soon as that answer is complete; empty
lines sent after an answer, which stop uvicorn's keep-alive timer and begin no request, are the
next request's first bytes: one CRLF held a connection for ever) and
answers 431 to more than `max_headers` headers or `max_header_bytes` bytes of request line and
headers (a header line that never ends included). A request answered before its body was all in
(a 401, a 413 from its Content-Length) keeps its connection while the rest arrives — read and
dropped, so the client still gets its answer — but for at most `body_timeout` seconds: one that
trickles the rest is then closed (every byte it sent had put off the keep-alive timeout); once the
rest is in, the connection is idle: the keep-alive timeout again (uvicorn arms it only as an answer
completes, and any read cancels it: that connection was held for ever). One whose
client asked for `100 Continue` first (`Expect: 100-continue`) and was answered without it may never
send that body (RFC 9110 §10.1.1): its next request on the connection was read as the body, unanswered
until the body deadline. Its answer says `Connection: close`, the end of the connection's answers
follows it at once (a half-close), and the body, if it comes anyway, is still read and dropped — a
socket closed with unread bytes resets the connection, which fails the client's upload and can lose
the answer — then the connection closes; nothing after the body is parsed. While
the answer cannot be written because the client does not read it (the transport paused writing),
`send_timeout` seconds without progress close the connection (the app sees a client disconnect:
its slot is freed, a stream is settled as 499). A body the app reads is bounded by the app
(`sentinel.api.bodies.read_within`); idle keep-alive by uvicorn's `timeout_keep_alive`. The limits
travel on the uvicorn `Config` object (module-level class, picklable config: `--workers`
processes get them too).

Pipelined requests (HTTP/1.1: several requests sent without waiting for the answers) are answered
one at a time, in order; uvicorn queues the ones behind the request being answered. It resumed
reading after every answer however long that queue was, and the parser turns a whole read into
requests (~12,000 tiny ones per 256 KiB): one connection without any key grew the queue, and the
process, by about 100 times what it sent. Here reading stays paused while any request is queued
(it resumes once the queue is empty: a queued request's body is only ever incomplete for the last
one, which then runs), and at most `MAX_PIPELINED` requests are queued. The request past them (in
the same read) is not queued, nor is anything after it parsed into requests: the queued requests
are answered, the last answer carries `Connection: close`, and the connection closes after it;
meanwhile whatever else arrives is read and dropped (closing a socket with unread bytes resets the
connection, which can lose the answers already sent). The requests not answered are left for the
client to send again on a new connection — what RFC 9112 §9.3.2 asks of a pipelining client whose
connection closes — rather than answered 503, which a client may surface as an error. So are the
requests queued when the server begins to stop (`shutdown`): the answer being written is the last.

A request the connection refuses (431, or uvicorn's 400 for bytes that do not parse) is answered in
its turn. Written at once, behind requests still being answered or queued, the refusal was the
first answer the client read — taken for the answer to its first request (a chat, billed), while the
other answers were lost and their requests ran on. Now nothing after the refused request is parsed
(what else arrives is read and dropped), the answers before it are written, then the refusal, and
the connection closes. The refusal is written rather than the connection just closed after those
answers: it is the answer to that request, in order, so the client learns why instead of sending it
again to be refused again. (A 400 in the body of a request already queued takes it off the queue;
one in the body of the request being answered is written at once, as before: it is its turn —
unless that request was answered already (before its body was in: a 401, a 404, a 413 from its
Content-Length), when a 400 was a second answer, which the client, or a proxy in front reusing the
connection for another client, read as the next request's: the connection is just closed. The
408 for late headers already waited for the answer before it.)

A body's bytes are handed to its request once per read, joined: uvicorn appended each chunk of a
chunked body to the bytes held for the app, a copy of the whole at every chunk, so a read of 1-byte
chunks (~43,000 in 256 KiB) held the event loop ~80 ms copying — every request of the process waiting
(one key's connection sending such a body at 10 MB/s: up to 0.6 s; now 0.08 s, measured 2026-12-06).

A chunked body may end with a trailer section (fields after the last chunk). uvicorn appended its
fields to the request's headers — the very list the app reads, so with the request in one read a key
(`Authorization`, `x-api-key`) or an `X-Forwarded-For` sent after the body, where a proxy in front
that checks, strips or writes those headers does not look, was read as a header (the last
X-Forwarded-For names the client: any address, every request). Trailer fields are dropped, and held
to the header limits with the headers (431): one that never ends was buffered by the parser, a copy
of the whole at every read, until the body deadline and, once answered, the drain's. Past the limit
once the answer is written, the connection is just closed (a 431 then would be read as the next
answer).

A body is framed by its Content-Length or by `Transfer-Encoding: chunked` alone, in HTTP/1.1: the
parser took other codings before a final `chunked` (`gzip, chunked`: the body was served as if it
had none) and `chunked` from an HTTP/1.0 client (a proxy in front that speaks HTTP/1.0 reads that
body up to the close): both sides of such a proxy would frame different bodies. Both are refused
with 400 in their turn, nothing after them parsed (RFC 9112 §6.1). So is a request line of another version than
HTTP/1.0 or HTTP/1.1 (`HTTP/2.0`, which the parser took, or none: 0.9).

A request that asks for a protocol upgrade (`Connection: Upgrade` and an `Upgrade` header — `h2c`,
`websocket` — or CONNECT) ends, for the parser, at its headers: what follows is the other protocol's.
uvicorn, upgrading nothing (Sentinel serves no WebSocket), answered it without its body, dropped the
rest of that read and parsed the next reads as HTTP again: a body sent in a read of its own was
served as a request — what a proxy in front forwarded as one request's body reached Sentinel as
another request (smuggled). One with a body (a Transfer-Encoding, or a Content-Length other than 0)
is now refused with 400, in its turn; one without is served as plain HTTP, as the connection's last
answer (`Connection: close`): nothing after its headers is parsed, as after an overflow.

A client that leaves is seen by the request being answered even with requests queued behind it:
uvicorn told only the request parsed last (a queued one then), so the one being answered ran on — a
stream to its end, recorded as answered — and then wrote on the closed transport (under uvloop an
error). The request being answered and the queued ones are all told. While reading is held the
close itself is not read: it is seen when a write to the client fails (a stream's next events) or
when the send timeout closes the connection — a request not streamed is answered, and recorded, as
if its client were still there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from sentinel.config import Settings

# Requests queued on one connection behind the one being answered. Clients that pipeline send a few
# (browsers never do; HTTP/1.1 client libraries that can, a handful); each queued request holds its
# parsed headers and its task-to-be, so the queue is what a connection without any key could grow.
MAX_PIPELINED = 16


class _QueueFlow(FlowControl):
    """uvicorn's flow control that does not resume reading while `held()` (requests are queued): an
    answer completed, or the running request asking for its body (already complete when requests are
    queued behind it), resumed it."""

    def __init__(self, transport: asyncio.Transport, held: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._held = held

    def resume_reading(self) -> None:
        if not self._held():
            super().resume_reading()


@dataclass(frozen=True)
class ConnectionLimits:
    """Header deadline and sizes for one server."""

    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    send_timeout: float = 60.0
    body_timeout: float = 30.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `ConnectionLimits` (read from `config.sentinel_limits`)."""

    _timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None
    _drain_timer: asyncio.TimerHandle | None = None
    _body_pending = False  # the latest request's headers are in, its body (maybe empty) is not
    _header_bytes = 0
    _header_count = 0
    _refused = False
    _in_headers = False  # a request's line and headers have begun and are not complete yet
    _in_trailers = False  # the last chunk's size line is in, its trailer section is not (see `on_chunk_header`)
    _messages = 0  # requests begun on this connection
    _unparsed = 0  # bytes of whole reads that arrived while one request's headers stayed incomplete
    _trailer_unparsed = 0  # ... while its trailer section stayed incomplete
    _parsing_done = False  # nothing more is parsed: more than MAX_PIPELINED requests were queued, the last
    # one asked for a protocol upgrade, or the server is stopping
    _running: RequestResponseCycle | None = None  # the request whose app was started last (uvicorn's
    # `cycle` is the one parsed last: a queued one while any are queued)
    _refusal: Callable[[], None] | None = None  # a refusal to write once the answers before it are out
    _close_after_body = False  # the request being answered was answered without `100 Continue` before its
    # body was in: the connection closes once that body is (`_close_unless_continued`)

    _limits: ConnectionLimits  # read once a connection, in `connection_made` (7 reads a request)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._limits = getattr(self.config, "sentinel_limits", None) or ConnectionLimits()
        super().connection_made(transport)
        self._body_parts: list[bytes] = []  # body bytes of the read being parsed (`on_body`)
        self.flow = _QueueFlow(transport, self._reading_held)  # before any request holds the flow
        self._arm()

    def _reading_held(self) -> bool:
        # After an overflow or a refusal nothing more is parsed: what arrives is read and dropped.
        return bool(self.pipeline) and not (self._parsing_done or self._refused)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_send_timer()
        self._stop_drain()
        self._refusal = None
        # uvicorn tells only `self.cycle`, the request parsed last: while requests are queued that is
        # a queued one, and the request being answered never learnt its client had gone (a stream ran
        # to its end, then wrote on the closed transport). Tell it, and the queued ones, too.
        for cycle in (self._running, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and cycle is not self.cycle:
                if not cycle.response_complete:
                    cycle.disconnected = True
                cycle.message_event.set()
        self.pipeline.clear()  # never to run: the transport is gone
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server is stopping: the answer being written is the connection's last. uvicorn marks
        `self.cycle`, the request parsed last — with requests queued, a queued one, so the request
        being answered kept the connection and every queued request ran after the stop began. They
        are dropped unstarted, with whatever else arrives, as after an overflow (`_overflow`)."""
        if self.pipeline and self._running is not None:
            self.pipeline.clear()
            self._parsing_done = True  # nothing more is parsed: what arrives is read and dropped
            self.flow.resume_reading()
            self.cycle = self._running
        super().shutdown()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stop_send_timer()
        self._send_timer = self.loop.call_later(self._limits.send_timeout, self._not_reading)

    def resume_writing(self) -> None:
        self._stop_send_timer()
        super().resume_writing()

    def _stop_send_timer(self) -> None:
        _cancel(self._send_timer)
        self._send_timer = None

    def _not_reading(self) -> None:
        """The client has not taken any of its answer for `send_timeout` seconds: drop it."""
        self._send_timer = None
        if not self.transport.is_closing():
            self.transport.abort()  # close() would wait for the buffer the client never drains

    # After an overflow or a refusal the parser still walks the rest of the read it was given (a
    # callback cannot stop it without uvicorn answering 400 out of turn): every callback is then a no-op.

    def on_message_begin(self) -> None:
        if self._parsing_done or self._refused:
            return
        super().on_message_begin()
        self._header_bytes = self._header_count = self._unparsed = self._trailer_unparsed = 0
        self._in_trailers = False
        self._in_headers = True
        self._messages += 1
        self._arm()

    def on_url(self, url: bytes) -> None:
        if self._parsing_done or self._refused:
            return
        self._header_bytes += len(url)
        self._check()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parsing_done or self._refused:
            return
        self._header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if not self._in_headers:
            # A field of a chunked body's trailer section: counted with the headers, and dropped. uvicorn
            # appended it to the request's headers (the very list the app reads), so a credential or an
            # X-Forwarded-For a proxy in front never checked — it was in the body — was read as a header.
            self._check_trailers()
            return
        self._check()
        super().on_header(name, value)

    # httptools calls these around every chunk of a chunked body: the last chunk (size 0) is the one
    # with no data between them, and its trailer section comes before its `on_chunk_complete`.
    def on_chunk_header(self) -> None:
        self._in_trailers = True  # until data of this chunk arrives: a chunk with data is not the last

    def on_chunk_complete(self) -> None:
        self._in_trailers = False

    def on_headers_complete(self) -> None:
        if self._parsing_done or self._refused:
            return
        self._in_headers = False
        self._disarm()
        if self._upgrade_ignored() and _declares_body(self.headers):
            # The parser ends an upgrade request at its headers: its body would be parsed as requests.
            self._refuse(b"400 Bad Request", b"a request with a body cannot ask for a protocol upgrade\n")
            return
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # The parser takes `HTTP/2.0` (and a bare `GET /`, 0.9) in a request line, served as HTTP/1.x
            # with 1.0's keep-alive, yet `chunked` and no `Host` taken as 1.1's: one request, read two ways.
            self._refuse(b"400 Bad Request", b"only HTTP/1.0 and HTTP/1.1 request lines are served\n")
            return
        framing = _framing_refused(self.headers, version)
        if framing is not None:
            self._refuse(*framing)
            return
        if len(self.pipeline) >= MAX_PIPELINED:
            self._overflow()
            return
        self._body_pending = True
        super().on_headers_complete()
        if self.expect_100_continue and self.cycle is not None:
            self._close_unless_continued(self.cycle)

    def _close_unless_continued(self, cycle: RequestResponseCycle) -> None:
        """`cycle`'s client asked for `100 Continue` before its body: answered without it (a 401, a 404,
        a 413 from its Content-Length — the app never read the body) and before the body was in, that
        client may never send the body (RFC 9110 §10.1.1), and its next request on the connection was
        taken for the body until the body deadline. The answer says `Connection: close`; the body's
        rest, if it comes, is still read and dropped (closed at once, a socket with unread bytes resets
        the connection, which can lose the answer), and the connection closes once it is in."""
        send = cycle.send

        async def send_closing(message: Any) -> None:
            closes = (message["type"] == "http.response.start" and cycle.waiting_for_100_continue
                      and cycle.more_body and cycle.keep_alive)
            if closes:
                cycle.keep_alive = False  # uvicorn writes `Connection: close` ...
            await send(message)
            if closes:
                cycle.keep_alive = True  # ... but does not close the transport: `on_response_complete` does
                self._close_after_body = True

        cycle.send = send_closing  # type: ignore[method-assign]

    def _overflow(self) -> None:
        """One request more than `MAX_PIPELINED` are queued: it is dropped, with everything after it;
        the last queued request is the connection's last (see the module docstring)."""
        self._parsing_done = True
        self.flow.resume_reading()  # to drop what else comes (`data_received`) until the close
        last, _ = self.pipeline[0]  # uvicorn queues with appendleft
        last.keep_alive = False  # its answer says `Connection: close` and closes the transport

    def on_body(self, body: bytes) -> None:
        self._in_trailers = False
        if self._parsing_done or self._refused:
            return
        # Handed on once a read (`_hand_on_body`): uvicorn's `cycle.body += body` copies the whole at
        # every chunk, so a read of 1-byte chunks (~43,000 in 256 KiB) held the event loop copying.
        self._body_parts.append(body)

    def _hand_on_body(self) -> None:
        """Hand the body bytes parsed from this read to the request they belong to, joined (or drop
        them: that request was refused meanwhile — a queued one is off the queue, `self.cycle` is
        another request's)."""
        if not self._body_parts:
            return
        body = b"".join(self._body_parts)
        self._body_parts.clear()
        if not (self._parsing_done or self._refused):
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._parsing_done or self._refused:
            return
        self._hand_on_body()  # before the next request of this read, if any, takes `self.cycle`
        self._body_pending = False
        self._stop_drain()
        super().on_message_complete()
        if self._close_after_body and self.cycle is not None:
            # The body of a request answered with `Connection: close` (`_close_unless_continued`) is in:
            # nothing after it is parsed, and the connection closes once that answer is written.
            self._parsing_done = True
            self.flow.resume_reading()  # to drop what else comes (`data_received`) until the close
            if self.cycle.response_complete:
                self.transport.close()
            else:
                self.cycle.keep_alive = False
            return
        if self._upgrade_ignored() and self.cycle is not None:
            # What follows is, for the parser, the other protocol's: this request is the connection's last.
            self._parsing_done = True
            self.flow.resume_reading()  # to drop what else comes (`data_received`) until the close
            self.cycle.keep_alive = False

    def _upgrade_ignored(self) -> bool:
        """Whether the request being parsed asks for a protocol upgrade (`Connection: Upgrade` and an
        `Upgrade` header, or CONNECT) that is not made: Sentinel serves no WebSocket (`ws: none`)."""
        return self.parser.should_upgrade() and not self._should_upgrade()

    def _unsupported_upgrade_warning(self) -> None:
        """(uvicorn's warns at every upgrade request it does not make, and suggests installing a
        WebSocket library: Sentinel makes none by design, and has served or refused the request.)"""

    def on_response_complete(self) -> None:
        if self._refusal is not None:
            was_last = not self.pipeline  # the answer just completed is the last one before the refusal
            super().on_response_complete()
            if was_last and not self.transport.is_closing():
                refusal, self._refusal = self._refusal, None
                refusal()
            return
        answered_before_its_body = (
            self._body_pending and self.cycle is not None and self.cycle.response_complete and not self.pipeline
        )
        super().on_response_complete()
        if not self.pipeline and not self.transport.is_closing():
            self.flow.resume_reading()  # uvicorn's, before it took the next queued request, was held
        if answered_before_its_body and not self.transport.is_closing():
            self._stop_drain()
            self._drain_timer = self.loop.call_later(self._limits.body_timeout, self._drain_too_slow)
            if self._close_after_body and self.transport.can_write_eof():
                self.transport.write_eof()  # the client reads the end of the answers at once

    def _stop_drain(self) -> None:
        _cancel(self._drain_timer)
        self._drain_timer = None

    def _drain_too_slow(self) -> None:
        """The rest of a body already answered did not arrive within `body_timeout`: close."""
        self._drain_timer = None
        if self._body_pending and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._parsing_done:
            return
        was_in_headers, was_in_trailers, messages = self._in_headers, self._in_trailers, self._messages
        body_pending = self._body_pending
        try:
            super().data_received(data)
        finally:
            self._hand_on_body()
        if messages != self._messages:
            return
        if self._unwatched():
            # uvicorn cancels its keep-alive timer at every read, and arms it again only when an answer
            # completes: a read that begins no request, once every answer is out, left the connection
            # with no deadline at all — held for ever, without any key. Empty lines after an answer (which
            # a request line may follow) are the next request's first bytes: the header deadline; the rest
            # of a body already answered leaves the connection idle: the keep-alive timeout again.
            if body_pending:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)
            else:
                self._arm()
            return
        if (was_in_headers and self._in_headers) or (was_in_trailers and self._in_trailers):
            # All of `data` belonged to headers (or a trailer section) still incomplete: a name or
            # value that does not end is buffered by the parser (growing by a copy of itself at every
            # read) and never reaches `on_header`, so count it here (at most one read more than the
            # limit is held: the one that began the request, or its trailer section, is not counted).
            if self._in_headers:
                self._unparsed += len(data)
                if self._unparsed > self._limits.max_header_bytes:
                    self._headers_too_large()
            else:
                self._trailer_unparsed += len(data)
                self._check_trailers()

    def _unwatched(self) -> bool:
        """Whether no request is being read or answered and no timer would close the connection."""
        busy = self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        return not (
            busy or self._in_headers or self._in_trailers or self._body_pending or self.transport.is_closing()
            or self._timer or self._drain_timer or self.timeout_keep_alive_task
        )

    def send_400_response(self, msg: str) -> None:
        if self._parsing_done or self._refused:
            # Bytes after the overflow that do not parse were never going to be answered, and a 400
            # now would be written before the queued requests' answers (the last closes the connection);
            # after a refusal the connection is closing (or will once the answers before it are out).
            return
        self._refuse_with(partial(super().send_400_response, msg))

    def _check(self) -> None:
        limits = self._limits
        if self._header_bytes > limits.max_header_bytes or self._header_count > limits.max_headers:
            self._headers_too_large()

    def _check_trailers(self) -> None:
        """A trailer section is held to the header limits (with the headers): past them, 431 when
        nothing of the answer was written yet, else the connection is closed (a refusal written now
        would be read as part of that answer, or as the next request's)."""
        limits = self._limits
        if (max(self._header_bytes, self._trailer_unparsed) <= limits.max_header_bytes
                and self._header_count <= limits.max_headers):
            return
        self._headers_too_large()  # closes the connection at once if the answer was begun (`_refuse_with`)

    def _headers_too_large(self) -> None:
        if not self._refused:
            self._refuse(b"431 Request Header Fields Too Large", b"request headers too large\n")

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self._limits.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        _cancel(self._timer)
        self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's headers are late while the answer before it is still being
            # sent: the deadline has passed, so refuse as soon as that answer is complete.
            self._timer = self.loop.call_later(min(0.5, self._limits.header_timeout), self._too_slow)
            return
        self._refuse(b"408 Request Timeout", b"request headers not received in time\n")

    def _refuse(self, status: bytes, message: bytes) -> None:
        self._refuse_with(partial(self._write_refusal, status, message))

    def _refuse_with(self, refusal: Callable[[], None]) -> None:
        """Refuse the request being parsed: `refusal` writes its answer and closes the connection. With
        the answer to an earlier request still to come (one is being answered, or queued), it waits
        for that answer: written now, the client would read it as that answer (see the module docstring)."""
        answered = self._answer_begun()
        pending = not answered and self._answers_pending()
        self._refused = True
        self._body_pending = False
        self._disarm()
        if self.transport.is_closing():
            return
        if answered:
            # The request is refused in its body (or trailer section) once its answer was begun: a
            # refusal written now would be a second answer, read as the next request's (or inside this one).
            self._stop_drain()
            self.transport.close()
            return
        if pending:
            self._refusal = refusal
            self.flow.resume_reading()  # to drop what else comes (`data_received`) until the close
        else:
            refusal()

    def _answer_begun(self) -> bool:
        """Whether the request being refused is the one being answered and its answer was begun (a
        401, a 404, a 413 from its Content-Length: answered before the rest of its body was read)."""
        cycle = self.cycle
        return (
            self._body_pending and cycle is not None and cycle.response_started
            and not (self.pipeline and self.pipeline[0][0] is cycle)
        )

    def _answers_pending(self) -> bool:
        """Whether an answer to a request before the one being refused is still to be written (and
        the refused one, if it was queued already — a 400 in its body —, taken off the queue)."""
        if self._body_pending and self.cycle is not None:  # the refused request has its cycle
            if not (self.pipeline and self.pipeline[0][0] is self.cycle):
                return False  # its own turn: it is the one being answered (or was answered already)
            self.pipeline.popleft()  # queued: it never runs (uvicorn queues with appendleft)
            self.cycle = self.pipeline[0][0] if self.pipeline else self._running  # type: ignore[assignment]
        return self.cycle is not None and not self.cycle.response_complete

    def _write_refusal(self, status: bytes, message: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: " + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
            )
            self.transport.close()


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether request `headers` (names lower-cased) announce a body: any Transfer-Encoding, or a
    Content-Length other than 0 (the parser has refused one that is not digits, or not one value)."""
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip().lstrip(b"0") != b"")
        for name, value in headers
    )


def _framing_refused(headers: list[tuple[bytes, bytes]], version: str) -> tuple[bytes, bytes] | None:
    """The refusal (status, message) of a body framed otherwise than by Content-Length or `chunked`
    alone, or None. The parser took `Transfer-Encoding: gzip, chunked` (any codings before a final
    `chunked`) and served the body as if it had none of them, and took `chunked` from an HTTP/1.0
    client, which an HTTP/1.0 proxy in front does not know (it reads the body up to the close): each
    side of such a proxy would frame a different body. Both are 400, and the connection closes (RFC 9112
    §6.1 suggests 501 for a coding not understood: a client's bad request is not a server error here)."""
    codings = [
        coding.strip().lower() for name, value in headers if name == b"transfer-encoding" for coding in value.split(b",")
    ]
    if not codings:
        return None
    if version == "1.0":
        return b"400 Bad Request", b"an HTTP/1.0 request cannot have a Transfer-Encoding\n"
    if codings != [b"chunked"]:
        return b"400 Bad Request", b"the only transfer coding accepted is chunked, alone\n"
    return None


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    """Cancel `timer` if there is one."""
    if timer is not None:
        timer.cancel()


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The limits `settings` ask for."""
    return ConnectionLimits(
        settings.header_timeout_seconds, settings.max_header_bytes, settings.max_headers, settings.send_timeout_seconds,
        settings.body_timeout_seconds,
    )


def uvicorn_protocol_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.Config keyword arguments for Sentinel's protocol and keep-alive limit (pair them with
    `with_connection_limits`, which puts the header limits on the Config)."""
    return {
        "http": GuardedHttpToolsProtocol,
        "ws": "none",  # no route speaks WebSocket: an upgrade request is plain HTTP (see the module docstring)
        "timeout_keep_alive": settings.keepalive_timeout_seconds,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


def with_connection_limits(config: uvicorn.Config, settings: Settings) -> uvicorn.Config:
    """`config` carrying `settings`' header limits for `GuardedHttpToolsProtocol`."""
    config.sentinel_limits = connection_limits(settings)  # type: ignore[attr-defined]
    return config
