"""`sentinel tiers set`: the built-in tier table, applied within TIER_CONFIG_TTL_SECONDS."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.api.conftest import Gateway
from tests.support.waiting import wait_for


def native_model(gw: Gateway, tier: str = "simple") -> str:
    r = httpx.post(
        gw.url + "/native/v1/chat/completions",
        json={"tier": tier, "messages": [{"role": "user", "content": "which model?"}]},
        headers={"Authorization": f"Bearer {gw.key}"}, timeout=30,
    )
    assert r.status_code == 200, r.text
    return f"{r.headers['x-sentinel-provider']}/{r.headers['x-sentinel-model']}"


def test_tiers_set_applies_without_restart(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(tier_config_ttl_seconds=1)
    defaults = {native_model(gw) for _ in range(10)}
    assert defaults <= {"openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-20241022"}
    env = {**os.environ, "DATABASE_URL": gw.settings.database_url}
    result = subprocess.run(
        [sys.executable, "-m", "sentinel", "tiers", "set", "simple", "anthropic/claude-sonnet-4-20250514:4:3:15"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # The next re-read (TIER_CONFIG_TTL_SECONDS; the TTL is unit-tested with a clock in
    # tests/governance/test_tier_store.py) picks the new table up without a restart.
    assert wait_for(lambda: native_model(gw) == "anthropic/claude-sonnet-4-20250514", timeout=20, every=0.1)
    assert {native_model(gw) for _ in range(5)} == {"anthropic/claude-sonnet-4-20250514"}
    shown = subprocess.run([sys.executable, "-m", "sentinel", "tiers", "show"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert "simple: anthropic/claude-sonnet-4-20250514 (cost 4)" in shown.stdout


def test_tier_entry_syntax_is_checked(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db"}
    result = subprocess.run([sys.executable, "-m", "sentinel", "tiers", "set", "simple", "gpt-4o"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "provider/model:cost" in result.stderr

