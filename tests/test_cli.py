"""The `sentinel` console script, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args], env=full_env, capture_output=True, text=True, timeout=timeout
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    created = run(["keys", "create", "bob", "--name", "laptop"], env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-sentinel-") and " " not in key
    listed = run(["keys", "list"], env)
    assert "bob" in listed.stdout and "laptop" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout  # only the prefix is ever shown again
    key_id = next(line.split()[0] for line in listed.stdout.splitlines() if "bob" in line)
    revoked = run(["keys", "revoke", key_id], env)
    assert revoked.returncode == 0
    assert "revoked" in run(["keys", "list"], env).stdout
    missing = run(["keys", "revoke", "key_doesnotexist"], env)
    assert missing.returncode == 1


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    result = run(["serve"], {"SENTINEL_PORT": "not-a-port", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SENTINEL_PORT" in lines[0]
    assert "Traceback" not in result.stderr
