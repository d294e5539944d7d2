"""A reservation's marker (`QuotaLimiter`: a settlement runs only in the call that deletes it) must
outlive the longest answer: one that expired first made its settlement change nothing — the usage
above the reservation never counted, the estimate never given back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sentinel.quota.limiter import RESERVE
from sentinel.store.base import Script
from tests.api.conftest import Gateway
from tests.api.test_quotas import set_plan

LONG = 200_000.0  # SENTINEL_STREAM_MAX_SECONDS past a day


def test_a_reservation_marker_outlives_the_longest_answer(gateway_factory: Callable[..., Gateway]) -> None:
    """With SENTINEL_STREAM_MAX_SECONDS=200000 (2.3 days) an answer may run past the day a marker
    lived: its settlement then found no marker and charged nothing of what it streamed past the
    reservation. The marker now lives a day past the longest answer (its TTL, the reservation
    script's last argument, in ms)."""
    gw = gateway_factory(stream_max_seconds=LONG)
    set_plan(gw.settings.database_url, "alice", "tokens", "requests=100/1h,output_tokens=100000/1d")
    store = gw.runtime.store
    run = store.run
    marked: list[int] = []

    async def watching(script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script is RESERVE and ":reserved:" in keys[-1]:
            marked.append(int(args[-1]))
        return await run(script, keys, args)

    store.run = watching  # type: ignore[method-assign]
    try:
        with gw.client() as http:
            answer = http.post("/v1/chat/completions", json={
                "model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
    finally:
        store.run = run  # type: ignore[method-assign]
    assert len(marked) == 1 and marked[0] >= (LONG + 86_400) * 1000, marked
