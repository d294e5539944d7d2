"""Operator-chosen policies that domain services take as plain values (never the settings object)."""

from __future__ import annotations

from enum import StrEnum


class QuotaFailureMode(StrEnum):
    """What quota enforcement does when the shared store is unreachable."""

    closed = "closed"  # refuse (503)
    open = "open"  # admit unchecked
    local = "local"  # enforce the plan per replica, in process


class SessionFailover(StrEnum):
    """What a sticky conversation does when its model is in backoff."""

    keep = "keep"  # keep the model; the provider's error reaches the client
    migrate = "migrate"  # move the session to a healthy model of its tier
