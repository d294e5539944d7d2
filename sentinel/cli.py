"""The `sentinel` command: serve, run the mock upstream, manage keys. No business logic here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sentinel.config import ConfigError, Settings, load_settings

log = logging.getLogger("sentinel.cli")


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(coro: Awaitable[int | None]) -> int:
    return asyncio.run(coro) or 0  # type: ignore[arg-type]


# --- serve -------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from sentinel.server import serve

    settings = _settings(host=args.host, port=args.port)
    return serve(settings)


def cmd_mock(args: argparse.Namespace) -> int:
    from sentinel.mock.server import run_mock

    print(f"mock upstream on http://{args.host}:{args.port} (OpenAI: /v1, Anthropic: /v1/messages)", flush=True)
    run_mock(args.host, args.port, args.latency_ms)
    return 0


# --- keys --------------------------------------------------------------------------------------
async def _with_db(settings: Settings, fn: Callable[[Any], Awaitable[int | None]]) -> int | None:
    from sentinel.db.engine import create_engine, migrate, session_factory

    engine = create_engine(settings.database_url)
    try:
        await migrate(engine)
        return await fn(session_factory(engine))
    finally:
        await engine.dispose()


def cmd_keys_create(args: argparse.Namespace) -> int:
    from sentinel.governance.keys import KeyService

    async def go(sessions: Any) -> None:
        info, key = await KeyService(sessions).create_key(args.external_id, args.name, email=args.email)
        print(f"created key {info.id} ({info.prefix}...) for {info.external_id}; it is shown only once:")
        print(key)

    return _run(_with_db(_settings(), go))


def cmd_keys_list(args: argparse.Namespace) -> int:
    from sentinel.governance.keys import KeyService

    async def go(sessions: Any) -> None:
        rows = await KeyService(sessions).list_keys(args.user)
        print(f"{'KEY ID':<18} {'USER':<24} {'PREFIX':<14} {'NAME':<20} {'CREATED':<20} STATUS")
        for k in rows:
            status = "revoked" if k.revoked_at else "active"
            created = k.created_at.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{k.id:<18} {k.external_id:<24} {k.prefix:<14} {(k.name or ''):<20} {created:<20} {status}")

    return _run(_with_db(_settings(), go))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from sentinel.governance.keys import KeyService

    async def go(sessions: Any) -> int:
        if await KeyService(sessions).revoke(args.key_id):
            print(f"revoked {args.key_id} (cached validations expire within JWT_CACHE_TTL_SECONDS)")
            return 0
        print(f"sentinel: no such key: {args.key_id}", file=sys.stderr)
        return 1

    return _run(_with_db(_settings(), go))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentinel", description="Sentinel AI gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host", default=None, help="bind address (default SENTINEL_HOST or 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="port (default SENTINEL_PORT or 8080)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("mock-upstream", help="run the mock OpenAI/Anthropic upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before every response")
    p.set_defaults(fn=cmd_mock)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="create a key (and the user if missing); prints the key last")
    p.add_argument("external_id")
    p.add_argument("--name", default=None)
    p.add_argument("--email", default=None)
    p.set_defaults(fn=cmd_keys_create)
    p = keys.add_parser("list", help="list keys")
    p.add_argument("--user", default=None, help="only this user's keys (external id)")
    p.set_defaults(fn=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("key_id")
    p.set_defaults(fn=cmd_keys_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.fn(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
