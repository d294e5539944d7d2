"""The console's page frame, sign-in page and small HTML helpers (escaping, numbers, times, forms).

Pages are plain HTML built with escaped f-strings; the only script and stylesheet are the shipped
`console.js`/`console.css` (Subresource Integrity on their tags, CSP `script-src 'self'`, no inline
code or style). Every form that changes something carries the session's CSRF token.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import datetime

from sentinel.domain.text import has_control

NAV = (("/admin", "Overview"), ("/admin/users", "Users"), ("/admin/plans", "Plans & tiers"), ("/admin/audit", "Audit log"))


def e(value: object) -> str:
    """HTML-escaped text (None is empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _hidden_space(text: str, at: int) -> bool:
    """Whether `text[at]` is whitespace a page does not show as it is: any but U+0020 (a no-break space
    draws as one), or U+0020 at either end (not drawn) or next to another (drawn as one)."""
    char = text[at]
    if not char.isspace():
        return False
    return char != " " or at in (0, len(text) - 1) or text[at - 1].isspace() or text[at + 1].isspace()


def look_alike(text: str) -> str | None:
    """Why `text` (a user id) may read on a page as another text does, or None: whitespace a page
    does not show as it is (`_hidden_space`: `alice `, `bob\u00a0smith`), or a form other than
    Unicode's composed one (NFC: `zoe\u0301` is drawn as `zoé`). An identity source may vouch for
    such an id (a JWT's `externalId`); the operator surfaces refuse one only for a new user. Also
    a character Sentinel refuses in every id (`has_control`: a bidi override, `\u202eecila` drawn as
    `alice`), which only a link names (`/admin/users/%E2%80%AEecila`) or a row an earlier version
    recorded holds."""
    notes = []
    if has_control(text):
        notes.append("characters that are not drawn, or reorder what is")
    spaces = sorted({text[at] for at in range(len(text)) if _hidden_space(text, at)})
    if spaces:
        notes.append("spaces that do not show: " + ", ".join(
            f"U+{ord(c):04X} {unicodedata.name(c, 'SPACE')}" for c in spaces))
    if not unicodedata.is_normalized("NFC", text):
        notes.append("not in Unicode's composed form (NFC)")
    return "; ".join(notes) or None


def isolated(value: object) -> str:
    """Text someone else chose (an email, a key's, plan's, model's or provider's name, an audit
    detail) as HTML: escaped and isolated (`<bdi>`), so a right-to-left name, or an override a row of
    an earlier version holds, reorders nothing around it (`alice@\u202eevil` read on as another's,
    a plan `\u05d6\u05d4\u05d1` swapped the text after it); "" for None."""
    return "" if value is None else f"<bdi>{e(value)}</bdi>"


def shown_id(text: str) -> str:
    """A user id as HTML: escaped, isolated (`isolated`), and followed by its `id_badge`."""
    return f"{isolated(text)}{id_badge(text)}"


def spelled_id(text: str) -> str:
    """A user id as plain text that reads as no other: each hidden space, each character not drawn
    alone, and each mark of an id not in NFC, as `\\uXXXX` (an id that may read as no other: as it is).
    For text that holds no markup (a page's `<title>`) and for `id_badge`."""
    if look_alike(text) is None:  # a joiner inside an emoji or a Persian name is drawn as meant: kept
        return text
    composed = unicodedata.is_normalized("NFC", text)
    return "".join(
        f"\\u{ord(char):04x}" if _hidden_space(text, at) or has_control(char)
        or (not composed and unicodedata.category(char)[0] == "M") else char
        for at, char in enumerate(text)
    )


def id_badge(text: str) -> str:
    """For a user id that may read as another (`look_alike`), a badge spelling it out (`spelled_id`)
    with the reason as its title; else ""."""
    why = look_alike(text)
    if why is None:
        return ""
    return f' <span class="badge warn look-alike" title="{e(why)}">{e(spelled_id(text))}</span>'


def num(value: float | int | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def short(value: float | int) -> str:
    """1234 -> 1.2k, 4_500_000 -> 4.5M."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return num(value)


def usd(value: float | None) -> str:
    if value is None:
        return "–"
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:,.2f} s" if value >= 1000 else f"{value:,.0f} ms"


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def when(moment: datetime | None, seconds: bool = False) -> str:
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def csrf_field(token: str | None) -> str:
    return f'<input type="hidden" name="csrf" value="{e(token)}">' if token else ""


def error_for(errors: Mapping[str, str], name: str) -> str:
    """The message for field `name`, next to it (empty when none)."""
    message = errors.get(name)
    return f'<span class="field-error" role="alert" data-field="{e(name)}">{e(message)}</span>' if message else ""


def select(name: str, options: Iterable[tuple[str, str]], chosen: str | None, *, label: str = "") -> str:
    items = "".join(
        f'<option value="{e(value)}"{" selected" if value == chosen else ""}>{e(text)}</option>' for value, text in options
    )
    aria = f' aria-label="{e(label)}"' if label else ""
    return f'<select name="{e(name)}"{aria}>{items}</select>'


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, empty: str = "Nothing yet.", cls: str = "") -> str:
    """A table whose cells are already-escaped HTML; `empty` when there are no rows."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f'<div class="scroll"><table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def layout(title: str, body: str, *, csrf: str | None, active: str, css: str, js: str, flash: str = "",
           heading: str | None = None) -> str:
    """A signed-in page: header with navigation and sign-out, then `body` under its heading: `heading`
    (already-escaped HTML), else `title`."""
    links = "".join(
        f'<a href="{href}"{" aria-current=page" if href == active else ""}>{label}</a>' for href, label in NAV
    )
    notice = f'<p class="flash" role="status">{e(flash)}</p>' if flash else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)} · Sentinel console</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<meta name="csrf-token" content="{e(csrf)}">
<link rel="stylesheet" href="/admin/assets/console.css" integrity="{css}">
<script src="/admin/assets/console.js" integrity="{js}" defer></script></head>
<body><header class="top"><a class="brand" href="/admin">Sentinel</a><nav>{links}</nav>
<form method="post" action="/admin/signout" class="signout">{csrf_field(csrf)}<button type="submit">Sign out</button></form>
</header><main><h1>{heading or e(title)}</h1>{notice}{body}</main></body></html>
"""


def signin_page(css: str, error: str | None = None) -> str:
    shown = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · Sentinel console</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<link rel="stylesheet" href="/admin/assets/console.css" integrity="{css}"></head>
<body class="signin"><main><h1>Sentinel console</h1>{shown}
<form method="post" action="/admin/signin">
<label for="key">Admin key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form>
<p class="hint">The key is <code>SENTINEL_ADMIN_KEY</code>. Scripts use <code>Authorization: Bearer</code> on
<code>/admin/api/</code>.</p></main></body></html>
"""


def message_page(css: str, title: str, message: str, more: str = "") -> str:
    """A page saying `message` (text) under `title`; `more`: already-escaped HTML in a paragraph after it."""
    after = f'<p class="more">{more}</p>' if more else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)} · Sentinel console</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<link rel="stylesheet" href="/admin/assets/console.css" integrity="{css}"></head>
<body class="signin"><main><h1>{e(title)}</h1><p class="error" role="alert">{e(message)}</p>{after}
<p><a href="/admin">Back to the console</a></p></main></body></html>
"""
