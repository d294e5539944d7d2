"""Two scenarios on one Sentinel, wrk bursts alternating between them: their throughput ratio.

`bench.py` runs each scenario's steps one after the other (chat, then stream, ..., native last), so
a ratio between two scenarios compares two minutes of a VM whose speed moves from minute to minute.
Here one Sentinel (as `bench.py` starts it: `targets.start_sentinel`) serves both, and short wrk
bursts at `--concurrency` alternate between them, `--pairs` times, the first scenario first in odd
pairs and second in even ones: a slow minute hits both alike. It prints each burst and the ratio of
the second scenario's mean req/s to the first's (issue 11: the native API within 15 % of `/v1`).

    python bench/alternate.py                                   # chat and native, c=64, embedded
    python bench/alternate.py --redis --pairs 6
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from load import BY_NAME, run_wrk
from procs import Proc, log
from targets import EMBEDDED, REDIS, arrangements, required_redis, start_mock, start_sentinel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", default="chat", choices=sorted(BY_NAME))
    parser.add_argument("--second", default="native", choices=sorted(BY_NAME))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per burst")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--redis", action="store_true", help="Sentinel on Redis (a private redis-server)")
    a = parser.parse_args()
    arr = arrangements()["one-core"]
    procs: list[Proc] = []
    rps: dict[str, list[float]] = {a.first: [], a.second: []}
    with tempfile.TemporaryDirectory(prefix="sentinel-alternate-") as tmp:
        workdir = Path(tmp)
        try:
            mock = start_mock(arr, workdir, 0.0)
            if mock.proc is not None:
                procs.append(mock.proc)
            redis_url = required_redis(arr, workdir, procs) if a.redis else None
            sentinel = start_sentinel(REDIS if a.redis else EMBEDDED, arr, mock.url, workdir, redis_url=redis_url)
            assert sentinel.proc is not None
            procs.append(sentinel.proc)
            for name in rps:  # warm-up, not counted
                run_wrk(sentinel.url + BY_NAME[name].path, BY_NAME[name], a.concurrency, 3, sentinel.key,
                        cpus=arr.load, workdir=workdir)
            for pair in range(a.pairs):
                order = [a.first, a.second] if pair % 2 == 0 else [a.second, a.first]
                for name in order:
                    scenario = BY_NAME[name]
                    result = run_wrk(sentinel.url + scenario.path, scenario, a.concurrency, a.duration,
                                     sentinel.key, cpus=arr.load, workdir=workdir)
                    if "error" in result or result["non2xx"] or result["socket_errors"]:
                        raise SystemExit(f"{name}: {result}")
                    rps[name].append(result["rps"])
                    log(f"pair {pair + 1}: {name} {result['rps']:,.0f} req/s")
        finally:
            for proc in reversed(procs):
                proc.stop()
    first, second = statistics.mean(rps[a.first]), statistics.mean(rps[a.second])
    print(f"\n{a.second} ÷ {a.first} at c={a.concurrency}, {a.pairs} alternating pairs of {a.duration:g} s bursts "
          f"({'Redis' if a.redis else 'embedded'}): {second:,.0f} / {first:,.0f} req/s = {second / first:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
