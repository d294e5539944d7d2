"""The `sentinel` console script, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.accounts import record_and_roll_up
from tests.support.servers import free_port


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
    # No Redis: the running gateway's cache is its own process's, which this one cannot reach.
    assert "in-memory store" in revoked.stdout and "JWT_CACHE_TTL_SECONDS" in revoked.stdout, revoked.stdout
    assert "revoked" in run(["keys", "list"], env).stdout
    missing = run(["keys", "revoke", "key_doesnotexist"], env)
    assert missing.returncode == 1


@pytest.mark.parametrize(
    ("name", "value"), [("SENTINEL_PORT", "not-a-port"), ("DATABASE_POOL_SIZE", "0"), ("DATABASE_MAX_OVERFLOW", "-1")]
)
def test_bad_config_is_one_clear_line(tmp_path: Path, name: str, value: str) -> None:
    result = run(["serve"], {name: value, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "value"), [
    ("OPENAI_API_URL", "https://alice:s3cretpw@api.openai.com/v1"),
    ("ANTHROPIC_API_URL", "https://s3cretpw@api.anthropic.com"),
    ("ZION_API_URL", "http://alice:s3cretpw@zion.internal:8000"),
    ("SENTINEL_CONFIG", "providers.yaml"),
])
def test_a_provider_or_zion_url_carrying_credentials_is_refused_at_start(
    tmp_path: Path, name: str, value: str
) -> None:
    """Sentinel sends a provider's key (and Zion's) in `Authorization`; the HTTP client refuses a URL's
    `user:password@` beside it, so the server started and every call to that upstream was a 500
    `internal_error` with a traceback in the log. Refused at start, the URL not quoted back."""
    env = {name: value, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db", "SENTINEL_PORT": str(free_port()),
           "SENTINEL_HOST": "127.0.0.1", "OPENAI_API_KEY": "sk-upstream-0123456789"}
    if name == "SENTINEL_CONFIG":
        (tmp_path / value).write_text(
            "providers:\n  - {name: groq, kind: openai, base_url: 'https://u:s3cretpw@api.groq.com/openai/v1'}\n"
        )
        env[name] = str(tmp_path / value)
    if name == "ZION_API_URL":
        env.update(GOVERNANCE="zion", ZION_API_KEY="zion-key-0123456789abcdef")
    result = run(["serve"], env, timeout=30)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0] and "credentials" in lines[0], result.stderr
    assert "s3cretpw" not in result.stderr


def test_plans_users_usage_commands(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    created = run(["plans", "set", "pro", "--requests", "600", "--input-tokens", "2000000", "--window", "1h"], env)
    assert created.returncode == 0, created.stderr
    added = run(["plans", "set", "pro", "--add", "--limit", "requests=5000/1d"], env)
    assert added.returncode == 0, added.stderr
    listed = run(["plans", "list"], env).stdout
    assert "requests=600/1h" in listed and "input_tokens=2000000/1h" in listed and "requests=5000/1d" in listed
    assert run(["users", "set-plan", "carol", "pro"], env).returncode == 0
    assert run(["users", "set-plan", "carol", "nope"], env).returncode == 1
    bad = run(["plans", "set", "x", "--requests", "5"], env)
    assert bad.returncode == 2 and "--window" in bad.stderr
    too_long = run(["plans", "set", "x", "--requests", "5", "--window", "99999999999999d"], env)
    assert too_long.returncode == 2 and "at most 366d" in too_long.stderr and "Traceback" not in too_long.stderr

    import asyncio
    from datetime import UTC, datetime

    from sentinel.db.engine import create_engine, session_factory
    from sentinel.domain.usage import UsageRecord

    async def seed() -> None:
        engine = create_engine(env["DATABASE_URL"])
        now = datetime.now(UTC)
        rows = [
            UsageRecord(f"r{i}", "carol", None, model, "openai", "chat", 10 * (i + 1), i + 1, "measured", 200, now, now)
            for i, model in enumerate(["gpt-4o", "gpt-4o", "gpt-4o-mini"])
        ]
        try:
            await record_and_roll_up(session_factory(engine), rows)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    shown = run(["usage", "show", "carol", "--since", "1d"], env).stdout
    lines = {line.split()[0]: line.split()[1:] for line in shown.splitlines()[1:]}
    assert lines["gpt-4o"] == ["2", "30", "3"]
    assert lines["gpt-4o-mini"] == ["1", "30", "3"]
    assert lines["TOTAL"] == ["3", "60", "6"]
    exported = run(["usage", "export", "--since", "1d"], env).stdout.splitlines()
    assert exported[1:] == ["carol,gpt-4o,2,30,3,0", "carol,gpt-4o-mini,1,30,3,0"]  # the same figures


def test_usage_show_writes_a_reported_model_name_as_text_never_as_terminal_commands(tmp_path: Path) -> None:
    """A model name a provider reports (an eval run's per-model usage) is recorded
    with no check of its characters, and `usage show` printed it raw to the operator's terminal: an
    ESC sequence in it retitled the window or cleared the screen, a C1 CSI (U+009B) started one too,
    a bidi override reordered the line — and so did `usage export`, the console's CSV. Such characters
    are shown as `\\uXXXX` escapes now (in the CSV but for tab, CR and LF, which quoting keeps in their cell)."""
    import asyncio
    import csv
    import io
    from datetime import UTC, datetime

    from sentinel.db.engine import create_engine, migrate, session_factory
    from sentinel.domain.usage import UsageRecord

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    models = ["evil\x1b]0;owned\x07\x1b[2J", "csi\x9b31m", "gpt\u202e4o", "gpt-4o"]

    async def seed() -> None:
        engine = create_engine(env["DATABASE_URL"])
        now = datetime.now(UTC)
        rows = [UsageRecord(f"r{i}", "carol", None, model, "openai", "chat", 1, 1, "measured", 200, now, now)
                for i, model in enumerate(models)]
        await migrate(engine)
        try:
            await record_and_roll_up(session_factory(engine), rows)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    shown = run(["usage", "show", "carol", "--since", "1d"], env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.isprintable() or all(line.isprintable() for line in shown.stdout.splitlines()), shown.stdout
    names = [line.split()[0] for line in shown.stdout.splitlines()[1:-1]]
    escaped = ["evil\\u001b]0;owned\\u0007\\u001b[2J", "csi\\u009b31m", "gpt\\u202e4o", "gpt-4o"]
    assert sorted(names) == sorted(escaped)
    exported = run(["usage", "export", "--since", "1d"], env)  # the console's CSV, on the terminal here
    assert exported.returncode == 0, exported.stderr
    assert all(line.isprintable() for line in exported.stdout.splitlines()), exported.stdout
    assert sorted(row[1] for row in list(csv.reader(io.StringIO(exported.stdout)))[1:]) == sorted(escaped)


def test_cli_changes_go_through_the_admin_service(tmp_path: Path) -> None:
    """Plans, plan assignments, keys and tiers from the CLI are checked like the console's and audited
    with actor `cli`; `usage export` prints the console's CSV."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    bad_name = run(["plans", "set", "bad name", "--limit", "requests=5/1m"], env)
    assert bad_name.returncode == 2 and "name" in bad_name.stderr
    assert run(["plans", "set", "pro", "--limit", "requests=5/1m"], env).returncode == 0
    assert run(["users", "set-plan", "dora", "pro"], env).returncode == 0
    key_id = run(["keys", "create", "dora"], env).stdout.split()[2]
    assert run(["keys", "revoke", key_id], env).returncode == 0
    bad_tier = run(["tiers", "set", "simple", "openai/gpt-4o:42"], env)
    assert bad_tier.returncode == 2 and "relative cost" in bad_tier.stderr
    assert run(["tiers", "set", "simple", "openai/gpt-4o:2:2.5:10"], env).returncode == 0
    assert "simple: openai/gpt-4o (cost 2)" in run(["tiers", "show"], env).stdout

    import asyncio

    from sentinel.db.engine import create_engine, session_factory
    from sentinel.governance.audit import AuditLog

    async def audit() -> list[tuple[str, str, str]]:
        engine = create_engine(env["DATABASE_URL"])
        try:
            return [(e.actor, e.action, e.target) for e in await AuditLog(session_factory(engine)).recent()]
        finally:
            await engine.dispose()

    assert asyncio.run(audit()) == [
        ("cli", "tier.set", "simple"), ("cli", "key.revoke", key_id), ("cli", "key.create", key_id),
        ("cli", "user.plan", "dora"), ("cli", "plan.create", "pro"),
    ]
    exported = run(["usage", "export", "--since", "30d"], env)
    assert exported.returncode == 0
    assert exported.stdout.splitlines() == ["external_id,model,requests,input_tokens,output_tokens,cost_usd"]


def test_tiers_show_on_the_embedded_default_is_the_mock_providers_table(tmp_path: Path) -> None:
    """With no provider configured `sentinel serve` runs the built-in mock as OpenAI and Anthropic, and
    serves their default tiers: `tiers show` (the table in effect) printed `(none)` for every tier."""
    env = {  # as `serve` would read it, `SENTINEL_CONFIG=` (empty: unset) included
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "SENTINEL_CONFIG": "",
        "OPENAI_API_KEY": "", "OPENAI_API_URL": "", "ANTHROPIC_API_KEY": "", "ANTHROPIC_API_URL": "",
    }
    shown = run(["tiers", "show"], env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "simple: openai/gpt-4o-mini (cost 1), anthropic/claude-3-5-haiku-20241022 (cost 2)",
        "moderate: openai/gpt-4o (cost 5), anthropic/claude-sonnet-4-20250514 (cost 6)",
        "complex: openai/gpt-4o (cost 5), anthropic/claude-sonnet-4-20250514 (cost 6)",
    ]
    assert run(["tiers", "set", "simple", "openai/gpt-4o:2"], env).returncode == 0
    assert run(["tiers", "show"], env).stdout.splitlines()[:2] == [
        "simple: openai/gpt-4o (cost 2)",
        "moderate: openai/gpt-4o (cost 5), anthropic/claude-sonnet-4-20250514 (cost 6)",
    ]


def test_an_unreadable_providers_file_is_one_line_and_status_2_for_every_command(tmp_path: Path) -> None:
    """A providers file missing or refused came out of `keys`, `plans`, `users`, `usage` and `tiers` as
    a ConfigError traceback (`serve` said it in one line)."""
    (tmp_path / "bad.yaml").write_text("bogus: 1\n", encoding="utf-8")
    for config in (str(tmp_path / "missing.yaml"), str(tmp_path / "bad.yaml")):
        env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "SENTINEL_CONFIG": config}
        for args in (["keys", "list"], ["plans", "list"], ["tiers", "show"]):
            result = run(args, env)
            assert result.returncode == 2, (args, result.returncode, result.stderr)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "SENTINEL_CONFIG" in lines[0] and "Traceback" not in result.stderr


