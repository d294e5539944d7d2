"""`sentinel serve` on the embedded default, as a newcomer runs it: the printed curl line works."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port
from tests.support.waiting import wait_for


def live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_prints_a_working_curl_line(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_", "DATABASE_"))}
    env["SENTINEL_PORT"] = str(port)
    env["SENTINEL_ADMIN_KEY"] = "serve-demo-admin-key-0123"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline and not any(line.startswith("Operator console: ") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        curl = next(line for line in lines if line.startswith("Try: "))[5:]
        key = re.search(r"sk-sentinel-[\w-]+", curl)
        assert key is not None
        assert wait_for(lambda: live(port), timeout=30), "sentinel serve never answered /health/live"
        if shutil.which("curl"):
            out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30).stdout
        else:  # the same request, made without curl
            body = re.search(r"-d '(.*)'$", curl)
            assert body is not None
            out = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body.group(1),
                             headers={"Authorization": f"Bearer {key.group(0)}",
                                      "Content-Type": "application/json"}, timeout=30).text
        assert '"choices"' in out and "Hello!" in out, out
        native = httpx.post(
            f"http://127.0.0.1:{port}/native/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi native"}]},
            headers={"Authorization": f"Bearer {key.group(0)}"}, timeout=30,
        )
        assert native.status_code == 200, native.text
        assert (tmp_path / "data" / "sentinel.db").exists()
        console = next(line for line in lines if line.startswith("Operator console: "))
        url = console.split()[2]
        assert url == f"http://127.0.0.1:{port}/admin"
        page = httpx.get(url, follow_redirects=True, timeout=30)
        assert page.status_code == 200 and "<form" in page.text and "serve-demo-admin-key" not in page.text
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            pytest.fail("sentinel serve did not stop on SIGTERM")
        stderr = proc.stderr.read() if proc.stderr else ""
    assert "MOCK upstream" in stderr


def test_a_demo_key_is_made_only_on_the_embedded_default(tmp_path: Path) -> None:
    """`serve` with nothing configured is a demo and prints a working key. Against a database a
    deployment uses (PostgreSQL), a Redis store, a providers file (whose own providers are real
    even when the built-in ones are mocked) or Zion, no key is made: it would be a working key in
    the deployment's logs."""
    from sentinel.config import Settings
    from sentinel.server import demo_mode

    def settings(**values: object) -> Settings:
        base = {"openai_api_key": None, "openai_api_url": None, "anthropic_api_key": None, "anthropic_api_url": None,
                "redis_url": None, "database_url": f"sqlite+aiosqlite:///{tmp_path}/s.db"}
        return Settings(_env_file=None, **{**base, **values})  # type: ignore[arg-type]

    providers = tmp_path / "providers.yaml"
    providers.write_text("providers: []\n")
    assert demo_mode(settings())
    assert not demo_mode(settings(database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/prod"))
    assert not demo_mode(settings(redis_url="redis://127.0.0.1:6379/0"))
    assert not demo_mode(settings(providers_file=providers))
    assert not demo_mode(settings(governance="zion", zion_api_url="http://zion", zion_api_key="z" * 20))
    assert not demo_mode(settings(openai_api_key="sk-real"))


def test_a_start_that_is_not_a_demo_revokes_the_demo_keys(tmp_path: Path) -> None:
    """A demo start's key must not outlive the demo: once real providers are configured, the next
    start revokes it (it would reach them under the default plan)."""
    import asyncio

    from sentinel.config import Settings
    from sentinel.governance.keys import KeyService
    from sentinel.server import _demo_keys
    from tests.support.accounts import database

    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    settings = Settings(_env_file=None, database_url=url, redis_url=None)  # type: ignore[call-arg]

    async def identity(key: str) -> object:
        async with database(url) as sessions:
            return await KeyService(sessions).authenticate(key)

    demo = asyncio.run(_demo_keys(settings, mint=True))
    assert demo is not None and asyncio.run(identity(demo)) is not None
    assert asyncio.run(_demo_keys(settings, mint=False)) is None
    assert asyncio.run(identity(demo)) is None
