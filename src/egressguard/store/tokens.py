"""API tokens and dashboard sessions as the store keeps them: principals, roles, secrets.

Both secrets are 256 random bits shown once and stored only as their SHA-256: with that
much entropy there is nothing to brute-force, so no salt or slow hash is needed and the
store can index by hash. A token lives `DEFAULT_TOKEN_LIFETIME` unless told otherwise;
a session lives `SESSION_LIFETIME` and never outlives its token (revoking or expiring the
token ends every session opened with it). Pure values only: no I/O, no web framework.

Roles, as Azure Data Explorer separates cluster-wide roles (AllDatabasesAdmin, ...) from
database roles: a token has one *cluster-wide* role (`role`, which applies to every
cluster, or `none`) and any number of *grants*, a role on one named cluster. They add up:
a viewer everywhere with an operator grant on `prod` may edit `prod` and only read the
others. What spans clusters (tokens, the whole audit log, integrity checks) needs the
cluster-wide role; a grant never reaches past its cluster.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

ROLES = ("admin", "operator", "viewer", "auditor")
NO_ROLE = "none"  # cluster-wide role of a token that has only grants
WIDE_ROLES = (*ROLES, NO_ROLE)
MAX_GRANTS = 100
TOKEN_PREFIX = "egt_"
SESSION_PREFIX = "egs_"
DEFAULT_TOKEN_LIFETIME = 90 * 86400.0
MAX_TOKEN_LIFETIME = 5 * 365 * 86400.0
SESSION_LIFETIME = 8 * 3600.0
MAX_SECRET = 512  # longer credentials are refused without hashing them

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LIFETIME = re.compile(r"(\d{1,6})([smhdw])")
CLUSTER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's name, its cluster-wide role and its grants
    (`(cluster, role)` pairs, sorted)."""

    name: str
    role: str
    grants: tuple[tuple[str, str], ...] = ()

    def allows(self, wanted: tuple[str, ...], cluster: str | None = None) -> bool:
        """May this caller act as one of `wanted` (admin always may) on `cluster`? With
        no cluster, only the cluster-wide role counts (fail closed)."""
        if role_allows(self.role, wanted):
            return True
        return cluster is not None and any(
            c == cluster and role_allows(r, wanted) for c, r in self.grants)

    def allows_somewhere(self, wanted: tuple[str, ...]) -> bool:
        """True if the cluster-wide role or any grant is one of `wanted`."""
        return role_allows(self.role, wanted) or any(
            role_allows(r, wanted) for _c, r in self.grants)

    def clusters(self, wanted: tuple[str, ...], names: list[str]) -> list[str]:
        """Those of `names` this caller may act on as one of `wanted`."""
        return [n for n in names if self.allows(wanted, n)]

    def describe(self) -> str:
        """`role` or `role; operator on a, viewer on b` (for messages)."""
        if not self.grants:
            return self.role
        return f"{self.role}; " + ", ".join(f"{r} on {c}" for c, r in self.grants)


@dataclass(frozen=True)
class Refusal:
    """Why a credential does not authenticate (the message is safe to show the caller)."""

    reason: str


def new_token() -> str:
    """A fresh bearer token (shown once, never stored in clear)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_id() -> str:
    """A fresh dashboard session id (the cookie's value, never stored in clear)."""
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def role_allows(role: str, wanted: tuple[str, ...]) -> bool:
    return role == "admin" or role in wanted


def denied_message(who: Principal, wanted: tuple[str, ...], cluster: str | None) -> str:
    """Why `who` may not do this: the roles it has and the ones it needs, where."""
    needs = ", ".join(("admin", *wanted))
    if cluster:
        return (f"role {who.describe()!r} may not do this on cluster {cluster!r} "
                f"(needs one of: {needs})")
    spans = "; grants on one cluster do not count here" if who.grants else ""
    return f"role {who.role!r} may not do this (needs one of: {needs}{spans})"


def parse_grants(items: list[str] | dict[str, str]) -> tuple[tuple[str, str], ...]:
    """`["prod=operator", "dev=viewer"]` or `{"prod": "operator"}` -> sorted pairs; else
    ValueError naming the bad item."""
    pairs = list(items.items()) if isinstance(items, dict) else [
        tuple(i.partition("=")[::2]) for i in items]
    if len(pairs) > MAX_GRANTS:
        raise ValueError(f"at most {MAX_GRANTS} grants per token")
    out: dict[str, str] = {}
    for cluster, role in pairs:
        if not CLUSTER_NAME.fullmatch(cluster):
            raise ValueError(f"grant {cluster}={role}: invalid cluster name "
                             f"(expected CLUSTER=ROLE)")
        if role not in ROLES:
            raise ValueError(f"grant {cluster}={role}: unknown role; expected one of "
                             f"{', '.join(ROLES)}")
        if cluster in out and out[cluster] != role:
            raise ValueError(f"grant {cluster}: given twice with different roles")
        out[cluster] = role
    return tuple(sorted(out.items()))


def parse_lifetime(text: str) -> float:
    """`30d`, `12h`, `2w`, `1d12h` -> seconds, between one minute and five years; else
    ValueError with the accepted form."""
    compact = text.strip().lower()
    if not compact or _LIFETIME.sub("", compact):
        raise ValueError(f"invalid lifetime {text!r}: expected e.g. 30d, 12h, 2w")
    seconds = float(sum(int(n) * _UNITS[u] for n, u in _LIFETIME.findall(compact)))
    if not 60 <= seconds <= MAX_TOKEN_LIFETIME:
        raise ValueError(f"lifetime {text!r} must be between 1m and "
                         f"{int(MAX_TOKEN_LIFETIME // 86400)}d")
    return seconds


def expired_message(name: str, expired_at: datetime) -> str:
    return (f"token {name!r} expired at {expired_at.isoformat(timespec='seconds')}; an "
            f"admin can issue a new secret with `egressguard token rotate {name}`")
