"""`/dashboard`: read-only HTML pages for people (the API serves programs).

Included by the control-plane app like the other optional routers. Pages need a session
or the same tokens as the API (see `session`): policy panels a viewer, operator or admin; audit
panels an auditor or admin; a panel the caller may not see says so instead. The routes
are left out of the OpenAPI document, which describes the JSON API.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from egressguard.audit.crypto import Sealer
from egressguard.audit.query import OUTCOMES, QueryError, parse_duration
from egressguard.control.auth import (
    EDIT_POLICY,
    READ_POLICY,
    Principal,
    Refusal,
    outcome,
    role_allows,
)
from egressguard.store import Invalid, NotFound, Store
from egressguard.web import data, live, propose, session, views

router = APIRouter(prefix="/dashboard", include_in_schema=False)

CLUSTER = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
READ_AUDIT = ("auditor",)
READ_DECISIONS = ("operator", "auditor")  # operators see decisions, auditors all the log
DEST = re.compile(r"[A-Za-z0-9*?._-]{1,253}")
MIN_WINDOW, MAX_WINDOW = 60.0, 31 * 86400.0
_MAX_FORM = 8192
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {  # served files (read once): name -> media type
    "dashboard.css": "text/css", "dashboard.js": "text/javascript",
    "vendor/uPlot.min.css": "text/css", "vendor/uPlot.iife.min.js": "text/javascript",
    "vendor/uPlot.LICENSE": "text/plain",
}
_FILES = {name: resources.files("egressguard.web").joinpath(f"static/{name}").read_bytes()
          for name in _STATIC}
_state_lock = threading.Lock()


def outcome_principal(request: Request) -> Principal | None:
    found = outcome(request)
    return found if isinstance(found, Principal) else None


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


@dataclass(frozen=True)
class _View:
    """The validated query of a dashboard page: cluster, time window and filters."""

    cluster: str
    window: str
    seconds: float
    outcome: str | None
    dest: str | None


def _view(cluster: str, window: str, outcome: str, dest: str) -> _View | str:
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
    return _View(cluster, window, seconds, outcome or None, dest.lower() or None)


Cluster = Annotated[str, Query(max_length=100)]
Window = Annotated[str, Query(max_length=20)]
Outcome = Annotated[str, Query(max_length=20)]
Dest = Annotated[str, Query(max_length=260)]


@router.get("")
def overview(request: Request, cluster: Cluster = "default", window: Window = "1h",
             outcome: Outcome = "", dest: Dest = "") -> Response:
    who = _caller(request)
    if not isinstance(who, Principal):
        return who
    label = f"{who.name} ({who.role})"
    view = _view(cluster, window, outcome, dest)
    if isinstance(view, str):
        return _html(views.message_page("Invalid parameters", view, label), 400)
    page = views.Overview(cluster=cluster, who=who.name, role=who.role, window=window,
                          outcome=view.outcome, dest=view.dest,
                          can_propose=role_allows(who.role, EDIT_POLICY),
                          audit=role_allows(who.role, READ_AUDIT),
                          gateway_report_only=bool(getattr(
                              request.app.state, "gateway_report_only", False)))
    store = _store(request)
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
    since = time.time() - view.seconds
    if role_allows(who.role, READ_DECISIONS):
        engine, sealer = _reader(request)
        page.decisions = data.decision_counts(engine, cluster, since)
        page.denied = data.top_denied(engine, cluster, since, view.dest)
        opened = sealer if page.audit else None
        page.live = [data.visible(r, page.audit) for r in data.recent_decisions(
            engine, opened, cluster, view.outcome, view.dest)]
    if page.audit:
        engine, sealer = _reader(request)
        page.destinations = data.top_destinations(engine, cluster, since)
        page.denials = data.recent_denials(engine, sealer, cluster)
    page.stats = data.process_stats()
    page.show_hosts = page.audit
    return _html(views.overview(page))


def _reader(request: Request) -> tuple[Engine, Sealer]:
    from egressguard.audit.api import reader

    return reader(request)


def _json(body: object, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


@router.get("/series")
def series(request: Request, cluster: Cluster = "default", window: Window = "1h",
           dest: Dest = "") -> Response:
    """The charts' data: decisions per bucket by outcome (operators, auditors), bytes
    sent per top destination per bucket (auditors)."""
    who = outcome_principal(request)
    if not isinstance(who, Principal):
        return _json({"error": "not authenticated"}, 401)
    if not role_allows(who.role, READ_DECISIONS):
        return _json({"error": f"role {who.role!r} may not read decisions"}, 403)
    view = _view(cluster, window, "", dest)
    if isinstance(view, str):
        return _json({"error": view}, 400)
    engine, _sealer = _reader(request)
    until = time.time()
    since = until - view.seconds
    body: dict[str, object] = {
        "decisions": data.decision_series(engine, cluster, since, until, view.dest)}
    if role_allows(who.role, READ_AUDIT):
        body["bytes"] = data.bytes_series(engine, cluster, since, until, view.dest)
    return _json(body)


def _live_slots(request: Request) -> live.Slots:
    state = request.app.state
    with _state_lock:
        slots = getattr(state, "dashboard_live_slots", None)
        if slots is None:
            slots = state.dashboard_live_slots = live.Slots(_live_limits(request).max_clients)
    return slots


def _live_limits(request: Request) -> live.Limits:
    found = getattr(request.app.state, "dashboard_live_limits", None)
    return found if isinstance(found, live.Limits) else live.Limits()


@router.get("/live")
def live_decisions(request: Request, cluster: Cluster = "default", outcome: Outcome = "",
                   dest: Dest = "") -> Response:
    """New decisions as server-sent events, shaped for the caller's role."""
    who = outcome_principal(request)
    if not isinstance(who, Principal):
        return _json({"error": "not authenticated"}, 401)
    if not role_allows(who.role, READ_DECISIONS):
        return _json({"error": f"role {who.role!r} may not read decisions"}, 403)
    view = _view(cluster, "1h", outcome, dest)
    if isinstance(view, str):
        return _json({"error": view}, 400)
    limits = _live_limits(request)
    slots = _live_slots(request)
    if not slots.take():
        response = _json({"error": "too many live views open; try again later"}, 503)
        response.headers["Retry-After"] = "10"
        return response
    try:
        engine, sealer = _reader(request)
        audit = role_allows(who.role, READ_AUDIT)
        opened = sealer if audit else None
        start = live.last_event_id(request.headers.get("last-event-id"))
        if start is None:
            start = data.newest_id(engine)

        def fetch(after: int, limit: int) -> list[dict[str, object]]:
            return data.decisions_after(engine, opened, cluster, after, view.outcome,
                                        view.dest, limit)

        frames = live.stream(fetch, lambda: data.newest_id(engine), start, limits,
                             lambda r: data.visible(r, audit))
        return live.LiveResponse(frames, slots, limits.send_timeout)
    except BaseException:
        slots.give()
        raise


