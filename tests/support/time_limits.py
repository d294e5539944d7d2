"""A gateway whose upstream answers may be read for LIMIT seconds of a clock that ticks one second
per reading (`SENTINEL_STREAM_MAX_SECONDS`): the stream and answer time-limit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.api.conftest import Gateway
from tests.support.clock import TickingClock

LIMIT = 10.0  # seconds of the gateway's TickingClock (one per reading): a cut after about ten reads


def limited_gateway(gateway_factory: Callable[..., Gateway], **overrides: Any) -> Gateway:
    return gateway_factory(stream_clock=TickingClock(1.0), stream_max_seconds=LIMIT,
                           usage_flush_interval_seconds=0.1, **overrides)
