"""Running Sentinel under uvicorn (uvloop + httptools): one process, or N worker processes on one port.

With `workers > 1`, uvicorn's own supervisor (`uvicorn.supervisors.Multiprocess`) binds the port
once in this (parent) process and hands the listening socket to N spawned workers, which accept
from it in turn: a busy worker accepts fewer new connections. The parent restarts a worker that
dies (a replacement that cannot start is tried again later: `_supervisor`), replaces workers one by one on SIGHUP and, on SIGTERM/SIGINT, stops every worker gracefully
(in-flight requests finish, each worker's usage deliverer flushes) before it exits 0.

The Settings object is built once, here; each worker receives it pickled through the
multiprocessing pipe (`WorkerApp`), never on a command line or in a log, and never re-reads the
environment or a `.env` file. The workers' metrics meet in one directory (`PROMETHEUS_MULTIPROC_DIR`,
see `observability/metrics.py`): the operator's, emptied at start, or a temporary one this process
creates before the workers start and removes when they have stopped.

Every connection is a file descriptor: at start the soft limit on open files (often 1,024, when a
connection without any key holds one until the header deadline) is raised to the hard limit, which
the workers inherit (`raise_open_files_limit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from sentinel.backoff import Backoff
from sentinel.config import Settings
from sentinel.observability.logging import configure_logging
from sentinel.protocol import uvicorn_protocol_options, with_connection_limits

if TYPE_CHECKING:
    from sentinel.app import SentinelApp

log = logging.getLogger("sentinel.server")

DEMO_USER = "demo-user"
DEMO_KEY_NAME = "demo (sentinel serve)"
STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: a worker could not start (app, DB, bind)
LISTEN_BACKLOG = 2048  # uvicorn.Config's default backlog, which its server listens with again
_PR_SET_PDEATHSIG = 1


def demo_mode(settings: Settings) -> bool:
    """Whether `serve` is a demo: nothing configured — the built-in mock upstream, no providers file,
    the in-memory store, a SQLite ledger, built-in governance. Only then is a demo key made and
    printed: never in a database a real deployment uses, where it would be a working key in the logs."""
    from sentinel.config import GovernanceKind

    return (
        settings.use_embedded_mock and settings.providers_file is None and not settings.redis_url
        and settings.governance is GovernanceKind.builtin and settings.database_url.startswith("sqlite")
    )


async def _demo_keys(settings: Settings, *, mint: bool) -> str | None:
    """Revoke every earlier demo key; with `mint` (a demo start), make a fresh one and return it.
    A start that is not a demo revokes them all: a demo key must not outlive the demo (reaching the
    providers configured since)."""
    from sentinel.db.engine import create_engine, migrate, session_factory
    from sentinel.governance.keys import KeyService

    engine = create_engine(settings.database_url, timeout=settings.database_timeout_seconds)
    try:
        await migrate(engine, connect_timeout=settings.database_timeout_seconds)
        keys = KeyService(session_factory(engine))
        revoked = 0
        for old in await keys.list_keys(DEMO_USER):
            if old.name == DEMO_KEY_NAME and old.revoked_at is None:
                await keys.revoke(old.id)
                revoked += 1
        if not mint:
            if revoked:
                log.warning("revoked %d demo key(s) left from a demo start: this start is not a demo", revoked)
            return None
        _, key = await keys.create_key(DEMO_USER, DEMO_KEY_NAME)
        return key
    finally:
        await engine.dispose()


# Tried in turn when the hard limit on open files is "unlimited", which no kernel takes as a soft
# limit: Linux's default ceiling (fs.nr_open), then macOS's (OPEN_MAX).
_UNLIMITED_OPEN_FILES = (1_048_576, 10_240)


def raise_open_files_limit(
    getrlimit: Callable[[int], tuple[int, int]] | None = None,
    setrlimit: Callable[[int, tuple[int, int]], None] | None = None,
) -> int | None:
    """Raise this process's soft limit on open files (so on connections) to its hard limit and
    return the soft limit now in force (-1: unlimited); None where there is no such limit (Windows).
    A limit that cannot be raised is kept, with a warning: the server still starts."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    get, set_ = getrlimit or resource.getrlimit, setrlimit or resource.setrlimit
    unlimited = resource.RLIM_INFINITY
    soft, hard = get(resource.RLIMIT_NOFILE)
    targets = [] if soft == unlimited else [
        target for target in (_UNLIMITED_OPEN_FILES if hard == unlimited else (hard,)) if target > soft
    ]
    if not targets:
        log.info("open files limit: %s (each connection takes one)", "unlimited" if soft == unlimited else soft)
        return soft
    for target in targets:
        try:
            set_(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        log.info("open files limit raised from %d to %d (each connection takes one)", soft, target)
        return target
    log.warning("could not raise the open files limit from %d (hard limit: %s): about that many connections "
                "at once at most", soft, "unlimited" if hard == unlimited else hard)
    return soft


def workers_refused(settings: Settings, workers: int) -> str | None:
    """Why `workers` processes cannot serve with `settings` (one line), or None when they can."""
    if workers > 1 and not settings.redis_url:
        return (
            f"{workers} workers (--workers or SENTINEL_WORKERS; auto is one per CPU) need REDIS_URL: with the "
            "in-memory store every worker would keep its own quotas, sessions and caches (set REDIS_URL, or run "
            "one worker)"
        )
    return None


class WorkerApp:
    """The app factory a worker process calls: `Settings` travel pickled inside this object.

    Unpickling a pydantic model restores its fields without validation or environment reads, so
    every worker runs with exactly the parent's configuration (the embedded mock's URL included).
    """

    def __init__(self, settings: Settings, parent_pid: int) -> None:
        self.settings = settings
        self.parent_pid = parent_pid

    def __call__(self) -> SentinelApp:
        from sentinel.app import create_app

        configure_logging(self.settings.log_level)  # a spawned worker starts with bare logging
        _exit_with_parent(self.parent_pid)
        return create_app(self.settings, owns_process=True)


def _exit_with_parent(parent_pid: int) -> None:
    """Linux: ask for SIGTERM (a graceful stop) when the supervising parent dies, even by SIGKILL,
    so no orphaned worker keeps serving on the port."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """The sockets `serve` listens on, bound (not yet listening): one per address `host` resolves to
    (as asyncio's `create_server` binds them), SO_REUSEADDR; an IPv6 one is IPv6-only only beside an
    IPv4 one (`::` alone keeps the system's default: on Linux, IPv4 clients too, as uvicorn's
    `--workers` socket had). Raises OSError (`socket.gaierror` for a name that does not resolve)."""
    found = list(dict.fromkeys(
        socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    ))
    both = len({family for family, *_ in found}) > 1
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in found:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and both:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.set_inheritable(True)  # handed to the workers
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def cannot_listen(host: str, port: int, exc: OSError, settings: str | None = None) -> str:
    """The line saying why `bind_sockets(host, port)` failed (`settings`: the variables naming them)."""
    reason = exc.strerror or type(exc).__name__
    shown = host if host.isprintable() else repr(host)
    named = "--host/--port" + (f", {settings}" if settings else "")
    return f"cannot listen on {shown}:{port} ({named}): {reason[:1].lower()}{reason[1:]}"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.Config keyword arguments that shape every request as `serve` serves it: X-Forwarded-*
    trusted only from the proxies the operator names (else the socket's address and scheme), no
    `Server` header, Sentinel's protocol and keep-alive limit (pair them with `with_connection_limits`).
    The tests' gateways are served with these too: uvicorn's defaults trust X-Forwarded-* from loopback."""
    return {
        "server_header": False,
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        **uvicorn_protocol_options(settings),
    }


def _config(app: Callable[..., Any], settings: Settings, workers: int) -> uvicorn.Config:
    return with_connection_limits(uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_seconds),  # 0.5 s is not 0
        workers=workers,
        factory=workers > 1,
        **uvicorn_options(settings),
    ), settings)


