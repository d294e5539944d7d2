"""Side-by-side benchmark: direct to the mock upstream vs a bare relay vs Sentinel.

Layout on a 2-core box: Sentinel (and the bare relay) pinned to core 0; the mock upstream, wrk and
this driver pinned to core 1. Every load step is a fixed-duration wrk run (-t1 -cN --latency with
a Lua done() that prints percentiles as JSON). Streaming time-to-first-byte is measured by a small
aiohttp client doing N sequential streamed requests. Run through bench/run.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent  # run with the repo's .venv python
WRK_DIR = BENCH_DIR / "wrk"
RESULTS_DIR = BENCH_DIR / "results"
UPSTREAM_KEY = "bench-upstream-key"
HOST = "127.0.0.1"

SERVER_CPU = "0"  # Sentinel / bare relay
LOAD_CPU = "1"  # mock upstream, wrk, this driver

# scenario -> (lua script, path on the mock / bare relay, path on Sentinel)
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "chat": ("chat.lua", "/v1/chat/completions", "/v1/chat/completions"),
    "stream": ("stream.lua", "/v1/chat/completions", "/v1/chat/completions"),
    # The native API only exists on Sentinel; its direct/bare columns reuse the "chat" rows.
    "native": ("native.lua", "", "/native/v1/chat/completions"),
}
ALL_SCENARIOS = ["chat", "stream", "native", "ttfb"]
TARGETS = ["direct", "bare", "sentinel"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def taskset(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        try:  # the whole process group this script created (granian has worker children)
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def start(name: str, cmd: list[str], env: dict[str, str], cwd: Path, logdir: Path) -> Proc:
    log_path = logdir / f"{name}.log"
    out = open(log_path, "wb")  # noqa: SIM115 - owned by the child
    # taskset execs the program, so popen.pid is the server's own pid (RSS, py-spy).
    popen = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    out.close()
    return Proc(name, popen, log_path)


def http(
    method: str, url: str, body: bytes | None = None, auth: str | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


def wait_until(check, proc: Proc, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(
                f"{proc.name} exited while waiting for {what}; log: {proc.log_path}\n"
                + proc.log_path.read_text(errors="replace")[-3000:]
            )
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}; log: {proc.log_path}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all threads) from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class ForeignLoad:
    """CPU used on the machine by processes other than this script and its children (noise check).

    busy jiffies from /proc/stat minus os.times() of this process and its waited-for children;
    read `foreign_pct()` after every child has been waited for."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.own0 = self._own()
        self.load0 = os.getloadavg()[0]

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def foreign_pct(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.t0
        foreign = (self._busy() - self.busy0) - (self._own() - self.own0)
        return {
            "foreign_cpu_pct_of_one_core": round(max(0.0, 100.0 * foreign / elapsed), 1),
            "loadavg_start": self.load0,
            "loadavg_end": os.getloadavg()[0],
        }


def lua_body(script: str) -> bytes:
    """The JSON body a wrk script sends (probes and the TTFB client use the same one)."""
    text = (WRK_DIR / script).read_text()
    m = re.search(r"bench_request\((.*)\)\s*$", text, re.S)
    assert m, script
    return "".join(re.findall(r"'([^']*)'", m.group(1))).encode()


def sentinel_env_names() -> set[str]:
    """Every environment variable Sentinel's Settings reads (removed from the inherited env)."""
    try:
        from sentinel.config import Settings

        names = set()
        for f in Settings.model_fields.values():
            alias = f.validation_alias
            for choice in getattr(alias, "choices", []) or []:
                if isinstance(choice, str):
                    names.add(choice.upper())
        return names
    except Exception:  # noqa: BLE001 - best effort
        return set()


# --- wrk -----------------------------------------------------------------------------------------
def run_wrk(
    url: str, script: str, conns: int, duration: float, auth: str | None, timeout_s: int = 10
) -> dict[str, Any]:
    env = {**os.environ, "BENCH_AUTH": auth or ""}
    cmd = [
        *taskset(LOAD_CPU),
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(WRK_DIR / script),
        url,
    ]
    try:
        cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        return {"error": "wrk did not finish in time"}
    line = next((ln for ln in cp.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        return {"error": f"wrk exit {cp.returncode}: {cp.stderr.strip() or cp.stdout.strip()}"[:500]}
    d = json.loads(line[len("BENCH_JSON ") :])
    secs = d["duration_us"] / 1e6
    lat = d["latency_us"]
    non2xx = 0
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", cp.stdout)
    if m:
        non2xx = int(m.group(1))
    e = d["errors"]
    return {
        "requests": d["requests"],
        "rps": d["requests"] / secs if secs else 0.0,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "non2xx": non2xx,
        "socket_errors": e["connect"] + e["read"] + e["write"] + e["timeout"],
        "errors": e,
    }


# --- TTFB ----------------------------------------------------------------------------------------
async def _ttfb(
    url: str, body: bytes, auth: str | None, n: int, warmup: int, budget_s: float
) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    first: list[float] = []
    total: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + budget_s
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for i in range(warmup + n):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                chunk = await resp.content.readany()
                t1 = time.perf_counter()
                while chunk:
                    chunk = await resp.content.readany()
                t2 = time.perf_counter()
                if i >= warmup:
                    statuses[resp.status] += 1
                    if resp.status == 200:
                        first.append(t1 - t0)
                        total.append(t2 - t0)
    return {
        "n": len(first),
        "statuses": dict(statuses),
        "ttfb_p50_ms": pct(first, 50) * 1000,
        "ttfb_p99_ms": pct(first, 99) * 1000,
        "total_p50_ms": pct(total, 50) * 1000,
        "total_p99_ms": pct(total, 99) * 1000,
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))  # nearest-rank
    return s[k]


# --- py-spy --------------------------------------------------------------------------------------
def summarize_raw_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Thread, self and inclusive shares from py-spy's collapsed-stack ("raw", --threads) output.

    Shares are of all non-idle samples of the process (every thread)."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    thread_c: Counter[str] = Counter()
    thread_kind: dict[str, str] = {}
    pkg_c: Counter[str] = Counter()
    owner_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        raw = stack.split(";")
        thread = next((f for f in raw if f.startswith("thread ")), "thread ?")
        frames = [shorten_frame(f) for f in raw if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        thread_c[thread] += n
        joined = " ".join(frames)
        if "aiosqlite/" in joined:
            thread_kind.setdefault(thread, "aiosqlite worker thread")
        elif "uvicorn/" in joined or "sentinel/" in joined or "asyncio/" in joined:
            thread_kind[thread] = "event loop (main) thread"
        self_c[frames[-1]] += n
        pkg_c[frame_package(frames[-1])] += n
        owner = next(
            (
                f
                for f in reversed(frames)
                if f.startswith("sentinel/")
                and not f.startswith(("sentinel/cli.py", "sentinel/server.py", "sentinel/app.py"))
            ),
            None,
        )
        if owner is None:
            if "aiosqlite/" in joined:
                owner = "(aiosqlite worker thread: sqlite3 calls)"
            elif frames[0].startswith("sqlalchemy/"):
                owner = "(SQLAlchemy in a greenlet: DB statements; the sentinel/ caller is not on this stack)"
            else:
                owner = f"(no sentinel/ frame; leaf in {frame_package(frames[-1])})"
        owner_c[owner] += n
        for f in set(frames):
            incl_c[f] += n

    def rows(c: Counter[str], only_sentinel: bool = False) -> list[tuple[str, float]]:
        skip = ("sentinel/cli.py", "sentinel/server.py", "sentinel/app.py")
        items = [
            (k, v)
            for k, v in c.most_common()
            if not only_sentinel or (k.startswith("sentinel/") and not k.startswith(skip))
        ]
        return [(k, 100.0 * v / total) for k, v in items[:top]] if total else []

    threads: Counter[str] = Counter()
    for t, n in thread_c.items():
        threads[thread_kind.get(t, t)] += n
    return {
        "samples": total,
        "threads": [(k, 100.0 * v / total) for k, v in threads.most_common()] if total else [],
        "self": rows(self_c),
        "self_by_package": rows(pkg_c),
        "deepest_sentinel_frame": rows(owner_c),
        "inclusive_sentinel": rows(incl_c, only_sentinel=True),
    }


def frame_package(frame: str) -> str:
    """`sqlalchemy/sql/compiler.py:f` -> `sqlalchemy`; stdlib modules -> `stdlib:<module>`."""
    file = frame.split(":", 1)[0]
    if "/" in file:
        return file.split("/", 1)[0]
    return f"stdlib:{file}" if file.endswith(".py") else file or "?"


def shorten_frame(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` -> `pkg/mod.py:func`."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, file = m.groups()
    for marker in ("site-packages/", str(REPO) + "/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{file}:{func}"


# --- the run -------------------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    auth: dict[str, str | None] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def setup(self) -> None:
        a = self.args
        mock_port, sentinel_port, bare_port = free_port(), free_port(), free_port()
        base_env = {k: v for k, v in os.environ.items() if k.upper() not in sentinel_env_names()}
        mock_env = {**base_env}
        self.procs["mock"] = start(
            "mock",
            [
                *taskset(LOAD_CPU),
                str(VENV_BIN / "sentinel"),
                "mock-upstream",
                "--host",
                HOST,
                "--port",
                str(mock_port),
                "--latency-ms",
                str(a.mock_latency_ms),
            ],
            mock_env,
            self.tmp,
            self.tmp,
        )
        mock = f"http://{HOST}:{mock_port}"
        chat_body = lua_body("chat.lua")
        wait_until(
            lambda: http("POST", mock + "/v1/chat/completions", chat_body, UPSTREAM_KEY)[0] == 200,
            self.procs["mock"],
            "the mock upstream",
        )

        self.sentinel_env = {
            **base_env,
            "OPENAI_API_URL": f"{mock}/v1",
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "ANTHROPIC_API_URL": mock,
            "ANTHROPIC_API_KEY": "bench",
            "DATABASE_URL": f"sqlite+aiosqlite:///{self.tmp}/sentinel.db",
            "SENTINEL_LOG_LEVEL": a.log_level,
            "SENTINEL_HOST": HOST,
            "SENTINEL_PORT": str(sentinel_port),
            "SENTINEL_SHUTDOWN_TIMEOUT_SECONDS": "5",
            "DOCS_API_KEY": "bench-docs",
            "DEFAULT_PLAN": a.plan,
        }
        if a.redis:
            self.sentinel_env["REDIS_URL"] = a.redis
        cp = subprocess.run(
            [str(VENV_BIN / "sentinel"), "keys", "create", "bench-user"],
            env=self.sentinel_env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if cp.returncode != 0 or not cp.stdout.strip():
            raise SystemExit(f"sentinel keys create failed ({cp.returncode}): {cp.stderr}")
        key = cp.stdout.strip().splitlines()[-1].strip()
        self.procs["sentinel"] = start(
            "sentinel",
            [*taskset(SERVER_CPU), str(VENV_BIN / "sentinel"), "serve"],
            self.sentinel_env,
            self.tmp,
            self.tmp,
        )
        sentinel = f"http://{HOST}:{sentinel_port}"
        wait_until(
            lambda: http("GET", sentinel + "/health/live")[0] == 200,
            self.procs["sentinel"],
            "Sentinel /health/live",
        )

        bare_env = {
            **base_env,
            "BARE_UPSTREAM": mock,
            "BARE_UPSTREAM_KEY": UPSTREAM_KEY,
            "BARE_CLIENT": "aiohttp",
        }
        self.procs["bare"] = start(
            "bare",
            [
                *taskset(SERVER_CPU),
                sys.executable,
                str(BENCH_DIR / "bare_proxy.py"),
                "--port",
                str(bare_port),
            ],
            bare_env,
            self.tmp,
            self.tmp,
        )
        wait_until(lambda: port_open(bare_port), self.procs["bare"], "the bare relay")

        self.urls = {"direct": mock, "bare": f"http://{HOST}:{bare_port}", "sentinel": sentinel}
        self.auth = {"direct": UPSTREAM_KEY, "bare": None, "sentinel": key}
        self.results["setup"] = {
            "pins": {
                "sentinel": SERVER_CPU,
                "bare": SERVER_CPU,
                "mock": LOAD_CPU,
                "wrk": LOAD_CPU,
                "driver": LOAD_CPU,
            },
            "sentinel_log_level": a.log_level,
            "redis_url": a.redis,
            "default_plan": a.plan,
            "mock_latency_ms": a.mock_latency_ms,
            "ttfb_chunk_delay_ms": a.ttfb_chunk_delay_ms,
            "duration_s": a.duration,
            "concurrency": a.conc,
            "sentinel_pid": self.procs["sentinel"].pid,
            "sentinel_rss_kb_after_start": rss_kb(self.procs["sentinel"].pid),
        }
        log(
            f"mock {mock} (cpu {LOAD_CPU}), sentinel {sentinel} (cpu {SERVER_CPU}, pid {self.procs['sentinel'].pid}), "
            f"bare {self.urls['bare']} (cpu {SERVER_CPU}); logs in {self.tmp}"
        )

    def url(self, target: str, scenario: str) -> str:
        script, plain_path, sentinel_path = SCENARIOS[scenario]
        return self.urls[target] + (sentinel_path if target == "sentinel" else plain_path)

    def load(self) -> None:
        a = self.args
        load: dict[str, Any] = {}
        self.results["load"] = load
        for scenario in [s for s in a.scenarios if s in SCENARIOS]:
            script = SCENARIOS[scenario][0]
            targets = ["sentinel"] if scenario == "native" else TARGETS
            for target in targets:
                url = self.url(target, scenario)
                status, body = http("POST", url, lua_body(script), self.auth[target])
                entry: dict[str, Any] = {"probe_status": status}
                load.setdefault(scenario, {})[target] = entry
                if status == 404:
                    entry["skipped"] = f"probe answered 404: {body[:200].decode(errors='replace')}"
                    log(f"{scenario}/{target}: SKIPPED (404 at {url})")
                    continue
                if status != 200:
                    entry["probe_body"] = body[:300].decode(errors="replace")
                    log(
                        f"{scenario}/{target}: probe answered {status} {entry['probe_body']!r} (running anyway)"
                    )
                if a.warmup > 0:
                    run_wrk(url, script, 16, a.warmup, self.auth[target])
                pid = self.procs[target if target != "direct" else "mock"].pid
                for c in a.conc:
                    cpu0, t0 = cpu_seconds(pid), time.monotonic()
                    r = run_wrk(url, script, c, a.duration, self.auth[target])
                    cpu1, t1 = cpu_seconds(pid), time.monotonic()
                    if cpu0 is not None and cpu1 is not None and "error" not in r:
                        r["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / (t1 - t0)
                    entry[str(c)] = r
                    if "error" in r:
                        log(f"{scenario}/{target} c={c}: {r['error']}")
                    else:
                        log(
                            f"{scenario}/{target} c={c}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.2f} ms "
                            f"p99 {r['p99_ms']:.2f} ms non2xx {r['non2xx']} sockerr {r['socket_errors']} "
                            f"server cpu {r.get('server_cpu_pct', float('nan')):.0f}%"
                        )
                    if target == "sentinel" and scenario == "chat" and c == max(a.conc) and a.profile:
                        self.profile(url, script, c)

    def profile(self, url: str, script: str, conns: int) -> None:
        """py-spy over Sentinel during one extra wrk run (the profiled run's numbers are not reported)."""
        pyspy = VENV_BIN / "py-spy"
        if not pyspy.exists():
            log("py-spy not installed in the venv (.venv/bin/pip install py-spy): no profile")
            return
        out = self.tmp / "profile.raw"
        secs = max(3, round(self.args.duration))
        pid = self.procs["sentinel"].pid
        log(f"profiling Sentinel (pid {pid}) for {secs}s at c={conns} with py-spy")
        spy = subprocess.Popen(
            [
                *taskset(LOAD_CPU),
                str(pyspy),
                "record",
                "-d",
                str(secs),
                "-p",
                str(pid),
                "-r",
                "200",
                "--nonblocking",
                "--threads",
                "-F",
                "--format",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        run_wrk(url, script, conns, secs + 1, self.auth["sentinel"])
        try:
            _, err = spy.communicate(timeout=secs + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not out.exists():
            log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            return
        summary = summarize_raw_profile(out)
        summary["raw"] = str(out)
        self.results["profile"] = summary

    def ttfb(self) -> None:
        a = self.args
        # A per-event delay in the mock (directive in the user text, so it survives any relay) makes
        # TTFB distinct from the full stream time: a relay that buffers would show TTFB ~ total.
        body = lua_body("stream.lua")
        if a.ttfb_chunk_delay_ms > 0:
            payload = json.loads(body)
            payload["messages"][-1]["content"] += f" #mock:chunk_delay_ms={a.ttfb_chunk_delay_ms:g}"
            body = json.dumps(payload).encode()
        res: dict[str, Any] = {}
        for target in TARGETS:
            url = self.url(target, "stream")
            res[target] = asyncio.run(
                _ttfb(url, body, self.auth[target], a.ttfb_requests, 10, budget_s=max(30.0, a.duration * 3))
            )
            r = res[target]
            log(
                f"ttfb/{target}: n={r['n']} ttfb p50 {r['ttfb_p50_ms']:.2f} ms p99 {r['ttfb_p99_ms']:.2f} ms statuses {r['statuses']}"
            )
        self.results["ttfb"] = res

    def soak(self) -> None:
        a = self.args
        pid = self.procs["sentinel"].pid
        url = self.url("sentinel", "chat")
        samples: list[tuple[float, int | None]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(1.0) and time.monotonic() - t0 < a.soak + 120:
                samples.append((round(time.monotonic() - t0, 1), rss_kb(pid)))

        start_rss = rss_kb(pid)
        log(f"soak: {a.soak}s at c=64 through Sentinel (chat), RSS at start {start_rss} kB")
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        r = run_wrk(url, "chat.lua", 64, a.soak, self.auth["sentinel"])
        stop.set()
        th.join(5)
        end_rss = rss_kb(pid)
        peak = max([v for _, v in samples if v is not None] + [end_rss or 0, start_rss or 0])
        self.results["soak"] = {
            "duration_s": a.soak,
            "wrk": r,
            "rss_start_kb": start_rss,
            "rss_end_kb": end_rss,
            "rss_peak_kb": peak,
            "rss_samples": samples,
        }
        log(f"soak: RSS start {start_rss} kB end {end_rss} kB peak {peak} kB; {r.get('rps', 0):.0f} req/s")

    def scan_sentinel_log(self) -> None:
        path = self.procs["sentinel"].log_path
        text = path.read_text(errors="replace") if path.exists() else ""
        levels: Counter[str] = Counter()
        messages: Counter[str] = Counter()
        tracebacks = text.count("Traceback (most recent call last)")
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "level" in rec:
                levels[rec["level"]] += 1
                if rec["level"] in ("warning", "error", "critical"):
                    messages[f"{rec['level']}: {rec.get('logger', '')}: {str(rec.get('msg', ''))[:160]}"] += 1
        self.results["sentinel_log"] = {
            "path": str(path),
            "levels": dict(levels),
            "tracebacks": tracebacks,
            "messages": messages.most_common(10),
        }

    def teardown(self) -> None:
        for name in ("bare", "sentinel", "mock"):
            if name in self.procs:
                self.procs[name].stop()


# --- report --------------------------------------------------------------------------------------
def f2(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.2f}"


def fr(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


Row = dict[str, Any] | None


def ok(r: Row) -> Row:
    return r if r and "error" not in r else None


def v(r: Row, k: str) -> float | None:
    return r[k] if r else None


def ratio(x: Row, y: Row) -> str:
    return f"{x['rps'] / y['rps']:.2f}" if x and y and y["rps"] else "–"


def diff(x: Row, y: Row) -> str:
    return f"{x['p50_ms'] - y['p50_ms']:+.2f}" if x and y else "–"


def cnt(rows: tuple[Row, ...], k: str) -> str:
    return "/".join("–" if r is None or k not in r else f"{r[k]:.0f}" for r in rows)


def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    s = results.get("setup", {})
    out.append(
        f"### Sentinel benchmark — {results.get('started')}, {s.get('duration_s')} s per step, "
        f"wrk -t1, Sentinel/bare on CPU {s.get('pins', {}).get('sentinel')}, mock+wrk on CPU "
        f"{s.get('pins', {}).get('mock')}, SENTINEL_LOG_LEVEL={s.get('sentinel_log_level')}, "
        f"REDIS_URL={s.get('redis_url') or 'unset'}, mock latency {s.get('mock_latency_ms')} ms"
    )
    noise = results.get("noise")
    if noise:
        pct_ = noise["foreign_cpu_pct_of_one_core"]
        warn = (
            " — **other processes were busy: numbers are noisy, re-run on a quiet machine**"
            if pct_ > 15
            else ""
        )
        out.append(
            f"Other processes on the machine during the run: {pct_:.0f}% of one core on average "
            f"(load avg {noise['loadavg_start']:.2f} → {noise['loadavg_end']:.2f}){warn}"
        )
    out.append("")
    load = results.get("load", {})
    if load:
        out.append(
            "| scenario | c | direct req/s | bare req/s | sentinel req/s | S/D | S/B | direct p50 ms | bare p50 ms "
            "| sentinel p50 ms | +p50 vs direct | +p50 vs bare | direct p99 ms | bare p99 ms | sentinel p99 ms "
            "| non-2xx D/B/S | sock err D/B/S | CPU% D/B/S |"
        )
        out.append("|" + "---|" * 18)
        skipped: list[str] = []
        for scenario, targets in load.items():
            for t, e in targets.items():
                if "skipped" in e:
                    skipped.append(f"{scenario}/{t}: {e['skipped'][:80]}")
            if "skipped" in targets.get("sentinel", {}):
                continue
            conc = [k for k in targets.get("sentinel", {}) if k.isdigit()]
            for c in conc:
                src = {
                    t: (load.get("chat", {}) if scenario == "native" and t != "sentinel" else targets)
                    for t in TARGETS
                }
                d, b, se = (ok(src[t].get(t, {}).get(c)) for t in TARGETS)
                name = scenario + (" (D/B = chat)" if scenario == "native" else "")
                out.append(
                    f"| {name} | {c} | {fr(v(d, 'rps'))} | {fr(v(b, 'rps'))} | {fr(v(se, 'rps'))} | {ratio(se, d)} "
                    f"| {ratio(se, b)} | {f2(v(d, 'p50_ms'))} | {f2(v(b, 'p50_ms'))} | {f2(v(se, 'p50_ms'))} "
                    f"| {diff(se, d)} | {diff(se, b)} | {f2(v(d, 'p99_ms'))} | {f2(v(b, 'p99_ms'))} "
                    f"| {f2(v(se, 'p99_ms'))} | {cnt((d, b, se), 'non2xx')} | {cnt((d, b, se), 'socket_errors')} "
                    f"| {cnt((d, b, se), 'server_cpu_pct')} |"
                )
        for sc, targets in load.items():
            for t, e in targets.items():
                for c, r in e.items():
                    if isinstance(r, dict) and "error" in r:
                        skipped.append(f"{sc}/{t} c={c}: {r['error'][:120]}")
                if e.get("probe_status") not in (200, 404, None):
                    skipped.append(
                        f"{sc}/{t}: probe answered {e['probe_status']}: {e.get('probe_body', '')[:120]}"
                    )
        out.append("")
        for line in skipped:
            out.append(f"- {line}")
        if skipped:
            out.append("")
    ttfb = results.get("ttfb")
    if ttfb:
        out.append(
            "Streaming chat, sequential (c=1) aiohttp client: TTFB = request sent → first body bytes; "
            f"total = → end of stream (mock waits {s.get('ttfb_chunk_delay_ms')} ms between events)."
        )
        out.append("")
        out.append(
            "| target | n | TTFB p50 ms | TTFB p99 ms | +TTFB p50 vs direct | total p50 ms | total p99 ms | statuses |"
        )
        out.append("|" + "---|" * 8)
        base = ttfb.get("direct", {}).get("ttfb_p50_ms")
        for t in TARGETS:
            r = ttfb.get(t)
            if not r:
                continue
            added = f"{r['ttfb_p50_ms'] - base:+.2f}" if base is not None and t != "direct" else "–"
            out.append(
                f"| {t} | {r['n']} | {f2(r['ttfb_p50_ms'])} | {f2(r['ttfb_p99_ms'])} | {added} | "
                f"{f2(r['total_p50_ms'])} | {f2(r['total_p99_ms'])} | {r['statuses']} |"
            )
        out.append("")
    soak = results.get("soak")
    if soak:
        w = soak["wrk"]
        out.append(
            f"Soak: {soak['duration_s']} s at c=64 through Sentinel (chat): {fr(w.get('rps'))} req/s, p50 "
            f"{f2(w.get('p50_ms'))} ms, p99 {f2(w.get('p99_ms'))} ms, non-2xx {w.get('non2xx')}, socket errors "
            f"{w.get('socket_errors')}; Sentinel RSS start {soak['rss_start_kb']} kB → end {soak['rss_end_kb']} kB "
            f"(peak {soak['rss_peak_kb']} kB)"
        )
        out.append("")
    prof = results.get("profile")
    if prof:
        out.append(
            f"py-spy profile of Sentinel, chat at the highest concurrency ({prof['samples']} samples, idle excluded; "
            "shares of all samples): " + ", ".join(f"{k} {v:.0f}%" for k, v in prof.get("threads", []))
        )
        out.append("")
        out.append(
            "| % of samples | attributed to the deepest sentinel/ frame on the stack (incl. the libraries it calls) |"
        )
        out.append("|---|---|")
        for name, share in prof.get("deepest_sentinel_frame", []):
            out.append(f"| {share:.1f} | `{name}` |")
        out.append("")
        out.append(
            "Self time by package: "
            + ", ".join(f"{k} {v:.0f}%" for k, v in prof.get("self_by_package", [])[:10])
        )
        out.append("")
        out.append("| inclusive % | sentinel/ function |")
        out.append("|---|---|")
        for name, share in prof["inclusive_sentinel"]:
            out.append(f"| {share:.1f} | `{name}` |")
        out.append("")
        out.append("| self % | function (leaf) |")
        out.append("|---|---|")
        for name, share in prof["self"]:
            out.append(f"| {share:.1f} | `{name}` |")
        out.append("")
    sl = results.get("sentinel_log")
    if sl:
        out.append(
            f"Sentinel log ({sl['path']}): levels {sl['levels'] or '{}'}, tracebacks {sl['tracebacks']}"
        )
        for msg, n in sl["messages"]:
            out.append(f"- {n}× {msg}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Sentinel side-by-side benchmark (use bench/run.sh)")
    p.add_argument(
        "--scenarios", default=",".join(ALL_SCENARIOS), help=f"comma list of {','.join(ALL_SCENARIOS)}"
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    p.add_argument("--concurrency", default="1,16,64", help="comma list of wrk connection counts")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of c=16 warm-up per target (0: none)")
    p.add_argument("--redis", default=None, metavar="URL", help="run Sentinel with REDIS_URL=URL")
    p.add_argument(
        "--plan",
        default="requests=1000000000/1m",
        help="DEFAULT_PLAN for Sentinel (default: effectively unlimited)",
    )
    p.add_argument(
        "--log-level", default="warning", help="SENTINEL_LOG_LEVEL (default warning: no access log)"
    )
    p.add_argument(
        "--mock-latency-ms", type=float, default=0.0, help="mock upstream delay before every response"
    )
    p.add_argument(
        "--ttfb-requests", type=int, default=200, help="sequential streamed requests per target for TTFB"
    )
    p.add_argument(
        "--ttfb-chunk-delay-ms", type=float, default=5.0, help="mock delay between stream events for TTFB"
    )
    p.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="one long c=64 run through Sentinel, RSS before/after",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy Sentinel during an extra chat run at the top concurrency",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also save the results here")
    p.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the temp dir (DB, logs) instead of copying logs to results",
    )
    a = p.parse_args(argv)
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in a.scenarios if s not in ALL_SCENARIOS]
    if bad:
        p.error(f"unknown scenario(s): {', '.join(bad)}")
    a.conc = [int(c) for c in a.concurrency.split(",") if c.strip()]
    if not shutil.which("wrk"):
        p.error("wrk is not installed (bench/run.sh installs it)")
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    else:
        log("fewer than 2 CPUs: running unpinned")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-bench-"))
    bench = Bench(a, tmp)
    bench.results["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    noise = ForeignLoad()
    bench.results["argv"] = sys.argv[1:]
    try:
        bench.setup()
        bench.load()
        if "ttfb" in a.scenarios:
            bench.ttfb()
        if a.soak > 0:
            bench.soak()
        bench.results["setup"]["sentinel_rss_kb_at_end"] = rss_kb(bench.procs["sentinel"].pid)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        bench.teardown()
    bench.scan_sentinel_log()
    bench.results["noise"] = noise.foreign_pct()

    RESULTS_DIR.mkdir(exist_ok=True)
    run_dir = RESULTS_DIR / stamp
    run_dir.mkdir(exist_ok=True)
    for proc in bench.procs.values():
        if proc.log_path.exists():
            shutil.copy(proc.log_path, run_dir / proc.log_path.name)
    if (tmp / "profile.raw").exists():
        shutil.copy(tmp / "profile.raw", run_dir / "profile.raw")
    bench.results["sentinel_log"]["path"] = str(run_dir / "sentinel.log")
    text = report(bench.results)
    print(text)
    (run_dir / "results.json").write_text(json.dumps(bench.results, indent=2, default=str))
    (run_dir / "report.md").write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(bench.results, indent=2, default=str))
    if not a.keep_tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"results in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
