"""The dashboard's data for its script: chart series (`/dashboard/series`) and live
decisions as server-sent events (`/dashboard/live`, bounded: see `live`)."""

from __future__ import annotations

import threading
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from egressguard.control.auth import Principal
from egressguard.web import data, live
from egressguard.web.common import (
    READ_AUDIT,
    READ_DECISIONS,
    Cluster,
    Dest,
    Identity,
    Outcome,
    Window,
    json_response,
    principal_of,
    reader,
    view_params,
)

router = APIRouter()
_state_lock = threading.Lock()


@router.get("/series")
def series(request: Request, cluster: Cluster = "default", window: Window = "1h",
           dest: Dest = "") -> Response:
    """The charts' data: decisions per bucket by outcome (operators, auditors), bytes
    sent per top destination per bucket (auditors)."""
    who = principal_of(request)
    if not isinstance(who, Principal):
        return json_response({"error": "not authenticated"}, 401)
    if not who.allows(READ_DECISIONS, cluster):
        return json_response({"error": f"role {who.role!r} may not read decisions"}, 403)
    view = view_params(cluster, window, "", dest)
    if isinstance(view, str):
        return json_response({"error": view}, 400)
    engine, _sealer = reader(request)
    until = time.time()
    since = until - view.seconds
    body: dict[str, object] = {
        "decisions": data.decision_series(engine, cluster, since, until, view.dest)}
    if who.allows(READ_AUDIT, cluster):
        body["bytes"] = data.bytes_series(engine, cluster, since, until, view.dest)
    return json_response(body)


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
                   dest: Dest = "", identity: Identity = "") -> Response:
    """New decisions as server-sent events, shaped for the caller's role."""
    who = principal_of(request)
    if not isinstance(who, Principal):
        return json_response({"error": "not authenticated"}, 401)
    if not who.allows(READ_DECISIONS, cluster):
        return json_response({"error": f"role {who.role!r} may not read decisions"}, 403)
    view = view_params(cluster, "1h", outcome, dest, identity)
    if isinstance(view, str):
        return json_response({"error": view}, 400)
    audit = who.allows(READ_AUDIT, cluster)
    if view.identity is not None and not audit:
        return json_response({"error": "the identity is sealed: only an auditor or admin "
                                       "may filter by it"}, 403)
    limits = _live_limits(request)
    slots = _live_slots(request)
    if not slots.take():
        response = json_response({"error": "too many live views open; try again later"}, 503)
        response.headers["Retry-After"] = "10"
        return response
    try:
        engine, sealer = reader(request)
        opened = sealer if audit else None
        start = live.last_event_id(request.headers.get("last-event-id"))
        if start is None:
            start = data.newest_id(engine)

        def fetch(after: int, limit: int) -> list[dict[str, object]]:
            return data.decisions_after(engine, opened, cluster, after, view.outcome,
                                        view.dest, limit)

        def shape(r: dict[str, object]) -> dict[str, object] | None:
            if view.identity is not None and r.get("client_identity") != view.identity:
                return None  # sealed: matched after opening (the stream still moves on)
            return data.visible(r, audit)

        frames = live.stream(fetch, lambda: data.newest_id(engine), start, limits, shape)
        return live.LiveResponse(frames, slots, limits.send_timeout)
    except BaseException:
        slots.give()
        raise