def test_values_no_store_can_hold_are_one_line_and_status_2(tmp_path: Path) -> None:
    """A limit past 10^15 (once an OverflowError traceback, or stored where the console then refused
    to save the plan again) and an argument that is not UTF-8 (once a UnicodeEncodeError traceback)."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    huge = run(["plans", "set", "pro", "--requests", "99999999999999999999", "--window", "1h"], env)
    large = run(["plans", "set", "pro", "--requests", str(10**16), "--window", "1h"], env)
    undecodable = subprocess.run(
        [sys.executable, "-m", "sentinel", "keys", "create", os.fsdecode(b"\xff\xfe"), "--name", "x"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )
    for result in (huge, large, undecodable):
        assert result.returncode == 2, (result.returncode, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pro" not in run(["plans", "list"], env).stdout


def test_control_characters_in_a_key_s_user_name_or_email_are_refused(tmp_path: Path) -> None:
    """The admin API and the console refuse them; `keys create` stored a line break or a terminal
    escape in the user's id (a user the admin API could then not address) and in the audit log."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    for args in (["keys", "create", "ali\nce", "--name", "x"], ["keys", "create", "alice", "--name", "\x1b]8;;x\x07"],
                 ["users", "set-plan", "bo\rb", "free"]):
        result = run(args, env)
        assert result.returncode == 2, (args, result.returncode, result.stdout, result.stderr)
        assert "control characters" in result.stderr, result.stderr
    assert "ali" not in run(["keys", "list"], env).stdout


def test_a_database_a_newer_sentinel_migrated_is_one_clear_line(tmp_path: Path) -> None:
    """An older Sentinel started on a database a newer one migrated (a rollback after an upgrade):
    Alembic's "Can't locate revision" came out as a traceback — raw out of `serve` on the embedded
    default (the demo key is made before the server starts), and out of every other command. Now
    each stops with one line naming the revision and what to do, and a non-zero status."""
    import sqlite3

    url = f"sqlite+aiosqlite:///{tmp_path}/newer.db"
    env = {"DATABASE_URL": url, "SENTINEL_PORT": str(free_port()), "SENTINEL_HOST": "127.0.0.1"}
    assert run(["keys", "list"], env).returncode == 0  # migrated to this Sentinel's head
    with sqlite3.connect(tmp_path / "newer.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0999_from_the_future'")
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_"))}
    for args in (["keys", "list"], ["serve"]):
        result = subprocess.run([sys.executable, "-m", "sentinel", *args], env={**plain, **env}, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert "0999_from_the_future" in result.stderr and "newer" in result.stderr, (args, result.stderr)


def test_a_malformed_providers_file_stops_serve_in_one_line(tmp_path: Path) -> None:
    """The start-up's error log carried the whole traceback of a configuration mistake, and the
    upstream client pool opened before the file was read was left unclosed (asyncio's "Unclosed
    client session"): the file is now read before any pool opens, and the error is one line."""
    (tmp_path / "providers.yaml").write_text("{bad")
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db", "SENTINEL_PORT": str(free_port()),
           "SENTINEL_HOST": "127.0.0.1", "SENTINEL_CONFIG": str(tmp_path / "providers.yaml")}
    result = run(["serve"], env)
    assert result.returncode != 0
    assert "SENTINEL_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr, result.stderr


