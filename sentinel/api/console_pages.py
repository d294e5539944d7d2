"""The console's page bodies: overview, users, one user, plans and tiers, the audit log.

Each function takes the service's view objects and returns escaped HTML for `console_html.layout`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

import orjson

from sentinel.api.console_charts import SeriesData, bar_chart, line_chart
from sentinel.api.console_html import (
    csrf_field,
    e,
    error_for,
    id_badge,
    isolated,
    look_alike,
    ms,
    num,
    pct,
    select,
    short,
    shown_id,
    table,
    usd,
    when,
)
from sentinel.api.console_once import EarlierPost
from sentinel.api.paths import is_canonical
from sentinel.domain.plans import METRICS, Plan, format_window
from sentinel.domain.tiers import TIERS
from sentinel.governance.audit import AuditEntry
from sentinel.governance.keys import ApiKeyInfo
from sentinel.governance.users import UserSummary
from sentinel.services.admin import PLANS_MANAGED_BY_GOVERNANCE, Overview, TiersView, UserDetail
from sentinel.services.admin_forms import LimitInput
from sentinel.services.admin_usage import PERIODS

GOVERNED_PLANS = f'<p class="notice plans-governed" role="status">{e(PLANS_MANAGED_BY_GOVERNANCE)}.</p>'

TIME_FORMATS = {"1h": "%H:%M", "24h": "%H:%M", "30d": "%m-%d %H:%M"}


def user_href(external_id: str, action: str = "") -> str:
    """The console's address of a user's page (`action`: of its `plan` or `keys` form):
    `/admin/users/{id}`, or `/admin/user?id={id}` for an id the canonical-path check refuses as a
    path segment (one holding `/`, `\\`, `?`, `#` or `%`, or of only dots and spaces before any `;`:
    `..`, `..;x`, ` `), which no path can name."""
    segment = quote(external_id, safe="")
    suffix = f"/{action}" if action else ""
    if is_canonical(f"/admin/users/{segment}".encode()):
        return f"/admin/users/{segment}{suffix}"
    return f"/admin/user{suffix}?id={segment}"


def user_link(external_id: str) -> str:
    """A link to the user's page, marked when the id may read as another's (`id_badge`)."""
    return f'<a href="{e(user_href(external_id))}">{isolated(external_id)}</a>{id_badge(external_id)}'


def _tile(label: str, value: str, key: str) -> str:
    return f'<div class="tile" data-tile="{key}"><span class="label">{e(label)}</span><span class="value">{e(value)}</span></div>'


def overview(view: Overview) -> str:
    series, totals = view.series, view.series.totals
    tabs = "".join(
        f'<a href="/admin?period={name}"{" aria-current=page" if name == view.period else ""}>{e(p.label)}</a>'
        for name, p in PERIODS.items()
    )
    tiles = "".join([
        _tile("Requests", num(totals.requests), "requests"),
        _tile("Input tokens", short(totals.input_tokens), "input_tokens"),
        _tile("Output tokens", short(totals.output_tokens), "output_tokens"),
        _tile("Cost", usd(totals.cost_usd), "cost"),
        _tile("Errors (5xx)", pct(totals.error_rate), "error_rate"),
        _tile("Refused (4xx)", pct(totals.refused_rate), "refused_rate"),
        _tile("p50 latency", ms(totals.p50_ms), "p50"),
        _tile("p99 latency", ms(totals.p99_ms), "p99"),
        _tile("Outbox depth", num(view.outbox_depth), "outbox"),
    ])
    points, fmt = series.points, TIME_FORMATS.get(view.period, "%H:%M")
    starts = [p.start for p in points]
    answered = [p.answers > 0 for p in points]
    charts = "".join([
        bar_chart("Requests", starts, SeriesData("requests", [p.requests for p in points]), num, fmt),
        line_chart("Tokens", starts, [SeriesData("input", [p.input_tokens for p in points]),
                                      SeriesData("output", [p.output_tokens for p in points])], short, fmt),
        bar_chart("Cost", starts, SeriesData("USD", [p.cost_usd for p in points]), usd, fmt),
        line_chart("Errors and refusals", starts, [
            SeriesData("5xx", [p.error_rate if a else None for p, a in zip(points, answered, strict=True)]),
            SeriesData("4xx", [p.refused_rate if a else None for p, a in zip(points, answered, strict=True)]),
        ], pct, fmt),
        line_chart("Latency", starts, [SeriesData("p50", [p.p50_ms for p in points]),
                                       SeriesData("p99", [p.p99_ms for p in points])], ms, fmt),
    ])
    users = table(
        ("User", "Requests", "Input", "Output", "Cost"),
        ([user_link(r.name), num(r.requests), short(r.input_tokens), short(r.output_tokens), usd(r.cost_usd)]
         for r in view.top_users),
        empty="No requests in this period.", cls="top-users",
    )
    models = table(
        ("Model", "Requests", "Input", "Output", "Cost"),
        ([f'{isolated(r.name) if r.name else "(none)"} <span class="provider">{isolated(r.provider)}</span>', num(r.requests),
          short(r.input_tokens), short(r.output_tokens), usd(r.cost_usd)] for r in view.top_models),
        empty="No requests in this period.", cls="top-models",
    )
    return (
        f'<nav class="periods" aria-label="Period">{tabs}</nav>'
        f'<section class="tiles">{tiles}</section><section class="charts">{charts}</section>'
        f'<p class="hint">Top users and models since {when(view.top_since)}.</p>'
        f'<section class="pair"><div><h2>Top users</h2>{users}</div><div><h2>Top models</h2>{models}</div></section>'
        f"<section><h2>Providers</h2>{providers(view)}</section>"
        f"<section><h2>Export usage</h2>{export_form()}</section>"
    )


def providers(view: Overview) -> str:
    rows = []
    for p in view.providers:
        if not p.configured:
            state = '<span class="badge warn">not configured</span>'
        elif p.state == "trial":
            state = '<span class="badge warn">recovering: trial under way</span>'
        elif p.state == "half_open":
            state = '<span class="badge warn">recovering: next request is its trial</span>'
        elif p.available:
            state = '<span class="badge ok">healthy</span>'
        elif p.soft:  # (client-causable failures alone: avoided, never refused)
            state = f'<span class="badge warn">soft backoff {p.remaining_seconds:.0f} s: avoided, not refused</span>'
        else:
            state = f'<span class="badge bad">backoff {p.remaining_seconds:.0f} s</span>'
        rows.append([isolated(p.provider), isolated(p.model) if p.model else "–", e(", ".join(p.tiers) or "–"), state,
                     num(p.failures),
                     f"{p.backoff_seconds:.0f} s"])
    note = f'<p class="error">{e(view.providers_error)}</p>' if view.providers_error else ""
    return note + table(("Provider", "Model", "Tiers", "State", "Failures", "Backoff"), rows,
                        empty="No provider is configured.", cls="providers")


def export_form() -> str:
    return (
        '<form method="get" action="/admin/export.csv" class="inline">'
        '<label>From <input name="since" value="30d" size="22" placeholder="7d or 2026-01-31"></label>'
        '<label>Until <input name="until" size="22" placeholder="now"></label>'
        '<button type="submit">Download CSV</button></form>'
        '<p class="hint">Per user and model: requests, input and output tokens, cost. The same figures as '
        "<code>sentinel usage show</code>. Dates are UTC; <code>7d</code> means seven days back from now.</p>"
    )


def users_page(found: Sequence[UserSummary], query: str | None) -> str:
    search = (
        '<form method="get" action="/admin/users" class="inline" role="search">'
        f'<input name="q" value="{e(query)}" placeholder="external id or email" aria-label="Search users">'
        '<button type="submit">Search</button></form>'
        '<form method="get" action="/admin/user" class="inline">'
        '<input name="id" placeholder="external id" aria-label="Open a user by external id" required>'
        '<button type="submit">Open</button></form>'
    )
    rows = ([user_link(u.external_id), isolated(u.email), isolated(u.plan_name) if u.plan_name else "(default)",
             num(u.active_keys),
             when(u.last_used_at), when(u.created_at)] for u in found)
    return search + table(("User", "Email", "Plan", "Active keys", "Last used", "Created"), rows,
                          empty="No user matches.", cls="users")


def _quota(detail: UserDetail) -> str:
    quota = detail.quota
    if quota is None:
        return ""
    if quota.error:
        return f'<p class="error">{e(quota.error)}</p>'
    if not quota.limits:
        return '<p class="empty">This plan has no limits.</p>'
    rows = []
    for lim in quota.limits:
        meter = (f'<meter min="0" max="{lim.limit}" value="{min(lim.used, lim.limit)}" high="{lim.limit * 0.8:.0f}" '
                 f'optimum="0" aria-label="{e(lim.metric)} used"></meter>')
        rows.append([e(lim.metric.replace("_", " ")), e("per " + format_window(lim.window_seconds)),
                     f'<span class="used" data-metric="{e(lim.metric)}" data-window="{lim.window_seconds}">'
                     f"{num(lim.used)}</span> / {num(lim.limit)}", meter, when(lim.reset_at, seconds=True)])
    return table(("Metric", "Window", "Used / limit", "", "Resets"), rows, cls="quota")


def _more_keys(detail: UserDetail | None) -> str:
    """Said under a user's keys when they are only the newest (USER_PAGE_KEYS): where the rest are."""
    if detail is None or not detail.more_keys:
        return ""
    return (f'<p class="note">Only the newest {len(detail.keys)} keys are shown: <code>sentinel keys list --user</code> '
            'or <code>GET /admin/api/keys?user=</code> lists them all.</p>')


