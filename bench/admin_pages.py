"""How fast the operator console answers with 10,000 users and 1,000,000 ledger rows on PostgreSQL.

Seeds a throwaway PostgreSQL database (users with plans and keys; ledger rows spread over 30 days
with their rollups computed by the runtime's own `Rollup`; audit entries), starts `sentinel serve`
on it as a subprocess, signs in, and times every console page and the admin API's heavy calls:
wall time seen by the client and the server's own `Server-Timing: total`.

    .venv/bin/python bench/admin_pages.py [--users 10000] [--rows 1000000] [--runs 20]
        [--users-skew zipf|uniform] [--pg postgresql://postgres@127.0.0.1:5432/test] [--keep]

Requests per user follow a Zipf-like law by default (a few heavy users, a long tail, as real
traffic does); `--users-skew uniform` spreads them evenly, the worst case for the 30-day top list.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentinel.db.engine import migrate  # noqa: E402
from sentinel.domain.usage import UsageRecord  # noqa: E402
from sentinel.governance.keys import generate_key, hash_key  # noqa: E402
from sentinel.governance.rollups import TABLES, Rollup  # noqa: E402

ADMIN_KEY = "bench-admin-key-" + secrets.token_hex(8)
MODELS = [("gpt-4o-mini", "openai", 0.15, 0.6), ("gpt-4o", "openai", 2.5, 10.0),
          ("claude-3-5-haiku-20241022", "anthropic", 0.8, 4.0), ("claude-sonnet-4-20250514", "anthropic", 3.0, 15.0),
          ("gpt-4.1-mini", "openai", 0.4, 1.6), ("text-embedding-3-small", "openai", 0.02, 0.0)]
LEDGER_COLUMNS = ["request_id", "external_id", "email", "model", "provider", "endpoint", "input_tokens", "output_tokens",
                  "usage_source", "status", "started_at", "finished_at", "cost_usd"]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def user_picker(users: int, skew: str, rnd: random.Random) -> Any:
    if skew == "uniform":
        return lambda: rnd.randrange(users)
    weights = [1 / (i + 1) ** 1.1 for i in range(users)]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    import bisect

    return lambda: min(users - 1, bisect.bisect_left(cumulative, rnd.random() * total))


def records(count: int, users: int, skew: str, now: datetime, seed: int = 42) -> Any:
    """Ledger records in chunks of 50,000, finished uniformly over the last 30 days."""
    rnd = random.Random(seed)
    pick = user_picker(users, skew, rnd)
    chunk: list[UsageRecord] = []
    for i in range(count):
        finished = now - timedelta(seconds=rnd.random() * 30 * 86400)
        model, provider, pin, pout = MODELS[rnd.randrange(len(MODELS))]
        inp, out = rnd.randint(20, 4000), rnd.randint(0, 1200)
        latency = timedelta(milliseconds=min(120_000, rnd.lognormvariate(6.2, 0.9)))
        status = 200 if rnd.random() > 0.02 else rnd.choice([499, 502, 504])
        chunk.append(UsageRecord(
            f"bench-{i}", f"user-{pick():05d}", None, model, provider, "chat", inp, out, "measured", status,
            finished - latency, finished, round((inp * pin + out * pout) / 1e6, 8),
        ))
        if len(chunk) == 50_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def seed(dsn: str, users: int, rows: int, skew: str) -> None:
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        plans = [("free", [("requests", 60, 20)]), ("team", [("requests", 60, 600), ("output_tokens", 86400, 2_000_000)]),
                 ("enterprise", [("requests", 60, 6000), ("input_tokens", 3600, 50_000_000)])]
        await conn.copy_records_to_table("plans", records=[(n, now, now) for n, _ in plans],
                                         columns=["name", "created_at", "updated_at"])
        await conn.copy_records_to_table("plan_limits", records=[(n, m, w, lim) for n, ls in plans for m, w, lim in ls],
                                         columns=["plan_name", "metric", "window_seconds", "limit"])
        user_rows, key_rows = [], []
        for i in range(users):
            uid = str(uuid.uuid4())
            user_rows.append((uid, f"user-{i:05d}", f"user{i}@example.com", plans[i % 3][0], now))
            token = generate_key()
            key_rows.append((f"key_{secrets.token_hex(6)}", uid, "bench", token[:20], hash_key(token), now, None, None))
        await conn.copy_records_to_table("users", records=user_rows,
                                         columns=["id", "external_id", "email", "plan_name", "created_at"])
        await conn.copy_records_to_table("api_keys", records=key_rows, columns=[
            "id", "user_id", "name", "prefix", "key_hash", "created_at", "revoked_at", "last_used_at"])
        rollup = Rollup()
        done = 0
        for chunk in records(rows, users, skew, now):
            await conn.copy_records_to_table(
                "usage_ledger", columns=LEDGER_COLUMNS,
                records=[tuple(getattr(r, c) for c in LEDGER_COLUMNS) for r in chunk],
            )
            for record in chunk:
                rollup.add(record)
            done += len(chunk)
            log(f"  ledger rows: {done:,}")
        sizes = []
        for (table, _, _), items in zip(TABLES, rollup.rows(), strict=True):
            columns = list(items[0])
            await conn.copy_records_to_table(table.__tablename__, columns=columns,
                                             records=[tuple(r[c] for c in columns) for r in items])
            sizes.append(f"{len(items):,} {table.__tablename__}")
        # Every answer counted (what the request middleware writes): the served ones plus refusals.
        rnd = random.Random(7)
        answers: dict[str, dict[int, list[int]]] = {"request_minutes": {}, "request_hours": {}}
        for row in rollup.rows()[0]:  # usage_minutes rows
            refused, failed = rnd.randint(0, row["requests"] // 10 + 1), rnd.randint(0, 1)
            counts = [row["requests"] + refused + failed, refused, refused // 2, failed]
            answers["request_minutes"][row["minute"]] = counts
            hour = answers["request_hours"].setdefault(row["minute"] // 60, [0, 0, 0, 0])
            for i, value in enumerate(counts):
                hour[i] += value
        for table, key in (("request_minutes", "minute"), ("request_hours", "hour")):
            await conn.copy_records_to_table(
                table, columns=[key, "requests", "client_errors", "rate_limited", "server_errors"],
                records=[(k, *v) for k, v in sorted(answers[table].items())],
            )
        audit = [(now - timedelta(minutes=i), "admin", "key.create", f"key_{i:012x}", '{"user": "x"}', "127.0.0.1")
                 for i in range(2000)]
        await conn.copy_records_to_table("audit_log", records=audit,
                                         columns=["at", "actor", "action", "target", "details", "address"])
        await conn.execute("ANALYZE")
        log(f"seeded {users:,} users, {rows:,} ledger rows (rollups: {', '.join(sizes)}) "
            f"in {time.perf_counter() - started:.0f} s")
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_ms(answer: httpx.Response) -> float:
    found = re.search(r"total;dur=([0-9.]+)", answer.headers.get("server-timing", ""))
    return float(found.group(1)) if found else float("nan")


def measure(base: str, runs: int, heavy_user: str, light_user: str) -> list[tuple[str, list[float], list[float], int]]:
    client = httpx.Client(base_url=base, timeout=60)
    assert client.post("/admin/signin", data={"key": ADMIN_KEY}).status_code == 303
    api = {"Authorization": f"Bearer {ADMIN_KEY}"}
    pages = [
        ("GET /admin?period=1h", "/admin?period=1h", {}),
        ("GET /admin?period=24h", "/admin?period=24h", {}),
        ("GET /admin?period=30d", "/admin?period=30d", {}),
        ("GET /admin/users", "/admin/users", {}),
        ("GET /admin/users?q=user-0421", "/admin/users?q=user-0421", {}),
        (f"GET /admin/users/{heavy_user} (heaviest)", f"/admin/users/{heavy_user}", {}),
        (f"GET /admin/users/{light_user}", f"/admin/users/{light_user}", {}),
        ("GET /admin/plans", "/admin/plans", {}),
        ("GET /admin/audit", "/admin/audit", {}),
        ("GET /admin/api/overview?period=30d", "/admin/api/overview?period=30d", api),
        ("GET /admin/api/usage?since=30d&step=1d", "/admin/api/usage?since=30d&step=1d", api),
        ("GET /admin/api/usage.csv?since=1d (export)", "/admin/api/usage.csv?since=1d", api),
        ("GET /admin/api/usage.csv?since=30d (export)", "/admin/api/usage.csv?since=30d", api),
    ]
    results = []
    for label, path, headers in pages:
        for _ in range(2):
            client.get(path, headers=headers)  # warm-up (connection pool, plan caches)
        wall, server = [], []
        size = 0
        for _ in range(runs if "export" not in label else max(3, runs // 4)):
            started = time.perf_counter()
            answer = client.get(path, headers=headers)
            wall.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
            server.append(server_ms(answer))
            size = len(answer.content)
        results.append((label, wall, server, size))
    client.close()
    return results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def heaviest(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        heavy = await conn.fetchval("SELECT external_id FROM usage_daily_users GROUP BY external_id ORDER BY sum(requests) DESC LIMIT 1")
        light = await conn.fetchval("SELECT external_id FROM usage_daily_users GROUP BY external_id ORDER BY sum(requests) LIMIT 1")
        return str(heavy), str(light)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--users-skew", choices=["zipf", "uniform"], default="zipf")
    parser.add_argument("--pg", default=os.environ.get("SENTINEL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = parser.parse_args()

    name = f"sentinel_bench_{secrets.token_hex(5)}"
    admin_dsn = args.pg

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    server = None
    try:
        asyncio.run(migrate(url))
        asyncio.run(seed(dsn, args.users, args.rows, args.users_skew))
        heavy, light = asyncio.run(heaviest(dsn))
        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "SENTINEL_ADMIN_KEY": ADMIN_KEY, "SENTINEL_PORT": str(port),
               "SENTINEL_HOST": "127.0.0.1", "SENTINEL_ACCESS_LOG": "false", "SENTINEL_LOG_LEVEL": "warning"}
        server = subprocess.Popen([sys.executable, "-m", "sentinel", "serve"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"sentinel did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
        results = measure(base, args.runs, heavy, light)
        print(f"\n{args.users:,} users, {args.rows:,} ledger rows over 30 days ({args.users_skew}), PostgreSQL, "
              f"{args.runs} runs per page (exports fewer)\n")
        print("| page | client p50 ms | client p95 ms | server p50 ms | server p95 ms | max ms | bytes |")
        print("|---|---|---|---|---|---|---|")
        for label, wall, srv, size in results:
            print(f"| {label} | {statistics.median(wall):.1f} | {pct(wall, 0.95):.1f} | {statistics.median(srv):.1f} | "
                  f"{pct(srv, 0.95):.1f} | {max(wall):.1f} | {size:,} |")
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if args.keep:
            log(f"kept {url}")
        else:
            asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    raise SystemExit(main())