def test_an_unreachable_database_is_one_line_naming_it(tmp_path: Path) -> None:
    """A database that cannot be reached at start-up came out as a driver's traceback (every CLI
    command) or as `[Errno 111] Connect call failed ...` under a traceback (`serve`), never saying
    it was the database. Now one line names DATABASE_URL (never its password), status non-zero."""
    url = f"postgresql+asyncpg://sentinel:s3cret-pw@127.0.0.1:{free_port()}/sentinel"
    env = {"DATABASE_URL": url, "SENTINEL_PORT": str(free_port()), "SENTINEL_HOST": "127.0.0.1"}
    for args in (["keys", "list"], ["serve"]):
        result = run(args, env)
        assert result.returncode != 0, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert "cannot reach the database (DATABASE_URL)" in result.stderr, (args, result.stderr)
        assert "s3cret-pw" not in result.stderr, (args, result.stderr)


def test_a_sqlite_file_that_cannot_be_created_is_one_line_naming_it(tmp_path: Path) -> None:
    """A SQLite DATABASE_URL whose file cannot be created (its directory is a file, or not writable)
    was a FileNotFoundError/NotADirectoryError traceback from every CLI command and from `serve`."""
    (tmp_path / "not-a-dir").write_text("")
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/not-a-dir/sentinel.db",
        "SENTINEL_PORT": str(free_port()), "SENTINEL_HOST": "127.0.0.1",
    }
    for args in (["keys", "list"], ["keys", "create", "bob"], ["serve"]):
        result = run(args, env)
        assert result.returncode != 0, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot open the database (DATABASE_URL)" in lines[0], (args, result.stderr)


def test_a_plan_holds_at_most_50_limits_from_the_cli_too(tmp_path: Path) -> None:
    """The console and the admin API refuse a 51st limit; `plans set` stored any number (one `--limit`
    or `--window` each, or `--add` onto a plan already full), and the console could then not save
    the plan again."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    windows = [arg for n in range(1, 52) for arg in ("--window", f"{n}s")]
    too_many = run(["plans", "set", "many", "--requests", "5", *windows], env)
    full = run(["plans", "set", "full", *(f"--limit=requests=5/{n}m" for n in range(1, 51))], env)
    assert full.returncode == 0, full.stderr
    one_more = run(["plans", "set", "full", "--add", "--limit", "requests=5/1d"], env)
    for result in (too_many, one_more):
        assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "at most 50 limits" in lines[0], result.stderr
    listed = run(["plans", "list"], env).stdout
    assert "many" not in listed and "requests=5/1d" not in listed and listed.count("requests=5/") == 50


def test_a_port_no_socket_can_have_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    """REDIS_URL or DATABASE_URL with a port past 65535 was the driver's ValueError/OverflowError
    under a traceback (from `keys revoke` and every command reaching the database)."""
    sqlite = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    assert run(["keys", "create", "bob"], {"DATABASE_URL": sqlite}).returncode == 0
    key_id = run(["keys", "list"], {"DATABASE_URL": sqlite}).stdout.splitlines()[-1].split()[0]
    for env, setting in (
        ({"DATABASE_URL": sqlite, "REDIS_URL": "redis://:s3cret-pw@127.0.0.1:99999/0"}, "REDIS_URL"),
        ({"DATABASE_URL": "postgresql+asyncpg://u:s3cret-pw@127.0.0.1:99999/db"}, "DATABASE_URL"),
    ):
        result = run(["keys", "revoke", key_id], env)
        assert result.returncode == 2, (setting, result.returncode, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and setting in lines[0] and "99999" in lines[0], result.stderr
        assert "s3cret-pw" not in result.stderr


def test_a_provider_key_with_a_trailing_newline_stops_serve_in_one_line(tmp_path: Path) -> None:
    """A key read from a secret file (`OPENAI_API_KEY=$(cat key)` keeps no newline, a mounted file or
    `echo key > .env`-style values do) started the server: every upstream call was then a 500."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db", "SENTINEL_PORT": str(free_port()),
           "SENTINEL_HOST": "127.0.0.1", "OPENAI_API_URL": "http://127.0.0.1:9/v1",
           "OPENAI_API_KEY": "sk-upstream-secret-0123\n"}
    result = run(["serve"], env, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OPENAI_API_KEY" in lines[0] and "whitespace" in lines[0], result.stderr
    assert "sk-upstream-secret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("setting", "url", "says"),
    [
        ("DATABASE_URL", "postgresql://u:s3cret-pw@127.0.0.1:99999/db", "99999"),  # the `postgresql://` spelling skipped the check
        ("DATABASE_URL", "postgres://u:s3cret-pw@127.0.0.1:5432x/db", "not a number"),
        ("DATABASE_URL", "postgresql://u:s3cret-pw@127.0.0.1/db?sslmode=requir", "'sslmode' must be one of"),
        ("DATABASE_URL", "postgresql://u:s3cret-pw@127.0.0.1/db?application_name=x", "'application_name' is not one"),
        ("DATABASE_URL", "postgresql://u:s3cret-pw@127.0.0.1/db?ssl=require&ssl=disable", "more than once"),
        ("DATABASE_URL", "postgresql://u:s3cret-pw@/db?host=10.0.0.1:5432&host=10.0.0.2", "each need a port"),
        ("DATABASE_URL", "postgresql://u:s3cret-pw@10.0.0.1:5432,10.0.0.2:5432/db", "several hosts"),
        ("REDIS_URL", "redis://:s3cret-pw@127.0.0.1:63a9/0", "not a number"),
        ("REDIS_URL", "redis://:s3cret-pw@127.0.0.1:6379/0?socket_timeout=soon", "'socket_timeout'"),
        ("REDIS_URL", "redis://:s3cret-pw@127.0.0.1:6379/0?sockettimeout=1", "'sockettimeout' is not one"),
        ("REDIS_URL", "redis://:s3cret-pw@127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "need rediss://"),
        ("REDIS_URL", "rediss://:s3cret-pw@127.0.0.1:6379/0?ssl_cert_reqs=CERT_NONE", "'ssl_cert_reqs' must be one of"),
        ("REDIS_URL", "unix://:s3cret-pw@/run/redis.sock?socket_keepalive=true", "'socket_keepalive' is not one"),
        ("REDIS_URL", "redis://:s3cret-pw@127.0.0.1:6379/0?db=1&db=2", "more than once"),
        ("REDIS_URL", "redis+cluster://:s3cret-pw@127.0.0.1:7000?socket_timeout=1", "no options"),
    ],
)
def test_a_store_url_its_driver_cannot_take_is_one_line_naming_the_setting(
    tmp_path: Path, setting: str, url: str, says: str,
) -> None:
    """Each was a traceback out of every command (the driver's `int()`, asyncpg's "unexpected keyword
    argument 'sslmode'", redis-py's "Invalid value"), and `serve` failed at start after a traceback."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", setting: url}
    result = run(["keys", "list"], env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and setting in lines[0] and says in lines[0], result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr


def test_a_redis_url_option_the_client_does_not_take_stops_serve_in_one_line(tmp_path: Path) -> None:
    """`?sockettimeout=1` (a typo) reached the Redis connection as a keyword it does not take: `serve`
    printed its listening line, then a TypeError traceback from the start, and exited."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/r.db", "SENTINEL_PORT": str(free_port()),
           "SENTINEL_HOST": "127.0.0.1", "REDIS_URL": "redis://:s3cret-pw@127.0.0.1:6379/0?sockettimeout=1"}
    result = run(["serve"], env, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "REDIS_URL" in lines[0] and "'sockettimeout'" in lines[0], result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_a_postgres_url_with_libpq_s_sslmode_is_taken(pg_url: str) -> None:
    """`?sslmode=` (libpq's and most providers' spelling; asyncpg calls it `ssl`) was a TypeError
    traceback out of every command and a failed start."""
    plain = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    for query in ("?sslmode=disable", "?sslmode=prefer&target_session_attrs=any"):
        result = run(["keys", "list"], {"DATABASE_URL": plain + query})
        assert result.returncode == 0, (query, result.stderr)
        assert result.stdout.startswith("KEY ID") and result.stderr == "", (query, result.stderr)
    refused = run(["keys", "list"], {"DATABASE_URL": plain + "?sslmode=require"})  # the test server has no TLS
    assert refused.returncode == 1 and "cannot reach the database (DATABASE_URL)" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_providers_file_nested_too_deeply_is_one_line_for_serve_and_commands(tmp_path: Path) -> None:
    """The YAML reader recurses once per level: `[[[[...` was a RecursionError traceback."""
    (tmp_path / "providers.yaml").write_text("tiers: " + "[" * 20_000 + "]" * 20_000 + "\n")
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db", "SENTINEL_PORT": str(free_port()),
           "SENTINEL_HOST": "127.0.0.1", "SENTINEL_CONFIG": str(tmp_path / "providers.yaml")}
    for args in (["serve"], ["tiers", "show"]):
        result = run(args, env)
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "SENTINEL_CONFIG" in lines[0] and "nested too deeply" in lines[0], result.stderr


