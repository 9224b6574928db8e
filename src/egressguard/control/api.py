"""The REST API (FastAPI): clusters as ARM-shaped resources, versions, rule collections,
what-if checks, Kusto-style commands, tokens, health and metrics.

Roles: `viewer` reads policy, `operator` edits it, `auditor` reads the audit log (other
areas' routers), `admin` does everything and manages tokens. `/healthz`, `/readyz` and
`/metrics` need no token (probes and Prometheus scrape without credentials) but, like
every route, are subject to the `allow_cidrs` source restriction. Every request passes
the gate (`control.gate`: source, body limit, authentication) before its body is read.
While the store cannot be reached, `/healthz` says `degraded`, `/readyz` answers 503 and
every route that needs the store answers 503 with `Retry-After`.

Under `egressguard serve --policy F` the policy routes describe the file the gateway
enforces and refuse every policy write with 409 (`control.inforce.FileBook`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from egressguard.control.auth import (
    EDIT_POLICY,
    READ_POLICY,
    ROLES,
    Principal,
    authenticate,
    check_cluster,
    require_cluster_role,
    require_role,
    require_somewhere,
)
from egressguard.control.commands import CommandSyntaxError
from egressguard.control.endpoints import endpoint_health
from egressguard.control.errors import ControlError, InvalidInput
from egressguard.control.gate import (
    BODY_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    ApiGate,
    parse_cidrs,
)
from egressguard.control.health import RETRY_AFTER, StoreHealth
from egressguard.control.inforce import FileBook, PolicyBook
from egressguard.control.mgmt import execute
from egressguard.control.properties import (
    KEY_PROPERTY,
    add_callouts,
    callouts_to_arm,
    collection_from_arm,
    collection_to_arm,
    from_arm,
    remove_callout,
    without_collection,
)
from egressguard.control.properties import to_arm as _to_arm
from egressguard.control.whatif import (
    CheckRequest,
    SnapshotCache,
    Snapshots,
    decide,
    route_what_if,
)
from egressguard.engine import CompileError
from egressguard.engine.holder import SnapshotHolder
from egressguard.keys import clusterkeys
from egressguard.keys.master import MasterKeyError
from egressguard.keys.provider import KeyUnavailable
from egressguard.policy import PolicyError
from egressguard.store import (
    DEFAULT_CLUSTER,
    Invalid,
    NotFound,
    Store,
    StoreUnavailable,
    Version,
)
from egressguard.store import unavailable_reason as _unavailable
from egressguard.store.tokens import DEFAULT_TOKEN_LIFETIME, parse_lifetime

_log = logging.getLogger(__name__)
OPTIONAL_ROUTERS = ("egressguard.audit.api", "egressguard.analysis.api", "egressguard.web.routes",
                    "egressguard.control.ceiling_api", "egressguard.recommend.api")

ClusterName = Annotated[str, Path(min_length=1, max_length=100,
                                  pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
CollectionName = Annotated[str, Path(min_length=1, max_length=200)]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]
ArmBody = Annotated[dict[str, Any], Body(openapi_examples={"restrict": {"value": {
    "properties": {"restrictOutboundNetworkAccess": "Enabled",
                   "allowedFqdnList": ["my-eventhub.servicebus.windows.net"]}}}})]
# Routes under /clusters/{name} check the role on that cluster (a grant counts); routes
# that name the cluster in the body check it with `check_cluster` once they know it.
Viewer = Annotated[Principal, Depends(require_cluster_role(*READ_POLICY))]
Reader = Annotated[Principal, Depends(require_somewhere(*READ_POLICY))]
Admin = Annotated[Principal, Depends(require_role())]


def policy_writer(request: Request,
                  who: Annotated[Principal, Depends(require_cluster_role(*EDIT_POLICY))]
                  ) -> Principal:
    """An operator's policy write, refused (409) before its body is looked at when this
    gateway enforces a policy file."""
    book = request.app.state.book
    if isinstance(book, FileBook):
        raise book.refusal()
    return who


Operator = Annotated[Principal, Depends(policy_writer)]

COLLECTIONS = {"applicationRuleCollections": "application_rule_collections",
               "networkRuleCollections": "network_rule_collections"}


class MgmtRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str = Field(min_length=1, max_length=1_000_000,
                         examples=[".show cluster policy callout"])
    cluster: str | None = Field(None, max_length=100,
                                description="default: the cluster this gateway serves")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(json_schema_extra={"enum": [*ROLES, "none"]},
                      description="cluster-wide role (`none`: only the grants)")
    grants: dict[str, str] = Field(default_factory=dict, max_length=100,
                                   examples=[{"prod": "operator", "dev": "viewer"}],
                                   description="role per cluster, beside the cluster-wide one")
    expires: str = Field("90d", max_length=20, examples=["30d", "12h"],
                         description="lifetime: 1m to 5 years (default 90 days)")

    @field_validator("expires")
    @classmethod
    def _lifetime(cls, value: str) -> str:
        parse_lifetime(value)
        return value


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires: str = Field("90d", max_length=20, examples=["30d"])

    @field_validator("expires")
    @classmethod
    def _lifetime(cls, value: str) -> str:
        parse_lifetime(value)
        return value


def _error(status: int, code: str, message: str, target: str = "") -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if target:
        error["target"] = target
    return JSONResponse({"error": error}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ControlError)
    async def control_error(_r: Request, exc: ControlError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(NotFound)
    async def not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return _error(404, "NotFound", str(exc))

    @app.exception_handler(Invalid)
    async def invalid(_r: Request, exc: Invalid) -> JSONResponse:
        return _error(422, "InvalidInput", str(exc), exc.field)

    @app.exception_handler(CompileError)
    async def compile_error(_r: Request, exc: CompileError) -> JSONResponse:
        return _error(422, "InvalidInput", str(exc))

    @app.exception_handler(PolicyError)
    async def policy_error(_r: Request, exc: PolicyError) -> JSONResponse:
        return _error(422, "InvalidInput", str(exc))

    @app.exception_handler(CommandSyntaxError)
    async def syntax_error(_r: Request, exc: CommandSyntaxError) -> JSONResponse:
        body = {"error": {"code": "SyntaxError", "message": str(exc),
                          "position": exc.position, "expected": exc.expected,
                          "found": exc.found, "target": "command"}}
        return JSONResponse(body, status_code=400)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        reason = _unavailable(exc) or "the database cannot be reached"
        request.app.state.health.failed(reason)
        response = _error(503, "StoreUnavailable",
                          f"the policy store is unavailable: {reason}; retry later")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    for kind in (StoreUnavailable, OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(kind, unavailable)

    async def key_unavailable(_r: Request, exc: Exception) -> JSONResponse:
        """The cluster's key vault cannot be read (store down, master key unusable)."""
        response = _error(503, "KeyUnavailable", f"{exc}; retry later",
                          "properties.keyVaultProperties")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    for key_error in (KeyUnavailable, MasterKeyError):
        app.add_exception_handler(key_error, key_unavailable)

    @app.exception_handler(RequestValidationError)
    async def validation(_r: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"target": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                   for e in exc.errors()]
        first = details[0] if details else {"target": "", "message": "invalid request"}
        return JSONResponse({"error": {"code": "InvalidInput",
                                       "message": f"{first['target']}: {first['message']}",
                                       "target": first["target"], "details": details}},
                            status_code=422)


