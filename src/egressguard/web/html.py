"""Tiny, escape-by-default HTML building (pure).

`Raw` marks markup this module or `views` produced; anything else given to `render`,
`table` or `link` is escaped. That makes forgetting to escape a visible bug (markup shown
as text) rather than an injection.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from urllib.parse import urlencode


class Raw(str):
    """Trusted markup (built here from escaped parts)."""

    __slots__ = ()


Cell = object


def esc(value: object) -> str:
    """`value` as HTML text (quotes escaped too, so it is safe in attributes)."""
    if isinstance(value, Raw):
        return value
    return html.escape("" if value is None else str(value), quote=True)


def join(parts: Iterable[object], sep: str = "") -> Raw:
    return Raw(sep.join(esc(p) for p in parts))


def tag(name: str, content: object = "", **attrs: object) -> Raw:
    """`<name attrs>content</name>`; attribute names use `_` for `-` and a trailing `_`
    to avoid keywords (`class_`)."""
    rendered = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
                       for k, v in attrs.items() if v is not None)
    return Raw(f"<{name}{rendered}>{esc(content)}</{name}>")


def url(path: str, **params: object) -> str:
    """A same-site URL with its query string encoded."""
    query = urlencode({k: str(v) for k, v in params.items() if v is not None})
    return f"{path}?{query}" if query else path


SHORT_HOST = 32


def host(name: object) -> Raw:
    """A host name that never wraps mid-label: a short one not at all, a long one only at
    its dots (a `<wbr>` after each); the full name is its tooltip."""
    text = "" if name is None else str(name)
    if len(text) <= SHORT_HOST:
        return Raw(f'<span class="host short" title="{esc(text)}">{esc(text)}</span>')
    return Raw(f'<span class="host" title="{esc(text)}">'
               + "<wbr>".join(esc(p) + "." for p in text.split(".")[:-1])
               + ("<wbr>" if "." in text else "") + esc(text.split(".")[-1]) + "</span>")


def link(text: object, href: str) -> Raw:
    return tag("a", text, href=href)


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], *, empty: str = "none",
          numeric: Sequence[int] = ()) -> Raw:
    """A table; `numeric` columns are right-aligned."""
    head = join(tag("th", h, class_="num" if i in numeric else None)
                for i, h in enumerate(headers))
    body = [join(tag("td", c, class_="num" if i in numeric else None)
                 for i, c in enumerate(row)) for row in rows]
    if not body:
        return tag("p", empty, class_="empty")
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>"
               + "".join(f"<tr>{r}</tr>" for r in body) + "</tbody></table>")


def panel(title: str, body: object, *, ident: str | None = None) -> Raw:
    return tag("section", join([tag("h2", title), body]), class_="panel", id=ident)


def not_permitted(title: str, role: str, needs: str) -> Raw:
    return panel(title, tag("p", f"Not permitted: role {role!r} cannot see this "
                                 f"(needs {needs}).", class_="denied"))


SCRIPTS = ('<link rel="stylesheet" href="/dashboard/static/vendor/uPlot.min.css">'
           '<script src="/dashboard/static/vendor/uPlot.iife.min.js" defer></script>'
           '<script src="/dashboard/static/dashboard.js" defer></script>')


def page(title: str, body: object, *, who: str = "", nav: object = "",
         scripts: bool = False) -> str:
    """A whole document. The logout form posts to the dashboard. Scripts (the live view
    and charts) come only from the dashboard's own files: no inline script, no CDN."""
    header = join([tag("h1", link("egressguard", "/dashboard")), nav])
    if who:
        header = join([header, Raw(
            f'<form class="logout" method="post" action="/dashboard/logout">'
            f'<span>{esc(who)}</span> <button type="submit">Log out</button></form>')])
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)} - egressguard</title>"
            "<link rel=\"stylesheet\" href=\"/dashboard/static/dashboard.css\">"
            + (SCRIPTS if scripts else "") + "</head><body>"
            '<a class="skip" href="#main">Skip to content</a>'
            f'<header>{header}</header><main id="main">{esc(body)}</main></body></html>\n')
