"""A hostile provider (or anything between Sentinel and it) on the surfaces that read an answer
before answering or keep a stream's text to count: what Sentinel holds of an answer stays bounded,
and every call still leaves its one usage record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentinel.providers.http import MAX_ANSWER_BYTES
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows, wait_for
from tests.support.servers import serving
from tests.support.upstream import lifespan

ASK = [{"role": "user", "content": "weather in Paris?"}]
HAIKU = "claude-3-5-haiku-20241022"
MiB = 1024 * 1024


class JSONFlood:
    """Answers every request with a 200 `application/json` body of `size` bytes (no length given),
    sent a MiB at a time: larger than any answer `max_tokens` allows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.piece = b" " * MiB  # (made once: the upstream's own bytes are not what is measured)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        for _ in range(-(-self.size // MiB)):
            await send({"type": "http.response.body", "body": self.piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def test_an_answer_read_whole_is_not_kept_past_its_bound(gateway_factory: Callable[..., Gateway]) -> None:
    """`/v1/messages` (relayed to Anthropic) and a translated chat read a non-streamed answer whole
    before answering: a provider sending one without end grew the process's memory until the time
    limit (900 s), and `/v1/messages` relayed all of it to the client as a 200. Past
    MAX_ANSWER_BYTES it is 502 `provider_bad_response` in the surface's shape, the rest unread,
    recorded and charged the output it reserved (served and billed)."""
    with serving(JSONFlood(MAX_ANSWER_BYTES + 8 * MiB)) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url)
        with gw.client() as http:
            messages = http.post("/v1/messages", json={"model": HAIKU, "messages": ASK, "max_tokens": 30})
            chat = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": ASK, "max_tokens": 20})
    assert messages.status_code == 502, messages.status_code
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "api_error", messages.text
    assert chat.status_code == 502 and chat.json()["error"]["code"] == "provider_bad_response", chat.text
    assert "larger than" in chat.json()["error"]["message"]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
        (502, "estimated", 30), (502, "estimated", 20)], rows
