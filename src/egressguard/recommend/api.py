"""`POST /v1/recommend`: `egressguard recommend` over HTTP (the CLI uses it when a server
is configured). Included by the control-plane app (`OPTIONAL_ROUTERS`).

A recommendation lists the destinations a cluster's workloads reached, so it needs the
role that reads decisions (operator, auditor or admin) on the cluster it names; without
a cluster it spans every cluster's records and needs that role cluster-wide. `diff`
compares with `policy_text` if given, else the cluster's policy in force.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from egressguard.control.auth import Principal, check_cluster, require_somewhere
from egressguard.control.errors import InvalidInput

router = APIRouter(tags=["analysis"])
READ_DECISIONS = ("operator", "auditor")


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str = Field("7d", max_length=40)
    cluster: str | None = Field(None, max_length=100)
    wildcard_min: int = Field(5, ge=2, le=1_000_000)
    upload_risk: int = Field(100 * 2**20, ge=0)
    include_would_deny: bool = True
    diff: bool = False
    policy_text: str | None = Field(None, max_length=4_000_000,
                                    description="the policy to diff against")


@router.post("/v1/recommend")
def recommend_route(body: RecommendBody, request: Request,
                    who: Annotated[Principal, Depends(require_somewhere(*READ_DECISIONS))]
                    ) -> dict[str, Any]:
    """A least-privilege policy for the observed traffic (YAML in `policy`)."""
    from egressguard.audit.api import reader
    from egressguard.audit.query import Filter, QueryError, parse_since, scan
    from egressguard.engine import CompileError
    from egressguard.policy import PolicyError, load_policy_text
    from egressguard.recommend import Options, diff, observe, propose, render

    check_cluster(who, READ_DECISIONS, body.cluster)
    try:
        flt = Filter(since=parse_since(body.since), cluster=body.cluster)
    except QueryError as exc:
        raise InvalidInput([("since", str(exc))]) from None
    current = None
    if body.diff:
        try:
            current = (load_policy_text(body.policy_text, "policy_text")
                       if body.policy_text is not None else _in_force(request, who, body))
        except PolicyError as exc:
            raise InvalidInput([("policy_text", str(exc))]) from None
    options = Options(wildcard_min=body.wildcard_min, upload_risk_bytes=body.upload_risk,
                      include_would_deny=body.include_would_deny)
    engine, sealer = reader(request)
    seen = observe(scan(engine, flt, sealer=sealer), options)
    proposals = propose(seen, options)
    answer: dict[str, Any] = {"policy": render(proposals, seen, body.cluster),
                              "rules": len(proposals), "calls": seen.calls}
    if current is not None:
        try:
            answer["diff"] = diff(current, proposals, seen)
        except CompileError as exc:
            raise InvalidInput([("policy", f"the policy in force does not compile: {exc}")]
                               ) from None
    return answer


def _in_force(request: Request, who: Principal, body: RecommendBody) -> Any:
    """The policy in force of the cluster named (else the one this gateway serves)."""
    state = request.app.state
    name = body.cluster or getattr(state, "cluster", "default")
    check_cluster(who, ("viewer", *READ_DECISIONS), name)
    return getattr(state, "book", state.store).current(name).policy
