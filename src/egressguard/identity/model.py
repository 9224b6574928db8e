"""An identity as the store keeps it (a pure value; `store` reads and writes it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

METHODS = ("basic", "spiffe", "cn", "jwt")


@dataclass(frozen=True)
class StoredIdentity:
    """One workload identity: its proxy secret's hash and the other ways it may prove
    itself (SPIFFE IDs, certificate CNs, JWT subjects). `revoked` and `enabled` differ:
    a disabled identity may be enabled again; a revoked one never authenticates again
    (its secret is gone; `rotate` issues a new one)."""

    name: str
    description: str = ""
    enabled: bool = True
    secret_hash: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime | None = None
    spiffe_ids: tuple[str, ...] = ()
    common_names: tuple[str, ...] = ()
    jwt_subjects: tuple[str, ...] = ()
    updated_at: datetime | None = field(default=None, compare=False)

    def valid(self, now: datetime) -> bool:
        """May authenticate now: enabled, not revoked, not expired."""
        return self.enabled and self.revoked_at is None and (
            self.expires_at is None or now < self.expires_at)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m, on in zip(METHODS, (
            self.secret_hash is not None and self.revoked_at is None,
            bool(self.spiffe_ids), bool(self.common_names), bool(self.jwt_subjects)),
            strict=True) if on)

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if not self.enabled:
            return "disabled"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """What `identity list/show` and the API print (never the hash)."""
        def when(value: datetime | None) -> str | None:
            return value.isoformat(timespec="seconds") if value else None
        return {"name": self.name, "description": self.description,
                "state": self.state(now or datetime.now(UTC)), "enabled": self.enabled,
                "methods": list(self.methods), "expires_at": when(self.expires_at),
                "revoked_at": when(self.revoked_at), "created_at": when(self.created_at),
                "spiffe_ids": list(self.spiffe_ids), "common_names": list(self.common_names),
                "jwt_subjects": list(self.jwt_subjects)}