def _set_key(store: PolicyBook, name: str, body: Any, who: str) -> bool:
    """keyVaultProperties (stored beside the policy): 422 naming the reason if unfit."""
    if isinstance(store, FileBook):
        return False  # the file's writes answer 409 before this
    try:
        return clusterkeys.apply(store, name, body.get("properties"), who)
    except clusterkeys.InvalidKeyVaultProperties as exc:
        raise InvalidInput(exc.problems) from None


def _clusters_router(store: PolicyBook, snapshots: Snapshots, served: str) -> APIRouter:
    """Policy routes over `store` (the store itself, or the policy file in force);
    `served` is the cluster a request that names none is about."""
    router = APIRouter(prefix="/v1", tags=["clusters"])

    def resource(version: Version) -> dict[str, Any]:
        if isinstance(store, FileBook):
            return store.describe(_to_arm(version))
        return clusterkeys.annotate(store, _to_arm(version))

    @router.get("/clusters")
    def list_clusters(who: Reader) -> dict[str, Any]:
        """The clusters the caller may read (all of them for a cluster-wide role)."""
        names = who.clusters(READ_POLICY, store.clusters())
        return {"value": [resource(store.current(n)) for n in names]}

    @router.get("/clusters/{name}")
    def get_cluster(name: ClusterName, _who: Viewer) -> dict[str, Any]:
        return resource(store.current(name))

    @router.put("/clusters/{name}")
    def put_cluster(name: ClusterName, body: ArmBody, who: Operator) -> dict[str, Any]:
        """Create or replace a cluster: properties not given take their defaults."""
        try:
            existing: Version | None = store.current(name)
        except NotFound:  # creating a cluster is a cluster-wide act: a grant is not enough
            check_cluster(who, EDIT_POLICY, None)
            existing = None
        policy = from_arm(body, keep_kind=existing.policy.kind if existing else None)
        _set_key(store, name, body, who.name)  # absent: the key stays as it is
        if existing is not None:
            version = store.commit(name, policy, who.name, "PUT properties")
        else:
            version = store.commit(name, policy, who.name, "created by PUT", create=True)
        return resource(version)

    @router.patch("/clusters/{name}")
    def patch_cluster(name: ClusterName, body: ArmBody, who: Operator) -> dict[str, Any]:
        """Change only the properties named in the body."""
        current = store.current(name)
        policy = from_arm(body, current.policy)
        props = body.get("properties", {})
        if _set_key(store, name, body, who.name) and set(props) <= {KEY_PROPERTY}:
            return resource(current)  # the key alone: no new policy version
        names = ", ".join(sorted(props)) if isinstance(props, dict) else ""
        return resource(store.commit(name, policy, who.name, f"PATCH {names}".strip()))

    @router.get("/clusters/{name}/versions")
    def list_versions(name: ClusterName, _who: Viewer) -> dict[str, Any]:
        return {"value": [v.meta() for v in store.versions(name)]}

    @router.get("/clusters/{name}/versions/{number}")
    def show_version(name: ClusterName, number: VersionNumber, _who: Viewer
                     ) -> dict[str, Any]:
        version = store.version(name, number)
        return {**version.meta(), "policy": version.text, "resource": resource(version)}

    @router.get("/clusters/{name}/versions/{number}/diff/{other}",
                response_class=PlainTextResponse)
    def diff_versions(name: ClusterName, number: VersionNumber, other: VersionNumber,
                      _who: Viewer) -> str:
        return store.diff(name, number, other)

    @router.post("/clusters/{name}/rollback")
    def rollback(name: ClusterName, body: RollbackRequest, who: Operator) -> dict[str, Any]:
        return resource(store.rollback(name, body.version, who.name))

    for segment, field in COLLECTIONS.items():
        _collection_routes(router, store, segment, field)
    _callout_routes(router, store)

    @router.post("/clusters/{name}/whatIf")
    def what_if(name: ClusterName, body: ArmBody, _who: Viewer) -> dict[str, Any]:
        """What a PATCH with this body would do to the cluster's routes, changing nothing:
        `stopsWorking` lists the routes that work now and would be refused after it."""
        return route_what_if(store.current(name).policy, body)

    @router.get("/clusters/{name}/endpoints")
    def endpoints(name: ClusterName, request: Request, _who: Viewer,
                  window: Annotated[str, Query(max_length=20)] = "1h") -> dict[str, Any]:
        """The cluster's endpoints, their derived destinations and routes, and their
        health (healthy, unhealthy, degraded, dead, unknown) from the decisions observed
        for each destination within `window`."""
        from egressguard.audit.api import reader
        from egressguard.audit.query import QueryError, parse_duration

        try:
            seconds = parse_duration(window)
        except QueryError as exc:
            raise InvalidInput([("window", str(exc))]) from None
        policy = store.current(name).policy
        engine, _ = reader(request)
        return {"value": endpoint_health(engine, name, policy, seconds), "window": window}

    @router.post("/check")
    def check(body: CheckRequest, who: Reader, response: Response) -> dict[str, Any]:
        """What-if: the decision for one call, as `egressguard check --json` prints it."""
        cluster = body.cluster or served
        check_cluster(who, READ_POLICY, cluster)
        try:
            version, answer = decide(snapshots, cluster, body)
        except ValueError as exc:  # the model validated the fields; a last guard
            raise InvalidInput([("url", str(exc))]) from None
        response.headers["X-Policy-Version"] = version
        return answer

    @router.post("/mgmt")
    def mgmt(body: MgmtRequest, request: Request) -> dict[str, Any]:
        """Run a Kusto-style command (`.show`: viewer; `.alter`, `.alter-merge`,
        `.delete`: operator)."""
        who = authenticate(request)
        return execute(store, body.cluster or served, body.command, who).as_kusto()

    return router