def test_a_providers_file_serve_refuses_is_one_line_and_status_2_before_anything_starts(tmp_path: Path) -> None:
    """It was found by the app's start, inside uvicorn: status 3, after the listening line, the
    warnings and uvicorn's own lines."""
    (tmp_path / "providers.yaml").write_text("models:\n  - {name: fast, provider: nosuch}\n")
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db", "SENTINEL_PORT": str(free_port()),
           "SENTINEL_HOST": "127.0.0.1", "SENTINEL_CONFIG": str(tmp_path / "providers.yaml")}
    result = run(["serve"], env)
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    assert result.stderr == ("sentinel: invalid configuration: SENTINEL_CONFIG: model 'fast' names provider 'nosuch', "
                             "which is not configured\n")


def test_a_user_can_be_put_back_on_the_default_plan(tmp_path: Path) -> None:
    """`users set-plan` could only name a plan: a user once put on one could never be given back to the
    default plan from the command line (`""` was "plan '' does not exist")."""
    import sqlite3

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    assert run(["plans", "set", "pro", "--limit", "requests=5/1m"], env).returncode == 0
    assert run(["users", "set-plan", "erin", "pro"], env).returncode == 0
    back = run(["users", "set-plan", "erin", "--default"], env)
    assert back.returncode == 0, back.stderr
    assert "default plan" in back.stdout
    with sqlite3.connect(tmp_path / "cli.db") as db:
        assert db.execute("SELECT plan_name FROM users WHERE external_id = 'erin'").fetchall() == [(None,)]
    for args in (["users", "set-plan", "erin"], ["users", "set-plan", "erin", "pro", "--default"]):
        refused = run(args, env)
        assert refused.returncode == 2 and "--default" in refused.stderr and "Traceback" not in refused.stderr


