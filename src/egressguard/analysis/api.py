"""REST routes: `POST /v1/analyze` and `POST /v1/simulate` (the CLI's JSON, over HTTP).

Included by the control-plane app (`egressguard.control.api.OPTIONAL_ROUTERS`); every
route needs a viewer, operator or admin token. Analysis and simulation only read: a
proposed policy in a body is decided against, never stored. A cluster's policy is read
where the app's other policy routes read it (`app.state.book`): under
`serve --policy F`, the file the gateway enforces. A token with read roles on some
clusters only may analyse a posted policy, and a stored cluster it may read.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from egressguard.analysis.analyzer import analyze
from egressguard.analysis.simulate import RequestListError, parse_requests, simulate
from egressguard.catalog import references
from egressguard.control.auth import READ_POLICY, Principal, check_cluster, require_somewhere
from egressguard.control.inforce import FileBook
from egressguard.engine import CompileError
from egressguard.policy import Policy, PolicyError, load_policy_text
from egressguard.source import snapshot_for

router = APIRouter(tags=["analysis"])
Reader = Annotated[Principal, Depends(require_somewhere(*READ_POLICY))]
_MAX_REQUESTS = 10_000


class AnalyzeBody(BaseModel):
    """Exactly one of `policy` (a policy document), `policy_text` (YAML/JSON text) or
    `cluster` (a stored cluster's current policy)."""

    model_config = ConfigDict(extra="forbid")

    policy: dict[str, Any] | None = None
    policy_text: str | None = Field(None, max_length=4_000_000)
    cluster: str | None = Field(None, max_length=100)


class SimulateBody(BaseModel):
    """`requests`: lines in the request-list format of `egressguard simulate` (or
    `requests_text`, the file's content). `policy` is the proposed policy (omit to decide
    under the policy in force only); `current` replaces the policy in force, which is
    otherwise `cluster`'s current version (default: the cluster this gateway serves)."""

    model_config = ConfigDict(extra="forbid")

    requests: list[str] | None = Field(None, max_length=_MAX_REQUESTS)
    requests_text: str | None = Field(None, max_length=4_000_000)
    policy: dict[str, Any] | None = None
    current: dict[str, Any] | None = None
    cluster: str | None = Field(None, max_length=100)


def _document(data: dict[str, Any], source: str) -> Policy:
    try:
        return load_policy_text(json.dumps(data), source)
    except PolicyError as exc:
        raise HTTPException(422, {"message": f"invalid policy {source}", "problems": [
            {"path": p.path, "reason": p.reason} for p in exc.problems]}) from None


def _stored(request: Request, who: Principal, cluster: str | None) -> tuple[Policy, str]:
    """The policy in force for `cluster` (default: the one this gateway serves), if `who`
    may read it (else 403)."""
    from egressguard.store import StoreError

    state = request.app.state
    name = cluster or getattr(state, "cluster", "default")
    check_cluster(who, READ_POLICY, name)
    book = getattr(state, "book", state.store)
    try:
        version = book.current(name)
    except StoreError as exc:
        raise HTTPException(404, f"cluster {name!r}: {exc}") from None
    if isinstance(book, FileBook):
        return version.policy, f"policy file {book.path}"
    return version.policy, f"cluster {name} version {version.number}"


@router.post("/v1/analyze")
def analyze_route(body: AnalyzeBody, request: Request, who: Reader) -> dict[str, Any]:
    given = [body.policy is not None, body.policy_text is not None, body.cluster is not None]
    if sum(given) != 1:
        raise HTTPException(422, "give exactly one of policy, policy_text or cluster")
    if body.policy is not None:
        policy, source = _document(body.policy, "policy"), "request body"
    elif body.policy_text is not None:
        try:
            policy, source = load_policy_text(body.policy_text, "policy_text"), "request body"
        except PolicyError as exc:
            raise HTTPException(422, {"message": "invalid policy_text", "problems": [
                {"line": p.line, "path": p.path, "reason": p.reason}
                for p in exc.problems]}) from None
    else:
        policy, source = _stored(request, who, body.cluster)
    return {"policy": source, **analyze(policy).as_dict()}


@router.post("/v1/simulate")
def simulate_route(body: SimulateBody, request: Request, who: Reader) -> dict[str, Any]:
    if (body.requests is None) == (body.requests_text is None):
        raise HTTPException(422, "give exactly one of requests or requests_text")
    text = body.requests_text if body.requests_text is not None else "\n".join(
        line.replace("\n", " ") for line in body.requests or [])
    try:
        probes = parse_requests(text, "requests")
    except RequestListError as exc:
        raise HTTPException(422, {"message": "invalid request list", "problems": [
            {"line": n, "reason": why} for n, why in exc.problems]}) from None
    if body.current is not None:
        now, now_source = _document(body.current, "current"), "request body (current)"
    else:
        now, now_source = _stored(request, who, body.cluster)
    new, new_source = ((_document(body.policy, "policy"), "request body (proposed)")
                       if body.policy is not None else (now, now_source))
    refs = references()  # one look at the catalog for both compiles
    try:
        result = simulate(probes, snapshot_for(now, refs), snapshot_for(new, refs),
                          now_source, new_source)
    except CompileError as exc:
        raise HTTPException(422, str(exc)) from None
    return result.as_dict()