def _callout_routes(router: APIRouter, store: PolicyBook) -> None:
    """Data Explorer's callout policy operations (`listCalloutPolicies`,
    `addCalloutPolicies`, `removeCalloutPolicy`); an entry's id is `<regex>_<type>`."""
    base = "/clusters/{name}"

    @router.post(base + "/listCalloutPolicies")
    def list_callouts(name: ClusterName, _who: Viewer) -> dict[str, Any]:
        return {"value": callouts_to_arm(store.current(name).policy)}

    @router.post(base + "/addCalloutPolicies")
    def add_callout_policies(name: ClusterName, body: ArmBody, who: Operator
                             ) -> dict[str, Any]:
        policy = add_callouts(store.current(name).policy, body)
        version = store.commit(name, policy, who.name,
                               f"addCalloutPolicies ({len(body.get('value', []))})")
        return {"value": callouts_to_arm(version.policy), "version": version.number}

    @router.post(base + "/removeCalloutPolicy")
    def remove_callout_policy(name: ClusterName, body: ArmBody, who: Operator
                              ) -> dict[str, Any]:
        policy = remove_callout(store.current(name).policy, body)
        if policy is None:
            raise NotFound(f"cluster {name!r} has no callout policy with id "
                           f"{body.get('calloutId')!r}")
        version = store.commit(name, policy, who.name,
                               f"removeCalloutPolicy {str(body['calloutId'])[:200]}")
        return {"value": callouts_to_arm(version.policy), "version": version.number}


