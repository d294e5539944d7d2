"""The optional long steps: memory soak (`--soak`) and ledger throughput on PostgreSQL (`--ledger`)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from load import BY_NAME, run_wrk
from procs import log, pin_self, rss_kb
from targets import (
    TargetSpec,
    arrangements,
    create_pg_database,
    drop_pg_database,
    start_mock,
    start_redis,
    start_sentinel,
)

SOAK_CONCURRENCY = 64
LEDGER_CONCURRENCY = 64


class Sampler:
    """Calls `probe()` every `every` seconds in a thread; samples are (seconds since start, value)."""

    def __init__(self, probe: Any, every: float = 1.0) -> None:
        self.probe = probe
        self.every = every
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - self._t0, 2), self.probe()))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def soak(seconds: float, spec: TargetSpec, tmp: Path, run_dir: Path) -> dict[str, Any]:
    """Chat at c=64 for `seconds` through a fresh Sentinel (one-core arrangement), RSS every second.

    Warm-up is the first min(60 s, 20 %) of the run; "flat" compares every later sample with the
    RSS at the end of the warm-up."""
    arr = arrangements()["one-core"]
    pin_self(arr.load)
    home = tmp / "soak"
    home.mkdir()
    mock = start_mock(arr, home, 0.0)
    redis = start_redis(arr, home) if spec.redis else None
    running = start_sentinel(spec, arr, mock.url, home, redis_url=redis[1] if redis else None, name="soak")
    try:
        pid = running.proc.pid  # type: ignore[union-attr]
        chat = BY_NAME["chat"]
        start_rss = rss_kb(pid)
        log(f"soak: {seconds:g} s at c={SOAK_CONCURRENCY} through {spec.label}, RSS {start_rss} kB")
        with Sampler(lambda: rss_kb(pid)) as sampler:
            r = run_wrk(running.url + chat.path, chat, SOAK_CONCURRENCY, seconds, running.key, cpus=arr.load,
                        workdir=home)  # fmt: skip
        end_rss = rss_kb(pid)
    finally:
        running.proc.stop()  # type: ignore[union-attr]
        if redis:
            redis[0].stop()
        mock.proc.stop()  # type: ignore[union-attr]
    warmup = min(60.0, 0.2 * seconds)
    after = [v for t, v in sampler.samples if t >= warmup and v is not None]
    warm = after[0] if after else None
    flat = None
    if warm:
        worst = max(after + [end_rss or warm], key=lambda v: abs(v - warm))
        flat = 100.0 * (worst - warm) / warm
    result = {
        "label": spec.label, "duration_s": seconds, "warmup_s": warmup, "wrk": r, "rss_start_kb": start_rss,
        "rss_warm_kb": warm, "rss_peak_kb": max(after) if after else None, "rss_end_kb": end_rss,
        "flat_pct": flat, "rss_samples": sampler.samples,
    }  # fmt: skip
    log(f"soak: RSS start {start_rss} warm {warm} peak {result['rss_peak_kb']} end {end_rss} kB; {r.get('rps', 0):.0f} req/s")
    return result


async def _count_rows(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_ledger"))
    finally:
        await conn.close()


def ledger(admin_dsn: str, seconds: float, spec: TargetSpec, tmp: Path, run_dir: Path) -> dict[str, Any]:
    """Chat at c=64 through `sentinel serve --workers 2` on Redis and PostgreSQL; the ledger's growth."""
    import redis as redis_lib

    from sentinel.quota.outbox import RedisStreamOutbox

    arr = arrangements()["all-cores"]
    pin_self(arr.load)
    home = tmp / "ledger"
    home.mkdir()
    database = create_pg_database(admin_dsn)
    mock = start_mock(arr, home, 0.0)
    redis = start_redis(arr, home)
    if redis is None:
        raise SystemExit("--ledger needs redis-server")
    running = start_sentinel(spec, arr, mock.url, home, redis_url=redis[1], database_url=database, name="ledger")
    store = redis_lib.Redis.from_url(redis[1])
    try:
        chat = BY_NAME["chat"]

        def probe() -> tuple[int, int]:
            return asyncio.run(_count_rows(database)), int(store.xlen(RedisStreamOutbox.KEY))

        log(f"ledger: {seconds:g} s at c={LEDGER_CONCURRENCY} through {spec.label} on PostgreSQL")
        with Sampler(probe) as sampler:
            t0 = time.monotonic()
            r = run_wrk(running.url + chat.path, chat, LEDGER_CONCURRENCY, seconds, running.key, cpus=arr.load,
                        workdir=home)  # fmt: skip
            load_end = time.monotonic() - t0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the outbox is empty and the ledger stops growing
                time.sleep(1.0)
                tail = [v for _, v in sampler.samples[-3:]]
                if len(tail) == 3 and tail[-1][1] == 0 and tail[0][0] == tail[-1][0]:
                    break
    finally:
        running.proc.stop()  # type: ignore[union-attr]
        store.close()
        redis[0].stop()
        mock.proc.stop()  # type: ignore[union-attr]
        final = asyncio.run(_count_rows(database))
        drop_pg_database(admin_dsn, database)
    during = [(t, v[0]) for t, v in sampler.samples if t <= load_end]
    grew = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) > 1 else 0.0
    last_growth = next((t for t, v in sampler.samples if v[0] >= final), load_end)
    served = r.get("requests", 0) - r.get("non2xx", 0)
    return {
        "label": spec.label, "arrangement": arr.name, "concurrency": LEDGER_CONCURRENCY,
        "duration_s": seconds, "served_rps": r.get("rps"), "ledger_rps": grew, "rows": final,
        "rows_expected_note": (
            f"wrk counted {served:,} 2xx responses; up to {LEDGER_CONCURRENCY} more were in flight when it stopped"
            + ("" if served <= final <= served + LEDGER_CONCURRENCY else " — MISMATCH")
        ),
        "drain_s": max(0.0, last_growth - load_end), "depth_peak": max((v[1] for _, v in sampler.samples), default=0),
        "wrk": r, "samples": sampler.samples,
    }  # fmt: skip
