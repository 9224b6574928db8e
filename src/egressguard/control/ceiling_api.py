"""REST routes for a cluster's ceiling: `GET/PUT/DELETE /v1/clusters/{name}/ceiling`,
and `POST /v1/replay` (the audit log re-decided under a candidate policy).

Admins only: the ceiling is what lets a security team delegate policy editing to
operators, so an operator must not be able to move it. A PUT body is
`{"policy": {...}}` (a policy document) or `{"policy_text": "..."}` (YAML/JSON), with
an optional `strict` (refuse writes whose containment cannot be proved). Refusals
(the policy in force already exceeds the ceiling) are 422 with the counterexample.
Replay reads who called what, so it needs an auditor or admin token. Per cluster: an
admin grant on a cluster manages that cluster's ceiling; replay over one cluster's
records takes an auditor grant on it, over every cluster the cluster-wide role.
Included by the control-plane app through `OPTIONAL_ROUTERS`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from egressguard.control.auth import (
    Principal,
    check_cluster,
    require_cluster_role,
    require_somewhere,
)
from egressguard.control.errors import InvalidInput
from egressguard.policy import Policy, PolicyError, load_policy_text
from egressguard.store import NotFound, Store

if TYPE_CHECKING:
    from egressguard.analysis.replay import Replay

router = APIRouter(prefix="/v1", tags=["clusters"])
Admin = Annotated[Principal, Depends(require_cluster_role())]
ClusterName = Annotated[str, Path(min_length=1, max_length=100,
                                  pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]


class CeilingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: dict[str, Any] | None = None
    policy_text: str | None = Field(None, max_length=4_000_000)
    strict: bool = False


class ReplayBody(BaseModel):
    """The candidate (`policy` or `policy_text`), the recorded window and cluster."""

    model_config = ConfigDict(extra="forbid")

    policy: dict[str, Any] | None = None
    policy_text: str | None = Field(None, max_length=4_000_000)
    since: str = Field("7d", max_length=40)
    cluster: str | None = Field(None, max_length=100)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _policy(body: CeilingBody | ReplayBody) -> Policy:
    if (body.policy is None) == (body.policy_text is None):
        raise InvalidInput([("policy", "give exactly one of policy or policy_text")])
    try:
        if body.policy_text is not None:
            return load_policy_text(body.policy_text, "ceiling")
        return load_policy_text(json.dumps(body.policy), "ceiling")
    except PolicyError as exc:
        raise InvalidInput([("policy", str(exc))]) from None


@router.get("/clusters/{name}/ceiling")
def get_ceiling(name: ClusterName, request: Request, _who: Admin) -> dict[str, Any]:
    found = _store(request).ceiling(name)
    if found is None:
        raise NotFound(f"cluster {name!r} has no ceiling")
    return {**found.meta(), "policy": found.text}


@router.put("/clusters/{name}/ceiling")
def put_ceiling(name: ClusterName, body: CeilingBody, request: Request, who: Admin
                ) -> dict[str, Any]:
    found = _store(request).set_ceiling(name, _policy(body), who.name, body.strict)
    return {**found.meta(), "policy": found.text}


@router.delete("/clusters/{name}/ceiling")
def delete_ceiling(name: ClusterName, request: Request, _who: Admin) -> dict[str, Any]:
    return {"cluster": name, "cleared": _store(request).clear_ceiling(name)}


def replay_recorded(engine: Any, sealer: Any, policy: Policy, since: str,
                    cluster: str | None) -> Replay:
    """The recorded decisions since `since` (`7d`, an ISO time) of `cluster` (None: all)
    re-decided under `policy`: the API's and the dashboard's replay. Raises `QueryError`
    for a bad `since`."""
    from egressguard.analysis.replay import replay
    from egressguard.audit.query import Filter, parse_since, scan
    from egressguard.source import snapshot_for

    flt = Filter(since=parse_since(since), cluster=cluster)
    return replay(scan(engine, flt, sealer=sealer), snapshot_for(policy))


@router.post("/replay", tags=["analysis"])
def replay_audit(body: ReplayBody, request: Request,
                 who: Annotated[Principal, Depends(require_somewhere("auditor"))]
                 ) -> dict[str, Any]:
    """What the candidate would flip among the recorded decisions of the window."""
    check_cluster(who, ("auditor",), body.cluster)
    from egressguard.audit.api import reader
    from egressguard.audit.query import QueryError

    policy = _policy(body)
    engine, sealer = reader(request)
    try:
        result = replay_recorded(engine, sealer, policy, body.since, body.cluster)
    except QueryError as exc:
        raise InvalidInput([("since", str(exc))]) from None
    return {**result.as_dict(), "lines": result.lines()}
