"""API tokens and roles: who may call what.

Every API route depends on `require_role(...)`, which reads `Authorization: Bearer <token>`
and looks the token's SHA-256 up in the store the app was built with
(`request.app.state.store`). Tokens are 256 random bits, so a plain SHA-256 is a safe
verifier (no salt or slow hash needed: there is nothing to brute-force) and lets the store
index by hash. `admin` passes every role check (it may also read the audit log).

Other areas import this for their routers::

    from egressguard.control.auth import Principal, require_role

    @router.get("/v1/audit/events")
    def events(who: Principal = Depends(require_role("auditor"))): ...
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import HTTPException, Request

ROLES = ("admin", "operator", "viewer", "auditor")
TOKEN_PREFIX = "egt_"

# Which roles may read or edit policy (the admin always may).
READ_POLICY = ("viewer", "operator")
EDIT_POLICY = ("operator",)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's name and its role."""

    name: str
    role: str


class TokenVerifier(Protocol):
    def principal_for(self, token_hash: str) -> Principal | None: ...


def new_token() -> str:
    """A fresh bearer token (shown once, never stored in clear)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def role_allows(role: str, wanted: tuple[str, ...]) -> bool:
    return role == "admin" or role in wanted


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(request: Request) -> Principal:
    """The caller, or 401 (no token, unknown or revoked token)."""
    token = bearer(request)
    if token is None:
        raise HTTPException(401, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.store
    principal = verifier.principal_for(hash_token(token))
    if principal is None:
        raise HTTPException(401, "invalid or revoked token",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


def require_role(*roles: str) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the caller if its role is one of `roles` (or admin), else
    401/403."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        if not role_allows(principal.role, roles):
            wanted = ", ".join(("admin", *roles))
            raise HTTPException(403, f"role {principal.role!r} may not do this "
                                     f"(needs one of: {wanted})")
        return principal

    dependency.__name__ = f"require_role_{'_'.join(roles) or 'admin'}"
    return dependency
