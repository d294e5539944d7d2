"""The operator's use cases, once, for the console, the admin API and the CLI.

Users (find, look at one: plan, live quota, keys, recent requests), plans (define with several
limits and windows, delete, assign), keys (issue, shown once; revoke), the tier table, usage
(series with time buckets, top users and models, totals, the CSV export), live state (quota
counters, provider health, sessions, the outbox depth) and the audit log.

Every change is written to the audit log in the change's own transaction, with its actor (`admin`
from the console or admin API, `cli` from the command line): a change is recorded exactly when it
takes effect, and one whose entry cannot be written is not made (503, nothing changed). Changes that caches would hide apply at once
where this process can reach the cache: revoking a key drops its cached identity (when the store
cannot be reached the revocation says so, RevocationIncomplete, and may be repeated) and changing a
user's plan (or a plan's limits, or deleting a plan: its users get the default plan) drops the
cached plans, in the shared store; other replicas' own one-second copies expire by themselves. A plan
change that gives users a limit over a window new to them seeds its counter from the usage ledger first
(`_seed_windows`: what they used in that window, never lowering a counter), so a window changed
mid-way does not start at 0. That follow-up is kept in the database with the change, in its
transaction, and deleted once done: when the store (or the database) cannot take it, or the process
stops before it is done, a running gateway finishes it once they answer (`finish_plan_changes`,
driven by `sentinel.services.plan_finisher`); a change whose follow-up failed says so,
PlanChangeIncomplete (503), and may be repeated. Tier
edits reach other replicas within TIER_CONFIG_TTL_SECONDS.

With another governance (GOVERNANCE=zion: `builtin` False) the plans and the tier table are that
source's: changing Sentinel's own plans or plan assignments is refused (`plans_editable`, 409
`plans_managed_by_governance`), and so is editing the tier table (`tiers_not_editable`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.models import AuditLogRow, UnfinishedPlanChangeRow, utcnow
from sentinel.domain.identity import Identity
from sentinel.domain.plans import MAX_LIMIT, Limit, Plan
from sentinel.domain.text import has_control
from sentinel.domain.tiers import TIERS, TierModelEntry, TierTable
from sentinel.errors import (
    Conflict,
    GovernanceUnavailable,
    InvalidRequest,
    NotFound,
    PlanChangeIncomplete,
    RevocationIncomplete,
    StoreUnavailable,
)
from sentinel.governance.audit import AuditEntry, AuditLog
from sentinel.governance.auth import Authenticator
from sentinel.governance.keys import PASTED_KEY, ApiKeyInfo, KeyService, is_api_key
from sentinel.governance.ledger import SqlLedger
from sentinel.governance.plan_source import CachedPlans
from sentinel.governance.plans import PlanChange, PlanExists, PlanRepository
from sentinel.governance.request_stats import RequestStats
from sentinel.governance.tier_store import DbTiers, TierRepository, entry_text
from sentinel.governance.unfinished_plans import UnfinishedPlanChanges
from sentinel.governance.usage_stats import LedgerEntry, Ranked, UsageStats
from sentinel.governance.users import UserDirectory, UserSummary
from sentinel.observability.logging import clipped
from sentinel.quota.limiter import QuotaLimiter
from sentinel.quota.outbox import RedisStreamOutbox, SqlOutbox
from sentinel.services.admin_forms import (
    LimitInput,
    check_limits,
    check_plan_name,
    check_tier,
    check_tier_entries,
    field_errors,
    key_expiry,
    refuse,
)
from sentinel.services.admin_live import LiveState, ProviderView, QuotaView
from sentinel.services.admin_usage import PERIODS, Series, UsageReports
from sentinel.services.window_seed import WindowSeeder, new_windows

log = logging.getLogger("sentinel.admin")

NO_LIMITS = (
    "at least one limit: a plan without limits leaves its users unlimited (to put them on the default plan, "
    "delete the plan)"
)
USER_PAGE_KEYS = 100  # a user's page lists this many of the user's keys, the newest (the key list pages them all)
PLANS_MANAGED_BY_GOVERNANCE = (
    "With GOVERNANCE=zion, quota plans and plan assignments come from Zion: Sentinel's own plans are not "
    "enforced, so they cannot be edited here (change the user's limits in Zion)"
)


SPACED_ID = "no space at either end: a new user named so would read as another on the console"
UNCOMPOSED_ID = "in Unicode's composed form (NFC): a new user named otherwise would read as another on the console"
COMPATIBILITY_ID = (
    "no compatibility character (a fullwidth letter, a ligature, a Roman numeral: Unicode's NFKC form): a new "
    "user named so would read as another on the console"
)
MIXED_SCRIPT_ID = (
    "letters of one of the Latin, Greek, Cyrillic, Armenian, Cherokee and Coptic scripts, not several: a new "
    "user named so (a Cyrillic 'а' among Latin letters) would read as another on the console"
)
CONFUSABLE_ID = (
    "not drawn as an existing user's id ({}): a new user named so would read as that one on the console"
)
# Scripts whose letters are drawn alike (Latin `a`, Cyrillic `а`, Greek `ο` and `o`): an id mixing them is
# a look-alike of one written in a single script (UTS #39's mixed-script confusables, by their names).
LOOK_ALIKE_SCRIPTS = frozenset({"LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "CHEROKEE", "COPTIC"})


# Letters of those scripts drawn as a Latin one (UTS #39's confusables, the letters of ids): an id written
# wholly in one of them (`\u0430\u0440\u0440`, Cyrillic) is not mixed, yet reads as the Latin `app`.
_LOOK_ALIKE_LETTERS, _AS_LATIN = (
    # Cyrillic
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0455\u0456\u0458\u0501\u04bb\u04cf\u051b\u051d\u04af"
    "\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0423\u0405\u0406\u0408\u04ae\u051a\u051c"
    # Greek
    "\u03b1\u03bf\u03bd\u03c1\u03b9\u03ba\u03c5\u03c7\u03f2\u03f3"
    "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7\u03f9\u037f"
    # Armenian
    "\u0585\u057d\u0570\u0578\u0581\u0566\u054f\u0555\u053c\u054d"
    # Cherokee
    "\u13aa\u13f4\u13df\u13ac\u13bb\u13ab\u13e6\u13de\u13b7\u13b3\u13a1\u13da\u13a2\u13d9\u13c3\u13e2\u13a0"
    # Coptic
    "\u2c9f\u2c9e\u2ca3\u2ca2\u2ca5\u2ca4\u2cad\u2cac\u2c81",
    "aeopcyxsijdhlqwy"
    "ABEKMHOPCTXYSIJYQW"
    "aovpikuxcj"
    "ABEZHIKMNOPTYXCJ"
    "ouhngqSOLU"
    "ABCEHJKLMWRSTVZPD"
    "oOpPcCxXa",
)
_LATIN_LOOK_ALIKES = str.maketrans(_LOOK_ALIKE_LETTERS, _AS_LATIN)


def _spellings() -> dict[str, dict[str, str]]:
    """Script -> Latin letter -> the first of that script's letters drawn as it (how an id is spelled there)."""
    table: dict[str, dict[str, str]] = {}
    for letter, latin in zip(_LOOK_ALIKE_LETTERS, _AS_LATIN, strict=True):
        table.setdefault(unicodedata.name(letter).split(" ", 1)[0], {}).setdefault(latin, letter)
    return table