def test_a_revocation_redis_did_not_hear_about_exits_3_and_revoking_again_completes_it(
    tmp_path: Path, redis_url: str
) -> None:
    """With Redis unreachable the tombstone was not written (logged only) and `keys revoke` said
    "revoked", exit 0, while the identity cached in Redis kept the key working for up to the TTL."""
    import redis

    from sentinel.governance.keys import hash_key

    sqlite = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    created = run(["keys", "create", "bob"], {"DATABASE_URL": sqlite})
    key_id, key = created.stdout.split()[2], created.stdout.strip().splitlines()[-1]
    closed = {"DATABASE_URL": sqlite, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for _ in range(2):  # and again while Redis is still away: not "no such key", the same line
        result = run(["keys", "revoke", key_id], closed)
        assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "revoked in the database" in lines[0] and "again" in lines[0], result.stderr
        assert "revoked" not in result.stdout
    listed = run(["keys", "list"], {"DATABASE_URL": sqlite}).stdout.splitlines()
    assert [line.split()[-1] for line in listed if line.startswith(key_id)] == ["revoked"]  # in the database
    retried = run(["keys", "revoke", key_id], {"DATABASE_URL": sqlite, "REDIS_URL": redis_url})
    assert retried.returncode == 0, retried.stderr
    # The tombstone is in the shared cache: refused now, not once a TTL ends (as it said before).
    assert "every gateway sharing this Redis" in retried.stdout and "TTL" not in retried.stdout, retried.stdout
    client = redis.Redis.from_url(redis_url)
    try:
        tombstone = client.get(f"sentinel:profile:{hash_key(key)}")
    finally:
        client.close()
    assert tombstone is not None and tombstone.startswith(b'{"v":null')


def test_a_plan_change_redis_did_not_hear_about_exits_3_and_making_it_again_completes_it(
    tmp_path: Path, redis_url: str
) -> None:
    """With Redis unreachable a plan change was saved and audited, exit 0 ("applies within
    CACHE_TTL_SECONDS"), while the plan cached in Redis stayed in force for up to that TTL once it was
    back. `plans delete` says so and names the users to put on the default plan again; `users
    set-plan` says so; made again with Redis back, the cached plan is dropped."""
    import redis

    sqlite = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    assert run(["plans", "set", "gold", "--requests", "1000", "--window", "1m"], {"DATABASE_URL": sqlite}).returncode == 0
    assert run(["users", "set-plan", "bob", "gold"], {"DATABASE_URL": sqlite}).returncode == 0
    client = redis.Redis.from_url(redis_url)
    try:  # bob's plan as a gateway cached it
        cached = b'{"v":{"name":"gold","limits":[{"metric":"requests","window_seconds":60,"limit":1000,"external":null}],"basis":""},"fresh_until":9e12}'
        client.set("sentinel:limits:bob", cached)
        closed = {"DATABASE_URL": sqlite, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        for args in (["plans", "set", "gold", "--requests", "500", "--window", "1m"], ["plans", "delete", "gold"],
                     ["users", "set-plan", "bob", "--default"]):
            result = run(args, closed)
            assert result.returncode == 3, (args, result.returncode, result.stdout, result.stderr)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "CACHE_TTL_SECONDS" in lines[0] and "again" in lines[0], result.stderr
            assert "Traceback" not in result.stderr
            assert result.stdout.split() == (["bob"] if args[1] == "delete" else []), result.stdout
        assert client.get("sentinel:limits:bob") == cached  # not dropped: what the line warns of
        retried = run(["users", "set-plan", "bob", "--default"], {"DATABASE_URL": sqlite, "REDIS_URL": redis_url})
        assert retried.returncode == 0, retried.stderr
        assert (client.get("sentinel:limits:bob") or b"").startswith(b'{"v":null')  # dropped (held)
    finally:
        client.close()
    assert run(["plans", "list"], {"DATABASE_URL": sqlite}).stdout.strip() == ""  # deleted at the first try


def test_keys_list_prints_every_key_reading_them_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys list` read every key into memory at once; it reads them a page at a time (KEYS_PAGE, the
    admin API's largest page: two here) and still prints them all, oldest first."""
    from sentinel import cli
    from sentinel.governance.keys import KeyService

    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    for user in ("ann", "ben", "cy", "ben", "dee"):
        assert cli.main(["keys", "create", user]) == 0
    read: list[tuple[str | None, int | None, int]] = []
    original = KeyService.list_keys

    async def spied(self: Any, external_id: str | None = None, *, limit: int | None = None, offset: int = 0) -> Any:
        read.append((external_id, limit, offset))
        return await original(self, external_id, limit=limit, offset=offset)

    monkeypatch.setattr(KeyService, "list_keys", spied)
    monkeypatch.setattr(cli, "KEYS_PAGE", 2)
    capsys.readouterr()
    assert cli.main(["keys", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[1] for row in rows] == ["ann", "ben", "cy", "ben", "dee"]
    assert read == [(None, 2, 0), (None, 2, 2), (None, 2, 4)]
    assert cli.main(["keys", "list", "--user", "ben"]) == 0
    assert [row.split()[1] for row in capsys.readouterr().out.splitlines()[1:]] == ["ben", "ben"]


def test_a_database_locked_elsewhere_is_one_clear_line_within_its_timeout(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock (`serve` committing, a backup): a command waited
    the fixed 5 s busy timeout, then printed a traceback ending in `GovernanceUnavailable: API key
    store unavailable: OperationalError`. Now it waits DATABASE_TIMEOUT_SECONDS and says so in one
    line, with SQLite's own words."""
    import sqlite3

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "DATABASE_TIMEOUT_SECONDS": "0.2"}
    assert run(["keys", "create", "alice"], env).returncode == 0
    holder = sqlite3.connect(tmp_path / "cli.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held
        locked = run(["keys", "create", "bob"], env, timeout=20)
    finally:
        holder.close()
    assert locked.returncode == 1
    lines = [line for line in locked.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in locked.stderr, locked.stderr
    assert "database is locked" in lines[0] and "API key store unavailable" in lines[0]
    assert run(["keys", "create", "bob"], env).returncode == 0  # released: it works again


def test_a_command_s_statement_may_take_longer_than_a_request_may_wait(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sentinel usage export` reads the whole ledger (grouped by user and model): on a large
    PostgreSQL ledger that takes longer than DATABASE_TIMEOUT_SECONDS (5 s), the bound of a request's
    statements, and the command failed with `usage ledger unavailable: TimeoutError` every time.
    The command line's statements are not bounded (its connect is). A statement that takes longer
    than the timeout stands in for the large ledger here."""
    import asyncio

    from sqlalchemy import text

    from sentinel import cli
    from sentinel.config import Settings

    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("DATABASE_TIMEOUT_SECONDS", "0.2")
    settings = Settings()

    async def slow(admin: Any) -> int:
        async with admin.ledger._sessions() as session:
            await session.execute(text("SELECT pg_sleep(0.5)"))
        return 0

    assert asyncio.run(cli._with_admin(settings, slow)) == 0


def test_revoking_by_the_key_itself_never_shows_the_key(tmp_path: Path) -> None:
    """`keys revoke` takes a key id; given the key itself (a mistake an operator with a leaked key
    makes), it printed `no such key: sk-sentinel-...`, the secret, on stderr. Any other unknown id
    was echoed raw: a terminal escape sequence in it reached the operator's terminal."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    key = run(["keys", "create", "bob"], env).stdout.strip().splitlines()[-1]
    pasted = run(["keys", "revoke", key], env)
    assert pasted.returncode == 2, (pasted.returncode, pasted.stderr)
    lines = [line for line in pasted.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a key id" in lines[0] and "keys list" in lines[0], pasted.stderr
    assert key not in pasted.stderr and key[len("sk-sentinel-"):][:8] not in pasted.stderr
    # Its body alone (the public prefix dropped) is the key too: it was `no such key: '<body>'`.
    body = run(["keys", "revoke", f" {key[len('sk-sentinel-'):]}"], env)
    assert body.returncode == 2 and "not a key id" in body.stderr, (body.returncode, body.stderr)
    assert key[len("sk-sentinel-"):][:8] not in body.stderr
    extra = run(["keys", "list", key[len("sk-sentinel-"):]], env)  # argparse quotes an argument it did not expect
    assert extra.returncode == 2 and "unrecognized arguments: ***" in extra.stderr, extra.stderr
    assert "active" in run(["keys", "list"], env).stdout  # nothing revoked
    hostile = run(["keys", "revoke", "key_\x1b]2;pwned\x07" + "x" * 5000], env)
    assert hostile.returncode == 1, hostile.stderr
    lines = [line for line in hostile.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no such key" in lines[0] and len(lines[0]) < 200, hostile.stderr
    assert "\x1b" not in hostile.stderr and "\x07" not in hostile.stderr


def test_settings_that_are_not_utf8_are_one_line_and_status_2(tmp_path: Path) -> None:
    """A `.env` or providers file that is not UTF-8 was a UnicodeDecodeError traceback (status 1) out of
    every command; an environment value that is not (SENTINEL_ADMIN_KEY) was accepted, then a
    traceback at start-up."""
    (tmp_path / "providers.yaml").write_bytes(b"providers: [] # \xff\n")
    (tmp_path / "with-dotenv").mkdir()
    (tmp_path / "with-dotenv" / ".env").write_bytes(b"SENTINEL_PORT=8\xff\n")
    base = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    for extra, cwd in (({"SENTINEL_CONFIG": str(tmp_path / "providers.yaml")}, tmp_path),
                       ({}, tmp_path / "with-dotenv"),
                       ({"SENTINEL_ADMIN_KEY": "an-admin-key-\udcff-0123456789"}, tmp_path)):
        result = subprocess.run([sys.executable, "-m", "sentinel", "keys", "list"], env={**base, **extra}, cwd=cwd,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (extra, cwd, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "UTF-8" in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["plans", "set", "pro", "--requests", "1.5", "--window", "1h"],
        ["plans", "set", "pro", "--requests", "5", "--window", "-1m"],  # argparse takes -1m for an option
        ["keys"],
        ["no-such-command"],
        ["serve", "--port", "0"],
        ["serve", "--workers", "0"],
        ["serve", "--workers", "100000"],  # was taken: as many processes forked
        ["mock-upstream", "--latency-ms", "-5"],  # was a ValueError traceback
        ["mock-upstream", "--latency-ms", "nan"],  # was taken: every answer failed
        ["mock-upstream", "--latency-ms", "1e308"],
        ["mock-upstream", "--port", "70000"],  # was taken (uvicorn wrapped it)
        ["keys", "revoke", "key_0123456789ab", "sk-sentinel-PastedSecret0123"],  # quoted back by argparse
    ],
)
def test_a_mistyped_command_line_is_one_line_and_status_2(tmp_path: Path, args: list[str]) -> None:
    """argparse's refusals came after its usage block (several lines); some values it took were a
    traceback or a mock that never answered."""
    result = run(args, {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}, timeout=20)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sentinel") and "--help" in lines[0], result.stderr
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr and result.stdout == ""
    assert "PastedSecret" not in result.stderr


def test_the_mock_upstream_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    """It printed "mock upstream on http://..." and then uvicorn's error, status 3."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run(["mock-upstream", "--port", str(port)], {}, timeout=20)
    assert result.returncode == 1 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    assert result.stderr == f"sentinel: cannot listen on 127.0.0.1:{port} (--host/--port): address already in use\n"


def test_a_tier_candidate_with_control_characters_is_refused(tmp_path: Path) -> None:
    """`tiers set` stored a terminal escape in a provider's name (a model's is printable ASCII): `tiers
    show` wrote it raw to the operator's terminal."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    result = run(["tiers", "set", "simple", "open\x1b]2;pwned\x07ai/gpt-4o:1"], env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "control characters" in lines[0] and "\x1b" not in result.stderr, result.stderr
    shown = run(["tiers", "show"], env)
    assert shown.returncode == 0 and "pwned" not in shown.stdout


def test_a_plan_can_be_deleted_and_its_users_go_back_on_the_default_plan(tmp_path: Path) -> None:
    """The console and the admin API delete plans; the command line could not (`plans delete` was an
    unknown command). Its users are on the default plan for good, as there."""
    import sqlite3

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    assert run(["plans", "set", "pro", "--limit", "requests=5/1m"], env).returncode == 0
    assert run(["users", "set-plan", "erin", "pro"], env).returncode == 0
    deleted = run(["plans", "delete", "pro"], env)
    assert deleted.returncode == 0, deleted.stderr
    assert "1 user(s) are back on the default plan" in deleted.stdout
    assert "pro" not in run(["plans", "list"], env).stdout
    assert run(["plans", "set", "pro", "--limit", "requests=9/1m"], env).returncode == 0  # a new plan, same name
    with sqlite3.connect(tmp_path / "cli.db") as db:
        assert db.execute("SELECT plan_name FROM users WHERE external_id = 'erin'").fetchall() == [(None,)]
        audit = db.execute("SELECT action, actor FROM audit_log WHERE target = 'pro'").fetchall()
    assert ("plan.delete", "cli") in audit
    again = run(["plans", "delete", "nosuch\x1b[2J"], env)
    assert again.returncode == 1 and again.stderr == "sentinel: no such plan: 'nosuch\\x1b[2J'\n", again.stderr


def test_an_export_range_that_holds_nothing_is_refused(tmp_path: Path) -> None:
    """`usage export --since 1h --until 2h` (both count back from now: the range ends before it
    starts) wrote just the CSV header, status 0: a scheduled export silently exported nothing."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    for args in (["--since", "1h", "--until", "2h"], ["--since", "2026-02-01", "--until", "2026-01-01"]):
        result = run(["usage", "export", *args], env)
        assert result.returncode == 2 and result.stdout == "", (args, result.returncode, result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "must be before --until" in lines[0], result.stderr
    fine = run(["usage", "export", "--since", "2h", "--until", "1h"], env)
    assert fine.returncode == 0 and fine.stdout.startswith("external_id,model,"), fine.stderr


def test_an_export_that_ends_before_anything_was_recorded_or_starts_after_now_is_refused(tmp_path: Path) -> None:
    """`usage export --until 0001-01-01` (kept at 1970-01-01, before which nothing is recorded) and a
    window wholly in the future wrote just the CSV header, status 0."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    for args, says in (
        (["--until", "0001-01-01"], "--until must be after 1970-01-01"),
        (["--until", "1970-01-01T00:00:00Z"], "--until must be after 1970-01-01"),
        (["--since", "1969-01-01", "--until", "1969-06-01"], "--until must be after 1970-01-01"),
        (["--since", "2999-01-01", "--until", "3000-01-01"], "and before now"),
    ):
        result = run(["usage", "export", *args], env)
        assert result.returncode == 2 and result.stdout == "", (args, result.returncode, result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and says in lines[0], (args, result.stderr)
    for args in (["--until", "1970-01-02"], ["--since", "1h", "--until", "2999-01-01"]):  # these may hold usage
        fine = run(["usage", "export", *args], env)
        assert fine.returncode == 0 and fine.stdout.startswith("external_id,model,"), (args, fine.stderr)


def test_workers_set_in_the_environment_are_named_when_refused(tmp_path: Path) -> None:
    """`SENTINEL_WORKERS=2` without REDIS_URL was refused as "--workers 2 needs REDIS_URL": an option
    the operator never typed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    result = subprocess.run(
        [sys.executable, "-m", "sentinel", "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        env={**env, "SENTINEL_WORKERS": "2", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/s.db"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SENTINEL_WORKERS" in lines[0] and "REDIS_URL" in lines[0], result.stderr


def test_a_tier_candidate_on_a_provider_not_configured_is_said(tmp_path: Path) -> None:
    """A typo in a provider's name (`opneai/...`) was stored and shown like any candidate; the router
    never chooses it, so the tier could be left with none and nothing said so (the console says it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "SENTINEL_CONFIG"))}
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    env["OPENAI_API_KEY"] = "sk-upstream-test"  # openai configured, anthropic not
    saved = subprocess.run([sys.executable, "-m", "sentinel", "tiers", "set", "simple", "opneai/gpt-4o-mini:1",
                            "openai/gpt-4o-mini:2"], env=env, capture_output=True, text=True, timeout=60)
    assert saved.returncode == 0, saved.stderr
    assert "opneai/gpt-4o-mini (cost 1) (provider not configured), openai/gpt-4o-mini (cost 2) (applies" in saved.stdout
    shown = subprocess.run([sys.executable, "-m", "sentinel", "tiers", "show"], env=env, capture_output=True,
                           text=True, timeout=60).stdout
    assert "simple: opneai/gpt-4o-mini (cost 1) (provider not configured), openai/gpt-4o-mini (cost 2)\n" in shown
    assert "provider not configured" not in shown.split("simple:", 1)[1].split("\n", 1)[1]


def test_under_zion_governance_plans_and_plan_assignments_are_refused_in_one_line(tmp_path: Path) -> None:
    """With GOVERNANCE=zion the plans come from Zion: `plans set`, `plans delete` and `users set-plan`
    saved plans into Sentinel's database that were never enforced (exit 0, "applies within ...").
    Each is refused in one line, exit 2, and nothing is written; `plans list` says they are not in effect."""
    import sqlite3

    db = tmp_path / "cli.db"
    builtin = {"DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
    assert run(["plans", "set", "pro", "--limit", "requests=5/1m"], builtin).returncode == 0  # from before Zion
    zion = {**builtin, "GOVERNANCE": "zion", "ZION_API_URL": "http://127.0.0.1:9", "ZION_API_KEY": "zion-service-key"}
    for args in (["plans", "set", "pro", "--limit", "requests=1/1m"], ["plans", "set", "team", "--limit", "requests=1/1m"],
                 ["plans", "delete", "pro"], ["users", "set-plan", "frank", "pro"], ["users", "set-plan", "frank", "--default"]):
        refused = run(args, zion)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert len(lines) == 1 and "GOVERNANCE=zion" in lines[0] and "Zion" in lines[0], args
        assert refused.stdout == "", args
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM plans").fetchall() == [("pro",)]
        assert conn.execute("SELECT count(*) FROM users").fetchall() == [(0,)]
        assert conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'cli'").fetchall() == [(1,)]
    for args in (["tiers", "reset"], ["tiers", "set", "simple", "openai/gpt-4o:1"]):  # the table is Zion's too
        refused = run(args, zion)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr and "GOVERNANCE=zion" in refused.stderr, args
    listed = run(["plans", "list"], zion)
    assert listed.returncode == 0 and "pro: requests=5/1m" in listed.stdout
    assert "not in effect" in listed.stderr
    assert "not in effect" not in run(["plans", "list"], builtin).stderr


def test_keys_create_with_a_lifetime_and_keys_list_shows_expiries(tmp_path: Path) -> None:
    """`keys create` had no way to give a key a lifetime, and `keys list` no expiry to show."""
    import sqlite3
    from datetime import UTC, datetime, timedelta

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    before = datetime.now(UTC).replace(microsecond=0)
    created = run(["keys", "create", "bob", "--name", "trial", "--expires-in", "30d"], env)
    after = datetime.now(UTC)
    assert created.returncode == 0, created.stderr
    said = created.stdout.splitlines()[0]
    key_id = said.split()[2]
    stamp = said.split("expiring ")[1][:19]
    ends = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert before + timedelta(days=30) <= ends <= after + timedelta(days=30), said
    year = before.year + 2
    dated = run(["keys", "create", "bob", "--expires-at", f"{year}-01-31T18:00:00+01:00"], env)
    assert dated.returncode == 0 and f"expiring {year}-01-31 17:00:00 UTC" in dated.stdout, dated.stdout
    assert run(["keys", "create", "carol"], env).returncode == 0
    for args, field in ((["--expires-in", "soon"], "expires_in"), (["--expires-in", "0"], "expires_in"),
                        (["--expires-in", "99999d"], "expires_in"), (["--expires-in", "9" * 5000], "expires_in"),
                        (["--expires-at", "2001-01-01"], "expires_at"), (["--expires-at", "next week"], "expires_at"),
                        (["--expires-at", f"{year + 20}-01-01"], "expires_at")):
        refused = run(["keys", "create", "dave", *args], env)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and field + ":" in lines[0], (args, refused.stderr)
    both = run(["keys", "create", "dave", "--expires-in", "1d", "--expires-at", f"{year}-01-01"], env)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    listed = run(["keys", "list"], env).stdout.splitlines()
    assert "EXPIRES" in listed[0] and not any("dave" in line for line in listed)  # nothing issued to dave
    rows = {line.split()[0]: line for line in listed[1:]}
    assert rows[key_id].split()[-3:] == [ends.strftime("%Y-%m-%d"), ends.strftime("%H:%M:%S"), "active"]
    assert next(line for line in listed if "carol" in line).split()[-2:] == ["never", "active"]
    # Time passes (here: the expiry is moved back, as the clock cannot be): the list says "expired".
    conn = sqlite3.connect(tmp_path / "cli.db")
    with conn:
        conn.execute("UPDATE api_keys SET expires_at = '2001-01-01 00:00:00.000000' WHERE id = ?", (key_id,))
    conn.close()
    later = {line.split()[0]: line for line in run(["keys", "list", "--user", "bob"], env).stdout.splitlines()[1:]}
    assert later[key_id].split()[-1] == "expired" and len(later) == 2


def test_a_long_value_given_is_not_repeated_whole(tmp_path: Path) -> None:
    """A 100 KB `--since`, `--limit` or tier entry came back whole in its one error line."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    long = "x" * 100_000
    for args in (["usage", "show", "alice", "--since", long], ["plans", "set", "gold", "--limit", long],
                 ["tiers", "set", "simple", long]):
        result = run(args, env)
        assert result.returncode == 2, (args[:2], result.returncode, result.stderr[:300])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("sentinel: ") and len(lines[0]) <= 420, (args[:2], len(lines[0]))


def test_plans_set_without_a_limit_changes_nothing(tmp_path: Path) -> None:
    """`plans set pro` with no limit named (a forgotten argument, or `--window 1h` without a metric)
    replaced pro's limits with none, exit 0: every user on pro was unlimited. Status 2, pro as it was."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    assert run(["plans", "set", "pro", "--limit", "requests=5/1m"], env).returncode == 0
    for args in (["plans", "set", "pro"], ["plans", "set", "pro", "--window", "1h"],
                 ["plans", "set", "pro", "--add"], ["plans", "set", "new"]):
        refused = run(args, env)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr, refused.stderr
    listed = run(["plans", "list"], env).stdout
    assert "requests=5/1m" in listed and "new" not in listed, listed


def test_a_new_user_id_with_a_space_at_either_end_is_refused(tmp_path: Path) -> None:
    """`keys create "alice "` made a user listed as `alice` beside alice (`keys list`, the console):
    status 2 in one line naming the field, nothing created."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    for args in (["keys", "create", "alice "], ["users", "set-plan", "\u00a0alice", "--default"]):
        refused = run(args, env)
        assert refused.returncode == 2 and "external_id: no space at either end" in refused.stderr, refused.stderr
    assert "alice" not in run(["keys", "list"], env).stdout


def test_keys_create_with_another_email_is_audited(tmp_path: Path) -> None:
    """`keys create alice --email b@x` replaced alice's email with no word of it in the audit log:
    the `key.create` entry records `email: {from, to}`."""
    import sqlite3

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    for email in ("a@example.com", "b@example.com"):
        assert run(["keys", "create", "alice", "--email", email], env).returncode == 0
    with sqlite3.connect(tmp_path / "cli.db") as db:
        details = [row[0] for row in db.execute("SELECT details FROM audit_log WHERE action = 'key.create' ORDER BY id")]
    assert [json.loads(d)["email"] for d in details] == [
        {"from": None, "to": "a@example.com"}, {"from": "a@example.com", "to": "b@example.com"}]


def test_plans_set_refuses_a_new_plan_named_as_another_but_for_case(tmp_path: Path) -> None:
    """`plans set pro` beside `Pro` made a second plan looking like the first: status 2 in one line
    naming `Pro`, nothing saved."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    assert run(["plans", "set", "Pro", "--limit", "requests=5/1m"], env).returncode == 0
    refused = run(["plans", "set", "pro", "--limit", "requests=9/1m"], env)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "'Pro' exists already" in refused.stderr, refused.stderr
    assert run(["plans", "list"], env).stdout == "Pro: requests=5/1m\n"


def test_keys_list_shows_a_stored_terminal_escape_as_text(tmp_path: Path) -> None:
    """`keys list` printed a user id and a key name as stored: a row an earlier version (or another
    writer of the database) left with `\\x1b]0;...\\x07` or `\\x1b[2J` retitled or cleared the operator's
    terminal, where `usage show` writes such characters as `\\uXXXX` escapes. So does `keys list` now."""
    import asyncio

    from tests.support.accounts import create_key

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    asyncio.run(create_key(env["DATABASE_URL"], "ev\x1b]0;pwned\x07il", "n\x1b[2Jame\u202e"))
    listed = run(["keys", "list"], env)
    assert listed.returncode == 0, listed.stderr
    assert all(line.isprintable() for line in listed.stdout.splitlines()), listed.stdout
    assert "ev\\u001b]0;pwned\\u0007il" in listed.stdout and "n\\u001b[2Jame\\u202e" in listed.stdout, listed.stdout


def test_plans_list_and_tiers_show_write_a_stored_terminal_escape_as_text(tmp_path: Path) -> None:
    """`plans list` printed a plan's name, and `tiers show` a candidate's provider (the model's characters are checked) as stored:
    a row an earlier version (or another writer of the database) left with `\\x1b]0;...\\x07` or
    `\\x1b[2J` retitled or cleared the operator's terminal, as `keys list` no longer does. Both write
    such characters as `\\uXXXX` escapes now (`printable`, as `keys list` and `usage show`)."""
    import asyncio

    from sqlalchemy import text

    from sentinel.db.engine import create_engine, migrate

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "SENTINEL_CONFIG": "",
           "OPENAI_API_KEY": "", "OPENAI_API_URL": "", "ANTHROPIC_API_KEY": "", "ANTHROPIC_API_URL": ""}

    async def seed() -> None:
        engine = create_engine(env["DATABASE_URL"])
        await migrate(engine)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO plans (name, created_at, updated_at) "
                                        "VALUES (:n, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                                   {"n": "pro\x1b]0;pwned\x07\u202e"})
                await conn.execute(text("INSERT INTO tier_models (tier, position, provider, model, relative_cost) "
                                        "VALUES ('simple', 0, :p, 'gpt-4o', 1)"), {"p": "op\x1b[2J\x9b31m"})
        finally:
            await engine.dispose()

    asyncio.run(seed())
    plans = run(["plans", "list"], env)
    tiers = run(["tiers", "show"], env)
    for shown in (plans, tiers):
        assert shown.returncode == 0, shown.stderr
        assert all(line.isprintable() for line in shown.stdout.splitlines()), shown.stdout
    assert "pro\\u001b]0;pwned\\u0007\\u202e: no limits" in plans.stdout, plans.stdout
    assert "simple: op\\u001b[2J\\u009b31m/gpt-4o (cost 1) (provider not configured)" in tiers.stdout, tiers.stdout


