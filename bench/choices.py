"""Library choices by measurement: the same bare relay (bench/bare_proxy.py) under the same load.

  upstream client: aiohttp vs httpx          (server: uvicorn + httptools + uvloop)
  server:          uvicorn(httptools+uvloop) vs granian (ASGI, uvloop)   (client: aiohttp)

The relay is pinned to CPU 0; the mock upstream and wrk to CPU 1 (as in bench.py). Each
configuration gets a 1 s warm-up and one fixed-duration wrk run per workload. Granian is skipped
if it is not installed (`.venv/bin/pip install granian`). Runs in well under 2 minutes by default.

    .venv/bin/python bench/choices.py [--duration 8] [--concurrency 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import (
    BENCH_DIR,
    HOST,
    LOAD_CPU,
    SERVER_CPU,
    UPSTREAM_KEY,
    VENV_BIN,
    ForeignLoad,
    free_port,
    http,
    log,
    lua_body,
    port_open,
    run_wrk,
    sentinel_env_names,
    start,
    taskset,
    wait_until,
)

CONFIGS = [
    # name, server, client
    ("uvicorn + aiohttp", "uvicorn", "aiohttp"),
    ("uvicorn + httpx", "uvicorn", "httpx"),
    ("granian + aiohttp", "granian", "aiohttp"),
]
WORKLOADS = [("chat (non-stream)", "chat.lua"), ("chat (stream)", "stream.lua")]


def main() -> int:
    p = argparse.ArgumentParser(description="aiohttp vs httpx, uvicorn vs granian, by measurement")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not shutil.which("wrk"):
        p.error("wrk is not installed (bash bench/run.sh installs it)")
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-choices-"))
    noise = ForeignLoad()
    env = {k: v for k, v in os.environ.items() if k.upper() not in sentinel_env_names()}
    mock_port = free_port()
    mock = start(
        "mock",
        [
            *taskset(LOAD_CPU),
            str(VENV_BIN / "sentinel"),
            "mock-upstream",
            "--host",
            HOST,
            "--port",
            str(mock_port),
        ],
        env,
        tmp,
        tmp,
    )
    mock_url = f"http://{HOST}:{mock_port}"
    results: dict[str, dict[str, object]] = {}
    try:
        wait_until(
            lambda: (
                http("POST", mock_url + "/v1/chat/completions", lua_body("chat.lua"), UPSTREAM_KEY)[0] == 200
            ),
            mock,
            "the mock upstream",
        )
        granian = VENV_BIN / "granian"
        for name, server, client in CONFIGS:
            if server == "granian" and not granian.exists():
                log(f"{name}: granian not installed, skipped")
                continue
            port = free_port()
            renv = {
                **env,
                "BARE_UPSTREAM": mock_url,
                "BARE_UPSTREAM_KEY": UPSTREAM_KEY,
                "BARE_CLIENT": client,
            }
            if server == "uvicorn":
                cmd = [sys.executable, str(BENCH_DIR / "bare_proxy.py"), "--port", str(port)]
            else:
                cmd = [
                    str(granian),
                    "--interface",
                    "asgi",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--loop",
                    "uvloop",
                    "--log-level",
                    "warning",
                    "--no-ws",
                    "bare_proxy:app",
                ]
            relay = start(f"relay-{server}-{client}", [*taskset(SERVER_CPU), *cmd], renv, BENCH_DIR, tmp)
            try:
                wait_until(lambda p=port: port_open(p), relay, name)
                url = f"http://{HOST}:{port}/v1/chat/completions"
                status, body = http("POST", url, lua_body("chat.lua"))
                if status != 200:
                    log(f"{name}: probe answered {status}: {body[:200]!r}; skipped")
                    results[name] = {"error": f"probe {status}"}
                    continue
                run_wrk(url, "chat.lua", 16, 1, None)  # warm-up
                row: dict[str, object] = {}
                for wname, script in WORKLOADS:
                    r = run_wrk(url, script, a.concurrency, a.duration, None)
                    row[wname] = r
                    log(
                        f"{name} / {wname}: {r.get('rps', 0):.0f} req/s p50 {r.get('p50_ms', 0):.2f} ms "
                        f"p99 {r.get('p99_ms', 0):.2f} ms non2xx {r.get('non2xx')} sockerr {r.get('socket_errors')}"
                    )
                results[name] = row
            finally:
                relay.stop()
    finally:
        mock.stop()

    print(
        f"### Library choices — bare relay on CPU {SERVER_CPU}, mock + wrk on CPU {LOAD_CPU}, "
        f"wrk -t1 -c{a.concurrency}, {a.duration:g} s per run"
    )
    nz = noise.foreign_pct()
    results["_noise"] = nz  # type: ignore[assignment]
    print(
        f"Other processes on the machine during the run: {nz['foreign_cpu_pct_of_one_core']:.0f}% of one core on "
        f"average (load avg {nz['loadavg_start']:.2f} → {nz['loadavg_end']:.2f})"
        + (" — **noisy, re-run on a quiet machine**" if nz["foreign_cpu_pct_of_one_core"] > 15 else "")
    )
    print()
    print(
        "| relay | "
        + " | ".join(f"{w} req/s | {w} p50 ms | {w} p99 ms" for w, _ in WORKLOADS)
        + " | non-2xx |"
    )
    print("|" + "---|" * (2 + 3 * len(WORKLOADS)))
    for name, row in results.items():
        if name.startswith("_"):
            continue
        if "error" in row:
            print(f"| {name} | " + " | ".join(["–"] * 3 * len(WORKLOADS)) + f" | {row['error']} |")
            continue
        cells = []
        errs = []
        for w, _ in WORKLOADS:
            r = row[w]  # type: ignore[index]
            if "error" in r:
                cells += ["–", "–", "–"]
                errs.append(r["error"][:40])
            else:
                cells += [f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"]
                errs.append(str(r["non2xx"] + r["socket_errors"]))
        print(f"| {name} | " + " | ".join(cells) + f" | {'/'.join(errs)} |")
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"choices-{stamp}.json").write_text(json.dumps(results, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
