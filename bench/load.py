"""What the benchmark sends: the scenarios, wrk runs (one generic Lua script) and the TTFB client.

A scenario is one line in SCENARIOS: its name, the path and JSON body Sentinel receives, and the
path of the same call on the mock upstream / bare relay (None when the call only exists on
Sentinel: its direct/bare columns then repeat the `baseline` scenario's rows).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import taskset

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "request.lua"

_SYSTEM = {"role": "system", "content": "You are terse."}
_USER = {"role": "user", "content": "Say hello to the benchmark."}


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str  # on Sentinel
    body: dict[str, Any]
    upstream_path: str | None  # the same call on the mock / bare relay; None: Sentinel only
    baseline: str | None = None  # Sentinel-only: whose direct/bare rows to compare with
    stream: bool = False
    auth_header: str = "Authorization"  # "Authorization" sends "Bearer KEY"; any other sends KEY

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()

    def headers(self, key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers[self.auth_header] = f"Bearer {key}" if self.auth_header == "Authorization" else key
        if self.auth_header.lower() == "x-api-key":
            headers["anthropic-version"] = "2023-06-01"
        return headers


# An application's long system prompt (~19 KB, ~4,200 tokens), the same in every request: what a
# real chat app sends, where counting the prompt is most of the estimate's cost.
_TOPICS = ("billing", "shipping", "returns", "warranty", "privacy", "accounts", "invoices", "outages")
_POLICY = " ".join(
    f"Section {i}: when a customer writes about {_TOPICS[i % 8]} case {i * 7919 % 100_000}, check their "
    f"{_TOPICS[(i * 3) % 8]} history first, quote rule {i}.{i % 7} word for word and never promise more than "
    f"{(i * 37) % 500 + 20} dollars without a supervisor."
    for i in range(100)
)
# A conversation at its 31st turn (~9 KB): the client sends every earlier turn again, as chat
# clients do.
_TURNS = [
    message
    for i in range(30)
    for message in (
        {"role": "user", "content": f"Turn {i}: how was order {i * 977} shipped, and why does the invoice show "
                                    f"{i * 13} items? Please check the warehouse notes too."},
        {"role": "assistant", "content": f"Order {i * 977} left the warehouse on day {i}; the invoice lists "
                                         f"{i * 13} items because partial shipments are billed together."},
    )
]
CHAT = {"model": "gpt-4o-mini", "messages": [_SYSTEM, _USER], "max_tokens": 64}
LONG = {**CHAT, "messages": [{"role": "system", "content": _POLICY}, _USER]}
TURNS = {**CHAT, "messages": [_SYSTEM, *_TURNS, _USER]}
# A streamed answer of ~300 events (the mock echoes the user's words, one event each).
_ECHO = {"role": "user", "content": " ".join(f"word{i}" for i in range(300))}
STREAM_LONG = {**CHAT, "messages": [_SYSTEM, _ECHO], "max_tokens": 1000, "stream": True}
MESSAGES = {"model": "claude-3-5-haiku-20241022", "system": "You are terse.", "max_tokens": 64, "messages": [_USER]}
SCENARIOS: list[Scenario] = [
    Scenario("chat", "/v1/chat/completions", CHAT, "/v1/chat/completions"),
    Scenario("stream", "/v1/chat/completions", {**CHAT, "stream": True}, "/v1/chat/completions", stream=True),
    Scenario("stream_long", "/v1/chat/completions", STREAM_LONG, "/v1/chat/completions", stream=True),
    Scenario("long", "/v1/chat/completions", LONG, "/v1/chat/completions"),
    Scenario("turns", "/v1/chat/completions", TURNS, "/v1/chat/completions"),
    Scenario("native", "/native/v1/chat/completions", {"tier": "simple", "messages": [_SYSTEM, _USER]}, None, "chat"),
    # The Anthropic surface: a Claude model relayed as it is, and an OpenAI model translated both ways.
    Scenario("messages", "/v1/messages", MESSAGES, "/v1/messages", auth_header="x-api-key"),
    Scenario("messages_stream", "/v1/messages", {**MESSAGES, "stream": True}, "/v1/messages", stream=True,
             auth_header="x-api-key"),
    Scenario("messages_x", "/v1/messages", {**MESSAGES, "model": "gpt-4o-mini"}, None, "chat", auth_header="x-api-key"),
]
BY_NAME = {s.name: s for s in SCENARIOS}


def run_wrk(
    url: str,
    scenario: Scenario,
    conns: int,
    duration: float,
    key: str | None,
    *,
    cpus: str | None,
    workdir: Path,
    timeout_s: int = 10,
) -> dict[str, Any]:
    """One fixed-duration wrk run (-t1 -cN --latency); percentiles come from the script's done()."""
    body_file = workdir / f"body-{scenario.name}.json"
    body_file.write_bytes(scenario.body_bytes())
    headers = scenario.headers(key)
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(body_file),
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in headers.items()),
    }
    cmd = [
        *taskset(cpus), "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s", "--latency", "-s", str(WRK_SCRIPT), url,
    ]  # fmt: skip
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
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", cp.stdout)
    e = d["errors"]
    return {
        "requests": d["requests"],
        "rps": d["requests"] / secs if secs else 0.0,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "non2xx": int(m.group(1)) if m else 0,
        "socket_errors": e["connect"] + e["read"] + e["write"] + e["timeout"],
        "errors": e,
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))  # nearest-rank
    return s[k]


async def _ttfb(
    url: str, body: bytes, headers: dict[str, str], n: int, warmup: int, budget_s: float
) -> dict[str, Any]:
    import aiohttp

    first: list[float] = []
    total: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + budget_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
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


def ttfb(url: str, key: str | None, n: int, chunk_delay_ms: float, budget_s: float) -> dict[str, Any]:
    """N sequential streamed chats: time to the first body bytes and to the end of the stream.

    The mock waits `chunk_delay_ms` between events (a directive in the user text, so it survives
    any relay): a relay that buffered the stream would show TTFB close to the total."""
    scenario = BY_NAME["stream"]
    body = json.loads(scenario.body_bytes())
    if chunk_delay_ms > 0:
        body["messages"][-1]["content"] += f" #mock:chunk_delay_ms={chunk_delay_ms:g}"
    return asyncio.run(_ttfb(url, json.dumps(body).encode(), scenario.headers(key), n, 10, budget_s))