def _keys(keys: Sequence[ApiKeyInfo], csrf: str | None, now: datetime) -> str:
    rows = []
    for k in keys:
        if k.revoked_at is None:  # an expired key too (for the record: the audit log says who ended it)
            action = (f'<form method="post" action="/admin/keys/{e(k.id)}/revoke" class="revoke">{csrf_field(csrf)}'
                      f'<button type="submit" class="danger" data-confirm="Revoke {e(k.prefix)}…?">Revoke</button></form>')
        else:
            action = f"revoked {when(k.revoked_at)}"
        expires = "never" if k.expires_at is None else when(k.expires_at)
        if k.status(now) == "expired":
            expires = f'<span class="key-expired">expired {expires}</span>'
        rows.append([f"<code>{e(k.prefix)}…</code>", isolated(k.name), when(k.created_at), when(k.last_used_at),
                     expires, action])
    return table(("Prefix", "Name", "Created", "Last used", "Expires", ""), rows, empty="No keys.", cls="keys")


def _earlier(external_id: str, earlier: EarlierPost) -> str:
    """The notice answering a key-creation form sent again: what it created, never the key."""
    if earlier.key_id is None:
        said = ("An earlier post of it is still being answered, or failed; no key is shown again. The keys below "
                "are those the user has.")
    else:
        user = "" if earlier.external_id in (None, external_id) else f" for {user_link(earlier.external_id or '')}"
        said = (f"It created key <code>{e(earlier.prefix)}…</code> ({e(earlier.key_id)}){user}, which is not shown "
                "again: if you did not copy it, revoke it and create another.")
    return (f'<section class="new-key key-sent" role="status"><h2>This form was already sent</h2><p>{said}</p>'
            "</section>")


