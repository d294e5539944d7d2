"""Real processes for end-to-end tests: Sentinel, the mock upstream and a dedicated redis-server.

Each helper starts its process with an explicit environment (nothing leaks in from the runner's
shell or a `.env` file: the working directory is a temporary one), writes its output to a log file
and waits, with a deadline, until the process answers. `kill9()` is the crash; `stop()` is the
polite SIGTERM. Every helper is also a context manager, and `stop()` is safe to call twice.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
# Only what a process needs to run; everything Sentinel reads comes from the caller's `env`.
_PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_until(ready: Callable[[], bool], *, timeout: float, what: str, alive: Callable[[], bool]) -> None:
    """Poll `ready` every 50 ms until it holds; raise once `timeout` passed or `alive` says it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise RuntimeError(f"{what} exited during start-up")
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f}s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ManagedProcess:
    """One child process with a log file; subclasses say how to launch it and when it is ready."""

    name = "process"
    start_timeout = 30.0

    def __init__(self, log_dir: Path, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_dir = log_dir
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    # --- to override ---------------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return base_env()

    def is_ready(self) -> bool:
        return port_open(self.port)

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._log.write(f"\n===== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            cwd=self.log_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.starts += 1
        try:
            wait_until(self.is_ready, timeout=self.start_timeout, what=self.name, alive=lambda: self.running)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; log {self.log_path}:\n{self.log_tail()}") from None
        return self

    def kill9(self) -> None:
        """The crash: SIGKILL, no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap(5)

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (a hung server)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process could not act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
        self._reap(5)

    def _reap(self, timeout: float) -> None:
        if self.proc is not None:
            self.proc.wait(timeout)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


class SentinelProcess(ManagedProcess):
    """`python -m sentinel serve` on a free loopback port, configured only by `env`."""

    name = "sentinel"

    def __init__(self, log_dir: Path, env: Mapping[str, str], *, port: int | None = None) -> None:
        super().__init__(log_dir, port=port)
        self.env = dict(env)
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        return base_env(self.env)

    def is_ready(self) -> bool:
        try:
            return httpx.get(self.url + "/health/live", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def restart(self, **changes: str) -> Self:
        """Start again on the same port (after `kill9`/`stop`), with `changes` applied to the env."""
        self.env.update(changes)
        return self.start()


class MockUpstreamProcess(ManagedProcess):
    """`python -m sentinel mock-upstream`: the OpenAI/Anthropic mock in its own process."""

    name = "mock-upstream"

    def __init__(self, log_dir: Path, *, port: int | None = None, api_key: str | None = None) -> None:
        super().__init__(log_dir, port=port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key

    def command(self) -> list[str]:
        key = ["--api-key", self.api_key] if self.api_key is not None else []
        return [
            sys.executable,
            "-m",
            "sentinel",
            "mock-upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *key,
        ]

    def stop(self, timeout: float = 15) -> None:
        # The mock plays slow streams to their end even after the reader left; a graceful stop
        # would wait for them, and nothing of the mock's needs a clean shutdown.
        self.kill9()


class RedisServerProcess(ManagedProcess):
    """A private redis-server that a test may kill and start again on the same port.

    `durable=True` turns on the append-only file with an fsync per write, so a `kill9()` loses
    nothing that Redis acknowledged (the usage stream survives a Redis crash, as in production).
    """

    name = "redis"
    start_timeout = 10.0

    def __init__(
        self, log_dir: Path, executable: str, *, port: int | None = None, durable: bool = False
    ) -> None:
        super().__init__(log_dir, port=port)
        self.executable = executable
        self.durable = durable
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        )
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.log_dir),
            "--appendfilename", f"redis-{self.port}.aof",
            "--appenddirname", f"aof-{self.port}",
            *persistence,
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


# --- several worker processes on one port (`sentinel serve --workers N`) --------------------------
def worker_pids(parent_pid: int) -> list[int]:
    """The multiprocessing workers `parent_pid` spawned (its resource tracker excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if ppid == parent_pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _tcp_inodes(local_port: int, remote_port: int) -> set[str]:
    """Socket inodes of the TCP connections local_port <-> remote_port (from /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                inodes.add(f"socket:[{inode}]")
    return inodes


def connection_owners(server_port: int, client_ports: list[int], pids: list[int]) -> dict[int, int]:
    """Which of `pids` holds the server end of each client connection: {client port: pid}.

    Read from /proc (Linux), so it names the process that accepted the connection without the
    server telling anything. A connection not yet accepted (or already closed) has no owner.
    """
    wanted = {inode: port for port in client_ports for inode in _tcp_inodes(server_port, port)}
    owners: dict[int, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                owners[wanted[target]] = pid
    return owners


class SentinelWorkersProcess(SentinelProcess):
    """`sentinel serve --workers N`: `pid` is the supervising parent, `worker_pids()` its workers.

    Ready once every worker answered `/health/live` itself: probes go out on a few connections at
    a time, and /proc tells which worker accepted each one (a worker still starting accepts none).
    """

    name = "sentinel-workers"

    def __init__(self, log_dir: Path, env: Mapping[str, str], *, workers: int, port: int | None = None) -> None:
        super().__init__(log_dir, env, port=port)
        self.workers = workers
        self._answered: set[int] = set()

    def command(self) -> list[str]:
        return [*super().command(), "--workers", str(self.workers)]

    def worker_pids(self) -> list[int]:
        return worker_pids(self.pid)

    def start(self) -> Self:
        self._answered = set()
        return super().start()

    def is_ready(self) -> bool:
        workers = self.worker_pids() if self.running else []
        if len(workers) < self.workers:
            return False
        probes: list[socket.socket] = []
        ports: list[int] = []
        try:
            for _ in range(4):
                probes.append(socket.create_connection(("127.0.0.1", self.port), timeout=1))
            for probe in probes:
                probe.sendall(b"GET /health/live HTTP/1.1\r\nHost: sentinel\r\n\r\n")
            answers = [probe.recv(256) for probe in probes]
            ports = [probe.getsockname()[1] for probe in probes]
            owners = connection_owners(self.port, ports, workers)
        except OSError:
            return False
        finally:
            for probe in probes:
                probe.close()
        for probe_port, answer in zip(ports, answers, strict=True):
            if answer.startswith(b"HTTP/1.1 200") and probe_port in owners:
                self._answered.add(owners[probe_port])
        return set(workers) <= self._answered


def pid_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def command_line(pid: int) -> bytes:
    """The process's argv as the kernel shows it to everyone (NUL-separated)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes()
