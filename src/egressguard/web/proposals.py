"""Propose allow (`/dashboard/propose`): draft the change that would permit a denied
destination, show it, and let an operator apply it as the next version (see `propose`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from egressguard.analysis import allow as propose
from egressguard.control.auth import EDIT_POLICY, Principal
from egressguard.store import Invalid, NotFound
from egressguard.web import session, views
from egressguard.web.common import (
    CLUSTER,
    HEADERS,
    Cluster,
    book_of,
    caller,
    html,
    read_form,
)

router = APIRouter()


@router.get("/propose")
def propose_form(request: Request, host: Annotated[str, Query(max_length=260)],
                 kind: Annotated[str, Query(max_length=16)] = "connect",
                 port: Annotated[int | None, Query(ge=1, le=65535)] = None,
                 cluster: Cluster = "default") -> Response:
    """Draft the policy change that would allow a denied destination (operators)."""
    who = caller(request)
    if not isinstance(who, Principal):
        return who
    drafted = _draft(request, who, cluster, host, port, kind)
    if isinstance(drafted, Response):
        return drafted
    label = f"{who.name} ({who.role})"
    return html(views.propose_page(cluster, drafted, session.form_token(request), label))


def _draft(request: Request, who: Principal, cluster: str, host: str, port: int | None,
           kind: str) -> propose.Draft | Response:
    label = f"{who.name} ({who.role})"
    if not who.allows(EDIT_POLICY, cluster):
        return html(views.message_page("Not permitted", f"Not permitted: role {who.role!r} "
                                        "cannot change policy (needs operator or admin).",
                                        label), 403)
    if not CLUSTER.fullmatch(cluster):
        return html(views.message_page("Invalid cluster", f"invalid cluster name "
                                        f"{cluster!r}", label), 400)
    try:
        target = propose.target(host, port, kind)
        current = book_of(request).current(cluster)
        from egressguard.catalog import references

        return propose.propose(current.policy, current.number, current.text, target,
                               references())
    except propose.CannotPropose as exc:
        return html(views.message_page("Cannot propose", str(exc), label), 400)
    except NotFound as exc:
        return html(views.message_page("Not found", str(exc), label), 404)


@router.post("/propose")
async def propose_apply(request: Request) -> Response:
    """Apply a drafted allow as the cluster's next version, if the policy is still the
    version it was drafted against (else the operator reviews a new draft)."""
    who = caller(request)
    if not isinstance(who, Principal):
        return who
    label = f"{who.name} ({who.role})"
    form = await read_form(request)
    if form is None:
        return html(views.message_page("Bad request", "expected a form post", label), 400)
    if "authorization" not in request.headers and not session.form_ok(
            request, form.get("csrf", "")):
        return html(views.message_page("Form expired", "The form expired or came from "
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
        return html(views.propose_page(cluster, drafted, session.form_token(request), label,
                                        problem=f"The policy changed since this draft "
                                        f"(now version {drafted.base}): review the new "
                                        "draft below."), 409)
    if not drafted.applicable:
        return html(views.propose_page(cluster, drafted, session.form_token(request), label,
                                        problem="This draft would not allow the request; "
                                        "nothing was applied."), 409)
    try:
        version = await run_in_threadpool(book_of(request).commit, cluster, drafted.policy,
                                          who.name, drafted.summary)
    except Invalid as exc:
        return html(views.message_page("Not applied", str(exc), label), 400)
    return RedirectResponse(views.version_href(cluster, version.number), status_code=303,
                            headers=HEADERS)