def new_key_section(info: ApiKeyInfo, key: str) -> str:
    """The key just created, shown this once, with its Copy button."""
    expiry = "" if info.expires_at is None else f" It expires {when(info.expires_at)}."
    return (
        f'<section class="new-key" role="status"><h2>New key {e(info.prefix)}…</h2><p>Copy it now: it is shown '
        f'only once.{expiry}</p><div class="copy"><input id="new-key" readonly value="{e(key)}" aria-label="New API key">'
        '<button type="button" data-copy="#new-key">Copy</button></div></section>'
    )


def user_page(external_id: str, detail: UserDetail | None, plans: Sequence[Plan] | None, csrf: str | None, nonce: str,
              new_key: tuple[ApiKeyInfo, str] | None = None, errors: Mapping[str, str] | None = None,
              earlier: EarlierPost | None = None, incomplete: tuple[str, str] | None = None,
              now: datetime | None = None) -> str:
    """A user's page. `nonce`: the create-key form's one-time token; `new_key`: the key just created
    (shown this once); `earlier`: what a create-key form sent again had created; `incomplete`: (key id,
    message) of a revocation whose cached identity the store did not drop, with a button to send it again.
    `plans` None: plans are not Sentinel's to assign (GOVERNANCE=zion), the page says so instead of the form.
    `now`: what a key's expiry is compared with (the service's clock; default: the system's)."""
    errors = errors or {}
    now = now or datetime.now(UTC)
    summary = detail.summary if detail else None
    plan_name = summary.plan_name if summary else None
    enforced = detail.quota.plan.name if detail and detail.quota and detail.quota.plan else None
    origin = detail.plan_origin if detail else "default"
    parts = []
    if (why := look_alike(external_id)) is not None:  # an identity source vouched for it: `alice ` read as `alice`
        parts.append(f'<p class="notice look-alike-id" role="status">This user id, {shown_id(external_id)}, may read as '
                     f"another user's: {e(why)}.</p>")
    if detail is None:
        parts.append('<p class="empty">This user is not in the database yet: choosing a plan or creating a key '
                     "creates it.</p>")
    if "external_id" in errors:  # the id itself refused (a form for `alice `): no field of the page holds it
        parts.append(f"<p>{error_for(errors, 'external_id')}</p>")
    if new_key is not None:
        parts.append(new_key_section(*new_key))
    if earlier is not None:
        parts.append(_earlier(external_id, earlier))
    if incomplete is not None:
        key_id, message = incomplete
        parts.append(
            f'<section class="new-key revoke-incomplete" role="alert"><h2>Revocation not complete</h2>'
            f'<p class="error">{e(message)}</p><form method="post" action="/admin/keys/{e(key_id)}/revoke" '
            f'class="revoke">{csrf_field(csrf)}<button type="submit" class="danger">Revoke again</button></form></section>'
        )
    if plans is None:
        choice = GOVERNED_PLANS
    else:
        options = [("", "(default plan)"), *((p.name, p.name) for p in plans)]
        choice = (
            f'<form method="post" action="{e(user_href(external_id, "plan"))}" class="inline">{csrf_field(csrf)}'
            f'{select("plan", options, plan_name or "", label="Plan")}{error_for(errors, "plan")}'
            '<button type="submit">Change plan</button></form>'
        )
    changes = "" if plans is None else " Changes apply at once."
    parts.append(
        f'<section><h2>Plan</h2><p>Enforced now: <strong class="plan-name">{isolated(enforced) if enforced else "–"}</strong> '
        f"({e(origin)}).{changes}</p>{choice}"
        f"{_quota(detail) if detail else ''}</section>"
    )
    parts.append(
        f'<section><h2>Keys</h2>{_keys(detail.keys if detail else [], csrf, now)}{_more_keys(detail)}'
        f'<form method="post" action="{e(user_href(external_id, "keys"))}" class="inline create-key" data-once>{csrf_field(csrf)}'
        f'<input type="hidden" name="nonce" value="{e(nonce)}">'
        f'<label>Name <input name="name" maxlength="200"></label>{error_for(errors, "name")}'
        # text, not `type=email`: the browser's check is stricter than Sentinel's (`josé@example.com`),
        # and a stored email it refused kept the form from being sent at all
        f'<label>Email <input name="email" inputmode="email" autocomplete="off" spellcheck="false" maxlength="320" '
        f'value="{e(summary.email if summary else "")}">'
        f'</label>{error_for(errors, "email")}'
        '<label>Expires in <input name="expires_in" maxlength="20" size="6" placeholder="never" '
        'title="blank: never; 3600 (seconds), 90m, 12h, 30d, 2w"></label>'
        f'{error_for(errors, "expires_in")}<button type="submit">Create key</button></form></section>'
    )
    if detail is not None:
        month = detail.usage_30d
        usage = table(("Period", "Requests", "Errors", "Input", "Output", "Cost"),
                      [["last 30 days", num(month.requests), num(month.errors), num(month.input_tokens),
                        num(month.output_tokens), usd(month.cost_usd)]], cls="usage")
        models = table(("Model", "Requests", "Input", "Output"),
                       ([isolated(r["model"]) if r["model"] else "(none)", num(r["requests"]), num(r["input_tokens"]), num(r["output_tokens"])]
                        for r in detail.models_24h), empty="No requests in the last 24 hours.", cls="models")
        recent = table(
            ("Finished", "Endpoint", "Model", "Status", "Input", "Output", "Latency", "Cost"),
            ([when(r.finished_at), e(r.endpoint), isolated(r.model), num(r.status), num(r.input_tokens),
              num(r.output_tokens), ms(r.latency_ms), usd(r.cost_usd)] for r in detail.recent),
            empty="No requests recorded yet.", cls="recent",
        )
        parts.append(f"<section><h2>Usage</h2>{usage}</section><section><h2>By model, last 24 hours</h2>{models}"
                     f"</section><section><h2>Recent requests</h2>{recent}</section>")
    return "".join(parts)


