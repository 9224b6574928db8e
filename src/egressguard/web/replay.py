"""Replay on the dashboard (`/dashboard/replay`): what a stored version or a pasted
candidate policy would flip among the recorded decisions, before it is applied.

The same computation as `POST /v1/replay` and `egressguard replay`
(`control.ceiling_api.replay_recorded` over `analysis/replay.py`). It reads who called
what, so it needs an auditor or admin, as the API does. Replaying a stored version is a
GET (a link from the version page); a pasted candidate is a form post with the session's
anti-forgery value. Nothing here writes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from egressguard.audit.query import QueryError
from egressguard.control.auth import Principal, role_allows
from egressguard.control.ceiling_api import replay_recorded
from egressguard.engine import CompileError
from egressguard.policy import Policy, PolicyError, load_policy_text
from egressguard.store import NotFound
from egressguard.web import session, views
from egressguard.web.common import (
    CLUSTER,
    READ_AUDIT,
    Cluster,
    book_of,
    caller,
    html,
    read_form,
    reader,
)

router = APIRouter()
MAX_POLICY_FORM = 1_000_000   # a pasted candidate (url-encoded)
Since = Annotated[str, Query(max_length=40)]


def _allowed(request: Request) -> Principal | Response:
    who = caller(request)
    if not isinstance(who, Principal):
        return who
    if not role_allows(who.role, READ_AUDIT):
        return html(views.message_page(
            "Not permitted", f"Not permitted: role {who.role!r} cannot replay recorded "
            f"decisions (needs {views.AUDIT_ROLES}).", f"{who.name} ({who.role})"), 403)
    return who


@router.get("/replay")
def replay_form(request: Request, cluster: Cluster = "default", since: Since = "7d",
                version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None
                ) -> Response:
    """The replay forms; with `version`, that stored version replayed."""
    who = _allowed(request)
    if not isinstance(who, Principal):
        return who
    view = views.ReplayView(cluster, since, session.form_token(request),
                            f"{who.name} ({who.role})", version=version)
    if not CLUSTER.fullmatch(cluster):
        view.cluster, view.problem = "default", f"invalid cluster name {cluster!r}"
        return html(views.replay_page(view), 400)
    if version is None:
        return html(views.replay_page(view))
    try:
        found = book_of(request).version(cluster, version)
    except NotFound as exc:
        view.problem = str(exc)
        return html(views.replay_page(view), 404)
    return _replayed(request, view, found.policy, f"version {version}")


@router.post("/replay")
async def replay_text(request: Request) -> Response:
    """A pasted candidate policy replayed."""
    who = _allowed(request)
    if not isinstance(who, Principal):
        return who
    form = await read_form(request, limit=MAX_POLICY_FORM)
    label = f"{who.name} ({who.role})"
    if form is None:
        return html(views.message_page("Bad request", "expected a form post", label), 400)
    if "authorization" not in request.headers and not session.form_ok(
            request, form.get("csrf", "")):
        return html(views.message_page("Form expired", "The form expired or came from "
                                        "another site; open the replay page again.",
                                        label), 403)
    cluster = form.get("cluster", "default")
    view = views.ReplayView(cluster if CLUSTER.fullmatch(cluster) else "default",
                            form.get("since", "7d")[:40], session.form_token(request), label,
                            text=form.get("policy_text", ""))
    if view.cluster != cluster:
        view.problem = f"invalid cluster name {cluster[:100]!r}"
        return html(views.replay_page(view), 400)
    try:
        candidate = load_policy_text(view.text, "candidate")
    except PolicyError as exc:
        view.problem = str(exc)
        return html(views.replay_page(view), 400)
    return await run_in_threadpool(_replayed, request, view, candidate, "the candidate")


def _replayed(request: Request, view: views.ReplayView, policy: Policy,
              subject: str) -> Response:
    engine, sealer = reader(request)
    try:
        view.result = replay_recorded(engine, sealer, policy, view.since, view.cluster)
    except (QueryError, CompileError) as exc:
        view.problem = str(exc)
        return html(views.replay_page(view), 400)
    view.subject = subject
    return html(views.replay_page(view))
