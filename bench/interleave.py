"""An interleaved A/B of two checkouts: both Sentinels run at once, requests alternate between them.

On a VM whose speed moves from minute to minute, two runs one after the other compare two machine
states as much as two versions. Here both versions serve at the same time, pinned to the same core
(the gateway CPU of the one-core arrangement), each with its own Redis when `--redis`, and the load
alternates between them: sequential requests one to each in turn (c=1, p50 of each), then short wrk
bursts at `--concurrency` in turn (mean req/s of each). A slow minute hits both alike.

    git worktree add --detach /tmp/before 3b4a6f9
    python bench/interleave.py --before /tmp/before                 # embedded default, chat
    python bench/interleave.py --before /tmp/before --redis --scenario stream --concurrency 16

"after" is this checkout. Sentinel runs as in `bench.py` (see `targets.start_sentinel`).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from load import BY_NAME, Scenario, run_wrk
from procs import REPO, Proc, log
from targets import EMBEDDED, REDIS, Running, arrangements, required_redis, start_mock, start_sentinel


def sequential(targets: dict[str, Running], scenario: Scenario, requests: int) -> dict[str, float]:
    """p50 ms of `requests` sequential requests to each target, alternating (the first 10 % are warm-up)."""
    conns = {}
    for name, t in targets.items():
        u = urlsplit(t.url)
        conns[name] = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    body = scenario.body_bytes()
    times: dict[str, list[float]] = {name: [] for name in targets}
    order = list(targets)
    for n in range(requests):
        for name in order if n % 2 else order[::-1]:
            started = time.perf_counter()
            conns[name].request("POST", scenario.path, body, scenario.headers(targets[name].key))
            answer = conns[name].getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"{name}: HTTP {answer.status}")
            times[name].append((time.perf_counter() - started) * 1000)
    for conn in conns.values():
        conn.close()
    return {name: statistics.median(v[len(v) // 10 :]) for name, v in times.items()}


def bursts(
    targets: dict[str, Running], scenario: Scenario, conns: int, count: int, seconds: float, cpus: str | None,
    workdir: Path,
) -> dict[str, float]:
    """Mean req/s of `count` wrk bursts at `conns` connections to each target, alternating."""
    rates: dict[str, list[float]] = {name: [] for name in targets}
    for n in range(count):
        for name in list(targets) if n % 2 else list(targets)[::-1]:
            result = run_wrk(targets[name].url + scenario.path, scenario, conns, seconds, targets[name].key,
                             cpus=cpus, workdir=workdir)  # fmt: skip
            if "error" in result or result["non2xx"] or result["socket_errors"]:
                raise SystemExit(f"{name}: {result}")
            rates[name].append(result["rps"])
    return {name: statistics.mean(v) for name, v in rates.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--redis", action="store_true", help="Sentinel on Redis (one private redis-server each)")
    parser.add_argument("--scenario", default="chat", choices=sorted(BY_NAME))
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests to each (c=1)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--bursts", type=int, default=6, help="wrk bursts to each")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one burst")
    a = parser.parse_args()
    scenario = BY_NAME[a.scenario]
    arr = arrangements()["one-core"]
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="sentinel-interleave-") as tmp:
        workdir = Path(tmp)
        try:
            mock = start_mock(arr, workdir, 0.0)
            if mock.proc is not None:
                procs.append(mock.proc)
            targets: dict[str, Running] = {}
            for name, checkout in (("before", a.before.resolve()), ("after", REPO)):
                (workdir / name).mkdir()
                redis_url = required_redis(arr, workdir / name, procs) if a.redis else None
                spec = REDIS if a.redis else EMBEDDED
                t = start_sentinel(spec, arr, mock.url, workdir / name, redis_url=redis_url, name=name,
                                   checkout=checkout)  # fmt: skip
                if t.proc is not None:
                    procs.append(t.proc)
                targets[name] = t
            log(f"sequential: {a.requests} requests to each, alternating")
            p50 = sequential(targets, scenario, a.requests)
            log(f"bursts: {a.bursts} x {a.seconds:g} s at c={a.concurrency} to each, alternating")
            rps = bursts(targets, scenario, a.concurrency, a.bursts, a.seconds, arr.load, workdir)
        finally:
            for proc in reversed(procs):
                proc.stop()
    where = "on Redis" if a.redis else "embedded"
    print(f"\n{a.scenario} {where}, before = {a.before}, after = {REPO}")
    print(f"| | c=1 p50 ms | c={a.concurrency} req/s |\n|---|---|---|")
    for name in targets:
        print(f"| {name} | {p50[name]:.2f} | {rps[name]:,.0f} |")
    print(f"| after ÷ before | {p50['after'] / p50['before']:.2f} | {rps['after'] / rps['before']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