def _collection_routes(router: APIRouter, store: PolicyBook, segment: str, field: str
                       ) -> None:
    base = f"/clusters/{{name}}/{segment}"

    def commit(name: str, policy: Any, who: Principal, what: str) -> Version:
        return store.commit(name, policy, who.name, what)

    @router.get(base, name=f"list_{field}")
    def list_items(name: ClusterName, _who: Viewer) -> dict[str, Any]:
        policy = store.current(name).policy
        return {"value": [collection_to_arm(policy, field, c.name)
                          for c in getattr(policy, field)]}

    @router.get(base + "/{collection}", name=f"get_{field}")
    def get_item(name: ClusterName, collection: CollectionName, _who: Viewer
                 ) -> dict[str, Any]:
        found = collection_to_arm(store.current(name).policy, field, collection)
        if found is None:
            raise NotFound(f"cluster {name!r} has no {segment} entry {collection!r}")
        return found

    @router.put(base + "/{collection}", name=f"put_{field}")
    def put_item(name: ClusterName, collection: CollectionName, body: ArmBody, who: Operator
                 ) -> dict[str, Any]:
        policy = collection_from_arm(body, field, collection, store.current(name).policy)
        version = commit(name, policy, who, f"PUT {segment}/{collection}")
        return collection_to_arm(version.policy, field, collection) or {}

    @router.delete(base + "/{collection}", name=f"delete_{field}", status_code=200)
    def delete_item(name: ClusterName, collection: CollectionName, who: Operator
                    ) -> dict[str, Any]:
        policy = without_collection(store.current(name).policy, field, collection)
        if policy is None:
            raise NotFound(f"cluster {name!r} has no {segment} entry {collection!r}")
        version = commit(name, policy, who, f"DELETE {segment}/{collection}")
        return {"deleted": collection, "version": version.number}


def _tokens_router(store: Store) -> APIRouter:
    router = APIRouter(prefix="/v1/tokens", tags=["tokens"])

    @router.get("/self", tags=["tokens"])
    def whoami(request: Request) -> dict[str, Any]:
        """The caller: its name, cluster-wide role and grants (any valid token; used by
        `egressguard login` to check a token before storing the server)."""
        who = authenticate(request)
        return {"name": who.name, "role": who.role, "grants": dict(who.grants)}

    @router.get("")
    def list_tokens(_who: Admin, include_revoked: bool = False) -> dict[str, Any]:
        """Tokens with their role, grants and expiry (`include_revoked`: revoked too)."""
        return {"value": [t.as_dict() for t in store.tokens(include_revoked=include_revoked)]}

    @router.post("", status_code=201)
    def create_token(body: TokenRequest, who: Admin) -> dict[str, Any]:
        """The token is in this answer only; the store keeps its SHA-256."""
        token, info = store.create_token(body.name, body.role, who.name,
                                         lifetime=parse_lifetime(body.expires),
                                         grants=body.grants)
        return {**info.as_dict(), "token": token}

    @router.post("/{ident}/rotate", status_code=201)
    def rotate_token(ident: Annotated[str, Path(min_length=1, max_length=200)],
                     who: Admin, body: RotateRequest | None = None) -> dict[str, Any]:
        """Revoke the token(s) with this id or name and issue a new secret with the same
        name and role (in this answer only)."""
        lifetime = parse_lifetime(body.expires) if body else DEFAULT_TOKEN_LIFETIME
        token, info = store.rotate_token(ident, who.name, lifetime=lifetime)
        return {**info.as_dict(), "token": token}

    @router.delete("/{ident}")
    def revoke_token(ident: Annotated[str, Path(min_length=1, max_length=200)], _who: Admin
                     ) -> dict[str, Any]:
        return {"revoked": [t.as_dict() for t in store.revoke_token(ident)]}

    return router


