"""How `sentinel serve` configures uvicorn: connection limits, and X-Forwarded-* only from named proxies;
and the process's limit on open files."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.protocol import GuardedHttpToolsProtocol
from sentinel.server import START_GRACE_SECONDS, STARTUP_FAILURE, _config, raise_open_files_limit
from tests.support.servers import serving


def app() -> None:  # a stand-in: uvicorn.Config does not load it here
    return None


def test_forwarded_headers_are_ignored_unless_proxies_are_named() -> None:
    plain = _config(app, Settings(_env_file=None), 1)  # type: ignore[call-arg]
    assert plain.proxy_headers is False
    trusted = _config(app, Settings(_env_file=None, forwarded_allow_ips="10.0.0.5,10.0.0.6"), 1)  # type: ignore[call-arg]
    assert trusted.proxy_headers is True and trusted.forwarded_allow_ips == "10.0.0.5,10.0.0.6"


def test_behind_a_named_proxy_the_client_is_the_rightmost_address_it_did_not_add(tmp_path: Path) -> None:
    """Served as `serve` configures uvicorn, with the loopback named as the proxy: the client is the
    last X-Forwarded-For entry that is not a named proxy, so a client rotating the entries it writes
    itself (the leftmost) is still one client to the failed-authentication throttle (`*` took the
    leftmost: every guess was a new client). Without X-Forwarded-For the client is the socket's."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db", redis_url=None, access_log=False,
        openai_api_url="http://127.0.0.1:9/v1", openai_api_key="k", auth_failures_per_minute=3,
        forwarded_allow_ips="127.0.0.1",
    )
    app = create_app(settings)
    with serving(app, settings=settings) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:

        def guess(forwarded_for: str | None) -> int:
            headers = {"Authorization": "Bearer sk-sentinel-not-a-key"}
            if forwarded_for is not None:
                headers["X-Forwarded-For"] = forwarded_for
            return client.get("/v1/models", headers=headers).status_code

        rotating = [guess(f"198.51.100.{i}, 203.0.113.7, 127.0.0.1") for i in range(5)]
        assert rotating == [401, 401, 401, 429, 429]  # 203.0.113.7 failed three times
        assert guess("203.0.113.7") == 429
        assert guess("198.51.100.1") == 401  # another client
        assert guess(None) == 401  # the proxy itself


def test_the_connection_limits_reach_the_protocol() -> None:
    config = _config(app, Settings(_env_file=None, header_timeout_seconds=3, max_headers=50), 1)  # type: ignore[call-arg]
    assert config.http is GuardedHttpToolsProtocol
    assert config.sentinel_limits.header_timeout == 3 and config.sentinel_limits.max_headers == 50  # type: ignore[attr-defined]


def test_a_shutdown_deadline_under_a_second_is_not_zero() -> None:
    """`int(0.5)` gave uvicorn no time at all: every request in flight was cut at SIGTERM."""
    config = _config(app, Settings(_env_file=None, shutdown_timeout_seconds=0.5), 1)  # type: ignore[call-arg]
    assert config.timeout_graceful_shutdown == 1


resource = pytest.importorskip("resource")  # not on Windows, where there is no such limit


class Limits:
    """A stand-in for getrlimit/setrlimit: (soft, hard) open files, and the kernel's refusals."""

    def __init__(self, soft: int, hard: int, refused: tuple[int, ...] = ()) -> None:
        self.soft, self.hard, self.refused = soft, hard, refused
        self.asked: list[int] = []

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE and limits[1] == self.hard
        self.asked.append(limits[0])
        if limits[0] in self.refused:
            raise ValueError("not allowed")
        self.soft = limits[0]


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    """With the usual soft limit of 1,024, 1,100 idle connections without any key took every file
    descriptor: every other request failed until the header deadline closed them."""
    limits = Limits(1024, 524288)
    assert raise_open_files_limit(limits.get, limits.set) == 524288
    assert (limits.soft, limits.asked) == (524288, [524288])
    assert raise_open_files_limit(limits.get, limits.set) == 524288 and limits.asked == [524288]  # already


