"""The `sentinel` command: serve, run the mock upstream, manage keys. No business logic here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from sentinel.config import MAX_WORKERS, ConfigError, Settings, load_settings
from sentinel.domain.tiers import TIERS
from sentinel.observability.logging import clipped, printable

log = logging.getLogger("sentinel.cli")


def _say(message: str, limit: int | None = None) -> None:
    """One error line on stderr, `sentinel: ` and `message` cut to `limit` (MAX_SAID) characters: a
    message quoting what was given (a 100 KB `--limit`, `--since` or tier entry) is not repeated whole."""
    print(f"sentinel: {clipped(message, limit or MAX_SAID)}", file=sys.stderr)


MAX_SAID = 400
# A plan change's incomplete follow-up is said whole: its message quotes only clipped names, and its
# end (the change is kept, what to do) was cut when both the cache and the seed failed.
MAX_SAID_PLAN_CHANGE = 1200
KEYS_PAGE = 500  # `keys list` reads the keys this many at a time (the admin API's largest page)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        _say(f"{exc}")
        raise SystemExit(2) from None


def _run(coro: Awaitable[int | None]) -> int:
    return asyncio.run(coro) or 0  # type: ignore[arg-type]


def _quoted(text: str, limit: int = 80) -> str:
    """`text` as an error line may show it: quoted, control characters escaped, at most `limit` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


# --- serve -------------------------------------------------------------------------------------
def parse_workers(value: str) -> int:
    """`--workers`: a count of processes, or `auto` for one per CPU."""
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {_quoted(value)}") from None
    if not 1 <= workers <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_WORKERS}, got {workers}")
    return workers


