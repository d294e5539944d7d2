"""Streams under stress, through a real server: many concurrent streams on every surface that streams,
against an upstream that misbehaves (the mock's fault knobs — stalls, breaks, malformed events, 5xx,
dropped connections — plus what the mock never sends: usage twice, usage then an error event, an
event past the size cap), from clients that leave at every moment (before the first byte,
mid-event, after the final event; raw sockets and the official SDKs) or send a second request behind
a stream on one connection (HTTP/1.1 pipelining). After all of it, per user: one ledger record for
each stream that reached the upstream, exactly once, with counts that add up; no quota reservation
left unsettled; no in-flight slot held; no task of the gateway's left running. Also: a client that
stops reading an endless stream, and one that leaves between its reservation and the upstream call.

Which requests reached the upstream is recorded by the upstream itself, by the request id Sentinel
sends it (`X-Client-Request-Id`, the id the ledger's row carries): nothing is guessed from timing.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from sentinel.mock.app import create_mock_app
from sentinel.quota.limiter import QuotaLimiter
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.accounts import create_key
from tests.support.attack import ledger_rows, openai_error, wait_for
from tests.support.metrics import metric
from tests.support.raw_http import port_of
from tests.support.servers import serving
from tests.support.upstream import lifespan, read_body

pytestmark = pytest.mark.timeout(180)

HAIKU, MINI = "claude-3-5-haiku-20241022", "gpt-4o-mini"
MiB = 1024 * 1024
STALLED = "#mock:pings_after=2"  # two events, then only keep-alive pings until the client leaves
USAGE_TWICE, USAGE_THEN_ERROR, OVERSIZED = "#chaos:usage_twice", "#chaos:usage_then_error", "#chaos:oversized"


def _chunk(delta: dict[str, Any], usage: dict[str, int] | None = None, finish: str | None = None) -> bytes:
    choices = [] if usage is not None and not delta else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body: dict[str, Any] = {"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": 1,
                            "model": MINI, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
CHAOS = {
    # the final usage chunk sent twice: charged once, at its figures
    USAGE_TWICE: [_chunk({"role": "assistant", "content": "hi there"}), _chunk({}, finish="stop"),
                  _chunk({}, USAGE), _chunk({}, USAGE), b"data: [DONE]\n\n"],
    # the usage, then the provider's own error event (no [DONE])
    USAGE_THEN_ERROR: [_chunk({"role": "assistant", "content": "hi there"}), _chunk({}, USAGE),
                       b'data: {"error": {"message": "overloaded", "type": "server_error", "code": null}}\n\n'],
    # the usage, then one event past the 16 MiB an event may be
    OVERSIZED: [_chunk({"role": "assistant", "content": "hi there"}), _chunk({}, USAGE),
                b"", b"data: [DONE]\n\n"],  # b"": the oversized event, made when sent
}


@dataclass
class ChaosUpstream:
    """The mock upstream, recording the request id of every call that reached it; a chat request
    naming a `#chaos:` script is answered with that script's stream instead of the mock's."""

    mock: Any = field(default_factory=create_mock_app)
    reached: list[str] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # body bytes sent, by request id

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        rid = dict(scope["headers"]).get(b"x-client-request-id", b"").decode()
        if rid:
            self.reached.append(rid)
        body = await read_body(receive)
        script = next((CHAOS[name] for name in CHAOS if name.encode() in body), None)
        if script is None:
            replay = [body]

            async def again() -> dict[str, Any]:
                if replay:
                    return {"type": "http.request", "body": replay.pop(), "more_body": False}
                return await receive()

            async def counted(message: dict[str, Any]) -> None:
                self.sent[rid] += len(message.get("body", b""))
                await send(message)

            return await self.mock(scope, again, counted)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in script:
            body = event or b'data: {"x": "' + b"x" * (17 * MiB) + b'"}\n\n'
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


# --- what the clients send ----------------------------------------------------------------------
FAULTS = [
    "", "", "#mock:malformed", "#mock:disconnect_after=2", "#mock:no_usage", "#mock:chunk_delay_ms=2",
    "#mock:drop_after_ms=0", "#mock:status=500", "#mock:status=429", "#mock:latency_ms=20",
]


def request_for(surface: str, fault: str) -> tuple[str, dict[str, Any]]:
    text = f"tell me something long enough to stream {fault}".strip()
    messages = [{"role": "user", "content": text}]
    if surface == "chat":
        return "/v1/chat/completions", {"model": MINI, "messages": messages, "stream": True,
                                         "stream_options": {"include_usage": True}}
    if surface == "completions":
        return "/v1/completions", {"model": MINI, "prompt": text, "stream": True, "max_tokens": 30}
    if surface == "responses":
        return "/v1/responses", {"model": MINI, "input": text, "stream": True}
    if surface == "messages":
        return "/v1/messages", {"model": HAIKU, "max_tokens": 30, "messages": messages, "stream": True}
    if surface == "messages-translated":
        return "/v1/messages", {"model": MINI, "max_tokens": 30, "messages": messages, "stream": True}
    assert surface == "native"
    return "/native/v1/chat/completions", {"messages": messages, "max_tokens": 30, "stream": True}


SURFACES = ["chat", "completions", "responses", "messages", "messages-translated", "native"]
CLIENTS = ["read_all", "read_all", "leave_before_first_byte", "leave_mid_event", "leave_after_final", "pipelined",
           "pipelined_then_leave", "sdk_read_all", "sdk_leave_after_first"]
OVERLOADED = {(503, "tier_unavailable"), (503, "quota_unavailable"), (503, "overloaded_error")}
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
READ_TO_THE_END = ("read_all", "pipelined", "leave_after_final", "sdk_read_all")
FINAL = (b"[DONE]", b"message_stop", b"response.completed")


def head(path: str, key: str, body: bytes, request_id: str, *, close: bool) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: sentinel", f"Authorization: Bearer {key}",
             "Content-Type: application/json", f"Content-Length: {len(body)}", f"X-Request-Id: {request_id}"]
    if close:
        lines.append("Connection: close")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


async def one_client(port: int, key: str, request_id: str, surface: str, fault: str, how: str, rng: random.Random
                     ) -> bytes:
    """One client's exchange over a socket of its own; what it read (for 5xx checks)."""
    path, body = request_for(surface, fault)
    raw = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seen = b""
    try:
        if how.startswith("pipelined"):  # the stream, then a non-streamed request behind it on the same connection
            second = json.dumps({"model": MINI, "messages": [{"role": "user", "content": "and then"}]}).encode()
            writer.write(head(path, key, raw, request_id, close=False)
                         + head("/v1/chat/completions", key, second, request_id + "-2", close=True))
        else:
            writer.write(head(path, key, raw, request_id, close=True))
        await writer.drain()
        if how == "leave_before_first_byte":
            return seen
        if how in ("leave_mid_event", "pipelined_then_leave"):
            want = rng.randrange(1, 400)  # past the head, somewhere in the events (or not even there)
            while len(seen) < want and (data := await reader.read(want - len(seen))):
                seen += data
            return seen
        while data := await reader.read(65536):
            seen += data
            if how == "leave_after_final" and any(marker in seen for marker in FINAL):
                return seen
        return seen
    except ConnectionError:
        return seen
    finally:
        writer.transport.abort()  # leave at once (a reset, not a polite close)


