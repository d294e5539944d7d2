"""A TCP proxy in front of a database that can stop forwarding: a database that accepts connections
(and keeps those it has) but never answers, as one does when its host hangs or a network drops
packets. It can also cut one connection at a command (`cut_at`): the command delivered or not, its
reply never comes back — the client's outcome unknown either way. And it can go down (`down()`): every
connection cut and new ones closed at once, as when the database is stopped, until `up()`."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["HungProxy", "hung_proxy"]


class HungProxy:
    """Forwards 127.0.0.1:`port` to `target` until `hang()`: then every byte either way is held
    (connections stay open, new ones are accepted) until `resume()` or `close()`. `target` may be
    changed: new connections go there, those made keep theirs (a failover behind one address)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._down = threading.Event()
        self._sockets: list[socket.socket] = []
        self.accepted = 0  # connections accepted so far
        self.cut = 0  # connections cut at a command (`cut_at`)
        self._cut_at: tuple[bytes, bool] | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def down(self) -> None:
        """The database is gone: every connection is cut, and new ones are closed once accepted."""
        self._down.set()
        with self._lock:
            for s in self._sockets:
                _end(s)
            self._sockets = []

    def up(self) -> None:
        self._down.clear()

    def cut_at(self, needle: bytes, *, delivered: bool) -> None:
        """Cut the connection whose client next sends bytes holding `needle`: those bytes reach the
        database (`delivered`: it runs the command, and its reply is dropped) or not; either way
        the client's connection is closed without an answer."""
        self._cut_at = (needle, delivered)

    def _keep(self, *socks: socket.socket) -> bool:
        """Keep `socks` to be cut by `down()`/`close()`; if either came first, end them now."""
        with self._lock:
            if self._closed.is_set() or self._down.is_set():
                _end(*socks)
                return False
            self._sockets.extend(socks)
            return True

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            if not self._keep(client, upstream):
                continue
            cutting: list[bool] = []  # this connection's: set once its reply is to be dropped
            for a, b, out in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, out, cutting), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, out: bool, cutting: list[bool]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(0.05):
                    if self._closed.is_set():
                        return
                cut = self._cut_at
                if out and cut is not None and cut[0] in data:
                    self._cut_at = None
                    self.cut += 1
                    if not cut[1]:
                        return  # not delivered: both sockets shut (finally)
                    cutting.append(True)
                elif not out and cutting:
                    return  # the reply to the command cut at: dropped, both sockets shut
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._flowing.set()
        self._listener.close()
        with self._lock:
            self._closed.set()
            for s in self._sockets:
                _end(s)
            self._sockets = []


def _end(*socks: socket.socket) -> None:
    """Shut down, then close: `close()` alone frees the descriptor but not a socket a pipe thread
    is blocked reading, so the connection stayed open — the database kept that session, and a
    transaction it had open held its locks until the test run ended."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


@contextmanager
def hung_proxy(url: str) -> Iterator[tuple[HungProxy, str]]:
    """A proxy in front of the PostgreSQL of asyncpg URL `url`, and `url` pointed at it."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    proxy = HungProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    try:
        yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()