def _limit_row(index: int, item: LimitInput, errors: Mapping[str, str]) -> str:
    here = f"limits.{index}"
    metric = select("metric", [("", "–"), *((m, m.replace("_", " ")) for m in METRICS)], item.metric, label="Metric")
    return (
        f'<div class="limit-row">{metric}{error_for(errors, here + ".metric")}'
        f'<input name="limit" value="{e(item.limit)}" inputmode="numeric" placeholder="limit" aria-label="Limit">'
        f'{error_for(errors, here + ".limit")}<span>per</span>'
        f'<input name="window" value="{e(item.window)}" placeholder="1h" size="6" aria-label="Window">'
        f"{error_for(errors, here + '.window')}</div>"
    )


def plan_form(name: str, limits: Sequence[LimitInput], csrf: str | None, *, create: bool,
              errors: Mapping[str, str] | None = None) -> str:
    errors = errors or {}
    rows = [*limits, *(LimitInput("", "", "") for _ in range(2 if create or not limits else 1))]
    action = "/admin/plans" if create else f"/admin/plans/{quote(name, safe='')}"
    name_field = (
        f'<label>Name <input name="name" value="{e(name)}" required maxlength="100"></label>{error_for(errors, "name")}'
        if create else f'<input type="hidden" name="name" value="{e(name)}">'
    )
    general = error_for(errors, "limits")
    return (
        f'<form method="post" action="{action}" class="plan-form" data-plan-form>{csrf_field(csrf)}{name_field}'
        f'<fieldset><legend>Limits (metric, amount, window: 90s, 1m, 1h, 1d, 30d, 2w)</legend>{general}'
        f'<div data-limit-rows>{"".join(_limit_row(i, item, errors) for i, item in enumerate(rows))}</div>'
        '<button type="button" data-add-limit>Add a limit</button></fieldset>'
        f'<button type="submit">{"Create plan" if create else "Save plan"}</button></form>'
    )


