"""`/dashboard`: HTML pages for people (the API serves programs).

Included by the control-plane app like the other optional routers. Pages need a session
or the same tokens as the API (see `session`): policy panels a viewer, operator or admin;
decisions (counts, charts, the live view, grouped denials) an operator, auditor or admin;
the policy version behind each decision, reasons and bytes an auditor or admin; a panel
the caller may not see says so instead. `streams` serves the script's data (chart series,
live decisions), `proposals` the one change a page can make (apply a proposed allow, an
operator or admin). The routes are left out of the OpenAPI document.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from egressguard.control.auth import (
    EDIT_POLICY,
    READ_POLICY,
    Principal,
)
from egressguard.control.endpoints import endpoint_health
from egressguard.store import NotFound
from egressguard.web import data, proposals, replay, session, streams, views
from egressguard.web.common import (
    CLUSTER,
    HEADERS,
    READ_AUDIT,
    READ_DECISIONS,
    Cluster,
    Dest,
    Identity,
    Outcome,
    Window,
    book_of,
    caller,
    html,
    read_form,
    reader,
    view_params,
)

router = APIRouter(prefix="/dashboard", include_in_schema=False)
router.include_router(streams.router)
router.include_router(proposals.router)
router.include_router(replay.router)

_STATIC = {  # served files (read once): name -> media type
    "dashboard.css": "text/css", "dashboard.js": "text/javascript",
    "vendor/uPlot.min.css": "text/css", "vendor/uPlot.iife.min.js": "text/javascript",
    "vendor/uPlot.LICENSE": "text/plain",
}
_FILES = {name: resources.files("egressguard.web").joinpath(f"static/{name}").read_bytes()
          for name in _STATIC}


def _findings(request: Request) -> data.FindingsCache:
    cache = getattr(request.app.state, "dashboard_findings", None)
    if cache is None:
        cache = request.app.state.dashboard_findings = data.FindingsCache()
    return cache


@router.get("")
def overview(request: Request, cluster: Cluster = "default", window: Window = "1h",
             outcome: Outcome = "", dest: Dest = "", identity: Identity = "") -> Response:
    who = caller(request)
    if not isinstance(who, Principal):
        return who
    label = f"{who.name} ({who.role})"
    view = view_params(cluster, window, outcome, dest, identity)
    if isinstance(view, str):
        return html(views.message_page("Invalid parameters", view, label), 400)
    page = views.Overview(cluster=cluster, who=who.name, role=who.role, window=window,
                          outcome=view.outcome, dest=view.dest,
                          identity=view.identity,
                          can_propose=who.allows(EDIT_POLICY, cluster),
                          audit=who.allows(READ_AUDIT, cluster),
                          gateway_report_only=bool(getattr(
                              request.app.state, "gateway_report_only", False)))
    store = book_of(request)  # the policy in force: the store, or serve's file
    if who.allows(READ_POLICY, cluster):
        page.clusters = who.clusters(READ_POLICY, store.clusters())
        try:
            current = store.current(cluster)
        except NotFound:
            known = ", ".join(page.clusters) or "none"
            return html(views.message_page("No such cluster", f"cluster {cluster!r} is "
                                            f"not in the store (clusters: {known})", label),
                         404)
        page.policy = data.summarize(current)
        page.report = _findings(request).get(current)
        page.versions = data.history(store, cluster)
    since = time.time() - view.seconds
    if view.identity is not None and not page.audit:
        return html(views.message_page("Not permitted", "the identity is sealed: only an "
                                       "auditor or admin may filter by it", label), 403)
    if who.allows(READ_DECISIONS, cluster):
        engine, sealer = reader(request)
        page.decisions = data.decision_counts(engine, cluster, since)
        page.denied = data.top_denied(engine, cluster, since, view.dest)
        opened = sealer if page.audit else None
        page.live = [data.visible(r, page.audit) for r in data.recent_decisions(
            engine, opened, cluster, view.outcome, view.dest, identity=view.identity,
            since=since)]
        if page.policy is not None and current.policy.endpoints:
            page.endpoints = endpoint_health(engine, cluster, current.policy, view.seconds)
    if page.audit:
        engine, sealer = reader(request)
        page.destinations = data.top_destinations(engine, cluster, since)
        page.identities, page.identities_truncated = data.by_identity(
            engine, sealer, cluster, since)
        page.denials = data.recent_denials(engine, sealer, cluster)
    page.stats = data.process_stats()
    page.show_hosts = page.audit
    return html(views.overview(page))


@router.get("/versions/{number}")
def version(request: Request, number: Annotated[int, Path(ge=1, le=2**31 - 1)],
            cluster: Annotated[str, Query(max_length=100)] = "default") -> Response:
    who = caller(request)
    if not isinstance(who, Principal):
        return who
    label = f"{who.name} ({who.role})"
    if not who.allows(READ_POLICY, cluster):
        return html(views.message_page("Not permitted", f"Not permitted: role {who.role!r} "
                                        f"cannot read policy (needs {views.POLICY_ROLES}).",
                                        label), 403)
    if not CLUSTER.fullmatch(cluster):
        return html(views.message_page("Invalid cluster", f"invalid cluster name "
                                        f"{cluster!r}", label), 400)
    store = book_of(request)  # the policy in force: the store, or serve's file
    try:
        found = store.version(cluster, number)
    except NotFound as exc:
        return html(views.message_page("Not found", str(exc), label), 404)
    diff = store.diff(cluster, number - 1, number) if number > 1 else None
    return html(views.version_page(found, diff, label))


@router.get("/login")
def login_form(request: Request, next: Annotated[str, Query(max_length=500)] = "/dashboard"
               ) -> Response:
    return _login_page(request, session.safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    if form is None:
        return html(views.message_page("Bad request", "expected a form post"), 400)
    next_path = session.safe_next(form.get("next"))
    if not session.csrf_ok(request, form.get("csrf", "")):
        return _login_page(request, next_path, "The form expired; please try again.", 403)
    try:
        session_id, _who = await run_in_threadpool(session.login, request,
                                                   form.get("token", ""))
    except session.LoginFailed as exc:
        return _login_page(request, next_path, str(exc), 401)
    response = RedirectResponse(next_path, status_code=303, headers=HEADERS)
    session.set_session(request, response, session_id)
    return response


def _login_page(request: Request, next_path: str, error: str = "", status: int = 200
                ) -> Response:
    csrf, new = session.csrf_value(request)
    response = html(views.login_page(csrf, next_path, error), status)
    if new:
        session.set_csrf(request, response, csrf)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Revoke the session server-side (a copied cookie stops working too), then clear it."""
    session.logout(request)
    response = RedirectResponse("/dashboard/login", status_code=303, headers=HEADERS)
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


