"""The HTTP transport, attacked on a raw socket: what a chunked body's trailer section carries, how
long it may be, transfer codings other than `chunked` alone, credentials, hosts or one-value relayed
headers sent twice, a Host
missing, and an answer without `100 Continue` to a client that waits for it."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import httpx
import orjson
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sentinel.protocol import GuardedHttpToolsProtocol
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows, openai_error
from tests.support.clock import FakeClock
from tests.support.raw_http import port_of, raw_exchange, rest_of

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def exchange(gw: Gateway, data: bytes, *, wait: float = 10.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or `wait` passes)."""
    return raw_exchange(gw, data, wait=wait)


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def body_of(answer: bytes) -> object:
    return orjson.loads(answer.partition(b"\r\n\r\n")[2])


def chunked_chat(headers: bytes, trailer: bytes, *, close: bool = True) -> bytes:
    """A chat request whose body is one chunk, then the last chunk with `trailer` (field lines)."""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n" + (b"Connection: close\r\n" if close else b"") + headers + b"\r\n"
            + f"{len(CHAT):x}".encode() + b"\r\n" + CHAT + b"\r\n0\r\n" + trailer + b"\r\n")


# --- trailer sections ---------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["Authorization: Bearer {key}", "x-api-key: {key}"])
def test_a_credential_in_a_trailer_section_is_not_a_header(gateway: Gateway, field: str) -> None:
    """uvicorn appended a trailer's fields to the request's headers (the list the app reads): a key
    sent after the body — where a proxy in front that checks or strips credentials does not look —
    authenticated the request. Trailer fields are dropped: the request has no credential."""
    trailer = field.format(key=gateway.key).encode() + b"\r\n"
    answer = exchange(gateway, chunked_chat(b"", trailer))
    assert statuses(answer) == [401], answer[:300]
    assert openai_error(body_of(answer))["code"] == "missing_api_key"
    assert ledger_rows(gateway.settings.database_url) == []