_SPELLINGS = _spellings()


def latin_look_alike(text: str) -> str | None:
    """`text` with each letter of LOOK_ALIKE_SCRIPTS drawn as a Latin one written as that one (`\u0430\u0440\u0440`
    -> `app`), or None when it holds no such letter (it reads as itself)."""
    if text.isascii():
        return None
    latin = text.translate(_LATIN_LOOK_ALIKES)
    return None if latin == text else latin


def look_alike_ids(text: str) -> list[str]:
    """The other spellings of `text` that are drawn as it, each in one script: in Latin letters
    (`\u0430\u0440\u0440` -> `app`) and in each of LOOK_ALIKE_SCRIPTS with a look-alike for every one
    of those Latin letters (`app` -> Cyrillic `\u0430\u0440\u0440`, Greek `\u03b1\u03c1\u03c1`), one
    spelling per script (its first look-alike of each letter: Cyrillic `\u0443`, not `\u04af`, for `y`).
    An id mixing scripts is refused when new (`mixes_look_alike_scripts`), so these are the ids an
    existing user it reads as can have."""
    latin = latin_look_alike(text) or text
    found = [latin] if latin != text else []
    letters = [ch for ch in latin if ch.isalpha()]
    if not letters or not all(ch.isascii() for ch in letters):
        return found
    for by_latin in _SPELLINGS.values():
        if all(ch in by_latin for ch in letters):  # this script can spell it alone
            spelled = "".join(by_latin.get(ch, ch) for ch in latin)
            if spelled != text and spelled not in found:
                found.append(spelled)
    return found


def mixes_look_alike_scripts(text: str) -> bool:
    """Whether `text`'s letters come from more than one of LOOK_ALIKE_SCRIPTS (read off each letter's
    Unicode name: `CYRILLIC SMALL LETTER A`)."""
    scripts = {unicodedata.name(char, "").split(" ", 1)[0] for char in text if char.isalpha() and not char.isascii()}
    if any(char.isalpha() and char.isascii() for char in text):
        scripts.add("LATIN")
    return len(scripts & LOOK_ALIKE_SCRIPTS) > 1


