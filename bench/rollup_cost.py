"""What rolling the ledger up costs per request on the embedded default (SQLite file).

Records `--rows` usage records through `SqlLedger` with a `SqliteWriter` (as `sentinel serve`
does), then times `roll_up` of all of them, `--repeat` times (the flag is reset in between), and
prints the median CPU and wall time per row. `--checkout` measures another checkout (e.g. a
git worktree of an older commit) in a subprocess, so two versions can be compared on one machine
in one minute:

    git worktree add --detach /tmp/before 8bb2c89
    python bench/rollup_cost.py --checkout /tmp/before && python bench/rollup_cost.py

The rollup worker does this once a second in the background, on the same core as the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


async def measure(rows: int, repeat: int, directory: Path) -> tuple[float, float]:
    from sentinel.db.engine import create_engine, migrate, session_factory
    from sentinel.db.sqlite_writer import SqliteWriter
    from sentinel.domain.usage import UsageRecord
    from sentinel.governance.ledger import SqlLedger

    url = f"sqlite+aiosqlite:///{directory}/ledger.db"
    engine = create_engine(url)
    await migrate(engine)
    writer = SqliteWriter.for_url(url)
    ledger = SqlLedger(session_factory(engine), writer)
    start = datetime(2026, 12, 3, 12, tzinfo=UTC)
    users, models = [f"user-{n}" for n in range(50)], ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4"]
    records = [
        UsageRecord(
            f"req-{n}", users[n % len(users)], None, models[n % len(models)], "openai", "chat", 20 + n % 7,
            6 + n % 5, "measured", 200, start + timedelta(milliseconds=n), start + timedelta(milliseconds=n + 3),
            0.0001,
        )  # fmt: skip
        for n in range(rows)
    ]
    for batch in range(0, rows, 500):
        await ledger.record_batch(records[batch : batch + 500])
    cpu: list[float] = []
    wall: list[float] = []
    try:
        for _ in range(repeat):
            with sqlite3.connect(directory / "ledger.db") as reset:
                reset.execute("UPDATE usage_ledger SET rolled_up = 0")
            ledger.quiet.touched()
            started, used = time.perf_counter(), time.process_time()
            done = await ledger.roll_up(rows)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - used)
            assert done == rows, f"rolled up {done} of {rows}"
    finally:
        if writer is not None:
            await writer.close()
        await engine.dispose()
    return statistics.median(cpu) / rows, statistics.median(wall) / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="rows a roll-up takes (the worker's batch: 2000)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--checkout", type=Path, default=None, help="another checkout to measure (default: this one)")
    args = parser.parse_args()
    if args.checkout is not None:  # measured in a process that imports that checkout's Sentinel
        env = {**os.environ, "PYTHONPATH": str(args.checkout.resolve())}
        command = [sys.executable, __file__, "--rows", str(args.rows), "--repeat", str(args.repeat)]
        raise SystemExit(subprocess.call(command, env=env))
    import sentinel

    checkout = Path(sentinel.__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="rollup-cost-") as directory:
        cpu, wall = asyncio.run(measure(args.rows, args.repeat, Path(directory)))
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"{checkout} ({commit}): roll_up of {args.rows} rows on SQLite: {cpu * 1e6:.1f} us CPU a row, "
          f"{wall * 1e6:.1f} us wall (median of {args.repeat})")  # fmt: skip


if __name__ == "__main__":
    main()
