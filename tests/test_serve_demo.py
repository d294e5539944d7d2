"""`sentinel serve` on the embedded default, as a newcomer runs it: the printed curl line works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
    env.pop("SENTINEL_FORWARDED_ALLOW_IPS", None)
    env["SENTINEL_PORT"] = str(port)
    env["SENTINEL_ADMIN_KEY"] = "serve-demo-admin-key-0123"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True)
    reader.start()
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
        readme_says_so(lines)
        if shutil.which("curl"):  # the line exactly as printed, through a shell as a user pastes it
            out = subprocess.run(["sh", "-c", curl], capture_output=True, text=True, timeout=30).stdout
        else:  # the same request, made without curl
            body = re.search(r"-d '(.*)'$", curl)
            assert body is not None
            out = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body.group(1),
                             headers={"Authorization": f"Bearer {key.group(0)}",
                                      "Content-Type": "application/json"}, timeout=30).text
        assert '"choices"' in out and "Hello!" in out, out
        readme_examples_work(f"http://127.0.0.1:{port}", key.group(0))
        readme_admin_examples_work(port, env["SENTINEL_ADMIN_KEY"], tmp_path)
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
        # The embedded mock upstream keeps no history and serves no /__mock/* routes (they showed
        # every user's prompts to anything on the host), and takes only Sentinel's own random key.
        mock = next(m for line in errors if (m := re.search(r"MOCK upstream \((http://[\d.:]+)\)", line)))
        assert httpx.get(mock.group(1) + "/__mock/requests", timeout=5).status_code == 404
        guessed = httpx.post(mock.group(1) + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                             headers={"Authorization": "Bearer mock-upstream-key"}, timeout=5)
        assert guessed.status_code == 401, guessed.text
        forwarded_for_is_the_clients_word(port)
    finally:
        stop(proc)
        reader.join(10)
    assert "MOCK upstream" in "".join(errors)


def test_the_curl_line_works_the_moment_it_is_printed(tmp_path: Path) -> None:
    """README: `serve.sh` prints a curl line "that works as printed". It was printed with the port
    bound but not yet listening, before the app had started: the line run at once (pasted quickly,
    or by a script reading it) was refused — with `-s`, silently. The port now listens before the
    line is printed: a connection made then waits for the app instead of being refused."""
    import socket

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_", "DATABASE_"))}
    env.pop("SENTINEL_FORWARDED_ALLOW_IPS", None)
    env["SENTINEL_PORT"] = str(port)
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        curl = ""
        for line in proc.stdout:  # ends when serve does: a start that never prints the line fails below
            if line.startswith("Try: "):
                curl = line.rstrip("\n")[5:]
                break
        assert curl, "sentinel serve printed no curl line"
        with socket.create_connection(("127.0.0.1", port), timeout=30):  # refused before the fix
            pass
        key = re.search(r"sk-sentinel-[\w-]+", curl)
        assert key is not None
        if shutil.which("curl"):  # the line exactly as printed, through a shell, at once
            out = subprocess.run(["sh", "-c", curl], capture_output=True, text=True, timeout=60).stdout
        else:
            body = re.search(r"-d '(.*)'$", curl)
            assert body is not None
            out = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body.group(1),
                             headers={"Authorization": f"Bearer {key.group(0)}",
                                      "Content-Type": "application/json"}, timeout=60).text
        assert '"choices"' in out and "Hello!" in out, out
    finally:
        stop(proc)


def forwarded_for_is_the_clients_word(port: int) -> None:
    """With no SENTINEL_FORWARDED_ALLOW_IPS, a client writing a new X-Forwarded-For on each guess is
    still its socket's address to the failed-authentication throttle (30 a minute by default); and
    no `Server` header says what serves. The test gateways are served so too (`uvicorn_options`)."""
    codes = []
    for i in range(61):  # 31 in one window of a minute, however the windows fall
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30, headers={
            "Authorization": f"Bearer sk-sentinel-made-up-{i}", "X-Forwarded-For": f"198.51.100.{i}"})
        assert "server" not in answer.headers
        codes.append(answer.status_code)
        if answer.status_code == 429:
            break
    assert set(codes[:-1]) <= {401} and codes[-1] == 429, codes


README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
USING_IT = README.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
README_URL, README_KEY = "http://127.0.0.1:8080", "sk-sentinel-..."  # what README tells users to replace


def readme_says_so(printed: list[str]) -> None:
    """The demo key and curl lines `serve` prints are the ones README's "Two commands" shows."""
    shown = README.split("\n## Two commands\n", 1)[1].split("```\n", 3)[2].splitlines()
    for sample in shown[1:]:  # the listening line differs by --host (tests/test_config.py pins it)
        pattern = re.escape(sample).replace(re.escape(README_KEY), r"sk-sentinel-[\w-]+")
        pattern = pattern.replace(re.escape(README_URL), r"http://127\.0\.0\.1:\d+").replace(r"\.\.\.", ".*")
        assert any(re.fullmatch(pattern, line) for line in printed), (sample, printed)