def test_an_unlimited_hard_limit_gets_the_highest_soft_limit_the_kernel_takes() -> None:
    limits = Limits(256, resource.RLIM_INFINITY, refused=(1_048_576,))  # macOS: at most OPEN_MAX
    assert raise_open_files_limit(limits.get, limits.set) == 10_240
    assert limits.asked == [1_048_576, 10_240]
    unlimited = Limits(resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert raise_open_files_limit(unlimited.get, unlimited.set) == resource.RLIM_INFINITY and not unlimited.asked


def test_a_limit_that_cannot_be_raised_is_kept_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(1024, 4096, refused=(4096,))
    assert raise_open_files_limit(limits.get, limits.set) == 1024
    assert "could not raise the open files limit from 1024" in caplog.text


def test_the_real_limit_is_raised() -> None:
    """In a process started with a soft limit below its hard one, the real call raises it."""
    code = (
        "import resource; from sentinel.server import raise_open_files_limit; "
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard)); "
        "raise_open_files_limit(); print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard) "
        "if hard != resource.RLIM_INFINITY else resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 256)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True", out


def test_a_second_serve_on_the_in_memory_store_and_the_same_sqlite_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--workers 2` without REDIS_URL is refused (each worker would keep its own quotas), but two
    `sentinel serve` on the same SQLite file (another port) both served: a user had each process's
    plan in full, and its sessions and object ownership in one process only. The second is now
    refused the same way, while the first holds the file; with REDIS_URL both may serve."""
    import uvicorn

    from sentinel.db.engine import hold_server_lock
    from sentinel.server import serve

    started: list[bool] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: started.append(True))
    url = f"sqlite+aiosqlite:///{tmp_path}/one.db"
    s = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=url, redis_url=None, openai_api_url="http://127.0.0.1:9/v1", openai_api_key="k",
        host="127.0.0.1", port=9,
    )
    first = hold_server_lock(url)  # what the first `serve` holds while it runs (another process's, there)
    assert first is not None
    try:
        assert serve(s) == 2
        assert "REDIS_URL" in capsys.readouterr().err and not started
        shared = s.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
        monkeypatch.setattr("sentinel.server._demo_keys", lambda *a, **kw: asyncio.sleep(0))
        serve(shared)  # a shared store: not refused (the stub stands for the server)
        assert started == [True]
    finally:
        first.close()
    assert serve(s) in (0, 1) and started == [True, True]  # the first one gone: this one serves


# --- the `--workers` supervisor: which dead worker stops everything ----------------------------------
class FakeWorker:
    """A worker process as the supervisor sees it: alive, or ended with `exitcode`."""

    started: list[FakeWorker] = []

    def __init__(self, *args: object) -> None:
        self.exitcode: int | None = None
        self.pid = 1000 + len(FakeWorker.started)
        self.answers = True  # to the parent's ping
        self.pinged = 0

    def start(self) -> None:
        FakeWorker.started.append(self)

    def is_alive(self, timeout: float = 5) -> bool:
        self.pinged += 1
        return self.exitcode is None and self.answers

    def kill(self) -> None:
        if self.exitcode is None:
            self.exitcode = -9

    def terminate(self) -> None:
        if self.exitcode is None:
            self.exitcode = 0

    def join(self) -> None: ...

    def wait_until_ready(self, timeout: float, should_exit: object = None) -> bool:
        self.given = timeout  # (how long it was given)
        return self.exitcode is None and self.answers


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[float]]:
    """A two-worker supervisor over FakeWorkers with a clock of our own (its signal handlers not
    installed in the test process)."""
    import signal

    import uvicorn.supervisors.multiprocess as multiprocess

    from sentinel.server import _supervisor

    monkeypatch.setattr(multiprocess, "Process", FakeWorker)
    monkeypatch.setattr(signal, "signal", lambda *_: None)
    monkeypatch.setattr(FakeWorker, "started", [])
    now = [0.0]
    made = _supervisor(_config(app, Settings(_env_file=None), 2), [], clock=lambda: now[0])  # type: ignore[call-arg]
    made.init_processes()
    return made, now


def test_a_worker_of_the_first_start_that_cannot_start_stops_everything(supervisor: tuple[Any, list[float]]) -> None:
    made, _ = supervisor
    made.processes[1].exitcode = STARTUP_FAILURE
    made.keep_subprocess_alive()
    assert made.should_exit.is_set() and made.startup_failed == [made.processes[1].pid]
    assert len(FakeWorker.started) == 2  # nothing replaced


def test_a_dead_worker_is_replaced_and_a_replacement_that_cannot_start_is_tried_again(
    supervisor: tuple[Any, list[float]],
) -> None:
    made, now = supervisor
    first, second = made.processes
    second.exitcode = -9  # kill -9
    made.keep_subprocess_alive()
    replacement = made.processes[1]
    assert replacement is not second and len(FakeWorker.started) == 3

    replacement.exitcode = STARTUP_FAILURE  # the database was down when it started
    made.keep_subprocess_alive()
    assert not made.should_exit.is_set() and made.startup_failed == []
    assert made.processes == [first, replacement] and len(FakeWorker.started) == 3  # waits its backoff
    now[0] += 0.4  # within the first retry's delay (0.5–1 s)
    made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 3
    now[0] += 0.6
    made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 4 and made.processes[1] is FakeWorker.started[-1]
    assert made.processes[0] is first  # the other worker served on, untouched


def test_a_starting_worker_is_not_pinged_until_its_grace_ends(supervisor: tuple[Any, list[float]]) -> None:
    """A new worker answers pings only once spawned and its imports done (over 5 s on a busy host):
    until START_GRACE_SECONDS only its exit counts; then one that does not answer is killed as hung."""
    made, now = supervisor
    first, second = made.processes
    second.answers = False  # still importing
    now[0] += 6.0  # uvicorn had pinged it, waited 5 s and killed it by now
    made.keep_subprocess_alive()
    assert made.processes == [first, second] and second.exitcode is None and second.pinged == 0

    now[0] = START_GRACE_SECONDS  # hung for good
    made.keep_subprocess_alive()
    assert second.exitcode == -9 and made.processes[1] is FakeWorker.started[-1] is not second
    assert first.pinged == 1 and not made.should_exit.is_set()
    replacement = made.processes[1]
    replacement.answers = False  # a replacement has its own grace
    made.keep_subprocess_alive()
    assert made.processes[1] is replacement and replacement.pinged == 0


def _second_slot_waiting_to_retry(made: Any) -> Any:
    """Kill the second slot's worker and fail its replacement's start: the slot waits to retry it.
    The first slot's worker."""
    first, second = made.processes
    second.exitcode = -9
    made.keep_subprocess_alive()
    made.processes[1].exitcode = STARTUP_FAILURE  # its replacement could not start: retried later
    made.keep_subprocess_alive()
    return first


def test_a_restart_gives_each_new_worker_its_grace_and_ends_a_pending_retry(supervisor: tuple[Any, list[float]]) -> None:
    """SIGHUP (`restart_all`) starts a new worker per slot and retires the old one once the new is
    ready: it is given START_GRACE_SECONDS for that, as any new worker (uvicorn gave it 5 s and, on a
    busy host, abandoned the restart), and a slot that was waiting to retry a replacement that could
    not start is served by the new worker — its retry no longer due (it started yet another worker
    over the new one, left running unsupervised)."""
    made, now = supervisor
    first = _second_slot_waiting_to_retry(made)
    made.restart_all()
    renewed = made.processes
    assert renewed[0] is not first and first.exitcode == 0 and renewed[1].exitcode is None
    assert [worker.given for worker in renewed] == [START_GRACE_SECONDS] * 2
    started = len(FakeWorker.started)
    now[0] += 60.0  # past the retry's delay, and past the new workers' grace
    made.keep_subprocess_alive()
    assert made.processes == renewed and len(FakeWorker.started) == started  # none started over them


def test_a_worker_added_by_sigttin_has_its_grace_and_a_slot_removed_by_sigttou_forgets_its_retry(
    supervisor: tuple[Any, list[float]],
) -> None:
    """SIGTTOU retires the last slot's worker — one whose replacement could not start, waiting for its
    retry, too — and SIGTTIN adds one. The removed slot's retry, still due, started a worker over the
    one SIGTTIN added later in that slot, which ran on unsupervised (never pinged, never stopped by
    SIGTERM or replaced by SIGHUP); and a worker SIGTTIN added was pinged from its first moment."""
    made, now = supervisor
    first = _second_slot_waiting_to_retry(made)
    made.handle_ttou()
    assert made.processes == [first]
    made.handle_ttin()
    added = made.processes[1]
    assert added.exitcode is None and added is FakeWorker.started[-1]
    added.answers = False  # still importing
    now[0] += 6.0  # past the removed slot's retry (0.5–1 s), within the added worker's grace
    made.keep_subprocess_alive()
    assert made.processes == [first, added] and added is FakeWorker.started[-1]  # no worker over it
    assert added.pinged == 0 and added.exitcode is None  # not killed as hung while it starts
    now[0] += START_GRACE_SECONDS
    added.answers = True
    made.keep_subprocess_alive()
    assert made.processes == [first, added] and added.pinged == 1


def test_a_sigterm_during_a_restart_ends_the_restart_at_once(
    supervisor: tuple[Any, list[float]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM (or SIGINT) arriving while SIGHUP's restart waits for a new worker is only queued (the
    parent acts on signals between checks): the restart went on, slot after slot, each new worker
    given up to START_GRACE_SECONDS — minutes with many workers before the stop began, past a service
    manager's stop timeout. The wait now ends when a stop is asked: the new worker is killed, the old
    ones kept, and the stop follows."""
    import signal

    made, _ = supervisor
    old = list(made.processes)

    def starting(worker: FakeWorker, timeout: float, should_exit: Any = None) -> bool:
        if not made.signal_queue:
            made.signal_queue.append(signal.SIGTERM)  # `systemctl stop` while the first new worker starts
        worker.given = timeout
        return not (should_exit is not None and should_exit.is_set())

    monkeypatch.setattr(FakeWorker, "wait_until_ready", starting)
    made.restart_all()
    assert made.processes == old and all(worker.exitcode is None for worker in old)  # the old ones serve on
    assert len(FakeWorker.started) == 3 and FakeWorker.started[-1].exitcode == -9  # one new worker, killed
    made.handle_signals()
    assert made.should_exit.is_set()


def test_a_worker_that_keeps_dying_as_it_starts_is_replaced_less_and_less_often(
    supervisor: tuple[Any, list[float]],
) -> None:
    """A worker that dies before its start grace is over (OOM-killed while it starts on a host short
    of memory, a crash at its first request) was replaced at every check, 0.5 s apart, for ever: a
    new interpreter spawned twice a second, adding to what killed it. A first such death is replaced
    at once (a `kill -9` of a new worker); the next in a row wait (1 s, doubling to 30 s); a worker
    that lived past its grace starts the count again."""
    made, now = supervisor
    first, second = made.processes
    second.exitcode = -9
    made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 3  # the first death: replaced at once
    for _ in range(6):  # its replacement dies as it starts; the parent's checks go on
        made.processes[1].exitcode = -9
        made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 3 and not made.should_exit.is_set()  # waiting, not spawning
    now[0] += 1.0  # past the first wait (0.5–1 s)
    made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 4 and made.processes[0] is first
    made.processes[1].exitcode = -9  # dies as it starts again: a longer wait
    made.keep_subprocess_alive()
    now[0] += 0.9
    made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 4
    now[0] += 1.1  # past the second wait (1–2 s)
    made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 5
    now[0] += START_GRACE_SECONDS  # this one lived: its death is replaced at once
    made.processes[1].exitcode = -9
    made.keep_subprocess_alive()
    assert len(FakeWorker.started) == 6