async def sdk_client(url: str, key: str, request_id: str, surface: str, fault: str, how: str) -> bytes:
    """One client reading the stream through its surface's official SDK (the native API: httpx), to
    its end or (`sdk_leave_after_first`) closing it after its first event; nothing to return."""
    path, body = request_for(surface, fault)
    del body["stream"]
    headers = {"X-Request-Id": request_id}
    leave = how == "sdk_leave_after_first"
    try:
        if surface == "native":
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}", **headers},
                                         timeout=30) as http, http.stream(
                    "POST", path, json={**body, "stream": True}) as answer:
                async for _ in answer.aiter_lines():
                    if leave:
                        break
            return b""
        if surface.startswith("messages"):
            claude = anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0, timeout=30)
            async with claude, await claude.messages.create(**body, stream=True, extra_headers=headers) as events:
                async for _ in events:
                    if leave:
                        break
            return b""
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
        create = {"chat": client.chat.completions.create, "completions": client.completions.create,
                  "responses": client.responses.create}[surface]
        async with client, await create(**body, stream=True, extra_headers=headers) as chunks:
            async for _ in chunks:
                if leave:
                    break
    except (openai.APIError, anthropic.APIError):
        pass  # an upstream failure the faults asked for, or a stream cut: the SDK raised it
    except json.JSONDecodeError:  # the mock's malformed event, relayed as the provider sent it (as
        assert fault == "#mock:malformed", fault  # it would reach the SDK without Sentinel)
    return b""


