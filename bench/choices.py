"""Library choices by measurement: the same bare relay (bench/bare_proxy.py) under the same load.

  upstream client: aiohttp vs httpx vs pyreqwest (server: uvicorn + httptools + uvloop)
  server:          uvicorn(httptools+uvloop) vs granian (ASGI, uvloop)   (client: aiohttp)

The relay is pinned to CPU 0; the mock upstream and wrk to CPU 1 (as in bench.py). Each
configuration gets a 1 s warm-up and one fixed-duration wrk run per workload. Granian and
pyreqwest are skipped if they are not installed (`.venv/bin/pip install granian pyreqwest`). Runs in well under 2 minutes by default.

    .venv/bin/python bench/choices.py [--duration 8] [--concurrency 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from load import BY_NAME, run_wrk
from procs import ForeignLoad, free_port, http, log, pin_self, port_open, start, taskset, wait_until
from targets import BENCH_DIR, HOST, UPSTREAM_KEY, arrangements, clean_env, start_mock

CONFIGS = [
    # name, server, client
    ("uvicorn + aiohttp", "uvicorn", "aiohttp"),
    ("uvicorn + httpx", "uvicorn", "httpx"),
    ("uvicorn + pyreqwest", "uvicorn", "pyreqwest"),
    ("granian + aiohttp", "granian", "aiohttp"),
]
WORKLOADS = [("chat (non-stream)", BY_NAME["chat"]), ("chat (stream)", BY_NAME["stream"])]


def main() -> int:
    p = argparse.ArgumentParser(description="aiohttp vs httpx vs pyreqwest, uvicorn vs granian, by measurement")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not shutil.which("wrk"):
        p.error("wrk is not installed (bash bench/run.sh installs it)")
    arr = arrangements()["one-core"]
    pin_self(arr.load)
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-choices-"))
    noise = ForeignLoad()
    env = clean_env()
    mock = start_mock(arr, tmp, 0.0)
    mock_url = mock.url
    results: dict[str, dict[str, object]] = {}
    chat = BY_NAME["chat"]
    try:
        granian = Path(sys.executable).parent / "granian"
        for name, server, client in CONFIGS:
            if server == "granian" and not granian.exists():
                log(f"{name}: granian not installed, skipped")
                continue
            if client == "pyreqwest" and importlib.util.find_spec("pyreqwest") is None:
                log(f"{name}: pyreqwest not installed, skipped")
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
            relay = start(f"relay-{server}-{client}", [*taskset(arr.server), *cmd], renv, BENCH_DIR, tmp)
            try:
                wait_until(lambda p=port: port_open(p), relay, name)
                url = f"http://{HOST}:{port}/v1/chat/completions"
                status, body = http("POST", url, chat.body_bytes(), chat.headers(None))
                if status != 200:
                    log(f"{name}: probe answered {status}: {body[:200]!r}; skipped")
                    results[name] = {"error": f"probe {status}"}
                    continue
                run_wrk(url, chat, 16, 1, None, cpus=arr.load, workdir=tmp)  # warm-up
                row: dict[str, object] = {}
                for wname, scenario in WORKLOADS:
                    r = run_wrk(url, scenario, a.concurrency, a.duration, None, cpus=arr.load, workdir=tmp)
                    row[wname] = r
                    log(
                        f"{name} / {wname}: {r.get('rps', 0):.0f} req/s p50 {r.get('p50_ms', 0):.2f} ms "
                        f"p99 {r.get('p99_ms', 0):.2f} ms non2xx {r.get('non2xx')} sockerr {r.get('socket_errors')}"
                    )
                results[name] = row
            finally:
                relay.stop()
    finally:
        if mock.proc:
            mock.proc.stop()

    print(
        f"### Library choices — {arr.description}; "
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
