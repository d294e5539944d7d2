"""The `sentinel` command: serve, run the mock upstream, manage keys. No business logic here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sentinel.config import ConfigError, GovernanceKind, Settings, load_settings
from sentinel.domain.tiers import TIERS

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
def parse_workers(value: str) -> int:
    """`--workers`: a count of processes, or `auto` for one per CPU."""
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {value!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {workers}")
    return workers


def cmd_serve(args: argparse.Namespace) -> int:
    from sentinel.server import serve

    settings = _settings(host=args.host, port=args.port)
    # SENTINEL_WORKERS becomes a Settings field (NOTES-bench.md); until then only the flag sets it.
    workers = args.workers if args.workers is not None else settings.workers
    return serve(settings, workers=workers)


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
    from sentinel.errors import InvalidRequest
    from sentinel.governance.keys import KeyService

    settings = _settings()

    async def go(sessions: Any) -> int:
        keys = KeyService(sessions, require_email=settings.governance is GovernanceKind.zion)
        try:
            info, key = await keys.create_key(args.external_id, args.name, email=args.email)
        except InvalidRequest as exc:
            print(f"sentinel: {exc.message}", file=sys.stderr)
            return 2
        print(f"created key {info.id} ({info.prefix}...) for {info.external_id}; it is shown only once:")
        print(key)
        return 0

    return _run(_with_db(settings, go))


def cmd_keys_list(args: argparse.Namespace) -> int:
    from sentinel.governance.keys import KeyService

    async def go(sessions: Any) -> None:
        rows = await KeyService(sessions).list_keys(args.user)
        print(f"{'KEY ID':<18} {'USER':<24} {'PREFIX':<22} {'NAME':<20} {'CREATED':<20} STATUS")
        for k in rows:
            status = "revoked" if k.revoked_at else "active"
            created = k.created_at.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{k.id:<18} {k.external_id:<24} {k.prefix:<22} {(k.name or ''):<20} {created:<20} {status}")

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


# --- plans, users, usage ------------------------------------------------------------------------
def cmd_plans_set(args: argparse.Namespace) -> int:
    from sentinel.domain.plans import Limit, parse_limit, parse_window
    from sentinel.governance.plans import PlanRepository

    try:
        limits: list[Limit] = [parse_limit(item) for item in args.limit or []]
        metrics = {"requests": args.requests, "input_tokens": args.input_tokens, "output_tokens": args.output_tokens}
        given = {m: v for m, v in metrics.items() if v is not None}
        if given and not args.window:
            raise ValueError("--window is required with --requests/--input-tokens/--output-tokens")
        for window in args.window or []:
            seconds = parse_window(window)
            limits += [Limit(m, seconds, v) for m, v in given.items()]  # type: ignore[arg-type]
    except ValueError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2

    async def go(sessions: Any) -> None:
        repo = PlanRepository(sessions)
        merged = limits
        if args.add:
            existing = await repo.get_plan(args.name)
            new_keys = {(lim.metric, lim.window_seconds) for lim in limits}
            kept = [lim for lim in (existing.limits if existing else ()) if (lim.metric, lim.window_seconds) not in new_keys]
            merged = kept + limits
        await repo.set_plan(args.name, merged)
        plan = await repo.get_plan(args.name)
        shown = ", ".join(str(lim) for lim in plan.limits) if plan else ""
        print(f"plan {args.name}: {shown or 'no limits'} (applies within CACHE_TTL_SECONDS)")

    return _run(_with_db(_settings(), go))


def cmd_plans_list(args: argparse.Namespace) -> int:
    from sentinel.governance.plans import PlanRepository

    async def go(sessions: Any) -> None:
        for plan in await PlanRepository(sessions).list_plans():
            print(f"{plan.name}: {', '.join(str(lim) for lim in plan.limits) or 'no limits'}")

    return _run(_with_db(_settings(), go))


def cmd_users_set_plan(args: argparse.Namespace) -> int:
    from sentinel.errors import NotFound
    from sentinel.governance.plans import PlanRepository

    async def go(sessions: Any) -> int:
        try:
            await PlanRepository(sessions).set_user_plan(args.external_id, args.plan)
        except NotFound as exc:
            print(f"sentinel: {exc.message}", file=sys.stderr)
            return 1
        print(f"user {args.external_id} is on plan {args.plan} (applies within CACHE_TTL_SECONDS)")
        return 0

    return _run(_with_db(_settings(), go))


def _parse_since(text: str | None) -> Any:
    from datetime import UTC, datetime, timedelta

    from sentinel.domain.plans import parse_window

    if text is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_window(text))
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_usage_show(args: argparse.Namespace) -> int:
    from sentinel.governance.ledger import SqlLedger

    try:
        since = _parse_since(args.since)
    except ValueError:
        print(f"sentinel: --since takes a window (1h, 7d) or an ISO date, got {args.since!r}", file=sys.stderr)
        return 2

    async def go(sessions: Any) -> None:
        rows = await SqlLedger(sessions).totals(args.external_id, since)
        print(f"{'MODEL':<32} {'REQUESTS':>10} {'INPUT TOKENS':>14} {'OUTPUT TOKENS':>14}")
        total = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
        for row in rows:
            print(f"{(row['model'] or '-'):<32} {row['requests']:>10} {row['input_tokens']:>14} {row['output_tokens']:>14}")
            for k in total:
                total[k] += row[k]
        print(f"{'TOTAL':<32} {total['requests']:>10} {total['input_tokens']:>14} {total['output_tokens']:>14}")

    return _run(_with_db(_settings(), go))


def cmd_tiers_set(args: argparse.Namespace) -> int:
    from sentinel.governance.tier_store import TierRepository, parse_entry

    try:
        entries = [parse_entry(item) for item in args.entries]
    except ValueError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2

    async def go(sessions: Any) -> None:
        await TierRepository(sessions).set_tier(args.tier, entries)
        shown = ", ".join(f"{e.provider}/{e.model} (cost {e.relative_cost})" for e in entries)
        print(f"tier {args.tier}: {shown} (applies within TIER_CONFIG_TTL_SECONDS)")

    return _run(_with_db(_settings(), go))


def cmd_tiers_show(args: argparse.Namespace) -> int:
    from sentinel.governance.tier_store import DbTiers, TierRepository
    from sentinel.wiring import build_catalog

    settings = _settings()

    async def go(sessions: Any) -> None:
        table = await DbTiers(TierRepository(sessions), build_catalog(settings).tiers, 1).table()
        for tier in TIERS:
            shown = ", ".join(f"{e.provider}/{e.model} (cost {e.relative_cost})" for e in table.get(tier, []))
            print(f"{tier}: {shown or '(none)'}")

    return _run(_with_db(settings, go))


def cmd_tiers_reset(args: argparse.Namespace) -> int:
    from sentinel.governance.tier_store import TierRepository

    async def go(sessions: Any) -> None:
        await TierRepository(sessions).clear(args.tier)
        print(f"tier table reset for {args.tier or 'all tiers'} (the providers file or defaults apply)")

    return _run(_with_db(_settings(), go))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentinel", description="Sentinel AI gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host", default=None, help="bind address (default SENTINEL_HOST or 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="port (default SENTINEL_PORT or 8080)")
    p.add_argument(
        "--workers", type=parse_workers, default=None,
        help="processes serving the port, a number or auto (one per CPU); more than 1 needs REDIS_URL (default 1)",
    )
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

    plans = sub.add_parser("plans", help="manage quota plans").add_subparsers(dest="plans_command", required=True)
    p = plans.add_parser("set", help="create or replace a plan")
    p.add_argument("name")
    p.add_argument("--requests", type=int, default=None, help="requests per window")
    p.add_argument("--input-tokens", type=int, default=None, help="input tokens per window")
    p.add_argument("--output-tokens", type=int, default=None, help="output tokens per window")
    p.add_argument("--window", action="append", help="window for the limits above: 90s, 1m, 1h, 1d, 30d (repeatable)")
    p.add_argument("--limit", action="append", help="METRIC=N/WINDOW, e.g. requests=1000/1d (repeatable)")
    p.add_argument("--add", action="store_true", help="merge into the plan instead of replacing its limits")
    p.set_defaults(fn=cmd_plans_set)
    p = plans.add_parser("list", help="list plans")
    p.set_defaults(fn=cmd_plans_list)

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    p = users.add_parser("set-plan", help="put a user on a plan")
    p.add_argument("external_id")
    p.add_argument("plan")
    p.set_defaults(fn=cmd_users_set_plan)

    usage = sub.add_parser("usage", help="usage from the ledger").add_subparsers(dest="usage_command", required=True)
    p = usage.add_parser("show", help="a user's usage by model")
    p.add_argument("external_id")
    p.add_argument("--since", default=None, help="a window back from now (1h, 7d) or an ISO date")
    p.set_defaults(fn=cmd_usage_show)
    tiers = sub.add_parser("tiers", help="the built-in tier table").add_subparsers(dest="tiers_command", required=True)
    p = tiers.add_parser("set", help="replace a tier's candidates")
    p.add_argument("tier", choices=TIERS)
    p.add_argument("entries", nargs="+", help="provider/model:cost[:input_price:output_price] (prices per million)")
    p.set_defaults(fn=cmd_tiers_set)
    p = tiers.add_parser("show", help="the tier table in effect")
    p.set_defaults(fn=cmd_tiers_show)
    p = tiers.add_parser("reset", help="drop the database table for one tier or all")
    p.add_argument("tier", nargs="?", choices=TIERS)
    p.set_defaults(fn=cmd_tiers_reset)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.fn(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