def refusals(answer: bytes) -> list[tuple[int, Any]]:
    """The (status, JSON body) of each error answer in what a client read (one, or two pipelined)."""
    found = []
    for part in answer.split(b"HTTP/1.1 ")[1:]:
        status = int(part[:3])
        if status >= 400:
            head, _, body = part.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            assert length is not None, part[:300]  # an error answer is whole JSON, never a stream
            found.append((status, json.loads(body[: int(length[1])])))
    return found


# --- what the gateway holds ---------------------------------------------------------------------
def slots_held(gw: Gateway, user: str) -> int:
    app = gw.server.server.config.app
    middleware = app._http  # the RequestMiddleware (no CORS configured)
    return int(middleware.slots.held(user))


def reserved_markers(gw: Gateway) -> list[str]:
    if gw.settings.redis_url:
        import redis

        client = redis.Redis.from_url(gw.settings.redis_url)
        try:
            return [k.decode() for k in client.scan_iter("sentinel:quota:*:reserved:*")]
        finally:
            client.close()
    return asyncio.run(gw.runtime.store.scan("sentinel:quota:*:reserved:*", limit=10_000))


def tcp_buffer_max(kind: str) -> int:
    """The most a TCP socket's send (`wmem`) or receive (`rmem`) buffer may grow to (Linux; 8 MiB elsewhere)."""
    try:
        return int(Path(f"/proc/sys/net/ipv4/tcp_{kind}").read_text().split()[2])
    except OSError:
        return 8 * MiB


def _where(task: asyncio.Task[Any]) -> str:
    """A task by the code it runs: its coroutine's name and, for a task waiting, where its stack starts."""
    frames = task.get_stack()
    return f"{task.get_coro().__qualname__} at {frames[0].f_code.co_filename}:{frames[0].f_code.co_name}" if frames else str(task.get_coro())


def server_tasks(gw: Gateway) -> list[str]:
    """The names of the tasks running on the gateway's event loop, but the server's own."""
    loop = gw.server.server.servers[0].get_loop()

    async def names() -> list[str]:
        return sorted(_where(t) for t in asyncio.all_tasks() if t is not asyncio.current_task())

    return asyncio.run_coroutine_threadsafe(names(), loop).result(10)