def test_a_window_set_from_the_command_line_is_seeded_from_the_ledger(tmp_path: Path, redis_url: str) -> None:
    """`plans set` and `users set-plan` seed the counters of the windows new to a plan's users in the
    gateway's store (README, Quotas): a user who used 5 requests this hour starts a day's limit at 5,
    not at 0. Requests are the ledger's rows (a part recorded beside a request, `<id>#<n>`, is none),
    tokens their sums; usage from before the window began is not counted."""
    import asyncio
    import math
    import time
    from datetime import UTC, datetime, timedelta

    import redis

    from sentinel.db.engine import create_engine, migrate, session_factory
    from sentinel.domain.usage import UsageRecord

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "REDIS_URL": redis_url}
    assert run(["plans", "set", "hourly", "--requests", "5", "--window", "1h"], env).returncode == 0
    assert run(["users", "set-plan", "bob", "hourly"], env).returncode == 0

    async def record() -> None:
        engine = create_engine(env["DATABASE_URL"])
        now, long_ago = datetime.now(UTC), datetime.now(UTC) - timedelta(days=3)
        rows = [UsageRecord(f"r{i}", "bob", None, "gpt-4o", "openai", "chat", 10, 2, "measured", 200, now, now)
                for i in range(5)]
        rows.append(UsageRecord("r0#1", "bob", None, "gpt-4o-mini", "openai", "chat", 7, 1, "measured", 200, now, now))
        rows.append(UsageRecord("old", "bob", None, "gpt-4o", "openai", "chat", 99, 9, "measured", 200, long_ago,
                                long_ago))
        await migrate(engine)
        try:
            await record_and_roll_up(session_factory(engine), rows)
        finally:
            await engine.dispose()

    asyncio.run(record())
    assert run(["plans", "set", "hourly", "--requests", "5", "--window", "1d"], env).returncode == 0
    client = redis.Redis.from_url(redis_url)
    try:
        day = math.floor(time.time() / 86400)
        assert client.get(f"sentinel:quota:{{bob}}:requests:86400:{day}") == b"5"
        assert 0 < client.pttl(f"sentinel:quota:{{bob}}:requests:86400:{day}") <= (86400 + 60) * 1000
        assert run(["plans", "set", "tokens", "--input-tokens", "1000", "--window", "1d"], env).returncode == 0
        assert run(["users", "set-plan", "bob", "tokens"], env).returncode == 0
        assert client.get(f"sentinel:quota:{{bob}}:input_tokens:86400:{day}") == b"57"
    finally:
        client.close()


