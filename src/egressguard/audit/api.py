"""`GET /v1/audit`: the audit log over HTTP, same filters as `egressguard logs` (roles
`auditor` or `admin`). Included by the control plane app (`OPTIONAL_ROUTERS`). An auditor
grant on one cluster reads that cluster's records only, so it must name it (`cluster=`);
reading across clusters, and `verify`, take the cluster-wide role.

Pages are newest first: pass the response's `next_cursor` as `cursor` for older records.
`after=<id>` instead returns records newer than `id`, oldest first (to follow the log).
The database is the control plane's (`app.state.store.url`) unless the process that built
the app put an `AuditLog` in `app.state.audit`.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import Engine

from egressguard.audit.crypto import EnvelopeSealer, Sealer, load_or_create_key
from egressguard.audit.db import make_engine, migrate
from egressguard.audit.query import Filter, QueryError, parse_since, query, verify
from egressguard.control.auth import Principal, check_cluster, require_role, require_somewhere

router = APIRouter(tags=["audit"])
MAX_ID = 2**63 - 1   # ids are BIGINT: a larger cursor is a 422, not a driver overflow (500)
_lock = threading.Lock()


def _reader(engine: Engine) -> EnvelopeSealer:
    """The local audit key, and the configured cluster's key for batches sealed under it."""
    from egressguard import config
    from egressguard.keys.runtime import reader_envelope

    url = engine.url.render_as_string(hide_password=False)
    return EnvelopeSealer(reader_envelope(url, config.cluster(None)),
                          legacy=Sealer(load_or_create_key()))


def reader(request: Request) -> tuple[Engine, Sealer | EnvelopeSealer]:
    """The engine and key to read the audit log with (built once per app)."""
    state = request.app.state
    log = getattr(state, "audit", None)
    if log is not None:
        return log.engine, log.reader
    with _lock:
        cached = getattr(state, "audit_reader", None)
        if cached is None:
            store = getattr(state, "store", None)
            url = getattr(store, "url", None)
            if url is None:
                from egressguard.paths import default_store_url
                url = default_store_url()
            engine = make_engine(url)
            migrate(engine)
            cached = state.audit_reader = (engine, _reader(engine))
    return cached


@router.get("/v1/audit")
def audit_events(
    request: Request,
    who: Annotated[Principal, Depends(require_somewhere("auditor"))],
    since: Annotated[str | None, Query(description="duration ago (1h, 7d) or ISO time")
                     ] = None,
    until: Annotated[str | None, Query(description="duration ago or ISO time")] = None,
    verdict: Annotated[str | None, Query(description="allow, deny or would-deny")] = None,
    dest: Annotated[str | None, Query(description="host glob, e.g. *.blob.core.windows.net")
                    ] = None,
    cluster: str | None = None,
    kind: str | None = None,
    layer: str | None = None,
    phase: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_ID,
                                        description="next_cursor of the previous page")
                      ] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID,
                                       description="records newer than this id")] = None,
) -> dict[str, Any]:
    check_cluster(who, ("auditor",), cluster)
    try:
        flt = Filter(since=parse_since(since) if since else None,
                     until=parse_since(until) if until else None, outcome=verdict,
                     dest=dest, cluster=cluster, kind=kind, layer=layer, phase=phase)
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    engine, sealer = reader(request)
    items = query(engine, flt, sealer=sealer, limit=limit, before=cursor, after=after,
                  newest_first=after is None)
    more = len(items) == limit and after is None
    return {"items": items, "next_cursor": items[-1]["id"] if more else None}


@router.get("/v1/audit/verify")
def audit_verify(request: Request,
                 _who: Annotated[Principal, Depends(require_role("auditor"))]
                 ) -> dict[str, Any]:
    engine, sealer = reader(request)
    result = verify(engine, sealer)
    return {"ok": result.ok, "batches": result.batches, "events": result.events,
            "problems": result.problems or []}
