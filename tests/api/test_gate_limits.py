"""Bounded work: slow or oversized requests are cut off, failed authentications are throttled per
address before any lookup, a body of too many JSON containers is refused before it is parsed, and a
huge body is counted without stalling the event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sentinel.mock.app import create_mock_app
from sentinel.native.openai_checks import MAX_JSON_CONTAINERS
from sentinel.offload import OFF_LOOP_SIZE
from sentinel.protocol import MAX_PIPELINED
from sentinel.quota.tokens import TokenCounter
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.accounts import create_key
from tests.support.attack import ledger_rows, openai_error, spying
from tests.support.clock import FakeClock
from tests.support.metrics import metric
from tests.support.raw_http import port_of, raw_exchange, rest_of
from tests.support.waiting import wait_for


def test_headers_that_trickle_are_cut_off(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(header_timeout_seconds=0.5)
    answer = raw_exchange(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert answer.startswith(b"HTTP/1.1 408")
    silent = raw_exchange(gw, b"")  # a connection that sends nothing at all
    assert silent.startswith(b"HTTP/1.1 408")


def test_empty_lines_after_an_answer_do_not_hold_the_connection(gateway_factory: Callable[..., Gateway]) -> None:
    """A CRLF sent after an answer began no request, yet cancelled the keep-alive timer, and no header
    deadline was armed: one connection per CRLF, without any key, was held for ever. It is now the
    next request's first bytes: its headers are late at the header deadline (408), and the connection closes."""
    gw = gateway_factory(header_timeout_seconds=0.5, keepalive_timeout_seconds=60)
    with socket.create_connection(("127.0.0.1", port_of(gw)), timeout=5.0) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answers(sock, 1)[0][0].startswith(b"HTTP/1.1 200")
        sock.sendall(b"\r\n")  # an empty line, which a request line may follow (RFC 9112 section 2.2)
        rest = rest_of(sock)
    assert rest.startswith(b"HTTP/1.1 408") and not rest.endswith(b"<still open>"), rest[-300:]


