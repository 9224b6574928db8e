"""API tokens and roles: who may call what.

Authentication happens once per request, in the API's gate (`control.gate`), from the
request head and before any body byte is read: `Authorization: Bearer <token>`, or on
`/dashboard` paths the session cookie. The gate leaves the outcome in the ASGI scope;
`require_role(...)` reads it (or, in an app built without the gate, looks the token up
itself). `admin` passes every role check (it may also read the audit log).

Roles per cluster (see `store.tokens`): `require_role` checks the cluster-wide role only,
so a route that does not say which cluster it touches is closed to a token that holds
only grants. A route about one cluster uses `require_cluster_role` (the `{name}` path
parameter) or, when the cluster comes in the body or query, `check_cluster` once it
knows the name.

Other areas import this for their routers::

    from egressguard.control.auth import Principal, require_role

    @router.get("/v1/audit/events")
    def events(who: Principal = Depends(require_role("auditor"))): ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from fastapi import HTTPException, Request

from egressguard.store.tokens import (
    MAX_SECRET,
    ROLES,
    TOKEN_PREFIX,
    Principal,
    Refusal,
    denied_message,
    hash_token,
    new_token,
    role_allows,
)

__all__ = ["EDIT_POLICY", "READ_POLICY", "ROLES", "SESSION_COOKIE", "TOKEN_PREFIX",
           "Principal", "Refusal", "authenticate", "bearer", "check_cluster", "hash_token",
           "identify", "new_token", "require_cluster_role", "require_role",
           "require_somewhere", "role_allows"]

# Which roles may read or edit policy (the admin always may).
READ_POLICY = ("viewer", "operator")
EDIT_POLICY = ("operator",)

SESSION_COOKIE = "egressguard_session"
DASHBOARD_PREFIX = "/dashboard"
SCOPE_KEY = "egressguard.auth"  # Principal | Refusal, set by the gate


class Verifier(Protocol):
    def identify(self, token_hash: str) -> Principal | Refusal: ...

    def session_principal(self, session_hash: str) -> Principal | Refusal: ...


def bearer_value(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def bearer(request: Request) -> str | None:
    return bearer_value(request.headers.get("authorization", ""))


def credentials(path: str, headers: Mapping[str, str], cookies: Mapping[str, str]
                ) -> tuple[str, str] | None:
    """What the request authenticates with: ("token", secret) from the Authorization
    header, else ("session", id) from the cookie on dashboard paths; None if neither."""
    if "authorization" in headers:
        token = bearer_value(headers["authorization"])
        return ("token", token) if token else ("token", "")
    if path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/"):
        session = cookies.get(SESSION_COOKIE)
        if session:
            return "session", session
    return None


def identify(verifier: Verifier, kind: str, secret: str) -> Principal | Refusal:
    """Look a credential up (store I/O: call it off the event loop)."""
    if not secret:
        return Refusal("malformed Authorization header: expected 'Bearer <token>'")
    if len(secret) > MAX_SECRET:
        return Refusal("invalid or revoked token")
    if kind == "session":
        return verifier.session_principal(hash_token(secret))
    return verifier.identify(hash_token(secret))


def outcome(request: Request) -> Principal | Refusal | None:
    """The gate's verdict for this request; without a gate, looked up here."""
    if SCOPE_KEY in request.scope:
        found: Principal | Refusal | None = request.scope[SCOPE_KEY]
        return found
    cred = credentials(request.url.path, request.headers, request.cookies)
    if cred is None:
        return None
    return identify(request.app.state.store, *cred)


def authenticate(request: Request) -> Principal:
    """The caller, or 401 (no token; unknown, revoked or expired token)."""
    found = outcome(request)
    if isinstance(found, Principal):
        return found
    reason = found.reason if isinstance(found, Refusal) else "missing bearer token"
    raise HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


def _known(roles: tuple[str, ...]) -> None:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")


def check_cluster(who: Principal, roles: tuple[str, ...], cluster: str | None) -> Principal:
    """`who` if it may act as one of `roles` on `cluster` (None: across clusters, so the
    cluster-wide role alone counts), else 403."""
    if not who.allows(roles, cluster):
        raise HTTPException(403, denied_message(who, roles, cluster))
    return who


def require_role(*roles: str) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the caller if its cluster-wide role is one of `roles` (or
    admin), else 401/403. Grants on single clusters do not count."""
    _known(roles)

    def dependency(request: Request) -> Principal:
        return check_cluster(authenticate(request), roles, None)

    dependency.__name__ = f"require_role_{'_'.join(roles) or 'admin'}"
    return dependency


def require_cluster_role(*roles: str) -> Callable[[Request], Principal]:
    """A FastAPI dependency for a route under `/clusters/{name}`: the caller if it may act
    as one of `roles` on that cluster (cluster-wide role or a grant on it), else 401/403."""
    _known(roles)

    def dependency(request: Request) -> Principal:
        name = request.path_params.get("name")
        if not isinstance(name, str) or not name:
            raise RuntimeError("require_cluster_role on a route without {name}")
        return check_cluster(authenticate(request), roles, name)

    dependency.__name__ = f"require_cluster_role_{'_'.join(roles) or 'admin'}"
    return dependency


def require_somewhere(*roles: str) -> Callable[[Request], Principal]:
    """A FastAPI dependency for a route that reads no cluster's data (e.g. analysing a
    posted policy): the caller if it holds one of `roles` on some cluster, else 401/403.
    The route must still `check_cluster` before it reads a stored cluster."""
    _known(roles)

    def dependency(request: Request) -> Principal:
        who = authenticate(request)
        if not who.allows_somewhere(roles):
            raise HTTPException(403, denied_message(who, roles, None))
        return who

    dependency.__name__ = f"require_somewhere_{'_'.join(roles) or 'admin'}"
    return dependency