def _run_workers(config: uvicorn.Config, sockets: list[socket.socket]) -> int:
    """Supervise `config.workers` processes on `sockets` until SIGTERM/SIGINT; 0 after a clean stop."""
    supervisor = _supervisor(config, sockets)
    supervisor.run()
    if supervisor.startup_failed:
        log.error("a worker failed to start; stopped all workers", extra={"worker_pids": supervisor.startup_failed})
        return 1
    return 0


class _StopAsked(threading.Event):
    """What a supervisor's restart (SIGHUP) waits under: set once the supervisor is stopping, or a
    SIGTERM/SIGINT is queued for it. Its signal handlers only queue a signal, which the supervisor
    acts on between checks, so a stop asked during a restart waited for the whole restart: for each
    slot in turn, a new worker's start (up to START_GRACE_SECONDS) — minutes with many workers,
    past a service manager's stop timeout (systemd's 90 s, then SIGKILL and no drain)."""

    def __init__(self, supervisor: Any) -> None:
        super().__init__()
        self._supervisor = supervisor

    def is_set(self) -> bool:
        stops = (signal.SIGTERM, signal.SIGINT)
        return self._supervisor.should_exit.is_set() or any(sig in stops for sig in self._supervisor.signal_queue)


REPLACEMENT_BACKOFF = Backoff(base=1.0, cap=30.0)
"""Between tries to start a replacement worker that could not start (the database is down)."""
START_GRACE_SECONDS = 30.0
"""How long a new worker may take to answer the parent's ping (it answers once Python started and
imported what its unpickled settings need)."""


