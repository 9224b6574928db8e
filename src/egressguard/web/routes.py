"""`/dashboard`: read-only HTML pages for people (the API serves programs).

Included by the control-plane app like the other optional routers. Pages need a session
or the same tokens as the API (see `session`): policy panels a viewer, operator or admin; audit
panels an auditor or admin; a panel the caller may not see says so instead. The routes
are left out of the OpenAPI document, which describes the JSON API.
"""

from __future__ import annotations

import re
import time
from importlib import resources
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from egressguard.audit.query import QueryError, parse_duration
from egressguard.control.auth import READ_POLICY, Principal, Refusal, outcome, role_allows
from egressguard.store import NotFound, Store
from egressguard.web import data, session, views

router = APIRouter(prefix="/dashboard", include_in_schema=False)

CLUSTER = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
READ_AUDIT = ("auditor",)
MIN_WINDOW, MAX_WINDOW = 60.0, 31 * 86400.0
_MAX_FORM = 8192
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CSS = resources.files("egressguard.web").joinpath("static/dashboard.css").read_bytes()


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _to_login(request: Request, *, clear: bool = False) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(
        "/dashboard/login?" + urlencode({"next": session.safe_next(target)}), status_code=303)
    if clear:
        session.clear_session(request, response)
    return response


def _caller(request: Request) -> Principal | Response:
    """The principal, or the response to send instead: 401 for a bad Authorization
    header (a program), a redirect to the login form for a browser."""
    who = outcome(request)
    if isinstance(who, Principal):
        return who
    if "authorization" in request.headers:
        reason = who.reason if isinstance(who, Refusal) else "missing bearer token"
        response = _html(views.message_page("Not authenticated", reason), 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return _to_login(request, clear=session.SESSION_COOKIE in request.cookies)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _findings(request: Request) -> data.FindingsCache:
    cache = getattr(request.app.state, "dashboard_findings", None)
    if cache is None:
        cache = request.app.state.dashboard_findings = data.FindingsCache()
    return cache


@router.get("")
def overview(request: Request, cluster: Annotated[str, Query(max_length=100)] = "default",
             window: Annotated[str, Query(max_length=20)] = "1h") -> Response:
    who = _caller(request)
    if not isinstance(who, Principal):
        return who
    label = f"{who.name} ({who.role})"
    if not CLUSTER.fullmatch(cluster):
        return _html(views.message_page("Invalid cluster", f"invalid cluster name "
                                        f"{cluster!r}", label), 400)
    try:
        seconds = parse_duration(window)
    except QueryError as exc:
        return _html(views.message_page("Invalid window", str(exc), label), 400)
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        return _html(views.message_page("Invalid window",
                                        "window must be between 1m and 31d", label), 400)
    page = views.Overview(cluster=cluster, who=who.name, role=who.role, window=window)
    store = request.app.state.book  # the policy in force: the store, or serve's file
    if role_allows(who.role, READ_POLICY):
        page.clusters = store.clusters()
        try:
            current = store.current(cluster)
        except NotFound:
            known = ", ".join(page.clusters) or "none"
            return _html(views.message_page("No such cluster", f"cluster {cluster!r} is "
                                            f"not in the store (clusters: {known})", label),
                         404)
        page.policy = data.summarize(current)
        page.report = _findings(request).get(current)
        page.versions = data.history(store, cluster)
    if role_allows(who.role, READ_AUDIT):
        from egressguard.audit.api import reader

        engine, sealer = reader(request)
        since = time.time() - seconds
        page.decisions = data.decision_counts(engine, cluster, since)
        page.destinations = data.top_destinations(engine, cluster, since)
        page.denials = data.recent_denials(engine, sealer, cluster)
    page.stats = data.process_stats()
    page.show_hosts = role_allows(who.role, READ_AUDIT)
    return _html(views.overview(page))


@router.get("/versions/{number}")
def version(request: Request, number: Annotated[int, Path(ge=1, le=2**31 - 1)],
            cluster: Annotated[str, Query(max_length=100)] = "default") -> Response:
    who = _caller(request)
    if not isinstance(who, Principal):
        return who
    label = f"{who.name} ({who.role})"
    if not role_allows(who.role, READ_POLICY):
        return _html(views.message_page("Not permitted", f"Not permitted: role {who.role!r} "
                                        f"cannot read policy (needs {views.POLICY_ROLES}).",
                                        label), 403)
    if not CLUSTER.fullmatch(cluster):
        return _html(views.message_page("Invalid cluster", f"invalid cluster name "
                                        f"{cluster!r}", label), 400)
    store = request.app.state.book  # the policy in force: the store, or serve's file
    try:
        found = store.version(cluster, number)
    except NotFound as exc:
        return _html(views.message_page("Not found", str(exc), label), 404)
    diff = store.diff(cluster, number - 1, number) if number > 1 else None
    return _html(views.version_page(found, diff, label))


@router.get("/login")
def login_form(request: Request, next: Annotated[str, Query(max_length=500)] = "/dashboard"
               ) -> Response:
    return _login_page(request, session.safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if form is None:
        return _html(views.message_page("Bad request", "expected a form post"), 400)
    next_path = session.safe_next(form.get("next"))
    if not session.csrf_ok(request, form.get("csrf", "")):
        return _login_page(request, next_path, "The form expired; please try again.", 403)
    try:
        session_id, _who = await run_in_threadpool(session.login, request,
                                                   form.get("token", ""))
    except session.LoginFailed as exc:
        return _login_page(request, next_path, str(exc), 401)
    response = RedirectResponse(next_path, status_code=303, headers=_HEADERS)
    session.set_session(request, response, session_id)
    return response


def _login_page(request: Request, next_path: str, error: str = "", status: int = 200
                ) -> Response:
    csrf, new = session.csrf_value(request)
    response = _html(views.login_page(csrf, next_path, error), status)
    if new:
        session.set_csrf(request, response, csrf)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Revoke the session server-side (a copied cookie stops working too), then clear it."""
    session.logout(request)
    response = RedirectResponse("/dashboard/login", status_code=303, headers=_HEADERS)
    session.clear_session(request, response)
    return response


@router.get("/static/dashboard.css")
def stylesheet() -> Response:
    return Response(_CSS, media_type="text/css",
                    headers={"Cache-Control": "max-age=3600",
                             "X-Content-Type-Options": "nosniff"})


async def _form(request: Request) -> dict[str, str] | None:
    """A small url-encoded form (the login form), or None if it is not one."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items() if v}
