"""A key revoked while one of its streams runs: the stream was admitted and is served to its end and
charged to the key's user (nothing lost), and the key is refused from its next request on."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows, wait_for
from tests.support.held_upstream import HeldUpstream, Script, Step
from tests.support.servers import serving

ADMIN_KEY = "admin-key-for-the-mid-stream-revocation"


def chunk(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
EVENTS = [
    chunk({**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hello"}, "finish_reason": None}]}),
    chunk({**BASE, "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": "stop"}]}),
    chunk({**BASE, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}),
    b"data: [DONE]\n\n",
]


def test_a_key_revoked_mid_stream_ends_with_the_stream_and_the_stream_is_charged(
    gateway_factory: Callable[..., Gateway], backend_url: str | None,
) -> None:
    upstream = HeldUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, admin_key=ADMIN_KEY,
                             usage_flush_interval_seconds=0.1)
        script = upstream.queue(Script(b"text/event-stream", [Step(e) for e in EVENTS]))
        script.head.gate.set()
        script.steps[0].gate.set()
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with gw.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert "hello" in next(line for line in lines if line.startswith("data:"))
            revoked = httpx.post(f"{gw.url}/admin/api/keys/{gw.key_id}/revoke", timeout=30,
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert revoked.status_code == 200, revoked.text
            with gw.client() as other:  # refused at once: the cached identity was replaced by a tombstone
                refused = other.post("/v1/chat/completions", json={**body, "stream": False})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", refused.text
            for step in script.steps[1:]:
                step.gate.set()
            rest = "\n".join(lines)
        assert " world" in rest and rest.rstrip().endswith("data: [DONE]")
    # The admitted stream is charged to the user whose key it was, as if the key were still active.
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    row = ledger_rows(gw.settings.database_url, "alice")[0]
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, 12, 7)
    assert len(upstream.received) == 1  # the refused request never reached the provider