def _supervisor(
    config: uvicorn.Config, sockets: list[socket.socket], *, clock: Callable[[], float] = time.monotonic
) -> Any:
    """uvicorn's `Multiprocess` supervisor, but only a worker of the first start that cannot start
    stops everything (the app, the database or the settings are broken: every start fails alike).
    A replacement of a worker that died which cannot start — the database down at that moment —
    is tried again (1 s, doubling to 30 s) while the other workers serve on: uvicorn stopped every
    worker then, so one crash during a database outage took the whole host down.

    A worker is asked whether it is alive (a ping it must answer within 5 s, or it is killed as
    hung) only once START_GRACE_SECONDS have passed since it was started: before, only its exit
    counts. It answers from a thread it starts once spawned — after a new interpreter has started
    and imported Sentinel to unpickle its settings, over 5 s on a busy host — and uvicorn pinged
    it from the first 0.5 s: it killed such a worker as hung, and its replacement alike."""
    from uvicorn.supervisors.multiprocess import Multiprocess, Process

    class Supervisor(Multiprocess):
        def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
            super().__init__(config, sockets)
            self.startup_failed: list[int | None] = []  # the first start's workers that could not start
            self._first: set[object] = set()  # the first start's processes (kept: an id() is reused)
            self._failures: dict[int, int] = {}  # slot -> its replacements that failed to start in a row
            self._early: dict[int, int] = {}  # slot -> its workers that died within their grace, in a row
            self._retry_at: dict[int, float] = {}  # slot -> when to try its replacement again
            self._started: dict[object, float] = {}  # a live process -> when it was started

        def init_processes(self) -> None:
            super().init_processes()
            self._first = set(self.processes)
            self._started = dict.fromkeys(self._first, clock())

        def keep_subprocess_alive(self) -> None:
            if self.should_exit.is_set():
                return
            for slot, process in enumerate(self.processes):
                if slot in self._retry_at:
                    if clock() >= self._retry_at[slot]:
                        del self._retry_at[slot]
                        self._replace(slot)
                    continue
                running = process.exitcode is None
                if running and clock() - self._started.get(process, -math.inf) < START_GRACE_SECONDS:
                    continue  # still starting: it may not answer a ping yet
                if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                    continue
                hung = process.exitcode is None
                process.kill()
                process.join()
                started = self._started.pop(process, -math.inf)
                if self.should_exit.is_set():
                    return
                if hung or process.exitcode != STARTUP_FAILURE:
                    self._failures.pop(slot, None)
                    # Died before its grace was over: in a row, a crash loop (OOM-killed as it starts)
                    # that replaced at every check spawned a worker twice a second for ever.
                    early = self._early[slot] = self._early.get(slot, 0) + 1 if (
                        not hung and clock() - started < START_GRACE_SECONDS) else 0
                    delay = REPLACEMENT_BACKOFF.delay(early - 1) if early > 1 else 0.0
                    log.warning(
                        "worker %s %s; starting another" + (f" in {delay:.1f} s" if delay else ""), process.pid,
                        "did not answer the parent's ping: killed" if hung else "died",
                        extra={"exit_code": None if hung else process.exitcode, "early_deaths": early},
                    )  # fmt: skip
                    if delay:
                        self._retry_at[slot] = clock() + delay
                    else:
                        self._replace(slot)
                elif process in self._first:
                    self.startup_failed.append(process.pid)
                    self.should_exit.set()
                    return
                else:
                    failures = self._failures[slot] = self._failures.get(slot, 0) + 1
                    delay = REPLACEMENT_BACKOFF.delay(failures)
                    log.error(
                        "a replacement worker failed to start; trying again in %.1f s, the other workers serve on",
                        delay, extra={"worker_pid": process.pid, "failures": failures},
                    )  # fmt: skip
                    self._retry_at[slot] = clock() + delay

        def restart_all(self) -> None:
            """SIGHUP: uvicorn's — each slot's new worker brought into service before its old one is
            retired, the restart given up if one is not ready in time — but a new worker is given
            START_GRACE_SECONDS to be ready, as every new worker here (uvicorn's 5 s gave up the
            restart on a busy host), and a slot waiting to retry a replacement that could not start
            is served by it: its retry is dropped (it started another worker over the new one, which
            ran on unsupervised). A SIGTERM or SIGINT meanwhile ends it at once (the new worker killed,
            the old ones kept): only queued until the restart returned, it waited for every slot's."""
            stopping = _StopAsked(self)
            for slot, old in enumerate(self.processes):
                if stopping.is_set():
                    return
                process = Process(self.config, self.sockets)
                process.start()
                self._started[process] = clock()
                if not process.wait_until_ready(START_GRACE_SECONDS, stopping):
                    process.kill()
                    process.join()
                    self._started.pop(process, None)
                    if not stopping.is_set():
                        log.error("new worker %s not ready in time; keeping worker %s and ending the restart",
                                  process.pid, old.pid)
                    return
                old.terminate()
                old.join()
                self._started.pop(old, None)
                self._retry_at.pop(slot, None)
                self._failures.pop(slot, None)
                self._early.pop(slot, None)
                self.processes[slot] = process

        def handle_ttin(self) -> None:
            """SIGTTIN: uvicorn's (one worker more), the new worker given its START_GRACE_SECONDS."""
            super().handle_ttin()
            self._started[self.processes[-1]] = clock()

        def handle_ttou(self) -> None:
            """SIGTTOU: uvicorn's (the last slot's worker retired), and what is kept of that slot with
            it: its pending retry, left behind, started a worker over the one a later SIGTTIN put in
            that slot, which then ran on unsupervised."""
            slot, last = len(self.processes) - 1, self.processes[-1] if self.processes else None
            super().handle_ttou()
            if last is not None and len(self.processes) == slot:
                self._started.pop(last, None)
                self._retry_at.pop(slot, None)
                self._failures.pop(slot, None)
                self._early.pop(slot, None)

        def _replace(self, slot: int) -> None:
            process = Process(self.config, self.sockets)
            process.start()
            self.processes[slot] = process
            self._started[process] = clock()

    return Supervisor(config, sockets)