# A plan change's plans, before (None: the plan set again, every window of it seeded) and after.
_PlanMove = tuple[Plan | None, Plan]


async def _moved(before: Plan | None, after: Plan) -> _PlanMove:
    """A plan change's plans, known already (`AdminService._plan_changed`)."""
    return before, after


@dataclass(frozen=True)
class Actor:
    """Who makes a change: `admin` (console, admin API) or `cli`, and from which address."""

    name: str
    address: str | None = None


@dataclass(frozen=True)
class UserDetail:
    """Everything the user page shows."""

    external_id: str
    summary: UserSummary | None
    plan_origin: str  # "assigned", "default" or the governance source's name
    quota: QuotaView | None
    keys: list[ApiKeyInfo]
    recent: list[LedgerEntry]
    usage_30d: Ranked  # totals over the last 30 UTC days (today included)
    models_24h: list[dict[str, Any]]  # by model over the last 24 hours
    more_keys: bool = False  # the user has more keys than USER_PAGE_KEYS: `keys` holds the newest


@dataclass(frozen=True)
class Overview:
    """The overview page's data for one period."""

    period: str
    series: Series
    top_users: list[Ranked]
    top_models: list[Ranked]
    top_since: datetime
    providers: list[ProviderView]
    providers_error: str | None
    outbox_depth: int | None


@dataclass(frozen=True)
class TiersView:
    """The tier table in effect, the database's overrides and the catalog's table under them."""

    effective: TierTable
    overrides: TierTable
    fallback: TierTable
    editable: bool
    providers: set[str] = field(default_factory=set)


