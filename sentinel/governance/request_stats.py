"""API answers by kind in the database: written every few seconds, read by the console.

`RequestStatsWriter` takes the process's `RequestOutcomes` counts every `interval` seconds (and at
shutdown) and adds them to `request_minutes` and `request_hours` (`INSERT ... ON CONFLICT DO UPDATE
SET n = n + new`), so the replicas' counts add up. Counts that could not be written are given back
and tried again with the next flush. `RequestStats.series` reads them in time buckets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import RequestHourRow, RequestMinuteRow
from sentinel.db.queries import added_up, summed, upsert_adding
from sentinel.errors import GovernanceUnavailable
from sentinel.observability.logging import Repeated
from sentinel.observability.outcomes import Outcomes, RequestOutcomes
from sentinel.periodic import Periodic

log = logging.getLogger("sentinel.request_stats")
KEPT = "could not write request statistics; kept for the next flush"
COLUMNS = ("requests", "client_errors", "rate_limited", "server_errors")


@dataclass(frozen=True)
class AnswerBucket:
    """Answers of one time bucket (index from the start of the range)."""

    index: int
    requests: int
    client_errors: int
    rate_limited: int
    server_errors: int


class RequestStats:
    """Reads `request_minutes` / `request_hours`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def series(self, start_minute: int, end_minute: int, step_minutes: int) -> list[AnswerBucket]:
        """Buckets of `step_minutes` over minutes [start_minute, end_minute), only those with answers;
        whole hours are read from the per-hour table."""
        table: Any = RequestMinuteRow
        key, start, end, step = RequestMinuteRow.minute, start_minute, end_minute, step_minutes
        if step_minutes % 60 == 0 and start_minute % 60 == 0 and end_minute % 60 == 0:
            table, key, start, end, step = RequestHourRow, RequestHourRow.hour, start // 60, end // 60, step // 60
        index = ((key - start) // step).label("bucket")
        sums = [func.coalesce(added_up(getattr(table, c)), 0) for c in COLUMNS]
        query = select(index, *sums).where(key >= start, key < end).group_by(index).order_by(index)
        with database_errors("request statistics unavailable"):
            async with self._sessions() as session:
                rows = (await session.execute(query)).all()
        return [AnswerBucket(int(row[0]), *(summed(v) for v in row[1:])) for row in rows]


class RequestStatsWriter:
    """Flushes a `RequestOutcomes` counter to the database every `interval` seconds until stopped."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], outcomes: RequestOutcomes, *,
                 interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = sessions
        self.outcomes = outcomes
        self.interval = interval
        # A database outage is logged when first met, then once a minute (it was once a flush).
        self._repeated = Repeated(log, clock=clock)
        self._loop = Periodic(self._round, interval=interval, log=log, crashed=KEPT, name="sentinel-request-stats",
                              wait_first=True)

    async def flush(self) -> None:
        """Write what was counted since the last flush (given back to the counter on an outage)."""
        taken = self.outcomes.take()
        if not taken:
            return
        hours: dict[int, Outcomes] = {}
        for minute, counts in taken.items():
            hours.setdefault(minute // 60, Outcomes()).merge(counts)
        try:
            with database_errors("request statistics unavailable"):
                async with self._sessions() as session:
                    await upsert_adding(session, RequestMinuteRow, ["minute"], COLUMNS, _rows("minute", taken))
                    await upsert_adding(session, RequestHourRow, ["hour"], COLUMNS, _rows("hour", hours))
                    await session.commit()
        except GovernanceUnavailable as exc:
            self.outcomes.give_back(taken)
            self._repeated.warning(KEPT, extra={"error": exc.message})
            return
        except Exception:
            self.outcomes.give_back(taken)
            raise
        if (suppressed := self._repeated.forget(KEPT)) is not None:
            log.info("request statistics written again", extra={"suppressed": suppressed} if suppressed else None)

    async def _round(self) -> int:
        """One round of the loop (`Periodic`: every `interval` seconds, the first an interval after
        `start`; one that raises is logged and tried again with the next)."""
        await self.flush()
        return 0

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        """Stop the loop (a flush under way ends first: cancelled, the counts it had taken were lost)
        and write what is left."""
        await self._loop.stop()
        await self.flush()


def _rows(key: str, groups: dict[int, Outcomes]) -> list[dict[str, Any]]:
    return [
        {key: bucket, "requests": c.requests, "client_errors": c.client_errors, "rate_limited": c.rate_limited,
         "server_errors": c.server_errors}
        for bucket, c in sorted(groups.items())
    ]