def parse_port(value: str) -> int:
    """`--port`: a TCP port, 1-65535."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {_quoted(value)}") from None
    if not 0 < port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {port}")
    return port


MAX_MOCK_LATENCY_MS = 3_600_000.0


def parse_latency_ms(value: str) -> float:
    """`mock-upstream --latency-ms`: 0 to an hour, in milliseconds (negative was a traceback; `nan`,
    `inf` and `1e308` were taken, and every response then failed or never came)."""
    try:
        latency = float(value)
    except ValueError:
        latency = math.nan
    if not 0 <= latency <= MAX_MOCK_LATENCY_MS:  # also false for nan
        raise argparse.ArgumentTypeError(f"expected milliseconds from 0 to {MAX_MOCK_LATENCY_MS:.0f}, got {_quoted(value)}")
    return latency


def cmd_serve(args: argparse.Namespace) -> int:
    from sentinel.server import serve

    settings = _settings(host=args.host, port=args.port)
    # --workers wins over SENTINEL_WORKERS.
    workers = args.workers if args.workers is not None else settings.workers
    return serve(settings, workers=workers)


def cmd_mock(args: argparse.Namespace) -> int:
    from sentinel.mock.server import run_mock
    from sentinel.server import bind_sockets, cannot_listen

    try:
        sockets = bind_sockets(args.host, args.port)
    except OSError as exc:  # as `serve` says it (was uvicorn's line after "mock upstream on ...", status 3)
        _say(f"{cannot_listen(args.host, args.port, exc)}")
        return 1
    print(f"mock upstream on http://{args.host}:{args.port} (OpenAI: /v1, Anthropic: /v1/messages)", flush=True)
    try:
        run_mock(args.host, args.port, args.latency_ms, api_key=args.api_key, sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    return 0


# --- keys, plans, users, usage, tiers: through the admin service ---------------------------------
def _actor() -> Any:
    from sentinel.services.admin import Actor

    return Actor("cli")


async def _with_admin(settings: Settings, fn: Callable[[Any], Awaitable[int | None]]) -> int | None:
    """Run `fn(admin_service)` on the configured database (and store, whose caches it updates)."""
    from sentinel.db.engine import DatabaseUnreachable, SchemaTooNew, create_engine, migrate, session_factory
    from sentinel.errors import Conflict, GovernanceUnavailable
    from sentinel.store import create_store
    from sentinel.wiring import build_cli_admin

    try:
        # Its connect is bounded, its statements are not: an operator's command (`usage export` over
        # a large ledger, a bulk revocation) may take longer than a request may wait (Ctrl-C stops it).
        engine = create_engine(
            settings.database_url, timeout=settings.database_timeout_seconds, bound_statements=False
        )
    except DatabaseUnreachable as exc:
        _say(f"{exc}")
        return 1
    store = create_store(settings.redis_url, timeout=settings.redis_timeout_seconds)
    try:
        try:
            await migrate(engine, connect_timeout=settings.database_timeout_seconds)
        except (SchemaTooNew, DatabaseUnreachable) as exc:
            _say(f"{exc}")
            return 1
        try:
            admin = build_cli_admin(settings, session_factory(engine), store)
        except ConfigError as exc:  # the providers file (SENTINEL_CONFIG): one line, as `serve` says it
            _say(f"{exc}")
            return 2
        try:
            return await fn(admin)
        except Conflict as exc:  # a change this configuration refuses (plans under GOVERNANCE=zion)
            _say(f"{exc.message}")
            return 2
        except GovernanceUnavailable as exc:  # the database locked (SQLite: `serve` writing) or down
            _say(f"{exc.message}{_driver_said(exc)}; try again")
            return 1
    finally:
        await store.close()
        await engine.dispose()


def _driver_said(exc: BaseException) -> str:
    """` (the driver's first line)` of the database failure behind `exc` (`database is locked`), if any."""
    from sqlalchemy.exc import DBAPIError

    cause = exc.__cause__
    if isinstance(cause, DBAPIError) and cause.orig is not None:
        cause = cause.orig
    said = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    return f" ({said})" if said else ""


def _refused(exc: Any) -> str:
    """One line for a refused operator input (the first field's message when there are fields)."""
    from sentinel.services.admin_forms import field_errors

    fields = field_errors(exc)
    return "; ".join(f"{k}: {v}" for k, v in fields.items()) if fields else exc.message


def cmd_keys_create(args: argparse.Namespace) -> int:
    from sentinel.errors import InvalidRequest

    async def go(admin: Any) -> int:
        try:
            info, key = await admin.create_key(args.external_id, args.name, args.email, _actor(),
                                               expires_in=args.expires_in, expires_at=args.expires_at)
        except InvalidRequest as exc:
            _say(f"{_refused(exc)}")
            return 2
        expiry = "" if info.expires_at is None else f", expiring {info.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        print(f"created key {info.id} ({info.prefix}...) for {info.external_id}{expiry}; it is shown only once:")
        print(key)
        return 0

    return _run(_with_admin(_settings(), go))


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def go(admin: Any) -> None:
        now = admin.clock()
        print(f"{'KEY ID':<18} {'USER':<24} {'PREFIX':<22} {'NAME':<24} {'CREATED':<20} {'EXPIRES':<20} STATUS")
        offset = 0
        while True:  # every key, a page at a time (never all of them in memory at once)
            rows = await admin.keys.list_keys(args.user, limit=KEYS_PAGE, offset=offset)
            for k in rows:
                created = k.created_at.strftime("%Y-%m-%d %H:%M:%S")
                expires = "never" if k.expires_at is None else k.expires_at.strftime("%Y-%m-%d %H:%M:%S")
                # A row an earlier version (or another writer) left with a terminal escape reads as text.
                print(f"{k.id:<18} {printable(k.external_id):<24} {k.prefix:<22} {printable(k.name or ''):<24} "
                      f"{created:<20} {expires:<20} {k.status(now)}")
            if len(rows) < KEYS_PAGE:
                break
            offset += len(rows)

    return _run(_with_admin(_settings(), go))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from sentinel.errors import NotFound, RevocationIncomplete
    from sentinel.governance.keys import PASTED_KEY, is_api_key

    if is_api_key(args.key_id):
        # The key itself, pasted for its id: never echoed (an error line ends up in scrollback, CI
        # logs and tickets); it was "no such key: sk-sentinel-..." on stderr. The admin API and the
        # console refuse it alike (AdminService.revoke_key).
        _say(f"{PASTED_KEY} (`sentinel keys list`)")
        return 2

    settings = _settings()

    async def go(admin: Any) -> int:
        try:
            await admin.revoke_key(args.key_id, _actor())
        except NotFound:
            _say(f"no such key: {_quoted(args.key_id)}")
            return 1
        except RevocationIncomplete as exc:  # revoked in the database; the shared cache not told
            _say(f"{exc.message}")
            return 3
        # With Redis the gateways' shared cache holds a tombstone now; the in-memory store is the
        # running gateway's own, which this process cannot reach: its cached identity ends with its TTL.
        print(f"revoked {args.key_id} (" + ("refused from now on by every gateway sharing this Redis, within a second"
              if settings.redis_url else "a running gateway on the in-memory store refuses it once its cached "
              "validation expires, within JWT_CACHE_TTL_SECONDS") + ")")
        return 0

    return _run(_with_admin(settings, go))


def cmd_plans_set(args: argparse.Namespace) -> int:
    from sentinel.domain.plans import Limit, parse_limit, parse_window
    from sentinel.errors import InvalidRequest, PlanChangeIncomplete

    try:
        limits: list[Limit] = [parse_limit(item) for item in args.limit or []]
        metrics = {"requests": args.requests, "input_tokens": args.input_tokens, "output_tokens": args.output_tokens}
        given = {m: v for m, v in metrics.items() if v is not None}
        if given and not args.window:
            raise ValueError("--window is required with --requests/--input-tokens/--output-tokens")
        if args.window and not given:  # `plans set pro --window 1h` replaced pro's limits with none
            raise ValueError("--window needs --requests, --input-tokens or --output-tokens")
        for window in args.window or []:
            seconds = parse_window(window)
            limits += [Limit(m, seconds, v) for m, v in given.items()]  # type: ignore[arg-type]
    except ValueError as exc:
        _say(f"{exc}")
        return 2

    async def go(admin: Any) -> int:
        try:
            plan = await admin.save_plan(args.name, limits, _actor(), merge=args.add)
        except InvalidRequest as exc:
            _say(f"{_refused(exc)}")
            return 2
        except PlanChangeIncomplete as exc:  # saved; the shared cache not told
            _say(f"{exc.message}", MAX_SAID_PLAN_CHANGE)
            return 3
        shown = ", ".join(str(lim) for lim in plan.limits)
        print(f"plan {args.name}: {shown or 'no limits'} (applies within CACHE_TTL_SECONDS)")
        return 0

    return _run(_with_admin(_settings(), go))


def cmd_plans_delete(args: argparse.Namespace) -> int:
    from sentinel.errors import NotFound, PlanChangeIncomplete

    async def go(admin: Any) -> int:
        try:
            users = await admin.delete_plan(args.name, _actor())
        except NotFound:
            _say(f"no such plan: {_quoted(args.name)}")
            return 1
        except PlanChangeIncomplete as exc:  # deleted; the shared cache not told: its users named
            _say(f"{exc.message}", MAX_SAID_PLAN_CHANGE)
            for user in exc.users:
                print(printable(user))
            return 3
        moved = f"its {users} user(s) are back on the default plan" if users else "no user was on it"
        print(f"deleted plan {args.name}: {moved} (applies within CACHE_TTL_SECONDS)")
        return 0

    return _run(_with_admin(_settings(), go))


def cmd_plans_list(args: argparse.Namespace) -> int:
    async def go(admin: Any) -> None:
        if not admin.builtin:  # listed, but said first: they are not the plans in force
            _say("GOVERNANCE=zion: these plans are Sentinel's own and not in effect (Zion's limits apply)")
        for plan, _users in await admin.plans():
            # A name an earlier version (or another writer) stored with a terminal escape reads as text.
            print(f"{printable(plan.name)}: {', '.join(str(lim) for lim in plan.limits) or 'no limits'}")

    return _run(_with_admin(_settings(), go))


def cmd_users_set_plan(args: argparse.Namespace) -> int:
    from sentinel.errors import InvalidRequest, NotFound, PlanChangeIncomplete

    if args.default == (args.plan is not None):
        _say("name a plan, or --default for the default plan (not both)")
        return 2

    async def go(admin: Any) -> int:
        try:
            await admin.set_user_plan(args.external_id, args.plan, _actor())
        except NotFound as exc:
            _say(f"{exc.message}")
            return 1
        except InvalidRequest as exc:  # a value refused, said as every command says one
            _say(f"{_refused(exc)}")
            return 2
        except PlanChangeIncomplete as exc:  # saved; the shared cache not told
            _say(f"{exc.message}", MAX_SAID_PLAN_CHANGE)
            return 3
        plan = "the default plan" if args.plan is None else f"plan {args.plan}"
        print(f"user {args.external_id} is on {plan} (applies within CACHE_TTL_SECONDS)")
        return 0

    return _run(_with_admin(_settings(), go))


def cmd_usage_show(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from sentinel.services.admin_usage import parse_moment

    try:
        since = parse_moment(args.since, datetime.now(UTC))
    except ValueError:
        _say(f"--since takes a window (1h, 7d) or an ISO date, got {_quoted(args.since)}")
        return 2

    async def go(admin: Any) -> None:
        rows = await admin.usage_totals(args.external_id, since)
        print(f"{'MODEL':<32} {'REQUESTS':>10} {'INPUT TOKENS':>14} {'OUTPUT TOKENS':>14}")
        total = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
        for row in rows:
            # a model name a provider reported: shown as text, never as terminal commands
            print(f"{printable(row['model'] or '-'):<32} {row['requests']:>10} {row['input_tokens']:>14} {row['output_tokens']:>14}")
            for k in total:
                total[k] += row[k]
        print(f"{'TOTAL':<32} {total['requests']:>10} {total['input_tokens']:>14} {total['output_tokens']:>14}")

    return _run(_with_admin(_settings(), go))


def cmd_usage_export(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from sentinel.services.admin_usage import empty_window, parse_moment

    now = datetime.now(UTC)
    try:
        since, until = parse_moment(args.since, now), parse_moment(args.until, now)
    except ValueError:
        _say("--since/--until take a window (1h, 7d) or an ISO date")
        return 2
    bound = empty_window(since, until, now)  # it exported just the header, status 0
    if bound == "until":
        _say("--until must be after 1970-01-01 00:00:00 UTC: nothing is recorded before it")
        return 2
    if bound == "since" and since is not None:
        _say(f"--since ({since:%Y-%m-%d %H:%M:%S} UTC) must be before --until "
             f"({(until or now):%Y-%m-%d %H:%M:%S} UTC) and before now; a window counts back from now "
             "(--since 2h --until 1h)")
        return 2

    async def go(admin: Any) -> None:
        sys.stdout.write(await admin.usage_csv(since, until))

    return _run(_with_admin(_settings(), go))


def _candidates(entries: list[Any], providers: set[str]) -> str:
    """A tier's candidates, as the console shows them: one whose provider is not configured is never
    chosen (a typo in `tiers set` left a tier without a candidate, and nothing said so)."""
    return ", ".join(
        f"{printable(e.provider)}/{printable(e.model)} (cost {e.relative_cost})"
        + ("" if not providers or e.provider in providers else " (provider not configured)")
        for e in entries
    )


def cmd_tiers_set(args: argparse.Namespace) -> int:
    from sentinel.errors import InvalidRequest

    async def go(admin: Any) -> int:
        try:
            await admin.set_tier(args.tier, list(args.entries), _actor())
        except InvalidRequest as exc:
            _say(f"{_refused(exc)}")
            return 2
        view = await admin.tiers()
        shown = _candidates(view.overrides.get(args.tier, []), view.providers)
        print(f"tier {args.tier}: {shown} (applies within TIER_CONFIG_TTL_SECONDS)")
        return 0

    return _run(_with_admin(_settings(), go))


def cmd_tiers_show(args: argparse.Namespace) -> int:
    async def go(admin: Any) -> None:
        view = await admin.tiers()
        for tier in TIERS:
            print(f"{tier}: {_candidates(view.effective.get(tier, []), view.providers) or '(none)'}")

    return _run(_with_admin(_settings(), go))


def cmd_tiers_reset(args: argparse.Namespace) -> int:
    from sentinel.errors import InvalidRequest

    async def go(admin: Any) -> int:
        try:
            await admin.reset_tier(args.tier, _actor())
        except InvalidRequest as exc:  # GOVERNANCE=zion: the table is Zion's (was a traceback)
            _say(f"{_refused(exc)}")
            return 2
        print(f"tier table reset for {args.tier or 'all tiers'} (the providers file or defaults apply)")
        return 0

    return _run(_with_admin(_settings(), go))


class _Parser(argparse.ArgumentParser):
    """argparse, saying a mistyped command line in one line, as every other refusal is said (its usage
    block came first, several lines); `--help` still shows the usage. Subcommands' parsers are
    made of this class too."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes what it did not expect: a key pasted as one more argument is not repeated.
        from sentinel.observability.redaction import SENTINEL_KEYS_ONLY

        message = SENTINEL_KEYS_ONLY(message)
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sentinel", description="Sentinel AI gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host", default=None, help="bind address (default SENTINEL_HOST or 0.0.0.0)")
    p.add_argument("--port", type=parse_port, default=None, help="port (default SENTINEL_PORT or 8080)")
    p.add_argument(
        "--workers", type=parse_workers, default=None,
        help="processes serving the port, a number or auto (one per CPU); more than 1 needs REDIS_URL (default 1)",
    )
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("mock-upstream", help="run the mock OpenAI/Anthropic upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=parse_port, default=9090)
    p.add_argument("--latency-ms", type=parse_latency_ms, default=0.0, help="delay before every response (0 to 3600000)")
    p.add_argument(
        "--api-key", default=None, help="the only upstream key accepted (401 otherwise; default: any key)"
    )
    p.set_defaults(fn=cmd_mock)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    p = keys.add_parser("create", help="create a key (and the user if missing); prints the key last")
    p.add_argument("external_id")
    p.add_argument("--name", default=None)
    p.add_argument("--email", default=None)
    lifetime = p.add_mutually_exclusive_group()
    lifetime.add_argument("--expires-in", default=None, metavar="DURATION",
                          help="the key stops working this long from now: 3600 (seconds), 90m, 12h, 30d, 2w "
                               "(default: never; at most 3660d)")
    lifetime.add_argument("--expires-at", default=None, metavar="WHEN",
                          help="the key stops working at this ISO-8601 date/time (UTC unless it says otherwise): "
                               "2030-01-31, 2030-01-31T18:00:00+01:00")
    p.set_defaults(fn=cmd_keys_create)
    p = keys.add_parser("list", help="list keys")
    p.add_argument("--user", default=None, help="only this user's keys (external id)")
    p.set_defaults(fn=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("key_id")
    p.set_defaults(fn=cmd_keys_revoke)

    plans = sub.add_parser("plans", help="manage quota plans").add_subparsers(dest="plans_command", required=True, metavar="COMMAND")
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
    p = plans.add_parser("delete", help="delete a plan; its users go back on the default plan")
    p.add_argument("name")
    p.set_defaults(fn=cmd_plans_delete)

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    p = users.add_parser("set-plan", help="put a user on a plan (or back on the default plan)")
    p.add_argument("external_id")
    p.add_argument("plan", nargs="?", default=None)
    p.add_argument("--default", action="store_true", help="put the user back on the default plan")
    p.set_defaults(fn=cmd_users_set_plan)

    usage = sub.add_parser("usage", help="usage from the ledger").add_subparsers(dest="usage_command", required=True, metavar="COMMAND")
    p = usage.add_parser("show", help="a user's usage by model")
    p.add_argument("external_id")
    p.add_argument("--since", default=None, help="a window back from now (1h, 7d) or an ISO date")
    p.set_defaults(fn=cmd_usage_show)
    p = usage.add_parser("export", help="usage per user and model as CSV (what the console exports)")
    p.add_argument("--since", default=None, help="a window back from now (1h, 7d) or an ISO date")
    p.add_argument("--until", default=None, help="a window back from now or an ISO date (default: now)")
    p.set_defaults(fn=cmd_usage_export)
    tiers = sub.add_parser("tiers", help="the built-in tier table").add_subparsers(dest="tiers_command", required=True, metavar="COMMAND")
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
    for name, value in vars(args).items():
        if isinstance(value, str) and any("\udc80" <= char <= "\udcff" for char in value):
            _say(f"--{name.replace('_', '-')} is not valid UTF-8")
            return 2  # the shell passed bytes no database column or identity can hold
    result: int = args.fn(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