@contextlib.contextmanager
def _metrics_dir(workers: int) -> Iterator[None]:
    """With several workers, a directory where they all keep their metrics (see the module
    docstring); with one, the operator's `PROMETHEUS_MULTIPROC_DIR`, if set, is emptied too."""
    from sentinel.observability.metrics import MULTIPROC_ENV, prepare_shared_dir

    given = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not given:
        yield
        return
    path = given or tempfile.mkdtemp(prefix="sentinel-metrics-")
    prepare_shared_dir(path)
    os.environ[MULTIPROC_ENV] = path  # inherited by the workers (spawned after this)
    try:
        yield
    finally:
        if not given:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


def local_url(settings: Settings) -> str:
    """The URL a client on this host uses (a wildcard bind is reached on the loopback address)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def listening_line(settings: Settings) -> str:
    """The start-up line: where the server is reachable, saying so when that is every interface."""
    if settings.host in ("0.0.0.0", "::"):
        return (f"Sentinel listening on {settings.host}:{settings.port} (every interface: reachable from other "
                f"hosts; SENTINEL_HOST=127.0.0.1 for this host only) — {local_url(settings)}")
    return f"Sentinel listening on {local_url(settings)}"


def serve(settings: Settings, workers: int = 1) -> int:
    """Run the gateway until SIGTERM/SIGINT; in-flight requests drain before pools close.

    Returns the process exit status: 2 when the providers file is refused (SENTINEL_CONFIG), when
    `workers` cannot share the configured store, or when
    another `serve` on the in-memory store already serves the same SQLite file (each would keep its
    own quotas, sessions and ownership, as `workers_refused` says of workers); 1 when the address
    cannot be listened on (checked before anything starts: a port in use, a host not this one's).
    """
    refused = workers_refused(settings, workers)
    if refused:
        print(f"sentinel: {refused}", file=sys.stderr, flush=True)
        return 2
    from sentinel.config import ConfigError
    from sentinel.wiring import check_providers

    try:  # before anything starts: a bad file was found by each worker's start (status 3, after uvicorn's lines)
        check_providers(settings)
    except ConfigError as exc:
        print(f"sentinel: {exc}", file=sys.stderr, flush=True)
        return 2
    from sentinel.db.engine import DatabaseUnreachable, hold_server_lock

    try:
        lock = None if settings.redis_url else hold_server_lock(settings.database_url)
    except DatabaseUnreachable as exc:
        print(f"sentinel: {exc}", file=sys.stderr, flush=True)
        return 1
    except BlockingIOError:
        print(
            "sentinel: another `sentinel serve` without REDIS_URL already serves this SQLite database "
            "(DATABASE_URL): each would keep its own quotas, sessions and caches (set REDIS_URL, or "
            "stop the other one)", file=sys.stderr, flush=True,
        )
        return 2
    try:
        try:
            # Bound before anything starts: a port in use was found only once the mock, the demo key
            # (printed, with the URL it was not served on) and the app had started, and said so in
            # uvicorn's own words.
            sockets = bind_sockets(settings.host, settings.port)
        except OSError as exc:
            print(f"sentinel: {cannot_listen(settings.host, settings.port, exc, 'SENTINEL_HOST/SENTINEL_PORT')}",
                  file=sys.stderr, flush=True)
            return 1
        try:
            return _serve(settings, workers, sockets)
        finally:
            for sock in sockets:
                sock.close()
    finally:
        if lock is not None:
            lock.close()


def _serve(settings: Settings, workers: int, sockets: list[socket.socket]) -> int:
    configure_logging(settings.log_level)
    raise_open_files_limit()  # before the workers start: they inherit it
    stop_mock = None
    demo_key = None
    mocked, demo = settings.use_embedded_mock, demo_mode(settings)  # before the mock's URL is set
    if mocked:
        from sentinel.mock.server import start_mock_in_thread

        mock_key = "mock-" + secrets.token_urlsafe(24)  # the only key it takes: Sentinel's, not a local caller's
        mock_url, stop_mock = start_mock_in_thread(api_key=mock_key, embedded=True)
        settings = settings.served_by_mock(mock_url, mock_key)
        log.warning(
            "NO UPSTREAM CONFIGURED: serving the built-in MOCK upstream (%s). Set OPENAI_API_KEY / "
            "OPENAI_API_URL (or ANTHROPIC_*) for real providers.",
            mock_url,
        )
    if mocked and not demo:
        log.warning("no demo key: a store, ledger, providers file or governance is configured "
                    "(create keys with `sentinel keys create`)")
    try:
        demo_key = asyncio.run(_demo_keys(settings, mint=demo))
    except Exception as exc:  # noqa: BLE001 - the server's own start reports the database's problem, in one line
        doing = "make a demo key" if demo else "check for demo keys left from a demo start"
        log.warning("could not %s: %s", doing, type(exc).__name__)
    if not settings.docs_api_key:
        log.warning("DOCS_API_KEY is not set: /native/docs is open to anyone")
    if not mocked and not settings.end_user_secret:
        log.warning("SENTINEL_END_USER_SECRET is not set: providers are told each user as an unkeyed SHA-256 of "
                    "their id, which anyone who guesses an id can check (see README: What providers are told)")
    # Listening before the lines below are printed: they promise a server, and a connection made
    # while the app still starts waits in the backlog (uvicorn accepts it once started) instead of
    # being refused — the curl line run the moment it was printed failed, silently under `-s`.
    for sock in sockets:
        sock.listen(LISTEN_BACKLOG)
    print(listening_line(settings), flush=True)
    base = local_url(settings)
    if demo_key:
        print(f"Demo API key (mock upstream): {demo_key}", flush=True)
        print(
            f"Try: curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {demo_key}' "
            "-H 'Content-Type: application/json' "
            """-d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'""",
            flush=True,
        )
    if settings.admin_key is not None:
        print(f"Operator console: {base}/admin (sign in with SENTINEL_ADMIN_KEY)", flush=True)
    try:
        with _metrics_dir(workers):
            if workers > 1:
                log.info("starting worker processes", extra={"workers": workers})
                return _run_workers(_config(WorkerApp(settings, os.getpid()), settings, workers), sockets)
            from sentinel.app import create_app  # not imported by a `--workers` parent: it serves nothing

            server = uvicorn.Server(_config(create_app(settings, owns_process=True), settings, 1))
            server.run(sockets=sockets)
            return 0 if server.started else 1
    finally:
        if stop_mock is not None:
            stop_mock()