def plan_not_in_effect(plan: Plan) -> str:
    """A plan's page under GOVERNANCE=zion: its limits, read only, said not to be in effect."""
    limits = e(", ".join(lim.describe() for lim in plan.limits) or "no limits")
    return f"{GOVERNED_PLANS}<p>Limits saved in Sentinel (not in effect): {limits}</p>"


def plans_page(plans: Sequence[tuple[Plan, int]], tiers: TiersView, csrf: str | None,
               new_plan: tuple[str, list[LimitInput], Mapping[str, str]] | None = None,
               tier_errors: tuple[str, str | None, Mapping[str, str]] | None = None, *, editable: bool = True) -> str:
    """The plans and tiers. Not `editable` (GOVERNANCE=zion): the plans Sentinel holds are listed as not
    in effect, with no form to create, edit or delete one."""
    rows = []
    for plan, users in plans:
        path = f"/admin/plans/{quote(plan.name, safe='')}"
        rows.append([
            f'<a href="{path}">{isolated(plan.name)}</a>', e(", ".join(lim.describe() for lim in plan.limits) or "no limits"),
            num(users),
            f'<form method="post" action="{path}/delete" class="inline">{csrf_field(csrf)}<button type="submit" '
            f'class="danger" data-confirm="Delete plan {e(plan.name)}? Its users get the default plan.">Delete</button></form>'
            if editable else "",
        ])
    listed = table(("Plan", "Limits", "Users", ""), rows, empty="No plans yet: users get DEFAULT_PLAN.", cls="plans")
    if not editable:
        return (f"<section>{GOVERNED_PLANS}{listed if rows else ''}</section>"
                f"<section><h2>Tiers</h2>{tiers_section(tiers, csrf, tier_errors)}</section>")
    name, limits, errors = new_plan or ("", [], {})
    return (
        f"<section>{listed}</section>"
        f'<section><h2>New plan</h2>{plan_form(name, limits, csrf, create=True, errors=errors)}</section>'
        f"<section><h2>Tiers</h2>{tiers_section(tiers, csrf, tier_errors)}</section>"
    )