def readme_examples_work(url: str, key: str) -> None:
    """README's "Using it" examples, as written, against `serve` on the embedded default: the OpenAI
    and Anthropic SDK snippets (run here) and the curl lines (through a shell, `KEY` the demo key);
    only the URL and key README says to replace are replaced."""
    import contextlib
    import io

    snippets = re.findall(r"```python\n(.*?)```", USING_IT, re.S)
    assert len(snippets) == 2 and "from openai import" in snippets[0] and "import anthropic" in snippets[1]
    for snippet in snippets:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(snippet.replace(README_URL, url).replace(README_KEY, key), "README.md", "exec"), {})  # noqa: S102
        assert printed.getvalue() == "Echo: Hi", printed.getvalue()  # the stream, printed whole
    if not shutil.which("curl"):
        return
    commands = [command.replace(README_URL, url) for block in re.findall(r"```bash\n(.*?)```", USING_IT, re.S)
                for command in block.replace("\\\n", " ").splitlines() if command.startswith("curl ")]
    assert len(commands) == 3
    for command in commands:
        done = subprocess.run(["sh", "-c", command], env={**os.environ, "KEY": key}, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0 and "Echo: Hello" in done.stdout and '"error"' not in done.stdout, (command, done)


def readme_admin_examples_work(port: int, admin_key: str, where: Path) -> None:
    """README's Admin API script, as written (`localhost:8080` the served port), each call answered."""
    if not shutil.which("curl"):
        return
    admin = README.split("\n### Admin API\n", 1)[1].split("\n#", 1)[0]
    script = re.findall(r"```bash\n(.*?)```", admin, re.S)[0].replace("localhost:8080", f"127.0.0.1:{port}")
    done = subprocess.run(["sh", "-ec", script], env={**os.environ, "SENTINEL_ADMIN_KEY": admin_key}, cwd=where,
                          capture_output=True, text=True, timeout=60)
    out = done.stdout
    assert done.returncode == 0 and '"error"' not in out, (done.returncode, out, done.stderr)
    assert '"plan":"team"' in out and out.count('"key":"sk-sentinel-') == 2 and '"period":"24h"' in out, out
    assert (where / "usage.csv").read_text().startswith("external_id,model,requests,"), (where / "usage.csv").read_text()


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

    earlier = asyncio.run(_demo_keys(settings, mint=True))
    demo = asyncio.run(_demo_keys(settings, mint=True))  # README: every start revokes the earlier demo keys
    assert demo is not None and asyncio.run(identity(demo)) is not None
    assert earlier is not None and asyncio.run(identity(earlier)) is None
    assert asyncio.run(_demo_keys(settings, mint=False)) is None
    assert asyncio.run(identity(demo)) is None


def test_the_start_up_line_says_when_every_interface_listens() -> None:
    """The banner said http://127.0.0.1:8080 while the default bind (0.0.0.0) is every interface."""
    from sentinel.config import Settings
    from sentinel.server import listening_line

    wildcard = listening_line(Settings(_env_file=None, port=8080))  # type: ignore[call-arg]
    assert "0.0.0.0:8080" in wildcard and "every interface" in wildcard and "http://127.0.0.1:8080" in wildcard
    local = listening_line(Settings(_env_file=None, host="127.0.0.1", port=8080))  # type: ignore[call-arg]
    assert local == "Sentinel listening on http://127.0.0.1:8080"
    assert listening_line(Settings(_env_file=None, host="::1", port=9))  == "Sentinel listening on http://[::1]:9"  # type: ignore[call-arg]


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads the limit from /proc (Linux)")
def test_serve_raises_its_open_files_limit(tmp_path: Path) -> None:
    """Each connection is a file descriptor: started with a soft limit of 256, the server runs with
    its hard limit (1,100 idle connections without any key took every one of the usual 1,024)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_", "DATABASE_"))}
    env["SENTINEL_PORT"] = str(port)
    start = ("import resource, runpy, sys; "
             f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard})); "
             "sys.argv = ['sentinel', 'serve', '--host', '127.0.0.1']; runpy.run_module('sentinel', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", start], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: live(port), timeout=30), "sentinel serve never answered /health/live"
        line = next(line for line in Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
                    if line.startswith("Max open files"))
        soft = line.split()[3]
    finally:
        stop(proc)
    assert soft == str(hard) if hard != resource.RLIM_INFINITY else int(soft) > 256, line


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a `sentinel serve` the way an operator does (SIGTERM); failing the test if it does not stop."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()
        pytest.fail("sentinel serve did not stop on SIGTERM")


def test_a_port_in_use_stops_serve_before_anything_starts(tmp_path: Path) -> None:
    """`serve` on a port another process holds printed the listening line, a fresh demo key and its
    curl line, started the mock and the app, then failed in uvicorn's words (`ERROR: [Errno 98] ...`,
    status 3). The address is now bound first: one line naming the settings, status 1, nothing else."""
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_", "DATABASE_"))}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for workers in ("1", "2"):
            extra = {} if workers == "1" else {"REDIS_URL": "redis://127.0.0.1:9/0"}  # never reached
            done = subprocess.run(
                [sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", workers],
                cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=60,
            )
            assert done.returncode == 1, (workers, done.returncode, done.stderr)
            assert done.stdout == "", done.stdout  # no listening line, no demo key
            assert done.stderr.strip() == (f"sentinel: cannot listen on 127.0.0.1:{port} (--host/--port, "
                                           "SENTINEL_HOST/SENTINEL_PORT): address already in use"), done.stderr
    assert not (tmp_path / "data" / "sentinel.db").exists()  # not migrated, no demo key minted
