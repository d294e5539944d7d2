"""The "bare" baseline: the least a Python relay can do (raw ASGI, one pooled upstream client).

Receives a request, forwards it to BARE_UPSTREAM + path with the upstream key, returns the body
(SSE answers are relayed chunk by chunk). No auth, parsing, metering or logging: the floor that
Sentinel's own overhead is measured against. Env: BARE_UPSTREAM, BARE_UPSTREAM_KEY,
BARE_CLIENT=aiohttp|httpx|pyreqwest (bench/choices.py compares them; the server is uvicorn or granian).
"""

from __future__ import annotations

import argparse
import inspect
import os

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9090")
HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer " + os.environ.get("BARE_UPSTREAM_KEY", "x"),
}
CLIENT = os.environ.get("BARE_CLIENT", "aiohttp")
_client = None


def _make_client():  # created lazily inside the server's event loop
    if CLIENT == "httpx":
        import httpx

        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000), timeout=300
        )
    if CLIENT == "pyreqwest":  # Rust (reqwest/hyper on a tokio runtime), `pip install pyreqwest`
        from pyreqwest.client import ClientBuilder

        return ClientBuilder().max_connections(1000).follow_redirects(False).gzip(False).build()
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)


async def _pyreqwest_chunks(reader):
    while (chunk := await reader.read_chunk()) is not None:
        yield chunk.to_bytes()


async def app(scope, receive, send):
    global _client
    if scope["type"] == "lifespan":
        while (msg := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        msg = await receive()
        body, more = body + msg.get("body", b""), msg.get("more_body", False)
    _client = _client or _make_client()
    url = UPSTREAM + scope["path"]
    headers = HEADERS
    for name, value in scope["headers"]:
        if name == b"anthropic-version":  # the mock's /v1/messages needs it (the messages rows)
            headers = {**HEADERS, "anthropic-version": value.decode("latin-1")}
    if CLIENT == "httpx":
        resp = await _client.send(
            _client.build_request(scope["method"], url, content=body, headers=headers), stream=True
        )
        status, chunks, close = resp.status_code, resp.aiter_raw(), resp.aclose
    elif CLIENT == "pyreqwest":
        request = _client.request(scope["method"], url).headers(headers).body_bytes(body).build_streamed()
        resp = await request.__aenter__()
        status, chunks = resp.status, _pyreqwest_chunks(resp.body_reader)

        async def close():
            await request.__aexit__(None, None, None)
    else:
        resp = await _client.request(scope["method"], url, data=body, headers=headers)
        status, chunks, close = resp.status, resp.content.iter_any(), resp.release
    ctype = resp.headers.get("content-type", "application/json")
    try:
        if ctype.startswith("text/event-stream"):
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", ctype.encode())],
                }
            )
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            data = b"".join([c async for c in chunks])
            headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
    finally:
        if inspect.isawaitable(r := close()):
            await r


if __name__ == "__main__":
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    uvicorn.run(
        app,
        host=a.host,
        port=a.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
