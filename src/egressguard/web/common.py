"""What every dashboard route shares: who is calling, the page's validated parameters,
the audit reader, and the responses (HTML with a strict CSP, JSON for the scripts)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine

from egressguard.audit.query import OUTCOMES, QueryError, Reader, parse_duration
from egressguard.control.auth import Principal, Refusal, outcome
from egressguard.control.inforce import PolicyBook
from egressguard.store import Store
from egressguard.web import session, views
from egressguard.web.data import ANONYMOUS

CLUSTER = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
READ_AUDIT = ("auditor",)
READ_DECISIONS = ("operator", "auditor")  # operators see decisions, auditors all the log
DEST = re.compile(r"[A-Za-z0-9*?._-]{1,253}")
IDENTITY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # as identity names are
MIN_WINDOW, MAX_WINDOW = 60.0, 31 * 86400.0
MAX_FORM = 8192
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
def principal_of(request: Request) -> Principal | None:
    found = outcome(request)
    return found if isinstance(found, Principal) else None


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def to_login(request: Request, *, clear: bool = False) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(
        "/dashboard/login?" + urlencode({"next": session.safe_next(target)}), status_code=303)
    if clear:
        session.clear_session(request, response)
    return response


def caller(request: Request) -> Principal | Response:
    """The principal, or the response to send instead: 401 for a bad Authorization
    header (a program), a redirect to the login form for a browser."""
    who = outcome(request)
    if isinstance(who, Principal):
        return who
    if "authorization" in request.headers:
        reason = who.reason if isinstance(who, Refusal) else "missing bearer token"
        response = html(views.message_page("Not authenticated", reason), 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return to_login(request, clear=session.SESSION_COOKIE in request.cookies)


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def book_of(request: Request) -> PolicyBook:
    """Where policy reads and writes go: the store, or (under `serve --policy F`) the file
    in force, whose writes raise the API's 409."""
    book: PolicyBook = request.app.state.book
    return book


@dataclass(frozen=True)
class View:
    """The validated query of a dashboard page: cluster, time window and filters."""

    cluster: str
    window: str
    seconds: float
    outcome: str | None
    dest: str | None
    identity: str | None = None     # "" = anonymous callers


def view_params(cluster: str, window: str, outcome: str, dest: str, identity: str = ""
                ) -> View | str:
    """The page's parameters, or the message saying what is wrong with them."""
    if not CLUSTER.fullmatch(cluster):
        return f"invalid cluster name {cluster!r}"
    try:
        seconds = parse_duration(window)
    except QueryError as exc:
        return str(exc)
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        return "window must be between 1m and 31d"
    if outcome and outcome not in OUTCOMES:
        return f"invalid outcome {outcome!r}: expected allow, deny or would-deny"
    if dest and not DEST.fullmatch(dest):
        return f"invalid destination filter {dest!r}: a host name or glob such as *.example.com"
    if identity and identity != ANONYMOUS and not IDENTITY.fullmatch(identity):
        return (f"invalid identity filter {identity!r}: an identity name or "
                f"{ANONYMOUS}")
    who = "" if identity == ANONYMOUS else identity or None
    return View(cluster, window, seconds, outcome or None, dest.lower() or None, who)


Cluster = Annotated[str, Query(max_length=100)]
Window = Annotated[str, Query(max_length=20)]
Outcome = Annotated[str, Query(max_length=20)]
Dest = Annotated[str, Query(max_length=260)]
Identity = Annotated[str, Query(max_length=130)]


def reader(request: Request) -> tuple[Engine, Reader]:
    from egressguard.audit.api import reader as audit_reader

    return audit_reader(request)


def json_response(body: object, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


async def read_form(request: Request, limit: int = MAX_FORM) -> dict[str, str] | None:
    """A url-encoded form of at most `limit` bytes (the login form: `MAX_FORM`), or None
    if it is not one."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items() if v}
