"""Side-by-side benchmark in one run: direct to the mock upstream, a bare relay, and Sentinel as a
user runs it (embedded default, on Redis, `--workers 1` vs `--workers 2`), plus optional memory
soak, ledger throughput on PostgreSQL and py-spy profile. Run through bench/run.sh.

Groups share a CPU arrangement: "one-core" (gateway on CPU 0, everything else on CPU 1) compares
the bare relay, Sentinel's embedded default and Sentinel on Redis; "workers" compares `--workers 1`
with `--workers 2` (and the bare relay) with the gateway allowed on every core.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import extras
import pyspy
from load import BY_NAME, SCENARIOS, run_wrk, ttfb
from procs import ForeignLoad, cpu_seconds, http, log, machine, pin_self, rss_kb
from report import report
from targets import (
    BARE,
    DIRECT,
    EMBEDDED,
    PLAN,
    PLAN_ARGS,
    REDIS,
    WORKERS1,
    WORKERS2,
    Arrangement,
    Running,
    arrangements,
    start_bare,
    start_mock,
    start_redis,
    start_sentinel,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
GROUPS: dict[str, dict[str, Any]] = {
    "one-core": {
        "title": "One core: bare relay, Sentinel embedded default (memory store, SQLite), Sentinel on Redis",
        "arrangement": "one-core",
        "targets": [DIRECT, BARE, EMBEDDED, REDIS],
    },
    "workers": {
        "title": "Every core: Sentinel on Redis, --workers 2 against --workers 1 (same arrangement, same run)",
        "arrangement": "all-cores",
        "targets": [DIRECT, BARE, WORKERS1, WORKERS2],
        "compare": ["workers2", "workers1"],
    },
}
ALL_SCENARIOS = [s.name for s in SCENARIOS] + ["ttfb"]


def scan_log(path: Path, keep: Path) -> dict[str, Any]:
    """Levels, tracebacks and warnings of a Sentinel log; its non-access lines are kept in `keep`."""
    levels: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    tracebacks = 0
    keep.parent.mkdir(parents=True, exist_ok=True)
    with open(path, errors="replace") as src, open(keep, "w") as dst:
        for line in src:
            tracebacks += line.startswith("Traceback (most recent call last)")
            try:
                rec = json.loads(line)
            except ValueError:
                dst.write(line)
                continue
            if not isinstance(rec, dict) or "level" not in rec:
                dst.write(line)
                continue
            levels[rec["level"]] += 1
            if rec.get("logger") != "sentinel.access":
                dst.write(line)
            if rec["level"] in ("warning", "error", "critical"):
                problems[f"{rec['level']}: {rec.get('logger', '')}: {str(rec.get('msg', ''))[:160]}"] += 1
    return {"levels": dict(levels), "tracebacks": tracebacks, "problems": problems.most_common(10), "kept": str(keep)}


def measure(running: Running, arr: Arrangement, a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spec = running.spec
    pid = running.pid
    assert pid is not None
    entry: dict[str, Any] = {"label": spec.label, "kind": spec.kind, "pid": pid, "rss_kb_start": rss_kb(pid)}
    entry["scenarios"] = scenarios = {}
    for sc in SCENARIOS:
        if sc.name not in a.scenarios or (spec.kind != "sentinel" and sc.upstream_path is None):
            continue
        url = running.url + (sc.path if spec.kind == "sentinel" else sc.upstream_path or "")
        status, body = http("POST", url, sc.body_bytes(), sc.headers(running.key))
        e: dict[str, Any] = {"probe_status": status, "runs": {}}
        scenarios[sc.name] = e
        if status == 404:
            e["skipped"] = f"probe answered 404: {body[:200].decode(errors='replace')}"
            log(f"{spec.label} / {sc.name}: skipped (404)")
            continue
        if status != 200:
            e["probe_body"] = body[:300].decode(errors="replace")
            log(f"{spec.label} / {sc.name}: probe answered {status} {e['probe_body']!r} (running anyway)")
        if a.warmup > 0:
            run_wrk(url, sc, 16, a.warmup, running.key, cpus=arr.load, workdir=workdir)
        for c in a.conc:
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            r = run_wrk(url, sc, c, a.duration, running.key, cpus=arr.load, workdir=workdir)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            if cpu0 is not None and cpu1 is not None and "error" not in r:
                r["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / (t1 - t0)
            e["runs"][str(c)] = r
            if "error" in r:
                log(f"{spec.label} / {sc.name} c={c}: {r['error']}")
            else:
                log(f"{spec.label} / {sc.name} c={c}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.2f} ms "
                    f"p99 {r['p99_ms']:.2f} ms non2xx {r['non2xx']} sockerr {r['socket_errors']} "
                    f"cpu {r.get('server_cpu_pct', float('nan')):.0f}%")  # fmt: skip
        if a.profile == spec.key and sc.name == a.profile_scenario:
            top = max(a.conc)
            secs = max(3, round(a.duration))
            drive = functools.partial(run_wrk, url, sc, top, secs + 1, running.key, cpus=arr.load, workdir=workdir)
            prof = pyspy.record(pid, secs, workdir / "profile.raw", arr.load, drive)
            if prof:
                a.profile_result = {**prof, "label": spec.label, "concurrency": top, "scenario": sc.name}
    if "ttfb" in a.scenarios and "skipped" not in scenarios.get("stream", {}):
        path = BY_NAME["stream"].path if spec.kind == "sentinel" else BY_NAME["stream"].upstream_path
        entry["ttfb"] = r = ttfb(running.url + (path or ""), running.key, a.ttfb_requests, a.ttfb_chunk_delay_ms,
                                 budget_s=max(30.0, a.duration * 3))  # fmt: skip
        log(f"{spec.label} / ttfb: n={r['n']} p50 {r['ttfb_p50_ms']:.2f} ms p99 {r['ttfb_p99_ms']:.2f} ms")
    entry["rss_kb_end"] = rss_kb(pid)
    return entry


def run_group(name: str, a: argparse.Namespace, tmp: Path, run_dir: Path) -> dict[str, Any]:
    spec = GROUPS[name]
    arr = arrangements()[spec["arrangement"]]
    pin_self(arr.load)
    gdir = tmp / name
    gdir.mkdir()
    group: dict[str, Any] = {
        "title": spec["title"], "arrangement": asdict(arr), "order": [], "targets": {},
        "compare": spec.get("compare"), "scenarios": [s for s in a.scenarios if s in BY_NAME],
    }  # fmt: skip
    log(f"group {name}: {arr.description}")
    mock = start_mock(arr, gdir, a.mock_latency_ms)
    redis = start_redis(arr, gdir) if any(t.redis for t in spec["targets"]) else None
    try:
        for target in spec["targets"]:
            if target.redis and redis is None:
                log(f"{target.label}: skipped (redis-server not installed)")
                continue
            if target.kind == "direct":
                running = mock
            elif target.kind == "bare":
                running = start_bare(arr, mock.url, gdir)
            else:
                running = start_sentinel(target, arr, mock.url, gdir, redis_url=redis[1] if redis else None)
            try:
                entry = measure(running, arr, a, gdir)
            finally:
                if running is not mock and running.proc is not None:
                    status = running.proc.stop()
                    if target.kind == "sentinel":
                        entry["exit_status"] = status
                        entry["log"] = scan_log(running.proc.log_path, run_dir / "logs" / f"{name}-{target.key}.log")
            group["targets"][target.key] = entry
            group["order"].append(target.key)
    finally:
        if redis:
            redis[0].stop()
        if mock.proc:
            mock.proc.stop()
    return group


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Sentinel side-by-side benchmark (use bench/run.sh)")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {','.join(GROUPS)}")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help=f"comma list of {','.join(ALL_SCENARIOS)}")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    p.add_argument("--concurrency", default="1,16,64", help="comma list of wrk connection counts")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of c=16 warm-up per target and scenario")
    p.add_argument("--mock-latency-ms", type=float, default=0.0, help="mock upstream delay before every response")
    p.add_argument("--ttfb-requests", type=int, default=200, help="sequential streamed requests per target")
    p.add_argument("--ttfb-chunk-delay-ms", type=float, default=5.0, help="mock delay between events (TTFB)")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="memory soak: chat at c=64 for SECONDS")
    p.add_argument("--soak-target", choices=["embedded", "redis"], default="embedded")
    p.add_argument("--ledger", nargs="?", const="postgresql://postgres@127.0.0.1:5432/test", default=None,
                   metavar="ADMIN_DSN", help="ledger records/s on PostgreSQL with --workers 2 (default DSN: local)")  # fmt: skip
    p.add_argument("--ledger-seconds", type=float, default=30.0, help="load duration of the ledger step")
    p.add_argument("--profile", nargs="?", const="embedded", default=None, metavar="TARGET",
                   help="py-spy a Sentinel target (embedded, redis) during an extra run at the top c")  # fmt: skip
    p.add_argument("--profile-scenario", default="chat", metavar="SCENARIO", help="the scenario --profile records")
    p.add_argument("--json", default=None, metavar="PATH", help="also save the results here")
    a = p.parse_args(argv)
    a.groups = [g.strip() for g in a.groups.split(",") if g.strip()]
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    for bad, known in ((set(a.groups) - set(GROUPS), GROUPS), (set(a.scenarios) - set(ALL_SCENARIOS), ALL_SCENARIOS)):
        if bad:
            p.error(f"unknown: {', '.join(sorted(bad))} (known: {', '.join(known)})")
    a.conc = [int(c) for c in a.concurrency.split(",") if c.strip()]
    a.profile_result = None
    if not shutil.which("wrk"):
        p.error("wrk is not installed (bench/run.sh installs it)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS_DIR / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-bench-"))
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(f"load average {load_before:.2f}: the machine is not quiet, numbers will be noisy")
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
        "argv": sys.argv[1:],
        "machine": machine(),
        "settings": {
            "duration_s": a.duration, "warmup_s": a.warmup, "concurrency": a.conc, "scenarios": a.scenarios,
            "mock_latency_ms": a.mock_latency_ms, "ttfb_requests": a.ttfb_requests,
            "ttfb_chunk_delay_ms": a.ttfb_chunk_delay_ms,
        },  # fmt: skip
        "sentinel_config": {
            "description": (
                "`python -m sentinel serve` with the default log level (info: JSON access log on, to a file), "
                f"API-key auth, the benchmark user on a plan set with `sentinel plans set {PLAN} {' '.join(PLAN_ARGS)}` "
                "and `sentinel users set-plan`; SQLite database (the default); the Redis targets use a private "
                "redis-server with AOF (appendfsync everysec), flushed before each target."
            ),
            "plan": PLAN_ARGS,
        },
        "groups": {},
    }
    noise = ForeignLoad()
    try:
        for name in a.groups:
            results["groups"][name] = run_group(name, a, tmp, run_dir)
        if a.soak > 0:
            results["soak"] = extras.soak(a.soak, {"embedded": EMBEDDED, "redis": REDIS}[a.soak_target], tmp, run_dir)
        if a.ledger:
            results["ledger"] = extras.ledger(a.ledger, a.ledger_seconds, WORKERS2, tmp, run_dir)
    except KeyboardInterrupt:
        log("interrupted")
    results["noise"] = noise.foreign_pct()
    if a.profile_result:
        results["profile"] = a.profile_result
        shutil.copy(a.profile_result["raw"], run_dir / "profile.raw")
    text = report(results)
    print(text)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (run_dir / "report.md").write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"results in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