def test_a_forwarded_address_in_a_trailer_section_is_not_the_clients(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Behind a trusted proxy, an X-Forwarded-For in the trailer section came last, so it named the
    client: every request a new address, and the failed-authentication throttle (per address) never
    refused anyone. Only the header the proxy wrote counts."""
    gw = gateway_factory(auth_failures_per_minute=3, forwarded_allow_ips="127.0.0.1", window_clock=FakeClock())
    seen = []
    for i in range(5):
        answer = exchange(gw, chunked_chat(
            b"X-Forwarded-For: 203.0.113.7\r\nAuthorization: Bearer sk-sentinel-made-up-" + str(i).encode() + b"\r\n",
            b"X-Forwarded-For: 198.51.100." + str(i).encode() + b"\r\n",
        ))
        seen += statuses(answer)
    assert seen == [401, 401, 401, 429, 429]


def test_a_small_trailer_section_is_still_served(gateway: Gateway) -> None:
    answer = exchange(gateway, chunked_chat(b"Authorization: Bearer " + gateway.key.encode() + b"\r\n",
                                            b"X-Checksum: abc\r\n"))
    assert statuses(answer) == [200], answer[:300]
    assert body_of(answer)["object"] == "chat.completion"  # type: ignore[index]


@pytest.mark.parametrize("authenticated", [True, False], ids=["body-awaited", "answered-first"])
def test_a_trailer_line_that_never_ends_is_cut_off(gateway_factory: Callable[..., Gateway], authenticated: bool) -> None:
    """A trailer field that never ends is buffered by the parser, a copy of the whole at every read
    (memory, and the event loop's time, growing with what one connection without any key sends): it
    was kept until the body deadline — and, once answered, the drain's as long again. It is held to
    the header limit: 431, or, when the answer was already written, the connection is closed."""
    gw = gateway_factory(body_timeout_seconds=120, max_header_bytes=4096)
    auth = b"Authorization: Bearer " + gw.key.encode() + b"\r\n" if authenticated else b""
    # The last chunk, then a field that never ends; a connection kept alive (one that closes after its
    # answer was closed after the 401 before, too).
    head = chunked_chat(auth, b"", close=False)[: -len(b"\r\n")] + b"X-Trailer: "
    with socket.create_connection(("127.0.0.1", port_of(gw)), timeout=10) as sock:
        sock.sendall(head)
        try:
            for _ in range(64):  # 4 MiB: far more than one read
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # the server closed the connection: it stopped taking the line
        answer = rest_of(sock)
    assert not answer.endswith(b"<still open>"), answer[-300:]
    if authenticated and answer:
        assert statuses(answer) == [431], answer[:300]
    assert ledger_rows(gw.settings.database_url) == []


def test_too_many_trailer_fields_are_refused(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(max_headers=16)
    trailer = b"".join(b"X-T-" + str(i).encode() + b": 1\r\n" for i in range(40))
    answer = exchange(gw, chunked_chat(b"Authorization: Bearer " + gw.key.encode() + b"\r\n", trailer))
    assert statuses(answer) == [431], answer[:300]
    assert ledger_rows(gw.settings.database_url) == []


# --- a body that breaks after its answer --------------------------------------------------------
@pytest.mark.parametrize(("path", "authorized"), [
    (b"/v1/chat/completions", False), (b"/v1/no-such-endpoint", True),
], ids=["401", "404"])
def test_a_body_that_breaks_after_its_answer_gets_no_second_answer(
    gateway: Gateway, path: bytes, authorized: bool
) -> None:
    """A request answered before its body was in (401: no key; 404) keeps its connection while the
    rest arrives. A chunk that did not parse then was answered with a second answer, a 400: a client
    (or a proxy in front, reusing the connection for another client's request) read it as the answer
    to its next request. The connection is closed instead, with nothing more written."""
    auth = b"Authorization: Bearer " + gateway.key.encode() + b"\r\n" if authorized else b""
    with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=10) as sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
                     + b"Transfer-Encoding: chunked\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        sock.sendall(b"5\r\nhello\r\nzz\r\n")  # the rest of the body: a chunk size that is not hex
        after = body[length:] + rest_of(sock)
    assert statuses(head) == [401 if not authorized else 404], head
    assert after == b"", after[:300]
    assert ledger_rows(gateway.settings.database_url) == []


# --- a body of many tiny chunks -------------------------------------------------------------------
def test_a_body_of_tiny_chunks_is_handed_on_once_a_read(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn appended every chunk of a chunked body to the bytes held for the app (`body += chunk`,
    a copy of the whole each time): a read of 1-byte chunks (~43,000 in 256 KiB) cost the event loop
    a copy of up to 43 KB per byte, every request of the process waiting. The chunks of one read
    are joined once, then handed on; the body the app reads is the same."""
    handed: list[int] = []
    original = HttpToolsProtocol.on_body

    def counted(self: HttpToolsProtocol, body: bytes) -> None:
        if isinstance(self, GuardedHttpToolsProtocol):  # not the mock upstream's server
            handed.append(len(body))
        original(self, body)

    monkeypatch.setattr(HttpToolsProtocol, "on_body", counted)
    padded = CHAT[:-1] + b" " * 20_000 + b"}"  # still the same chat, in 20,000+ chunks of one byte
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer " + gateway.key.encode() + b"\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + b"".join(b"1\r\n" + padded[i:i + 1] + b"\r\n" for i in range(len(padded)))
               + b"0\r\n\r\n")
    answer = exchange(gateway, request)
    assert statuses(answer) == [200], answer[:300]
    assert body_of(answer)["object"] == "chat.completion"  # type: ignore[index]
    assert sum(handed) == len(padded)
    assert len(handed) < len(padded) // 100, len(handed)  # a few reads, not one call per chunk


# --- transfer codings ---------------------------------------------------------------------------
@pytest.mark.parametrize(("version", "coding"), [
    (b"HTTP/1.1", b"gzip, chunked"), (b"HTTP/1.1", b"deflate, chunked"), (b"HTTP/1.0", b"chunked"),
])
def test_a_body_framed_otherwise_than_by_chunked_alone_is_refused(gateway: Gateway, version: bytes, coding: bytes) -> None:
    """`Transfer-Encoding: gzip, chunked` was served as if the body had no gzip coding, and `chunked`
    from an HTTP/1.0 client (which an HTTP/1.0 proxy in front frames up to the close) was taken: a
    proxy and Sentinel would frame different bodies. 400, the connection closed, nothing after it read."""
    body = f"{len(CHAT):x}".encode() + b"\r\n" + CHAT + b"\r\n0\r\n\r\n"
    request = (b"POST /v1/chat/completions " + version + b"\r\nHost: x\r\nAuthorization: Bearer " + gateway.key.encode()
               + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: " + coding + b"\r\n\r\n" + body)
    answer = exchange(gateway, request + b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [400], answer[:300]
    assert b"connection: close" in answer.lower() and not answer.endswith(b"<still open>"), answer
    assert ledger_rows(gateway.settings.database_url) == []


# --- headers sent twice ---------------------------------------------------------------------------
@pytest.mark.parametrize("twice", ["Authorization", "x-api-key", "Host"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/native/v1/chat/completions",
                                  "/admin/api/users"])
def test_a_credential_or_host_sent_twice_is_refused(gateway: Gateway, twice: str, path: str) -> None:
    """Two Authorization lines (or x-api-key, or Host): Sentinel read the first, a proxy in front may
    read the last — the key a request was billed to was a guess. 400 `duplicate_header`, in the
    surface's shape, before any credential is looked at."""
    other = "sk-sentinel-someone-else"
    lines = {
        "Authorization": f"Authorization: Bearer {gateway.key}\r\nAuthorization: Bearer {other}\r\n",
        "x-api-key": f"x-api-key: {gateway.key}\r\nx-api-key: {other}\r\n",
        "Host": f"Host: evil.example\r\nAuthorization: Bearer {gateway.key}\r\n",
    }[twice]
    body = (b'{"model":"claude-3-5-haiku-20241022","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
            if path == "/v1/messages" else CHAT)
    request = (f"POST {path} HTTP/1.1\r\nHost: x\r\n{lines}Content-Type: application/json\r\n"
               f"anthropic-version: 2023-06-01\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    answer = exchange(gateway, request)
    assert statuses(answer) == [400], answer[:300]
    error = body_of(answer)
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error  # type: ignore[index]
        assert "more than one" in error["error"]["message"]  # type: ignore[index]
    else:
        assert openai_error(error)["code"] == "duplicate_header"
    assert ledger_rows(gateway.settings.database_url) == []


def upstream_count(gw: Gateway) -> int:
    """How many requests the (shared) mock upstream has received (not its history's length, which stops at 256)."""
    received: int = httpx.get(f"{gw.settings.anthropic_api_url}/__mock/health", timeout=5).json()["received"]
    return received


MESSAGE = {"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("lines", [
    (("content-type", "application/json"), ("content-type", "text/plain")),
    (("openai-beta", "assistants=v2"), ("openai-beta", "assistants=v1")),
    (("range", "bytes=0-1"), ("range", "bytes=5-9")),
    (("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"), ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")),
], ids=lambda lines: lines[0][0])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_relayed_one_value_header_sent_twice_is_refused(
    gateway: Gateway, path: str, lines: tuple[tuple[str, str], ...],
) -> None:
    """A relayed header read as one value on two lines was joined (`application/json, text/plain`) and
    sent on: the provider read another value than the one Sentinel read (the first). 400
    `duplicate_header` in the surface's shape, nothing sent upstream, nothing charged."""
    sent = upstream_count(gateway)
    body = orjson.dumps(MESSAGE if path == "/v1/messages" else orjson.loads(CHAT))
    r = httpx.post(gateway.url + path, content=body, timeout=10,
                   headers=[("authorization", f"Bearer {gateway.key}"), *lines])
    assert r.status_code == 400, r.text
    message = f"The request has more than one {lines[0][0]} header: send exactly one"
    if path == "/v1/messages":
        assert r.json()["type"] == "error"
        assert r.json()["error"] == {"type": "invalid_request_error", "message": message}
    else:
        assert openai_error(r.json())["code"] == "duplicate_header" and openai_error(r.json())["message"] == message
    assert upstream_count(gateway) == sent
    assert ledger_rows(gateway.settings.database_url) == []


def test_a_relayed_list_header_sent_twice_goes_joined(gateway: Gateway) -> None:
    """A list (`anthropic-beta`, `accept`) on two lines is one list: it goes on, joined, as HTTP reads it."""
    r = httpx.post(gateway.url + "/v1/messages", content=orjson.dumps(MESSAGE), timeout=10, headers=[
        ("x-api-key", gateway.key), ("content-type", "application/json"),
        ("anthropic-beta", "beta-one"), ("anthropic-beta", "beta-two"),
    ])
    assert r.status_code == 200, r.text
    seen = httpx.get(f"{gateway.settings.anthropic_api_url}/__mock/requests", params={"path": "/v1/messages"},
                     timeout=5).json()["data"][-1]
    assert {k.lower(): v for k, v in seen["headers"].items()}["anthropic-beta"] == "beta-one, beta-two"


def test_content_length_sent_twice_is_the_parsers_400(gateway: Gateway) -> None:
    """`content-length` is not relayed (aiohttp sets its own) and two of them never reach Sentinel: the
    HTTP parser answers 400 first."""
    answer = exchange(gateway, (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(CHAT)}\r\nContent-Length: 2\r\n"
        "Connection: close\r\n\r\n").encode() + CHAT)
    assert statuses(answer) == [400], answer[:300]
    assert ledger_rows(gateway.settings.database_url) == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/native/v1/chat/completions"])
def test_authorization_and_x_api_key_naming_different_credentials_are_refused(gateway: Gateway, path: str) -> None:
    """Two credentials on one request (a proxy in front may check one while Sentinel used the other):
    401 `conflicting_credentials` in the surface's shape on every user surface, whichever is valid;
    the same token in both is one credential."""
    other = "sk-sentinel-someone-else"
    body = (b'{"model":"claude-3-5-haiku-20241022","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
            if path == "/v1/messages" else CHAT)

    def send(authorization: str, api_key: str) -> bytes:
        return exchange(gateway, (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {authorization}\r\nx-api-key: {api_key}\r\n"
            f"Content-Type: application/json\r\nanthropic-version: 2023-06-01\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body)

    for authorization, api_key in ((gateway.key, other), (other, gateway.key)):
        answer = send(authorization, api_key)
        assert statuses(answer) == [401], answer[:300]
        error = body_of(answer)
        if path == "/v1/messages":
            assert error["error"]["type"] == "authentication_error", error  # type: ignore[index]
        else:
            assert openai_error(error)["code"] == "conflicting_credentials"
    assert ledger_rows(gateway.settings.database_url) == []
    same = send(gateway.key, gateway.key)  # authenticated: past the gate (the native body is not its shape)
    assert statuses(same) == ([400] if path.startswith("/native/") else [200]), same[:300]
    assert b"conflicting_credentials" not in same


# --- Expect: 100-continue -----------------------------------------------------------------------
def expecting(gw: Gateway, *, authorized: bool = False, length: int = len(CHAT)) -> bytes:
    """The head of a chat request that waits for `100 Continue` before its body (of `length` bytes)."""
    auth = b"Authorization: Bearer " + gw.key.encode() + b"\r\n" if authorized else b""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
            + b"Expect: 100-continue\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n")


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One answer's head and body (by its Content-Length), read from `sock`, skipping `100 Continue`."""
    received = b""
    while True:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        head, _, received = received.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 100 "):
            break
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(received) < length:
        received += sock.recv(65536)
    assert len(received) == length, received[length:]
    return head, received


def test_an_answer_without_continue_closes_a_connection_whose_body_never_comes(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A request that waits for `100 Continue` and is answered without it (401, before its body) may
    have its body skipped (RFC 9110 §10.1.1): the client's next request on that connection was read as
    the body, unanswered until the body deadline. The answer says `Connection: close`, and the
    connection ends with it."""
    gw = gateway_factory(body_timeout_seconds=120)
    with socket.create_connection(("127.0.0.1", port_of(gw)), timeout=8) as sock:
        sock.sendall(expecting(gw))
        head, body = read_answer(sock)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # the body skipped: the next request
        after = rest_of(sock)
    assert statuses(head) == [401] and b"connection: close" in head.lower(), head
    assert openai_error(orjson.loads(body))["code"] == "missing_api_key"
    assert after == b"", after[:300]  # closed, nothing read as a request
    assert ledger_rows(gw.settings.database_url) == []


def test_a_body_sent_after_an_answer_without_continue_is_read_before_the_close(gateway: Gateway) -> None:
    """The client that sends its body anyway (curl does after 1 s) has it read and dropped, then the
    connection closes: closed at once, the body's bytes arriving at a closed socket reset the
    connection, which can lose the answer, and the client's upload fails."""
    big = 4 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=10) as sock:
        sock.sendall(expecting(gateway, length=big))
        head, _ = read_answer(sock)
        sock.sendall(b" " * big)  # a reset connection fails this
        after = rest_of(sock)
    assert statuses(head) in ([401], [413]) and b"connection: close" in head.lower(), head
    assert after == b"", after[:300]


def test_a_body_that_came_with_its_head_keeps_the_connection(gateway: Gateway) -> None:
    """A client that did not wait for `100 Continue` (its body came with its head) is answered as
    before, keep-alive included; so is one whose body the app asked for (`100 Continue` sent)."""
    with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=10) as sock:
        sock.sendall(expecting(gateway) + CHAT)
        first, _ = read_answer(sock)
        sock.sendall(expecting(gateway, authorized=True))
        continued = sock.recv(65536)
        sock.sendall(CHAT)
        second, body = read_answer(sock)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        last, _ = read_answer(sock)
    assert statuses(first) == [401] and b"connection: close" not in first.lower(), first
    assert continued.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), continued
    assert statuses(second) == [200], second
    assert orjson.loads(body)["object"] == "chat.completion"
    assert statuses(last) == [200], last


# --- Host -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/health/live"])
def test_an_http_1_1_request_without_host_is_refused(gateway: Gateway, path: str) -> None:
    """RFC 9112 §3.2: an HTTP/1.1 request without Host is a bad request; the parser took it. 400
    `missing_host` in the surface's shape, before any credential is looked at."""
    request = (f"POST {path} HTTP/1.1\r\nAuthorization: Bearer {gateway.key}\r\nx-api-key: {gateway.key}\r\n"
               f"Content-Type: application/json\r\nanthropic-version: 2023-06-01\r\nContent-Length: {len(CHAT)}\r\n"
               "Connection: close\r\n\r\n").encode() + CHAT
    answer = exchange(gateway, request)
    assert statuses(answer) == [400], answer[:300]
    error = body_of(answer)
    if path == "/v1/messages":
        assert error["error"]["type"] == "invalid_request_error", error  # type: ignore[index]
        assert "Host" in error["error"]["message"]  # type: ignore[index]
    else:
        assert openai_error(error)["code"] == "missing_host"
    assert ledger_rows(gateway.settings.database_url) == []


def test_an_http_1_0_request_without_host_is_served(gateway: Gateway) -> None:
    answer = exchange(gateway, b"GET /health/live HTTP/1.0\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 200 ", answer), answer[:300]


@pytest.mark.parametrize("line", [b"GET /health/live HTTP/2.0", b"GET /health/live"])
def test_a_request_line_of_another_http_version_is_refused(gateway: Gateway, line: bytes) -> None:
    """The parser took `HTTP/2.0` (served with HTTP/1.0's keep-alive, yet `chunked` and no `Host` taken
    as HTTP/1.1's) and a line without any version (0.9): 400, and the connection closes."""
    answer = raw_exchange(gateway, line + b"\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [400] and not answer.endswith(b"<still open>"), answer[:300]
