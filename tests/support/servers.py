"""Run an ASGI app under a real uvicorn server on a free loopback port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from sentinel.config import Settings
from sentinel.protocol import with_connection_limits
from sentinel.server import uvicorn_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerThread:
    """A uvicorn server in a thread; `url` is its base URL once `start()` returned."""

    def __init__(
        self, app: Any, *, port: int | None = None, graceful: int = 5, settings: Settings | None = None,
        **options: Any,
    ) -> None:
        """`settings`: serve Sentinel's app as `sentinel serve` does with them (`uvicorn_options`: no
        X-Forwarded-* trusted unless `forwarded_allow_ips` names proxies; the protocol and its connection
        limits); `options` are more uvicorn.Config arguments (`loop` "asyncio" unless given)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        served = uvicorn_options(settings) if settings is not None else {}
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=graceful,
            **{"http": "httptools", "loop": "asyncio", **served, **options},
        )
        if settings is not None:
            with_connection_limits(config, settings)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 20) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during startup")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def serving(app: Any, **kw: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, **kw).start()
    try:
        yield server
    finally:
        server.stop()
