"""What the benchmark runs: the CPU arrangements, the targets, and how each is started.

Sentinel runs as a user runs it: `python -m sentinel serve` from this checkout, configured only
by environment variables (a temporary directory as cwd, so no `.env` is read), default log level
and access log (JSON lines to a file), a key from `sentinel keys create` and a real plan from
`sentinel plans set` + `sentinel users set-plan` with limits too high to refuse anything here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from procs import HOST, REPO, Proc, free_port, http, log, port_open, start, taskset, wait_until

BENCH_DIR = Path(__file__).resolve().parent
UPSTREAM_KEY = "bench-upstream-key"
USER = "bench-user"
PLAN = "bench"
PLAN_ARGS = [
    "--requests", "100000000", "--input-tokens", "10000000000", "--output-tokens", "10000000000",
    "--window", "1h",
]  # fmt: skip


@dataclass(frozen=True)
class Arrangement:
    """Where processes run: `server` CPUs for the gateway, `load` CPUs for everything else."""

    name: str
    server: str | None
    load: str | None
    description: str


def arrangements() -> dict[str, Arrangement]:
    cores = os.cpu_count() or 1
    if cores < 2 or not shutil.which("taskset"):
        unpinned = Arrangement("unpinned", None, None, "nothing pinned (fewer than 2 CPUs or no taskset)")
        return {"one-core": unpinned, "all-cores": unpinned}
    one = Arrangement(
        "one core", "0", "1",
        "gateway (Sentinel or the bare relay) pinned to CPU 0; mock upstream, Redis, wrk and the driver "
        "pinned to CPU 1",
    )  # fmt: skip
    if cores >= 4:
        two = Arrangement(
            "two cores", "0,1", f"2-{cores - 1}",
            f"gateway processes on CPUs 0-1; mock upstream, Redis, wrk and the driver on CPUs 2-{cores - 1}",
        )  # fmt: skip
    else:
        two = Arrangement(
            "both cores, shared", None, None,
            "nothing pinned: the gateway's processes, the mock upstream, Redis, wrk and the driver share "
            f"the machine's {cores} CPUs (no separate core is left for the load generator)",
        )  # fmt: skip
    return {"one-core": one, "all-cores": two}


@dataclass(frozen=True)
class TargetSpec:
    key: str
    label: str
    kind: str  # direct | bare | sentinel
    redis: bool = False
    workers: int | None = None  # None: `sentinel serve`; N: `sentinel serve --workers N`


DIRECT = TargetSpec("direct", "direct", "direct")
BARE = TargetSpec("bare", "bare", "bare")
EMBEDDED = TargetSpec("embedded", "Sentinel embedded", "sentinel")
REDIS = TargetSpec("redis", "Sentinel on Redis", "sentinel", redis=True)
WORKERS1 = TargetSpec("workers1", "Sentinel Redis --workers 1", "sentinel", redis=True, workers=1)
WORKERS2 = TargetSpec("workers2", "Sentinel Redis --workers 2", "sentinel", redis=True, workers=2)


@dataclass
class Running:
    spec: TargetSpec
    url: str
    key: str | None
    proc: Proc | None  # None for "direct" (the mock is shared by the group)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def clean_env(checkout: Path = REPO) -> dict[str, str]:
    """This environment minus every variable Sentinel reads, with `checkout` (this one by default) importable."""
    from sentinel.config import Settings

    # Every setting's environment name (its alias, a plain string: this read `AliasChoices.choices`,
    # which no field has, so it removed nothing and the caller's SENTINEL_* reached the benchmark).
    names = {str(f.validation_alias).upper() for f in Settings.model_fields.values() if f.validation_alias}
    names |= {"SENTINEL_WORKERS", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["PYTHONPATH"] = str(checkout)
    return env


def start_mock(arr: Arrangement, workdir: Path, latency_ms: float) -> Running:
    port = free_port()
    cmd = [*taskset(arr.load), sys.executable, "-m", "sentinel", "mock-upstream", "--host", HOST,
           "--port", str(port), "--latency-ms", str(latency_ms)]  # fmt: skip
    proc = start("mock", cmd, clean_env(), workdir, workdir)
    url = f"http://{HOST}:{port}"
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}", "Content-Type": "application/json"}
    wait_until(lambda: http("POST", url + "/v1/chat/completions", b'{"model":"m","messages":[]}', headers)[0] > 0,
               proc, "the mock upstream")  # fmt: skip
    return Running(DIRECT, url, UPSTREAM_KEY, proc)


def start_redis(arr: Arrangement, workdir: Path) -> tuple[Proc, str] | None:
    """A private redis-server with the production persistence the README asks for (AOF, fsync
    every second). None when redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = free_port()
    cmd = [*taskset(arr.load), exe, "--port", str(port), "--bind", HOST, "--save", "", "--dir", str(workdir),
           "--appendonly", "yes", "--appendfsync", "everysec"]  # fmt: skip
    proc = start("redis", cmd, clean_env(), workdir, workdir)
    wait_until(lambda: port_open(port), proc, "redis-server")
    return proc, f"redis://{HOST}:{port}/0"


