"""Endpoint health from what enforcement points observed (the audit log's clear columns).

For each endpoint of a cluster, the decisions recorded for its destination (host and port)
within a window, oldest first, become IoT Hub's health states (`engine.routes.health`).
Only clear columns are read, so no audit key is needed and nothing sealed is opened.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, select

from egressguard.audit.query import Filter
from egressguard.audit.schema import events
from egressguard.engine.routes import destination, endpoint_rows
from egressguard.policy import Policy

MAX_OBSERVED = 1000  # the newest decisions per endpoint that count


def observed(engine: Engine, cluster: str, policy: Policy, since: float
             ) -> dict[str, list[bool]]:
    """Endpoint name -> whether each decision for its destination let it through (the
    newest `MAX_OBSERVED` within the window, oldest first)."""
    out: dict[str, list[bool]] = {}
    c = events.c
    with engine.connect() as conn:
        for endpoint in policy.endpoints:
            host, port = destination(endpoint)
            flt = Filter(since=since, cluster=cluster, dest=host)
            stmt = (select(c.verdict, c.permitted).where(*flt.where(), c.port == port)
                    .order_by(c.id.desc()).limit(MAX_OBSERVED))
            rows = conn.execute(stmt).all()
            out[endpoint.name] = [r.verdict == "allow" or bool(r.permitted)
                                  for r in reversed(rows)]
    return out


def endpoint_health(engine: Engine, cluster: str, policy: Policy, window_s: float,
                    now: float | None = None) -> list[dict[str, Any]]:
    """The cluster's endpoints with destination, routes and health over the last
    `window_s` seconds."""
    since = (time.time() if now is None else now) - window_s
    return endpoint_rows(policy, observed(engine, cluster, policy, since))
