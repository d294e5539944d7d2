"""A store outage is a few warning lines, not one per request, on every surface that meets it.

With Redis gone, a native conversation's turns (its session), a Responses answer (its owner and
context size) each wrote a warning line per
request: at full load thousands of identical lines a second, which any user with a key could
multiply, when operators most need readable logs. Each is now written when first met, then once a
minute with the count it stands for (`observability.logging.Repeated`), as the quota store's are.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.conftest import Gateway
from tests.conftest import REDIS_BIN, unavailable
from tests.support.process import RedisServerProcess

TURN = {"conversation_id": "conv-outage", "messages": [{"role": "user", "content": "hello"}]}
RESPONSE = {"model": "gpt-4o-mini", "input": "hello"}


def test_a_redis_outage_writes_each_warning_once_not_once_a_request(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as redis_server:
        gw = gateway_factory(redis_url=redis_server.url, quota_failure_mode="local")
        with gw.client() as http:
            assert http.post("/native/v1/chat/completions", json=TURN).status_code == 200
            redis_server.kill9()
            with caplog.at_level(logging.WARNING):
                turns = [http.post("/native/v1/chat/completions", json=TURN).status_code for _ in range(10)]
                answers = [http.post("/v1/responses", json=RESPONSE) for _ in range(10)]
    assert turns == [200] * 10 and [r.status_code for r in answers] == [200] * 10, answers[0].text
    warnings = Counter(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("sentinel"))
    for line in (
        "session store unavailable: serving without stickiness",
        "the store is unavailable: an object this answer created stays unowned (unreachable)",
        "the store is unavailable: a response's context size was not kept",
    ):
        assert warnings[line] == 1, warnings
    assert set(warnings.values()) == {1}, warnings
