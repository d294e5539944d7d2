"""Running the mock upstream: in the current loop, blocking (the CLI), or in a background thread.

All three use uvicorn with httptools (and uvloop where uvicorn owns the loop), no access log, and
`install_cut_log_filter` so deliberate mid-stream cuts do not log errors.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from sentinel.mock.app import create_mock_app
from sentinel.mock.asgi import install_cut_log_filter
from sentinel.mock.text import EMBEDDED_ANSWER_CHARS


def _config(
    host: str, port: int, latency_ms: float, log_level: str, api_key: str | None, *, embedded: bool = False
) -> uvicorn.Config:
    install_cut_log_filter()
    app = (create_mock_app(latency_ms, api_key=api_key, history=0, inspect=False, answer_chars=EMBEDDED_ANSWER_CHARS)
           if embedded else create_mock_app(latency_ms, api_key=api_key))
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        timeout_keep_alive=30,
        backlog=4096,
    )


async def serve_mock(
    host: str, port: int, latency_ms: float = 0.0, *, log_level: str = "warning", api_key: str | None = None
) -> None:
    """Serve the mock on host:port in the running event loop until cancelled or signalled."""
    await uvicorn.Server(_config(host, port, latency_ms, log_level, api_key)).serve()


def run_mock(
    host: str, port: int, latency_ms: float = 0.0, *, log_level: str = "info", api_key: str | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve the mock until Ctrl-C, uvicorn owning a uvloop event loop (the CLI entry); on `sockets`,
    bound to host:port, when given."""
    uvicorn.Server(_config(host, port, latency_ms, log_level, api_key)).run(sockets=sockets)


def start_mock_in_thread(
    latency_ms: float = 0.0,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
    api_key: str | None = None,
    embedded: bool = False,
) -> tuple[str, Callable[[], None]]:
    """Start the mock in a daemon thread on `port` (0: a free port chosen by the OS).

    `api_key`: when set, the only key the mock accepts (see `create_mock_app`). `embedded`: the
    mock `sentinel serve` runs, without history or `/__mock/*` routes (every user's prompts pass it),
    its answers to a request at most `EMBEDDED_ANSWER_CHARS` characters.

    Returns ``(root_url, stop)``: root_url is ``http://HOST:PORT`` (OpenAI base = root_url + "/v1");
    ``stop()`` shuts the server down and joins the thread (idempotent).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = _config(host, port, latency_ms, "warning", api_key, embedded=embedded)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"mock-upstream-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"mock upstream did not start on {host}:{port}")
        time.sleep(0.005)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://{host}:{port}", stop


@contextmanager
def running_mock(
    latency_ms: float = 0.0, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None
) -> Iterator[str]:
    """Context manager around `start_mock_in_thread`, yielding the root URL."""
    url, stop = start_mock_in_thread(latency_ms, host, port, api_key=api_key)
    try:
        yield url
    finally:
        stop()