@router.get("/propose")
def propose_form(request: Request, host: Annotated[str, Query(max_length=260)],
                 kind: Annotated[str, Query(max_length=16)] = "connect",
                 port: Annotated[int | None, Query(ge=1, le=65535)] = None,
                 cluster: Cluster = "default") -> Response:
    """Draft the policy change that would allow a denied destination (operators)."""
    who = _caller(request)
    if not isinstance(who, Principal):
        return who
    drafted = _draft(request, who, cluster, host, port, kind)
    if isinstance(drafted, Response):
        return drafted
    label = f"{who.name} ({who.role})"
    return _html(views.propose_page(cluster, drafted, session.form_token(request), label))


def _draft(request: Request, who: Principal, cluster: str, host: str, port: int | None,
           kind: str) -> propose.Draft | Response:
    label = f"{who.name} ({who.role})"
    if not role_allows(who.role, EDIT_POLICY):
        return _html(views.message_page("Not permitted", f"Not permitted: role {who.role!r} "
                                        "cannot change policy (needs operator or admin).",
                                        label), 403)
    if not CLUSTER.fullmatch(cluster):
        return _html(views.message_page("Invalid cluster", f"invalid cluster name "
                                        f"{cluster!r}", label), 400)
    try:
        target = propose.target(host, port, kind)
        current = _store(request).current(cluster)
        from egressguard.catalog import references

        return propose.propose(current.policy, current.number, current.text, target,
                               references())
    except propose.CannotPropose as exc:
        return _html(views.message_page("Cannot propose", str(exc), label), 400)
    except NotFound as exc:
        return _html(views.message_page("Not found", str(exc), label), 404)


@router.post("/propose")
async def propose_apply(request: Request) -> Response:
    """Apply a drafted allow as the cluster's next version, if the policy is still the
    version it was drafted against (else the operator reviews a new draft)."""
    who = _caller(request)
    if not isinstance(who, Principal):
        return who
    label = f"{who.name} ({who.role})"
    form = await _form(request)
    if form is None:
        return _html(views.message_page("Bad request", "expected a form post", label), 400)
    if "authorization" not in request.headers and not session.form_ok(
            request, form.get("csrf", "")):
        return _html(views.message_page("Form expired", "The form expired or came from "
                                        "another site; draft the change again.", label), 403)
    port_text = form.get("port", "")
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else None
    cluster = form.get("cluster", "default")
    drafted = await run_in_threadpool(_draft, request, who, cluster, form.get("host", ""),
                                      port, form.get("kind", ""))
    if isinstance(drafted, Response):
        return drafted
    base = form.get("base", "")
    if base != str(drafted.base):
        return _html(views.propose_page(cluster, drafted, session.form_token(request), label,
                                        problem=f"The policy changed since this draft "
                                        f"(now version {drafted.base}): review the new "
                                        "draft below."), 409)
    if not drafted.applicable:
        return _html(views.propose_page(cluster, drafted, session.form_token(request), label,
                                        problem="This draft would not allow the request; "
                                        "nothing was applied."), 409)
    try:
        version = await run_in_threadpool(_store(request).commit, cluster, drafted.policy,
                                          who.name, drafted.summary)
    except Invalid as exc:
        return _html(views.message_page("Not applied", str(exc), label), 400)
    return RedirectResponse(views.version_href(cluster, version.number), status_code=303,
                            headers=_HEADERS)


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
    store = _store(request)
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


@router.get("/static/{name:path}")
def static(name: Annotated[str, Path(max_length=100)]) -> Response:
    """The stylesheet, the script and the vendored chart library (see
    docs/third-party.md): package data, so nothing is loaded from elsewhere."""
    if name not in _STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(_FILES[name], media_type=_STATIC[name],
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
