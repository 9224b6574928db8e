"""Every way a workload proves an identity, resolved to the identity's name (pure).

A `Directory` is immutable and built from three things: the identities the store keeps
(proxy secrets, and SPIFFE IDs, CNs and JWT subjects registered with them), the policy's
`identities:` section, and the JWT configuration. It is rebuilt whenever any of them
changes or an identity's expiry passes, so "is this identity still good?" is answered by
"is this still the directory I authenticated against?" (one identity comparison per
request on a kept-alive connection; see `gateway/auth.py`).

A claim (SPIFFE ID, CN, JWT subject) that two identities both claim maps to neither:
an ambiguous mapping fails closed. Refusals carry one reason for every bad credential,
so a caller cannot tell an unknown name from a wrong secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from egressguard.identity.model import StoredIdentity
from egressguard.identity.secrets import MAX_SECRET, verify_secret
from egressguard.identity.tokens import JwtConfig
from egressguard.policy.model import IdentityMethods

INVALID = "invalid proxy credentials"
_VERIFIED_MAX = 4096  # verified Basic credentials remembered per directory


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a credential does not authenticate (safe to show the caller); `retry_after`
    (seconds) when it was not even verified because its source or name failed too often
    (`throttle`)."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Anonymous:
    """No credential was presented."""


ANONYMOUS = Anonymous()
_REFUSED = Refused(INVALID)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """An identity and until when (a POSIX time) the credential that proved it holds
    without being checked again (a JWT's `exp`; None: as long as the directory)."""

    name: str
    until: float | None = None


class Directory:
    """Name lookups for every authentication method, valid at the `now` it was built."""

    def __init__(self, stored: Iterable[StoredIdentity] = (),
                 policy: Mapping[str, IdentityMethods] | None = None,
                 jwt: JwtConfig | None = None, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self.jwt = jwt
        self.built_at = now
        self._secrets: dict[str, str] = {}
        claims: dict[tuple[str, str], set[str]] = {}
        self.names: set[str] = set()
        expiries: list[datetime] = []
        disabled: set[str] = set()
        for ident in stored:
            if ident.expires_at is not None and now < ident.expires_at:
                expiries.append(ident.expires_at)
            if not ident.valid(now):
                disabled.add(ident.name)
                continue
            self.names.add(ident.name)
            if ident.secret_hash:
                self._secrets[ident.name] = ident.secret_hash
            self._claim(claims, ident.name, ident.spiffe_ids, ident.common_names,
                        ident.jwt_subjects)
        for name, methods in (policy or {}).items():
            # The store's word on an identity it knows (revoked, disabled, expired)
            # binds the policy's methods for the same name too.
            if not methods.enabled or name in disabled:
                continue
            self.names.add(name)
            self._claim(claims, name, methods.spiffe_ids, methods.common_names,
                        methods.jwt_subjects)
        self.ambiguous = sorted(f"{kind} {value!r}" for (kind, value), owners in claims.items()
                                if len(owners) > 1)
        self._claims = {key: next(iter(owners)) for key, owners in claims.items()
                        if len(owners) == 1}
        self.next_change = min(expiries) if expiries else None
        self._verified: dict[bytes, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _claim(claims: dict[tuple[str, str], set[str]], name: str, spiffe: Iterable[str],
               cns: Iterable[str], subjects: Iterable[str]) -> None:
        for kind, values in (("spiffe", spiffe), ("cn", cns), ("sub", subjects)):
            for value in values:
                claims.setdefault((kind, value), set()).add(name)

    # -- lookups -----------------------------------------------------------------------

    def basic(self, credentials: bytes) -> Authenticated | Refused:
        """`Proxy-Authorization: Basic` credentials (base64 `name:secret`)."""
        if len(credentials) > 4 * MAX_SECRET:
            return _REFUSED
        digest = hashlib.sha256(credentials).digest()
        known = self._verified.get(digest)
        if known is not None:
            return Authenticated(known)
        parts = _basic_parts(credentials)
        if parts is None:
            return _REFUSED
        name, secret = parts
        # The same work for an unknown name as for a wrong secret (a dummy hash).
        if not verify_secret(secret, self._secrets.get(name)):
            return _REFUSED
        with self._lock:
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[digest] = name
        return Authenticated(name)

    def bearer(self, token: bytes, now: float) -> Authenticated | Refused:
        """`Proxy-Authorization: Bearer` (a JWT whose subject maps to an identity)."""
        if self.jwt is None:
            return Refused("bearer tokens are not accepted here (no JWT issuer configured)")
        try:
            text = token.strip().decode("ascii")
        except UnicodeDecodeError:
            return _REFUSED
        verified = self.jwt.subject(text, now)
        name = self._claims.get(("sub", verified[0])) if verified is not None else None
        if verified is None or name is None:
            return _REFUSED
        return Authenticated(name, verified[1])

    def certificate(self, spiffe_ids: Iterable[str], cn: str | None) -> str | None:
        """The identity of a verified client certificate: a SPIFFE URI SAN first, then
        the subject CN."""
        for uri in spiffe_ids:
            name = self._claims.get(("spiffe", uri))
            if name is not None:
                return name
        return self._claims.get(("cn", cn)) if cn else None

    def remembered(self, value: bytes) -> Authenticated | None:
        """A `Proxy-Authorization: Basic` value this directory has already verified (no
        scrypt: what a throttled caller may still present), else None."""
        scheme, _, rest = value.strip().partition(b" ")
        if scheme.lower() != b"basic" or len(rest) > 4 * MAX_SECRET:
            return None
        known = self._verified.get(hashlib.sha256(rest).digest())
        return Authenticated(known) if known is not None else None

    @staticmethod
    def claimed_name(value: bytes) -> str | None:
        """The name a `Basic` value claims, known to the directory or not (treating both
        alike keeps a throttled name from telling which names exist)."""
        scheme, _, rest = value.strip().partition(b" ")
        parts = _basic_parts(rest) if scheme.lower() == b"basic" \
            and len(rest) <= 4 * MAX_SECRET else None
        return parts[0] if parts is not None else None

    def header(self, value: bytes, now: float) -> Authenticated | Refused:
        """A `Proxy-Authorization` value: `Basic ...` or `Bearer ...`."""
        scheme, _, rest = value.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic":
            return self.basic(rest)
        if scheme == b"bearer":
            return self.bearer(rest, now)
        return Refused("unsupported proxy authentication scheme (Basic or Bearer)")


def _basic_parts(credentials: bytes) -> tuple[str, str] | None:
    """(name, secret) of base64 `name:secret`, or None when it is not that."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, secret = decoded.partition(":")
    return (name, secret) if sep else None


class IdentityHolder:
    """The store's identities as last read, swapped atomically (by `follow`); `epoch`
    counts the swaps. Listeners are told of each swap from the swapping thread."""

    def __init__(self, stored: Iterable[StoredIdentity] = ()) -> None:
        self.stored: tuple[StoredIdentity, ...] = tuple(stored)
        self.epoch = 0
        self._listeners: list[Callable[[], None]] = []

    def swap(self, stored: Iterable[StoredIdentity]) -> None:
        self.stored = tuple(stored)
        self.epoch += 1
        for listener in list(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners \
            else None
