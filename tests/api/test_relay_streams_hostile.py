"""A hostile or broken OpenAI-compatible upstream on the relayed `/v1` streams (chat, legacy
completions, Responses), through the official SDK where it reads the answer: every answer is
charged once and correctly, and what Sentinel holds of a stream stays bounded."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows, wait_for
from tests.support.servers import serving
from tests.support.upstream import lifespan

ASK = [{"role": "user", "content": "weather in Paris?"}]
MiB = 1024 * 1024


class CompressedFlood:
    """Answers every request with a 200 event stream labelled gzip (Sentinel never inflates: it cannot
    be read) of `pieces` MiB, sent a MiB at a time."""

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces
        self.piece = b"\0" * MiB  # (made once: the upstream's own bytes are not what is measured)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(self.pieces):
            await send({"type": "http.response.body", "body": self.piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def test_a_compressed_stream_is_read_to_its_end_without_being_kept(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A stream compressed despite `identity` cannot be read (Sentinel never inflates): it was read to
    its end all the same — kept whole, in memory, so an upstream sending one without end grew the
    process until the stream's time limit. It is read to its end keeping nothing: the relayed and
    the translated stream alike, still a 502 charged the output it reserved."""
    pieces = 24
    with serving(CompressedFlood(pieces)) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        peaks = []
        with gw.client() as http:
            for path, body in (
                ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK, "stream": True, "max_tokens": 20}),
                ("/v1/messages", {"model": "gpt-4o-mini", "messages": ASK, "stream": True, "max_tokens": 30}),
            ):
                tracemalloc.start()
                try:
                    answer = http.post(path, json=body)
                    peaks.append(tracemalloc.get_traced_memory()[1])
                finally:
                    tracemalloc.stop()
                assert answer.status_code == 502, answer.text
    assert all(peak < pieces * MiB // 3 for peak in peaks), peaks
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
        (502, "estimated", 20), (502, "estimated", 30)], rows
