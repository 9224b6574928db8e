"""API tokens and dashboard sessions as the store keeps them: principals, roles, secrets.

Both secrets are 256 random bits shown once and stored only as their SHA-256: with that
much entropy there is nothing to brute-force, so no salt or slow hash is needed and the
store can index by hash. A token lives `DEFAULT_TOKEN_LIFETIME` unless told otherwise;
a session lives `SESSION_LIFETIME` and never outlives its token (revoking or expiring the
token ends every session opened with it). Pure values only: no I/O, no web framework.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

ROLES = ("admin", "operator", "viewer", "auditor")
TOKEN_PREFIX = "egt_"
SESSION_PREFIX = "egs_"
DEFAULT_TOKEN_LIFETIME = 90 * 86400.0
MAX_TOKEN_LIFETIME = 5 * 365 * 86400.0
SESSION_LIFETIME = 8 * 3600.0
MAX_SECRET = 512  # longer credentials are refused without hashing them

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LIFETIME = re.compile(r"(\d{1,6})([smhdw])")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's name and its role."""

    name: str
    role: str


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