def test_the_rest_of_a_body_already_answered_leaves_the_connection_to_the_keep_alive_timeout(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A 401 answered from a request's headers, its body sent after: the body's bytes cancelled the
    keep-alive timer and its end armed none — the idle connection was held for ever, without any key."""
    gw = gateway_factory(keepalive_timeout_seconds=0.5, header_timeout_seconds=30)
    with socket.create_connection(("127.0.0.1", port_of(gw)), timeout=5.0) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        assert read_answers(sock, 1)[0][0].startswith(b"HTTP/1.1 401")
        sock.sendall(b"0123456789")
        assert rest_of(sock) == b""  # closed by the keep-alive timeout, as an idle connection


def test_a_pipelined_request_that_trickles_is_cut_off_too(gateway_factory: Callable[..., Gateway]) -> None:
    """A request pipelined behind a slow one gets no more time for its headers: once the answer
    before it is complete, its late headers are a 408 and the connection is closed."""
    gw = gateway_factory(header_timeout_seconds=0.5)
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"slow"}]}'
    first = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
             + b"\r\nContent-Type: application/json\r\nX-Mock-Latency-Ms: 1500\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    answer = raw_exchange(gw, first + b"GET /health/live HTTP/1.1\r\nHost: x\r\n", wait=8.0)  # never finished
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"HTTP/1.1 408" in answer and not answer.endswith(b"<still open>"), answer[-300:]


def read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """The next `count` answers on `sock` (each with a Content-Length), as (head, body) pairs."""
    answers, buffer = [], b""
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(answers)} answers"
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(buffer) < length:
            chunk = sock.recv(65536)
            assert chunk, f"closed in answer {len(answers) + 1}"
            buffer += chunk
        answers.append((head, buffer[:length]))
        buffer = buffer[length:]
    assert not buffer, buffer[:200]
    return answers


def test_a_flood_of_pipelined_requests_is_not_queued_without_end(gateway_factory: Callable[..., Gateway]) -> None:
    """uvicorn queued every pipelined request it parsed and read on after each answer: one
    connection without any key, sending tiny requests back to back, grew the process by ~100 times
    what it sent. At most MAX_PIPELINED wait behind the one being answered; those are answered, in
    order, the last with `Connection: close`, and the connection closes: nothing after is read."""
    gw = gateway_factory()
    answer = raw_exchange(gw, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * 5000, wait=5.0)
    assert not answer.endswith(b"<still open>"), answer[-300:]
    heads = [part.partition(b"\r\n\r\n")[0] for part in answer.split(b"HTTP/1.1 ")[1:]]
    # The first read holds far more than the queue: the one answered first, then the queue's.
    assert len(heads) == 1 + MAX_PIPELINED, len(heads)
    assert all(head.startswith(b"404") for head in heads), heads[:3]
    assert [b"connection: close" in head.lower() for head in heads] == [False] * MAX_PIPELINED + [True]
    fine = raw_exchange(gw, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert fine.startswith(b"HTTP/1.1 200"), fine[:200]


def test_a_few_pipelined_requests_are_answered_in_order(gateway_factory: Callable[..., Gateway]) -> None:
    """Pipelining within the limit is served as before: in order, the connection kept; reading,
    paused while requests are queued, resumes once they are taken — the last queued request's body,
    still on its way while it waited, arrives then and it is answered."""
    gw = gateway_factory()
    port = int(gw.url.rsplit(":", 1)[1])
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    post = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n" b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n" + post + body[:10])
        first = read_answers(sock, 3)
        assert [head[:12] for head, _ in first] == [b"HTTP/1.1 200", b"HTTP/1.1 404", b"HTTP/1.1 200"], first
        sock.sendall(body[10:])
        [(head, answer)] = read_answers(sock, 1)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower(), head
        assert orjson.loads(answer)["object"] == "chat.completion"
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection still serves
        [(head, _)] = read_answers(sock, 1)
    assert head.startswith(b"HTTP/1.1 200"), head


def test_reading_waits_while_pipelined_requests_are_queued(gateway_factory: Callable[..., Gateway]) -> None:
    """uvicorn read on after every answer, queued requests or not: what a client pipelined after its
    first answer came went into the same queue. Reading now waits for the queue to empty, so a
    client pipelining in several writes meets the limit only within one of them."""
    gw = gateway_factory()
    port = int(gw.url.rsplit(":", 1)[1])
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"slow"}]}'
    slow = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
            + b"\r\nContent-Type: application/json\r\nX-Mock-Latency-Ms: 100\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
    queued = MAX_PIPELINED // 2
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(slow * (1 + queued))
        answers = read_answers(sock, 1)  # the others are still queued (each takes its 100 ms) ...
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n" * MAX_PIPELINED)  # ... more than fit
        answers += read_answers(sock, queued + MAX_PIPELINED)
    assert [head[:12] for head, _ in answers] == [b"HTTP/1.1 200"] * len(answers)
    assert [b"chat.completion" in answer for _, answer in answers] == [True] * (1 + queued) + [False] * MAX_PIPELINED
    assert not any(b"connection: close" in head.lower() for head, _ in answers)


def _chat(gw: Gateway, text: str, *, stream: bool = False, latency_ms: int = 0) -> bytes:
    """A raw POST /v1/chat/completions for `gw`'s key (`latency_ms` before the mock's first byte)."""
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": text}]})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
            + b"\r\nContent-Type: application/json\r\nX-Mock-Latency-Ms: " + str(latency_ms).encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


LIVE = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
REFUSED_BEHIND = {  # a request the connection refuses, and the status it is refused with
    "too many headers": (b"GET /health/live HTTP/1.1\r\nHost: x\r\n"
                         + b"".join(b"X-H%d: v\r\n" % i for i in range(40)) + b"\r\n", b"431"),
    "bytes that do not parse": (b"\x00\x01 not http\r\n\r\n", b"400"),
    "a body that does not parse": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", b"400"),
}


@pytest.mark.parametrize("refused", list(REFUSED_BEHIND))
def test_a_refusal_pipelined_behind_other_requests_is_answered_in_its_turn(
    gateway_factory: Callable[..., Gateway], refused: str
) -> None:
    """A request refused by the connection (431, or 400 for what does not parse) behind requests
    still being answered was refused at once: the client read the refusal as the answer to its first
    request (a billed chat), and the other answers were lost while their requests ran on. The
    refusal now comes after the answers before it, in order; then the connection closes."""
    gw = gateway_factory(max_headers=20)
    port = int(gw.url.rsplit(":", 1)[1])
    tail, status = REFUSED_BEHIND[refused]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_chat(gw, "hi", latency_ms=300) + LIVE + tail)  # the chat runs, the GET waits
        answers = read_answers(sock, 3)
        assert sock.recv(65536) == b""  # then closed
    assert [head[:12] for head, _ in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 " + status], answers
    assert orjson.loads(answers[0][1])["object"] == "chat.completion"
    assert [b"connection: close" in head.lower() for head, _ in answers] == [False, False, True]


def test_a_refusal_with_nothing_before_it_is_answered_at_once(gateway_factory: Callable[..., Gateway]) -> None:
    """With the answers before it all written, a refused request is answered and the connection
    closed, as before (the request the client is waiting on is that one)."""
    gw = gateway_factory(max_headers=20)
    port = int(gw.url.rsplit(":", 1)[1])
    tail, _ = REFUSED_BEHIND["too many headers"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(LIVE)
        [(head, _)] = read_answers(sock, 1)
        sock.sendall(tail)
        [(refusal, _)] = read_answers(sock, 1)
        assert sock.recv(65536) == b""
    assert head.startswith(b"HTTP/1.1 200") and refusal.startswith(b"HTTP/1.1 431"), (head, refusal)


def _statuses_recorded(gw: Gateway) -> list[int]:
    return [row["status"] for row in ledger_rows(gw.settings.database_url)]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stream_whose_client_leaves_with_a_request_queued_is_a_499(
    gateway_factory: Callable[..., Gateway], caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    """uvicorn tells only the request parsed last that its client left — with a request queued,
    that one and not the stream being answered, which cannot see the close itself while reading is
    held: it ran to its end (recorded as answered), then wrote on the closed transport (uvloop: an
    unhandled error). Now the stream being answered is told: settled as 499, quietly."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1, loop=loop)
    port = int(gw.url.rsplit(":", 1)[1])
    words = " ".join(f"w{i}" for i in range(30))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_chat(gw, words + " #mock:chunk_delay_ms=200", stream=True) + LIVE)
        received = b""
        while b"data:" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    assert wait_for(lambda: len(_statuses_recorded(gw)) == 1, timeout=15)
    assert _statuses_recorded(gw) == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stream_not_read_with_a_request_queued_is_cut_off_and_a_499(
    gateway_factory: Callable[..., Gateway], caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    """The send timeout's abort, with a request queued behind the stream the client does not read:
    the stream is told its client is gone (it wrote on into the closed transport), and is a 499."""
    gw = gateway_factory(send_timeout_seconds=0.5, usage_flush_interval_seconds=0.1, loop=loop)
    port = int(gw.url.rsplit(":", 1)[1])
    words = " ".join(f"word{i}" for i in range(20_000))  # an answer far larger than the socket buffers
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(_chat(gw, words, stream=True) + LIVE)  # ... and never read the answers
        assert wait_for(lambda: len(_statuses_recorded(gw)) == 1, timeout=20)
    finally:
        sock.close()
    assert _statuses_recorded(gw) == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_client_that_stops_reading_its_answer_is_cut_off(gateway_factory: Callable[..., Gateway]) -> None:
    """A client that never reads a large answer would hold its in-flight slot for ever (enough of
    them lock every user out with 503): after `SENTINEL_SEND_TIMEOUT_SECONDS` without progress the
    connection is dropped and the slot is free again."""
    from tests.support.metrics import metric

    gw = gateway_factory(send_timeout_seconds=0.5)
    body = orjson.dumps({"model": "text-embedding-3-small", "input": ["hello world"] * 200})
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
               + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
               + b"\r\n\r\n" + body)
    port = int(gw.url.rsplit(":", 1)[1])
    sockets = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)  # ... and never read the answer
        sockets.append(sock)
    try:
        assert wait_for(lambda: metric(gw.url, "sentinel_requests_in_flight") == 0, timeout=20)
        answer = raw_exchange(gw, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in sockets:
            sock.close()


def test_too_many_or_too_large_headers_are_refused(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(max_headers=20, max_header_bytes=4096)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    assert raw_exchange(gw, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    big = b"X-Big: " + b"a" * 8000 + b"\r\n"
    assert raw_exchange(gw, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n").startswith(b"HTTP/1.1 431")
    fine = raw_exchange(gw, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert fine.startswith(b"HTTP/1.1 200")


def test_a_header_line_that_never_ends_is_refused_not_buffered(gateway_factory: Callable[..., Gateway]) -> None:
    """The parser buffers a header value until its line ends, and only then counts it: a value that
    never ends grew in memory until the header deadline (about a gigabyte a connection at 1 Gbit/s).
    It is refused (431) once it is past the limit, long before the deadline."""
    gw = gateway_factory(max_header_bytes=4096, header_timeout_seconds=30)
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MiB, one read at a time, never a line end
                sock.sendall(b"a" * 65536)
                time.sleep(0.005)
        except OSError:  # refused and closed while still sending: what should happen
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    assert received.startswith(b"HTTP/1.1 431"), received[:200]


def test_a_sign_in_form_that_never_arrives_is_cut_off(gateway_factory: Callable[..., Gateway]) -> None:
    """The console's and the docs' sign-in forms read their bodies without the body deadline: a
    connection announcing a form and never sending it held an in-flight slot for ever (enough of
    them answer every /v1 request 503). They get the same 408 as every other body."""
    gw = gateway_factory(admin_key="admin-key-for-tests-0123", docs_api_key="docs-key-for-tests-0123",
                         body_timeout_seconds=0.5)
    for path in (b"/admin/signin", b"/native/docs/signin"):
        answer = raw_exchange(gw, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nkey=",
                              wait=5)
        assert answer.startswith(b"HTTP/1.1 408"), (path, answer[:200])


@pytest.fixture
def long_sign_in_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sign-in forms get the body deadline (20 s in these tests), not SIGN_IN_FORM_SECONDS: forms held
    open stay held for as long as a busy machine needs to open them all."""
    monkeypatch.setattr("sentinel.api.bodies.SIGN_IN_FORM_SECONDS", 1e9)


def test_a_sign_in_form_gets_a_short_deadline_and_each_one_missed_is_a_failure(
    gateway_factory: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sign-in form had the body deadline (30 s): 4 connections an address announcing a form and
    sending none, opened again every 30 s, were 8 failed sign-ins a minute (under the limit of 30),
    and 8 addresses kept all 32 sign-in slots, and the console's and the docs' sign-in, for ever. A
    form (one short field) gets SIGN_IN_FORM_SECONDS (5 s; here shortened) whatever the body
    deadline, and each one missed counts: such an address fails 48 times a minute, and is refused."""
    from sentinel.api.bodies import SIGN_IN_FORM_SECONDS

    assert SIGN_IN_FORM_SECONDS == 5.0
    monkeypatch.setattr("sentinel.api.bodies.SIGN_IN_FORM_SECONDS", 0.2, raising=False)
    gw = gateway_factory(admin_key="admin-key-for-tests-0123", docs_api_key="docs-key-for-tests-0123",
                         auth_failures_per_minute=2, body_timeout_seconds=5, window_clock=FakeClock())
    port = int(gw.url.rsplit(":", 1)[1])
    for path in (b"/admin/signin", b"/native/docs/signin"):
        with _held_sign_in(port, path, 2, length=100) as sock:
            answer = _answer_of(sock)
        assert answer.startswith(b"HTTP/1.1 408") and b"within 0.2 seconds" in answer, (path, answer)
    with httpx.Client(base_url=gw.url, timeout=10) as http:  # another address still signs in
        assert http.post("/native/docs/signin", data={"key": "docs-key-for-tests-0123"}).status_code == 303
    for path in (b"/admin/signin", b"/native/docs/signin"):  # the two missed forms were the address's 2
        with _held_sign_in(port, path, 2, body=b"key=docs-key-for-tests-0123", length=27) as sock:
            answer = _answer_of(sock)
        # (the console's answer is its HTML page, the docs' Sentinel's JSON)
        said = b"retry later" if path == b"/admin/signin" else b"auth_rate_limited"
        assert answer.startswith(b"HTTP/1.1 429") and said in answer, (path, answer)


def _answer_of(sock: socket.socket) -> bytes:
    """One whole answer read from `sock` (its headers and its Content-Length of body)."""
    received = b""
    while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def _held_sign_in(port: int, path: bytes, host: int, body: bytes = b"key=", length: int = 4096) -> socket.socket:
    """A connection from 127.0.0.`host` (a client address of its own) posting a sign-in form of
    `length` bytes of which only `body` is sent: the form is being read until the rest comes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(f"127.0.0.{host}", 0))
    sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: " + str(length).encode() + b"\r\n\r\n" + body)
    return sock


def _get_from(port: int, path: bytes, host: int) -> int:
    """The status of a GET of `path` from 127.0.0.`host`."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(f"127.0.0.{host}", 0)) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _status_of(sock)


@pytest.mark.usefixtures("long_sign_in_forms")
def test_sign_in_forms_that_never_arrive_cannot_take_the_api_slots(
    gateway_factory: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    """Sign-in forms are read before anyone is authenticated: held open, each kept one of the
    `SENTINEL_MAX_IN_FLIGHT` slots for the whole body deadline, and enough of them answered every
    user's API request 503. They have their own few slots now (and the 33rd waits its turn: 503).
    Each such 503 is counted, and logged at debug only: it was a warning line per refusal, at the
    rate of whoever holds the slots."""
    from sentinel.api.middleware import MAX_SIGN_IN_IN_FLIGHT, MAX_SIGN_IN_PER_CLIENT

    caplog.set_level(logging.DEBUG, logger="sentinel.request")
    gw = gateway_factory(docs_api_key="docs-key-for-tests-0123", max_in_flight=2, body_timeout_seconds=20)
    port = int(gw.url.rsplit(":", 1)[1])
    held = []
    try:
        for i in range(MAX_SIGN_IN_IN_FLIGHT):  # from addresses other than the probe's (127.0.0.1)
            held.append(_held_sign_in(port, b"/native/docs/signin", 2 + i // MAX_SIGN_IN_PER_CLIENT))
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            # Every held form is being read once one more sign-in finds no free slot.
            assert wait_for(lambda: http.get("/native/docs/signin").status_code == 503)
            refused = [http.get("/native/docs/signin").status_code for _ in range(5)]
            models = http.get("/v1/models", headers={"Authorization": f"Bearer {gw.key}"})
        assert models.status_code == 200, models.text
        assert refused == [503] * 5
    finally:
        for sock in held:
            sock.close()
    overloads = [r for r in caplog.records if getattr(r, "code", None) == "overloaded"]
    assert len(overloads) >= 6 and {r.levelno for r in overloads} == {logging.DEBUG}, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert (metric(gw.url, "sentinel_overload_rejections_total") or 0) >= 6


@pytest.mark.usefixtures("long_sign_in_forms")
def test_one_address_holds_only_a_few_sign_in_slots(gateway_factory: Callable[..., Gateway]) -> None:
    """One client holding the 32 sign-in slots with forms it never finishes made every other
    sign-in a 503 until the body deadline. A client (an address; an IPv6 /64) has at most
    MAX_SIGN_IN_PER_CLIENT in flight: its next one is 429 `too_many_in_flight`, others sign in."""
    from sentinel.api.middleware import MAX_SIGN_IN_PER_CLIENT

    gw = gateway_factory(admin_key="admin-key-for-tests-0123", docs_api_key="docs-key-for-tests-0123",
                         body_timeout_seconds=20)
    port = int(gw.url.rsplit(":", 1)[1])
    held = []
    try:
        for i in range(MAX_SIGN_IN_PER_CLIENT):  # either form: one count per client
            held.append(_held_sign_in(port, (b"/admin/signin", b"/native/docs/signin")[i % 2], 2))
        assert wait_for(lambda: _get_from(port, b"/admin/signin", 2) == 429)
        assert _get_from(port, b"/native/docs/signin", 2) == 429
        with httpx.Client(base_url=gw.url, timeout=10) as http:  # another address
            signed_in = http.post("/native/docs/signin", data={"key": "docs-key-for-tests-0123"})
        assert signed_in.status_code == 303, signed_in.text
    finally:
        for sock in held:
            sock.close()


def test_a_sign_in_form_that_never_arrives_counts_as_a_failed_sign_in(
    gateway_factory: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    """A form held until its body deadline (408) or left unfinished (499) cost its sender nothing:
    slots held open that way, again and again, were never throttled. Each counts as a failed
    sign-in now: with a limit of 2, after one of each even the right key is refused (429)."""
    caplog.set_level(logging.INFO, logger="sentinel.request")
    gw = gateway_factory(admin_key="admin-key-for-tests-0123", auth_failures_per_minute=2, body_timeout_seconds=0.5,
                         window_clock=FakeClock())
    port = int(gw.url.rsplit(":", 1)[1])
    _held_sign_in(port, b"/admin/signin", 1, length=100).close()  # the client leaves mid-form
    assert wait_for(lambda: any(getattr(r, "status", None) == 499 for r in caplog.records)), caplog.text
    with _held_sign_in(port, b"/admin/signin", 1, length=100) as late:  # the body deadline passes
        assert _status_of(late) == 408
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        answer = http.post("/admin/signin", data={"key": "admin-key-for-tests-0123"})
    assert answer.status_code == 429 and answer.headers["content-type"].startswith("text/html"), answer.text
    assert "retry later" in answer.text and "retry-after" in answer.headers, answer.text


@pytest.mark.parametrize("path", ["/admin/signin", "/native/docs/signin"])
@pytest.mark.usefixtures("long_sign_in_forms")
def test_concurrent_sign_ins_cannot_all_pass_the_failed_login_limit(
    gateway_factory: Callable[..., Gateway], path: str,
) -> None:
    """The sign-in forms checked the throttle, then read the form, and only then counted the wrong
    key: 32 concurrent wrong keys with slow forms all passed the check (32 x 401 with a limit of 3).
    Each key is judged in a lookup turn once its form is read: `limit` are judged; the rest get 429."""
    from sentinel.api.middleware import MAX_SIGN_IN_PER_CLIENT

    gw = gateway_factory(admin_key="admin-key-for-tests-0123", docs_api_key="docs-key-for-tests-0123",
                         auth_failures_per_minute=3, body_timeout_seconds=20, window_clock=FakeClock())
    port = int(gw.url.rsplit(":", 1)[1])
    form = b"key=wrong-key"
    held = []
    try:
        for _ in range(MAX_SIGN_IN_PER_CLIENT):  # as many as one client may have in flight
            held.append(_held_sign_in(port, path.encode(), 2, body=form[:4], length=len(form)))
        # Every held sign-in is in its handler once one more from its address is refused.
        assert wait_for(lambda: _get_from(port, path.encode(), 2) == 429)
        for sock in held:
            sock.sendall(form[4:])
        statuses = sorted(_status_of(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    assert statuses == [401] * 3 + [429] * (MAX_SIGN_IN_PER_CLIENT - 3), statuses


def _status_of(sock: socket.socket) -> int:
    received = b""
    while b"\r\n" not in received and (chunk := sock.recv(65536)):
        received += chunk
    return int(received.split(b" ", 2)[1])


def test_bodies_held_in_memory_are_bounded_per_process(gateway_factory: Callable[..., Gateway]) -> None:
    """Only the number of requests in flight was bounded: bodies just under the size limit, their
    last byte held back until the body deadline, made the process hold 1024 x 10 MiB. The bytes of
    bodies being read and served count against SENTINEL_MAX_BODY_BYTES_IN_FLIGHT (503 beyond), and
    are given back when their request ends. (The second body is another caller's: one caller's
    share of the budget is `test_body_memory`'s.)"""
    gw = gateway_factory(max_body_bytes=800_000, max_body_bytes_in_flight=1_000_000, body_timeout_seconds=30)
    port = int(gw.url.rsplit(":", 1)[1])
    chat = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    padded = chat[:-1] + b" " * (500_000 - len(chat)) + b"}"  # 500 KB of valid JSON
    _, other = asyncio.run(create_key(gw.settings.database_url, "bob"))

    def second() -> int:
        return httpx.post(gw.url + "/v1/chat/completions", content=padded, timeout=30,
                          headers={"Authorization": f"Bearer {other}", "Content-Type": "application/json"}).status_code

    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        held.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 800000\r\n\r\n" + b" " * 600_000)
        assert wait_for(lambda: second() == 503)  # 600 KB held + 500 KB > 1 MB, once the first is read
    finally:
        held.close()
    assert wait_for(lambda: second() == 200)  # the held body's bytes were given back with its request
    # Counted like every other overload refusal (which is logged at debug only).
    assert (metric(gw.url, "sentinel_overload_rejections_total") or 0) >= 1


def test_the_rest_of_a_body_already_answered_is_waited_for_only_so_long(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """A request answered before its body was read (no key: 401) kept its connection for as long
    as the client trickled the rest of the announced body: every byte put off the keep-alive
    timeout, and nothing else watched. The answer arrives; the rest gets the body deadline."""
    gw = gateway_factory(body_timeout_seconds=0.5, keepalive_timeout_seconds=5)
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{\"model\": ")
        sock.settimeout(0.1)
        received, closed = b"", False
        for _ in range(100):  # a byte every 0.1 s for up to 10 s: far past the 0.5 s deadline
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                closed = True
                break
            received += chunk or b""
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
    assert received.startswith(b"HTTP/1.1 401"), received[:200]
    assert closed, "the connection stayed open while the rest of the body trickled in"


def test_a_large_body_refused_early_still_gets_its_answer_and_keeps_the_connection(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """A 413 from Content-Length is answered before the body is read; the client, still sending,
    must get that answer (not a reset), and once the body is in, the connection serves the next
    request as usual."""
    gw = gateway_factory(max_body_bytes=1024 * 1024)
    port = int(gw.url.rsplit(":", 1)[1])
    body = b"x" * (3 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + gw.key.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,))
        sender.start()
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(rest) < length:
            rest += sock.recv(65536)
        sender.join(timeout=10)
        assert head.startswith(b"HTTP/1.1 413") and b"connection: close" not in head.lower(), head
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        after = b""
        while b"\r\n\r\n" not in after:
            after += sock.recv(65536)
    assert after.startswith(b"HTTP/1.1 200"), after[:200]


def test_wrong_docs_keys_in_the_header_are_throttled_like_failed_sign_ins(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """`X-Docs-Key` was compared without counting failures: guessing the key through the header
    went around the sign-in form's throttle. A wrong header counts; the page without any key does not."""
    gw = gateway_factory(docs_api_key="docs-key-for-tests-0123", auth_failures_per_minute=3, window_clock=FakeClock())
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        for _ in range(5):
            assert http.get("/native/docs").status_code == 401  # no key: the sign-in page, not counted
        codes = [http.get("/native/docs/openapi.json", headers={"X-Docs-Key": f"guess-{i}"}).status_code
                 for i in range(4)]
        assert codes == [401, 401, 401, 429], codes
        right = http.get("/native/docs/openapi.json", headers={"X-Docs-Key": "docs-key-for-tests-0123"})
    assert right.status_code == 429, right.status_code  # throttled addresses wait, right key or not


def test_a_websocket_upgrade_is_plain_http_not_a_500(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """No route speaks WebSocket: an upgrade request, with or without a key, is answered as the
    plain HTTP request it also is — never a 500 with a traceback."""
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n")
    with caplog.at_level(logging.ERROR):
        for path, status in ((b"/health/live", b"200"), (b"/v1/models", b"401"), (b"/nope", b"404")):
            answer = raw_exchange(gateway, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n", wait=1.0)
            assert answer.startswith(b"HTTP/1.1 " + status), (path, answer[:200])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_the_body_of_an_upgrade_request_is_never_parsed_as_a_request(
    gateway_factory: Callable[..., Gateway], framing: str
) -> None:
    """The HTTP parser ends a request that asks for a protocol upgrade (`Connection: Upgrade`,
    `Upgrade: h2c`) at its headers: its body was taken for the other protocol's bytes. Sentinel,
    which upgrades nothing, answered the request without its body, kept the connection, and parsed
    the body when it came in a later read as a request of its own — a request a proxy in front
    forwarded as one body reached Sentinel as another request (smuggled; another user's request
    appended to it by the proxy could become the body of the attacker's). Such a request is
    refused (400), and the connection closed: nothing after its headers is parsed."""
    gw = gateway_factory()
    port = int(gw.url.rsplit(":", 1)[1])
    smuggled = (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
                + b"\r\nConnection: close\r\n\r\n")
    framed = (b"Content-Length: " + str(len(smuggled)).encode() if framing == "content-length"
              else b"Transfer-Encoding: chunked")
    body = smuggled if framing == "content-length" else b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
            + b"\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + framed + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        [(answer, _)] = read_answers(sock, 1)
        try:
            sock.sendall(body)  # the body, in a read of its own
        except OSError:
            pass
        rest = rest_of(sock)
    assert b"HTTP/1.1" not in rest, rest[:300]  # the body was never answered as a request
    assert answer.startswith(b"HTTP/1.1 400") and b"connection: close" in answer.lower(), answer
    assert rest == b"", rest[:300]


def test_an_upgrade_request_without_a_body_is_served_and_ends_the_connection(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a body, an upgrade request is served as plain HTTP, as the connection's last answer
    (`Connection: close`): what follows its headers is not parsed (a request pipelined behind it
    was silently dropped, the connection kept: the client waited for an answer that never came)."""
    port = int(gateway.url.rsplit(":", 1)[1])
    upgrade = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    with caplog.at_level(logging.WARNING), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(upgrade + b"Authorization: Bearer " + gateway.key.encode() + b"\r\n\r\n"
                     + b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        [(answer, listed)] = read_answers(sock, 1)
        rest = rest_of(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower(), answer
    assert orjson.loads(listed)["object"] == "list"
    assert rest == b"", rest[:300]
    # Sentinel upgrades nothing by design: no warning telling the operator to install a WebSocket library.
    assert "WebSocket" not in caplog.text and "upgrade" not in caplog.text.lower(), caplog.text


def test_a_body_that_trickles_is_refused(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(body_timeout_seconds=0.5)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":"
    )
    answer = raw_exchange(gw, head)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer


def test_failed_authentications_are_throttled_per_address_before_any_lookup(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(auth_failures_per_minute=5, window_clock=FakeClock())
    looked_up = _source_lookups(gw)
    with gw.client() as http:
        statuses = [http.get("/v1/models", headers={"Authorization": f"Bearer sk-sentinel-made-up-{i}"}).status_code
                    for i in range(8)]
        lookups_before = len(looked_up)
        refused = http.get("/v1/models", headers={"Authorization": "Bearer sk-sentinel-another-made-up"})
        lookups_after = len(looked_up)
        # The throttle holds until the minute ends for every token from this address that is not
        # known good already: a valid key not seen before too (it would need a lookup).
        good = http.get("/v1/models")
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "auth_rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert lookups_after == lookups_before == 5  # no lookup was made for a throttled request
    assert good.status_code == 429 and len(looked_up) == 5


def test_the_failed_authentication_minutes_are_read_on_the_gateways_window_clock(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """The throttle counts per epoch-aligned minute on the clock the gateway is given (the quotas'
    one): a test's failures stay in one minute (on the wall clock one could end between a test's
    refused forms and its last sign-in, and the count restart), and a new minute clears them."""
    clock = FakeClock(1_800_000_059.0)  # one second before a minute ends
    gw = gateway_factory(auth_failures_per_minute=2, window_clock=clock)
    wrong = {"Authorization": "Bearer sk-sentinel-made-up"}
    with gw.client() as http:
        assert [http.get("/v1/models", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]
        refused = http.get("/v1/models", headers=wrong)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        clock.advance(1)  # the next minute
        assert http.get("/v1/models", headers=wrong).status_code == 401


def test_one_clients_failures_do_not_lock_out_the_keys_in_use_behind_its_address(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Users behind one address (an office NAT; every user, behind a proxy not named in
    SENTINEL_FORWARDED_ALLOW_IPS) share one count of failures: one of them sending made-up (or old,
    revoked) keys made every request from that address 429 for the rest of each minute, valid keys
    in use included — 30 bad requests a minute kept them all out. A key whose identity is cached
    (known good) costs no lookup and is served; tokens that would need one are still refused."""
    gw = gateway_factory(auth_failures_per_minute=3, window_clock=FakeClock())
    looked_up = _source_lookups(gw)
    with gw.client() as colleague:
        assert colleague.get("/v1/models").status_code == 200  # in use: its identity is cached
        for i in range(3):
            made_up = colleague.get("/v1/models", headers={"Authorization": f"Bearer sk-sentinel-made-up-{i}"})
            assert made_up.status_code == 401
        assert colleague.get("/v1/models", headers={"x-api-key": "sk-sentinel-made-up-9"}).status_code == 429
        assert len(looked_up) == 4
        served = colleague.get("/v1/models")
        chat = gw.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "still in"}], max_tokens=5)
        # Nothing else gets a lookup meanwhile: neither another made-up key nor a missing one.
        again = colleague.get("/v1/models", headers={"Authorization": "Bearer sk-sentinel-made-up-10"})
        missing = colleague.get("/v1/models", headers={"Authorization": ""})
    assert served.status_code == 200, served.text
    assert chat.choices[0].message.content
    assert again.status_code == 429 and again.json()["error"]["code"] == "auth_rate_limited"
    assert missing.status_code == 429
    assert len(looked_up) == 4


def _source_lookups(gw: Gateway) -> list[str]:
    """The tokens the gateway asks its API-key source about from now on (a list that grows)."""
    source = gw.runtime.authenticator.api_keys
    assert source is not None
    asked: list[str] = []
    authenticate = source.authenticate

    async def counted(token: str) -> Any:
        asked.append(token)
        return await authenticate(token)

    source.authenticate = counted  # type: ignore[method-assign]
    return asked


def test_requests_without_a_credential_are_not_failed_authentications(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Any page a browser opens can make it send requests without a credential (an <img> of
    `/v1/models`, a form posted to `/native/v1/chat/completions`): counted as failures, they locked the
    visitor's address out — its users' keys and the admin key — for as long as the page stayed open."""
    gw = gateway_factory(auth_failures_per_minute=5, admin_key="admin-key-for-tests-0123", window_clock=FakeClock())
    with httpx.Client(base_url=gw.url, timeout=30) as anonymous:
        answers = [anonymous.get("/v1/models", headers={"Sec-Fetch-Site": "cross-site"}) for _ in range(4)]
        answers += [anonymous.post("/native/v1/chat/completions", content=b"x=1",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"}) for _ in range(4)]
        assert {a.status_code for a in answers} == {401}
        assert {a.json()["error"]["code"] for a in answers} == {"missing_api_key"}
        assert anonymous.get("/v1/models", headers={"Authorization": f"Bearer {gw.key}"}).status_code == 200
        admin = anonymous.get("/admin/api/plans", headers={"Authorization": "Bearer admin-key-for-tests-0123"})
        assert admin.status_code == 200
        # A wrong credential still counts (it needs a header no page can set without the API's leave).
        wrong = [anonymous.get("/v1/models", headers={"Authorization": f"Bearer sk-sentinel-made-up-{i}"}).status_code
                 for i in range(6)]
    assert wrong == [401] * 5 + [429]


def _identity_misses(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("sentinel_cache_lookups_total") and 'cache="identity"' in line and 'result="miss"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_liveness_keeps_answering_while_a_9mb_request_is_served(gateway: Gateway) -> None:
    big = {"model": "gpt-4o-mini", "max_tokens": 5,
           "messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 330_000}]}  # ~9 MB
    done = threading.Event()
    result: dict[str, int] = {}

    def send_big() -> None:
        with gateway.client() as http:
            result["status"] = http.post("/v1/chat/completions", json=big, timeout=120).status_code
        done.set()

    sender = threading.Thread(target=send_big)
    sender.start()
    probes_while_big_in_flight = 0
    with httpx.Client(base_url=gateway.url, timeout=30) as probe:
        while not done.is_set():
            assert probe.get("/health/live").status_code == 200
            if not done.is_set():
                probes_while_big_in_flight += 1
    sender.join()
    # The default plan has no token limit: the big request is served; while it was being read,
    # counted and relayed, liveness probes kept being answered (a blocked loop answers none).
    assert result["status"] == 200
    assert probes_while_big_in_flight >= 3


def test_a_body_of_too_many_containers_is_refused_before_anything_reaches_the_provider(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """200,000 empty objects (~600 KB) cost ~0.3 s to parse and walk on the event loop: a 400 on every
    surface (and pass-through), refused before the parse; strings holding 300,000 braces are served."""
    many = [{}] * (2 * MAX_JSON_CONTAINERS)
    user = [{"role": "user", "content": "hi"}]
    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url, passthrough="/v1/moderations")
        with gw.client() as http:
            refused = [
                http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": user, "metadata": many}),
                http.post("/native/v1/chat/completions", json={"messages": user, "metadata": many}),
                http.post("/v1/moderations", json={"input": "hi", "metadata": many}),
            ]
            messages = http.post("/v1/messages", json={"model": "claude-3-5-haiku-20241022", "max_tokens": 5,
                                                       "messages": user, "metadata": many})
            assert spy.seen == []
            served = http.post("/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{" * 300_000}]})
    for r in refused:
        assert r.status_code == 400, r.text
        error = openai_error(r.json())
        assert error["code"] == "invalid_json" and f"{MAX_JSON_CONTAINERS:,} objects and arrays" in error["message"]
    assert messages.status_code == 400 and messages.json()["error"]["type"] == "invalid_request_error", messages.text
    assert served.status_code == 200, served.text


def test_a_long_answer_without_usage_is_counted_off_the_event_loop(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The native API and a translated chat show the usage of an answer the provider gave none for,
    and record it: its text counted — a translated chat's for the usage shown and again for the
    record, the native API's once (it shows what its record holds) —, a long one in a worker thread
    (~0.5 ms per 1,000 characters), streamed or not."""
    counted: list[tuple[int, bool]] = []  # (characters, on the event loop)
    count_text = TokenCounter.count_text

    def recording(self: TokenCounter, text: str, model: str, **kwargs: Any) -> int:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        counted.append((len(text), on_loop))
        return count_text(self, text, model, **kwargs)

    monkeypatch.setattr(TokenCounter, "count_text", recording)
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "anthropic"))
    # 4,096 words (the mock answers a word a token) of over OFF_LOOP_SIZE characters: within the
    # model's most output (8,192), which a native `max_tokens` is brought down to.
    long_text = "wordwordwordword " * (OFF_LOOP_SIZE // 16)
    user = [{"role": "user", "content": long_text + " #mock:no_usage"}]
    claude = {"model": "claude-3-5-haiku-20241022", "messages": user, "max_tokens": 20_000}
    with gw.client() as http:
        answers = [
            http.post("/native/v1/chat/completions", json={"messages": user, "max_tokens": 20_000}),
            http.post("/v1/chat/completions", json=claude),
            http.post("/v1/chat/completions", json={**claude, "stream": True, "stream_options": {"include_usage": True}}),
        ]
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text[:300] for r in answers]
    long_counts = [on_loop for size, on_loop in counted if size >= OFF_LOOP_SIZE]
    assert len(long_counts) >= 5, counted  # each translated answer: its usage shown, then recorded
    assert not any(long_counts), counted


def test_a_client_that_leaves_mid_body_is_a_quiet_499(
    gateway_factory: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sentinel.request")
    gw = gateway_factory()
    port = int(gw.url.rsplit(":", 1)[1])
    for path in (b"/v1/chat/completions", b"/v1/messages", b"/native/v1/chat/completions"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":"
            )
            time.sleep(0.2)  # let the gateway start reading the body before the client leaves

    def closed() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "status", None) == 499]

    assert wait_for(lambda: len(closed()) == 3, timeout=10), caplog.text
    assert all(getattr(r, "code", None) == "client_closed_request" for r in closed())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    with gw.client() as client:  # the gateway is fine afterwards
        assert client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "still here?"}]}).status_code == 200


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_requests_pipelined_behind_one_in_flight_at_shutdown_are_left_for_a_new_connection(
    gateway_factory: Callable[..., Gateway], loop: str
) -> None:
    """On SIGTERM uvicorn marks the connection's last request to close it — with requests pipelined,
    a queued one, so the request being answered kept the connection and every request queued behind
    it was started after the stop began: each one admitted and sent upstream, the last ones cut at
    the shutdown deadline (a 500, or a reset, and a 499 the caller is charged). Now the answer being
    written is the connection's last (the client sends the queued requests again elsewhere, as after
    any close, RFC 9112 §9.3.2): nothing queued starts once the stop began."""
    gw = gateway_factory(loop=loop)
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(_chat(gw, "first", latency_ms=3000) + _chat(gw, "second") + _chat(gw, "third"))
        assert wait_for(lambda: (metric(gw.url, "sentinel_requests_in_flight") or 0) >= 1, timeout=10)
        gw.server.server.should_exit = True  # SIGTERM, with the first request waiting for its answer
        [(head, answer)] = read_answers(sock, 1)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert head.startswith(b"HTTP/1.1 200") and orjson.loads(answer)["object"] == "chat.completion", head
    assert b"connection: close" in head.lower(), head
    assert rest == b"", rest[:300]  # closed after the answer: the queued requests never ran
    assert _statuses_recorded(gw) == [200]