def _price(value: float) -> str:
    """A price as the tier form shows it, read back as the same float: `%g` when that is exact
    (`0.15`, `2.5`), else the shortest text that round-trips (`%g` kept six digits, so saving a
    form unchanged rounded 0.1234567 to 0.123457)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def tiers_section(view: TiersView, csrf: str | None, failed: tuple[str, str | None, Mapping[str, str]] | None) -> str:
    """The tiers and their forms. `failed`: (tier, the lines typed, messages) of a refused save,
    shown in that tier's form; (tier, None, messages) of a refused reset, or of a save no form shows
    (an unknown tier, tiers that are not editable), shown above the tiers."""
    out = []
    if failed is not None and (failed[1] is None or failed[0] not in TIERS or not view.editable):
        action = "reset" if failed[1] is None else "saved"
        out.append(f'<p class="error" role="alert">Tier “{isolated(failed[0])}” was not {action}:</p>'
                   + "".join(error_for(failed[2], name) for name in failed[2]))
        failed = None
    for tier in TIERS:
        effective = view.effective.get(tier, [])
        shown = ", ".join(  # HTML: each candidate's provider and model isolated
            f"{isolated(f'{x.provider}/{x.model}')} (cost {x.relative_cost})"
            + ("" if not view.providers or x.provider in view.providers else " – provider not configured")
            for x in effective
        ) or "(none)"
        source = "database" if view.overrides.get(tier) else "configuration"
        if not view.editable:
            out.append(f'<div class="tier"><h3>{e(tier)}</h3><p>{shown}</p></div>')
            continue
        lines = "\n".join(
            f"{x.provider}/{x.model}:{x.relative_cost}:{_price(x.input_price_per_million)}:"
            f"{_price(x.output_price_per_million)}"
            for x in (view.overrides.get(tier) or effective)
        )
        errors: Mapping[str, str] = {}
        if failed is not None and failed[0] == tier and failed[1] is not None:
            lines, errors = failed[1], failed[2]
        messages = "".join(
            f'<span class="field-error" role="alert" data-field="{e(k)}">line {int(k.split(".")[1]) + 1}: {e(v)}</span>'
            if k.startswith("entries.") else error_for(errors, k)
            for k, v in errors.items()
        )
        out.append(
            f'<div class="tier"><h3>{e(tier)}</h3><p>In effect ({e(source)}): {shown}</p>'
            f'<form method="post" action="/admin/tiers/{e(tier)}">{csrf_field(csrf)}'
            f'<label>Candidates, one per line: <code>provider/model:cost[:input_price:output_price]</code>'
            f'<textarea name="entries" rows="3">{e(lines)}</textarea></label>{messages}'
            '<button type="submit">Save tier</button></form>'
            f'<form method="post" action="/admin/tiers/{e(tier)}/reset" class="inline">{csrf_field(csrf)}'
            '<button type="submit" class="secondary">Reset to configuration</button></form></div>'
        )
    return '<div class="tiers">' + "".join(out) + "</div>"


def _detail(value: object) -> str:
    """An audit detail's value as an operator reads it, as HTML: a change (`{"from": a, "to": b}`, as a
    key's email change records it) as `a → b`, nothing as "none", a text isolated (`isolated`: an email
    or a key's name someone chose), other values as JSON (not Python's repr)."""
    if isinstance(value, dict) and value.keys() == {"from", "to"}:
        return f"{_detail(value['from'])} → {_detail(value['to'])}"
    if value is None:
        return "none"
    if isinstance(value, str):
        return isolated(value)
    return e(orjson.dumps(value).decode())


def _details(details: Mapping[str, object]) -> str:
    """An entry's details, one per line, a user id (`user`: whose key was created or revoked) named as
    every page names one (`shown_id`). One run of text (`user: bob, name: none, prefix: sk-…`) let an
    id an identity source vouched for forge the details after it (`bob, prefix: sk-sentinel-x`), or read
    as another's (`alice\u00a0` as `alice`) with no badge saying so."""
    items = "".join(
        f"<li>{e(k)}: {shown_id(v) if k == 'user' and isinstance(v, str) else _detail(v)}</li>"
        for k, v in details.items()
    )
    return f'<ul class="details">{items}</ul>' if items else ""


def audit_page(entries: Sequence[AuditEntry]) -> str:
    rows = ([when(x.at), e(x.actor), f"<code>{e(x.action)}</code>", shown_id(x.target), _details(x.details),
             e(x.address or "")] for x in entries)
    more = f'<p><a href="/admin/audit?before={entries[-1].id}">Older entries</a></p>' if len(entries) >= 100 else ""
    return table(("When", "Actor", "Action", "Target", "Details", "Address"), rows, empty="No actions yet.",
                 cls="audit") + more