def stress_gateway(gateway_factory: Callable[..., Gateway], tmp_path: Path, url: str, redis_url: str | None,
                   loop: str = "asyncio") -> Gateway:
    return gateway_factory(
        loop=loop, openai_api_url=url + "/v1", anthropic_api_url=url, redis_url=redis_url,
        providers_file=tiers_file(tmp_path, "openai"), usage_flush_interval_seconds=0.1,
        default_plan="requests=100000/1d,input_tokens=100000000/1d,output_tokens=100000000/1d",
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # the tests' loop, and the one served
def test_concurrent_streams_with_leaving_clients_and_a_misbehaving_upstream_settle_everything(
    gateway_factory: Callable[..., Gateway], backend_url: str | None, tmp_path: Path, loop: str
) -> None:
    """270 streams at once from three users, over every streaming surface, each with a fault of the
    upstream's and a way of its client's to leave (or a request pipelined behind it)."""
    upstream = ChaosUpstream()
    rng = random.Random(20261206)
    with serving(upstream) as srv:
        gw = stress_gateway(gateway_factory, tmp_path, srv.url, backend_url, loop)
        users = {f"stress-{i}": asyncio.run(create_key(gw.settings.database_url, f"stress-{i}"))[1] for i in range(3)}
        baseline = server_tasks(gw)
        plan = []
        for n in range(270):
            surface, how = SURFACES[n % len(SURFACES)], CLIENTS[(n // len(SURFACES)) % len(CLIENTS)]
            faults = [*FAULTS, *CHAOS] if surface == "chat" else FAULTS
            if how not in READ_TO_THE_END:  # a stream stalled until its client leaves
                faults = [*faults, STALLED]
            fault = rng.choice(faults)
            plan.append((f"stress-{n % 3}", f"stress-{n:04d}", surface, fault, how))
        for script, n in zip(CHAOS, range(0, 270, 54), strict=False):  # each script read to its end, twice at least
            plan[n] = (*plan[n][:3], script, plan[n][4])  # (chat, read_all)
            plan[n + 6] = (*plan[n + 6][:3], script, plan[n + 6][4])  # (chat, read_all)

        async def run_all() -> list[bytes]:
            port = port_of(gw)
            return await asyncio.gather(*(
                sdk_client(gw.url, users[user], rid, surface, fault, how) if how.startswith("sdk") else
                one_client(port, users[user], rid, surface, fault, how, random.Random(n))
                for n, (user, rid, surface, fault, how) in enumerate(plan)))

        answers = asyncio.run(run_all())
        assert not [a[:300] for a in answers if b"HTTP/1.1 500" in a]  # never an internal error
        for (_, rid, surface, fault, how), answer in zip(plan, answers, strict=True):
            if how in READ_TO_THE_END:  # each refusal in its surface's error shape, never an internal error
                for n, (status, error) in enumerate(refusals(answer)):
                    anthropic_shape = surface.startswith("messages") and n == 0  # a pipelined second: chat
                    code = (error["error"]["type"] if anthropic_shape else openai_error(error)["code"])
                    # 503: a native tier whose one model the faults put in backoff, or (once, on a
                    # loaded machine) the quota store not answering in time: fail closed, by design
                    assert status in (429, 502, 504) or (status, code) in OVERLOADED, (rid, status, error)
                    assert not anthropic_shape or error["type"] == "error", (rid, error)
            if how == "pipelined" and "status=" not in fault:  # the request behind the stream was answered
                second = answer[answer.rindex(b"HTTP/1.1 "):]
                assert answer.count(b"HTTP/1.1 ") == 2, (rid, answer[-300:])
                assert second.startswith(b"HTTP/1.1 200"), (rid, second[-300:])
                assert rid + "-2" in upstream.reached and second.endswith(b"}}"), (rid, second[-300:])
        seen_usage = {  # the usage chunk of each chat stream read to its [DONE]
            rid: (int(found[1]), int(found[2])) for (_, rid, surface, _, how), answer in zip(plan, answers, strict=True)
            if surface == "chat" and how in READ_TO_THE_END and b"[DONE]" in answer
            for found in [re.search(rb'"usage": ?\{"prompt_tokens": ?(\d+), ?"completion_tokens": ?(\d+)',
                                  answer.partition(b"[DONE]")[0])] if found
        }
        assert seen_usage
        assert wait_for(lambda: metric(gw.url, "sentinel_requests_in_flight") == 0, 30)
        reached = Counter(upstream.reached)
        # A connection the provider dropped at once is sent again, once (README, Configuration)
        assert all(count <= 1 or "drop_after_ms" in fault for (_, rid, _, fault, _) in plan
                   for count in [reached[rid]]), reached.most_common(3)

        def recorded(user: str) -> list[str]:
            return [row["request_id"].split("~")[0] for row in ledger_rows(gw.settings.database_url, user)]

        chaos_seen: Counter[str] = Counter()
        for user in users:
            sent = {rid for u, rid, *_ in plan if u == user} | {rid + "-2" for u, rid, *_ in plan if u == user}
            # A provider's 5xx or 429 served nothing and gives everything back: no record (README, Quotas).
            refused = {rid for u, rid, _, fault, _ in plan if u == user and "status=" in fault}
            expected = {rid for rid in reached if rid in sent - refused}
            assert wait_for(lambda u=user, e=expected: set(recorded(u)) >= e, 10), (
                [p for p in plan if p[1] in expected - set(recorded(user))])
            ids = recorded(user)
            assert sorted(ids) == sorted(expected), (sorted(Counter(ids) - Counter(expected))[:5])
            for row in ledger_rows(gw.settings.database_url, user):
                assert row["input_tokens"] >= 0 and row["output_tokens"] >= 0, row
                assert row["status"] < 500 or row["status"] in (502, 504), row
                client_saw = seen_usage.get(row["request_id"].split("~")[0])
                if client_saw is not None:  # what the client was told it used is what it is charged
                    assert (row["input_tokens"], row["output_tokens"]) == client_saw, row
            assert slots_held(gw, user) == 0
            for row in ledger_rows(gw.settings.database_url, user):  # the chaos scripts' usage: counted once
                rid = row["request_id"].split("~")[0]
                _, _, _, fault, how = next(p for p in plan if p[1] == rid.removesuffix("-2"))
                if fault.startswith("#chaos") and not rid.endswith("-2") and how in READ_TO_THE_END:
                    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (11, 7, "measured"), row
                    assert row["status"] == (200 if fault == USAGE_TWICE else 502), row
                    chaos_seen[fault] += 1
        assert set(chaos_seen) == set(CHAOS), chaos_seen  # each script was read to its end at least once
        assert wait_for(lambda: reserved_markers(gw) == [], 30), reserved_markers(gw)[:5]
        assert wait_for(lambda: server_tasks(gw) == baseline, 30), set(server_tasks(gw)) - set(baseline)


@pytest.mark.parametrize("surface", SURFACES)
def test_a_client_leaving_between_its_reservation_and_the_upstream_call_leaves_nothing_behind(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, surface: str
) -> None:
    """The client hangs up right after its quota was reserved, before Sentinel has called the
    provider: whether or not the call is made then, the reservation is settled, the slot given back,
    and a record exists exactly when the provider was called."""
    upstream = ChaosUpstream()
    reserved, gate = threading.Event(), threading.Event()
    reserve = QuotaLimiter.reserve

    async def held_reserve(self: QuotaLimiter, *args: Any, **kwargs: Any) -> Any:
        reservation = await reserve(self, *args, **kwargs)
        reserved.set()
        await asyncio.to_thread(gate.wait, 30)
        return reservation

    with serving(upstream) as srv:
        gw = stress_gateway(gateway_factory, tmp_path, srv.url, None)
        monkeypatch.setattr(QuotaLimiter, "reserve", held_reserve)
        path, body = request_for(surface, "")
        sock = socket.create_connection(("127.0.0.1", port_of(gw)), timeout=10)
        sock.sendall(head(path, gw.key, json.dumps(body).encode(), "left-early", close=True))
        assert reserved.wait(10)
        sock.close()  # the client leaves while its request is between the reservation and the call
        assert wait_for(lambda: not gw.server.server.server_state.connections)
        gate.set()
        assert wait_for(lambda: metric(gw.url, "sentinel_requests_in_flight") == 0)
        assert wait_for(lambda: reserved_markers(gw) == []), reserved_markers(gw)
        assert slots_held(gw, "alice") == 0
        if upstream.reached:  # the provider was called: the call is recorded, once
            assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
            assert [r["request_id"].split("~")[0] for r in ledger_rows(gw.settings.database_url, "alice")] == [
                "left-early"]
        else:
            assert ledger_rows(gw.settings.database_url, "alice") == []


def test_a_client_that_stops_reading_an_endless_stream_is_dropped_and_its_stream_settled(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A client that reads one byte of an endless stream and no more (the slowest reader): Sentinel
    writes only as fast as the client reads, so it reads the provider no faster (what it holds stays
    bounded, however much the provider would send), and once nothing could be written for
    `SENTINEL_SEND_TIMEOUT_SECONDS` the connection is dropped: the stream is settled as the client's
    leaving (499), once, the provider's connection closed, the reservation and the slot given back."""
    upstream = ChaosUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", send_timeout_seconds=0.5,
                             usage_flush_interval_seconds=0.1)
        body = {"model": MINI, "stream": True, "tools": TOOLS, "max_tokens": 50,
                "messages": [{"role": "user", "content": "look it up #mock:endless_tool_args"}]}
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port_of(gw)))
        try:
            sock.sendall(head("/v1/chat/completions", gw.key, json.dumps(body).encode(), "slow-reader", close=True))
            assert sock.recv(1)  # one byte, then nothing more is read
            assert wait_for(lambda: metric(gw.url, "sentinel_requests_in_flight") == 0, 30)
        finally:
            sock.close()
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
        (row,) = ledger_rows(gw.settings.database_url, "alice")
        assert (row["request_id"].split("~")[0], row["status"]) == ("slow-reader", 499), row
        assert row["output_tokens"] > 0, row
        assert upstream.reached == ["slow-reader"]
        # What the provider could send: what the socket buffers on the way hold, not a stream's worth.
        print("SENT", upstream.sent)
        assert 0 < upstream.sent["slow-reader"] < 16 * 1024 * 1024, upstream.sent
        assert wait_for(lambda: reserved_markers(gw) == []), reserved_markers(gw)
        assert slots_held(gw, "alice") == 0