class AdminService:
    """See the module docstring. Parts that need the running gateway (`live`, caches) are optional:
    the CLI builds the service on the database (and the store) alone."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        keys: KeyService,
        default_plan: Plan,
        catalog_tiers: TierTable,
        live: LiveState | None = None,
        identities: Authenticator | None = None,
        plan_cache: CachedPlans | None = None,
        db_tiers: DbTiers | None = None,
        builtin: bool = True,
        clock: Callable[[], datetime] = utcnow,
        report_sessions: async_sessionmaker[AsyncSession] | None = None,
        providers: Collection[str] = (),
        limiter: QuotaLimiter | None = None,
        usage_stream: RedisStreamOutbox | None = None,
    ) -> None:
        self.keys = keys
        self.plan_repo = PlanRepository(sessions)
        self.tier_repo = TierRepository(sessions)
        self.users = UserDirectory(sessions, clock)
        self.ledger = SqlLedger(sessions)
        # The usage reports read the whole ledger: on their own sessions when given, whose statements
        # may outlast DATABASE_TIMEOUT_SECONDS (an export of a large ledger; see `wiring.build_runtime`).
        reading = report_sessions or sessions
        self.reports = UsageReports(SqlLedger(reading), UsageStats(reading), RequestStats(reading), clock)
        self.audit_log = AuditLog(sessions, clock)
        # Plan changes whose follow-up failed, for a running gateway to finish (`finish_plan_changes`).
        self.unfinished = UnfinishedPlanChanges(sessions)
        self.default_plan = default_plan
        self.catalog_tiers = catalog_tiers
        self.live = live
        self.identities = identities
        self.plan_cache = plan_cache
        self.db_tiers = db_tiers
        # The configured providers' names, where no running gateway (`live`) says them (the CLI).
        self.configured_providers = set(providers)
        self.builtin = builtin
        self.clock = clock
        # The quota counters a plan change seeds from the ledger (`_seed_windows`): the gateway's own
        # limiter (`live`), or one on the store the CLI was given.
        limiter = limiter if limiter is not None or live is None else live.limiter
        # (and the records still in the SQL outbox or on the usage stream: `usage_stream`).
        self.seeder = (
            WindowSeeder(self.ledger, limiter, SqlOutbox(sessions), usage_stream) if limiter is not None else None
        )

    def _entry(self, actor: Actor, action: str, target: str, details: dict[str, Any] | None = None) -> AuditLogRow:
        """The audit entry of a change, for the repository to write in the change's transaction."""
        return self.audit_log.entry(actor.name, action, target, details, actor.address)

    async def _forget_plans(self, external_ids: Sequence[str]) -> bool:
        """Drop the cached plans of `external_ids`, whose plan changed (saved in the database); False
        when the store cannot take it: their old plans may be enforced for up to CACHE_TTL_SECONDS
        (every process reads them from the store)."""
        if self.plan_cache is None or not external_ids:
            return True
        cache = self.plan_cache
        try:
            for start in range(0, len(external_ids), 100):
                await asyncio.gather(*(cache.forget(u) for u in external_ids[start : start + 100]))
        except StoreUnavailable:
            return False
        return True

    async def _follow_up(self, external_ids: Sequence[str], plans: Callable[[], Awaitable[_PlanMove]]) -> str | None:
        """The follow-up of a plan change saved in the database: the counters of its new windows
        seeded (`_seed_windows`, `plans` read only then: the plans before and after), then the cached
        plans dropped (`_forget_plans`). None when done, else what was not (a sentence's end)."""
        unseeded = await self._seed_windows(external_ids, plans)
        unseeded_said = (
            f"the counters of its new window(s) were not seeded from the usage ledger ({unseeded}): until they "
            "are, those limits count only what is used from now on"
        )
        if not await self._forget_plans(external_ids):
            ttl = self.plan_cache.cache.ttl if self.plan_cache is not None else 0.0
            told = (f"the shared cache could not be told (store unavailable): the plan before the change may be "
                    f"enforced for up to {ttl:g} s (CACHE_TTL_SECONDS)")
            return told if unseeded is None else f"{told}. Also, {unseeded_said}"
        return None if unseeded is None else unseeded_said

    def _unfinished(self, kept: list[UnfinishedPlanChangeRow], users: Sequence[str], before: Plan | None,
                    after: Plan) -> UnfinishedPlanChangeRow | None:
        """The row of a plan change's follow-up, for the repository to write in the change's own
        transaction (None: no user, nothing to follow up), put in `kept` for `_plan_changed`."""
        if not users:
            return None
        kept[:] = [self.unfinished.row(users, before, after)]
        return kept[0]

    async def _plan_changed(self, kept: Sequence[UnfinishedPlanChangeRow], external_ids: Sequence[str],
                            plans: Callable[[], Awaitable[_PlanMove]], saved: str, again: str) -> None:
        """What follows a plan change saved in the database (`_follow_up`), whose row `kept` was written
        with it (`_unfinished`). Done, the row is deleted; not all done, it stays for a running gateway
        to finish once the store and the database answer (`finish_plan_changes`), and
        PlanChangeIncomplete (503) says so — it was not in force at once. Whatever else stops the
        follow-up (the process killed, the request cancelled) leaves the row for a gateway likewise."""
        missed = await self._follow_up(external_ids, plans)
        if missed is None:
            for row in kept:
                try:
                    await self.unfinished.done(row.id)
                except GovernanceUnavailable as exc:  # done already: a gateway does it again, harmlessly
                    log.warning("a plan change's follow-up is done but stays kept in the database (a gateway "
                                "does it again): %s", exc.message)
            return
        raise PlanChangeIncomplete(
            f"{saved}, but {missed}. It is kept in the database: a running gateway finishes it by itself once the "
            f"store and the database answer. {again} then to finish it at once.", users=external_ids, finishing=True,
        )

    async def finish_plan_changes(self, limit: int = 100) -> int:
        """Finish the plan changes kept unfinished (`_plan_changed`), oldest first, up to `limit` (a
        change whose follow-up is under way in the process that made it too, harmlessly):
        each one's follow-up done again (`_follow_up`: the windows new to it seeded, never lowering a
        counter; the cached plans dropped), then deleted. Stops at the first the store or the
        database still cannot take. How many of those read are left (0: all finished);
        GovernanceUnavailable when the database cannot list them."""
        pending = await self.unfinished.pending(limit)
        for index, change in enumerate(pending):
            if await self._follow_up(change.users, functools.partial(_moved, change.before, change.after)) is not None:
                return len(pending) - index
            await self.unfinished.done(change.id)
            log.info("an unfinished plan change is finished", extra={"user_count": len(change.users)})
        return 0

    async def _seed_windows(self, external_ids: Sequence[str], plans: Callable[[], Awaitable[_PlanMove]]) -> str | None:
        """Seed the quota counters of each limit of the plan after the change over a (metric, window)
        the plan before it had not (`plans` reads both; no plan before: every limit of the one after —
        the change made again, to finish what failed; `window_seed.new_windows`), from the ledger
        (`WindowSeeder.seed`: never lowering a counter). None when done (or nothing to do), else what
        failed."""
        if self.seeder is None or not external_ids:
            return None
        try:
            before, after = await plans()
        except GovernanceUnavailable:
            return "plan store unavailable"
        return await self.seeder.seed(external_ids, new_windows(before, after))

    # --- users --------------------------------------------------------------------------------------
    async def find_users(self, text: str | None = None, *, limit: int = 50, offset: int = 0) -> list[UserSummary]:
        """Users whose external id or email contains `text`."""
        return await self.users.search(text, limit=limit, offset=offset)

    async def user(self, external_id: str) -> UserDetail:
        """A user's page; NotFound when the user has neither a row nor usage."""
        summary = await self.users.get(external_id)
        recent = await self.reports.stats.recent_requests(external_id)
        if summary is None and not recent:
            raise NotFound(f"No user {clipped(external_id)!r}", code="user_not_found")
        # The newest USER_PAGE_KEYS, shown oldest first: a user issued a key per job is one bounded page.
        newest = await self.keys.list_keys(external_id, limit=USER_PAGE_KEYS + 1, newest_first=True)
        keys = newest[:USER_PAGE_KEYS][::-1]
        now = self.clock()
        usage = await self.reports.stats.user_totals(external_id, int(now.timestamp()) // 86400 - 29)
        models = await self.reports.totals(external_id, now - timedelta(days=1))
        quota = None
        if self.live is not None:
            identity = Identity(external_id=external_id, user_id="", email=summary.email if summary else None)
            quota = await self.live.quota(identity)
        origin = ("assigned" if summary and summary.plan_name else "default") if self.builtin else "governance"
        return UserDetail(external_id, summary, origin, quota, keys, recent, usage, models,
                          more_keys=len(newest) > USER_PAGE_KEYS)

    async def _misleading_new_id(self, external_id: str) -> str | None:
        """Why `external_id` would read as another user's id on the console, when it names no user yet
        (no row, no usage), or None: whitespace at either end (a space, a no-break space: HTML draws
        neither end's, so `alice ` read as `alice`, also in `keys list`), a form other than Unicode's
        composed one (NFC: `cafe\u0301` is drawn as `café`, a second user beside it) or its compatibility
        one (NFKC: a fullwidth `ａlice`), or letters of several look-alike scripts (`\u0430lice`: a
        Cyrillic `а`), or drawn as an existing user's id in another script (`\u0430\u0440\u0440`, all
        Cyrillic, beside `app`, or `app` beside it: `look_alike_ids`; an id in one script is its own
        otherwise). One an identity source already vouched for (a JWT's `sub`) stays manageable."""
        if external_id != external_id.strip():
            why = SPACED_ID
        elif not unicodedata.is_normalized("NFC", external_id):
            why = UNCOMPOSED_ID
        elif not unicodedata.is_normalized("NFKC", external_id):
            why = COMPATIBILITY_ID
        elif mixes_look_alike_scripts(external_id):
            why = MIXED_SCRIPT_ID
        elif not (others := look_alike_ids(external_id)):
            return None
        else:  # drawn as another spelling: misleading only beside the user of that spelling
            why = None
        if await self._known(external_id):
            return None
        if why is None:
            for other in others:
                if await self._known(other):
                    escaped = "" if other.isascii() else f", written {ascii(other)[1:-1]}"
                    return CONFUSABLE_ID.format(f"{clipped(other, 64)!r}{escaped}")
            return None
        return why

    async def _known(self, external_id: str) -> bool:
        """Whether `external_id` names a user: a row, or usage recorded for it."""
        return await self.users.get(external_id) is not None or bool(
            await self.reports.stats.recent_requests(external_id, 1))

    async def set_user_plan(self, external_id: str, plan: str | None, actor: Actor) -> None:
        """Put a user (created if missing) on `plan` (None: the default plan); NotFound for an unknown plan."""
        self.plans_editable()
        if not external_id.strip() or len(external_id) > 255 or has_control(external_id):
            raise refuse({"external_id": "1-255 characters, no control characters"})
        if (misleading := await self._misleading_new_id(external_id)) is not None:
            raise refuse({"external_id": misleading})
        kept: list[UnfinishedPlanChangeRow] = []
        moves: list[_PlanMove] = []

        def entry(before: str | None) -> AuditLogRow:
            return self._entry(actor, "user.plan", external_id, {"from": before, "to": plan})

        def unfinished(before: Plan | None, after: Plan | None) -> UnfinishedPlanChangeRow | None:
            # The same plan set again (the retry after PlanChangeIncomplete): every window seeded.
            moved = (before.name if before else None) != (after.name if after else None)
            moves[:] = [((before or self.default_plan) if moved else None, after or self.default_plan)]
            return self._unfinished(kept, [external_id], *moves[0])

        await self.plan_repo.set_user_plan(external_id, plan, entry, unfinished)
        await self._plan_changed(kept, [external_id], functools.partial(_moved, *moves[0]),
                                 f"The plan of user {clipped(external_id)!r} is changed in the database",
                                 "Make the change again")

    # --- plans --------------------------------------------------------------------------------------
    def plans_editable(self) -> None:
        """Refuse (409 `plans_managed_by_governance`) any change to the built-in plans or to who is on
        which while another governance (Zion) supplies the plans: saved, they would never be enforced,
        and an operator would believe a user limited whom Zion's plan governs. The console, the admin
        API and the CLI all change plans through this service, so this is the one place that says so."""
        if not self.builtin:
            raise Conflict(PLANS_MANAGED_BY_GOVERNANCE, code="plans_managed_by_governance")

    async def plans(self) -> list[tuple[Plan, int]]:
        """Every plan with how many users are on it."""
        counts = await self.users.per_plan()
        return [(plan, counts.get(plan.name, 0)) for plan in await self.plan_repo.list_plans()]

    async def plan(self, name: str) -> Plan:
        found = await self.plan_repo.get_plan(name)
        if found is None:
            raise NotFound(f"No plan {clipped(name)!r}", code="plan_not_found")
        return found

    async def save_plan_input(self, name: str, limits: Sequence[LimitInput], actor: Actor, *,
                              create: bool = False) -> Plan:
        """`save_plan` from operator input (every field checked, errors per field)."""
        self.plans_editable()
        errors: dict[str, str] = {}
        checked: list[Limit] = []
        try:
            name = check_plan_name(name)
        except InvalidRequest as exc:  # reported with the limits' errors, all at once
            errors.update(field_errors(exc))
        try:
            checked = check_limits(limits)
        except InvalidRequest as exc:
            errors.update(field_errors(exc))
        if errors:
            raise refuse(errors)
        return await self.save_plan(name, checked, actor, create=create)

    async def save_plan(self, name: str, limits: Sequence[Limit], actor: Actor, *, create: bool = False,
                        merge: bool = False) -> Plan:
        """Create plan `name` or replace its limits (`merge`: only those of the same metric and window);
        with `create`, an existing plan is a field error, and so is a new plan whose name differs from
        an existing one's only by case. Every surface saves plans here, so this is where a plan must
        name at least one limit: one without leaves its users unlimited (a plan stored without limits
        earlier still reads and applies as such)."""
        self.plans_editable()
        name = check_plan_name(name)
        if not limits:
            raise refuse({"limits": NO_LIMITS})
        if too_large := [lim for lim in limits if not 0 <= lim.limit <= MAX_LIMIT]:
            raise refuse({"limits": f"{too_large[0].metric}: a whole number from 0 to {MAX_LIMIT:,}"})

        def entry(change: PlanChange) -> AuditLogRow:
            action = "plan.update" if change.before is not None else "plan.create"
            before = change.before.spec() if change.before is not None else None
            return self._entry(actor, action, name, {"from": before, "to": change.after.spec()})

        kept: list[UnfinishedPlanChangeRow] = []

        def moved(change: PlanChange) -> _PlanMove:
            # Saved as it was (the retry after PlanChangeIncomplete): every window seeded again.
            same = change.before is None or change.before.limits == change.after.limits
            return (None if same else change.before), change.after

        def unfinished(change: PlanChange) -> UnfinishedPlanChangeRow | None:
            return self._unfinished(kept, change.users, *moved(change))

        try:
            change = await self.plan_repo.set_plan(name, limits, merge=merge, create=create, audit=entry,
                                                   unfinished=unfinished)
        except PlanExists as exc:
            taken = exc.args[0]
            same = "" if taken == name else " (plan names must differ by more than case)"
            raise refuse({"name": f"a plan called {taken!r} exists already{same}"}) from None
        except ValueError as exc:
            raise refuse({"limits": str(exc)}) from None
        await self._plan_changed(kept, change.users, functools.partial(_moved, *moved(change)),
                                 f"Plan {clipped(name)!r} is saved ({len(change.users)} user(s) on it)", "Save it again")
        return change.after

    async def delete_plan(self, name: str, actor: Actor) -> int:
        """Delete a plan; its users are put on the default plan (in the same transaction) and their
        cached plans dropped. NotFound when unknown. Returns how many moved (the audit entry's `users`)."""
        self.plans_editable()
        deleted: list[Plan] = []
        kept: list[UnfinishedPlanChangeRow] = []

        def entry(plan: Plan, users: list[str]) -> AuditLogRow:
            deleted[:] = [plan]
            return self._entry(actor, "plan.delete", name, {"from": plan.spec(), "users": len(users)})

        def unfinished(plan: Plan, users: list[str]) -> UnfinishedPlanChangeRow | None:
            return self._unfinished(kept, users, plan, self.default_plan)

        users = await self.plan_repo.delete_plan(name, entry, unfinished)
        if users is None:  # unknown, or deleted meanwhile by another operator
            raise NotFound(f"No plan {clipped(name)!r}", code="plan_not_found")
        await self._plan_changed(
            kept, users, functools.partial(_moved, deleted[0] if deleted else None, self.default_plan),
            f"Plan {clipped(name)!r} is deleted and its {len(users)} user(s) put on the default plan",
            "Put them on the default plan again (listed in `users`: `sentinel users set-plan USER --default`)",
        )
        return len(users)

    # --- keys ---------------------------------------------------------------------------------------
    async def create_key(self, external_id: str, name: str | None, email: str | None, actor: Actor, *,
                         expires_in: str | int | None = None, expires_at: str | datetime | None = None,
                         in_field: str = "expires_in") -> tuple[ApiKeyInfo, str]:
        """Issue a key (the user is created if missing): (info, the key, shown this once). An `email`
        other than the user's sets or replaces it, the change in the `key.create` entry. It expires
        `expires_in` (seconds, or `30d`) or at `expires_at` (ISO 8601) from now on this service's
        clock, or never (`key_expiry`; `in_field`: how the surface names the lifetime's field)."""
        errors = {}
        expiry = None
        try:
            expiry = key_expiry(self.clock(), expires_in, expires_at, in_field=in_field)
        except InvalidRequest as exc:  # reported with the other fields' errors, all at once
            errors.update(field_errors(exc))
        if not external_id.strip() or len(external_id) > 255:
            errors["external_id"] = "1-255 characters"
        if name is not None and len(name) > 200:
            errors["name"] = "at most 200 characters"
        if email is not None and (len(email) > 320 or "@" not in email):
            errors["email"] = "an email address"
        if not errors and (problem := Identity(external_id, "", email=email or None).unrecordable()):
            errors["email" if "email" in problem else "external_id"] = problem  # its keys would all be refused
        for named, value in (("external_id", external_id), ("name", name), ("email", email)):
            if value is not None and has_control(value):  # as the admin API and the console refuse them
                errors[named] = "no control characters (NUL, CR, LF, ...)"
        if not errors and (misleading := await self._misleading_new_id(external_id)) is not None:
            errors["external_id"] = misleading
        if errors:
            raise refuse(errors)

        email_changed = False

        def entry(info: ApiKeyInfo, email_before: str | None) -> AuditLogRow:
            nonlocal email_changed
            details: dict[str, Any] = {"user": external_id, "name": name, "prefix": info.prefix}
            if expiry is not None:
                details["expires_at"] = expiry.isoformat()
            if email and email != email_before:  # the user's email, set or replaced with the key
                details["email"] = {"from": email_before, "to": email}
                email_changed = True
            return self._entry(actor, "key.create", info.id, details)

        created = await self.keys.create_key(
            external_id, name or None, email=email or None, expires_at=expiry, audit=entry
        )
        if email_changed:
            await self._forget_identities(external_id)
        return created

    async def _forget_identities(self, external_id: str) -> None:
        """Drop the cached identities of `external_id`'s keys once the user changed (an email set or
        replaced): each carried the old email for up to JWT_CACHE_TTL_SECONDS — under Zion their usage
        went on being reported to the old address (or refused as unreportable) that long, on every
        replica. A store outage is logged only (they expire within the TTL), as for plans."""
        if self.identities is None:
            return
        identities = self.identities
        try:  # the key is issued: never a 503 now, which would lose the key shown this once
            hashes = await self.keys.key_hashes(external_id)
            for start in range(0, len(hashes), 100):
                await asyncio.gather(*(identities.user_changed(h) for h in hashes[start : start + 100]))
        except (StoreUnavailable, GovernanceUnavailable) as exc:
            log.warning("could not drop the cached identities of a changed user (they expire within "
                        "JWT_CACHE_TTL_SECONDS): %s", exc)

    async def revoke_key(self, key_id: str, actor: Actor) -> ApiKeyInfo:
        """Revoke a key and replace its cached identity with a tombstone; the key as revoked (its
        `revoked_at`, this revocation's or the earlier one's), NotFound when unknown.
        Revoking a revoked key again sends the tombstone again (no new audit entry): the retry after
        RevocationIncomplete, raised when the store cannot take it — the key is revoked in the
        database (and audited) but its cached identity may serve it until its TTL. The key itself
        given for its id is refused (400) without quoting it: a 404 said `No key 'sk-sentinel-...'`."""
        if is_api_key(key_id):
            raise refuse({"key_id": PASTED_KEY}, "An API key was given where its key id goes")
        info = await self.keys.get_key(key_id)
        if info is None:
            raise NotFound(f"No key {clipped(key_id)!r}", code="key_not_found")
        details = {"user": info.external_id, "prefix": info.prefix}
        revocation = await self.keys.revoke_with_hash(key_id, lambda: self._entry(actor, "key.revoke", key_id, details))
        if revocation is None:
            raise NotFound(f"No key {clipped(key_id)!r}", code="key_not_found")
        unsent = None
        if self.identities is not None:
            try:  # a tombstone no lookup in flight can overwrite
                await self.identities.revoke(revocation.token_hash)
            except StoreUnavailable:
                unsent = self.identities.cache.ttl
        if unsent is not None:
            raise RevocationIncomplete(
                f"Key {key_id} is revoked in the database, but the shared cache could not be told (store "
                f"unavailable): it may keep working for up to {unsent:g} s (JWT_CACHE_TTL_SECONDS). Revoke it "
                "again once the store answers.",
                key_id=key_id, external_id=info.external_id,
            )
        # As it is now: `info` was read before the revocation (its `revoked_at` was null in the answer).
        return replace(info, revoked_at=revocation.revoked_at)

    # --- tiers --------------------------------------------------------------------------------------
    async def tiers(self) -> TiersView:
        overrides = await self.tier_repo.table() if self.builtin else {}
        effective: TierTable
        if self.live is not None and self.live.tiers is not None:
            effective = await self.live.tiers.table()
        else:
            effective = {t: overrides.get(t) or list(self.catalog_tiers.get(t, [])) for t in TIERS}
        providers = self.live.providers if self.live is not None else self.configured_providers
        return TiersView(effective, overrides, self.catalog_tiers, self.builtin, providers)

    async def set_tier(self, tier: str, entries: Sequence[str] | Sequence[TierModelEntry], actor: Actor) -> None:
        """Replace a tier's candidates (text lines `provider/model:cost[:in:out]` or entries)."""
        self._tiers_editable()
        tier = check_tier(tier)
        parsed = [e for e in entries if isinstance(e, TierModelEntry)]
        if len(parsed) != len(entries):
            parsed = check_tier_entries([e for e in entries if isinstance(e, str)])
        if not parsed:
            raise refuse({"entries.0": "at least one candidate (or reset the tier)"})
        # Prices included, and what it replaced: an edit of the prices alone (what `cost_usd` is reckoned
        # with) was recorded as identical to the entry before it.
        shown = [entry_text(e.provider, e.model, e.relative_cost, e.input_price_per_million,
                            e.output_price_per_million) for e in parsed]
        await self.tier_repo.set_tier(tier, parsed, lambda before: self._entry(
            actor, "tier.set", tier, {"from": before.get(tier, []), "to": shown}))
        if self.db_tiers is not None:
            self.db_tiers.invalidate()

    def _tiers_editable(self) -> None:
        if not self.builtin:
            raise InvalidRequest("With GOVERNANCE=zion the tier table comes from Zion's tier config",
                                 code="tiers_not_editable")

    async def reset_tier(self, tier: str | None, actor: Actor) -> None:
        """Drop the database's candidates of one tier (None: all); the catalog's table applies."""
        self._tiers_editable()
        if tier is not None:
            check_tier(tier)
        await self.tier_repo.clear(tier, lambda before: self._entry(
            actor, "tier.reset", tier or "*", {"from": before.get(tier, []) if tier is not None else before}))
        if self.db_tiers is not None:
            self.db_tiers.invalidate()

    # --- usage, live state, audit -------------------------------------------------------------------
    async def overview(self, period: str) -> Overview:
        chosen = PERIODS.get(period)
        if chosen is None:
            raise refuse({"period": f"one of {', '.join(PERIODS)}"})
        series = await self.reports.period_series(chosen)
        users, models, since = await self.reports.top(chosen)
        providers, error = await self.live.provider_health() if self.live else ([], "not available")
        depth = await self.live.outbox_depth() if self.live else None
        return Overview(period, series, users, models, since, providers, error, depth)

    async def usage_totals(self, external_id: str, since: datetime | None = None,
                           until: datetime | None = None) -> list[dict[str, Any]]:
        return await self.reports.totals(external_id, since, until)

    async def usage_csv(self, since: datetime | None, until: datetime | None) -> str:
        return await self.reports.csv(since, until)

    async def audit(self, limit: int = 50, before_id: int | None = None, target: str | None = None) -> list[AuditEntry]:
        return await self.audit_log.recent(limit, before_id, target)

    def require_live(self) -> LiveState:
        if self.live is None:
            raise NotFound("Live state is not available here", code="not_available")
        return self.live