def required_redis(arr: Arrangement, workdir: Path, procs: list[Proc]) -> str:
    """`start_redis`'s URL, its process added to `procs` (to stop); SystemExit without redis-server."""
    started = start_redis(arr, workdir)
    if started is None:
        raise SystemExit("--redis needs redis-server")
    procs.append(started[0])
    return started[1]


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def start_bare(
    arr: Arrangement, mock: str, workdir: Path, *, wrapper: Sequence[str] = (), ready_timeout: float = 60.0
) -> Running:
    """The bare relay; `wrapper` runs it under another program (`instructions.py`: callgrind)."""
    port = free_port()
    env = {**clean_env(), "BARE_UPSTREAM": mock, "BARE_UPSTREAM_KEY": UPSTREAM_KEY, "BARE_CLIENT": "aiohttp"}
    cmd = [*taskset(arr.server), *wrapper, sys.executable, str(BENCH_DIR / "bare_proxy.py"), "--port", str(port)]
    proc = start("bare", cmd, env, workdir, workdir)
    wait_until(lambda: port_open(port), proc, "the bare relay", ready_timeout)
    return Running(BARE, f"http://{HOST}:{port}", None, proc)


def sentinel_cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    cp = subprocess.run([sys.executable, "-m", "sentinel", *args], env=env, cwd=cwd, capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    if cp.returncode != 0:
        raise SystemExit(f"sentinel {' '.join(args)} failed ({cp.returncode}): {cp.stderr[-2000:]}")
    return cp.stdout


def start_sentinel(
    spec: TargetSpec,
    arr: Arrangement,
    mock: str,
    workdir: Path,
    *,
    redis_url: str | None = None,
    database_url: str | None = None,
    name: str | None = None,
    checkout: Path = REPO,
    wrapper: Sequence[str] = (),
    ready_timeout: float = 60.0,
) -> Running:
    """Provision the benchmark user (key, plan) as an operator would, then `sentinel serve` (the
    Sentinel of `checkout`: this one unless an A/B names another, see `interleave.py`; under
    `wrapper`, when given: `instructions.py` runs it under callgrind)."""
    home = workdir / (name or spec.key)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **clean_env(checkout),
        "OPENAI_API_URL": f"{mock}/v1",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_API_URL": mock,
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{home}/sentinel.db",
        "SENTINEL_HOST": HOST,
        "SENTINEL_PORT": str(port),
        "DOCS_API_KEY": "bench-docs-key-0123",
    }
    if spec.redis:
        if redis_url is None:
            raise SystemExit(f"{spec.label} needs Redis")
        flush_redis(redis_url)  # nothing left over from the previous target
        env["REDIS_URL"] = redis_url
    key = sentinel_cli(env, home, "keys", "create", USER).strip().splitlines()[-1].strip()
    sentinel_cli(env, home, "plans", "set", PLAN, *PLAN_ARGS)
    sentinel_cli(env, home, "users", "set-plan", USER, PLAN)
    cmd = [*taskset(arr.server), *wrapper, sys.executable, "-m", "sentinel", "serve"]
    if spec.workers is not None:
        cmd += ["--workers", str(spec.workers)]
    proc = start(name or spec.key, cmd, env, home, workdir)
    url = f"http://{HOST}:{port}"
    workers = spec.workers or 1

    def ready() -> bool:
        started = proc.log_path.read_text(errors="replace").count("Application startup complete.")
        all_started = workers == 1 or started >= workers  # one startup line per worker (log level info)
        return all_started and http("GET", url + "/health/live")[0] == 200

    wait_until(ready, proc, f"{spec.label} (/health/live, {workers} worker(s) started)", ready_timeout)
    log(f"{spec.label}: {url} pid {proc.pid} ({arr.name})")
    return Running(spec, url, key, proc, env)


def create_pg_database(admin_dsn: str) -> str:
    """A throwaway PostgreSQL database; returns its asyncpg URL."""
    import asyncpg

    name = f"sentinel_bench_{uuid.uuid4().hex[:10]}"

    async def go() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(go())
    return admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


def drop_pg_database(admin_dsn: str, url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]

    async def go() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(go())
