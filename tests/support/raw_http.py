"""HTTP/1.1 over a bare socket, for tests of what the server does with bytes no client library sends."""

from __future__ import annotations

import socket

from tests.api.conftest import Gateway


def port_of(gw: Gateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def rest_of(sock: socket.socket) -> bytes:
    """What (else) arrives on `sock` until the server closes it (a reset is a close; a wait is "<still open>")."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        received += b"<still open>"
    except OSError:
        pass
    return received


def raw_exchange(gw: Gateway, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or `wait` passes)."""
    with socket.create_connection(("127.0.0.1", port_of(gw)), timeout=wait) as sock:
        sock.sendall(data)
        return rest_of(sock)
