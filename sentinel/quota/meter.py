"""The metering seam between the HTTP layer and quotas/usage.

`admit()` runs before a metered request is forwarded (quota reservation, may raise RateLimited);
`settle()` runs exactly once after it was served (success, upstream error after tokens were spent,
or client disconnect) and records usage; `release()` runs when nothing was served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sentinel.governance.identity import Identity
from sentinel.quota.usage import Usage


@dataclass
class Admission:
    """A request admitted for metering: what was reserved and the rate-limit headers to send."""

    identity: Identity
    endpoint: str
    model: str
    request_id: str
    estimate_input: int = 0
    max_output: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Any = None
    settled: bool = False


class Meter(Protocol):
    async def admit(
        self, identity: Identity, *, endpoint: str, model: str, payload: dict[str, Any] | None, request_id: str
    ) -> Admission: ...

    async def settle(
        self, admission: Admission, *, usage: Usage | None, output_text: str, status: int, provider: str
    ) -> None: ...

    async def release(self, admission: Admission) -> None: ...


class NullMeter:
    """Meters nothing (used until quotas are configured, and in unit tests of the proxy)."""

    async def admit(
        self, identity: Identity, *, endpoint: str, model: str, payload: dict[str, Any] | None, request_id: str
    ) -> Admission:
        return Admission(identity=identity, endpoint=endpoint, model=model, request_id=request_id)

    async def settle(
        self, admission: Admission, *, usage: Usage | None, output_text: str, status: int, provider: str
    ) -> None:
        admission.settled = True

    async def release(self, admission: Admission) -> None:
        admission.settled = True
