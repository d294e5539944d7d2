"""Processes for the benchmark: start with CPU pinning, wait, stop; RSS and CPU of a process tree;
the machine's description and how busy other processes kept it."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the driver reads this checkout's sentinel (Settings names, outbox key)
    sys.path.insert(1, str(REPO))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def taskset(cpus: str | None) -> list[str]:
    """`taskset -c CPUS` (nothing when unpinned, on one CPU, or without taskset)."""
    if cpus is None or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", cpus]


def pin_self(cpus: str | None) -> None:
    """Pin this driver process (None: every CPU)."""
    if (os.cpu_count() or 1) < 2:
        return
    wanted = set(range(os.cpu_count() or 1)) if cpus is None else {int(c) for c in cpus.split(",")}
    os.sched_setaffinity(0, wanted)


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

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the process group this script created (workers included); its exit status."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


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
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


def wait_until(check: Callable[[], bool], proc: Proc, what: str, timeout: float = 60.0) -> None:
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


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a `--workers` parent and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_kb(pid: int) -> int | None:
    """Resident memory of `pid` and its descendants, in kB."""
    total, seen = 0, False
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    seen = True
        except OSError:
            continue
    return total if seen else None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` and its live descendants (all threads)."""
    total, seen = 0.0, False
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            seen = True
        except (OSError, IndexError, ValueError):
            continue
    return total if seen else None


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


def machine() -> dict[str, str | int]:
    """CPU model, cores, memory, kernel, Python and the checkout measured."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count() or 1,
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit or "unknown",
    }
