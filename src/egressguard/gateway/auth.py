"""Who is calling the gateway: the adapter between a client connection and the
identity directory (the verdicts stay in the engine, through the checkpoint).

Strongest first: the client certificate of the TLS listener (SPIFFE URI SAN, then CN),
a `Proxy-Authorization` header (`Bearer` JWT or `Basic` name:secret), then the source
address (the policy's identities' `sources`). A header that does not authenticate is
refused even when the source would map to an identity, so a caller cannot fall back to
a weaker method by sending a bad credential (a gateway that knows no identity at all
ignores the header, as it did before identities existed). No credential while the policy has
`require_identity: true` is refused too; both refusals are answered 407 with
`Proxy-Authenticate` (see `challenge`).

Wrong credentials are limited (`identity.throttle`): once a source address, or the
identity name a Basic credential claims, has had too many refused in a minute, further
credentials for it are refused without being verified (no scrypt) and answered 429 with
`Retry-After` (`identity:throttled`, audited like every refusal), except one this
directory has already verified. Re-checks after a change are never throttled.

Cost on a kept-alive connection: the identity is resolved once and remembered with
the directory and snapshot it was resolved under; each request compares the header
bytes and those two objects (and a JWT's expiry). Any change of the store's identities
(a revocation), of the policy or an identity's expiry makes a new directory, so the
next request on every connection resolves again (`Authenticator.refresh`, run on the
gateway's loop within a second of the change).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from egressguard import metrics
from egressguard.enforce.checkpoint import Checkpoint
from egressguard.enforce.events import DecisionEvent
from egressguard.engine import Decision, Request, Snapshot
from egressguard.engine.holder import SnapshotHolder
from egressguard.engine.normalize import IPAddress
from egressguard.gateway import http1
from egressguard.identity.directory import (
    INVALID,
    Authenticated,
    Directory,
    IdentityHolder,
    Refused,
)
from egressguard.identity.throttle import (
    NAME_LIMIT,
    SOURCE_LIMIT,
    Failures,
    name_key,
    retry_after,
    source_key,
)
from egressguard.identity.tokens import JwtConfig

REALM = "egressguard"
REQUIRED = Refused("proxy authentication required: the policy requires a workload "
                   "identity")
THROTTLED = ("too many invalid proxy credentials from this address or for this identity; "
             "retry later")


class Authenticator:
    """The gateway's current `Directory`, rebuilt when its inputs change."""

    def __init__(self, holder: SnapshotHolder, identities: IdentityHolder | None = None,
                 jwt: JwtConfig | None = None) -> None:
        self.holder = holder
        self.identities = identities
        self.jwt = jwt
        self._built_for: tuple[object, int] = (None, -1)
        self.directory = Directory()
        self.by_source = Failures(SOURCE_LIMIT)  # refused credentials, kept across rebuilds
        self.by_name = Failures(NAME_LIMIT)
        self.refresh()

    def refresh(self, now: datetime | None = None) -> bool:
        """Rebuild the directory if the policy, the store's identities or an expiry
        changed since it was built; True when it did."""
        snapshot = self.holder.current
        epoch = self.identities.epoch if self.identities is not None else 0
        now = now or datetime.now(UTC)
        expired = self.directory.next_change is not None and now >= self.directory.next_change
        if self._built_for == (snapshot, epoch) and not expired:
            return False
        stored = self.identities.stored if self.identities is not None else ()
        self.directory = Directory(stored, snapshot.policy.identities, self.jwt, now)
        self._built_for = (snapshot, epoch)
        return True

    def throttled(self, source: IPAddress | None, header: bytes, now: float
                  ) -> Refused | None:
        """The refusal for a credential not worth verifying: its source or claimed name
        had too many refused within the window."""
        wait = self.by_source.blocked(source_key(source), now)
        name = Directory.claimed_name(header)
        by_name = self.by_name.blocked(name_key(name), now) if name is not None else None
        if wait is None and by_name is None:
            return None
        return Refused(THROTTLED, max(wait or 0.0, by_name or 0.0))

    def failed(self, source: IPAddress | None, header: bytes, now: float) -> None:
        """Count a refused credential against its source and claimed name."""
        self.by_source.failed(source_key(source), now)
        name = Directory.claimed_name(header)
        if name is not None:
            self.by_name.failed(name_key(name), now)

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("Basic", "Bearer") if self.jwt is not None else ("Basic",)


def certificate_names(peercert: dict[str, Any] | None) -> tuple[tuple[str, ...], str | None]:
    """(SPIFFE URI SANs, subject CN) of a verified peer certificate (`getpeercert()`)."""
    if not peercert:
        return (), None
    uris = tuple(v for k, v in peercert.get("subjectAltName", ()) if k == "URI"
                 and isinstance(v, str) and v.startswith("spiffe://"))
    cn = next((v for rdn in peercert.get("subject", ()) for k, v in rdn
               if k == "commonName"), None)
    return uris, cn


