"""Shared test helpers for routing: tier tables, gateways configured with them, session reads."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tests.api.conftest import Gateway

OA_MINI = ("openai", "gpt-4o-mini")
OA_4O = ("openai", "gpt-4o")
AN_HAIKU = ("anthropic", "claude-3-5-haiku-20241022")
AN_SONNET = ("anthropic", "claude-sonnet-4-20250514")


def entry(pair: tuple[str, str], cost: int = 1) -> dict[str, Any]:
    return {"provider": pair[0], "model": pair[1], "relative_cost": cost}


def write_config(
    path: Path, tiers: dict[str, list[dict[str, Any]]], providers: dict[str, str] | None = None
) -> Path:
    """A SENTINEL_CONFIG file: `providers` maps extra openai-kind provider names to base URLs."""
    doc: dict[str, Any] = {"tiers": {t: tiers.get(t, []) for t in ("simple", "moderate", "complex")}}
    if providers:
        doc["providers"] = [
            {"name": name, "kind": "openai", "base_url": url, "api_key": "sk-test"} for name, url in providers.items()
        ]
    path.write_text(yaml.safe_dump(doc))
    return path


URL = "/native/v1/chat/completions"


def chat(
    http: httpx.Client, text: str = "hello", *, conv: str | None = None, tier: str | None = None,
    messages: list[dict[str, Any]] | None = None, **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"messages": messages or [{"role": "user", "content": text}], **extra}
    if conv is not None:
        body["conversation_id"] = conv
    if tier is not None:
        body["tier"] = tier
    return http.post(URL, json=body)


def served(r: httpx.Response) -> tuple[str, str, str]:
    """(tier, provider, model) from the X-Sentinel-* headers of a successful answer."""
    assert r.status_code == 200, r.text
    return r.headers["x-sentinel-tier"], r.headers["x-sentinel-provider"], r.headers["x-sentinel-model"]



THREE = {"simple": [entry(OA_MINI), entry(OA_4O), entry(AN_HAIKU)], "complex": [entry(OA_4O), entry(AN_SONNET)]}
_configs = count()


def start(
    factory: Callable[..., Gateway], tmp_path: Path, redis_url: str | None,
    tiers: dict[str, list[dict[str, Any]]] = THREE, providers: dict[str, str] | None = None, **settings: Any,
) -> Gateway:
    config = write_config(tmp_path / f"sentinel-{next(_configs)}.yaml", tiers, providers)
    # These tests are about routing, not Redis's speed: a wait past the default 0.25 s (a loaded CI
    # machine stalling the gateway's thread) was a 503 quota_unavailable in the middle of a conversation.
    settings.setdefault("redis_timeout_seconds", 2.0)
    return factory(providers_file=config, redis_url=redis_url, default_plan="requests=100000/60s", **settings)


def stored(gw: Gateway, conv: str, user: str = "alice") -> dict[str, Any] | None:
    """The raw value of `user`'s session `conv`, read from the gateway's own store."""
    from sentinel.routing.sessions import SessionStore

    raw = gw.read_stored(SessionStore.key(user, conv))
    return None if raw is None else orjson.loads(raw)
