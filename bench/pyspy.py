"""py-spy over Sentinel during one extra wrk run: thread shares, the deepest `sentinel/` frame per
sample, self time by package and per function (`--profile`).

SQLAlchemy's async API runs statements in greenlets, whose stacks do not show the `sentinel/`
caller: those samples are reported as one "SQLAlchemy in a greenlet" line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import REPO, log, taskset


def record(pid: int, seconds: int, out: Path, cpus: str | None, drive: Callable[[], object]) -> dict[str, Any] | None:
    """py-spy `pid` for `seconds` while `drive()` loads it; the summary (None without py-spy)."""
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        log("py-spy not installed in the venv (pip install py-spy): no profile")
        return None
    log(f"profiling pid {pid} for {seconds}s with py-spy")
    spy = subprocess.Popen(
        [*taskset(cpus), str(pyspy), "record", "-d", str(seconds), "-p", str(pid), "-r", "200",
         "--nonblocking", "--threads", "-F", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)
    drive()
    try:
        _, err = spy.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if not out.exists():
        log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        return None
    summary = summarize_raw_profile(out)
    summary["raw"] = str(out)
    return summary


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