def test_a_limit_past_the_largest_is_one_line_naming_the_bound(tmp_path: Path) -> None:
    """`plans set --limit requests=<5,000 digits>/1d` was Python's own digit-limit message ("Exceeds the
    limit (4300 digits) for integer string conversion"), and 10**16 "is larger than": now the bound
    every surface names, a whole number from 0 to 1,000,000,000,000,000, and nothing stored."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    for digits in ("9" * 5000, str(10**16)):
        result = run(["plans", "set", "huge", "--limit", f"requests={digits}/1d"], env)
        assert result.returncode == 2, (result.returncode, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "a whole number from 0 to 1,000,000,000,000,000" in lines[0], result.stderr
        assert len(lines[0]) < 300, lines[0]  # (not the 5,000 digits back)
    assert "huge" not in run(["plans", "list"], env).stdout


def test_keys_list_keeps_the_demo_keys_row_in_its_columns(tmp_path: Path) -> None:
    """The first key a new user lists is the demo key, named `demo (sentinel serve)` (21 characters):
    its name overflowed the 20-character NAME column and pushed the rest of its row out of line."""
    from sentinel.server import DEMO_KEY_NAME

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    assert run(["keys", "create", "demo-user", "--name", DEMO_KEY_NAME], env).returncode == 0
    listed = run(["keys", "list"], env).stdout.splitlines()
    header, row = listed[0], next(line for line in listed[1:] if DEMO_KEY_NAME in line)
    for column in ("CREATED", "EXPIRES", "STATUS"):
        at = header.index(column)
        assert row[at - 1] == " " and row[at] != " ", (column, header, row)
