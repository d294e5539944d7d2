"""Run an ASGI app under a real uvicorn server on a free loopback port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerThread:
    """A uvicorn server in a thread; `url` is its base URL once `start()` returned."""

    def __init__(
        self, app: Any, *, port: int | None = None, graceful: int = 5, limits: Any = None, **options: Any
    ) -> None:
        """`options` are more uvicorn.Config arguments (`loop` "asyncio" unless given), `limits`
        Sentinel's ConnectionLimits."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=graceful,
            **{"http": "httptools", "loop": "asyncio", **options},
        )
        if limits is not None:
            config.sentinel_limits = limits  # type: ignore[attr-defined]
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