def _include_optional(app: FastAPI) -> None:
    for module_name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                _log.warning("router %s not loaded: %s", module_name, exc)
            continue
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router)


def create_app(store: Store, holder_registry: Mapping[str, SnapshotHolder] | None = None,
               *, allow_cidrs: Sequence[str] | None = None,
               include_optional_routers: bool = True,
               max_body: int = DEFAULT_MAX_BODY,
               body_idle_timeout: float = BODY_IDLE_TIMEOUT,
               policy_file: FileBook | None = None,
               cluster: str = DEFAULT_CLUSTER) -> FastAPI:
    """The API over `store`. `holder_registry` (cluster -> holder in force in this
    process) is reported by `/healthz`; `allow_cidrs` restricts client sources;
    `max_body` bounds request bodies (413 beyond), `body_idle_timeout` how long a body
    may stall (408). `policy_file`: the gateway enforces that file, so the policy routes
    describe it and refuse writes (the store still holds tokens, sessions and the audit
    log). `cluster`: what a check, command or simulation that names no cluster is about
    (the one the gateway serves)."""
    if max_body < 1:
        raise ValueError("the API body limit must be at least 1 byte")
    if allow_cidrs:
        parse_cidrs(allow_cidrs)  # a bad CIDR fails here, not at the first request
    app = FastAPI(title="egressguard control plane", version="1",
                  description=__doc__)
    app.state.store = store
    # Where policy reads and writes go (the dashboard and analysis routes read it too).
    book: PolicyBook = policy_file if policy_file is not None else store
    app.state.book = book
    app.state.cluster = policy_file.cluster if policy_file is not None else cluster
    app.state.holders = dict(holder_registry or {})
    app.state.health = health = StoreHealth(store)
    snapshots: Snapshots = policy_file if policy_file is not None else SnapshotCache(store)
    _install_error_handlers(app)
    app.add_middleware(ApiGate, store=store, health=health, max_body=max_body,
                       allow_cidrs=list(allow_cidrs) if allow_cidrs else None,
                       body_idle_timeout=body_idle_timeout)

    def reasons() -> tuple[list[str], dict[str, Any]]:
        problem = health.check()
        found = [f"store unreachable: {problem}"] if problem else []
        parts: dict[str, Any] = {"store": store.dialect, "store_reachable": problem is None}
        audit = getattr(app.state, "audit", None)
        degraded = getattr(audit, "degraded", None)
        if isinstance(degraded, bool):
            parts["audit_degraded"] = degraded
            if degraded:
                found.append("audit log spooling locally (database unreachable)")
        return found, parts

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: always 200 while the process serves; `status` is `degraded` (with
        the reasons) while the store or the audit database is unreachable."""
        found, parts = reasons()
        holders = {name: holder.active.version for name, holder in app.state.holders.items()}
        return {"status": "degraded" if found else "ok", "reasons": found, **parts,
                "active": holders}

    @app.get("/readyz", tags=["health"])
    def readyz() -> Response:
        """Readiness: 503 while the store cannot be reached (policy reads and writes
        would fail)."""
        problem = health.check()
        if problem:
            return JSONResponse({"status": "unavailable", "reasons": [
                f"store unreachable: {problem}"]}, status_code=503,
                headers={"Retry-After": str(RETRY_AFTER)})
        return JSONResponse({"status": "ready"})

    # The documented metrics exist from the start (an API without a gateway reports
    # them at zero), whatever the CLI's lazy imports have loaded so far.
    importlib.import_module("egressguard.metrics")

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics() -> Response:
        # `serve --workers N` sets `app.state.registry`: this process's metrics and
        # every worker's (Prometheus multiprocess mode), merged.
        registry = getattr(app.state, "registry", None)
        body = generate_latest(registry) if registry is not None else generate_latest()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.include_router(_clusters_router(book, snapshots, app.state.cluster))
    app.include_router(_tokens_router(store))
    if include_optional_routers:
        _include_optional(app)
    return app