class ConnAuth:
    """One connection's caller, remembered between its requests."""

    __slots__ = ("auth", "cert", "cp", "directory", "header", "identity", "peer", "result",
                 "snapshot", "source", "until")

    def __init__(self, auth: Authenticator, cp: Checkpoint, source: IPAddress | None,
                 peer: str = "", cert: tuple[Iterable[str], str | None] = ((), None)
                 ) -> None:
        self.auth = auth
        self.cp = cp
        self.source = source
        self.peer = peer
        self.identity = ""  # the last admitted request's identity
        self.cert = (tuple(cert[0]), cert[1])
        self.directory: Directory | None = None
        self.snapshot: Snapshot | None = None
        self.header: bytes | None = None
        self.result: str | Refused = ""
        self.until: float | None = None

    def who(self, header: bytes | None) -> str | Refused:
        """The identity of a request carrying `header` (its `Proxy-Authorization`, or
        None): a name, "" for an anonymous caller, or why it is refused."""
        if self.directory is self.auth.directory and header == self.header \
                and self.snapshot is self.auth.holder.current \
                and (self.until is None or time.time() < self.until):
            return self.result
        return self._resolve(header)

    def _resolve(self, header: bytes | None, throttle: bool = True) -> str | Refused:
        directory = self.auth.directory
        snapshot = self.auth.holder.current
        self.directory, self.snapshot, self.header, self.until = (
            directory, snapshot, header, None)
        result: str | Refused
        found: Authenticated | Refused | None = None
        cert_name = directory.certificate(*self.cert) if self.cert[0] or self.cert[1] \
            else None
        if cert_name is not None:
            result = cert_name
        elif header is not None and (directory.names or directory.jwt is not None):
            now = time.monotonic()
            refusal = self.auth.throttled(self.source, header, now) if throttle else None
            if refusal is not None:
                found = directory.remembered(header) or refusal
            else:
                found = directory.header(header, time.time())
                if throttle and isinstance(found, Refused) and found.reason == INVALID:
                    self.auth.failed(self.source, header, now)
            if isinstance(found, Refused):
                result = found
                if found.retry_after is not None:  # verified again once the window ends
                    self.until = time.time() + found.retry_after
            else:
                result, self.until = found.name, found.until
        else:
            name = snapshot.source_identity(self.source)
            result = name if name is not None and name in directory.names else ""
        if result == "" and snapshot.require_identity:
            result = REQUIRED
        self.result = result
        return result

    def admit(self, header: bytes | None, kind: str, host: str, port: int, method: bytes
              ) -> tuple[Refused, DecisionEvent | None] | None:
        """Set `identity` for a request, or the refusal (and its audit event) to answer
        407. In report-only (the policy's or the point's) a refusal is relayed as an
        anonymous caller and recorded as a would-deny, as every guard refusal is."""
        auth = self.auth
        if self.directory is auth.directory and header == self.header and self.until is None \
                and self.snapshot is auth.holder.current and self.result.__class__ is str:
            self.identity = self.result  # the keep-alive path
            return None
        who = self.who(header)
        if who.__class__ is str:
            self.identity = who
            return None
        refused = cast(Refused, who)
        self.identity = ""
        cp = self.cp
        if refused.retry_after is not None:
            metrics.AUTH_THROTTLED.inc()
        decision, permitted = cp.guard_deny(
            "identity:required" if refused is REQUIRED else "identity:throttled"
            if refused.retry_after is not None else "identity:invalid",
            refused.reason, f"{host}:{port}", port)
        cp.note(decision, permitted, kind, self.peer, "")
        event = cp.event(decision, permitted, kind, client_address=self.peer,
                         method=method.decode("latin-1")) if cp.recording else None
        if not permitted:
            return refused, event
        if event is not None:
            cp.emit(event)
        return None

    def recheck(self, request: Request) -> tuple[Request, tuple[Decision, bool] | None]:
        """What is being relayed for this caller, after a change that may have revoked
        it: the request with the caller's identity now, and a refusal if it has none."""
        if not self.changed():
            return request, None
        who = self.result
        if isinstance(who, str):
            return dataclasses.replace(request, identity=who), None
        decided, _ = self.cp.decide(request)
        refusal = self.cp.guard_deny("identity:revoked", who.reason, decided.destination,
                                     decided.port)
        return dataclasses.replace(request, identity=""), refusal

    def changed(self) -> bool:
        """Whether this connection's caller is no longer who it was (a revocation, an
        expiry, a policy change): re-resolve with the same header and compare."""
        if self.directory is None:
            return False
        before = self.result
        return self._resolve(self.header, throttle=False) != before


def challenge(refused: Refused, schemes: Iterable[str], *, close: bool) -> bytes:
    """407 with one `Proxy-Authenticate` per accepted scheme (RFC 9110 11.7.1); 429 with
    `Retry-After` for a throttled credential (RFC 6585 4: trying another now is futile)."""
    if refused.retry_after is not None:
        return http1.response(429, "Too Many Requests", f"egressguard: {refused.reason}\n",
                              close=close, extra=[("Retry-After",
                                                   str(retry_after(refused.retry_after)))])
    extra = [("Proxy-Authenticate", f'{s} realm="{REALM}"') for s in schemes]
    return http1.response(407, "Proxy Authentication Required",
                          f"egressguard: {refused.reason}\n", close=close, extra=extra)
