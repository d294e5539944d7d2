"""Instructions per request: the bare relay and Sentinel (and, with `--before`, another checkout) under callgrind.

The VM's speed moves from minute to minute, so a wall-clock A/B needs interleaving and still moves by
±7 %. `valgrind --tool=callgrind` counts the instructions the server process executes instead: the
same for the same code and inputs whatever else the machine is doing — within 3.1 % for an A/A pair
(the same commit twice) at c=1 with 300 requests, 1.4 % at c=8 with 800: the event loop's turns and
the background tasks' share vary a little with timing —, so a change's cost can be read while other
work runs.

Each target is started as `bench.py` starts it (Sentinel as a user runs it, see
`targets.start_sentinel`) but under callgrind with instrumentation off; after `--warmup` requests it
is switched on for `--requests` requests (`--concurrency` connections, each sending one after the
other), then off and dumped. The mock upstream runs natively. What it counts is user-space
instructions of the server's process (its threads included), not system calls or time waiting:
ratios of work, not of latency.

    python bench/instructions.py                                  # bare relay and Sentinel embedded, chat
    python bench/instructions.py --redis --scenario stream
    git worktree add --detach /tmp/before 3c46c7b
    python bench/instructions.py --before /tmp/before             # + that checkout's Sentinel

Sentinel starts in ~30 s under callgrind and serves ~5 requests a second: the defaults take ~3 min.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from load import BY_NAME, Scenario
from procs import HOST, REPO, Proc, log
from targets import (
    BARE,
    EMBEDDED,
    REDIS,
    Running,
    arrangements,
    required_redis,
    start_bare,
    start_mock,
    start_sentinel,
)


def send(running: Running, scenario: Scenario, requests: int, concurrency: int) -> None:
    """`requests` requests to `running`, over `concurrency` connections (each one after the other)."""
    path = scenario.path if running.spec.kind == "sentinel" else scenario.upstream_path or scenario.path
    body, headers = scenario.body_bytes(), scenario.headers(running.key)
    port = int(running.url.rsplit(":", 1)[1])
    failures: list[str] = []

    def one_connection(count: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=300)
        for _ in range(count):
            conn.request("POST", path, body, headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                failures.append(f"HTTP {answer.status}")
                return
        conn.close()

    threads = [threading.Thread(target=one_connection, args=(requests // concurrency,)) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{running.spec.label}: {failures[0]}")


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def counted(out: Path) -> int:
    """The instructions of the first dump (`callgrind_control -d`: the instrumented requests)."""
    totals = [line for line in (out.parent / f"{out.name}.1").read_text().splitlines() if line.startswith("totals:")]
    if not totals:
        raise SystemExit(f"no totals in {out}.1")
    return int(totals[-1].split()[1])


def measure(
    name: str, start_target: Callable[[Sequence[str]], Running], scenario: Scenario, a: argparse.Namespace, workdir: Path, procs: list[Proc]
) -> float:
    """Instructions per request of the target `start_target(wrapper)` starts."""
    out = workdir / f"{name}.callgrind"
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    running: Running = start_target(wrapper)
    assert running.proc is not None
    procs.append(running.proc)
    log(f"{name}: warm-up ({a.warmup} requests), then {a.requests} counted at c={a.concurrency}")
    send(running, scenario, a.warmup, a.concurrency)
    callgrind(running.proc.pid, "-i", "on")
    send(running, scenario, a.requests, a.concurrency)
    callgrind(running.proc.pid, "-i", "off")
    callgrind(running.proc.pid, "-d")
    running.proc.stop(120)
    if a.keep is not None:
        a.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(out.parent / f"{out.name}.1", a.keep / f"{name}.callgrind")
    served = a.requests // a.concurrency * a.concurrency
    return counted(out) / served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="chat", choices=sorted(BY_NAME))
    parser.add_argument("--redis", action="store_true", help="Sentinel on Redis (a private redis-server each)")
    parser.add_argument("--before", type=Path, help="another checkout (a git worktree) measured beside this one")
    parser.add_argument("--requests", type=int, default=300, help="counted requests per target")
    parser.add_argument("--warmup", type=int, default=200, help="requests before counting starts")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="copy each target's callgrind file here (for callgrind_annotate)")
    a = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    scenario = BY_NAME[a.scenario]
    arr = arrangements()["one-core"]
    spec = REDIS if a.redis else EMBEDDED
    procs: list[Proc] = []
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sentinel-instructions-") as tmp:
        workdir = Path(tmp)
        try:
            mock = start_mock(arr, workdir, 0.0)
            if mock.proc is not None:
                procs.append(mock.proc)
            if scenario.upstream_path is not None:
                results[BARE.label] = measure(
                    "bare", lambda w: start_bare(arr, mock.url, workdir, wrapper=w, ready_timeout=600),
                    scenario, a, workdir, procs,
                )
            checkouts = ([("before", a.before.resolve())] if a.before else []) + [("after" if a.before else "sentinel", REPO)]
            for name, checkout in checkouts:
                (workdir / name).mkdir()
                redis_url = required_redis(arr, workdir / name, procs) if a.redis else None
                label = f"{spec.label} ({name}: {checkout})" if a.before else spec.label
                results[label] = measure(
                    name,
                    lambda w, n=name, c=checkout, r=redis_url: start_sentinel(
                        spec, arr, mock.url, workdir / n, redis_url=r, name=n, checkout=c, wrapper=w,
                        ready_timeout=600,
                    ),
                    scenario, a, workdir, procs,
                )
        finally:
            for proc in reversed(procs):
                proc.stop()
    bare = results.get(BARE.label)
    print(f"\n{a.scenario}, c={a.concurrency}, {a.requests} counted requests per target (callgrind, user-space instructions)")
    print("| target | instructions / request | ÷ bare relay |\n|---|---|---|")
    for label, per in results.items():
        print(f"| {label} | {per:,.0f} | {per / bare:.2f} |" if bare else f"| {label} | {per:,.0f} | – |")
    if a.before:
        before, after = (v for k, v in results.items() if k != BARE.label)
        print(f"\nafter ÷ before: {after / before:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
